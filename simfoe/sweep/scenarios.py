"""Registry of scenario kinds: which function a sweep calls for ``kind: forward | serve | serve-disagg | pipeline``.

A kind names its target lazily (``"module:function"``) so that importing the sweep machinery
stays cheap; the function is imported once per process. The target's keyword parameters are
the options a sweep may set (``overrides`` is fed from dotted ``--set`` paths). Tests and users
may :func:`register` extra kinds with a plain callable.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from simfoe.errors import SpecError

REQUIRED = object()  # marker: parameter without a default


@dataclass
class ScenarioKind:
    """One kind of scenario.

    ``target``: ``"module:function"`` or a callable returning a (nested) dict of metrics.
    ``metrics``: known top-level metric names (checks a sweep's ``metrics:``; empty = unchecked).
    ``override_roots``: allowed first components of dotted ``--set`` paths (empty = any).
    ``check``: ``check(options, overrides)`` raises SpecError for bad values before anything runs.
    """

    name: str
    target: str | Callable[..., dict]
    metrics: tuple[str, ...] = ()
    override_roots: tuple[str, ...] = ()
    check: Callable[[dict, dict], None] | None = None
    builtin: bool = False
    _fn: Callable | None = field(default=None, repr=False, compare=False)

    def function(self) -> Callable[..., dict]:
        """The scenario function (imported on first use, then cached)."""
        if self._fn is None:
            if callable(self.target):
                self._fn = self.target
            else:
                mod, _, attr = self.target.partition(":")
                try:
                    self._fn = getattr(importlib.import_module(mod), attr)
                except (ImportError, AttributeError) as e:
                    raise SpecError("kind", self.name, f"its simulator ({self.target}) is not available "
                                    f"in this installation ({e})") from None
        return self._fn

    def parameters(self) -> dict[str, Any]:
        """Keyword parameters of the function -> default (``REQUIRED`` if none); no ``overrides`` and
        no ``progress`` (a callback for terminals, not a scenario input)."""
        sig = inspect.signature(self.function())
        out = {}
        for name, p in sig.parameters.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in ("overrides", "progress"):
                continue
            out[name] = REQUIRED if p.default is p.empty else p.default
        return out

    def takes_overrides(self) -> bool:
        return "overrides" in inspect.signature(self.function()).parameters


_REGISTRY: dict[str, ScenarioKind] = {}


def register(kind: ScenarioKind) -> ScenarioKind:
    """Add (or replace) a scenario kind."""
    _REGISTRY[kind.name] = kind
    return kind


def get_kind(name: Any) -> ScenarioKind:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise SpecError("kind", name, "allowed: " + ", ".join(sorted(_REGISTRY)))
    return _REGISTRY[name]


def kinds() -> list[str]:
    return sorted(_REGISTRY)


# ---- value checks (run once per distinct value; memoized) ---------------------------------------

def _pos_int(field_: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SpecError(field_, v, "a positive integer")


def _pos_float(field_: str, v: Any, allow_none: bool = True) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise SpecError(field_, v, "a positive number")


def _choice(field_: str, v: Any, allowed: tuple[str, ...]) -> None:
    if v not in allowed:
        raise SpecError(field_, v, "allowed: " + ", ".join(allowed))


@functools.lru_cache(maxsize=256)
def _check_model(model: str, overrides: tuple[str, ...]) -> None:
    from simfoe.specs.io import load_model

    load_model(model, list(overrides))


@functools.lru_cache(maxsize=256)
def _check_hardware(hw: str, overrides: tuple[str, ...]) -> None:
    from simfoe.specs.io import load_hardware

    load_hardware(hw, list(overrides))


@functools.lru_cache(maxsize=256)
def _check_placement(arch: str, nodes: int, overrides: tuple[str, ...]) -> None:
    from simfoe.specs.io import build_placement

    build_placement(arch, nodes, list(overrides))


@functools.lru_cache(maxsize=256)
def _check_routing(text: str) -> None:
    from simfoe.specs.routing import parse_routing

    parse_routing(text)


def _by_root(overrides: dict, root: str) -> tuple[str, ...]:
    from simfoe.sweep.spec import format_override

    return tuple(format_override(p, v) for p, v in sorted(overrides.items()) if p.split(".", 1)[0] == root)


def check_model_options(options: dict, overrides: dict) -> None:
    """Checks shared by forward and serve: presets/paths resolve, overrides apply, enums, ranges."""
    for k in ("nodes", "batch", "seq_len", "replicas"):
        if k in options and options[k] is not None:
            _pos_int(k, options[k])
    for k in ("rate", "duration"):
        if k in options:
            _pos_float(k, options[k])
    if "arch" in options:
        _choice("arch", options["arch"], ("moe", "foe"))
    if "phase" in options:
        _choice("phase", options["phase"], ("prefill", "decode"))
    if options.get("routing") is not None:
        _check_routing(str(options["routing"]))
    if options.get("model") is not None:
        _check_model(str(options["model"]), _by_root(overrides, "model"))
    if options.get("hardware") is not None:
        _check_hardware(str(options["hardware"]), _by_root(overrides, "hardware"))
    if "arch" in options and "nodes" in options:
        _check_placement(options["arch"], options["nodes"], _by_root(overrides, "placement"))
    if options.get("concurrency") is not None:
        _check_closed_loop(options)
    if options.get("engine") is not None:  # serve: an engine profile (simfoe.specs.engine)
        from simfoe.specs.engine import load_engine

        load_engine(str(options["engine"]))


def _check_closed_loop(options: dict) -> None:
    """A serve scenario's closed loop (``concurrency``, ``isl``, ``osl``, ...) is valid and has no
    open-loop ``trace``, ``rate`` or ``duration``."""
    from simfoe.workloads.closed_loop import ClosedLoop, select_workload

    for k in ("rate", "duration"):
        if options.get(k) is not None:
            raise SpecError(k, options[k], "omitted (null) with concurrency: a closed loop's clients send the requests")
    select_workload(options.get("trace"), **{k: options.get(k) for k in ClosedLoop.__dataclass_fields__})


def _check_pipeline(spec: str, overrides: tuple[str, ...]) -> None:
    from simfoe.pipelines.api import load_pipeline

    load_pipeline(spec, overrides)


def check_pipeline_options(options: dict, overrides: dict) -> None:
    from simfoe.sweep.spec import format_override

    _choice("mode", options.get("mode"), ("stream", "batch"))
    if options.get("routing") is not None:
        from simfoe.pipelines.routing import POLICIES

        _choice("routing", options["routing"], tuple(POLICIES))
    for k in ("rate", "duration"):
        if k in options:
            _pos_float(k, options[k], allow_none=False)
    if options.get("spec") is not None:
        _check_pipeline(str(options["spec"]), tuple(format_override(p, v) for p, v in sorted(overrides.items())))


# Built-in kinds. Known metric names follow the public contract in DESIGN.md.
FORWARD_METRICS = ("latency_s", "gpus", "breakdown_s", "comm_bytes", "local_activation_rate", "nodes_per_token",
                   "memory", "micro_batches")
register(ScenarioKind(
    "forward", "simfoe.api:forward",
    metrics=FORWARD_METRICS,
    override_roots=("hardware", "model", "placement"), check=check_model_options, builtin=True))
register(ScenarioKind(
    "serve", "simfoe.serving.api:run_serve",
    override_roots=("hardware", "model", "placement"), check=check_model_options, builtin=True))
register(ScenarioKind(
    "serve-disagg", "simfoe.serving.disagg_api:run_serve_disagg",
    override_roots=("hardware", "model"), check=check_model_options, builtin=True))
register(ScenarioKind(
    "pipeline", "simfoe.pipelines.api:run_pipeline", check=check_pipeline_options, builtin=True))
