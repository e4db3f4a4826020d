"""Latency-vs-achieved-load curves: sweep rates for several (mode, routing) variants; plot them."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from simfoe.limits import PIPELINE_REQUESTS
from simfoe.pipelines.spec import PipelineSpec


def _one(args) -> dict:
    from simfoe.pipelines.engine import simulate
    from simfoe.pipelines.metrics import summarize

    spec, mode, routing, rate, duration, seed, max_requests = args
    pt = summarize(simulate(spec, mode, rate, duration, seed, routing, max_requests=max_requests), per_instance=False)
    pt["variant"] = f"{mode}/{pt['routing']}"
    return pt


def sweep(spec: PipelineSpec, variants: list[tuple[str, str | None]], rates: list[float], duration: float,
          seed: int = 0, jobs: int | None = None, max_requests: int | None = None) -> list[dict]:
    """One run per (variant, rate); same seed for every point (common random numbers).

    ``jobs`` worker processes (default: min(2, CPUs)); results in (variant, rate) order. More than
    ``max_requests`` expected requests in all runs together (default
    :data:`simfoe.limits.PIPELINE_REQUESTS`) is refused before the first starts.
    """
    total = len(variants) * sum(rates) * duration
    PIPELINE_REQUESTS.check("rates", rates, total, max_requests, "sum of rates x duration x variants")
    tasks = [(spec, m, r, rate, duration, seed, max_requests) for m, r in variants for rate in rates]
    jobs = jobs or min(2, os.cpu_count() or 1)
    if jobs <= 1:
        return [_one(t) for t in tasks]
    with ProcessPoolExecutor(jobs) as ex:
        return list(ex.map(_one, tasks, chunksize=1))


def plot_curves(points: list[dict], path: str | Path, title: str = "", target_s: float | None = None) -> Path:
    """Median and P99 latency vs achieved load, one line per variant, valid points only (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    variants = list(dict.fromkeys(p["variant"] for p in points))
    for ax, stat, label in ((axes[0], "p50", "median"), (axes[1], "p99", "P99")):
        for v in variants:
            pts = sorted((p for p in points if p["variant"] == v and p["valid_point"]), key=lambda p: p["offered_rps"])
            ax.plot([p["achieved_rps"] for p in pts], [p["latency_s"][stat] for p in pts], marker="o", ms=3, label=v)
        if target_s is not None and stat == "p50":
            ax.axhline(target_s, color="grey", ls="--", lw=1, label=f"{target_s:g} s target")
        ax.set_xlabel("achieved load (requests/s)")
        ax.set_ylabel(f"{label} latency (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
