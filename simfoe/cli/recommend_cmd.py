"""`simfoe recommend`: search MoE/FoE layouts for the highest goodput under SLOs; HTML + JSON report."""
from __future__ import annotations

import sys

from simfoe.cli.closed_loop import CLOSED_LOOP_FLAGS, add_closed_loop_flags
from simfoe.cli.common import add_json_flag, add_limit_flag, add_set_flag, table
from simfoe.limits import PLANNER_LAYOUTS, SERVING_REQUESTS
from simfoe.outputs import fmt_time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "recommend",
        help="recommend a placement (MoE/FoE layout, nodes, GPU type, replicas) under latency SLOs",
        description="For every MoE layout (attention TP/DP, EP group, dispatch variant) and FoE layout "
        "(clusters x GPUs per cluster) on 1..--max-nodes nodes of each --hardware, find the highest request "
        "rate meeting the SLOs with the serving simulator (layouts that cannot fit or cannot win are pruned "
        "by cheap bounds first), rank by goodput per GPU (per dollar with --price) and write a self-contained "
        "HTML report plus a JSON summary. With a closed loop (--concurrency N --isl L --osl L) each layout is "
        "simulated once at N clients split over its replicas and ranked by output tokens/s per GPU. Times in "
        "seconds, rates in requests/s.",
    )
    p.add_argument("--model", required=True, help="model preset or YAML path")
    p.add_argument("--hardware", required=True, help="hardware preset(s), comma-separated (e.g. h100-sxm,a100-sxm)")
    p.add_argument("--max-nodes", type=int, default=1, help="largest deployment, nodes (default 1)")
    p.add_argument("--trace", default=None, help="workload: built-in name or trace file (default longbench; "
                   "or a closed loop: --concurrency, each layout probed once at that concurrency)")
    add_closed_loop_flags(p)
    p.add_argument("--slo-ttft-p90", type=float, default=None,
                   help="p90 time-to-first-token SLO, seconds (at least one of the two SLO flags is required)")
    p.add_argument("--slo-tbt-p99", type=float, default=None,
                   help="p99 time-between-tokens SLO, seconds (at least one of the two SLO flags is required)")
    p.add_argument("--price", action="append", default=[], metavar="HW=USD",
                   help="price per GPU-hour, e.g. h100-sxm=2.5 (repeatable or comma-separated); "
                   "with a price for every GPU type, layouts are ranked per dollar")
    p.add_argument("--routing", default="uniform", help="expert routing distribution (uniform, zipf:S, ...)")
    p.add_argument("--requests", type=int, default=None, help="requests per rate probe (default 240; not with --concurrency)")
    p.add_argument("--bisect-steps", type=int, default=None,
                   help="rate bisection steps after bracketing (default 4; not with --concurrency)")
    p.add_argument("--seed", type=int, default=0, help="random seed, an integer >= 0")
    p.add_argument("--no-sensitivity", action="store_true", help="skip the 2x load / skew / half-bandwidth runs")
    p.add_argument("--disagg", action="store_true",
                   help="also search prefill-decode disaggregated deployments (xPyD, each pool's layout, MTP on/off "
                   "where the model has an MTP module) and show the Pareto front of tokens/s per GPU against "
                   "tokens/s per user; needs --concurrency")
    p.add_argument("--engine", default=None,
                   help="print the winner's launch command for this engine (vllm, sglang, trtllm, or a profile YAML "
                   "with a launch template); it shapes only the command, not the simulated scheduler "
                   "(default: no launch command)")
    add_limit_flag(p, PLANNER_LAYOUTS, "candidate layouts (an upper bound: --hardware types x --max-nodes x "
                   "layouts per node count)")
    add_limit_flag(p, SERVING_REQUESTS, "requests in one rate probe (--requests x up to --max-nodes replicas)")
    p.add_argument("--out", default=None, help="HTML report path (the JSON summary is written beside it)")
    add_set_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def _prices(items: list[str]) -> dict:
    from simfoe.errors import SpecError

    out = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            k, sep, v = part.partition("=")
            try:
                out[k.strip()] = float(v)
            except ValueError:
                raise SpecError("--price", part, "HW=USD per GPU-hour, e.g. h100-sxm=2.5") from None
            if not sep:
                raise SpecError("--price", part, "HW=USD per GPU-hour, e.g. h100-sxm=2.5")
    return out


def run(args) -> dict:
    from simfoe.cli.common import check_seed, renamed_fields
    from simfoe.inputs import check_routing_file, check_text_file
    from simfoe.errors import SpecError
    from simfoe.outputs import check_file
    from simfoe.planner import recommend
    from simfoe.specs.io import check_override_roots

    check_seed(args.seed)
    check_override_roots(args.overrides)
    check_text_file("--model", args.model)
    for hw in str(args.hardware).split(","):
        if hw.strip():
            check_text_file("--hardware", hw.strip())
    if args.trace is not None:
        check_text_file("--trace", args.trace)
    check_routing_file(args.routing)
    work, search = _workload(args), _rate_search(args)
    if args.out:
        out = check_file("--out", args.out)
        jp = out.with_suffix(".json")
        if jp == out:
            raise SpecError("--out", args.out, "an HTML report path, e.g. reports/NAME.html (the JSON summary "
                            "is written beside it as NAME.json)")
        if jp.is_dir():
            raise SpecError("--out", args.out, f"a report path whose JSON summary can be written beside it "
                            f"({jp} is a folder)")
    progress = None
    if sys.stderr.isatty() and not args.json:
        def progress(line):
            sys.stderr.write(line + "\n")
    with renamed_fields({"max_layouts": "--max-layouts", "max_requests": "--max-requests", "engine": "--engine"}):
        r = recommend(args.model, args.hardware, max_nodes=args.max_nodes, trace=work,
                      slo_ttft_p90=args.slo_ttft_p90, slo_tbt_p99=args.slo_tbt_p99, prices=_prices(args.price) or None,
                      routing=args.routing, seed=args.seed, **search,
                      overrides=tuple(args.overrides), sensitivity=not args.no_sensitivity, progress=progress,
                      max_layouts=args.max_layouts, max_requests=args.max_requests, disagg=args.disagg,
                      engine=args.engine)
    r["run"] = _run(args, r["hardware"])
    if args.out:
        from simfoe.planner.report import write_report

        write_report(r, args.out)
    return r


def _workload(args):
    """The --trace (default longbench) or the :class:`ClosedLoop` of the --concurrency flags; mixing
    the two kinds exits 2 naming the flag."""
    from simfoe.cli.common import renamed_fields
    from simfoe.workloads.closed_loop import select_workload

    trace = args.trace if args.trace is not None or args.concurrency is not None else "longbench"
    with renamed_fields({**CLOSED_LOOP_FLAGS, "trace": "--trace"}):
        return select_workload(trace, **{f: getattr(args, f) for f in CLOSED_LOOP_FLAGS})


def _rate_search(args) -> dict:
    """The rate-search settings given (--requests, --bisect-steps) as PlanConfig fields; refused with a
    closed loop, which probes each layout once at its concurrency."""
    from simfoe.errors import SpecError

    search = {k: v for k, v in (("requests", args.requests), ("bisect_steps", args.bisect_steps)) if v is not None}
    if args.concurrency is not None and search:
        k = next(iter(search))
        raise SpecError("--" + k.replace("_", "-"), search[k], "omitted with --concurrency (a closed loop probes "
                        "each layout once, at its concurrency: there is no rate search)")
    return search


def _run(args, hardware: list[str]) -> dict:
    """The ``run`` provenance record: the model and every searched hardware spec as resolved (--set applied)."""
    from simfoe.cli.common import command_run
    from simfoe.specs.io import load_hardware, load_model

    overrides = list(args.overrides)
    return command_run(args, load_model(args.model, overrides), [load_hardware(h, overrides) for h in hardware])


def render(r: dict) -> str:
    from simfoe.planner.report import is_closed_loop, missed_words, pruned_words, workload_words

    s = r["search"]
    closed = is_closed_loop(r)
    lines = [f"{r['model']} on {', '.join(r['hardware'])}, up to {r['max_nodes']} node(s); workload {workload_words(r)}"]
    rec = r.get("recommended")
    if rec:
        lines.append(f"recommended: {rec['label']}  {_headline(rec, closed)}")
        if r.get("runner_up"):
            lines.append(f"runner-up:   {r['runner_up']['label']}  {_headline(r['runner_up'], closed)}")
    else:
        lines.append("no layout meets the SLOs")
    if closed:
        lines += _closed_table(r)
    per_dollar = r["rank_key"] == "requests_per_dollar"
    rows = [] if closed else [[x["label"], x["status"], f"{x['max_rate_rps_per_replica']:.3g}", f"{x['goodput_rps_per_gpu']:.3g}"]
            + ([f"{x['requests_per_dollar']:.0f}"] if per_dollar else [])
            + [fmt_time((x.get("at_max_rate") or {}).get("ttft_p90_s")), fmt_time((x.get("at_max_rate") or {}).get("tbt_p99_s"))]
            for x in r["layouts"]]
    if rows:
        head = ["layout", "status", "rate/replica", "per GPU"] + (["req per $"] if per_dollar else []) + ["p90 TTFT", "p99 TBT"]
        lines += ["", table(rows, head)]
    lines.append("")
    lines.append(f"{s['candidates']} layouts: {s['simulated']} simulated ({s['probes']} probes{missed_words(s, r)}), "
                 f"{pruned_words(s)}, {s['skipped_placements']} invalid placements; search {s['wall_s']:.1f} s")
    if r.get("why"):
        lines.append(r["why"])
    if r.get("launch"):
        lines += launch_lines("launch", r["launch"])
    if r.get("disagg"):
        lines += _disagg_lines(r["disagg"])
    if "files" in r:
        lines.append(f"report: {r['files']['html']}  summary: {r['files']['json']}")
    return "\n".join(lines)


def launch_lines(title: str, launch: dict) -> list[str]:
    """A launch block: ``title (engine version):``, each command, then its notes."""
    return (["", f"{title} ({launch['engine']} {launch['version']}):"] + [f"  {c}" for c in launch["commands"]]
            + [f"  note: {n}" for n in launch["notes"]])


def _disagg_lines(d: dict) -> list[str]:
    """The disaggregated search in a few lines: the best of both modes, the Pareto front, the counts."""
    from simfoe.planner.report import disagg_words

    s = d["search"]
    rows = [[e["label"], e["mode"], f"{e['output_tokens_per_s_per_gpu']:.4g}", f"{e['tokens_per_s_per_user'] or 0:.4g}"]
            for e in d["deployments"] if e["pareto"]]
    out = ["", disagg_words(d)]
    if rows:
        out += ["Pareto front (tokens/s per GPU against tokens/s per user):",
                table(rows, ["deployment", "mode", "out tok/s per GPU", "tok/s per user"])]
    best = next((e for e in d["layouts"] if e.get("launch")), None)
    if best is not None:
        for role in ("prefill", "decode"):
            out += launch_lines(f"{best['label']}: {role} pool launch", best["launch"][role])
    out.append(f"disaggregated: {s['candidates']} deployments, {s['simulated']} simulated, {s['pruned']} pruned; "
               f"{s['wall_s']:.1f} s")
    return out


def _headline(x: dict, closed: bool) -> str:
    """A layout's ranked figure: goodput (open loop) or output tokens/s at the concurrency (closed loop)."""
    if closed:
        return (f"output {x['output_tokens_per_s']:,.0f} tokens/s ({x['output_tokens_per_s_per_gpu']:,.0f} per GPU), "
                f"{x['goodput_rps']:.3g} req/s")
    return f"goodput {x['goodput_rps']:.3g} req/s ({x['goodput_rps_per_gpu']:.3g} per GPU)"


def _closed_table(r: dict) -> list[str]:
    """The feasible layouts of a closed-loop search: output tokens/s per GPU (per $) and the SLO metrics."""
    per_dollar = r["rank_key"] == "output_tokens_per_dollar"
    rows = [[x["label"], x["status"], f"{x['output_tokens_per_s_per_gpu']:.4g}"]
            + ([f"{x['output_tokens_per_dollar']:.0f}"] if per_dollar else [])
            + [fmt_time((x.get("at_max_rate") or {}).get("ttft_p90_s")), fmt_time((x.get("at_max_rate") or {}).get("tbt_p99_s"))]
            for x in r["layouts"]]
    if not rows:
        return []
    head = ["layout", "status", "out tok/s per GPU"] + (["out tok per $"] if per_dollar else []) + ["p90 TTFT", "p99 TBT"]
    return ["", table(rows, head)]
