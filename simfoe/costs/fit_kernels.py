"""Fit the kernel-efficiency curves of a hardware profile to Vidur's measured operator times.

Data: ``<vidur>/compute/<gpu>/<org>/<model>.mlp.csv`` (microsoft/vidur, MIT): median time (ms) of
one transformer layer's linear layers, norms, activation and residual add by ``num_tokens`` and
tensor-parallel degree. Each row becomes GEMMs (m = num_tokens)::

    attn_pre_proj   n = (n_head + 2 n_kv_head) head_dim / TP   k = n_embd
    attn_post_proj  n = n_embd                                  k = n_head head_dim / TP
    mlp_up_proj     n = n_expanded_embd (x2 if gated) / TP      k = n_embd
    mlp_down_proj   n = n_embd                                  k = n_expanded_embd / TP

and elementwise ops with bytes = elements moved x 2 (bf16): norms read+write T x n_embd; the
activation reads T x F' (x2 if gated) and writes T x F' (F' = n_expanded_embd / TP); add reads two
and writes one T x n_embd tensor.

Hold-out: a deterministic diagonal of (model, TP) groups (see ``held_out_groups``) is never seen
by the fit; MAPE is reported on both parts. The fit minimizes a robust
(soft-L1) loss on log(predicted / measured). Functional forms: simfoe/costs/kernels.py.
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

from simfoe.errors import SpecError

GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE_OPS = {"input_layernorm": "norm", "post_attention_layernorm": "norm", "mlp_act": "act", "add": "add"}

# hardware profile -> (profile whose peak/bandwidth the data was measured on, Vidur GPU folder)
DATA_SOURCE = {
    "h100-sxm": ("h100-sxm", "h100"),
    "a100-sxm": ("a100-sxm", "a100"),
    # No H200 operator data exists: same GH100 die as H100, so its fit is reused; efficiencies are
    # relative, so the memory term uses H200's own hbm_bandwidth.
    "h200-sxm": ("h100-sxm", "h100"),
}

# Published FlashAttention forward throughput (../shared/reference/hardware.md, "Achieved kernel
# efficiency"): (FLOP/s, source). Divided by the profile's bf16 peak to give attention eff_max.
ATTENTION_PUBLISHED = {
    "h100": (328e12, "HW: FlashAttention-2 H100 328 TFLOP/s head dim 128 [M] Azure guide "
                     "(FA3 reaches 430-650 [M] arXiv 2407.08608; FA2 kept as the conservative default)"),
    "a100": (180e12, "HW: FlashAttention-2 A100 180 TFLOP/s head dim 64, seq 8k [M] Azure guide"),
}

SIG_DIGITS = 5


def _round(x: float) -> float:
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.{SIG_DIGITS}g}")


def resolve_gpu_dir(vidur_dir: str | Path, gpu: str) -> Path:
    """The folder holding ``<org>/<model>.mlp.csv`` for ``gpu``: accepts the vidur folder, its
    ``compute`` folder, or the GPU folder itself."""
    p = Path(vidur_dir)
    for cand in (p / "compute" / gpu, p / gpu, p):
        if cand.is_dir() and any(cand.glob("*/*.mlp.csv")):
            return cand
    raise SpecError("--vidur", str(vidur_dir), f"a folder with compute/{gpu}/<org>/<model>.mlp.csv (Vidur profiling data)")


def load_rows(gpu_dir: Path):
    """One DataFrame row per (model, TP, num_tokens, op): columns model, tp, op, kind, m, n, k,
    nbytes, t_s (median seconds). Duplicate measurements of one shape are averaged."""
    import pandas as pd

    files = sorted(Path(gpu_dir).glob("*/*.mlp.csv"))
    if not files:
        raise SpecError("--vidur", str(gpu_dir), "a folder with <org>/<model>.mlp.csv files")
    recs = []
    for f in files:
        model = f.name[: -len(".mlp.csv")]
        d = pd.read_csv(f)
        d = d.groupby(["num_tokens", "num_tensor_parallel_workers"], as_index=False).mean(numeric_only=True)
        for r in d.to_dict("records"):
            h, hkv, e, ff = int(r["n_head"]), int(r["n_kv_head"]), int(r["n_embd"]), int(r["n_expanded_embd"])
            gated = bool(round(r["use_gated_mlp"]))
            tp, t = int(r["num_tensor_parallel_workers"]), int(r["num_tokens"])
            hd = e // h
            fp = ff // tp
            shapes = {
                "attn_pre_proj": ((h + 2 * hkv) * hd // tp, e),
                "attn_post_proj": (e, h * hd // tp),
                "mlp_up_proj": (fp * (2 if gated else 1), e),
                "mlp_down_proj": (e, fp),
            }
            for op, (n, k) in shapes.items():
                recs.append((model, tp, op, "gemm", t, n, k, 2.0 * (t * k + k * n + t * n),
                             r[f"time_stats.{op}.median"] * 1e-3))
            ew_bytes = {
                "input_layernorm": 2 * 2.0 * t * e,
                "post_attention_layernorm": 2 * 2.0 * t * e,
                "mlp_act": 2.0 * t * fp * (3 if gated else 2),
                "add": 2 * 3.0 * t * e,
            }
            for op, nb in ew_bytes.items():
                if f"time_stats.{op}.median" not in r:  # e.g. phi-2 (parallel block) has one norm
                    continue
                recs.append((model, tp, op, ELEMENTWISE_OPS[op], t, 0, 0, nb, r[f"time_stats.{op}.median"] * 1e-3))
    df = pd.DataFrame(recs, columns=["model", "tp", "op", "kind", "m", "n", "k", "nbytes", "t_s"])
    return df[df.t_s > 0].reset_index(drop=True)


def held_out_groups(df) -> list[tuple[str, int]]:
    """Deterministic hold-out, a diagonal over (model, TP): the i-th model (sorted by name) holds out
    its (i mod #TPs)-th TP degree. With Vidur's four models that is ~30% of the groups, every TP
    degree once, and a model measured at one TP only (phi-2) is held out entirely."""
    out = []
    for i, model in enumerate(sorted(set(df.model))):
        tps = sorted({int(t) for t in df.tp[df.model == model]})
        out.append((model, tps[i % len(tps)]))
    return out


def _held_mask(df, groups):
    import numpy as np

    g = set(groups)
    return np.array([(m, int(t)) in g for m, t in zip(df.model, df.tp)])


def _fit_gemm(peak: float, bw: float, df) -> dict[str, float]:
    import numpy as np
    from scipy.optimize import least_squares

    from simfoe.costs.kernels import gemm_time_array

    m, n, k, t = (df[c].to_numpy(float) for c in ("m", "n", "k", "t_s"))

    def unpack(x):
        return (x[0], math.exp(x[1]), math.exp(x[2]), math.exp(x[3]), x[4], math.exp(x[5]), math.exp(x[6]), x[7])

    def resid(x):
        return np.log(gemm_time_array(peak, bw, unpack(x), m, n, k) / t)

    # start: large GEMMs ~80% of peak, HBM ~90%, pads of a few tiles, launch ~5 us, soft max p=4
    x0 = [0.8, math.log(32), math.log(64), math.log(64), 0.9, math.log(1e6), math.log(5e-6), 4.0]
    lo = [0.05, math.log(1e-3), math.log(1e-3), math.log(1e-3), 0.05, 0.0, math.log(1e-8), 1.0]
    hi = [1.0, math.log(1e5), math.log(1e5), math.log(1e5), 1.0, math.log(1e9), math.log(1e-3), 50.0]
    res = least_squares(resid, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.05)
    names = ("eff_max", "m_pad", "n_pad", "k_pad", "mem_eff", "mem_floor_bytes", "launch_s", "smooth_p")
    return {nm: _round(v) for nm, v in zip(names, unpack(res.x))}


def _fit_elementwise(bw: float, df) -> dict[str, float]:
    import numpy as np
    from scipy.optimize import least_squares

    b, t = df.nbytes.to_numpy(float), df.t_s.to_numpy(float)

    def resid(x):
        return np.log((b / (bw * x[0]) + math.exp(x[1])) / t)

    res = least_squares(resid, [0.8, math.log(5e-6)], bounds=([0.01, math.log(1e-8)], [1.0, math.log(1e-3)]),
                        loss="soft_l1", f_scale=0.05)
    return {"mem_eff": _round(res.x[0]), "launch_s": _round(math.exp(res.x[1]))}


def predict(hw, df):
    """Predicted seconds for each row of ``load_rows`` output, through the public kernel functions."""
    import numpy as np

    from simfoe.costs.kernels import elementwise, gemm

    out = np.empty(len(df))
    for i, (kind, m, n, k, nb) in enumerate(zip(df.kind, df.m, df.n, df.k, df.nbytes)):
        if kind == "gemm":
            out[i] = gemm(hw, int(m), int(n), int(k)).latency_s
        else:
            out[i] = elementwise(hw, float(nb), kind=kind).latency_s
    return out


def error_table(hw, df, held) -> dict:
    """MAPE (%) per op and for all GEMM rows, on train and held-out rows: {op: {train, held_out, rows}}."""
    import numpy as np

    ape = np.abs(predict(hw, df) / df.t_s.to_numpy(float) - 1.0) * 100.0

    def cell(sel):
        tr, ho = sel & ~held, sel & held
        return {"train": _r2(ape[tr].mean()) if tr.any() else None,
                "held_out": _r2(ape[ho].mean()) if ho.any() else None,
                "held_out_p90": _r2(float(np.percentile(ape[ho], 90))) if ho.any() else None,
                "rows": int(sel.sum())}

    ops = df.op.to_numpy()
    table = {"gemm (all)": cell(df.kind.to_numpy() == "gemm")}
    for op in (*GEMM_OPS, *ELEMENTWISE_OPS):
        table[op] = cell(ops == op)
    return table


def _r2(x: float) -> float:
    return round(float(x), 2)


def run_fit(hardware: str, vidur_dir: str | Path, write: bool = False) -> dict:
    """Fit ``hardware``'s kernel efficiencies to Vidur data; optionally write them to its profile.

    Returns a report: params (the families Vidur's rows fit: GEMM, elementwise, attention), held-out groups,
    MAPE (%) per op on train and held-out rows, and the written path (or None). Writing keeps the profile's
    other kernel families (e.g. ``grouped_gemm*`` from ``calibrate --from-tables``) and their provenance.
    """
    from simfoe.specs.io import load_hardware

    if hardware not in DATA_SOURCE:
        raise SpecError("--hardware", hardware, "allowed: " + ", ".join(DATA_SOURCE) + " (profiles with operator data)")
    src_name, gpu = DATA_SOURCE[hardware]
    src = load_hardware(src_name)
    gpu_dir = resolve_gpu_dir(vidur_dir, gpu)
    df = load_rows(gpu_dir)
    groups = held_out_groups(df)
    held = _held_mask(df, groups)
    train = df[~held]
    peak, bw = src.peak("bf16"), src.gpu.hbm_bandwidth

    params = _fit_params(peak, bw, train, gpu)
    target = load_hardware(hardware).model_copy(update={"kernels": params})
    fitted_src = src.model_copy(update={"kernels": params})
    errors = error_table(fitted_src, df, held)
    gemm_held = errors["gemm (all)"]["held_out"]
    provenance = _provenance(hardware, src_name, gpu, gemm_held)
    written = None
    if write:  # families this fit does not make (fused MoE from the kernel tables) stay as they are
        from simfoe.specs.profile_io import update_profile

        kept = {k: v for k, v in load_hardware(hardware).kernels.items() if k not in params}
        written = str(update_profile(hardware, "kernels", {**params, **kept}, provenance=provenance))
    return {
        "hardware": hardware,
        "data": str(gpu_dir),
        "data_profile": src_name,
        "rows": int(len(df)),
        "held_out_groups": [f"{m} TP{t}" for m, t in groups],
        "params": params,
        "mape_pct": errors,
        "gemm_held_out_mape_pct": gemm_held,
        "provenance": provenance,
        "written": written,
        "target_hbm_bandwidth": target.gpu.hbm_bandwidth,
    }


def _fit_params(peak: float, bw: float, train, gpu: str) -> dict[str, dict[str, float]]:
    """The kernel families Vidur's training rows fit (``peak``: bf16 FLOP/s, ``bw``: HBM bytes/s): GEMM, pooled
    and per-kind elementwise; attention from the published FlashAttention rate of ``gpu`` and the GEMM's
    memory terms."""
    g = _fit_gemm(peak, bw, train[train.kind == "gemm"])
    params: dict[str, dict[str, float]] = {"gemm": g}
    ew = train[train.kind != "gemm"]
    params["elementwise"] = _fit_elementwise(bw, ew)
    for kind in ("norm", "act", "add"):
        params[f"elementwise_{kind}"] = _fit_elementwise(bw, ew[ew.kind == kind])
    fa_flops, _ = ATTENTION_PUBLISHED[gpu]
    params["attention_prefill"] = {"eff_max": _round(fa_flops / peak), "mem_eff": g["mem_eff"], "launch_s": g["launch_s"]}
    params["attention_decode"] = {"mem_eff": g["mem_eff"], "mem_floor_bytes": g["mem_floor_bytes"],
                                  "launch_s": g["launch_s"], "eff_max": _round(fa_flops / peak)}
    return params


def _provenance(hardware: str, src_name: str, gpu: str, gemm_held: float) -> dict[str, str]:
    """Sources of the fitted kernel families (``src_name``'s fit, copied when ``hardware`` has no data)."""
    fa_flops, fa_src = ATTENTION_PUBLISHED[gpu]
    today = _dt.date.today().isoformat()
    data_rel = f"../shared/data/vidur/compute/{gpu}"
    base = f"fit to {data_rel} by `simfoe fit kernels` on {today}, held-out GEMM MAPE {gemm_held}%"
    if hardware != src_name:
        base = (f"copied from the {src_name} fit (no {hardware} operator data; same GH100 die; memory term "
                f"uses {hardware}'s own hbm_bandwidth): " + base)
    return {
        "kernels": base,
        "kernels.gemm": base + "; form: docs/calibration-kernels.md",
        "kernels.elementwise": base + " (norm, act, add rows; bytes = elements moved x 2)",
        "kernels.attention_prefill": f"eff_max = {fa_flops / 1e12:.0f} TFLOP/s / bf16 peak: {fa_src}; "
                                     "mem_eff, launch_s from kernels.gemm",
        "kernels.attention_decode": "mem_eff, mem_floor_bytes, launch_s from kernels.gemm (HBM streaming of weights); "
                                    "eff_max as kernels.attention_prefill",
    }
