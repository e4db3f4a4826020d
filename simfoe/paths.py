"""Where simfoe finds data that is not part of the package.

The public reference data (``../shared/data`` beside a checkout) is read in place, never copied.
``SIMFOE_SHARED_DATA`` overrides the location.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_relative(p: str | Path, beside: bool = False) -> str:
    """``p`` relative to the repository root, for provenance and regenerate lines; with ``beside``, a path
    next to the checkout (the shared data) as ``../...``; else absolute."""
    p = Path(p).resolve()
    roots = ((REPO_ROOT, ""), (REPO_ROOT.parent, "../")) if beside else ((REPO_ROOT, ""),)
    for root, prefix in roots:
        try:
            return prefix + str(p.relative_to(root))
        except ValueError:
            continue
    return str(p)


def hwprofiles_dir():
    """hwprofiles/ of a checkout (editable install), else the copy installed as simfoe.hwprofiles."""
    local = REPO_ROOT / "hwprofiles"
    if local.is_dir():
        return local
    return resources.files("simfoe.hwprofiles")


def hardware_presets() -> list[str]:
    """Short names of the bundled hardware profiles (no spec parsing: cheap enough for --help)."""
    return sorted(p.name[:-5] for p in hwprofiles_dir().iterdir() if p.name.endswith(".yaml"))


def _shared_candidates() -> list[Path]:
    env = os.environ.get("SIMFOE_SHARED_DATA")
    return ([Path(env)] if env else []) + [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def shared_data_dir() -> Path | None:
    """The shared reference-data folder, or None when it is absent."""
    for c in _shared_candidates():
        if c.is_dir():
            return c
    return None


def shared_data_expected() -> Path:
    """The shared reference-data folder if present, else the first place looked for it
    (``SIMFOE_SHARED_DATA``, else ``../shared/data`` beside the checkout): the path to name when absent."""
    return shared_data_dir() or _shared_candidates()[0]
