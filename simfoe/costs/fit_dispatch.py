"""Fit ``hw.collectives.deepep`` (DeepEP dispatch/combine kernels) to measured H100 tables, with held-out error.

Data (NVIDIA AIConfigurator, Apache-2.0, read in place): ``<shared>/aiconfigurator/h100_sxm/comm/sglang/``
``0.5.6.post2/wideep_deepep_{normal,ll}_perf.parquet`` (1, 2, 4, 8 nodes of 8 H100, hidden 7168, top-8 of 256
experts; normal rows one per SM count) and ``0.5.12/`` (one node, more shapes). Times in microseconds.
Normal kernels: ``*_transmit_us`` is the kernel (DeepEP's tuning loop times it on a cached layout; the
notify step is timed apart in ``*_notify_us``, fitted by :func:`fit_notify`). Dispatch moves
fp8 tokens with per-128 scales (hidden + hidden/128 x 4 bytes; low-latency + 16 bytes of metadata), combine bf16.

Routing of the tables: DeepEP's test routing (scores |N(0,1)| + 1; the multi-node normal test limits a
token to the top min(nodes, 4) nodes by best score; the one-node and low-latency tests take a plain top-k),
sampled by :func:`simfoe.costs.dispatch.deepep_test_traffic`.

Model (:func:`simfoe.costs.dispatch.seconds`), per kernel: latency inside one node / across nodes,
NVLink and RDMA efficiency; normal across nodes: NVLink forwarding bytes per SM; low latency: a cost per
message. Fitted by least squares on log(predicted / measured) over every SM count (normal) and every
shape. Held out, decided here: every other distinct token count (:data:`HOLDOUT`) at every node count,
and the 8-node normal rows (:data:`NORMAL_HOLDOUT_NODES`; see docs/calibration-collectives.md for why
they are reported but not fitted). Judged at DeepEP's default SM count (:data:`DEFAULT_SMS`).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from simfoe.costs import dispatch as D
from simfoe.errors import SpecError
from simfoe.specs.hardware import DeepEPCalibration, DispatchKernel, HardwareSpec

TABLE_DIR = Path("aiconfigurator") / "h100_sxm" / "comm" / "sglang"
TABLES = {"normal": ("0.5.6.post2/wideep_deepep_normal_perf.parquet", "0.5.12/wideep_deepep_normal_perf.parquet"),
          "ll": ("0.5.6.post2/wideep_deepep_ll_perf.parquet", "0.5.12/wideep_deepep_ll_perf.parquet")}
GPUS_PER_NODE = 8  # H100 nodes of the tables
DEFAULT_SMS = 20  # DeepEP Buffer.num_sms default; SGLang runs the normal kernels on it
NORMAL_HOLDOUT_NODES = (8,)
ROUTING_SAMPLES = 8192
#: fitted parameters per kernel, in the order of the optimizer's vector (units: us, fraction, GB/s per SM, ns)
PARAMS = {"normal": ("alpha_s", "alpha_internode_s", "nvlink_efficiency", "rdma_efficiency", "nvlink_sm_rate"),
          "ll": ("alpha_s", "alpha_internode_s", "nvlink_efficiency", "rdma_efficiency", "message_s")}
_SCALE = {"alpha_s": 1e-6, "alpha_internode_s": 1e-6, "nvlink_efficiency": 1.0, "rdma_efficiency": 1.0,
          "nvlink_sm_rate": 1e9, "message_s": 1e-9}
_X0 = {"alpha_s": 20.0, "alpha_internode_s": 30.0, "nvlink_efficiency": 0.6, "rdma_efficiency": 0.9,
       "nvlink_sm_rate": 10.0, "message_s": 1.0}
_BOUNDS = {"alpha_s": (0, 500), "alpha_internode_s": (0, 500), "nvlink_efficiency": (0.05, 1.0),
           "rdma_efficiency": (0.05, 1.0), "nvlink_sm_rate": (0.1, 200.0), "message_s": (0.0, 1000.0)}


def token_bytes(mode: str, op: str, hidden: int) -> float:
    """Bytes of one token copy in the tables: fp8 dispatch, bf16 combine (:func:`simfoe.costs.dispatch.copy_bytes`)."""
    return D.copy_bytes(hidden, 1 if op == "dispatch" else 2, "deepep-" + mode, op)


def load_rows(shared: Path) -> pd.DataFrame:
    """Measured rows: mode, op, nodes, hidden, topk, experts, tokens, sms, measured_s, table."""
    out = []
    for mode, files in TABLES.items():
        for f in files:
            p = Path(shared) / TABLE_DIR / f
            if not p.is_file():
                raise SpecError("aiconfigurator", str(p), "the measured DeepEP table (../shared/data/aiconfigurator)")
            df = pd.read_parquet(p)
            for op in D.OPS:
                col = f"{op}_transmit_us" if mode == "normal" else f"{op}_avg_t_us"
                sms = df[f"{op}_sms"] if mode == "normal" else 0
                out.append(pd.DataFrame({"mode": mode, "op": op, "nodes": df.node_num, "hidden": df.hidden_size,
                                         "topk": df.num_topk, "experts": df.num_experts, "tokens": df.num_token,
                                         "sms": sms, "measured_s": df[col] * 1e-6, "table": f}))
    rows = pd.concat(out, ignore_index=True)
    # one node: DeepEP's intranode kernel, priced without an SM term; judged at the default SM count only
    # experts must split evenly over the GPUs (DeepEP asserts it; a few 288-expert rows on 64 GPUs do not)
    keep = (rows.measured_s > 0) & (rows.experts % (rows.nodes * GPUS_PER_NODE) == 0) & (rows.topk <= rows.experts)
    keep &= ((rows["mode"] == "ll") | (rows.nodes > 1) | (rows.sms == DEFAULT_SMS))
    return rows[keep].reset_index(drop=True)


def held_out(rows: pd.DataFrame) -> np.ndarray:
    """Rows held out of the fit: every other distinct token count (odd positions), the 8-node normal rows,
    and every 0.5.12 row (other shapes on one node: reported, not fitted)."""
    toks = np.sort(rows.tokens.unique())
    odd = set(toks[1::2].tolist())
    return (rows.tokens.isin(odd) | ((rows["mode"] == "normal") & rows.nodes.isin(NORMAL_HOLDOUT_NODES))
            | rows.table.str.startswith("0.5.12")).to_numpy()


@lru_cache(maxsize=None)
def _unit_traffic(mode: str, nodes: int, topk: int, experts: int) -> D.DispatchTraffic:
    """DeepEP's test routing, one token per GPU (seeded; independent of the hardware, so sampled once per shape
    for every profile fitted or validated)."""
    groups = min(nodes, 4) if (mode == "normal" and nodes > 1) else None
    return D.deepep_test_traffic(nodes, GPUS_PER_NODE, 1.0, experts, topk, groups, ROUTING_SAMPLES)


@lru_cache(maxsize=256)
def _unit_shape(hw_json: str, mode: str, op: str, nodes: int, hidden: int, topk: int, experts: int) -> D.Shape:
    """Shape of one token per GPU (scaled by the row's tokens): linear in tokens."""
    hw = HardwareSpec.model_validate_json(hw_json)
    tr = _unit_traffic(mode, nodes, topk, experts)
    algo = "deepep-normal" if mode == "normal" else "deepep-ll"
    return D.shape(hw, tr, token_bytes(mode, op, hidden), algo, op, nodes)


def predict_rows(hw: HardwareSpec, rows: pd.DataFrame, kernels: dict | None = None) -> np.ndarray:
    """Predicted seconds of measured rows with ``hw``'s kernels (or ``kernels[(mode, op)]``, sms from the row)."""
    js = hw.model_dump_json()
    out = np.empty(len(rows))
    for i, r in enumerate(rows.itertuples(index=False)):
        k = (kernels or {}).get((r.mode, r.op)) or D.kernel(hw, "deepep-" + r.mode, r.op)
        s = _unit_shape(js, r.mode, r.op, int(r.nodes), int(r.hidden), int(r.topk), int(r.experts)).scaled(r.tokens)
        sm = k.nvlink_sm_rate * r.sms if r.mode == "normal" else 0.0
        out[i] = D.seconds(hw, k, sm, s)
    return out


def _kernel(mode: str, x) -> DispatchKernel:
    vals = {p: float(v) * _SCALE[p] for p, v in zip(PARAMS[mode], x)}
    return DispatchKernel(**vals)


def fit_kernel(hw: HardwareSpec, rows: pd.DataFrame, mode: str, op: str) -> DispatchKernel:
    """Least-squares fit of one kernel on log(predicted / measured) of ``rows`` (already the fit subset)."""
    sub = rows[(rows["mode"] == mode) & (rows.op == op)]
    names = PARAMS[mode]

    def resid(x):
        return np.log(predict_rows(hw, sub, {(mode, op): _kernel(mode, x)}) / sub.measured_s.to_numpy())

    lo, hi = zip(*(_BOUNDS[p] for p in names))
    sol = least_squares(resid, [_X0[p] for p in names], bounds=(lo, hi), x_scale="jac")
    return _kernel(mode, sol.x)


def errors(hw: HardwareSpec, rows: pd.DataFrame) -> pd.DataFrame:
    """MAPE (%) by mode, op, node count and fitted/held out, over the DeepEP default SM count (normal)
    and over every SM count."""
    r = rows.assign(pred=predict_rows(hw, rows), held=held_out(rows))
    r["ape"] = (r.pred / r.measured_s - 1).abs() * 100
    r["default_sms"] = (r["mode"] == "ll") | (r.sms == DEFAULT_SMS)
    r["nodes"] = r.nodes.astype(str).where(~r.table.str.startswith("0.5.12"), "1-shapes")
    g = r.groupby(["mode", "op", "nodes", "held"])
    table = g.ape.mean().unstack("held").rename(columns={False: "fitted_all_sms", True: "held_all_sms"})
    d = r[r.default_sms].groupby(["mode", "op", "nodes", "held"]).ape.mean().unstack("held")
    table[["fitted", "held_out"]] = d.rename(columns={False: "fitted", True: "held_out"})[["fitted", "held_out"]]
    table["all_default_sms"] = r[r.default_sms].groupby(["mode", "op", "nodes"]).ape.mean()
    return table.round(2)


#: node counts the notify step is fitted on (2 parameters per op); the 8-node rows are held out
NOTIFY_FIT_NODES = (2, 4)


def load_notify(shared: Path) -> pd.DataFrame:
    """The normal kernels' notify times across nodes (0.5.6.post2): op, nodes, sms, tokens, measured_s."""
    df = pd.read_parquet(Path(shared) / TABLE_DIR / TABLES["normal"][0])
    df = df[df.node_num > 1]
    return pd.concat([pd.DataFrame({"op": op, "nodes": df.node_num, "sms": df[f"{op}_sms"], "tokens": df.num_token,
                                    "measured_s": df[f"{op}_notify_us"] * 1e-6}) for op in D.OPS], ignore_index=True)


def fit_notify(rows: pd.DataFrame, op: str) -> tuple[float, float, float]:
    """(notify_s, notify_per_node_s, notify_per_token_s) of one op: robust least squares (soft L1: the notify
    columns carry 10x outliers) on log(predicted / measured) over the :data:`NOTIFY_FIT_NODES` rows."""
    sub = rows[(rows.op == op) & rows.nodes.isin(NOTIFY_FIT_NODES)]
    n, t, m = sub.nodes.to_numpy(float), sub.tokens.to_numpy(float), sub.measured_s.to_numpy()
    sol = least_squares(lambda x: np.log((x[0] + x[1] * n + x[2] * t * 1e-3) * 1e-6 / m), [20.0, 10.0, 1.0],
                        bounds=([0, 0, 0], [500, 500, 1000]), loss="soft_l1", f_scale=0.1)
    return float(sol.x[0]) * 1e-6, float(sol.x[1]) * 1e-6, float(sol.x[2]) * 1e-9


def notify_errors(hw: HardwareSpec, rows: pd.DataFrame) -> pd.DataFrame:
    """Median and mean APE (%) of the notify step by op and node count (fitted: 2, 4 nodes; held out: 8)."""
    pred = np.array([D.notify_seconds(hw, "deepep-normal", r.op, int(r.nodes), r.tokens) for r in rows.itertuples()])
    r = rows.assign(ape=np.abs(pred / rows.measured_s.to_numpy() - 1) * 100)
    return r.groupby(["op", "nodes"]).ape.agg(["median", "mean"]).round(2)


def run_fit(hw: HardwareSpec, shared: Path) -> tuple[HardwareSpec, pd.DataFrame]:
    """Fit all four kernels on the non-held-out rows, and the normal kernels' notify step; returns the
    profile with them and the error table."""
    rows = load_rows(shared)
    fit_rows = rows[~held_out(rows)]
    k = {(m, op): fit_kernel(hw, fit_rows, m, op) for m in PARAMS for op in D.OPS}
    notify = load_notify(shared)
    for op in D.OPS:
        a, b, c = fit_notify(notify, op)
        k[("normal", op)] = k[("normal", op)].model_copy(update={"notify_s": a, "notify_per_node_s": b,
                                                                 "notify_per_token_s": c})
    cal = DeepEPCalibration(sms=DEFAULT_SMS, normal_dispatch=k[("normal", "dispatch")],
                            normal_combine=k[("normal", "combine")], ll_dispatch=k[("ll", "dispatch")],
                            ll_combine=k[("ll", "combine")])
    fitted = hw.model_copy(update={"collectives": hw.collectives.model_copy(update={"deepep": cal})})
    return fitted, errors(fitted, rows)


#: profiles that share the H100 tables' hardware (NVLink4/NVSwitch gen3, NDR NICs): --write updates both
PROFILES = {"h100-sxm": ("h100-sxm", "h100-sxm-measured")}
PROVENANCE = ("fit to ../shared/data/aiconfigurator/h100_sxm/comm/sglang/0.5.6.post2/wideep_deepep_{normal,ll}_perf.parquet "
              "(NVIDIA AIConfigurator, Apache-2.0; DeepEP on 1-8 nodes of 8 H100, hidden 7168, top-8 of 256) by "
              "simfoe.costs.fit_dispatch (`simfoe fit dispatch`); held out every other token count and the 8-node "
              "normal rows; errors per node count in docs/calibration-collectives.md")


def check_hardware(hardware: str) -> None:
    """Refuse a profile the DeepEP tables cannot refit (they are measured on H100)."""
    if hardware not in PROFILES:
        raise SpecError("--hardware", hardware, "one of " + ", ".join(PROFILES) + " (the measured DeepEP tables are H100)")


def fit_report(hardware: str, shared: Path, write: bool) -> dict:
    """`simfoe fit dispatch`: fit, report MAPE (%) per kernel and node count (fitted / held out), optionally write."""
    from simfoe.specs.io import load_hardware
    from simfoe.specs.profile_io import update_profile

    check_hardware(hardware)
    fitted, err = run_fit(load_hardware(hardware), shared)
    cal = fitted.collectives.deepep.model_dump()
    errs: dict = {}
    for (mode, op, nodes), row in err.iterrows():
        errs.setdefault(f"{mode}:{op}", {})[str(nodes)] = {
            k: (None if pd.isna(v) else float(v)) for k, v in row.items()}
    written = []
    if write:
        for name in PROFILES[hardware]:
            written.append(str(update_profile(name, "collectives.deepep", cal, {"collectives.deepep": PROVENANCE})))
    nerr = notify_errors(fitted, load_notify(shared))
    notify = {op: {str(nd): {"median_ape": float(v["median"]), "mape": float(v["mean"])} for nd, v in g.droplevel(0).iterrows()}
              for op, g in nerr.groupby(level=0)}
    return {"hardware": hardware, "data": str(Path(shared) / TABLE_DIR), "params": cal, "mape_by_nodes": errs,
            "notify_ape_by_nodes": notify, "written": written or None}
