"""Chrome/Perfetto trace-event files (open in chrome://tracing or ui.perfetto.dev).

A bottom-layer utility: forward passes and serving runs record events as dicts with the trace-event
fields (``name``, ``ph``, ``pid``, ``tid``, ``ts`` and ``dur`` in microseconds, ``args``).
"""
from __future__ import annotations

import json
from pathlib import Path

#: Events kept by recorders on long runs; beyond it a run's timeline is truncated (and says so).
MAX_EVENTS = 500_000


def write_timeline(path: str | Path, events: list, processes: dict[int, str] | None = None,
                   field: str = "--timeline", files=None) -> None:
    """Write ``events`` as a trace-event JSON file atomically; ``processes`` names the pids.

    The file is written under a temporary name in its folder and renamed; on failure nothing is
    left behind and a SpecError names ``field`` and ``path``. With ``files`` (a
    :class:`simfoe.outputs.AtomicFiles` group) it is renamed when that group is."""
    from simfoe.outputs import AtomicFiles

    if files is None:
        with AtomicFiles(field) as group:
            return write_timeline(path, events, processes, field, group)
    meta = [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}}
            for pid, name in (processes or {}).items()]
    with open(files.path(path, field), "w") as f:
        json.dump({"traceEvents": meta + list(events), "displayTimeUnit": "ms"}, f)
