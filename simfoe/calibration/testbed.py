"""Run the torch testbed (validation/testbed.py) and compare it with simfoe's forward predictions.

The same ModelSpec (default validation/models/testbed-moe.yaml) is simulated on the calibrated CPU
profile (default hwprofiles/cpu-amd-epyc-zen4.yaml: 2 processes = 2 "GPUs" on one node) with the
layouts the testbed implements: MoE ``placement.moe.attention=dp`` (expert parallel over both ranks),
FoE default (iso-parameter clusters = n_kv_heads, one per rank). Predictions never see the testbed
results: the profile is fitted on the microbenchmarks only.

``measured_s`` = median over repeats of the largest per-rank process CPU time of one forward pass
(contention-free estimate on a shared host, as the kernel fit uses cpu_median_s); the wall-clock
median is reported beside it (``measured_wall_s``). speedup_error = |pred ratio / measured ratio - 1|
for the MoE/FoE latency ratio, averaged over (phase, batch) pairs (max also reported).

Routing: the testbed's random routers are far from uniform (one expert of four can take 380 of 512
tokens), and expert GEMM time is not linear in the tokens an expert gets, so each case is simulated
layer by layer with the testbed's own per-layer expert choice counts as its routing trace (the
workload's routing, as a user would pass ``--routing trace:FILE``; never its timings).

Host speed: each case also reports ``host_speed`` = the profile's prediction of a probe GEMM (PROBE,
a point of the calibration grid) / its CPU time measured between the case's repeats (1.0: the host
computes as fast as at calibration; 0.9: 10 % slower). It tells host drift apart from model error;
predictions never use it.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from simfoe.errors import SpecError
from simfoe.paths import REPO_ROOT

DEFAULT_MODEL = "validation/models/testbed-moe.yaml"
DEFAULT_HARDWARE = "cpu-amd-epyc-zen4"
#: (phase, batch, seq_len): prefill of 2 and 4 prompts of 128 tokens; decode of 4 and 16 sequences
#: with 512 tokens of context. Chosen before any comparison, inside the measured GEMM/SDPA ranges.
DEFAULT_SHAPES = (("prefill", 2, 128), ("prefill", 4, 128), ("decode", 4, 512), ("decode", 16, 512))
QUICK_SHAPES = (("prefill", 2, 128), ("decode", 16, 512))
#: host-speed probe: fp32 [256, 1024] @ [1024, 4096], one of the GEMM grid points every CPU measurement
#: set has (validation/bench_kernels.py), over 16 rotating weight buffers (16 x 16 MiB of weights, past the
#: VM's share of the cache as the harness's rotation is; compute-bound either way)
PROBE = {"m": 256, "n": 4096, "k": 1024, "buffers": 16}
#: the testbed's MoE exchanges split sizes before every dispatch (all_to_all_single with splits: the nccl
#: dispatch algorithm, simfoe.costs.dispatch)
PLACEMENT = {"moe": ["placement.moe.attention=dp", "placement.moe.all_to_all=nccl"], "foe": []}


def _resolve(path: str) -> str:
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        return str(REPO_ROOT / p)
    return str(p)


def build_config(model, hw, shapes, repeats: int, warmup: int, seed: int = 0, breakdown: int = 0) -> dict:
    """Testbed config (validation/testbed.py ``run``) for ``model`` on ``hw``'s node; ``breakdown``:
    extra passes per case timed section by section (0: none)."""
    from simfoe.specs.io import build_placement
    from simfoe.specs.placement import resolve_foe

    a = model.attention
    if model.moe is None or a.kind == "mla" or model.moe.n_shared_experts or model.moe.first_dense_layers:
        raise SpecError("model", model.name, "a GQA/MHA MoE without shared experts or dense layers (testbed scope)")
    if not model.gated or model.dtype != "fp32":
        raise SpecError("model", model.name, "gated FFN and dtype fp32 (the CPU profile is fitted on fp32)")
    world = hw.node.gpus_per_node
    L = resolve_foe(model, world, build_placement("foe", 1, PLACEMENT["foe"]))
    if L.gpus_per_cluster != 1 or L.clusters_per_gpu != 1:
        raise SpecError("model.attention.n_kv_heads", a.n_kv_heads, f"equal to the {world} processes (one FoE cluster per rank)")
    return {
        "model": {"hidden": model.hidden, "n_layers": model.n_layers, "vocab": model.vocab, "n_heads": a.n_heads,
                  "n_kv_heads": a.n_kv_heads, "head_dim": a.head_dim, "n_experts": model.moe.n_experts,
                  "top_k": model.moe.top_k, "expert_ffn": model.moe.expert_ffn},
        "foe": {"clusters": L.clusters, "experts_per_cluster": L.experts_per_cluster,
                "top_k_per_cluster": L.top_k_per_cluster, "expert_ffn": L.expert_ffn},
        "cases": [[arch, ph, b, s] for ph, b, s in shapes for arch in ("moe", "foe")],
        "world_size": world, "repeats": repeats, "warmup": warmup, "seed": seed, "probe": dict(PROBE),
        "breakdown": breakdown,
    }


def run_testbed(config: dict, timeout_s: float = 900) -> dict:
    """Run validation/testbed.py in a subprocess (repo root on the path); returns its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "cfg.json"
        cfg.write_text(json.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "OMP_NUM_THREADS": "1"}
        p = subprocess.run([sys.executable, "-m", "validation.testbed", "--config", str(cfg)], cwd=str(REPO_ROOT),
                           env=env, capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        raise RuntimeError(f"testbed failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def predict_cases(model, hw, cases, seed: int = 0, expert_counts: list | None = None) -> list[float]:
    """simfoe ForwardModel latency (s) for each [arch, phase, batch, seq_len] (see predict_results)."""
    return [r.latency_s for r in predict_results(model, hw, cases, seed, expert_counts)]


def predict_results(model, hw, cases, seed: int = 0, expert_counts: list | None = None) -> list:
    """simfoe ForwardResult (latency and its breakdown by category) for each [arch, phase, batch, seq_len].

    ``expert_counts`` (one entry per case, or None): the testbed's per-layer expert choice counts; a
    case with counts is simulated layer by layer with them as its routing trace (the workload's routing
    distribution: random routers are far from uniform), one without uses uniform routing."""
    from simfoe.forward.simulate import ForwardModel
    from simfoe.specs.io import build_placement
    from simfoe.specs.routing import RoutingSpec

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (a, ph, b, s) in enumerate(cases):
            counts = expert_counts[i] if expert_counts else None
            routing = None
            if counts:
                path = Path(tmp) / f"routing{i}.csv"
                path.write_text("\n".join(",".join(str(int(v)) for v in row) for row in counts) + "\n")
                routing = RoutingSpec(kind="trace", path=str(path))
            fm = ForwardModel(model, hw, build_placement(a, 1, PLACEMENT[a]), routing=routing, seed=seed)
            out.append(fm.run(ph, int(b), int(s), per_layer=counts is not None))
    return out


def probe_seconds(hw) -> float:
    """The profile's prediction (s) of the PROBE GEMM in fp32."""
    from simfoe.costs.kernels import gemm

    return gemm(hw, PROBE["m"], PROBE["n"], PROBE["k"], "fp32").latency_s


def compare(measured: dict, predicted: list[float], probe_predicted_s: float | None = None,
            predicted_breakdowns: list[dict] | None = None) -> dict:
    """Cases with measured/predicted seconds, MAPE (%) and the MoE/FoE speedup error (fraction).

    With ``probe_predicted_s`` and probe times in ``measured``, each case also gets ``host_speed`` and
    the result ``host_speed`` (median over cases). With ``predicted_breakdowns`` (seconds by category,
    one dict per case) and breakdown passes in ``measured``, each case gets ``breakdown``:
    ``{"measured_cpu_s", "measured_wall_s", "predicted_s"}``, seconds per category (simfoe's categories;
    measured: median over the breakdown passes, largest over ranks; predicted: the critical path's)."""
    cases, by = [], {}
    for i, (c, p) in enumerate(zip(measured["cases"], predicted)):
        m = c["cpu_median_s"]
        row = {"arch": c["arch"], "phase": c["phase"], "batch": c["batch"], "seq_len": c["seq_len"],
               "measured_s": m, "predicted_s": p, "ape_pct": abs(p / m - 1) * 100,
               "measured_wall_s": c["wall_median_s"], "measured_wall_min_s": c["wall_min_s"]}
        if c.get("expert_counts"):
            row["expert_counts"] = c["expert_counts"]
        if predicted_breakdowns and c.get("breakdown_cpu_s"):
            row["breakdown"] = {"measured_cpu_s": c["breakdown_cpu_s"], "measured_wall_s": c["breakdown_wall_s"],
                                "predicted_s": {k: v for k, v in predicted_breakdowns[i].items() if v > 0}}
        if c.get("probe_cpu_median_s"):
            row["probe_cpu_median_s"] = c["probe_cpu_median_s"]
            if probe_predicted_s:
                row["host_speed"] = probe_predicted_s / c["probe_cpu_median_s"]
        cases.append(row)
        by.setdefault((c["phase"], c["batch"], c["seq_len"]), {})[c["arch"]] = row
    speed = []
    for (ph, b, s), d in by.items():
        if "moe" in d and "foe" in d:
            mr = d["moe"]["measured_s"] / d["foe"]["measured_s"]
            pr = d["moe"]["predicted_s"] / d["foe"]["predicted_s"]
            wr = d["moe"]["measured_wall_s"] / d["foe"]["measured_wall_s"]
            speed.append({"phase": ph, "batch": b, "seq_len": s, "measured_ratio": mr, "predicted_ratio": pr,
                          "measured_wall_ratio": wr, "error": abs(pr / mr - 1)})
    apes = [r["ape_pct"] for r in cases]
    errs = [r["error"] for r in speed]
    out = {"cases": cases, "mape": sum(apes) / len(apes), "max_ape": max(apes),
           "speedup_error": sum(errs) / len(errs) if errs else None,
           "speedup_error_max": max(errs) if errs else None, "speedups": speed}
    if cases and all("host_speed" in r for r in cases):
        out["host_speed"] = statistics.median(r["host_speed"] for r in cases)
    return out


def resolve_hardware(hardware: str) -> tuple[str, bool]:
    """(profile, matched): ``auto`` picks the profile calibrated on this host's CPU kind
    (simfoe.calibration.host); with none, DEFAULT_HARDWARE and matched False."""
    if hardware != "auto":
        return hardware, True
    from simfoe.calibration.host import matching_profiles

    found = matching_profiles()
    return (found[0], True) if found else (DEFAULT_HARDWARE, False)


def run(model: str = DEFAULT_MODEL, hardware: str = "auto", quick: bool = False, repeats: int | None = None,
        warmup: int = 2, seed: int = 0, measured: dict | None = None, breakdown: int = 0) -> dict:
    """Measure (unless ``measured`` is given) and predict; returns the comparison plus env/config.

    ``hardware``: a profile name or YAML, or ``auto`` (the profile calibrated on this CPU kind; without
    one, DEFAULT_HARDWARE, and the result says ``hardware_matched: false``: per-case errors then mix
    two machines, the speedup error stays meaningful). ``breakdown``: extra passes per case timed section
    by section, for per-category measured vs predicted times (``compare``)."""
    from simfoe.specs.io import load_hardware, load_model

    hardware, matched = resolve_hardware(hardware)

    m = load_model(_resolve(model))
    hw = load_hardware(hardware if not hardware.endswith(".yaml") else _resolve(hardware))
    shapes = QUICK_SHAPES if quick else DEFAULT_SHAPES
    cfg = build_config(m, hw, shapes, repeats or 9, warmup, seed, breakdown)
    if measured is None:
        measured = run_testbed(cfg)
    res = predict_results(m, hw, [[c["arch"], c["phase"], c["batch"], c["seq_len"]] for c in measured["cases"]], seed,
                          [c.get("expert_counts") for c in measured["cases"]])
    out = compare(measured, [r.latency_s for r in res], probe_seconds(hw), [r.breakdown_s for r in res])
    out.update({"model": m.name, "hardware": hw.name, "hardware_matched": matched,
                "measure": "max over ranks of process CPU time per forward, median over repeats",
                "env": measured.get("env", {}), "barrier_s": measured.get("barrier_s")})
    return out
