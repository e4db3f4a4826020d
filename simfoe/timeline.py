"""Chrome/Perfetto trace-event files (open in chrome://tracing or ui.perfetto.dev).

A bottom-layer utility: forward passes and serving runs record events as dicts with the trace-event
fields (``name``, ``ph``, ``pid``, ``tid``, ``ts`` and ``dur`` in microseconds, ``args``).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

#: Events kept by recorders on long runs; beyond it a run's timeline is truncated (and says so).
MAX_EVENTS = 500_000


def write_timeline(path: str | Path, events: list, processes: dict[int, str] | None = None) -> None:
    """Write ``events`` as a trace-event JSON file atomically; ``processes`` names the pids."""
    meta = [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}}
            for pid, name in (processes or {}).items()]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"traceEvents": meta + list(events), "displayTimeUnit": "ms"}, f)
    os.replace(tmp, p)
