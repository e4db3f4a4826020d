"""Benchmark: simulate the one-hour Azure conversation trace (19,366 requests) on one 8x H100 node.

Reports simulated seconds per wall second, iterations per second and forward-model evaluations.
Run: ``python benchmarks/bench_serve.py [--model M] [--arch moe|foe] [--nodes N] [--trace PATH] [--cost interp|memo]
[--set PATH=VALUE ...]``; e.g. ``--model olmoe-1b-7b --nodes 2 --set placement.moe.attention=dp`` times an
instance of 16 DP attention ranks (one queue each, the busiest rank's excess every iteration).
Needs ../shared/data (or a trace path). Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mixtral-8x7b")
    ap.add_argument("--hardware", default="h100-sxm")
    ap.add_argument("--arch", default="moe", choices=["moe", "foe"])
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--cost", default="auto", help="iteration-cost cache: auto | interp | memo")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                    help="spec override, as in simfoe serve (repeatable)")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)

    from simfoe.serving import simulate_serving

    t = time.perf_counter()
    c = time.process_time()
    res = simulate_serving(a.model, a.hardware, a.nodes, a.arch, a.trace, overrides=a.overrides, cost=a.cost,
                           progress=a.progress)
    wall = time.perf_counter() - t
    cpu = time.process_time() - c
    s = res.summary
    out = {
        "scenario": f"{a.trace} on {a.nodes} node(s) of {a.hardware}, {a.model} {a.arch} {' '.join(a.overrides)}".strip(),
        "dp_attention_ranks": s["ranks_per_replica"],
        "requests": s["requests"]["total"],
        "completed": s["requests"]["completed"],
        "simulated_s": s["sim"]["simulated_s"],
        "wall_s_total": wall,  # incl. trace load and forward-model set-up
        "wall_s_engine": s["sim"]["wall_s"],
        "cpu_s_total": cpu,  # one process, one core: the number to compare when the machine is shared
        "sim_s_per_cpu_s": s["sim"]["simulated_s"] / cpu,
        "sim_s_per_wall_s": s["sim"]["simulated_s"] / wall,
        "iterations": s["sim"]["iterations"],
        "iterations_per_wall_s": s["sim"]["iterations"] / s["sim"]["wall_s"],
        "forward_model_evaluations": s["sim"]["cost_evaluations"],
        "ttft_p50_s": s["ttft_s"]["p50"],
        "tbt_p50_s": s["tbt_s"]["p50"],
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
