"""Calibration report: ``python -m simfoe.calibration.report [--out reports/calibration] [--testbed]``.

Writes README.md (error tables per source and op, testbed results), parity_<source>.png (predicted vs
measured, log-log); `simfoe validate --cases-out FILE.csv` gives the rows. ``--testbed`` re-runs the testbed first (else the stored
reports/calibration/testbed-<profile>.json runs are used, one per machine kind, predicted with today's model).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from simfoe.outputs import json_text
from simfoe.paths import REPO_ROOT

OUT = REPO_ROOT / "reports" / "calibration"


def _parity(rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.array([r["measured_s"] for r in rows])
    p = np.array([r["predicted_s"] for r in rows])
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ops = sorted({r["op"].split(":")[0] for r in rows})
    for op in ops:
        sel = np.array([r["op"].split(":")[0] == op for r in rows])
        ax.scatter(m[sel], p[sel], s=6 if len(rows) > 200 else 18, alpha=0.5, label=op)
    lo, hi = min(m.min(), p.min()) / 1.5, max(m.max(), p.max()) * 1.5
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    for f in (0.8, 1.2):
        ax.plot([lo, hi], [lo * f, hi * f], "k:", lw=0.6)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured (s)", ylabel="predicted (s)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def generate(out: Path = OUT, rerun_testbed: bool = False) -> Path:
    """Write ``out``/README.md (the calibration report) and its parity plots; returns the README's path."""
    import pandas as pd

    from simfoe.calibration import regression, testbed

    out.mkdir(parents=True, exist_ok=True)
    if rerun_testbed:
        tb = testbed.run(breakdown=3)
        regression.testbed_result_path(tb["hardware"], out).write_text(json_text(tb), encoding="utf-8")
    r = regression.validate()
    rows = r.pop("rows")
    df = pd.DataFrame(rows)
    df["ape"] = (df.predicted_s / df.measured_s - 1).abs() * 100
    lines = _source_lines(r["by_source"]) + _op_lines(df) + _fit_lines()
    for tbp in regression.testbed_results(out):
        lines += _testbed_lines(tbp)
    lines += ["", "## Parity plots", ""]
    for s in sorted(df.source.unique()):
        fn = "parity_" + s.replace(":", "_").replace("/", "_") + ".png"
        _parity([x for x in rows if x["source"] == s], out / fn, s)
        lines.append(f"![{s}]({fn})")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return out / "README.md"


def _source_lines(by_source: dict) -> list[str]:
    """The report's head and its table of error by source, against each source's tolerance."""
    lines = ["# Calibration report", "", "Regenerate: `python -m simfoe.calibration.report` (add `--testbed` to re-measure "
             "the testbed). Method: docs/calibration.md. APE = |predicted/measured - 1|; bias = geometric-mean ratio - 1.", "",
             "## By source (simfoe validate)", "",
             "| source | rows | MAPE % | max APE % | bias % | tolerance | ok |", "|---|---|---|---|---|---|---|"]
    for s, v in by_source.items():
        tol = ", ".join(f"{k} <= {x}" for k, x in (v.get("tolerance") or {}).items()) or "-"
        lines.append(f"| {s} | {v['n']} | {v['mape']:.2f} | {v['max_ape']:.2f} | {v['bias_pct']:+.1f} | {tol} "
                     f"| {'yes' if v['ok'] else 'NO'} |")
    return lines


def _op_lines(df) -> list[str]:
    """The table of error by source and op (``df``: validate's rows with their APE, %)."""
    lines = ["", "## By source and op", "", "| source | op | rows | MAPE % | max APE % |", "|---|---|---|---|---|"]
    for (s, op), g in df.groupby(["source", "op"]):
        lines.append(f"| {s} | {op} | {len(g)} | {g.ape.mean():.2f} | {g.ape.max():.2f} |")
    return lines


def _fit_lines() -> list[str]:
    """Each measurement set's fit residuals (fitted and held-out parts), then, for a GPU set, the published
    profile against its refit on the same rows."""
    from simfoe.calibration import regression
    from simfoe.calibration.fit_profile import fit_set

    lines = ["", "## Profile fit residuals (rows each part was fitted to; held-out = never fitted)", "",
             "| part | rows | MAPE % | max APE % |", "|---|---|---|---|"]
    gpu_reports = []
    for set_name, spec in sorted((regression.load_tolerances().get("measurement_sets") or {}).items()):
        _, _, rep = fit_set(regression.DATA_DIR / set_name, spec["hardware"])
        for part in ("kernels", "held_out"):
            for k, v in rep[part].items():
                lines.append(f"| {set_name} {part}: {k} | {v['rows']} | {v['mape_pct']} | {v['max_ape_pct']} |")
        for k, v in (rep.get("collectives") or {}).get("residuals", {}).items():
            lines.append(f"| {set_name} collectives: {k} | {v['rows']} | {v['mape_pct']} | {v['max_ape_pct']} |")
        if "base" in rep:
            gpu_reports.append((set_name, spec["hardware"], rep))
    for set_name, prof, rep in gpu_reports:
        lines += ["", f"## {rep['device_name']}: published {rep['base']} vs measured ({set_name})", "",
                  f"The same rows predicted by the published profile ({rep['base']}: kernels fitted to the Vidur data) and "
                  f"by {prof} (its kernel families refitted to this set; simfoe calibrate --from).", "",
                  f"| part | rows | {rep['base']} MAPE % | max % | {prof} MAPE % | max % |", "|---|---|---|---|---|---|"]
        for part in ("kernels", "held_out"):
            for k, v in rep[part].items():
                b = rep["base_on_set"].get(k, {"mape_pct": "-", "max_ape_pct": "-"})  # "-": a refit's cross-check
                lines.append(f"| {part}: {k} | {v['rows']} | {b['mape_pct']} | {b['max_ape_pct']} | {v['mape_pct']} | "
                             f"{v['max_ape_pct']} |")
    return lines


def _testbed_lines(tbp: Path) -> list[str]:
    """One stored testbed run: its cases (ms), MoE/FoE speed-ups and errors, predicted with today's model and
    profile, and where the time goes when it was measured with --breakdown."""
    from simfoe.calibration import regression

    stored = json.loads(tbp.read_text())
    tb = {**stored, **regression.testbed_source(tbp)[1]}
    env = stored.get("env", {})
    lines = ["", f"## Testbed on {tb['hardware']} (real MoE / FoE forward passes, 2 gloo processes, fp32)", "",
             f"Model validation/models/testbed-moe.yaml on {tb['hardware']}; measured = {tb['measure']}; "
             f"load average {env.get('loadavg_start')} -> {env.get('loadavg_end')}; {env.get('date_utc')}.", "",
             "| arch | phase | batch | seq_len | measured (ms) | wall median (ms) | predicted (ms) | APE % |",
             "|---|---|---|---|---|---|---|---|"]
    for c in tb["cases"]:
        lines.append(f"| {c['arch']} | {c['phase']} | {c['batch']} | {c['seq_len']} | {c['measured_s'] * 1e3:.1f} | "
                     f"{c['measured_wall_s'] * 1e3:.1f} | {c['predicted_s'] * 1e3:.1f} | {c['ape_pct']:.1f} |")
    lines += ["", "| phase | batch | measured MoE/FoE | predicted MoE/FoE | speedup error % |", "|---|---|---|---|---|"]
    for s in tb["speedups"]:
        lines.append(f"| {s['phase']} | {s['batch']} | {s['measured_ratio']:.3f} | {s['predicted_ratio']:.3f} "
                     f"| {100 * s['error']:.1f} |")
    lines += ["", f"Testbed MAPE {tb['mape']:.1f}% (max {tb['max_ape']:.1f}%), speedup error {100 * tb['speedup_error']:.1f}% "
              f"(max {100 * tb['speedup_error_max']:.1f}%)."
              + (f" Host speed {tb['host_speed']:.2f} (probe GEMM: profile prediction / measured)." if tb.get("host_speed") else "")
              + (" Predicted with the testbed's per-layer expert choice counts as routing." if all(
                  c.get("expert_counts") for c in tb["cases"])
                 else " Predicted with uniform routing (stored run without routing counts).")]
    return lines + _breakdown_lines([c for c in tb["cases"] if c.get("breakdown")])


def _breakdown_lines(with_bd: list[dict]) -> list[str]:
    """The testbed's measured vs predicted time per category (ms; none without breakdown passes)."""
    from simfoe.forward.simulate import CATEGORIES

    if not with_bd:
        return []
    cats = [k for k in CATEGORIES if any(k in c["breakdown"]["measured_cpu_s"] for c in with_bd)]
    lines = ["", "Where the time goes (`simfoe testbed --breakdown N`): process CPU time per category in "
             "section-timed passes after the timed ones (median over passes, largest over ranks) vs the "
             "prediction's critical path, ms measured / predicted (error %).", "",
             "| arch | phase | batch | " + " | ".join(cats) + " |", "|---|---|---|" + "---|" * len(cats)]
    for c in with_bd:
        bd = c["breakdown"]
        cells = []
        for k in cats:
            m, p = bd["measured_cpu_s"].get(k), bd["predicted_s"].get(k, 0.0)
            cells.append("-" if not m else f"{m * 1e3:.1f} / {p * 1e3:.1f} ({100 * (p / m - 1):+.0f})")
        lines.append(f"| {c['arch']} | {c['phase']} | {c['batch']} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m simfoe.calibration.report", description=__doc__)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--testbed", action="store_true", help="re-run the testbed (~1 min) before writing")
    a = p.parse_args(argv)
    print(generate(Path(a.out), a.testbed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
