"""Plots of a sweep's results table (matplotlib, PNG + SVG into ``out/plots/``).

forward: latency vs batch per arch and node count; MoE/FoE speed-up heatmap (nodes x batch);
time share per component (communication vs compute) as stacked bars.
serve: latency percentiles vs achieved throughput (one curve per layout, points = offered rates).
pipeline: median and P99 latency vs achieved load (one curve per mode/routing).
Inputs that vary besides the plotted axes split the output into one figure per combination.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from simfoe.sweep.scenarios import FORWARD_METRICS as FWD_METRICS  # result keys, not inputs

MAX_FIGS = 12  # per plot type; further combinations are skipped
COMM_PAT = re.compile(r"all_to_all|alltoall|all_reduce|allreduce|a2a|dispatch|combine|comm|all_gather|"
                      r"reduce_scatter|send|recv|network|nvlink|collective", re.I)
META = {"run_id", "index", "kind", "status", "error", "simfoe_version", "wall_s", "worker", "finished_at"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, d: Path, name: str, formats: Iterable[str]) -> list[Path]:
    from simfoe.outputs import AtomicFiles

    out = []
    try:
        with AtomicFiles("--out") as w:  # every format of the figure, or none; no temporary file left
            for fmt in formats:
                p = d / f"{name}.{fmt}"
                fig.savefig(w.path(p), dpi=130, bbox_inches="tight", format=fmt)
                out.append(p)
    finally:
        _plt().close(fig)
    return out


def _slug(items: dict) -> str:
    s = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in items.items())
    return re.sub(r"[^A-Za-z0-9._-]+", "", s)[:80]


def _value(key: str, v) -> str:
    """A swept value as a title shows it: bandwidths (bytes/s in specs) in GB/s, others as given."""
    if "bandwidth" in key.rsplit(".", 1)[-1] and isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
        return f"{float(v) / 1e9:g} GB/s"
    return str(v)


def _label(items: dict) -> str:
    return ", ".join(f"{k}={_value(k, v)}" for k, v in items.items())


def _facets(df: pd.DataFrame, cols: list[str]):
    """Yield (dict of fixed values, sub-frame) for each combination of the varied ``cols``."""
    varied = [c for c in cols if c in df and df[c].nunique(dropna=False) > 1]
    if not varied:
        yield {}, df
        return
    for n, (key, sub) in enumerate(df.groupby(varied, dropna=False, sort=True)):
        if n >= MAX_FIGS:
            return
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(varied, key)), sub


def _input_cols(df: pd.DataFrame, exclude: Iterable[str], metric_roots: Iterable[str]) -> list[str]:
    roots = tuple(metric_roots)
    ex = set(exclude) | META
    return [c for c in df.columns if c not in ex and c.split(".", 1)[0] not in roots
            and not c.startswith(("metric.", "layout."))]  # layout.*: derived from the inputs, not one


def _ms(x):
    return np.asarray(x, dtype=float) * 1e3


# ---- forward ------------------------------------------------------------------------------------

def _phases(df):
    return sorted(df["phase"].dropna().unique()) if "phase" in df else [None]


def _batch_axis(ax, batches):
    ax.set_xlabel("batch (sequences)")
    if len(batches) > 1 and max(batches) / max(min(batches), 1) >= 8:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(True, which="major", alpha=0.3)


@dataclass(frozen=True)
class _Facet:
    """The forward rows of one facet (one value of every other swept input) and what its plots share."""

    sub: pd.DataFrame
    phases: list
    nodes: list
    tag: str  # file-name suffix
    note: str  # title suffix naming the facet
    what: str  # "model on hardware" when the facet has one of each


def plot_forward(df: pd.DataFrame, d: Path, formats) -> list[Path]:
    """Per facet: latency vs batch, the MoE/FoE speed-up heatmap (both architectures swept) and the share of
    forward time per component (breakdown columns present)."""
    need = {"arch", "nodes", "batch", "latency_s"}
    if not need <= set(df.columns):
        return []
    paths: list[Path] = []
    other = _input_cols(df, ("arch", "nodes", "batch", "phase"), FWD_METRICS)
    for fixed, sub in _facets(df, other):
        model = sub["model"].iloc[0] if "model" in sub and sub["model"].nunique() == 1 else None
        hw = sub["hardware"].iloc[0] if "hardware" in sub and sub["hardware"].nunique() == 1 else None
        f = _Facet(sub, _phases(sub), sorted(sub["nodes"].unique()), ("_" + _slug(fixed)) if fixed else "",
                   f"\n{_label(fixed)}" if fixed else "", " on ".join(x for x in (model, hw) if x))
        paths += _latency_plot(f, d, formats)
        paths += _speedup_heatmap(f, d, formats)
        paths += _comm_share_plot(f, d, formats)
    return paths


def _latency_plot(f: _Facet, d: Path, formats) -> list[Path]:
    """Forward latency (ms) vs batch, a line per architecture and node count, a panel per phase."""
    plt, sub, phases, nodes, tag, note, what = _plt(), f.sub, f.phases, f.nodes, f.tag, f.note, f.what
    cmap = plt.get_cmap("viridis")
    colors = {n: cmap(i / max(1, len(nodes) - 1) * 0.85) for i, n in enumerate(nodes)}
    styles = {"moe": ("-", "o"), "foe": ("--", "s")}
    fig, axes = plt.subplots(1, len(phases), figsize=(5.2 * len(phases), 4.2), squeeze=False)
    for ax, ph in zip(axes[0], phases):
        p = sub if ph is None else sub[sub["phase"] == ph]
        for (arch, n), g in p.groupby(["arch", "nodes"], sort=True):
            g = g.sort_values("batch")
            ls, mk = styles.get(arch, (":", "^"))
            ax.plot(g["batch"], _ms(g["latency_s"]), ls, marker=mk, ms=4, color=colors[n],
                    label=f"{str(arch).upper()}, {n} node{'s' if n != 1 else ''}")
        _batch_axis(ax, sorted(p["batch"].unique()))
        ax.set_yscale("log")
        from matplotlib.ticker import FuncFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
        ax.set_ylabel("forward latency (ms)")
        ax.set_title(f"{ph}" if ph else "forward pass")
    axes[0][-1].legend(fontsize=8, ncol=2 if len(nodes) > 2 else 1)
    fig.suptitle(f"Forward latency vs batch {('- ' + what) if what else ''}{note}", fontsize=11)
    fig.tight_layout()
    return _save(fig, d, f"latency_vs_batch{tag}", formats)


def _speedup_heatmap(f: _Facet, d: Path, formats) -> list[Path]:
    """MoE latency / FoE latency per node count and batch (none unless both architectures were swept)."""
    plt, sub, phases, nodes, tag, note, what = _plt(), f.sub, f.phases, f.nodes, f.tag, f.note, f.what
    if not {"moe", "foe"} <= set(sub["arch"].unique()):
        return []
    # constrained layout keeps the (possibly two-line) suptitle clear of the subplot titles and
    # the shared colorbar, which tight_layout cannot place
    fig, axes = plt.subplots(1, len(phases), figsize=(5.4 * len(phases), 0.5 * len(nodes) + 2.6 + 0.3 * bool(note)),
                             squeeze=False, layout="constrained")
    from matplotlib.colors import TwoSlopeNorm

    im = None
    for ax, ph in zip(axes[0], phases):
        p = sub if ph is None else sub[sub["phase"] == ph]
        t = p.pivot_table(index="nodes", columns=["batch", "arch"], values="latency_s", aggfunc="first")
        batches = sorted(p["batch"].unique())
        m = np.full((len(nodes), len(batches)), np.nan)
        for i, n in enumerate(nodes):
            for j, b in enumerate(batches):
                try:
                    m[i, j] = t.loc[n, (b, "moe")] / t.loc[n, (b, "foe")]
                except KeyError:
                    pass
        finite = m[np.isfinite(m)]
        lo = min(0.5, float(finite.min()) if finite.size else 1) * 0.99
        hi = max(2.0, float(finite.max()) if finite.size else 1) * 1.01
        im = ax.imshow(m, cmap="RdBu", norm=TwoSlopeNorm(vmin=lo, vcenter=1.0, vmax=hi), aspect="auto")
        for i in range(len(nodes)):
            for j in range(len(batches)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}x", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(batches)), [str(b) for b in batches], rotation=45 if len(batches) > 8 else 0)
        ax.set_yticks(range(len(nodes)), [str(n) for n in nodes])
        ax.set_xlabel("batch (sequences)")
        ax.set_ylabel("nodes")
        ax.set_title(f"{ph}" if ph else "forward pass")
    fig.colorbar(im, ax=list(axes[0]), label="MoE latency / FoE latency (>1: FoE faster)")
    fig.suptitle(f"FoE speed-up over MoE {('- ' + what) if what else ''}{note}", fontsize=11)
    return _save(fig, d, f"speedup_heatmap{tag}", formats)


def _comm_share_plot(f: _Facet, d: Path, formats) -> list[Path]:
    """Share of forward time (%) per component at the smallest and largest batch (none without breakdowns)."""
    plt, sub, phases, nodes, tag, note, what = _plt(), f.sub, f.phases, f.nodes, f.tag, f.note, f.what
    comps = [c for c in sub.columns if c.startswith("breakdown_s.")]
    if not comps:
        return []
    comps_sorted = sorted(comps, key=lambda c: (not COMM_PAT.search(c), c))
    picks = {}
    for ph in phases:
        bs = sorted((sub if ph is None else sub[sub["phase"] == ph])["batch"].unique())
        picks[ph] = sorted({bs[0], bs[-1]})
    ncol = max(len(v) for v in picks.values())
    fig, axes = plt.subplots(len(phases), ncol, figsize=(0.55 * len(nodes) * 2 * ncol + 4,
                             3.4 * len(phases)), squeeze=False)
    comm_cmap, comp_cmap = plt.get_cmap("autumn"), plt.get_cmap("Blues")
    n_comm = sum(bool(COMM_PAT.search(c)) for c in comps_sorted)
    color = {}
    for i, c in enumerate(comps_sorted):
        if i < n_comm:
            color[c] = comm_cmap(0.15 + 0.7 * i / max(1, n_comm - 1))
        else:
            k = i - n_comm
            color[c] = comp_cmap(0.35 + 0.6 * k / max(1, len(comps_sorted) - n_comm - 1))
    for r, ph in enumerate(phases):
        for cidx in range(ncol):
            ax = axes[r][cidx]
            if cidx >= len(picks[ph]):
                ax.set_visible(False)
                continue
            b = picks[ph][cidx]
            p = sub if ph is None else sub[sub["phase"] == ph]
            p = p[p["batch"] == b].sort_values(["nodes", "arch"])
            labels = [f"{n} node{'s' if n != 1 else ''}\n{str(a).upper()}" for n, a in zip(p["nodes"], p["arch"])]
            vals = p[comps_sorted].fillna(0).to_numpy(dtype=float)
            tot = vals.sum(axis=1, keepdims=True)
            share = np.divide(vals, tot, out=np.zeros_like(vals), where=tot > 0) * 100
            bottom = np.zeros(len(p))
            for j, c in enumerate(comps_sorted):
                ax.bar(range(len(p)), share[:, j], bottom=bottom, color=color[c],
                       hatch="//" if j < n_comm else None, edgecolor="white", linewidth=0.4,
                       label=c.split(".", 1)[1])
                bottom += share[:, j]
            ax.set_xticks(range(len(p)), labels, fontsize=7)
            ax.set_ylim(0, 100)
            ax.set_ylabel("share of forward time (%)")
            ax.set_title(f"{ph + ', ' if ph else ''}batch {b}", fontsize=10)
    h, lab = axes[0][-1].get_legend_handles_labels()
    fig.legend(h, lab, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title="component (hatched: communication)", title_fontsize=8)
    fig.suptitle(f"Where the time goes {('- ' + what) if what else ''}{note}", fontsize=11)
    fig.tight_layout()
    return _save(fig, d, f"comm_share{tag}", formats)


# ---- serve --------------------------------------------------------------------------------------

SERVE_METRICS = ("requests", "ttft_s", "tbt_s", "e2e_s", "throughput", "goodput", "utilization", "queue_s")


def plot_serve(df: pd.DataFrame, d: Path, formats) -> list[Path]:
    plt = _plt()
    x = next((c for c in ("throughput.output_tokens_per_s", "throughput.requests_per_s") if c in df), None)
    ys = [c for c in ("ttft_s.p50", "ttft_s.p99", "tbt_s.p50", "tbt_s.p99", "e2e_s.p50", "e2e_s.p99") if c in df]
    if x is None or not ys:
        return []
    series = [c for c in ("arch", "nodes", "replicas") if c in df and df[c].nunique() > 1] or \
             [c for c in ("arch",) if c in df]
    other = _input_cols(df, ("rate", "seed", *series), SERVE_METRICS)
    paths: list[Path] = []
    for fixed, sub in _facets(df, other):
        metrics = sorted({c.split(".")[0] for c in ys}, key=["ttft_s", "tbt_s", "e2e_s"].index)
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            groups = sub.groupby(series, sort=True) if series else [((), sub)]
            for i, (key, g) in enumerate(groups):
                key = key if isinstance(key, tuple) else (key,)
                g = g.sort_values(x)
                name = ", ".join(f"{k}={v}" for k, v in zip(series, key)) or "all"
                c = f"C{i % 10}"
                if f"{m}.p50" in g:
                    ax.plot(g[x], _ms(g[f"{m}.p50"]), "-o", ms=4, color=c, label=f"{name} p50")
                if f"{m}.p99" in g:
                    ax.plot(g[x], _ms(g[f"{m}.p99"]), "--^", ms=4, color=c, label=f"{name} p99")
            ax.set_xlabel("achieved throughput (" + ("output tokens/s" if "tokens" in x else "requests/s") + ")")
            ax.set_ylabel({"ttft_s": "time to first token", "tbt_s": "time between tokens",
                           "e2e_s": "end-to-end latency"}[m] + " (ms)")
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
        axes[0][-1].legend(fontsize=8)
        fig.suptitle("Serving: latency vs throughput" + (f"\n{_label(fixed)}" if fixed else ""), fontsize=11)
        fig.tight_layout()
        paths += _save(fig, d, "throughput_latency" + ("_" + _slug(fixed) if fixed else ""), formats)
    return paths


# ---- pipeline -----------------------------------------------------------------------------------

PIPE_METRICS = ("offered_rps", "achieved_rps", "completed", "latency_s", "stages", "sent")


def plot_pipeline(df: pd.DataFrame, d: Path, formats) -> list[Path]:
    plt = _plt()
    if "achieved_rps" not in df or not any(c in df for c in ("latency_s.p50", "latency_s.p99")):
        return []
    series = [c for c in ("mode", "routing") if c in df and df[c].nunique(dropna=False) > 1] or \
             [c for c in ("mode",) if c in df]
    other = _input_cols(df, ("rate", "seed", "duration", *series), PIPE_METRICS)
    paths: list[Path] = []
    for fixed, sub in _facets(df, other):
        qs = [q for q in ("p50", "p99") if f"latency_s.{q}" in sub]
        fig, axes = plt.subplots(1, len(qs), figsize=(5 * len(qs), 4), squeeze=False)
        for ax, q in zip(axes[0], qs):
            groups = sub.groupby(series, sort=True, dropna=False) if series else [((), sub)]
            for i, (key, g) in enumerate(groups):
                key = key if isinstance(key, tuple) else (key,)
                g = g.sort_values("achieved_rps")
                name = ", ".join(str(v) for v in key) or "all"
                ax.plot(g["achieved_rps"], g[f"latency_s.{q}"], "-o", ms=4, color=f"C{i % 10}", label=name)
            ax.set_xlabel("achieved load (requests/s)")
            ax.set_ylabel(f"{'median' if q == 'p50' else 'P99'} latency (s)")
            ax.grid(True, alpha=0.3)
        axes[0][-1].legend(fontsize=8, title=" / ".join(series) if series else None)
        spec = sub["spec"].iloc[0] if "spec" in sub and sub["spec"].nunique() == 1 else ""
        fig.suptitle(f"Pipeline {spec}: latency vs achieved load" + (f"\n{_label(fixed)}" if fixed else ""),
                     fontsize=11)
        fig.tight_layout()
        paths += _save(fig, d, "latency_vs_load" + ("_" + _slug(fixed) if fixed else ""), formats)
    return paths


PLOTTERS = {"forward": plot_forward, "serve": plot_serve, "pipeline": plot_pipeline}


def make_plots(df: pd.DataFrame, out_dir: str | Path, formats: Iterable[str] = ("png", "svg")) -> list[Path]:
    """Draw every plot that fits the table's kind from its successful rows. Returns file paths."""
    if df is None or df.empty or "kind" not in df:
        return []
    ok = df[df["status"] == "ok"] if "status" in df else df
    if ok.empty:
        return []
    paths: list[Path] = []
    for kind, sub in ok.groupby("kind"):
        fn = PLOTTERS.get(str(kind))
        if fn is not None:
            sub = sub.dropna(axis=1, how="all")
            paths += fn(sub, Path(out_dir), tuple(formats))
    return paths
