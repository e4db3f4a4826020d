"""Latency-vs-achieved-load curves: sweep rates for several (mode, routing) variants; plot them."""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from simfoe.pipelines.spec import PipelineSpec


@dataclass(frozen=True)
class Variant:
    """One curve: hand-over ``mode`` (stream | batch) and ``routing`` policy (None: the spec's)."""

    mode: str
    routing: str | None = None


@dataclass(frozen=True)
class PointDone:
    """A finished point of :func:`sweep`: ``done`` of ``total`` points, the point's JSON, its wall s."""

    done: int
    total: int
    point: dict
    wall_s: float


@dataclass(frozen=True)
class _Task:
    spec: PipelineSpec
    variant: Variant
    rate: float
    duration: float
    seed: int
    max_requests: int | None


def _one(t: _Task) -> tuple[dict, float]:
    from simfoe.pipelines.engine import simulate
    from simfoe.pipelines.metrics import summarize

    t0 = time.perf_counter()
    v = t.variant
    pt = summarize(simulate(t.spec, v.mode, t.rate, t.duration, t.seed, v.routing, max_requests=t.max_requests),
                   per_instance=False)
    pt["variant"] = f"{v.mode}/{pt['routing']}"
    return pt, time.perf_counter() - t0


def sweep(spec: PipelineSpec, variants: list[Variant], rates: list[float], duration: float,
          seed: int = 0, jobs: int | None = None, max_requests: int | None = None,
          progress: Callable[[PointDone], None] | None = None) -> list[dict]:
    """One run per (variant, rate); same seed for every point (common random numbers).

    ``jobs`` worker processes (default: min(2, CPUs)); results in (variant, rate) order whatever
    order they finish in; ``progress`` is called as each finishes. More than ``max_requests``
    expected requests in all runs together (default: the spec's ``request_limit``, simfoe.limits) is
    refused before the first starts.
    """
    total = len(variants) * sum(rates) * duration
    spec.request_limit.check("rates", rates, total, max_requests, "sum of rates x duration x variants")
    tasks = [_Task(spec, v, rate, duration, seed, max_requests) for v in variants for rate in rates]
    jobs = jobs or min(2, os.cpu_count() or 1)
    out: list = [None] * len(tasks)

    def done(i: int, res: tuple[dict, float]) -> None:
        out[i] = res[0]
        if progress is not None:
            progress(PointDone(sum(p is not None for p in out), len(tasks), res[0], res[1]))

    if jobs <= 1:
        for i, t in enumerate(tasks):
            done(i, _one(t))
        return out
    with ProcessPoolExecutor(jobs) as ex:
        futs = {ex.submit(_one, t): i for i, t in enumerate(tasks)}
        for f in as_completed(futs):
            done(futs[f], f.result())
    return out


def curve_figure(points: list[dict], title: str = "", target_s: float | None = None):
    """Median and P99 latency (log axis) vs achieved load, one line per variant; points left off
    (:func:`simfoe.pipelines.metrics.on_curve`) are counted in the legend and their rates named in a note under the plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simfoe.pipelines.metrics import on_curve

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    variants = list(dict.fromkeys(p["variant"] for p in points))
    dropped = {v: sorted(p["offered_rps"] for p in points if p["variant"] == v and not on_curve(p)) for v in variants}
    for ax, stat, label in ((axes[0], "p50", "median"), (axes[1], "p99", "P99")):
        for v in variants:
            pts = sorted((p for p in points if p["variant"] == v and on_curve(p)), key=lambda p: p["offered_rps"])
            name = v + (f" ({len(dropped[v])} dropped)" if dropped[v] else "")
            ax.plot([p["achieved_rps"] for p in pts], [p["latency_s"][stat] for p in pts], marker="o", ms=3, label=name)
        if target_s is not None and stat == "p50":
            ax.axhline(target_s, color="grey", ls="--", lw=1, label=f"{target_s:g} s target")
        _log_seconds(ax)
        ax.set_xlabel("achieved load (requests/s)")
        ax.set_ylabel(f"{label} latency (s, log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    note = "; ".join(f"{v} at {', '.join(f'{r:g}' for r in rs)} req/s" for v, rs in dropped.items() if rs)
    if note:
        fig.text(0.01, 0.01, f"Left off (achieved < 80% of offered, or none completed): {note}", fontsize=7,
                 wrap=True)
    fig.tight_layout(rect=(0, 0.05 if note else 0, 1, 1))
    return fig


def _log_seconds(ax) -> None:
    """A log latency axis labelled in plain seconds (minor ticks too while it spans under 20x)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    fmt = FuncFormatter(lambda y, _: f"{y:.3g}")
    ax.yaxis.set_major_formatter(fmt)
    lo, hi = ax.get_ylim()
    ax.yaxis.set_minor_formatter(fmt if hi < 20 * lo else NullFormatter())


def plot_curves(points: list[dict], path: str | Path, title: str = "", target_s: float | None = None) -> Path:
    """:func:`curve_figure` written as a PNG to ``path``."""
    import matplotlib.pyplot as plt

    fig = curve_figure(points, title, target_s)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
