"""`simfoe sweep`: run a scenario sweep (forward, serve or pipeline) locally or on Ray.

    simfoe sweep                                  # embedded demo: MoE vs FoE on H100, 1-4 nodes
    simfoe sweep examples/moe_vs_foe.yaml --out out/
    simfoe sweep big.yaml --executor ray --address auto
    simfoe sweep big.yaml --out out/ --resume     # after Ctrl-C, a crash or a killed machine
"""
from __future__ import annotations

from simfoe.cli.common import add_json_flag, add_progress_flag, want_progress
from simfoe.outputs import fmt_time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="run many scenarios from a sweep YAML (local pool or Ray), store results, plot",
        description="Run a sweep spec (kind, base, grid/zip/samples, metrics; see docs/sweep.md). Without a "
        "spec, runs the embedded MoE-vs-FoE demo. Rows go to OUT/results.parquet as scenarios finish; "
        "plots to OUT/plots/, a summary to OUT/summary.md. Exit status: 0 when at least one scenario "
        "ran ok (failed scenarios are stored with their error), 1 when every scenario that ran failed, "
        "2 on bad input (checked before anything runs).")
    p.add_argument("spec", nargs="?", default=None, help="sweep YAML (default: the embedded MoE vs FoE demo)")
    p.add_argument("--out", default="simfoe-out", help="output folder (default: ./simfoe-out)")
    p.add_argument("--executor", default="local", help="local (process pool) | ray")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: CPU count)")
    p.add_argument("--address", default=None, help="Ray cluster address, e.g. auto or ray://host:10001 "
                   "(default: start a local Ray instance)")
    p.add_argument("--resume", action="store_true", help="skip scenarios already stored in OUT")
    p.add_argument("--retry-failed", action="store_true", help="with --resume: run failed scenarios again")
    p.add_argument("--overwrite", action="store_true", help="delete results already in OUT and start over")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, count scenarios and estimate the time (times a few probe scenarios)")
    p.add_argument("--probes", type=int, default=None, help="with --dry-run: scenarios timed (default 4)")
    p.add_argument("--chunk-size", type=int, default=None, help="scenarios per task (default: automatic)")
    p.add_argument("--max-retries", type=int, default=None,
                   help="with --executor ray: retries of a task whose worker died (default 3)")
    p.add_argument("--no-plots", action="store_true", help="skip plots and summary")
    p.add_argument("--csv", action="store_true", help="also write OUT/results.csv (the results table as CSV; "
                   "rewritten with results.parquet at the end of every later run into OUT)")
    add_progress_flag(p, "a progress bar on stderr")
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def run(args) -> dict:
    from simfoe.inputs import check_text_file
    from simfoe.outputs import check_dir
    from simfoe.sweep.runner import run_sweep
    from simfoe.sweep.spec import load_sweep_spec

    if args.spec is not None:
        check_text_file("spec", args.spec)
    spec = load_sweep_spec(args.spec)
    files = ("results.parquet", "sweep.json", "sweep.yaml", "parts/part.parquet") + (("results.csv",) if args.csv else ())
    if not args.no_plots:
        files += ("summary.md", "plots/plot.png")
    check_dir("--out", args.out, files=files)
    progress = want_progress(args)
    r = run_sweep(spec, args.out, executor=args.executor, workers=args.workers, address=args.address,
                  resume=args.resume, overwrite=args.overwrite, retry_failed=args.retry_failed,
                  chunk_size=args.chunk_size, max_retries=args.max_retries, dry_run=args.dry_run,
                  probes=args.probes, progress=progress, plots=not args.no_plots, csv=args.csv,
                  argv=getattr(args, "argv", None))
    if not args.dry_run and r.get("ran") and not r.get("ok"):
        return r, 1  # every scenario that ran failed (the errors are in the results table)
    return r


def render(r: dict) -> str:
    src = "embedded demo" if r["spec"] == "<default>" else r["spec"]
    if r.get("dry_run"):
        lines = [f"{r['name']} ({r['kind']}, {src}): {r['scenarios']} scenarios, "
                 f"{r['already_done']} already stored, {r['to_run']} to run"]
        if r.get("estimate_s") is not None:
            lines.append(f"estimate: {fmt_time(r['estimate_s'])} on {r['workers']} {r['executor']} workers "
                         f"({fmt_time(r['per_scenario_s'])} per scenario from {r['probes']} probes, "
                         f"{fmt_time(r['startup_s'])} start-up)")
        return "\n".join(lines)
    if r.get("up_to_date"):
        return (f"{r['name']} ({r['kind']}, {src}): up to date: {r['already_done']} of {r['scenarios']} scenarios "
                f"already stored in {r['out']} ({r['rows']} rows), nothing to run"
                + (f" ({r['stored_failed']} failed: --resume --retry-failed reruns them)" if r["stored_failed"] else "")
                + f"; --overwrite starts over, simfoe plot {r['out']} redraws plots and summary")
    rate = f", {r['scenarios_per_s']:.1f} scenarios/s" if r.get("scenarios_per_s") else ""
    lines = [f"{r['name']} ({r['kind']}, {src}): ran {r['ran']} of {r['scenarios']} scenarios "
             f"({r['ok']} ok, {r['failed']} failed; {r['already_done']} already stored) "
             f"in {fmt_time(r['wall_s'])}{rate}",
             f"results: {r['results']} ({r['rows']} rows)"]
    if r.get("plots"):
        lines.append(f"plots:   {len(r['plots'])} files in {r['out']}/plots/")
    if r.get("summary"):
        lines.append(f"summary: {r['summary']}")
    if r.get("csv"):
        lines.append(f"csv:     {r['csv']}")
    return "\n".join(lines)
