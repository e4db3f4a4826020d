"""Short markdown summary of a sweep (``out/summary.md``): what ran, what failed, headline numbers
(for forward sweeps: where FoE beats MoE and by how much), and links to the plots."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from simfoe.outputs import fmt_time


def _inputs(ok: pd.DataFrame) -> list[str]:
    return [c for c in ok.columns if c in ("model", "hardware", "nodes", "phase", "batch", "seq_len", "routing",
                                           "seed") or c.startswith(("hardware.", "model.", "placement."))]


def _speedups(ok: pd.DataFrame) -> pd.DataFrame:
    """MoE latency / FoE latency for every input combination that has both archs."""
    inputs = _inputs(ok)
    piv = ok.pivot_table(index=inputs, columns="arch", values="latency_s", aggfunc="first")
    if not {"moe", "foe"} <= set(piv.columns):
        return pd.DataFrame()
    piv = piv.dropna(subset=["moe", "foe"])
    piv["speedup"] = piv["moe"] / piv["foe"]
    return piv.reset_index()


def _forward_section(ok: pd.DataFrame) -> list[str]:
    if not {"arch", "latency_s"} <= set(ok.columns):
        return []
    lines = ["## MoE vs FoE", ""]
    if "memory.fits" in ok:
        over = ok[ok["memory.fits"] == False]  # noqa: E712 (a column of booleans)
        if len(over):
            lines += [f"{len(over)} of {len(ok)} scenarios need more HBM than a GPU has (`memory.fits` false: "
                      "weights plus the batch's KV cache over the usable HBM); their latencies are what the pass "
                      "would take if it fitted, and the comparison below leaves them out.", ""]
            ok = ok[ok["memory.fits"] != False]  # noqa: E712
    sp = _speedups(ok)
    if sp.empty:
        return lines if len(lines) > 2 else []
    wins = int((sp["speedup"] > 1).sum())
    lines += [f"FoE is faster in **{wins} of {len(sp)}** matched scenarios "
             f"(speed-up = MoE latency / FoE latency; median {sp['speedup'].median():.2f}x, "
             f"range {sp['speedup'].min():.2f}x to {sp['speedup'].max():.2f}x).", ""]
    # name every input that varies in the sweep (a win at "batch=8" alone is ambiguous when hardware varies)
    varying = [c for c in _inputs(sp) if sp[c].nunique(dropna=False) > 1]
    show = [c for c in ("phase", "nodes", "batch", "seq_len") if c in sp] + \
        [c for c in varying if c not in ("phase", "nodes", "batch", "seq_len")]
    others = [c for c in varying if c not in ("phase", "nodes", "batch")]
    for label, row in (("Largest FoE win", sp.loc[sp["speedup"].idxmax()]),
                       ("Largest FoE loss", sp.loc[sp["speedup"].idxmin()])):
        where = ", ".join(f"{c}={row[c]}" for c in show)
        lines.append(f"- {label}: {row['speedup']:.2f}x at {where} "
                     f"(MoE {fmt_time(row['moe'])}, FoE {fmt_time(row['foe'])})")
    lines.append("")
    if {"phase", "nodes", "batch"} <= set(sp.columns):
        for ph, g in sp.groupby("phase"):
            t = g.pivot_table(index="nodes", columns="batch", values="speedup", aggfunc="median")
            over = f"; median over {', '.join(others)}" if others else ""
            lines += [f"Speed-up, {ph} (rows: nodes, columns: batch{over}; >1 means FoE is faster):", "",
                      "| nodes | " + " | ".join(str(b) for b in t.columns) + " |",
                      "|---" * (len(t.columns) + 1) + "|"]
            for n, r in t.iterrows():
                lines.append(f"| {n} | " + " | ".join("-" if pd.isna(v) else f"{v:.2f}x" for v in r) + " |")
            lines.append("")
    return lines


def _values(df: pd.DataFrame, col: str) -> str:
    """The distinct values of ``col``; several: one sub-bullet each, with how many rows have it."""
    counts = df[col].astype(str).value_counts(sort=False)
    if len(counts) == 1:
        return f"`{counts.index[0]}`"
    return "".join(f"\n  - `{v}` ({n} scenarios)" for v, n in counts.items())


def _what_ran(df: pd.DataFrame, kind: str, run: dict | None, out: Path) -> list[str]:
    """What the stored rows simulated: models, hardware, layouts, --set values; version and command."""
    import json

    if run is None and (out / "sweep.json").is_file():  # `simfoe plot`: the run that wrote the folder
        try:
            run = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            run = None
    lines = ["## What ran", ""]
    names = {"model": "model", "hardware": "hardware", "spec": "pipeline", "layout.label": "layout"}
    lines += [f"- {label}: {_values(df, c)}" for c, label in names.items() if c in df and df[c].notna().any()]
    if kind in ("forward", "serve"):
        sets = [c for c in df.columns if c.startswith(("hardware.", "model.", "placement."))]
        lines += [f"- `--set {c}`: {_values(df, c)}" for c in sets]
    versions = sorted(df["simfoe_version"].dropna().astype(str).unique()) if "simfoe_version" in df else []
    if versions:
        lines.append(f"- simfoe {', '.join(versions)}")
    if run and run.get("command"):
        lines.append(f"- command: `{run['command']}`")
    return lines + [""]


def write_summary(df: pd.DataFrame, out: str | Path, spec_name: str = "sweep", run: dict | None = None) -> Path:
    """Write ``out/summary.md`` and return its path."""
    out = Path(out)
    ok = df[df["status"] == "ok"] if "status" in df else df
    bad = df[df["status"] != "ok"] if "status" in df else df.iloc[:0]
    kind = df["kind"].iloc[0] if len(df) and "kind" in df else "?"
    lines = [f"# Sweep `{spec_name}` ({kind})", "",
             f"- scenarios stored: {len(df)} ({len(ok)} ok, {len(bad)} failed)"]
    if run:
        if run.get("wall_s") is not None:
            lines.append(f"- this run: {run.get('ran', 0)} scenarios in {run['wall_s']:.1f} s "
                         f"with the {run.get('executor')} executor ({run.get('workers')} workers)"
                         + (f", {run['scenarios_per_s']:.1f} scenarios/s" if run.get("scenarios_per_s") else ""))
        if run.get("already_done"):
            lines.append(f"- resumed: {run['already_done']} scenarios were already stored")
    lines += ["- results: `results.parquet` (one row per scenario; inputs and `a.b.c` metric columns)"
              + (" and `results.csv`" if (out / "results.csv").is_file() else ""), ""]
    if len(ok):
        lines += _what_ran(ok, kind, run, out)
    if kind == "forward" and len(ok):
        lines += _forward_section(ok)
    if len(bad):
        lines += ["## Failed scenarios", ""]
        for err, g in bad.groupby(bad["error"].fillna("unknown")):
            lines.append(f"- {len(g)} x `{err}`")
        lines.append("")
    plots = sorted((out / "plots").glob("*.png")) if (out / "plots").is_dir() else []
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    path = out / "summary.md"
    from simfoe.outputs import write_text  # makes the folder when missing

    write_text(path, "\n".join(lines), field="--out")
    return path
