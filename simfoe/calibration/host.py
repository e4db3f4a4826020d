"""Which calibrated CPU profile describes this host.

A measurement set's env.json records the CPU it was measured on (vendor, family, model; see
validation/bench_env.py). validation/tolerances.yaml maps each set to the profile fitted from it.
The host matches a profile when /proc/cpuinfo reports the same vendor, family and model: CI runners
of one machine kind share them (AMD EPYC family 25 model 17; Intel Xeon family 6 model 167 seen here).
"""
from __future__ import annotations

import json
from pathlib import Path

CPU_KEYS = ("vendor", "family", "model")


def host_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """{"vendor", "family", "model", "model_name"} of the first processor in ``cpuinfo`` ({} if unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {}
    out: dict = {}
    names = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "model name": "model_name"}
    for line in text.split("\n\n")[0].splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key in names:
            val = val.strip()
            out[names[key]] = int(val) if key in ("cpu family", "model") and val.isdigit() else val
    return out


def set_cpu(set_dir: Path) -> dict:
    """The CPU recorded in a CPU measurement set's env.json ({} when absent, and for a GPU set, whose
    env.json records the GPU machine's host CPU: its profile describes the GPU, not that CPU)."""
    try:
        env = json.loads((Path(set_dir) / "env.json").read_text())
    except (OSError, ValueError):
        return {}
    return (env.get("cpu") or {}) if env.get("device", "cpu") == "cpu" else {}


def matching_profiles(cpu: dict | None = None) -> list[str]:
    """Profiles (names) fitted from measurement sets taken on this CPU kind, newest set first."""
    from simfoe.calibration.regression import DATA_DIR, load_tolerances

    cpu = host_cpu() if cpu is None else cpu
    if not all(cpu.get(k) is not None for k in CPU_KEYS):
        return []
    sets = load_tolerances().get("measurement_sets") or {}
    out = []
    for name in sorted(sets, reverse=True):
        rec = set_cpu(DATA_DIR / name)
        if all(rec.get(k) == cpu[k] for k in CPU_KEYS) and sets[name].get("hardware") not in out:
            out.append(sets[name]["hardware"])
    return out
