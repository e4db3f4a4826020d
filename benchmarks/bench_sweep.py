"""Benchmark of `simfoe sweep`: scenarios per second and overhead per scenario of each executor.

    python benchmarks/bench_sweep.py                     # 1,000 forward scenarios, local pool (all CPUs)
    python benchmarks/bench_sweep.py --executors local,ray,inprocess --n 1000

Overhead per scenario (s) = (wall time x workers - time spent inside the scenario function) /
scenarios: what the machinery costs (process start, imports, pickling, parquet commits, progress),
per scenario, on top of the simulations themselves. Target: 1,000 scenarios in < 120 s on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from simfoe.sweep.runner import default_workers, run_sweep
from simfoe.sweep.spec import parse_sweep_spec


def bench_spec(n: int) -> dict:
    """A forward sweep of about ``n`` scenarios over cheap-to-moderate corners (1 node, decode)."""
    batches = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    seqs = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    nics = [25e9, 50e9, 100e9, 200e9]
    archs, models = ["moe", "foe"], ["mixtral-8x7b", "olmoe-1b-7b"]
    per = len(archs) * len(models) * len(seqs) * len(nics)
    k = max(1, min(len(batches), round(n / per)))
    return {"kind": "forward", "name": f"bench_{n}",
            "base": {"hardware": "h100-sxm", "nodes": 1, "phase": "decode", "routing": "uniform", "seed": 0},
            "grid": {"model": models, "arch": archs, "batch": batches[:k], "seq_len": seqs,
                     "hardware.network.nic_bandwidth": nics},
            "metrics": ["latency_s", "breakdown_s", "comm_bytes", "local_activation_rate"]}


def run_one(executor: str, spec_dict: dict, workers: int, out: Path) -> dict:
    spec = parse_sweep_spec(spec_dict)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    if executor == "ray":
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
        t_init = time.perf_counter() - t0
        try:
            r = run_sweep(spec, out, executor="ray", workers=workers, progress=False, plots=False)
        finally:
            ray.shutdown()
    else:
        t_init = 0.0
        w = 1 if executor == "inprocess" else workers
        r = run_sweep(spec, out, executor="local", workers=w, progress=False, plots=False)
    wall = time.perf_counter() - t0
    df = pd.read_parquet(out / "results.parquet")
    inside = float(df["wall_s"].sum())
    w_used = 1 if executor == "inprocess" else workers
    n = len(df)
    return {"executor": executor, "workers": w_used, "scenarios": n, "failed": int((df["status"] != "ok").sum()),
            "wall_s": round(wall, 2), "ray_init_s": round(t_init, 2), "chunk_size": r["chunk_size"],
            "scenarios_per_s": round(n / wall, 2),
            "mean_scenario_s": round(inside / n, 4),
            "overhead_per_scenario_s": round((wall * w_used - inside) / n, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="scenarios (rounded to the grid; default 1000)")
    ap.add_argument("--executors", default="local", help="comma list of local, ray, inprocess")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    spec = bench_spec(a.n)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for ex in [e.strip() for e in a.executors.split(",") if e.strip()]:
            rows.append(run_one(ex, spec, a.workers, Path(d) / ex))
            if not a.json:
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps(rows))
    else:
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
