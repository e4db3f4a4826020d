"""Workload loading speed: wall time to load the one-hour Azure conversation trace (19,366
requests) and to build synthetic workloads. Not a test; prints one JSON object.

Run: ``python benchmarks/bench_workloads.py [--repeat N] [--trace PATH]``
The serving issue's target is a full simulation of that trace in under 60 s, so loading should
be a small fraction of a second.
"""
from __future__ import annotations

import argparse
import json
import sys
import tracemalloc

import numpy as np

from simfoe.paths import shared_data_dir
from simfoe.workloads import load_trace, make_workload

from timing import best_of  # benchmarks/timing.py (the script's folder is on sys.path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--trace", default=None, help="default: ../shared/data/traces/azure_llm_inference_2023_conv.csv")
    a = p.parse_args(argv)
    path = a.trace
    if path is None:
        d = shared_data_dir()
        if d is None:
            sys.stderr.write("error: trace: ../shared/data is absent; pass --trace PATH\n")
            return 2
        path = d / "traces" / "azure_llm_inference_2023_conv.csv"
    out: dict = {"trace": str(path)}
    table = load_trace(path)
    out["requests"] = len(table)
    out["load_s"] = best_of(lambda: load_trace(path), a.repeat)
    out["requests_per_s_loaded"] = len(table) / out["load_s"]
    tracemalloc.start()
    load_trace(path)
    out["load_peak_python_bytes"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out["table_bytes"] = sum(x.nbytes for x in (table.arrival_s, table.prompt_tokens, table.output_tokens, table.request_id))
    out["poisson_resample_1h_s"] = best_of(
        lambda: make_workload(str(path), rate=float(table.mean_rate), duration=3600.0, seed=0), a.repeat)
    out["longbench_1h_at_5rps_s"] = best_of(lambda: make_workload("longbench", rate=5.0, duration=3600.0, seed=0), a.repeat)
    sys.stdout.write(json.dumps({k: (float(v) if isinstance(v, np.floating) else v) for k, v in out.items()}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
