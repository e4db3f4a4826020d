"""Run a sweep: expand, skip finished run_ids (resume), execute in chunks, commit rows as chunks
finish, compact, then draw plots and write the markdown summary."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simfoe.errors import SpecError
from simfoe.outputs import json_text
from simfoe.provenance import command_line
from simfoe.sweep.preflight import check_scenario_files
from simfoe.sweep.spec import Scenario, SweepSpec, load_sweep_spec
from simfoe.sweep.store import ResultStore

EXECUTORS = ("local", "ray")
#: retries of a Ray task whose worker died, when --max-retries is not given
RAY_MAX_RETRIES = 3


def default_workers() -> int:
    """CPU count available to this process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def auto_chunk(n: int, workers: int) -> int:
    """Scenarios per task: ~32 tasks per worker for load balance, at most 16 scenarios per task."""
    return max(1, min(16, math.ceil(n / max(1, workers * 32))))


def _task(s: Scenario) -> tuple:
    return (s.index, s.run_id, s.options, s.override_list())


def make_row(spec: SweepSpec, s: Scenario, rec: dict, version: str) -> dict:
    """One results row: ids, status, inputs as columns, flattened metrics, provenance."""
    row: dict[str, Any] = {"run_id": s.run_id, "index": s.index, "kind": spec.kind,
                           "status": rec["status"], "error": rec["error"]}
    for k, v in s.inputs().items():
        row[k] = json.dumps(v) if isinstance(v, (list, dict)) else v
    for k, v in rec["metrics"].items():
        row[f"metric.{k}" if k in row else k] = v
    row.update(simfoe_version=version, wall_s=rec["wall_s"], worker=rec["worker"], finished_at=time.time())
    return row


def probe(spec: SweepSpec, todo: list[Scenario], workers: int, probes: int = 2) -> dict:
    """Time up to ``probes`` scenarios in-process -> time estimate for the remaining ones (s)."""
    from simfoe.sweep.worker import resolve, run_chunk

    t0 = time.perf_counter()
    fn = spec.scenario_kind().function()
    resolve(spec.kind, fn)
    startup = time.perf_counter() - t0
    if not todo or probes <= 0:
        return {"probes": 0, "startup_s": startup, "per_scenario_s": None, "estimate_s": None}
    picks = [todo[round(i * (len(todo) - 1) / max(1, probes - 1))] for i in range(min(probes, len(todo)))]
    recs = run_chunk(spec.kind, [_task(s) for s in picks], spec.metrics, fn)
    times = sorted(r["wall_s"] for r in recs)
    per = times[len(times) // 2]
    return {"probes": len(recs), "startup_s": startup, "per_scenario_s": per,
            "estimate_s": startup + per * len(todo) / max(1, min(workers, len(todo)))}


def run_sweep(spec: SweepSpec | str | Path | None = None, out: str | Path = "simfoe-out", *,
              executor: str = "local", workers: int | None = None, address: str | None = None,
              resume: bool = False, overwrite: bool = False, retry_failed: bool = False,
              chunk_size: int | None = None, max_retries: int | None = None, dry_run: bool = False,
              probes: int | None = None, progress: bool = True, plots: bool = True, csv: bool = False,
              argv: list[str] | None = None) -> dict:
    """Run (or with ``dry_run`` only count and time-estimate) a sweep into ``out``.

    Returns a JSON-able dict: counts, wall time (s), scenarios per second, paths written.
    Raises SpecError for bad specs or options before any scenario runs (an option that would be
    ignored, such as ``probes`` without ``dry_run``, is one). ``probes`` defaults to 4 with ``dry_run``;
    ``max_retries`` (Ray only) to :data:`RAY_MAX_RETRIES`.
    An ``out`` that holds this same spec's results is continued (as with ``resume``); with nothing left
    to run the result says ``up_to_date`` and nothing is written. ``csv``: write ``results.csv`` too.
    ``argv``: the command line, recorded in sweep.json and summary.md.
    """
    from simfoe import __version__

    if not isinstance(spec, SweepSpec):
        spec = load_sweep_spec(spec)
    workers = _checked_workers(executor, workers, chunk_size, resume, overwrite)
    _check_unused_options(executor, address, resume, retry_failed, dry_run, probes, max_retries)
    scenarios = spec.scenarios()  # validates every distinct value before anything runs
    check_scenario_files(spec)
    out = Path(out)
    store = ResultStore(out)
    done = _stored_runs(store, spec, scenarios, resume, overwrite)
    todo = [s for s in scenarios if s.run_id not in done or (retry_failed and done[s.run_id] != "ok")]
    base = {"spec": spec.source, "name": spec.name, "kind": spec.kind, "out": str(out),
            "scenarios": len(scenarios), "already_done": len(scenarios) - len(todo), "to_run": len(todo),
            "executor": executor, "workers": workers, "simfoe_version": __version__, "command": command_line(argv)}
    if dry_run:
        return {**base, "dry_run": True, **probe(spec, todo, workers, 4 if probes is None else probes)}
    if not todo and not store.part_files() and store.results.is_file():
        return _up_to_date(base, store, csv, done)

    if overwrite:
        store.clear()
    chunk = chunk_size or auto_chunk(len(todo), workers)
    it = _executor_iter(spec, todo, chunk, executor, workers, address, max_retries)
    bar = _progress(len(todo), progress)
    t0 = time.perf_counter()
    tally = _store_all(it, spec, base, store, todo, bar)
    ok, failed = tally.ok, tally.failed
    wall = time.perf_counter() - t0
    df = store.compact()
    result = {**base, "ran": ok + failed, "ok": ok, "failed": failed, "wall_s": wall,
              "scenarios_per_s": (ok + failed) / wall if wall > 0 and ok + failed else None,
              "chunk_size": chunk, "results": str(store.results), "rows": int(len(df)), "up_to_date": False}
    return _write_reports(result, df, store, spec, csv, plots)


def _stored_runs(store: ResultStore, spec: SweepSpec, scenarios: list[Scenario], resume: bool,
                 overwrite: bool) -> dict[str, str]:
    """Status of each run_id already stored in ``store`` that the run keeps (none with ``overwrite``). Stored
    results that this spec does not continue (:func:`_continues`) raise SpecError unless ``resume``."""
    if not store.has_results() or overwrite:
        return {}
    done = store.finished()
    if not resume and not _continues(store.out, spec, scenarios, done):  # a dry run too: it checks what the run would
        raise SpecError("--out", str(store.out), "already holds sweep results; pass --resume to skip finished "
                        "scenarios or --overwrite to start over")
    return done


def _write_reports(result: dict, df, store: ResultStore, spec: SweepSpec, csv: bool, plots: bool) -> dict:
    """After a run's results ``df`` are compacted: results.csv (with ``csv``, or when one exists), and with
    ``plots`` the plots and summary.md; returns ``result`` with their paths."""
    if csv or store.csv.is_file():  # once written, kept in step with results.parquet
        result["csv"] = str(store.write_csv(df))
    if plots:
        from simfoe.sweep.plots import make_plots
        from simfoe.sweep.summary import write_summary

        result["plots"] = [str(p) for p in make_plots(df, store.out / "plots")]
        result["summary"] = str(write_summary(df, store.out, spec_name=spec.name, run=result))
    return result


def _checked_workers(executor: str, workers: int | None, chunk_size: int | None, resume: bool,
                     overwrite: bool) -> int:
    """The worker count (default: :func:`default_workers`); SpecError for a bad executor, worker count or
    chunk size, or --resume with --overwrite."""
    if executor not in EXECUTORS:
        raise SpecError("--executor", executor, "allowed: " + ", ".join(EXECUTORS))
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SpecError("--workers", workers, "a positive integer")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise SpecError("--chunk-size", chunk_size, "a positive integer")
    if resume and overwrite:
        raise SpecError("--overwrite", True, "use --resume to continue the results in OUT, or --overwrite to "
                        "delete them and start over", problem="cannot be combined with --resume")
    return workers


def _executor_iter(spec: SweepSpec, todo: list[Scenario], chunk: int, executor: str, workers: int,
                   address: str | None, max_retries: int | None):
    """The executor's iterator of finished chunks (lists of records) of ``todo``, ``chunk`` scenarios a task."""
    from simfoe.sweep import executors

    # Dispatch in run_id order (a stable shuffle): costly corners of the grid spread over tasks.
    order = sorted(todo, key=lambda s: s.run_id)
    chunks = [[_task(s) for s in order[i:i + chunk]] for i in range(0, len(order), chunk)]
    kind = spec.scenario_kind()
    fn = None if kind.builtin else kind.function()
    if executor == "ray":
        return executors.iter_ray(spec.kind, chunks, spec.metrics, fn, workers, address,
                                  RAY_MAX_RETRIES if max_retries is None else max_retries)
    return executors.iter_local(spec.kind, chunks, spec.metrics, fn, workers)


@dataclass(frozen=True)
class _Tally:
    """Scenarios a run stored: ``ok`` and ``failed`` (stored with their error)."""

    ok: int
    failed: int


def _store_all(it, spec: SweepSpec, base: dict, store: ResultStore, todo: list[Scenario], bar) -> _Tally:
    """Store every chunk ``it`` yields as it comes (the manifest with the first; on Ctrl-C what is stored is
    compacted and the interrupt goes on); returns how many scenarios ran ok and how many failed."""
    from simfoe import __version__

    by_index = {s.index: s for s in todo}
    out = store.out
    ok = failed = 0
    wrote = False  # the manifest goes with the first rows: an executor that cannot start leaves nothing
    try:
        for recs in it:
            wrote = wrote or _write_manifest(spec, out, base, __version__)
            store.append([make_row(spec, by_index[r["index"]], r, __version__) for r in recs])
            n_ok = sum(r["status"] == "ok" for r in recs)
            ok += n_ok
            failed += len(recs) - n_ok
            if bar is not None:
                bar.update(len(recs))
                if failed:
                    bar.set_postfix(failed=failed, refresh=False)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if store.has_results():
            store.compact()
        sys.stderr.write(f"stored {ok + failed} of {len(todo)} scenarios in {out}; "
                         "rerun with --resume to finish\n")
        raise
    finally:
        close = getattr(it, "close", None)
        if close:
            close()
    if bar is not None:
        bar.close()
    if not wrote:
        _write_manifest(spec, out, base, __version__)
    return _Tally(ok, failed)


def _check_unused_options(executor: str, address: str | None, resume: bool, retry_failed: bool,
                          dry_run: bool, probes: int | None, max_retries: int | None = None) -> None:
    """An option the run would silently ignore is refused (SpecError) before anything runs; so is
    --executor ray without ray installed."""
    if address is not None and executor != "ray":
        raise SpecError("--address", address, "only with --executor ray (the local pool runs on this machine)")
    if max_retries is not None:
        if executor != "ray":
            raise SpecError("--max-retries", max_retries, "add --executor ray, whose tasks it retries when their "
                            "worker dies, or leave it out (the local pool reruns such a chunk at most twice, fixed)",
                            problem=f"{max_retries!r} given without --executor ray")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise SpecError("--max-retries", max_retries, "an integer >= 0")
    if retry_failed and not resume:
        raise SpecError("--retry-failed", True, "add --resume: it reruns the failed scenarios stored in --out",
                        problem="only with --resume")
    if probes is not None:
        if not dry_run:
            raise SpecError("--probes", probes, "add --dry-run, which times that many scenarios, or leave --probes out",
                            problem=f"{probes!r} given without --dry-run")
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
            raise SpecError("--probes", probes, "an integer >= 0")
    if executor == "ray":
        from simfoe.errors import require_extra

        require_extra("ray", "ray", "--executor", "ray")


def _continues(out: Path, spec: SweepSpec, scenarios: list[Scenario], done: dict[str, str]) -> bool:
    """Whether the results in ``out`` are this very spec's (its stored sweep.yaml equals ``spec`` and every
    stored run_id is one of its scenarios): running it again then continues them instead of refusing."""
    import yaml

    try:
        stored = yaml.safe_load((out / "sweep.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    same = stored == yaml.safe_load(yaml.safe_dump(spec.raw, sort_keys=False))
    return same and set(done) <= {s.run_id for s in scenarios}


def _up_to_date(base: dict, store: ResultStore, csv: bool, done: dict[str, str]) -> dict:
    """The result of a run with every scenario already stored: nothing runs and nothing is rewritten
    (``csv`` asked for and absent: results.csv is written)."""
    summary = store.out / "summary.md"
    result = {**base, "ran": 0, "ok": 0, "failed": 0, "wall_s": 0.0, "scenarios_per_s": None,
              "results": str(store.results), "rows": len(done), "up_to_date": True,
              "stored_failed": sum(st != "ok" for st in done.values()),
              "summary": str(summary) if summary.is_file() else None}
    if csv or store.csv.is_file():
        result["csv"] = str(store.csv if store.csv.is_file() else store.write_csv(store.read()))
    return result


def _write_manifest(spec: SweepSpec, out: Path, base: dict, version: str) -> bool:
    """Write OUT/sweep.yaml (the spec) and OUT/sweep.json (run metadata); returns True."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(spec.raw, sort_keys=False))
    meta = {**base, "simfoe_version": version, "started_at": time.time()}
    (out / "sweep.json").write_text(json_text(meta), encoding="utf-8")
    return True


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="scn", desc="sweep", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
