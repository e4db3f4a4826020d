"""Scenario sweeps: expand a YAML sweep spec into scenarios, run them on a local process pool or
on Ray, store one row per scenario (resumable parquet part files), draw plots and a summary.

Python entry points: :func:`load_sweep_spec`, :func:`run_sweep`, :func:`load_results`,
:func:`make_plots`. The CLI (``simfoe sweep``, ``simfoe plot``) is a thin shell over these.
Imports are lazy so that pool and Ray workers (which import :mod:`simfoe.sweep.worker`) stay light.
"""
from __future__ import annotations

_EXPORTS = {
    "SweepSpec": "simfoe.sweep.spec", "Scenario": "simfoe.sweep.spec", "load_sweep_spec": "simfoe.sweep.spec",
    "parse_sweep_spec": "simfoe.sweep.spec", "default_spec_path": "simfoe.sweep.spec",
    "run_sweep": "simfoe.sweep.runner", "load_results": "simfoe.sweep.store", "make_plots": "simfoe.sweep.plots",
    "write_summary": "simfoe.sweep.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'simfoe.sweep' has no attribute {name!r}")
