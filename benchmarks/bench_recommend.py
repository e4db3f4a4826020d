"""Benchmark: `simfoe recommend` search for qwen3-235b-a22b on up to 4 H100 nodes with LongBench
(p90 TTFT <= 2 s, p99 TBT <= 0.1 s), the issue's example; target: search under 5 minutes.

Reports search wall and CPU time, candidate layouts, how many were simulated and how many pruned
(by reason), serving probes and forward-model evaluations, plus the time of the analysis
(breakdowns, sensitivity runs, replica check) that the report adds.
Run: ``python benchmarks/bench_recommend.py [--model M] [--max-nodes N] [--no-sensitivity] [--out FILE.html]``.
Not a test: numbers depend on the machine (CPU time is the one to compare on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3-235b-a22b")
    ap.add_argument("--hardware", default="h100-sxm")
    ap.add_argument("--max-nodes", type=int, default=4)
    ap.add_argument("--trace", default="longbench")
    ap.add_argument("--slo-ttft-p90", type=float, default=2.0)
    ap.add_argument("--slo-tbt-p99", type=float, default=0.1)
    ap.add_argument("--requests", type=int, default=240)
    ap.add_argument("--no-sensitivity", action="store_true")
    ap.add_argument("--out", default=None, help="also write the HTML report (+ JSON) here")
    a = ap.parse_args(argv)

    from simfoe.planner import recommend

    t, c = time.perf_counter(), time.process_time()
    r = recommend(a.model, a.hardware, max_nodes=a.max_nodes, trace=a.trace, slo_ttft_p90=a.slo_ttft_p90,
                  slo_tbt_p99=a.slo_tbt_p99, requests=a.requests, sensitivity=not a.no_sensitivity)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    if a.out:
        from simfoe.planner.report import write_report

        write_report(r, a.out)
    s = r["search"]
    out = {
        "scenario": f"{a.model} on up to {a.max_nodes} node(s) of {a.hardware}, {a.trace}",
        "candidates": s["candidates"], "simulated": s["simulated"], "pruned": s["pruned"],
        "pruned_by_reason": s["pruned_by_reason"], "invalid_placements": s["skipped_placements"],
        "probes": s["probes"], "forward_evaluations": s["forward_evaluations"],
        "search_wall_s": s["wall_s"], "analysis_wall_s": s.get("analysis_wall_s"),
        "total_wall_s": wall, "total_cpu_s": cpu,
        "recommended": (r["recommended"] or {}).get("label"),
        "runner_up": (r["runner_up"] or {}).get("label"),
        "under_5_min": s["wall_s"] < 300,
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
