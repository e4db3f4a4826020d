"""Write fitted values into a hardware profile YAML, safely.

Fitters (kernels, collectives, CPU calibration) each own one section of a profile. ``update_profile``
takes an exclusive file lock, re-reads the file, replaces only the given section and provenance
entries, keeps the leading comment block, validates the result and writes atomically.
"""
from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

import yaml

from simfoe.outputs import write_text
from simfoe.specs.base import validate_spec
from simfoe.paths import hwprofiles_dir
from simfoe.specs.hardware import HardwareSpec


def profile_path(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or "/" in s:
        return Path(s)
    return Path(str(hwprofiles_dir())) / f"{s}.yaml"


def update_profile(name_or_path: str | Path, section: str, values: Any, provenance: dict[str, str] | None = None) -> Path:
    """Set ``profile[section] = values`` (section may be dotted, e.g. 'collectives.nvlink')."""
    path = profile_path(name_or_path)
    lock = path.with_suffix(path.suffix + ".lock")
    with open(lock, "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            text = path.read_text() if path.exists() else ""
            header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#")) if text else ""
            header = header.split("\n\n")[0]
            data = yaml.safe_load(text) if text else {}
            node = data
            keys = section.split(".")
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = values
            if provenance:
                data.setdefault("provenance", {}).update(provenance)
            validate_spec(HardwareSpec, data, "hardware")
            write_text(path, header + yaml.safe_dump(data, sort_keys=False, width=200), "hardware profile")
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)
    try:
        lock.unlink()
    except FileNotFoundError:
        pass
    return path
