"""Fit ``hw.collectives`` (alpha_s, efficiency per path) to Vidur's measured NCCL collectives.

Data: ``<vidur_dir>/{h100_dgx,a100_dgx}/{all_reduce,send_recv}.csv`` (microsoft/vidur, MIT), median kernel
times in ms by ``size``, ``num_workers``, ``devices_per_node``.

Units of ``size``: the Vidur profiler writes ``"size": self._size * 2  # bytes`` (vidur/profiling/collectives/
collectives_wrapper.py), i.e. the column is already BYTES of an fp16 buffer, not elements. Physics agrees:
read as elements, the 2-GPU H100 send/recv would move 694 GB/s one way over 450 GB/s NVLink4 and the A100 one
457 GB/s over 300 GB/s NVLink3. So ``bytes = size`` (``VIDUR_BYTES_PER_SIZE_UNIT``).

Latency model: a collective phase costs ``alpha_s + steps * hop_s`` (NCCL's tuning model: a base latency
plus a per-step hardware latency). ``hop_s`` is NCCL's own LL-protocol per-step latency (``HOP_S`` below);
``alpha_s`` is fitted on SMALL messages (<= 64 KB, where bytes/bandwidth is negligible) and ``efficiency``
on sizes >= 1 MB with alpha held, each by minimizing the mean relative error of the simulator's own
prediction (:func:`simfoe.costs.collectives.predict`, Nelder-Mead), two rounds. Paths:

- h100-sxm ``nvls`` and ``nvlink``: NOT fitted here but to nccl-tests on 2/4/8 H100 of one node
  (:mod:`simfoe.costs.fit_nccl_tests`; the Vidur rows are still reported); ``network``: alpha from send_recv between 2 nodes with
  the efficiency kept at the measured per-NIC figure (46-49 of 50 GB/s, hardware.md) because NCCL spreads
  one inter-node send over several NICs (measured 64 GB/s > one NDR NIC), which a one-flow-one-NIC path
  cannot reproduce.
- a100-sxm ``nvlink``: all_reduce inside one node (ring). ``network`` is NOT fitted: Vidur's a100_dgx rows on
  2 nodes reach 5.8 GB/s bus bandwidth with one GPU per node (a DGX A100's HDR NIC: ~24 GB/s measured,
  hardware.md) and 17.6 GB/s with 8 per node, so that testbed's network is not the DGX A100 fabric this
  profile describes. Efficiency is the measured per-NIC figure (``A100_NIC_EFFICIENCY``) and the latencies are
  the H100 fit's (NCCL's tuning model has one set of network latencies, not one per NIC generation). The
  2-node rows are still reported (``errors``), not judged.
- h200-sxm: copy of the H100 fit (same NVLink4/NVSwitch gen3 and NDR NICs; no H200 collective data).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from simfoe.costs.collectives import predict
from simfoe.errors import SpecError
from simfoe.specs.hardware import HardwareSpec

VIDUR_BYTES_PER_SIZE_UNIT = 1.0  # see module docstring: Vidur's `size` column is bytes
MIN_BYTES = 1e6  # bandwidth fit and the headline errors: sizes >= 1 MB
SMALL_MAX_BYTES = 64 * 1024  # latency (alpha) fit: sizes <= 64 KB

#: NCCL's per-step latencies (s), ring algorithm (NCCL src/graph/tuning.cc, hwLat[NVLINK|NET][RING],
#: NCCL 2.2x): Simple NVLink 3.4 us, network 14 us; LL NVLink 0.6 us, network 2.7 us. NVLS has no steps.
HOP_S = {"nvlink": 3.4e-6, "network": 14.0e-6, "nvls": 0.0}
LL_HOP_S = {"nvlink": 0.6e-6, "network": 2.7e-6}
#: LL moves 8-byte lines carrying 4 bytes of data plus a flag: NCCL models ring LL at 0.5 x the bus
#: bandwidth (tuning.cc: ``busBw * .5`` for RING/LL, NCCL 2.2x).
LL_BW_FRACTION = 0.5
HOP_SOURCE = "NCCL src/graph/tuning.cc hwLat[{path}][RING][{proto}] = {us} us per step (NCCL 2.2x tuning model)"
PATHS = ("nvlink", "network", "nvls")
_DATASET = {"h100-sxm": "h100_dgx", "a100-sxm": "a100_dgx", "h200-sxm": "h100_dgx"}
#: achieved per HDR NIC ~24 GB/s of 25 ([M] NVIDIA/nccl#1048, ../shared/reference/hardware.md)
A100_NIC_EFFICIENCY = 24.0 / 25.0
A100_NIC_SOURCE = ("HW nodes: achieved per NIC ~24 GB/s of 25 [M] NVIDIA/nccl#1048 (Vidur's a100_dgx 2-node rows, "
                   "5.8 GB/s per GPU, are not a DGX A100 fabric: docs/calibration-collectives.md)")
_TIME_COL = "time_stats.{c}.median"


def load_vidur(vidur_dir: Path, dataset: str, collective: str) -> pd.DataFrame:
    """Rows with columns bytes, time_s, num_workers, devices_per_node (nodes = workers / devices_per_node)."""
    path = Path(vidur_dir) / dataset / f"{collective}.csv"
    if not path.exists():
        raise SpecError("vidur_dir", str(vidur_dir), f"a folder holding {dataset}/{collective}.csv (Vidur network data)")
    df = pd.read_csv(path)
    out = pd.DataFrame({
        "bytes": df["size"].astype(float) * VIDUR_BYTES_PER_SIZE_UNIT,
        "time_s": df[_TIME_COL.format(c=collective)].astype(float) * 1e-3,
        "num_workers": df["num_workers"].astype(int),
        "devices_per_node": df["devices_per_node"].astype(int),
    })
    out["nodes"] = out["num_workers"] // out["devices_per_node"]
    return out


def _with(hw: HardwareSpec, path: str, alpha: float, eff: float, ll_alpha: float | None = None) -> HardwareSpec:
    """``hw`` with path's Simple (alpha, efficiency) set, NCCL hop latencies, and LL alpha when given."""
    c = hw.collectives.model_dump()
    old = c.get(path) or {}
    c[path] = {**old, "alpha_s": float(alpha), "efficiency": float(eff), "hop_s": HOP_S[path]}
    ll = ll_alpha if ll_alpha is not None else old.get("ll_alpha_s")
    if ll is not None and path in LL_HOP_S:
        c[path].update({"ll_alpha_s": float(ll), "ll_hop_s": LL_HOP_S[path], "ll_bandwidth_fraction": LL_BW_FRACTION})
    return hw.model_copy(update={"collectives": type(hw.collectives).model_validate(c)})


def _predict_rows(hw: HardwareSpec, collective: str, rows: pd.DataFrame) -> np.ndarray:
    return np.array([
        predict(hw, collective, int(r.num_workers), float(r.bytes), "auto", int(r.nodes))
        for r in rows.itertuples(index=False)
    ])


def _subsample(df: pd.DataFrame, per_group: int = 40) -> pd.DataFrame:
    parts = []
    for _, g in df.groupby(["num_workers", "devices_per_node"]):
        g = g.sort_values("bytes")
        idx = np.unique(np.linspace(0, len(g) - 1, min(per_group, len(g))).round().astype(int))
        parts.append(g.iloc[idx])
    return pd.concat(parts)


def _fit_path(hw, path, sets, fixed_eff=None, x0=(1e-5, 0.7), fixed_alpha=None):
    """Minimize mean |pred - meas| / meas over (alpha, efficiency) of one path; returns (alpha, eff).

    ``sets`` = [(collective, rows), ...]; every row weighs the same.
    """
    samples = [(c, _subsample(df)) for c, df in sets if len(df)]
    meas = np.concatenate([s["time_s"].to_numpy() for _, s in samples])

    def unpack(x):
        alpha = fixed_alpha if fixed_alpha is not None else math.exp(x[0])
        eff = fixed_eff if fixed_eff is not None else float(np.clip(x[1], 0.02, 1.0))
        return alpha, eff

    def loss(x):
        a, e = unpack(x)
        h = _with(hw, path, a, e)
        pred = np.concatenate([_predict_rows(h, c, s) for c, s in samples])
        return float(np.mean(np.abs(pred - meas) / meas))

    best = None
    for a0 in (2e-6, 1e-5, 3e-5):
        res = minimize(loss, [math.log(a0), x0[1]], method="Nelder-Mead",
                       options={"xatol": 1e-3, "fatol": 1e-5, "maxiter": 300})
        if best is None or res.fun < best.fun:
            best = res
    return unpack(best.x)


def _fit_two_stage(hw, path, sets, fixed_eff=None):
    """Simple protocol (alpha, efficiency) on sizes >= MIN_BYTES, then the LL alpha on sizes <= SMALL_MAX_BYTES.

    Returns (alpha, efficiency, ll_alpha); ll_alpha is None for paths without an LL protocol (NVLS).
    """
    small = [(c, df[df["bytes"] <= SMALL_MAX_BYTES]) for c, df in sets]
    large = [(c, df[df["bytes"] >= MIN_BYTES]) for c, df in sets]
    # the Simple fit sees no LL protocol: otherwise the LL alpha the profile held before (which wins some
    # 1 MB points) would steer it, and a refit would not reproduce the profile it wrote
    cur = getattr(hw.collectives, path)
    simple = hw.model_copy(update={"collectives": hw.collectives.model_copy(
        update={path: cur.model_copy(update={"ll_alpha_s": None, "ll128_alpha_s": None})})})
    alpha, eff = _fit_path(simple, path, large, fixed_eff=fixed_eff, x0=(1e-5, cur.efficiency))
    hw = _with(hw, path, alpha, eff)
    if path not in LL_HOP_S:
        return alpha, eff, None

    def loss_ll(x):
        h = _with(hw, path, alpha, eff, ll_alpha=math.exp(x[0]))
        rows = [(c, _subsample(df)) for c, df in small if len(df)]
        pred = np.concatenate([_predict_rows(h, c, r) for c, r in rows])
        meas = np.concatenate([r["time_s"].to_numpy() for _, r in rows])
        return float(np.mean(np.abs(pred - meas) / meas))

    best = min((minimize(loss_ll, [math.log(a0)], method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-5})
                for a0 in (3e-6, 1e-5, 3e-5)), key=lambda r: r.fun)
    return alpha, eff, math.exp(best.x[0])


def error_table(hw: HardwareSpec, collective: str, df: pd.DataFrame) -> dict:
    """Mean and max relative error (sizes >= 1 MB) per (num_workers, devices_per_node) group."""
    out = {}
    for (w, d), g in df.groupby(["num_workers", "devices_per_node"]):
        pred = _predict_rows(hw, collective, g)
        rel = np.abs(pred - g["time_s"].to_numpy()) / g["time_s"].to_numpy()
        out[f"{collective} {w} GPUs / {d} per node"] = {
            "points": int(len(g)), "mean_rel_err": float(rel.mean()), "max_rel_err": float(rel.max())}
    return out


# NCCL bus bandwidth (GB/s) by message size, [M] Azure/AI-benchmarking-guide (hardware.md)
NCCL_BUSBW = {
    "h100-sxm": {1 << 20: 43.7, 16 << 20: 234, 256 << 20: 423, 1 << 30: 466, 8 << 30: 479},
    "a100-sxm": {1 << 20: 36.2, 16 << 20: 109, 256 << 20: 214, 1 << 30: 228, 8 << 30: 232},
}


def nccl_comparison(hw: HardwareSpec, name: str) -> list[dict]:
    """Predicted vs measured bus bandwidth of an 8-GPU one-node all_reduce (busbw = 2(n-1)/n * S / t)."""
    rows = []
    for size, busbw in NCCL_BUSBW.get(name, {}).items():
        t = predict(hw, "all_reduce", 8, float(size), "auto", 1)
        pred = 2 * 7 / 8 * size / t / 1e9
        rows.append({"bytes": size, "nccl_busbw_GBps": busbw, "pred_busbw_GBps": round(pred, 1),
                     "rel_err": round(pred / busbw - 1, 3)})
    return rows


def run_fit(hardware: str, vidur_dir: Path, write: bool) -> dict:
    """Fit ``hardware``'s collectives section to Vidur data; optionally write it (and h200-sxm for H100).

    Returns {"hardware", "collectives", "errors" (per group: points, mean_rel_err, max_rel_err),
    "overall_mean_rel_err", "nccl" (bus-bandwidth comparison), "written" (profile paths)}.
    """
    from simfoe.specs.io import load_hardware

    if hardware not in _DATASET:
        raise SpecError("hardware", hardware, "one of " + ", ".join(sorted(_DATASET)))
    dataset = _DATASET[hardware]
    hw = load_hardware(hardware)
    ar_all = load_vidur(vidur_dir, dataset, "all_reduce")
    sr_all = load_vidur(vidur_dir, dataset, "send_recv")
    ar = ar_all[ar_all["bytes"] >= MIN_BYTES]
    sr = sr_all[sr_all["bytes"] >= MIN_BYTES]
    for path in ("nvlink", "network", "nvls"):
        if getattr(hw.collectives, path) is not None:
            cur = getattr(hw.collectives, path)
            hw = _with(hw, path, cur.alpha_s, cur.efficiency)
    src = f"../shared/data/vidur/network/{dataset}"
    prov: dict[str, str] = {}
    fit = _fit_h100(hw, ar, sr, sr_all, src, prov) if dataset == "h100_dgx" else _fit_a100(hw, ar, ar_all, sr, src, prov)
    hw, errors, headline = fit.hw, fit.errors, fit.headline
    _hop_provenance(hw, src, prov)
    small = error_table(hw, "all_reduce", ar_all[(ar_all["bytes"] <= SMALL_MAX_BYTES) & (ar_all["nodes"] == 1)])
    pts = sum(v["points"] for v in headline.values())
    overall = sum(v["mean_rel_err"] * v["points"] for v in headline.values()) / pts
    coll = hw.collectives.model_dump(exclude_none=True)
    # the path calibrations only: other fits own the rest of `collectives` (fit_nccl_tests, DeepEP)
    coll = {k: {kk: float(f"{vv:.4g}") for kk, vv in v.items()} for k, v in coll.items() if k in PATHS}
    result = {
        "hardware": hardware,
        "dataset": dataset,
        "collectives": coll,
        "errors": errors,
        "overall_mean_rel_err": overall,
        "small_message_errors": small,
        "small_message_mean_rel_err": (sum(v["mean_rel_err"] * v["points"] for v in small.values())
                                       / max(sum(v["points"] for v in small.values()), 1)),
        "nccl": nccl_comparison(hw, hardware),
        "written": [],
    }
    if write:
        result["written"] = _write_fit(hardware, coll, prov)
    return result


@dataclass(frozen=True)
class _PathFit:
    """A profile with its collective paths fitted, the error tables of the rows it is judged on (``errors``)
    and of the headline all-reduce rows (``headline``)."""

    hw: object
    errors: dict
    headline: dict


def _fit_h100(hw, ar, sr, sr_all, src: str, prov: dict) -> _PathFit:
    """H100 DGX: the network path's latencies fitted to Vidur's 2-node send/recv, its efficiency held; NVLink
    and NVLS stay the nccl-tests fits'. Adds the sources to ``prov``."""
    one = ar[ar["nodes"] == 1]
    sr_out = sr_all[sr_all["nodes"] > 1]
    # NVLink and NVLS come from nccl-tests on 2/4/8 H100 (simfoe.costs.fit_nccl_tests), held here
    prov["collectives.nvlink.ll_alpha_s"] = hw.provenance.get("collectives.nvlink.ll_alpha_s", "")
    e_net = hw.collectives.network.efficiency
    a, e, ll = _fit_two_stage(hw, "network", [("send_recv", sr_out)], fixed_eff=e_net)
    hw = _with(hw, "network", a, e, ll)
    prov["collectives.network.alpha_s"] = (
        f"fit to {src}/send_recv.csv, 2 GPUs on 2 nodes, sizes >= 1 MB, efficiency held (`simfoe fit collectives`)")
    prov["collectives.network.efficiency"] = (
        "HW nodes: achieved per NIC 46-49 GB/s of 50 [M] nccl#1048, nccl-tests#290 (held in the fit: NCCL "
        "spreads one inter-node send over several NICs)")
    errors = {**error_table(hw, "all_reduce", one), **error_table(hw, "send_recv", sr)}
    headline = error_table(hw, "all_reduce", ar)
    return _PathFit(hw, errors, headline)


def _fit_a100(hw, ar, ar_all, sr, src: str, prov: dict) -> _PathFit:
    """A100: NVLink fitted to Vidur's one-node all-reduce (ring); the network's latencies are h100-sxm's, its
    efficiency the NIC's measured one. Adds the sources to ``prov``."""
    from simfoe.specs.io import load_hardware

    a, e, ll = _fit_two_stage(hw, "nvlink", [("all_reduce", ar_all[ar_all["nodes"] == 1])])
    hw = _with(hw, "nvlink", a, e, ll)
    for key in ("alpha_s", "efficiency"):
        prov[f"collectives.nvlink.{key}"] = (
            f"fit to {src}/all_reduce.csv, 2/4/8 GPUs in one node (ring), sizes >= 1 MB (`simfoe fit collectives`)")
    h100 = load_hardware("h100-sxm")
    net = h100.collectives.network
    hw = _with(hw, "network", net.alpha_s, A100_NIC_EFFICIENCY, net.ll_alpha_s)
    prov["collectives.network.efficiency"] = A100_NIC_SOURCE
    for key in ("alpha_s", "ll_alpha_s"):
        prov[f"collectives.network.{key}"] = (
            "the h100-sxm fit's (NCCL's tuning model has one set of network latencies for HDR and NDR): "
            + h100.provenance.get(f"collectives.network.{key}", ""))
    errors = {**error_table(hw, "all_reduce", ar), **error_table(hw, "send_recv", sr)}
    headline = error_table(hw, "all_reduce", ar[ar["nodes"] == 1])
    return _PathFit(hw, errors, headline)


def _hop_provenance(hw, src: str, prov: dict) -> None:
    """Add to ``prov`` the sources of each path's per-hop latencies (NCCL's tuning model) and LL parameters."""
    for path, hop in HOP_S.items():
        if getattr(hw.collectives, path) is None:
            continue
        prov[f"collectives.{path}.hop_s"] = HOP_SOURCE.format(path=path.upper(), proto="Simple", us=hop * 1e6) if hop else (
            "NVLS in-switch reduction has no ring steps (NCCL tuning model: NVLS latency = base only)")
        if path in LL_HOP_S and getattr(hw.collectives, path).ll_alpha_s is not None:
            prov[f"collectives.{path}.ll_hop_s"] = HOP_SOURCE.format(path=path.upper(), proto="LL", us=LL_HOP_S[path] * 1e6)
            prov[f"collectives.{path}.ll_bandwidth_fraction"] = "NCCL src/graph/tuning.cc: ring LL bus bandwidth = 0.5 x Simple (NCCL 2.2x)"
            prov.setdefault(f"collectives.{path}.ll_alpha_s", (
                f"fit to {src} sizes <= 64 KB ({'all_reduce' if path == 'nvlink' else 'send_recv'}), "
                "Simple parameters held (`simfoe fit collectives`)"))


def _write_fit(hardware: str, coll: dict, prov: dict) -> list[str]:
    """Write the fitted paths into ``hardware``'s profile (and h200-sxm's, for h100-sxm); the paths written."""
    from simfoe.specs.profile_io import update_profile

    written = []
    targets = [hardware] + (["h200-sxm"] if hardware == "h100-sxm" else [])
    for t in targets:
        p = dict(prov)
        if t != hardware:
            p = {k: f"copied from the {hardware} fit (same NVLink4/NVSwitch gen3/NDR NICs; no H200 data): {v}"
                 for k, v in prov.items()}
        for path, values in coll.items():
            out = update_profile(t, f"collectives.{path}", values, provenance=p)
        written.append(str(out))
    return written
