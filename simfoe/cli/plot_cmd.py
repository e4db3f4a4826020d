"""`simfoe plot OUT`: re-draw a sweep's plots and summary from its stored results."""
from __future__ import annotations

from simfoe.cli.common import add_json_flag

FORMATS = ("png", "svg", "pdf")


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help="re-draw plots and summary of a sweep folder from results.parquet",
                              description="Reads OUT/results.parquet (and uncompacted parts), writes "
                              "OUT/plots/*.png|svg and OUT/summary.md.")
    p.add_argument("out", help="sweep output folder (holds results.parquet)")
    p.add_argument("--format", default="png,svg", help="comma list of png, svg, pdf (default png,svg)")
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def run(args) -> dict:
    from pathlib import Path

    from simfoe.errors import SpecError
    from simfoe.sweep.plots import make_plots
    from simfoe.sweep.store import ResultStore
    from simfoe.sweep.summary import write_summary

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise SpecError("--format", args.format, "a comma list of " + ", ".join(FORMATS))
    store = ResultStore(args.out)
    if not store.has_results():
        raise SpecError("out", args.out, "a sweep folder holding results.parquet (run simfoe sweep --out DIR)")
    df = store.read()
    name = Path(args.out).resolve().name
    meta = Path(args.out) / "sweep.json"
    if meta.is_file():
        import json

        name = json.loads(meta.read_text()).get("name", name)
    plots = [str(p) for p in make_plots(df, Path(args.out) / "plots", formats)]
    summary = write_summary(df, args.out, spec_name=name)
    return {"out": args.out, "rows": int(len(df)), "plots": plots, "summary": str(summary)}


def render(r: dict) -> str:
    return f"{len(r['plots'])} plot files from {r['rows']} rows in {r['out']}/plots/; summary: {r['summary']}"
