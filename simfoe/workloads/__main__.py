"""Write a workload as simfoe csv: ``python -m simfoe.workloads TRACE --out FILE [options]``.

Regenerates traces/example_small.csv with:
``python -m simfoe.workloads longbench --rate 1 --duration 120 --seed 0 --out traces/example_small.csv``
"""
from __future__ import annotations

import argparse
import sys

from simfoe.errors import SpecError
from simfoe.outputs import json_text
from simfoe.workloads.workload import make_workload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simfoe.workloads", description=__doc__.splitlines()[0])
    p.add_argument("trace", help="trace path or built-in name (longbench, sharegpt, azure-conv, ...)")
    p.add_argument("--rate", type=float, default=None, help="requests/s")
    p.add_argument("--duration", type=float, default=None, help="seconds")
    p.add_argument("--arrival", default=None, help="trace | poisson | gamma:CV")
    p.add_argument("--lengths", default="empirical", help="empirical | lognormal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad-rows", action="store_true", help="drop malformed rows and report how many")
    p.add_argument("--out", default=None, help="csv to write (default: print a JSON summary only)")
    a = p.parse_args(argv)
    try:
        t = make_workload(a.trace, a.rate, a.duration, a.arrival, a.seed, a.skip_bad_rows, lengths=a.lengths)
    except SpecError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    if a.out:
        t.to_csv(a.out)
    if t.skipped_rows:
        sys.stderr.write(f"skipped {t.skipped_rows} malformed rows (first lines: {list(t.skipped_lines)})\n")
    sys.stdout.write(json_text(t.summary(), indent=None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
