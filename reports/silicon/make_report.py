"""Regenerate reports/silicon/: simfoe's replay of real H100 serving benchmarks against the measured TTFT and TPOT.

Run from the repository root: ``python reports/silicon/make_report.py [--cases CSV [--label TEXT]] [--jobs N]``. Without
``--cases`` it replays the H100 file first (``simfoe validate --silicon --cases-out reports/silicon/cases.csv``,
a few minutes on 2 cores); with it, it only renders that ``--cases-out`` CSV. Writes README.md, parity.png and
error_by_concurrency.png next to this file. Data: AIConfigurator's silicon rows (ai-dynamo/aiconfigurator,
Apache-2.0), read in place from ../shared/data/aiconfigurator/silicon/.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BACKENDS = ("vllm", "sglang", "trtllm")
#: AIConfigurator 0.12.0's own predictions of the H100 file, as its data README ("A reference figure",
#: ../shared/data/aiconfigurator/README.md) states them: rows predicted of 917, TTFT MAPE and median APE,
#: TPOT MAPE and median APE (%); the share within 25% is not published.
AIC = {"predicted": 689, "rows": 917, "ttft_mape": 51.9, "ttft_mdape": 48.6, "tpot_mape": 12.5, "tpot_mdape": 9.6}
#: concurrency bins of the error-by-concurrency view (client concurrency of a row, lower edges)
CONC_BINS = (1, 4, 16, 64, 256)


def replay(jobs: int) -> Path:
    """Replay the default H100 file into HERE/cases.csv (the ``validate --silicon --cases-out`` CSV)."""
    import pandas as pd

    from simfoe.calibration import silicon

    path = silicon.default_path()
    if path is None:
        raise SystemExit("error: ../shared/data is absent: pass --cases CSV (a validate --silicon --cases-out file)")
    _, cases = silicon.validate_silicon(path, workers=jobs, tolerances={})
    out = HERE / "cases.csv"
    pd.DataFrame(cases, columns=list(silicon.CASE_COLUMNS)).to_csv(out, index=False)
    return out


def _commit() -> str | None:
    """This checkout's commit (short hash, ``+changes`` when the tree differs from it), or None outside git."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD")
    return (rev + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")) or None


def load(cases: Path):
    """The cases CSV with ``backend``, ``mode`` and ``model`` split out of ``group``, the concurrency ``bin``
    and the signed errors (%)."""
    import pandas as pd

    df = pd.read_csv(cases)
    df["not_covered"] = df["not_covered"].fillna("")
    parts = df["group"].str.split("/")
    df["backend"] = parts.str[-2]
    df["mode"] = parts.str[-1]
    df["model"] = parts.str[1:-2].str.join("/")
    df["model / engine / mode"] = df["model"] + " / " + df["backend"] + " / " + df["mode"]
    df["covered"] = df["not_covered"] == ""
    df["complete"] = df["id"].isin(_complete_ids())
    df["bin"] = [conc_bin(c) if c == c else "" for c in df["concurrency"]]  # NaN: a disagg row without one
    for w in ("ttft", "tpot"):
        df[f"{w}_err"] = (df[f"predicted_{w}_ms"] / df[f"silicon_{w}_ms"] - 1) * 100
    return df


def _complete_ids() -> set:
    """Ids of the complete disaggregated rows of the H100 file (simfoe.calibration.silicon_disagg.complete;
    none without ../shared/data)."""
    from simfoe.calibration import silicon
    from simfoe.calibration.silicon_disagg import complete

    path = silicon.default_path()
    return set() if path is None else {r.id for r in silicon.load_rows(path).rows if complete(r)}


def stats(d) -> dict:
    """Covered rows' APE statistics (simfoe.calibration.silicon.ape_stats) and median signed errors (%)."""
    from simfoe.calibration.silicon import ape_stats

    c = d[d["covered"]]
    out = {"rows": len(d), "covered": len(c)}
    for w in ("ttft", "tpot"):
        out.update(ape_stats(c[f"predicted_{w}_ms"], c[f"silicon_{w}_ms"], w))
        out[f"{w}_bias"] = float(np.median(c[f"{w}_err"])) if len(c) else None
    return out


def _pct(x, d=1) -> str:
    return "-" if x is None else f"{x:.{d}f}%"


def _share(x) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def _parity(df, files: list) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(BACKENDS), figsize=(13, 8.5), squeeze=False)
    c = df[df["covered"]]
    for i, (w, label) in enumerate((("ttft", "mean TTFT (ms)"), ("tpot", "mean TPOT (ms)"))):
        for j, b in enumerate(BACKENDS):
            ax = axes[i][j]
            d = c[c["backend"] == b]
            for model, g in d.groupby("model"):
                ax.scatter(g[f"silicon_{w}_ms"], g[f"predicted_{w}_ms"], s=9, alpha=0.6, label=model.split("/")[-1])
            lo = max(min(c[f"silicon_{w}_ms"].min(), c[f"predicted_{w}_ms"].min()) / 1.5, 1e-3)
            hi = max(c[f"silicon_{w}_ms"].max(), c[f"predicted_{w}_ms"].max()) * 1.5
            xs = np.array([lo, hi])
            ax.plot(xs, xs, "k-", lw=0.8)
            ax.fill_between(xs, xs * 0.75, xs * 1.25, color="0.85", zorder=0, label="within 25%")
            ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel=f"measured {label}",
                   ylabel=f"simfoe {label}")
            s = stats(df[df["backend"] == b])
            ax.set_title(f"{b}: {s['covered']} rows, {w.upper()} MdAPE {_pct(s[f'{w}_mdape'])}", fontsize=9)
            if len(d):
                ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(HERE / "parity.png", dpi=80)
    files.append("parity.png")


def conc_bin(c: float) -> str:
    """The concurrency bin of ``c`` clients (CONC_BINS lower edges)."""
    lo = [b for b in CONC_BINS if b <= c][-1]
    nxt = [b for b in CONC_BINS if b > lo]
    return f"{lo}-{nxt[0] - 1}" if nxt else f"{lo}+"


def _by_concurrency(df, files: list) -> None:
    import matplotlib.pyplot as plt

    c = df[df["covered"]]
    labels = [conc_bin(b) for b in CONC_BINS]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), squeeze=False)
    for k, w in enumerate(("ttft", "tpot")):
        ax = axes[0][k]
        for b in BACKENDS:
            d = c[c["backend"] == b]
            ys = [np.median(np.abs(d[d["bin"] == lb][f"{w}_err"])) if (d["bin"] == lb).any() else np.nan
                  for lb in labels]
            ax.plot(labels, ys, "o-", label=b)
        ax.set(xlabel="client concurrency", ylabel=f"{w.upper()} median APE (%)", ylim=(0, None))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "error_by_concurrency.png", dpi=80)
    files.append("error_by_concurrency.png")


def plots(df) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[str] = []
    _parity(df, files)
    _by_concurrency(df, files)
    plt.close("all")
    return files


def _row(label: str, s: dict) -> str:
    """One line of the headline table: ``label``, rows predicted and the APE figures of ``s`` (:func:`stats`)."""
    return (f"| {label} | {s['covered']} of {s['rows']} | {_pct(s['ttft_mape'])} | {_pct(s['ttft_mdape'])} "
            f"| {_share(s['ttft_within_25pct'])} | {_pct(s['tpot_mape'])} | {_pct(s['tpot_mdape'])} "
            f"| {_share(s['tpot_within_25pct'])} |")


def _headline(df) -> list[str]:
    s = stats(df[df["mode"] == "agg"])
    dis = df[df["mode"] == "disagg"]
    return [
        "## simfoe and AIConfigurator on the H100 file", "",
        "| | rows predicted | TTFT MAPE | TTFT median APE | TTFT within 25% | TPOT MAPE | TPOT median APE "
        "| TPOT within 25% |", "|---|---|---|---|---|---|---|---|",
        _row("simfoe, aggregated rows", s)] + ([_row("simfoe, disaggregated rows", stats(dis))] if len(dis) else []) + (
        [_row("simfoe, complete disaggregated rows (recorded concurrency)", stats(dis[dis["complete"]]))]
        if dis["complete"].any() else []) + [
        f"| AIConfigurator 0.12.0 (data README), all rows | {AIC['predicted']} of {AIC['rows']} "
        f"| {_pct(AIC['ttft_mape'])} | {_pct(AIC['ttft_mdape'])} | not published | {_pct(AIC['tpot_mape'])} "
        f"| {_pct(AIC['tpot_mdape'])} | not published |", "",
        f"Median signed error of simfoe on the aggregated rows: TTFT {_pct(s['ttft_bias'])}, TPOT {_pct(s['tpot_bias'])} "
        "(negative: predicted too fast). The row sets differ: simfoe counts the file after dropping duplicates "
        "(coverage below); AIConfigurator's figures are over the 917 rows as published, of which it predicted 689 and "
        "no disaggregated row. Issue 23's bars for the H100 aggregated rows: TTFT median APE <= 15%, TPOT median "
        "APE <= 8%, coverage >= 90%; issue 24's for the complete disaggregated rows: TTFT median APE <= 25%, TPOT "
        "median APE <= 12% (docs/calibration.md, Disaggregated rows). The plots and the tables by engine and by "
        "concurrency are the aggregated rows'.",
        ""]


def _table(df, key: str, title: str, keys) -> list[str]:
    lines = [f"## {title}", "", f"| {key} | rows | covered | TTFT MAPE / median / within 25% / median signed "
             "| TPOT MAPE / median / within 25% / median signed |", "|---|---|---|---|---|"]
    for k in keys:
        s = stats(df[df[key] == k])
        if not s["rows"]:
            continue
        cells = [" / ".join([_pct(s[f"{w}_mape"]), _pct(s[f"{w}_mdape"]), _share(s[f"{w}_within_25pct"]),
                             _pct(s[f"{w}_bias"])]) for w in ("ttft", "tpot")]
        lines.append(f"| {k} | {s['rows']} | {s['covered']} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def _coverage(df) -> list[str]:
    nc = df[~df["covered"]].groupby(["mode", "not_covered"]).size().sort_values(ascending=False)
    return ["## Coverage", "", f"{int(df['covered'].sum())} of {len(df)} rows predicted. Not covered, by reason "
            "(simfoe.calibration.silicon; never an error):", "", "| mode | reason | rows |", "|---|---|---|"] + [
        f"| {mode} | {why} | {n} |" for (mode, why), n in nc.items()] + [""]


def render(df, cases: Path, files: list[str], took: str) -> str:
    agg = df[df["mode"] == "agg"]
    lines = ["# Real H100 serving benchmarks replayed by simfoe", "",
             f"Regenerate: `python reports/silicon/make_report.py` ({took}). Rows: `{cases.name}`, the "
             "`simfoe validate --silicon --cases-out` CSV (mean TTFT and TPOT in ms, one line per row). Data: NVIDIA "
             "AIConfigurator's H100 silicon rows (ai-dynamo/aiconfigurator, Apache-2.0; "
             "../shared/data/aiconfigurator/silicon/, its README defines a row). Predictions are the raw model "
             "(profiles and presets as committed; how a row becomes a run: docs/calibration.md, Serving benchmarks).",
             ""]
    lines += _headline(df)
    lines += ["## Parity (log-log, predicted vs measured, per engine; aggregated rows)", "", "![parity](parity.png)", ""]
    lines += _table(agg, "backend", "By engine (aggregated rows)", BACKENDS)
    lines += _table(df, "model / engine / mode", "By model, engine and mode", sorted(df["model / engine / mode"].unique()))
    lines += ["## Error by concurrency (aggregated rows)", "", "![error by concurrency](error_by_concurrency.png)", ""]
    lines += _table(agg, "bin", "By client concurrency (aggregated rows, all engines)", [conc_bin(b) for b in CONC_BINS])
    lines += _coverage(df)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, default=None, help="a validate --silicon --cases-out CSV to render "
                    "(default: replay the H100 file into reports/silicon/cases.csv first)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of the replay (default 2)")
    ap.add_argument("--label", default=None, help="what made the --cases CSV, e.g. the commit it was replayed at "
                    "(default: this checkout's commit when it replays)")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    cases = a.cases or replay(a.jobs)
    took = f"replay and render {time.perf_counter() - t:.0f} s" if a.cases is None else f"rendered from {a.cases.name}"
    label = a.label or (_commit() if a.cases is None else None)
    took += f"; predictions of {label}" if label else ""
    df = load(cases)
    files = plots(df[df["mode"] == "agg"])
    (HERE / "README.md").write_text(render(df, cases, files, took) + "\n")
    print(f"wrote {HERE / 'README.md'} and {', '.join(files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
