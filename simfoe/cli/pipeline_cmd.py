"""`simfoe pipeline`: simulate an ALTO-style stage pipeline (stream vs batch, routing policies).

One run:   simfoe pipeline --spec factool --mode stream --rate 10 --duration 720 --json
Curves:    simfoe pipeline --spec factool --compare stream,batch --rates 1:30:1 --out out/
"""
from __future__ import annotations

from simfoe.cli.common import add_json_flag, add_limit_flag, add_progress_flag, table
from simfoe.limits import PIPELINE_REQUESTS
from simfoe.outputs import fmt_time
from simfoe.pipelines.routing import POLICIES as ROUTINGS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pipeline",
        help="simulate a compound AI pipeline (ALTO): stream vs batch hand-over, routing policies",
        description="Simulate a stage pipeline with Poisson arrivals. Latency in seconds, load in requests/s.",
    )
    p.add_argument("--spec", required=True, help="preset name (factool) or a pipeline YAML file")
    p.add_argument("--mode", default="stream", help="stream | batch (default stream)")
    p.add_argument("--routing", default=None, help=f"{' | '.join(ROUTINGS)} (default: the spec's routing)")
    p.add_argument("--rate", type=float, default=10.0, help="offered load, requests/s (default 10)")
    p.add_argument("--duration", type=float, default=720.0, help="arrival interval, s (default 720, as ALTO)")
    p.add_argument("--seed", type=int, default=0, help="random seed, an integer >= 0")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a spec key, e.g. stages.bm25.service_s.mean=0.003 (repeatable)")
    p.add_argument("--compare", default=None,
                   help="comma list of modes and/or routing policies to sweep, e.g. stream,batch or "
                        "hash-all,aggregation-aware,prompt-aware")
    p.add_argument("--rates", default=None,
                   help="rates for --compare: START:STOP:STEP or a comma list (default: --rate)")
    p.add_argument("--target", type=float, default=4.0, help="median latency target for --compare, s (default 4)")
    p.add_argument("--out", default=None, help="folder for --compare results (points.json, curves.png)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes for --compare (default 2)")
    add_limit_flag(p, PIPELINE_REQUESTS, "requests (--rate x --duration; with --compare, summed over all runs)")
    add_progress_flag(p, "a line per finished --compare point on stderr")
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


#: fields of the API's size checks -> the flags that set them
LIMIT_FLAGS = {"rate": "--rate", "rates": "--rates", "max_requests": "--max-requests"}


def run(args) -> dict:
    import math

    from simfoe.cli.common import check_seed, renamed_fields
    from simfoe.inputs import check_text_file
    from simfoe.errors import SpecError
    from simfoe.pipelines.api import load_pipeline, run_pipeline
    from simfoe.pipelines.engine import MODES

    check_seed(args.seed)
    check_text_file("--spec", args.spec)
    with renamed_fields({"spec": "--spec"}):
        spec = load_pipeline(args.spec, args.overrides)
    if args.mode not in MODES:
        raise SpecError("--mode", args.mode, "stream or batch")
    if args.routing is not None and args.routing not in ROUTINGS:
        raise SpecError("--routing", args.routing, f"one of {', '.join(ROUTINGS)}")
    if not (math.isfinite(args.duration) and args.duration > 0):
        raise SpecError("--duration", args.duration, "a finite duration > 0 s")
    if not (math.isfinite(args.rate) and args.rate > 0):
        raise SpecError("--rate", args.rate, "a finite rate > 0 requests/s")
    if args.compare is None:
        for flag, given in (("--rates", args.rates), ("--out", args.out), ("--jobs", args.jobs)):
            if given is not None:
                raise SpecError(flag, given, "only with --compare" + (" (a single run takes --rate)" if flag == "--rates" else ""))
        with renamed_fields(LIMIT_FLAGS):
            res = run_pipeline(spec, args.mode, args.rate, args.duration, args.seed, args.routing,
                               max_requests=args.max_requests, per_instance=True)
        return {**res, "run": _run(args, spec)}
    return _compare(args, spec)


def _compare(args, spec) -> dict:
    """``--compare``: every variant at every rate through :func:`simfoe.pipelines.api.compare`."""
    import math
    from pathlib import Path

    from simfoe.cli.common import renamed_fields, want_progress
    from simfoe.errors import SpecError
    from simfoe.outputs import AtomicFiles, check_dir
    from simfoe.pipelines.api import Variant, compare, plot_curves
    from simfoe.pipelines.engine import MODES
    from simfoe.pipelines.metrics import parse_rates

    items = [x.strip() for x in args.compare.split(",") if x.strip()]
    variants = []
    for x in items:
        if x in MODES:
            variants.append(Variant(x, args.routing))
        elif x in ROUTINGS:
            variants.append(Variant(args.mode, x))
        else:
            raise SpecError("--compare", x, f"modes ({', '.join(MODES)}) or routings ({', '.join(ROUTINGS)})")
    if len(variants) < 1:
        raise SpecError("--compare", args.compare, "at least one mode or routing")
    if not (math.isfinite(args.target) and args.target > 0):
        raise SpecError("--target", args.target, "a finite median latency target > 0 s")
    if args.jobs is not None and args.jobs < 1:
        raise SpecError("--jobs", args.jobs, "an integer >= 1 (worker processes)")
    rates = parse_rates(args.rates) if args.rates is not None else [args.rate]
    if args.out:
        check_dir("--out", args.out, files=("points.json", "curves.png"))
    given = ("--rates", args.rates) if args.rates is not None else ("--rate", args.rate)
    with renamed_fields({**LIMIT_FLAGS, "rates": given[0]}, {"rates": given[1]}):
        result = compare(spec, variants, rates, args.duration, args.seed, args.target, args.jobs, args.max_requests,
                         progress=_progress_line if want_progress(args) else None)
    result["run"] = _run(args, spec)
    if args.out:
        from simfoe.outputs import json_text

        out = Path(args.out)
        with AtomicFiles("--out") as w:  # both files or neither
            w.path(out / "points.json").write_text(json_text(result), encoding="utf-8")
            plot_curves(result["points"], w.path(out / "curves.png"), title=f"{spec.name}: latency vs achieved load",
                        target_s=args.target)
        result["files"] = [str(out / "points.json"), str(out / "curves.png")]
    return result


def _progress_line(d) -> None:
    """One stderr line per finished --compare point (a :class:`simfoe.pipelines.curves.PointDone`)."""
    import sys

    p = d.point
    lat = p["latency_s"]
    shown = (f"p50 {fmt_time(lat['p50'])}, p99 {fmt_time(lat['p99'])}" if lat["p50"] is not None else "none completed")
    flag = "" if p["valid_point"] else " (dropped: achieved < 80% of offered)"
    sys.stderr.write(f"pipeline {d.done}/{d.total}: {p['variant']} at {p['offered_rps']:g} req/s: achieved "
                     f"{p['achieved_rps']:.2f} req/s, {shown}{flag} [{d.wall_s:.1f} s]\n")
    sys.stderr.flush()


def _run(args, spec) -> dict:
    """The ``run`` provenance record (simfoe.provenance.pipeline_record) of this command."""
    from simfoe.cli.common import run_options
    from simfoe.provenance import pipeline_record

    return pipeline_record(spec, overrides=args.overrides, seed=args.seed, routing=args.routing or spec.routing,
                           options=run_options(args), argv=getattr(args, "argv", None)).to_dict()


def render(result: dict) -> str:
    if "points" in result:
        rows = [[p["variant"], f"{p['offered_rps']:g}", f"{p['achieved_rps']:.2f}", fmt_time(p["latency_s"]["p50"]),
                 fmt_time(p["latency_s"]["p99"]), "yes" if p["valid_point"] else "no"] for p in result["points"]]
        s = table(rows, ["variant", "offered", "achieved", "p50", "p99", "valid"])
        from simfoe.pipelines.metrics import load_at_target_text

        srows = [[v, load_at_target_text(x, result["target_s"]), fmt_time(x["p99_at_lowest_rate_s"])]
                 for v, x in result["summary"].items()]
        s += "\n\n" + table(srows, ["variant", f"max load at p50 <= {result['target_s']:g} s", "p99 at lowest rate"])
        dropped = [f"{v} at {', '.join(f'{r:g}' for r in x['dropped_rates_rps'])} req/s"
                   for v, x in result["summary"].items() if x["dropped_rates_rps"]]
        if dropped:
            s += ("\n\nleft off the curves (achieved < 80% of offered, or none completed): " + "; ".join(dropped))
        if result.get("files"):
            s += "\n\nwrote " + ", ".join(result["files"])
        return s
    lat = result["latency_s"]
    head = (f"{result['spec']} {result['mode']}/{result['routing']}: offered {result['offered_rps']:g} req/s, "
            f"achieved {result['achieved_rps']:.2f} req/s, {result['completed']} completed\n"
            f"latency mean {fmt_time(lat['mean'])}, p50 {fmt_time(lat['p50'])}, p90 {fmt_time(lat['p90'])}, "
            f"p99 {fmt_time(lat['p99'])}\n")
    rows = [[n, s["instances"], s["items_in"], f"{s['utilization_mean']:.2f}", f"{s['utilization_max']:.2f}",
             f"{s['mean_queue']:.2f}"] for n, s in result["stages"].items()]
    return head + table(rows, ["stage", "instances", "items", "util mean", "util max", "mean queue"])
