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
    from simfoe.outputs import check_dir

    store = ResultStore(args.out)
    if not store.has_results():
        raise SpecError("out", args.out, "a sweep folder holding results.parquet (run simfoe sweep --out DIR)")
    check_dir("out", args.out, files=("summary.md", "plots/plot.png"))
    try:
        df = store.read()
    except SpecError as e:  # a damaged file, named with what to do about it
        raise SpecError("out", e.value, e.allowed) from None
    except Exception as e:  # pyarrow raises its own types (ArrowInvalid, ...) for a corrupt file
        why = " ".join(str(e).split())[:120] or type(e).__name__
        raise SpecError("out", args.out, f"a sweep folder whose results.parquet and parts/ are readable "
                        f"parquet files ({why})") from None
    for col in ("status", "kind"):
        if col not in df.columns:
            raise SpecError("out", args.out, f"a sweep folder whose results table has a {col!r} column "
                            "(written by simfoe sweep)")
    name = Path(args.out).resolve().name
    meta = Path(args.out) / "sweep.json"
    if meta.is_file():
        import json

        try:
            name = json.loads(meta.read_text(encoding="utf-8")).get("name", name)
        except (ValueError, UnicodeDecodeError, AttributeError):
            pass  # a damaged sweep.json only loses the title
    plots = [str(p) for p in make_plots(df, Path(args.out) / "plots", formats)]
    summary = write_summary(df, args.out, spec_name=name)
    return {"out": args.out, "rows": int(len(df)), "plots": plots, "summary": str(summary)}


def render(r: dict) -> str:
    return f"{len(r['plots'])} plot files from {r['rows']} rows in {r['out']}/plots/; summary: {r['summary']}"
