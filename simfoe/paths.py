"""Where simfoe finds data that is not part of the package.

The public reference data (``../shared/data`` beside a checkout) is read in place, never copied.
``SIMFOE_SHARED_DATA`` overrides the location.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The shared reference-data folder, or None when it is absent."""
    env = os.environ.get("SIMFOE_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None
