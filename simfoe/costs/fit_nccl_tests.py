"""Fit the NVLink side of ``hw.collectives`` to nccl-tests on one node, holding part of the table out.

Systems (:data:`SYSTEMS`): H100 (8 GPUs of a DGX node), B200 (8 GPUs of an HGX node), GB200 (2 and 4 GPUs of one
NVL72 tray: the table has no more). The H100 fit is written to the H100 and H200 profiles (TARGETS); the
others to their own profile only.

Data: ``<shared>/aiconfigurator/h100_sxm/comm/nccl/2.29.2/nccl_perf.parquet`` (NVIDIA AIConfigurator,
Apache-2.0): nccl-tests all_gather, all_reduce, alltoall and reduce_scatter on 2, 4 and 8 H100 of one node,
NCCL 2.29.2. ``message_size`` counts ELEMENTS (half: 2 bytes, int8: 1), ``latency`` is MILLISECONDS
(../shared/data/aiconfigurator/README.md). Only the ``half`` rows are used (bf16/fp16 is what simfoe moves).
nccl-tests' size is the whole buffer: all_reduce = bytes per GPU; all_gather = the gathered output (n x per
rank); reduce_scatter = each GPU's input; alltoall = each GPU's whole send (n x per peer). Physics agrees:
read per rank, the 8-GPU 512 MiB all_gather would receive 2.7 TB/s per GPU over 450 GB/s NVLink.

Parameters fitted (each a real one): ``nvlink.efficiency`` (ring bus efficiency, the NVLink link rate),
``nvlink.alpha_s`` / ``ll_alpha_s`` / ``ll128_alpha_s`` (base latencies of Simple / LL / LL128),
``nvls.efficiency`` and ``nvls.alpha_s`` (in-switch all-reduce), ``all_to_all_nvlink_efficiency``. Per-step
latencies and protocol bandwidth shares are NCCL's constants (fit_collectives.HOP_S, LL128_* below). B200 and GB200
(:func:`params_of`) also fit the LL / LL128 bandwidth shares, ``nvlink.ring_copy_step`` (the ring's receive-only
copy step) and ``all_to_all_alpha_s`` (the one-node all-to-all as NCCL's p2p kernel), with
``all_to_all_channel_pool`` set (SYSTEMS: the one table of what differs per system).

Split, decided here (``NcclSystem.fit_gpus``): rows at even positions of the size ladder (512 B, 2 KiB, ... 512
MiB) of the largest GPU count are fitted, odd positions and the other counts held out; B200, which runs NCCL's
protocol choice with a per-step floor (``nvlink.nccl_protocol_choice``, CHOICE_PARAMS), fits its ring collectives at
the even positions of 8 and 2 GPUs and holds out odd positions and all of 4 GPUs (one GPU count does not separate
the floor's base from its per-step term); its all-to-all keeps 8 GPUs. The fit minimizes the mean relative
error of :func:`simfoe.costs.collectives.predict` (Nelder-Mead; h100-sxm: from the profile's values, two rounds;
B200 / GB200: from the ``-datasheet`` profile's values, restarted to convergence, :func:`start_params`, so the
committed profiles are the documented commands' output whatever they held before).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from simfoe.costs.collectives import predict
from simfoe.errors import SpecError
from simfoe.specs.hardware import HardwareSpec

TABLE = Path("aiconfigurator/h100_sxm/comm/nccl/2.29.2/nccl_perf.parquet")
TABLE_NAME = "../shared/data/" + TABLE.as_posix()
BYTES_PER_ELEMENT = {"half": 2, "int8": 1}  # README: message_size = nccl-tests bytes / element size
#: nccl-tests op -> (simfoe collective, divide nccl-tests' size by n for predict's nbytes)
OPS = {"all_reduce": ("all_reduce", False), "all_gather": ("all_gather", True),
       "reduce_scatter": ("reduce_scatter", False), "alltoall": ("all_to_all", True)}
MIN_BYTES = 1 << 20  # headline regime: nccl-tests size >= 1 MiB
FIT_GPUS = 8
"""GPUs of the fitted rows on H100 and B200 (GB200: the table's largest count, 4)."""
#: NCCL src/graph/tuning.cc (NCCL 2.29): ring LL128 per-step NVLink latency 1.9 us, bus bandwidth 0.92 x Simple
LL128_HOP_S = 1.9e-6
LL128_BW_FRACTION = 0.92
LL128_SOURCE = "NCCL src/graph/tuning.cc hwLat[NVLINK][RING][LL128] = 1.9 us per step; ring LL128 busBw x 0.92 (NCCL 2.29)"
PARAMS = ("nvlink.efficiency", "nvlink.alpha_s", "nvlink.ll_alpha_s", "nvlink.ll128_alpha_s",
          "nvls.efficiency", "nvls.alpha_s", "all_to_all_nvlink_efficiency")
#: Blackwell fits also fit the LL / LL128 bandwidth shares (NCCL's 0.5 / 0.92 are its tuner's guesses; LL is
#: further capped by llMaxBw, 282 GB/s on Blackwell) and price the one-node all-to-all as NCCL's p2p kernel
#: (simfoe.costs.collectives._a2a_direct_terms) with its own Simple latency. H100 keeps PARAMS (its profiles and
#: the numbers quoted from them are not refitted).
P2P_PARAMS = ("nvlink.ll_bandwidth_fraction", "nvlink.ll128_bandwidth_fraction", "all_to_all_alpha_s")
#: and the ring's receive-only copy step (collectives._ring_copy_factor), the term that makes fewer GPUs reach a lower
#: ring bus bandwidth; it starts at half a link step (between a free copy, 0, and a whole step, 1).
RING_PARAMS = ("nvlink.ring_copy_step",)
#: B200: NCCL's protocol choice (collectives.nccl_ring_protocol) and the LL128 / Simple per-step floor it needs
#: (collectives._nccl_pick), the floor's base and per-step terms fitted (start: the measured post-switch floors,
#: ~13 us + 12 us per step, docs/calibration-collectives.md).
CHOICE = "nvlink.nccl_protocol_choice"
CHOICE_PARAMS = (f"{CHOICE}.floor_alpha_s", f"{CHOICE}.floor_step_s")
FLOOR_START = {CHOICE_PARAMS[0]: 13e-6, CHOICE_PARAMS[1]: 12e-6}
#: NCCL's per-architecture bandwidths the choice reads (not fitted): Blackwell NVLink5, 18 links x SM100_NVLINK_BW
#: 40.1 GB/s (src/graph/topo.h, 2.29) for the ring; llMaxBw 282 GB/s for LL (src/graph/tuning.cc, 2.29)
BLACKWELL_TUNER = {"tuner_bus_bandwidth": 18 * 40.1e9, "tuner_ll_max_bandwidth": 282e9}
TUNER_SOURCE = {"tuner_bus_bandwidth": "NCCL src/graph/topo.h (2.29): 18 NVLink5 links x SM100_NVLINK_BW 40.1 GB/s",
                "tuner_ll_max_bandwidth": "NCCL src/graph/tuning.cc (2.29): llMaxBw on Blackwell, 282 GB/s"}
TARGETS = ("h100-sxm", "h100-sxm-measured", "h200-sxm", "h200-sxm-measured")
#: Nelder-Mead restarts: (least, most) rounds; a round gaining less than CONVERGED_RTOL (relative) of the loss ends it.
CONVERGED_ROUNDS = (2, 12)
CONVERGED_RTOL = 1e-3


@dataclass(frozen=True)
class NcclSystem:
    """How one profile's NVLink side is fitted to its nccl-tests table (the one place a system differs).

    ``channel_pool``: the one-node all-to-all's NVLink rate is the p2p channel pool's, shared by the n peers (self
    included): on both Blackwell tables a 512 MiB alltoall takes the same time on 2, 4 and 8 GPUs (B200 810 / 825 /
    834 us) though the bytes on the wire grow as (n-1)/n; on H100 it grows with n (959 / 1397 / 1490 us).
    ``start``: the profile whose collectives start the fit; ``rounds``: :func:`_minimize`'s; ``targets``: the
    profiles written. ``fit_gpus``: the GPU counts whose even size positions are fitted for the ring collectives (None,
    and always for the all-to-all: the table's largest);
    ``tuner``: NCCL's bandwidths for ``nvlink.nccl_protocol_choice`` (None: the fastest protocol, no floor)."""

    folder: str
    params: tuple[str, ...]
    channel_pool: bool
    start: str
    rounds: tuple[int, int]
    targets: tuple[str, ...]
    fit_gpus: tuple[int, ...] | None = None
    tuner: dict | None = None


#: profile -> its fit. h100-sxm keeps its historical fit (PARAMS from its own values, two rounds, written to the H100
#: and H200 profiles) so that its numbers do not move; B200 / GB200 start from their ``-datasheet`` profile and run
#: to convergence, so one ``fit nccl --write`` after ``calibrate`` gives the committed profile.
#: B200 runs NCCL's protocol choice with its floor a + steps x f; one GPU count cannot separate a per-collective
#: floor from a per-step one (its ops differ in steps by 2x at most), so its ring collectives are fitted on the even
#: sizes of the largest and the smallest count (8 and 2 GPUs: 14 against 2 steps for all-reduce), odd sizes and all
#: of 4 GPUs held out. The all-to-all has no floor: it keeps the largest count only (fitting its 2-GPU rows too
#: trades them for the 8-GPU ones: 2 / 8 GPUs 12.0 / 6.4% -> 5.2 / 11.4%).
SYSTEMS = {
    "h100-sxm": NcclSystem("h100_sxm", PARAMS, False, "h100-sxm", (2, 2), TARGETS),
    "b200-sxm": NcclSystem("b200_sxm", PARAMS + P2P_PARAMS + RING_PARAMS + CHOICE_PARAMS, True, "b200-sxm-datasheet",
                           CONVERGED_ROUNDS, ("b200-sxm",), (8, 2), BLACKWELL_TUNER),
    "gb200-nvl72": NcclSystem("gb200", PARAMS + P2P_PARAMS + RING_PARAMS, True, "gb200-nvl72-datasheet", CONVERGED_ROUNDS,
                              ("gb200-nvl72",)),
}


def table_of(profile: str) -> Path:
    """The nccl-tests table (relative to ../shared/data) of ``profile`` (a key of SYSTEMS)."""
    return Path(TABLE.as_posix().replace("h100_sxm", SYSTEMS[profile].folder))


def load_table(shared: Path, profile: str) -> pd.DataFrame:
    """``profile``'s nccl-tests table under ``shared`` with its system's split (:func:`load_nccl_tests`)."""
    return load_nccl_tests(Path(shared) / table_of(profile), SYSTEMS[profile].fit_gpus)


def with_choice(hw: HardwareSpec, tuner: dict | None) -> HardwareSpec:
    """``hw`` with ``nvlink.nccl_protocol_choice`` holding NCCL's ``tuner`` bandwidths (its floor kept, or started at
    FLOOR_START); ``hw`` itself when ``tuner`` is None."""
    if tuner is None:
        return hw
    c = hw.collectives.model_dump()
    old = c["nvlink"].get("nccl_protocol_choice") or {k.rsplit(".", 1)[1]: v for k, v in FLOOR_START.items()}
    c["nvlink"]["nccl_protocol_choice"] = {**old, **tuner}
    return hw.model_copy(update={"collectives": type(hw.collectives).model_validate(c)})


def params_of(profile: str) -> tuple[str, ...]:
    """The parameters the fit of ``profile`` (a key of SYSTEMS) sets."""
    return SYSTEMS[profile].params


def load_nccl_tests(path: str | Path, fit_gpus: tuple[int, ...] | None = None) -> pd.DataFrame:
    """Rows: op (nccl-tests name), collective, n_gpus, bytes (nccl-tests size), nbytes (predict's), time_s,
    size_rank (position on the size ladder), held_out (bool: an odd position, or a GPU count other than the largest
    and, for the ring collectives, than ``fit_gpus``)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError("nccl_table", str(path), f"the nccl-tests parquet ({TABLE_NAME})")
    df = pd.read_parquet(p)
    df = df[df["nccl_dtype"] == "half"]
    out = pd.DataFrame({"op": df["op_name"].astype(str), "n_gpus": df["num_gpus"].astype(int),
                        "bytes": df["message_size"].astype(float) * BYTES_PER_ELEMENT["half"],
                        "time_s": df["latency"].astype(float) * 1e-3})
    out["collective"] = out["op"].map(lambda o: OPS[o][0])
    out["nbytes"] = [b / n if OPS[o][1] else b for o, b, n in zip(out["op"], out["bytes"], out["n_gpus"])]
    out["size_rank"] = out.groupby(["op", "n_gpus"])["bytes"].rank(method="dense").astype(int) - 1
    fitted = (out["n_gpus"] == out["n_gpus"].max()) | (out["n_gpus"].isin(fit_gpus or ()) & (out["op"] != "alltoall"))
    out["held_out"] = ~fitted | (out["size_rank"] % 2 == 1)
    return out.sort_values(["op", "n_gpus", "bytes"]).reset_index(drop=True)


def with_params(hw: HardwareSpec, x, params: tuple[str, ...] = PARAMS, pool: bool = False) -> HardwareSpec:
    """``hw`` with ``params`` (dotted names under ``collectives``) set to ``x``, NCCL's LL128 per-step latency
    (and its LL128 share unless fitted) on the NVLink path, and ``all_to_all_channel_pool`` = ``pool``."""
    c = hw.collectives.model_dump()
    c["nvlink"].update({"ll128_hop_s": LL128_HOP_S, "ll128_bandwidth_fraction": LL128_BW_FRACTION})
    for name, v in zip(params, x):
        *path, leaf = name.split(".")
        node = c
        for k in path:
            node = node[k]
        node[leaf] = float(v)
    c["all_to_all_channel_pool"] = pool
    return hw.model_copy(update={"collectives": type(hw.collectives).model_validate(c)})


def current_params(hw: HardwareSpec, params: tuple[str, ...] = PARAMS) -> list[float]:
    """Start values of ``params`` from ``hw`` (unset latencies 10 us, the all-to-all efficiency the ring's)."""
    c = hw.collectives.model_dump()
    start = {"all_to_all_nvlink_efficiency": c["nvlink"]["efficiency"], "nvlink.ring_copy_step": 0.5, **FLOOR_START}
    out = []
    for name in params:
        node = c
        for k in name.split("."):
            node = node.get(k) if isinstance(node, dict) else None
        out.append(node if node is not None else start.get(name, 1e-5))
    return out


def start_params(base: str, params: tuple[str, ...] = PARAMS) -> list[float]:
    """The fit's start point: ``params`` of ``SYSTEMS[base].start`` (h100-sxm: its own current values; B200 /
    GB200: the ``-datasheet`` profile's, fixed whatever ``base`` holds)."""
    from simfoe.specs.io import load_hardware

    return current_params(load_hardware(SYSTEMS[base].start), params)


def predict_rows(hw: HardwareSpec, rows: pd.DataFrame) -> np.ndarray:
    """Predicted seconds of each row (one node, ``auto``)."""
    return np.array([predict(hw, r.collective, int(r.n_gpus), float(r.nbytes), "auto", 1)
                     for r in rows.itertuples(index=False)])


def _minimize(loss, z: np.ndarray, rounds: tuple[int, int]):
    """Nelder-Mead restarted from its own result: at least ``rounds[0]``, at most ``rounds[1]`` rounds, stopping
    once a round improves the loss by less than CONVERGED_RTOL (relative). Returns the last round's result."""
    prev = np.inf
    for i in range(rounds[1]):
        res = minimize(loss, z, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-5, "maxiter": 900})
        z = res.x
        if i + 1 >= rounds[0] and prev - res.fun < CONVERGED_RTOL * res.fun:
            break
        prev = res.fun
    return res


def _fit(hw: HardwareSpec, rows: pd.DataFrame, params: tuple[str, ...] = PARAMS, pool: bool = False,
         x0=None, rounds: tuple[int, int] = (2, 2)) -> tuple[list[float], float]:
    """Nelder-Mead on log latencies and efficiencies (and bandwidth shares) from ``x0`` (default: ``hw``'s
    values) for ``rounds`` (:func:`_minimize`); returns (params, mean relative error on ``rows``)."""
    meas = rows["time_s"].to_numpy()
    is_eff = np.array(["efficiency" in p or "fraction" in p for p in params])

    def unpack(z):
        return np.where(is_eff, np.clip(z, 0.05, 1.0), np.exp(np.minimum(z, 0.0)))

    def loss(z):
        return float(np.mean(np.abs(predict_rows(with_params(hw, unpack(z), params, pool), rows) / meas - 1)))

    x0 = np.array(current_params(hw, params) if x0 is None else x0)
    res = _minimize(loss, np.where(is_eff, x0, np.log(x0)), rounds)
    return [float(f"{v:.4g}") for v in unpack(res.x)], float(res.fun)


def errors(hw: HardwareSpec, df: pd.DataFrame) -> dict:
    """MAPE, median APE and share of rows within 25% (%) per op and GPU count, by regime (>= / < 1 MiB) and
    split (fitted / held out)."""
    pred = predict_rows(hw, df)
    ape = np.abs(pred / df["time_s"].to_numpy() - 1) * 100
    d = df.assign(ape=ape, regime=np.where(df["bytes"] >= MIN_BYTES, ">=1MiB", "<1MiB"),
                  split=np.where(df["held_out"], "held_out", "fitted"))
    out: dict = {}
    for (op, n, reg), g in d.groupby(["op", "n_gpus", "regime"]):
        key = f"{op} {n} GPUs {reg}"
        out[key] = {"points": int(len(g)), "mape": round(float(g["ape"].mean()), 2),
                    "mdape": round(float(g["ape"].median()), 2), "max_ape": round(float(g["ape"].max()), 1),
                    "within_25": round(100 * float((g["ape"] <= 25).mean()), 1)}
        for s, gs in g.groupby("split"):
            out[key].update({f"mape_{s}": round(float(gs["ape"].mean()), 2),
                             f"mdape_{s}": round(float(gs["ape"].median()), 2)})
    return out


def _provenance(base: str, fit_gpus: tuple[int, ...], held_gpus: tuple[int, ...], params: tuple[str, ...]) -> dict:
    """Provenance of every value ``write_profiles`` sets in ``base``'s fit (``fit_gpus`` / ``held_gpus``: the GPU
    counts fitted at even size positions / held out whole)."""
    name = "../shared/data/" + table_of(base).as_posix()
    fit, held = ("/".join(str(n) for n in ns) for ns in (fit_gpus, held_gpus))
    fit += f" ({'/'.join(str(n) for n in fit_gpus[1:])}: ring collectives only)" if len(fit_gpus) > 1 else ""
    prov = {f"collectives.{p}": f"fit to {name} (nccl-tests, half, {fit} GPUs, even size positions; "
            f"odd positions and {held} GPUs held out), simfoe.costs.fit_nccl_tests" for p in params}
    prov["collectives.nvlink.ll128_hop_s"] = LL128_SOURCE
    if "nvlink.ring_copy_step" in params:
        prov["collectives.nvlink.ring_copy_step"] += (
            "; the term: NCCL src/device/all_gather.h, reduce_scatter.h, all_reduce.h runRing (2.29), each chunk loop "
            "ends in a receive-only copy into the user buffer (simfoe.costs.collectives._ring_copy_factor)")
    for k, v in (TUNER_SOURCE if SYSTEMS[base].tuner else {}).items():
        prov[f"collectives.{CHOICE}.{k}"] = v
    for p in params:
        if p.startswith(CHOICE):
            prov[f"collectives.{p}"] += ("; the term: NCCL's pick (src/graph/tuning.cc 2.29 constants, "
                                         "simfoe.costs.collectives.nccl_ring_protocol) runs LL128 / Simple at least "
                                         "floor_alpha_s + steps x floor_step_s (collectives._nccl_pick)")
    if "nvlink.ll128_bandwidth_fraction" not in params:
        prov["collectives.nvlink.ll128_bandwidth_fraction"] = LL128_SOURCE
    if SYSTEMS[base].channel_pool:
        prov["collectives.all_to_all_channel_pool"] = (
            "NCCL src/enqueue.cc scheduleP2pTasksToPlan (2.29): per-peer channels halve until peers x channels fit "
            f"the p2p channels; {name}: the 512 MiB alltoall takes the same time on every GPU count "
            "(simfoe.costs.fit_nccl_tests.SYSTEMS)")
    return prov


def write_profiles(params, base: str = "h100-sxm", fit_gpus: tuple[int, ...] = (FIT_GPUS,),
                   held_gpus: tuple[int, ...] = (2, 4)) -> list[str]:
    """Write the fitted parameters (:func:`params_of`, with NCCL's LL128 terms) into every profile of
    ``SYSTEMS[base].targets``, with provenance; only the sections this fit owns (other fits write the rest of
    ``collectives``)."""
    from simfoe.specs.io import load_hardware
    from simfoe.specs.profile_io import update_profile

    system, names = SYSTEMS[base], params_of(base)
    prov = _provenance(base, fit_gpus, held_gpus, names)
    a2a = ("all_to_all_nvlink_efficiency",) + (
        ("all_to_all_alpha_s", "all_to_all_channel_pool") if "all_to_all_alpha_s" in names else ())
    written = []
    for t in system.targets:
        c = with_params(with_choice(load_hardware(t), system.tuner), params, names, system.channel_pool).collectives
        pt = prov if not t.startswith("h200") else {
            k: f"copied from the h100-sxm fit (same NVLink4/NVSwitch gen3; no H200 table): {v}" for k, v in prov.items()}
        sections = [("nvlink", c.nvlink.model_dump(exclude_none=True)), ("nvls", c.nvls.model_dump(exclude_none=True))]
        for section, values in sections + [(k, getattr(c, k)) for k in a2a]:
            path = update_profile(t, f"collectives.{section}", values, provenance=pt)
        written.append(str(path))
    return written


def run_fit(shared: Path, write: bool, base: str = "h100-sxm") -> dict:
    """Fit the parameters of ``base`` (a key of SYSTEMS; :func:`params_of`) on the fitted rows of its table;
    report errors on every row; optionally write them (:func:`write_profiles`).

    Returns {"params", "fit_mape" (fitted rows, all sizes), "errors" (see :func:`errors`), "written"}.
    """
    from simfoe.specs.io import load_hardware

    df = load_table(shared, base)
    system, names = SYSTEMS[base], params_of(base)
    hw = with_choice(load_hardware(base), system.tuner)
    pool = system.channel_pool
    params, fit_mape = _fit(hw, df[~df["held_out"]], names, pool, start_params(base, names), system.rounds)
    hw = with_params(hw, params, names, pool)
    result = {"params": dict(zip(names, params)), "fit_mape": round(100 * fit_mape, 2), "errors": errors(hw, df),
              "written": []}
    if write:
        fitted = tuple(sorted(set(df.loc[~df["held_out"], "n_gpus"]), reverse=True))
        held = tuple(sorted(set(df["n_gpus"]) - set(fitted)))
        result["written"] = write_profiles(params, base, fitted, held)
    return result


if __name__ == "__main__":  # python -m simfoe.costs.fit_nccl_tests [--write]
    import json
    import sys

    from simfoe.paths import shared_data_dir

    print(json.dumps(run_fit(shared_data_dir(), "--write" in sys.argv), indent=1))
