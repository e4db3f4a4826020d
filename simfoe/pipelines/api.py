"""The pipelines API: one function per capability. ``simfoe pipeline``, :mod:`simfoe.whatif`, sweeps
(``kind: pipeline``) and the ALTO report call these; none of them runs a pipeline another way.

- :func:`load_pipeline`: a validated spec from a preset name, a YAML path or a mapping, ``--set`` applied.
- :func:`run_pipeline`: one scenario -> the ``simfoe pipeline --json`` object.
- :func:`compare`: latency-vs-load curves of several (mode, routing) variants -> points and a summary
  per variant (load at the latency target, or that it was not reached; points left off the curves).
- :func:`plot_curves`: those curves as a PNG (log latency axis; dropped points named in the legend).

Units: seconds, requests/s.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np

from simfoe.pipelines.curves import PointDone, Variant, plot_curves, sweep
from simfoe.pipelines.engine import simulate
from simfoe.pipelines.metrics import load_at_target, summarize
from simfoe.pipelines.spec import PipelineSpec
from simfoe.pipelines.spec import load_pipeline as _load

SpecLike = str | Path | dict | PipelineSpec

__all__ = ["PointDone", "Variant", "compare", "load_pipeline", "plot_curves", "run_pipeline"]


def load_pipeline(spec: SpecLike, overrides=()) -> PipelineSpec:
    """A validated :class:`PipelineSpec`; ``overrides``: ``--set`` strings (``stages.bm25.instances=2``).
    A preset name or path is read once per process for the same overrides (specs are frozen)."""
    if isinstance(spec, PipelineSpec):
        if overrides:
            return _load(spec.model_dump(), list(overrides))
        return spec
    if isinstance(spec, (str, Path)):
        return _cached(str(spec), tuple(overrides))
    return _load(spec, list(overrides))


@functools.lru_cache(maxsize=64)
def _cached(spec: str, overrides: tuple[str, ...]) -> PipelineSpec:
    return _load(spec, list(overrides))


def run_pipeline(spec: SpecLike, mode: str = "stream", rate: float = 1.0, duration: float = 60.0, seed: int = 0,
                 routing: str | None = None, overrides=(), arrivals: np.ndarray | None = None,
                 max_requests: int | None = None, per_instance: bool = False) -> dict:
    """One scenario: Poisson arrivals at ``rate`` req/s for ``duration`` s (or the given ``arrivals``
    times), ``mode`` stream | batch, ``routing`` a policy name (None: the spec's) -> the public JSON
    (:func:`simfoe.pipelines.metrics.summarize`); ``per_instance`` adds each instance's counters."""
    res = simulate(load_pipeline(spec, overrides), mode, rate, duration, seed, routing, arrivals, max_requests)
    return summarize(res, per_instance=per_instance)


def compare(spec: SpecLike, variants: list[Variant], rates: list[float], duration: float, seed: int = 0,
            target_s: float = 4.0, jobs: int | None = None, max_requests: int | None = None,
            progress: Callable[[PointDone], None] | None = None, overrides=()) -> dict:
    """Every variant at every rate (same seed: common random numbers) -> ``{"spec", "target_s",
    "duration_s", "seed", "summary", "points"}``. ``summary[variant]``: :func:`load_at_target` of its
    points, its P50/P99 at the lowest rate. ``progress`` is called as each point finishes."""
    s = load_pipeline(spec, overrides)
    points = sweep(s, variants, rates, duration, seed, jobs, max_requests, progress=progress)
    summary = {}
    for v in dict.fromkeys(p["variant"] for p in points):
        pts = [p for p in points if p["variant"] == v]
        low = min(pts, key=lambda p: p["offered_rps"])
        summary[v] = {
            **load_at_target(pts, target_s),
            "p99_at_lowest_rate_s": low["latency_s"]["p99"],
            "p50_at_lowest_rate_s": low["latency_s"]["p50"],
            "lowest_rate_rps": low["offered_rps"],
        }
    return {"spec": s.name, "target_s": target_s, "duration_s": duration, "seed": seed, "summary": summary,
            "points": points}
