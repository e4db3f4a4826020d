"""Worker side of a sweep: run a chunk of scenarios and return compact result records.

The same :func:`run_chunk` runs in-process, in a local process-pool worker or in a Ray task.
The scenario function is resolved once per process (module import + spec memoization live in the
worker for its lifetime); each scenario's exception is caught and recorded, never raised.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Any, Callable

_FN_CACHE: dict[str, Callable] = {}


def resolve(kind: str, fn: Callable | None = None) -> Callable:
    """The scenario function of ``kind`` in this process (``fn`` given: a kind registered at runtime)."""
    if fn is not None:
        return fn
    f = _FN_CACHE.get(kind)
    if f is None:
        from simfoe.sweep.scenarios import get_kind

        f = _FN_CACHE[kind] = get_kind(kind).function()
    return f


#: How often a pool worker checks that the sweep that started it is alive (s): the delay before an
#: orphaned worker exits.
PARENT_POLL_S = 0.5


def _exit_with_parent(parent: int) -> None:
    """Daemon thread body: end this process as soon as ``parent`` (a pid) is no longer its parent. A
    sweep killed outright (SIGKILL, OOM killer) cannot shut its pool down, and its workers would
    otherwise run their chunks to the end and then wait for work forever."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def init_worker(kind: str, fn: Callable | None = None, parent: int | None = None) -> None:
    """Process-pool initializer: watch ``parent`` (the sweep's pid; exit when it dies), then import
    the simulator once, before the first task."""
    if parent is not None:
        import threading

        threading.Thread(target=_exit_with_parent, args=(parent,), name="simfoe-parent-watch", daemon=True).start()
    resolve(kind, fn)


def flatten(obj: Any, prefix: str = "", out: dict | None = None) -> dict:
    """Nested dict -> {"a.b.c": scalar}; lists become JSON text; numpy scalars become Python."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
        return out
    if hasattr(obj, "item") and not isinstance(obj, (list, str)):
        try:
            obj = obj.item()
        except (ValueError, AttributeError):
            obj = str(obj)
    if isinstance(obj, (list, tuple)):
        obj = json.dumps(obj, default=str)
    elif isinstance(obj, float) and not math.isfinite(obj):
        obj = None
    elif obj is not None and not isinstance(obj, (int, float, str, bool)):
        obj = str(obj)
    out[prefix or "value"] = obj
    return out


#: result keys kept whatever a sweep's ``metrics:`` list: they describe the scenario (its resolved layout)
ALWAYS_KEPT = ("layout",)


def keep(flat: dict, metrics: list[str] | None) -> dict:
    if not metrics:
        return flat
    wanted = [*metrics, *ALWAYS_KEPT]
    return {k: v for k, v in flat.items() if any(k == m or k.startswith(m + ".") for m in wanted)}


def run_chunk(kind: str, tasks: list[tuple], metrics: list[str] | None = None,
              fn: Callable | None = None) -> list[dict]:
    """Run ``tasks`` = [(index, run_id, options, override_list), ...] in order.

    Returns one record per task: index, run_id, status ("ok"/"error"), error, wall_s (s),
    worker ("host:pid") and metrics (flattened dict).
    """
    f = resolve(kind, fn)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    out = []
    for index, rid, options, overrides in tasks:
        kwargs = dict(options)
        if overrides:
            kwargs["overrides"] = list(overrides)
        t0 = time.perf_counter()
        try:
            res = f(**kwargs)
            if not isinstance(res, dict):
                raise TypeError(f"scenario function returned {type(res).__name__}, expected dict")
            rec = {"status": "ok", "error": None, "metrics": keep(flatten(res), metrics)}
        except Exception as e:  # noqa: BLE001 - a failed scenario is a result, recorded with its error
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            rec = {"status": "error", "error": f"{type(e).__name__}: {msg}"[:500], "metrics": {}}
        rec.update(index=index, run_id=rid, wall_s=time.perf_counter() - t0, worker=worker)
        out.append(rec)
    return out
