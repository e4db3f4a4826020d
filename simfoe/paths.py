"""Where simfoe finds data that is not part of the package.

The public reference data (``../shared/data`` beside a checkout) is read in place, never copied.
``SIMFOE_SHARED_DATA`` overrides the location.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def hwprofiles_dir():
    """hwprofiles/ of a checkout (editable install), else the copy installed as simfoe.hwprofiles."""
    local = REPO_ROOT / "hwprofiles"
    if local.is_dir():
        return local
    return resources.files("simfoe.hwprofiles")


def hardware_presets() -> list[str]:
    """Short names of the bundled hardware profiles (no spec parsing: cheap enough for --help)."""
    return sorted(p.name[:-5] for p in hwprofiles_dir().iterdir() if p.name.endswith(".yaml"))


def shared_data_dir() -> Path | None:
    """The shared reference-data folder, or None when it is absent."""
    env = os.environ.get("SIMFOE_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None
