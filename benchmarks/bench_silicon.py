"""Replay speed of the real serving benchmarks (``simfoe validate --silicon``): wall time of the
whole H100 file, per row and split into deployment set-up (forward model and iteration-cost table,
once per deployment) and serving runs, with the engine iterations simulated. Not a test; prints one
JSON object.

Run: ``python benchmarks/bench_silicon.py [--path CSV] [--limit N | --every K] [--workers N] [--profile]``
Issue 23's target: the whole H100 file in <= 2 minutes on a 2-core machine: 151 s of CPU and 115 s
of wall with ``--workers 2`` at load average 2-2.7 (2026-12-07). The serving loop's fast-forward off
took 286 s of CPU, with the same digest. So 2 idle cores should take ~80 s of wall (CPU / 2). Each
row runs the benchmark's own workload (10 x concurrency prompts after 2 x concurrency warm-ups), so
a row costs about 12 x OSL engine iterations, most of them fast-forwarded
(simfoe/serving/fastforward.py). ``cpu_s`` is the CPU time of this process and its workers
(user + system), the figure to compare on a shared machine, where wall time follows the other load.
``predictions_sha256`` digests every prediction (row id, TTFT, TPOT, reason, as ``repr``): equal
digests before and after a change mean bit-identical predictions. ``--every K`` replays every K-th
row the replay covers (a spread sample for quick before/after timing). ``--profile`` adds the 15
functions with the most cumulative time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time

from simfoe.calibration import silicon


def _profiled(fn):
    import cProfile
    import io
    import pstats

    pr = cProfile.Profile()
    out = pr.runcall(fn)
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(15)
    return out, buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default=None, help="silicon CSV (default: ../shared/data/" + silicon.H100_FILE + ")")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N rows")
    p.add_argument("--every", type=int, default=None, help="replay only every K-th covered row")
    p.add_argument("--profile", action="store_true", help="add a cProfile summary (of one process: --workers 1)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (simfoe validate --silicon --jobs)")
    a = p.parse_args(argv)
    path = a.path or silicon.default_path()
    if path is None:
        sys.stderr.write("error: --path: ../shared/data is absent; pass --path CSV\n")
        return 2
    t0 = time.perf_counter()
    s = silicon.load_rows(path)
    rows = s.rows[: a.limit] if a.limit else s.rows
    if a.every:
        rows = tuple(r for r in rows if not isinstance(silicon.scenario(r), silicon.NotCovered))[:: a.every]
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if a.profile:
        preds, prof = _profiled(lambda: silicon.replay(rows))
    else:
        preds, prof = silicon.replay(rows, workers=a.workers), None
    replay_s = time.perf_counter() - t1
    ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    digest = hashlib.sha256(repr([(x.row.id, x.ttft_ms, x.tpot_ms, x.reason) for x in preds]).encode()).hexdigest()
    covered = [x for x in preds if x.reason is None]
    out = {"path": str(path), "rows": len(rows), "workers": 1 if a.profile else a.workers, "covered": len(covered),
           "load_s": load_s, "replay_s": replay_s, "cpu_s": sum(r.ru_utime + r.ru_stime for r in ru),
           "predictions_sha256": digest,
           "s_per_covered_row": replay_s / len(covered) if covered else None,
           "engine_iterations_estimate": sum(12 * x.row.osl for x in covered),
           "target_s": 120.0, "over_target_s": max(0.0, load_s + replay_s - 120.0)}
    if prof:
        out["profile"] = prof
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
