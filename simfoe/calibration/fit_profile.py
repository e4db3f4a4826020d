"""Fit a hardware profile from a measurement set (validation/README.md format) and predict its rows.

A CPU measurement set becomes a profile in which one worker process is one "GPU":

* ``gpu.peak_flops[dtype]``: the highest GEMM FLOP/s measured at 1 thread in that dtype (FLOP/s);
  ``gpu.hbm_bandwidth``: the highest copy bandwidth of buffers larger than 4x the last-level cache
  (DRAM-resident; bytes moved = 2 x size, bytes/s); ``gpu.hbm_bytes`` = memory / processes.
* ``node.gpus_per_node`` = CPUs available (one process per core); ``node.nvlink_bandwidth`` and
  ``collectives.nvlink.alpha_s`` / ``hop_s``: alpha-beta fit of the gloo loopback collectives at world
  size 2, with a per-step latency (``hop_s``: all_reduce runs 2 steps at 2 ranks, all_gather and
  all_to_all 1, as simfoe/costs/collectives.py counts them); ``efficiency`` = 1 by definition (the
  fitted bandwidth *is* the achieved rate; the path latency ``nvlink_latency_s`` = 0 because alpha and
  hop absorb it). ``network`` = the same values (one node).
* ``kernels``: the families of simfoe/costs/kernels.py fitted through its public functions
  (gemm on fp32 GEMMs, attention on the GQA SDPA rows, elementwise on copies).

Kernel times: ``cpu_median_s`` (process CPU time) for 1-thread rows, which excludes time the process
sat descheduled on a shared host (validation/README.md); ``median_s`` otherwise. Collectives: wall
``median_s`` (no CPU time is recorded for them). Each fit minimizes a soft-L1 loss on
log(predicted / measured); residuals (APE, %) are reported per family.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from simfoe.errors import SpecError
from simfoe.inputs import check_text_file
from simfoe.paths import repo_relative
from simfoe.specs.precision import number_format

if TYPE_CHECKING:
    import pandas as pd

SIG = 5
#: GQA decode/prefill rows are fitted (all simfoe attention models are GQA; the testbed too).
ATTENTION_VARIANT = "sdpa_gqa"
#: Size (bytes, per rank, nccl-tests "size") conversion harness -> simfoe.costs.collectives.predict:
#: all_gather "bytes" is the gathered output (n x per-rank), all_to_all "bytes" is one rank's whole send
#: buffer (n chunks, its own included): simfoe wants per-rank / per-peer bytes.
COLLECTIVE_DIVISOR = {"all_reduce": False, "all_gather": True, "all_to_all": True}


def _round(x: float) -> float:
    return float(f"{x:.{SIG}g}") if x and math.isfinite(x) else float(x)


# --------------------------------------------------------------------------------------- loading
def load_set(set_dir: str | Path, env: dict | None = None):
    """(kernels DataFrame, collectives DataFrame, env dict) of a measurement set; ``t_s`` column added
    to kernels (cpu_median_s for 1-thread CPU rows, else median_s). Kernels are the in-pass rows
    (:func:`in_pass_rows`): where an op was also timed cold, its cold rows only. ``env``: the set's
    env.json already loaded (and the set checked) by :func:`load_env`."""
    import pandas as pd

    d = Path(set_dir)
    env = load_env(d) if env is None else env
    k = in_pass_rows(pd.read_csv(d / "kernels.csv"))
    use_cpu = (k.device == "cpu") & (k.threads == 1) & k.cpu_median_s.notna() & (k.cpu_median_s > 0)
    k["t_s"] = np.where(use_cpu, k.cpu_median_s, k.median_s)
    c = pd.read_csv(d / "collectives.csv") if (d / "collectives.csv").is_file() else pd.DataFrame()
    return k, c, env


#: Columns every kernels.csv of a measurement set has (validation.harness writes these and more).
SET_KERNEL_COLUMNS = ("op", "variant", "device", "dtype", "threads", "median_s", "cpu_median_s")


def load_env(set_dir: str | Path) -> dict:
    """The env.json of a measurement set, after checking that the folder is one: kernels.csv (with
    the harness's columns) and env.json present, every file UTF-8 text, env.json a JSON object.
    SpecError field: ``measurement set`` (the CLI shows --from)."""
    import csv

    d = Path(set_dir)
    what = "a measurement set folder written by python -m validation.harness (kernels.csv, env.json[, collectives.csv])"

    def bad(why):
        return SpecError("measurement set", str(set_dir), f"{what}; {why}")

    if not d.is_dir():
        raise bad("no such folder")
    for name in ("kernels.csv", "env.json"):
        if not (d / name).is_file():
            raise bad(f"{name} is missing")
    for name in ("kernels.csv", "collectives.csv", "env.json"):
        if not (d / name).is_file():
            continue  # collectives.csv is optional (a GPU set has none)
        try:
            check_text_file("measurement set", set_dir, d / name)
        except SpecError:
            raise bad(f"{name} is not a UTF-8 text file") from None
    with open(d / "kernels.csv", newline="", encoding="utf-8") as f:
        header = [c.strip() for c in next(csv.reader(f), [])]
    missing = [c for c in SET_KERNEL_COLUMNS if c not in header]
    if missing:
        raise bad(f"kernels.csv lacks the column(s) {', '.join(missing)} (header: {','.join(header)[:80] or 'empty'})")
    try:
        env = json.loads((d / "env.json").read_text(encoding="utf-8"))
    except ValueError:
        raise bad("env.json is not valid JSON") from None
    if not isinstance(env, dict):
        raise bad("env.json is not a JSON object")
    return env


COLD = "_cold"
"""Variant suffix of rows timed one call per sample after a cache-clearing read (validation.bench_kernels)."""


COLD_OPS: tuple[str, ...] = ("routing_glue",)
"""Ops whose cold rows stand for the in-pass cost. A layer's routing runs once per layer, after the layer's
weights streamed through the caches: the testbed's in-pass expert loop matches the cold glue (+2.2 ms
of eager ops per decode pass, docs/calibration.md). GEMMs run back to back inside a layer and sit
between the two states in the pass (+10% over warm), while the cold GEMM rows (a cache-clearing read
before every call, +0.1-0.4 ms per call) overshoot it: the tables stay on the warm rows and the cold
GEMM and grouped-FFN rows are kept in the set as the bound."""


EAGER = "_eager"
"""Variant suffix of CUDA rows timed as an eager loop of launches (validation.bench_kernels): the plain
variant beside it is the same point replayed from a CUDA graph, the device time simfoe's GPU kernel
costs model (a serving engine replays its decode steps from graphs)."""


def in_pass_rows(k):
    """The rows in the state a forward pass runs its ops in: for the ``COLD_OPS`` the set also timed
    cold (variant ``*_cold``) only the cold rows; for every other op its warm rows (cold rows dropped);
    sets measured before the cold variants as measured. CUDA eager rows (``*_eager``) are dropped: their
    graph-replayed twins carry the device time."""
    v = k.variant.astype(str)
    k = k[~v.str.endswith(EAGER)]
    cold = k.variant.astype(str).str.endswith(COLD)
    cold_ops = set(k.op[cold]) & set(COLD_OPS)
    return k[(k.op.isin(cold_ops) & cold) | (~k.op.isin(cold_ops) & ~cold)]


def _state(rows) -> str:
    """Provenance words for the cache state of ``rows`` (one op's rows from :func:`load_set`)."""
    if rows.empty or not str(rows.variant.iloc[0]).endswith(COLD):
        return ""
    mib = int(rows.flush_bytes.iloc[0]) // 2 ** 20
    return f" ({rows.variant.iloc[0]}: one call per sample after a {mib} MiB read, the in-pass cache state)"


def _kv(r) -> tuple[int, int, int]:
    return int(r.heads), int(r.kv_heads), int(r.head_dim)


# --------------------------------------------------------------------------------------- predictions
def predict_kernel_row(hw, r) -> float | None:
    """simfoe's prediction (s) for one kernels.csv row, through simfoe.costs.kernels; None if not modeled."""
    from simfoe.costs import kernels as K

    dt = str(r.dtype)
    if r.op == "gemm":
        return K.gemm(hw, int(r.m), int(r.n), int(r.k), dt).latency_s
    if r.op == "attention":
        h, hkv, d = _kv(r)
        b, ctx, mla = int(r.batch), int(r.context_len), str(r.variant).endswith(":mla")  # mla: kernel-table rows
        if str(r.variant).startswith("prefill"):
            return K.attention_prefill(hw, b, int(r.seq_len), ctx, h, hkv, d, dt, causal=bool(int(r.causal)),
                                       mla=mla).latency_s
        return K.attention_decode(hw, b, ctx, h, hkv, d, dt, mla=mla).latency_s
    if r.op == "memcopy" and r.variant == "copy":
        return K.elementwise(hw, 2.0 * float(r.size_bytes)).latency_s
    if r.op == "grouped_ffn":
        # as simfoe.forward.plan._experts_seconds: grouped up (n=2f, f ungated), activation, grouped down, routed slots
        loads = np.array([int(x) for x in str(r.tokens_per_expert).split(";") if x != ""], dtype=float)
        k, n, eb = int(r.k), int(r.n), number_format(dt).output_bytes  # fp4 experts write bf16
        slots = float(getattr(r, "slots", loads.sum()))  # kernel tables: every token x top-k slot
        up = (2 if int(getattr(r, "gated", 1)) else 1) * n  # kernel tables: relu^2 experts have no gate matrix
        return (K.grouped_gemm(hw, loads, up, k, dt).latency_s
                + K.elementwise(hw, 3.0 * loads.sum() * n * eb, kind="act").latency_s
                + K.grouped_gemm(hw, loads, k, n, dt).latency_s + K.moe_slots(hw, slots, k, n, dt).latency_s)
    if r.op == "routing_glue":
        return K.routing_glue(hw, *glue_features(r))
    return None


def glue_features(r) -> tuple[int, int, int, float, float]:
    """(active experts, idle experts, ranks, rows, tokens) of a ``routing_glue`` row; the benchmark routes
    top-1 when ranks = 0, else top-min(2, experts x ranks) (validation/README.md)."""
    E, R, T, active = int(r.experts), int(r.ranks), int(r.tokens_total), int(r.experts_active)
    k = 1 if R == 0 else min(2, E * R)
    return active, E - active, R, float(T * k), float(T)


def glue_rows(k):
    """The 1-thread routing_glue rows of a set's kernels frame (empty for sets measured before the op)."""
    if "ranks" not in k.columns:
        return k.iloc[:0]
    return k[(k.op == "routing_glue") & (k.threads == 1)]


def _fit_glue(g) -> dict:
    """Non-negative least squares of the routing_glue rows, relative residuals (each row weighted 1/t)."""
    from scipy.optimize import nnls

    from simfoe.costs.kernels import GLUE_PARAMS, glue_terms

    y = g.t_s.to_numpy(float)
    X = np.array([glue_terms(*glue_features(r)) for r in g.itertuples(index=False)], float)
    coef, _ = nnls(X / y[:, None], np.ones_like(y))
    return {nm: _round(float(v)) for nm, v in zip(GLUE_PARAMS, coef)}


def predict_collective_row(hw, r) -> float:
    """simfoe's prediction (s) for one collectives.csv row (harness sizes converted, see COLLECTIVE_DIVISOR)."""
    from simfoe.costs.collectives import predict

    n = int(r.world_size)
    nb = float(r.bytes) / (n if COLLECTIVE_DIVISOR[r.collective] else 1)
    return predict(hw, r.collective, n, nb, "auto", 1)


# --------------------------------------------------------------------------------------- fitting
def _lsq(resid: Callable, x0, lo, hi):
    from scipy.optimize import least_squares

    return least_squares(resid, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.05).x


def _with_kernels(hw, kernels: dict):
    return hw.model_copy(update={"kernels": kernels})


def _fit_family(hw, kernels: dict, family: str, spec: dict, rows, meas: np.ndarray) -> dict:
    """Fit the parameters ``spec`` = {name: (start, low, high, log_scale)} of ``kernels[family]``."""
    names = list(spec)
    tr = [(math.log(v[0]), math.log(v[1]), math.log(v[2])) if v[3] else v[:3] for v in spec.values()]

    def unpack(x):
        return {nm: (math.exp(xi) if spec[nm][3] else float(xi)) for nm, xi in zip(names, x)}

    def resid(x):
        h = _with_kernels(hw, {**kernels, family: {**kernels.get(family, {}), **unpack(x)}})
        pred = np.array([predict_kernel_row(h, r) for r in rows.itertuples(index=False)])
        return np.log(pred / meas)

    x = _lsq(resid, [t[0] for t in tr], [t[1] for t in tr], [t[2] for t in tr])
    return {nm: _round(v) for nm, v in unpack(x).items()}


def _ape(pred, meas) -> np.ndarray:
    return np.abs(np.asarray(pred, float) / np.asarray(meas, float) - 1.0) * 100.0


def _errs(ape: np.ndarray) -> dict:
    return {"rows": int(ape.size), "mape_pct": round(float(ape.mean()), 2), "max_ape_pct": round(float(ape.max()), 2)}


def row_errors(hw, rows) -> dict:
    """{"rows", "mape_pct", "max_ape_pct"} of ``hw``'s predictions for kernels.csv ``rows`` (against ``t_s``)."""
    pred = np.array([predict_kernel_row(hw, r) for r in rows.itertuples(index=False)], float)
    return _errs(_ape(pred, rows.t_s.to_numpy(float)))


PLATEAU_MIN_BYTES = 16 * 2**20
PLATEAU_SPREAD = 0.10


def _dram_plateau(copies, llc: float):
    """Copies on the DRAM plateau when none exceeds 4 x the reported last-level cache.

    A VM may report the host's whole shared L3 (480 MiB on the Intel Xeon runners), far more than one
    tenant's share. Copies of 16 MiB and up whose bandwidths lie within 10% of their median stream
    from DRAM (a cache-resident copy is 2-4x faster than DRAM on both CPU kinds measured); returns
    those rows and the provenance sentence, or an empty frame when there is no such plateau.
    """
    big = copies[copies.size_bytes >= PLATEAU_MIN_BYTES]
    rate = big.bytes / big.t_s
    # the plateau: copies within 10% of the group's median rate (one disturbed sample does not void it)
    on = big[(rate / rate.median() - 1).abs() <= PLATEAU_SPREAD] if len(big) else big
    if len(on) < 2:
        return big.iloc[0:0], ""
    r_on = on.bytes / on.t_s
    dropped = len(big) - len(on)
    return on, (f"highest copy bandwidth (2 x size / cpu_median_s) of copies >= {PLATEAU_MIN_BYTES >> 20} MiB on "
                f"a DRAM plateau ({len(on)} copies within {r_on.max() / r_on.min() - 1:.1%} of each other"
                + (f"; {dropped} copy more than {PLATEAU_SPREAD:.0%} off the group's median rate left out" if dropped else "")
                + f"; the reported LLC of {int(llc)} B is the host's, shared, so no copy exceeds 4 x LLC)")


def _gpu_section(k, env, name) -> tuple[dict, dict]:
    one = k[(k.op == "gemm") & (k.threads == 1)]
    peaks = {}
    for dt in sorted(set(one.dtype)):
        r = one[one.dtype == dt]
        peaks[dt] = _round(float((r.flops / r.t_s).max()))
    llc = float(env.get("last_level_cache_bytes") or 0)
    copies = k[(k.op == "memcopy") & (k.variant == "copy")]
    cp = copies[copies.size_bytes > 4 * llc]
    bw_note = f"highest copy bandwidth (2 x size / cpu_median_s) of copies > 4 x LLC ({int(llc)} B): DRAM-resident"
    if cp.empty:
        cp, bw_note = _dram_plateau(copies, llc)
    if cp.empty or not peaks:
        raise SpecError("measurement set", name, "GEMM rows at 1 thread and copies larger than 4x the last-level cache "
                        "(or a flat bandwidth plateau over copies of 16 MiB and up)")
    bw = _round(float((cp.bytes / cp.t_s).max()))
    procs = int(env.get("cpus_available") or 1)
    mem = float(env["cpu"]["mem_total_bytes"]) / procs
    l2 = 0.0
    try:
        l2 = float(env["cpu"]["caches"]["L2"]["size"].rstrip("K")) * 1024
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    return {"name": f"cpu-process-1-thread ({env.get('device_name') or 'CPU'})", "peak_flops": peaks,
            "hbm_bytes": _round(mem), "hbm_bandwidth": bw, "l2_bytes": l2, "launch_overhead_s": 0.0}, {
        "peak": "highest GEMM FLOP/s at 1 thread per dtype (cpu_median_s)",
        "bw": bw_note,
        "mem": f"env.json cpu.mem_total_bytes / {procs} processes", "l2": "env.json cpu.caches.L2 (per core)"}


def _table_from(rows, peak: float, ms: list[int] | None = None) -> dict | None:
    """GemmTable dict from single-call GEMM rows of one dtype (see simfoe.specs.hardware.GemmTable).

    The slices are the (n, k) pairs measured at 3 or more m values; (n0, k0) is the square pair with
    the most m values; ``ms`` restricts the m axis (leave-one-out checks). None without such slices.
    """
    eff = {(int(r.m), int(r.n), int(r.k)): float(r.flops / r.t_s / peak) for r in rows.itertuples(index=False)}
    pairs: dict[tuple[int, int], set[int]] = {}
    for (m, n, k) in eff:
        pairs.setdefault((n, k), set()).add(m)
    squares = [nk for nk, mm in pairs.items() if nk[0] == nk[1] and len(mm) >= 3]
    if not squares:
        return None
    n0, k0 = max(squares, key=lambda nk: (len(pairs[nk]), -nk[0]))
    axis = sorted(set(ms) if ms is not None else pairs[(n0, k0)])
    ns = sorted(n for (n, k), mm in pairs.items() if k == k0 and set(axis) <= mm)
    ks = sorted(k for (n, k), mm in pairs.items() if n == n0 and set(axis) <= mm)
    return {"m": axis, "n0": n0, "k0": k0, "n": ns, "k": ks,
            "eff_n": [[_round(eff[(m, n, k0)]) for m in axis] for n in ns],
            "eff_k": [[_round(eff[(m, n0, k)]) for m in axis] for k in ks]}


def _gemm_tables(k, peaks: dict) -> tuple[dict, dict]:
    """Measured GEMM tables per dtype (1-thread rows) and their held-out checks.

    Checks, never fitted: GEMM rows off the table's slices (square shapes), and each interior m of
    the table predicted from a table without that m (the interpolation error at an unmeasured m).
    """
    from simfoe.costs.kernels import table_efficiency
    from simfoe.specs.hardware import GemmTable

    tables, report = {}, {}
    one = k[(k.op == "gemm") & (k.threads == 1)]
    for dt in sorted(set(one.dtype)):
        rows = one[one.dtype == dt]
        t = _table_from(rows, peaks[dt])
        if t is None:
            continue
        tables[dt] = t
        tab = GemmTable.model_validate(t)
        on_slice = {(n, t["k0"]) for n in t["n"]} | {(t["n0"], kk) for kk in t["k"]}
        sliced = np.array([(int(n), int(kk)) in on_slice for n, kk in zip(rows.n, rows.k)])
        on = sliced & rows.m.isin(t["m"]).to_numpy()

        def pred(tb, rr):
            return [r.flops / (peaks[dt] * table_efficiency(tb, r.m, r.n, r.k))  # noqa: B023 (called in this iteration)
                    for r in rr.itertuples(index=False)]

        off = rows[~on]
        if not off.empty:
            report[f"gemm table ({dt}): shapes off the table"] = _errs(_ape(pred(tab, off), off.t_s.to_numpy(float)))
        ape = []
        for m_out in t["m"][1:-1]:
            loo = GemmTable.model_validate(_table_from(rows, peaks[dt], [x for x in t["m"] if x != m_out]))
            at = rows[sliced & (rows.m == m_out).to_numpy()]
            ape += list(_ape(pred(loo, at), at.t_s.to_numpy(float)))
        if ape:
            report[f"gemm table ({dt}): each interior m left out"] = _errs(np.array(ape))
    return tables, report


def gloo_path(alpha_s: float, hop_s: float) -> dict:
    """collectives.<path> of a CPU profile: gloo latency per call (s) and per algorithm step (s);
    efficiency 1 because node.nvlink_bandwidth is the fitted achieved rate."""
    return {"alpha_s": alpha_s, "hop_s": hop_s, "efficiency": 1.0}


def _fit_collectives(hw, c) -> tuple[dict, dict]:
    """alpha (s), per-step latency hop (s) and achieved bandwidth (bytes/s) of the gloo loopback path,
    world size 2, all sizes. The step count tells the collectives apart at small sizes: gloo's
    all_reduce (2 steps at 2 ranks) takes about twice a 1-step all_to_all there."""
    rows = c[(c.world_size == 2) & (c.oversubscribed == 0) & c.collective.isin(list(COLLECTIVE_DIVISOR))]
    if rows.empty:
        raise SpecError("measurement set", "collectives.csv", "gloo rows at world size 2, not oversubscribed")
    meas = rows.median_s.to_numpy(float)

    def build(x):
        a, bw, hop = math.exp(x[0]), math.exp(x[1]), math.exp(x[2])
        node = hw.node.model_copy(update={"nvlink_bandwidth": bw, "nvlink_latency_s": 0.0})
        path = gloo_path(a, hop)
        coll = type(hw.collectives).model_validate({"nvlink": path, "network": path})
        return hw.model_copy(update={"node": node, "collectives": coll})

    def resid(x):
        h = build(x)
        return np.log(np.array([predict_collective_row(h, r) for r in rows.itertuples(index=False)]) / meas)

    x = _lsq(resid, [math.log(1e-4), math.log(1e9), math.log(1e-4)], [math.log(1e-7), math.log(1e6), math.log(1e-8)],
             [math.log(1e-1), math.log(1e12), math.log(1e-1)])
    h = build(x)
    pred = np.array([predict_collective_row(h, r) for r in rows.itertuples(index=False)])
    ape = _ape(pred, meas)
    per = {cn: _errs(ape[(rows.collective == cn).to_numpy()]) for cn in COLLECTIVE_DIVISOR if (rows.collective == cn).any()}
    return ({"alpha_s": _round(math.exp(x[0])), "hop_s": _round(math.exp(x[2])), "bandwidth": _round(math.exp(x[1]))},
            {"all": _errs(ape), **per})


def _gemm_spec(g0: dict, pad_start: float = 1e-2, launch_max: float = 1e-3) -> dict:
    """Fit spec of the GEMM form started from ``g0`` (a CPU set: generic starts; a GPU set: the base's
    Vidur fit, or the bf16 refit for fp8 and grouped experts), paddings starting at least at
    ``pad_start``: efficiencies in (0, 1], paddings and size floor on a log scale, launch between 10 ns
    and ``launch_max``."""
    return {
        "eff_max": (g0.get("eff_max", 0.8), 0.05, 1.0, False),
        "m_pad": (max(g0.get("m_pad", 64.0), pad_start), 1e-3, 1e5, True),
        "n_pad": (max(g0.get("n_pad", 64.0), pad_start), 1e-3, 1e5, True),
        "k_pad": (max(g0.get("k_pad", 1.0), pad_start), 1e-3, 1e5, True),
        "mem_eff": (g0.get("mem_eff", 0.9), 0.05, 1.0, False),
        "mem_floor_bytes": (max(g0.get("mem_floor_bytes", 1e4), 2.0), 1.0, 1e9, True),
        "launch_s": (max(g0.get("launch_s", 5e-6), 1e-7), 1e-8, launch_max, True), "smooth_p": (g0.get("smooth_p", 4.0), 1.0, 50.0, False)}


def fit_copy_attention(hw, kern: dict, k, copy_start: tuple[float, float], attn_start: tuple[float, float],
                       launch_max: float):
    """Fit ``kern['elementwise']`` on the copy rows of ``k`` and ``kern['attention_prefill' / 'attention_decode']``
    on its GQA SDPA rows (in place); returns the (copy, prefill, decode) rows. Starts are (mem_eff, launch_s)
    for the copies and for attention; launches are bounded by [10 ns, ``launch_max``]."""
    cp = k[(k.op == "memcopy") & (k.variant == "copy")]
    kern["elementwise"] = _fit_family(hw, kern, "elementwise", {
        "mem_eff": (copy_start[0], 0.01, 1.0, False), "launch_s": (copy_start[1], 1e-8, launch_max, True)},
        cp, cp.t_s.to_numpy(float))
    att = k[(k.op == "attention") & k.variant.astype(str).str.endswith(":" + ATTENTION_VARIANT)]
    pre, dec = att[att.variant.str.startswith("prefill")], att[att.variant.str.startswith("decode")]
    mem0, launch0 = attn_start
    if not pre.empty:
        kern["attention_prefill"] = _fit_family(hw, kern, "attention_prefill", {
            "eff_max": (0.5, 0.01, 1.0, False), "mem_eff": (mem0, 0.01, 1.0, False),
            "launch_s": (launch0, 1e-8, launch_max, True), "smooth_p": (4.0, 1.0, 50.0, False)}, pre, pre.t_s.to_numpy(float))
    if not dec.empty:
        kern["attention_decode"] = {"eff_max": kern.get("attention_prefill", {}).get("eff_max", 1.0)}
        kern["attention_decode"].update(_fit_family(hw, kern, "attention_decode", {
            "mem_eff": (mem0, 0.01, 1.0, False), "mem_floor_bytes": (1e4, 1.0, 1e9, True),
            "launch_s": (launch0, 1e-8, launch_max, True)}, dec, dec.t_s.to_numpy(float)))
    return cp, pre, dec


def fit_profile(set_dir: str | Path, name: str | None = None, env: dict | None = None) -> tuple[dict, dict, dict]:
    """(profile dict, provenance, report) fitted from the measurement set in ``set_dir``.

    The report holds the fitted values and residuals (APE %, per family / collective) on the rows
    each part was fitted to, plus held-out checks (grouped FFN, other dtypes) that were not fitted.
    """
    from simfoe.specs.hardware import HardwareSpec

    set_dir = Path(set_dir)
    k, c, env = load_set(set_dir, env)
    if env.get("device") != "cpu":
        raise SpecError("measurement set", str(set_dir), "a CPU set (device cpu); GPU sets are validated, not fitted here")
    src = repo_relative(set_dir)
    name = name or f"cpu-{set_dir.name}"
    gpu, why = _gpu_section(k, env, src)
    base = _uncalibrated(name, env, src, gpu)
    hw = HardwareSpec.model_validate(base)
    report: dict = {"set": src, "profile": name, "kernels": {}, "held_out": {}}

    coll, cerr = _fit_collectives(hw, c)
    report["collectives"] = {"fit": coll, "residuals": cerr}
    for sec, bwk, latk in (("node", "nvlink_bandwidth", "nvlink_latency_s"), ("network", "nic_bandwidth", "nic_latency_s")):
        base[sec][bwk] = coll["bandwidth"]
        base[sec][latk] = 0.0
    base["collectives"] = {p: gloo_path(coll["alpha_s"], coll["hop_s"]) for p in ("nvlink", "network")}
    hw = HardwareSpec.model_validate(base)

    kern: dict[str, dict] = {}
    one = k[(k.op == "gemm") & (k.threads == 1)]  # 1-thread GEMM rows, every dtype
    fp32 = one[one.dtype == "fp32"]
    # starts: large GEMMs near the measured peak, DRAM streaming near the copy rate, launch ~ tens of us
    # (a CPU op dispatch in eager torch); bounds keep efficiencies in (0, 1]
    kern["gemm"] = _fit_family(hw, kern, "gemm", _gemm_spec(
        {"eff_max": 0.9, "m_pad": 8.0, "n_pad": 8.0, "k_pad": 8.0, "mem_eff": 0.8, "mem_floor_bytes": 1e4, "launch_s": 2e-5},
        launch_max=1e-2), fp32, fp32.t_s.to_numpy(float))
    cp, pre, dec = fit_copy_attention(hw, kern, k, copy_start=(0.8, 5e-6), attn_start=(0.5, 2e-5), launch_max=1e-2)
    glue = glue_rows(k)
    if not glue.empty:
        kern["routing_glue"] = _fit_glue(glue)
    base["kernels"] = kern
    base["gpu"]["launch_overhead_s"] = kern["elementwise"]["launch_s"]
    hw_param = HardwareSpec.model_validate(base)
    tables, table_checks = _gemm_tables(k, gpu["peak_flops"])
    base["gemm_tables"] = tables
    hw = HardwareSpec.model_validate(base)

    rows = _CpuRows(one, fp32, cp, pre, dec, glue, k[(k.op == "grouped_ffn") & (k.threads == 1)])
    _cpu_residuals(report, hw, hw_param, rows, tables, table_checks)
    report["kernels_fit"] = kern
    report["gpu"] = gpu
    return base, _cpu_provenance(src, gpu, why, kern, fp32, glue), report


def _uncalibrated(name: str, env: dict, src: str, gpu: dict) -> dict:
    """The uncalibrated CPU profile a fit starts from: one process per core is one 'GPU'; links of 1 GB/s
    and no latency, which the fitted pieces replace."""
    procs = int(env.get("cpus_available") or 1)
    return {
        "name": name,
        "description": f"one torch process per core ({procs} on one node) of {env.get('device_name')}, "
                       f"{env.get('torch')}; fitted from {src}",
        "gpu": gpu,
        "node": {"gpus_per_node": procs, "nvlink_bandwidth": 1e9, "nvlink_latency_s": 0.0, "nvswitch_reduction": False},
        "network": {"nics_per_node": procs, "nic_bandwidth": 1e9, "nic_latency_s": 0.0,
                    "topology": "rail-optimized", "oversubscription": 1.0},
        "collectives": {"nvlink": {"alpha_s": 0.0, "efficiency": 1.0}, "network": {"alpha_s": 0.0, "efficiency": 1.0}},
        "kernels": {},
    }


@dataclass(frozen=True)
class _CpuRows:
    """The rows of a CPU set each part of the fit uses: 1-thread GEMM rows of every dtype and
    their fp32 ones (the parametric GEMM's fit), copies, GQA attention prefill and decode, routing glue, and
    the 1-thread grouped FFN rows (held out)."""

    gemm: pd.DataFrame
    gemm_fp32: pd.DataFrame
    copy: pd.DataFrame
    prefill: pd.DataFrame
    decode: pd.DataFrame
    glue: pd.DataFrame
    grouped: pd.DataFrame


def _cpu_residuals(report: dict, hw, hw_param, rows: _CpuRows, tables: dict, table_checks: dict) -> None:
    """Add to ``report`` the residuals of the rows each kernel family was fitted to (``hw``; the parametric
    GEMM with ``hw_param``, the profile without gemm_tables) and the held-out checks (other dtypes, grouped FFN)."""
    one = rows.gemm

    def resid_of(r, h=None):
        return row_errors(h or hw, r)

    report["kernels"] = {"gemm (fp32, 1 thread), parametric kernels.gemm": resid_of(rows.gemm_fp32, hw_param),
                         "elementwise (copy)": resid_of(rows.copy)}
    for dt in tables:
        report["kernels"][f"gemm table ({dt}, 1 thread)"] = resid_of(one[one.dtype == dt])
    report["held_out"].update(table_checks)
    if not rows.prefill.empty:
        report["kernels"][f"attention_prefill ({ATTENTION_VARIANT})"] = resid_of(rows.prefill)
    if not rows.decode.empty:
        report["kernels"][f"attention_decode ({ATTENTION_VARIANT})"] = resid_of(rows.decode)
    if not rows.glue.empty:
        report["kernels"][f"routing_glue ({rows.glue.variant.iloc[0]})"] = resid_of(rows.glue)
    for dt in sorted(set(one.dtype) - {"fp32"}):
        report["held_out"][f"gemm ({dt}, 1 thread), parametric kernels.gemm"] = resid_of(one[one.dtype == dt], hw_param)
    if not rows.grouped.empty:
        report["held_out"][f"grouped_ffn ({rows.grouped.variant.iloc[0]})"] = resid_of(rows.grouped)


def _cpu_provenance(src: str, gpu: dict, why: dict, kern: dict, fp32, glue) -> dict:
    """The source of every fitted or derived value of a CPU profile fitted from the set at ``src``."""
    today = _dt.date.today().isoformat()
    fitted = f"fit to {src} by simfoe.calibration.fit_profile on {today}"
    prov = {f"gpu.peak_flops.{dt}": f"{src}/kernels.csv: {why['peak']}" for dt in gpu["peak_flops"]}
    prov.update({
        "gpu.name": f"{src}/env.json device_name; one torch process with 1 intra-op thread is one 'GPU'",
        "gpu.hbm_bandwidth": f"{src}/kernels.csv: {why['bw']}",
        "gpu.hbm_bytes": f"{src}/env.json: {why['mem']}",
        "gpu.l2_bytes": f"{src}/env.json: {why['l2']}",
        "gpu.launch_overhead_s": f"= kernels.elementwise.launch_s ({fitted})",
        "node.gpus_per_node": f"{src}/env.json cpus_available: one process per core",
        "node.nvlink_bandwidth": f"{fitted}: alpha-beta of gloo (TCP loopback) all_reduce/all_gather/all_to_all at "
                                 "world size 2, wall median_s, all sizes; the achieved rate (efficiency 1)",
        "node.nvlink_latency_s": "0: the fitted collectives.nvlink.alpha_s and hop_s hold the whole latency",
        "node.nvswitch_reduction": "no in-switch reduction on a CPU host",
        "network": "one node: the scale-out network is never used; same values as the loopback path",
        "collectives.nvlink.alpha_s": f"{fitted}: see node.nvlink_bandwidth",
        "collectives.nvlink.hop_s": f"{fitted}: latency per algorithm step (all_reduce 2 steps at 2 ranks, "
                                    "all_gather and all_to_all 1); see node.nvlink_bandwidth",
        "collectives.nvlink.efficiency": "1 by definition: node.nvlink_bandwidth is the fitted achieved rate",
        "collectives.network": "copy of collectives.nvlink (one node; never used)",
        "kernels": fitted + "; functional forms of simfoe/costs/kernels.py (docs/calibration.md)",
        "kernels.gemm": f"{fitted}: fp32 GEMM rows at 1 thread{_state(fp32)}, cpu_median_s (the smooth padded form; "
                        "prices dtypes without a gemm_tables entry)",
        "gemm_tables": f"{src}/kernels.csv: measured efficiency (flops / cpu_median_s / gpu.peak_flops) of the "
                       f"1-thread GEMM rows{_state(fp32)} on the (n, k) slices measured at every m; no fitting",
        "kernels.elementwise": f"{fitted}: copy rows (bytes = 2 x size), cpu_median_s; norms/activations/adds "
                               "were not measured and use this pooled fit",
        "kernels.attention_prefill": f"{fitted}: prefill:{ATTENTION_VARIANT} rows (causal SDPA, fp32), cpu_median_s",
        "kernels.attention_decode": f"{fitted}: decode:{ATTENTION_VARIANT} rows, cpu_median_s; eff_max from attention_prefill",
        "description": f"{src}",
        "name": "profile name",
    })
    if "routing_glue" in kern:
        prov["kernels.routing_glue"] = (f"{fitted}: routing_glue rows{_state(glue)}, cpu_median_s, "
                                        "non-negative least squares on relative residuals")
    return prov


HEADER = ("# CPU profile fitted from a stored measurement set: one torch process (1 thread) = one 'GPU'.\n"
          "# Regenerate: simfoe calibrate --from {src} --out {out}\n")
GPU_HEADER = ("# GPU profile: the published {base} profile with its kernel families fitted from a stored single-GPU\n"
              "# measurement set. Regenerate: simfoe calibrate --from {src} --out {out}\n")


def write_profile(profile: dict, provenance: dict, out: str | Path, set_dir: str | Path, header: str = HEADER,
                  base: str | None = None) -> Path:
    """Write ``profile`` to ``out``: new files are created whole (validated, atomic); an existing
    profile gets each section replaced through simfoe.specs.profile_io.update_profile."""
    import yaml

    from simfoe.outputs import write_text
    from simfoe.specs.base import validate_spec
    from simfoe.specs.hardware import HardwareSpec
    from simfoe.specs.profile_io import profile_path, update_profile

    path = profile_path(out)
    if path.exists():
        keys = [key for key in ("description", "gpu", "node", "network", "collectives", "kernels", "gemm_tables",
                                "gemm_corrections")
                if key in profile]
        for i, key in enumerate(keys):
            update_profile(path, key, profile[key], provenance=provenance if i == len(keys) - 1 else None)
        return path
    data = {**profile, "provenance": dict(provenance)}
    validate_spec(HardwareSpec, data, "hardware")
    return write_text(path, header.format(src=repo_relative(set_dir), out=repo_relative(path), base=base)
                      + yaml.safe_dump(data, sort_keys=False, width=200), "hardware profile")


def run_fit(set_dir: str | Path, out: str | Path | None = None, name: str | None = None, base: str | None = None) -> dict:
    """Fit ``set_dir`` (a CPU set: the whole profile; a CUDA set: the kernel families on top of the
    published ``base`` profile, simfoe.calibration.fit_gpu); write the profile to ``out`` when given.
    Returns the report (+ ``written``)."""
    if out is not None and name is None:
        name = Path(str(out)).name.removesuffix(".yaml").removesuffix(".yml")
    profile, prov, report = fit_set(set_dir, name, base)
    header = GPU_HEADER if "base" in report else HEADER
    report["written"] = (str(write_profile(profile, prov, out, set_dir, header, report.get("base")))
                         if out is not None else None)
    return report


def fit_set(set_dir: str | Path, name: str | None = None, base: str | None = None) -> tuple[dict, dict, dict]:
    """:func:`fit_profile` for a CPU set; simfoe.calibration.fit_gpu.fit_gpu_profile on top of the
    published ``base`` for a CUDA set (its report has ``base`` and ``base_on_set``)."""
    env = load_env(set_dir)
    if env.get("device") == "cuda":
        from simfoe.calibration.fit_gpu import fit_gpu_profile

        return fit_gpu_profile(set_dir, name, base, env)
    if base is not None:
        raise SpecError("--base", base, "only with a CUDA measurement set (a CPU set is fitted whole)")
    return fit_profile(set_dir, name, env)
