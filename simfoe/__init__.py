"""simfoe: performance simulator and planner for MoE vs Federation-of-Experts inference
and ALTO-style compound AI pipelines.

Units everywhere: seconds, bytes, bytes/s, FLOP, FLOP/s.

Notebook entry points (imported lazily so ``import simfoe`` stays light)::

    import simfoe
    simfoe.forward("mixtral-8x7b", "h100-sxm", nodes=1, arch="foe", phase="decode", batch=64, seq_len=2048)
    simfoe.serve("qwen3-30b-a3b", "h100-sxm", nodes=1, arch="moe", trace="longbench", rate=2, duration=120)
    simfoe.whatif(...)            # side-by-side comparison DataFrame (see simfoe/whatif.py)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "forward": ("simfoe.api", "forward"),
    "forward_model": ("simfoe.api", "forward_model"),
    "serve": ("simfoe.serving.api", "run_serve"),
    "simulate_serving": ("simfoe.serving.api", "simulate_serving"),
    "whatif": ("simfoe.whatif", "whatif"),
    "load_model": ("simfoe.specs.io", "load_model"),
    "load_hardware": ("simfoe.specs.io", "load_hardware"),
    "SpecError": ("simfoe.errors", "SpecError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'simfoe' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
