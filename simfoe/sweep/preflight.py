"""Files a sweep's scenarios name (serve traces, routing traces, per-scenario outputs) and their seeds,
checked before any scenario runs: bad input is one SpecError (exit 2 in the CLI), not a failure of
every scenario that uses it. :func:`simfoe.sweep.runner.run_sweep` calls :func:`check_scenario_files`."""
from __future__ import annotations

from pathlib import Path

from simfoe.errors import SpecError
from simfoe.inputs import check_routing_file, check_text_file, routing_path
from simfoe.outputs import check_dir, check_file
from simfoe.sweep.spec import SweepSpec


def _distinct(spec: SweepSpec, key: str) -> list:
    """Every value option ``key`` takes in the sweep (base, grid, zip, samples), without expanding it."""
    vals = []
    if key in spec.base:
        vals.append(spec.base[key])
    for where in (spec.grid, spec.zip):
        vals += list(where.get(key, []))
    vals += [row[key] for row in spec.samples if key in row]
    out = []
    for v in vals:
        if v is not None and v not in out:
            out.append(v)
    return out


def check_scenario_files(spec: SweepSpec) -> None:
    """Input and output files named in a sweep's scenarios are checked before anything runs: a missing
    or malformed serve trace, or an unwritable per-scenario output, is bad input (exit 2), not a
    failure of every scenario."""
    for r in _distinct(spec, "routing"):
        path = routing_path(r)
        if path is not None:
            if not Path(path).is_file():
                raise SpecError("routing", r, "trace:PATH naming an existing routing trace file")
            check_routing_file(r, "routing")
    for seed in _distinct(spec, "seed"):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SpecError("seed", seed, "an integer >= 0")
    for t in _distinct(spec, "timeline"):
        check_file("timeline", t)
    if spec.kind != "serve":
        return
    for o in _distinct(spec, "out"):
        check_dir("out", o, files=("requests.parquet", "summary.json"))
    import numpy as np

    from simfoe.workloads.workload import resolve_trace  # the workload layer, loaded only for serve sweeps

    skip = any(bool(v) for v in _distinct(spec, "skip_bad_rows"))
    for t in _distinct(spec, "trace"):
        check_text_file("trace", t)
        table = resolve_trace(str(t), np.random.default_rng(0), skip_bad_rows=skip)
        if len(table) == 0:
            raise SpecError("trace", str(t), "a trace with at least one valid request")
