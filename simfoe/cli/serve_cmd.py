"""`simfoe serve`: request-level serving simulation (continuous batching on MoE or FoE replicas)."""
from __future__ import annotations

from simfoe.cli.closed_loop import CLOSED_LOOP_FLAGS, add_closed_loop_flags, workload_of
from simfoe.cli.serve_disagg import add_disagg_flags, render_disagg, run_disagg
from simfoe.cli.common import (add_json_flag, add_limit_flag, add_progress_flag, add_set_flag, run_lines, table,
                               want_progress)
from simfoe.limits import INSTANCE_GPUS, SERVING_REQUESTS
from simfoe.outputs import fmt_time
from simfoe.paths import hardware_presets


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="simulate serving a request trace (TTFT, TBT, throughput, goodput)",
        description="Serve a trace on --replicas copies of one model instance spanning --nodes nodes, with "
        "vLLM-like continuous batching (chunked prefill, paged KV cache, recompute preemption). "
        "Iteration times come from the forward model. Times in seconds.",
    )
    _add_instance_flags(p)
    _add_workload_flags(p)
    _add_engine_flags(p)
    _add_run_flags(p)
    p.set_defaults(func=run, render=render)


def _add_instance_flags(p) -> None:
    """What one model instance is: model, hardware, nodes, layout."""
    p.add_argument("--model", required=True, help="model preset or YAML path")
    p.add_argument("--hardware", required=True, help="hardware profile: " + ", ".join(hardware_presets()) + ", or a YAML path")
    p.add_argument("--nodes", type=int, default=None, help="nodes per model instance (default 1)")
    p.add_argument("--arch", default=None, choices=["moe", "foe"],
                   help="MoE (expert parallel) or FoE layout (required unless --disagg)")


def _add_workload_flags(p) -> None:
    """Where the requests come from: a trace shaped by rate, duration and arrivals, or a closed loop."""
    p.add_argument("--trace", default=None,
                   help="trace file (Azure/Mooncake/ShareGPT/simfoe csv) or built-in name: longbench, "
                   "azure-conv, azure-code, sharegpt, mooncake-conv, multi-turn[:KEY=VALUE,...], ... (or a closed "
                   "loop: --concurrency)")
    p.add_argument("--rate", type=float, default=None, help="arrival rate, requests/s (default: trace timestamps)")
    p.add_argument("--duration", type=float, default=None,
                   help="keep arrivals in [0, S) seconds (default: the whole trace)")
    p.add_argument("--arrival", default=None, help="trace | poisson | gamma:CV (default poisson when --rate)")
    add_closed_loop_flags(p)


def _add_engine_flags(p) -> None:
    """The engine's knobs: replicas and routers, profile, scheduler, budgets, KV blocks, MTP, prefix cache."""
    p.add_argument("--replicas", type=int, default=1, help="data-parallel copies of the instance (default 1)")
    p.add_argument("--router", default="round-robin", help="replica router: round-robin | least-outstanding (fewest waiting + running "
                   "requests) | vllm-lb (fewest 4 x waiting + running) | cache-aware (longest cached prefix, "
                   "with --prefix-cache)")
    p.add_argument("--engine", default=None,
                   help="engine profile: vllm | sglang | trtllm (simfoe/specs/engines/*.yaml, or a YAML path): that "
                   "version's scheduling order, token budget, running requests and fitted per-request and "
                   "per-iteration overheads (default: none, the knobs below and no overheads)")
    p.add_argument("--scheduler", default=None,
                   help="batching policy: chunked | whole-prompt | prefill-first (default chunked, or the --engine's)")
    p.add_argument("--routing", default="uniform", help="expert routing distribution (uniform, zipf:S, ...)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="max running sequences per DP attention rank (see --budget-scope; default 256, or the --engine's)")
    p.add_argument("--token-budget", type=int, default=None,
                   help="max tokens per iteration and DP attention rank (see --budget-scope; default 8192, or the "
                   "--engine's)")
    p.add_argument("--budget-scope", choices=["rank", "instance"], default="rank",
                   help="rank (default): every data-parallel attention rank of an instance (an MoE layout "
                   "with DP attention: one per GPU; with TP attention: one per node; FoE: one) has its own "
                   "queue, --max-batch, --token-budget and share of the KV cache, as in vLLM and SGLang, and "
                   "an iteration waits for its busiest rank; instance: one queue, one budget and one KV pool "
                   "for the whole instance")
    p.add_argument("--rank-router", default="vllm-lb",
                   help="which DP attention rank an arriving request is pinned to (--budget-scope rank): "
                   "vllm-lb (default: fewest 4 x waiting + running requests, vLLM v1's DP load balancer score) | "
                   "least-outstanding (fewest waiting + running) | round-robin (SGLang's default) | cache-aware "
                   "(longest cached prefix, with --prefix-cache)")
    p.add_argument("--block-size", type=int, default=16, help="KV-cache block size, tokens (default 16)")
    p.add_argument("--mtp", type=int, default=0, metavar="K",
                   help="multi-token prediction: K draft tokens per decode step from the model's MTP module "
                   "(model.mtp_layers; deepseek-v3 has one), verified in one pass of K+1 tokens per sequence "
                   "(default 0: off)")
    p.add_argument("--mtp-acceptance", default=None, metavar="A1,A2,...",
                   help="acceptance rate of each draft position given the previous ones were accepted, or one rate "
                   "for all (default with --mtp 1: 0.85, DeepSeek-V3's published 85-90%%)")
    p.add_argument("--prefix-cache", action="store_true",
                   help="prefix caching: one LRU block cache per KV pool (instance or DP attention rank) inside the "
                   "KV memory; hits skip prefill compute. Needs requests with prefix block ids: a Mooncake trace "
                   "(hash_ids) or --trace multi-turn")


def _add_run_flags(p) -> None:
    """SLOs, horizon, seed, outputs, limits and the common flags (progress, disaggregation, --set, --json)."""
    p.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO for goodput, seconds (default: none)")
    p.add_argument("--slo-tbt", type=float, default=None,
                   help="per-request mean TBT SLO for goodput, seconds (default: none)")
    p.add_argument("--horizon", type=float, default=None,
                   help="stop at this simulated time, seconds; unfinished requests are reported dropped "
                   "(default: run until every request is done)")
    p.add_argument("--seed", type=int, default=0, help="random seed, an integer >= 0")
    p.add_argument("--skip-bad-rows", action="store_true", help="drop malformed trace rows instead of failing")
    p.add_argument("--out", default=None, help="folder for requests.parquet and summary.json (written together, "
                   "after the run; the folder is checked before it)")
    p.add_argument("--csv", action="store_true", help="with --out: also write requests.csv (the same table as "
                   "requests.parquet, as CSV)")
    p.add_argument("--timeline", metavar="FILE.json", default=None,
                   help="write a Chrome/Perfetto trace: one event per engine iteration and replica")
    add_limit_flag(p, SERVING_REQUESTS, "requests (--rate x --duration, or the trace's rows)")
    add_limit_flag(p, INSTANCE_GPUS, "GPUs in one instance (--nodes x GPUs per node)")
    add_progress_flag(p)
    add_disagg_flags(p)
    add_set_flag(p)
    add_json_flag(p)


#: internal field names of serving errors -> the serve flags
FLAGS = {"engine": "--engine", "rate": "--rate", "duration": "--duration", "trace": "--trace", "arrival": "--arrival", "cv": "--arrival",
         "horizon_s": "--horizon", "max_batch": "--max-batch", "token_budget": "--token-budget",
         "block_size": "--block-size", "slo_ttft": "--slo-ttft", "slo_tbt": "--slo-tbt", "replicas": "--replicas",
         "nodes": "--nodes", "router": "--router", "scheduler": "--scheduler", "routing": "--routing",
         "rank_router": "--rank-router", "seed": "--seed",
         "mtp": "--mtp", "mtp_acceptance": "--mtp-acceptance",
         "prefix_cache": "--prefix-cache", "max_requests": "--max-requests", "max_gpus": "--max-gpus",
         **CLOSED_LOOP_FLAGS}


def run(args) -> dict:
    import warnings

    from simfoe.cli.common import check_finite_result, check_seed, placement_conflicts, renamed_fields, run_record
    from simfoe.inputs import check_routing_file, check_text_file
    from simfoe.specs.io import check_override_roots
    from simfoe.outputs import check_dir, check_file
    from simfoe.serving import api

    if args.disagg:
        return run_disagg(args)
    if args.arch is None:
        from simfoe.errors import SpecError

        raise SpecError("--arch", None, "moe or foe (required unless --disagg)")
    check_seed(args.seed)
    check_override_roots(args.overrides)
    via_set = placement_conflicts(args, args.overrides)
    nodes = args.nodes if args.nodes is not None else 1
    if args.nodes is None and isinstance(via_set.get("nodes"), int) and via_set["nodes"] >= 1:
        nodes = via_set["nodes"]  # reported as given; the --set value applies either way
    for flag in ("model", "hardware", "trace"):
        if getattr(args, flag) is not None:
            check_text_file("--" + flag, getattr(args, flag))
    check_routing_file(args.routing)
    if args.csv and args.out is None:
        from simfoe.errors import SpecError

        raise SpecError("--csv", True, "add --out DIR: requests.csv is written there beside requests.parquet",
                        problem="only with --out")
    if args.out is not None:
        check_dir("--out", args.out, files=("requests.parquet", "summary.json") + (("requests.csv",) if args.csv else ()))
    if args.timeline is not None:
        check_file("--timeline", args.timeline)
    progress = want_progress(args)
    with renamed_fields(FLAGS, {"cv": args.arrival}), warnings.catch_warnings(record=True) as caught:
        res = api.simulate_serving(
            args.model, args.hardware, nodes, args.arch, workload_of(args), rate=args.rate, duration=args.duration,
            replicas=args.replicas, routing=args.routing, overrides=args.overrides, seed=args.seed,
            slo_ttft=args.slo_ttft, slo_tbt=args.slo_tbt, engine=args.engine, **_given(args),
            progress=progress, router=args.router,
            arrival=args.arrival, block_size=args.block_size, budget_scope=args.budget_scope,
            rank_router=args.rank_router, horizon_s=args.horizon, mtp=args.mtp,
            mtp_acceptance=_rates(args.mtp_acceptance), prefix_cache=args.prefix_cache,
            skip_bad_rows=args.skip_bad_rows, record_timeline=args.timeline is not None,
            max_requests=args.max_requests, max_gpus=args.max_gpus)
    sim_s = (res.summary.get("sim") or {}).get("simulated_s")
    check_finite_result(sim_s, args, "simulated iteration times are finite numbers", caught)
    res.summary["run"] = run_record(args, nodes, args.arch, args.seed, args.routing)
    # every output is written under a temporary name first and renamed only when all are written
    api.write_serving_outputs(res, args.out, args.timeline, "--out", "--timeline", csv=args.csv)
    return res.summary


def _rates(text: str | None) -> tuple[float, ...] | None:
    """``--mtp-acceptance A1,A2,...`` as floats (None when not given)."""
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        from simfoe.errors import SpecError

        raise SpecError("--mtp-acceptance", text, "comma-separated rates in [0, 1], one per draft position") from None


def _given(args) -> dict:
    """The engine knobs given on the command line (the others stay the --engine profile's, or the defaults)."""
    return {k: getattr(args, k) for k in ("max_batch", "token_budget", "scheduler") if getattr(args, k) is not None}


def _num(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def _mtp_lines(m: dict | None) -> list[str]:
    """The text lines of the summary's ``mtp`` block (none when MTP is off)."""
    if not m:
        return []
    return [f"MTP: {m['draft_tokens']} draft token(s) per step, acceptance {', '.join(f'{a:g}' for a in m['acceptance'])}; "
            f"{_num(m['tokens_per_step'])} tokens per sequence step, drafts {m['draft_busy_fraction'] * 100:.1f}% of busy time"]


def _prefix_lines(p: dict | None) -> list[str]:
    """The text line of the summary's ``prefix_cache`` block (none when prefix caching is off)."""
    if not p:
        return []
    return [f"prefix cache: {_num((p['hit_rate'] or 0) * 100, '{:.1f}')}% of prompt tokens hit "
            f"({p['hit_tokens']:,} of {p['prompt_tokens']:,}; blocks of {p['block_tokens']} tokens), "
            f"{p['evicted_tokens']:,} tokens evicted"]


def render(r: dict) -> str:
    req = r["requests"]
    lines = [
        *(render_disagg(r) if r.get("mode") == "disagg" else
          [f"{r['model']} on {r['replicas']} x {r['nodes']} node(s) of {r['hardware']} ({r['arch']}), "
           f"{r.get('gpus_per_replica') or '?'} GPUs per replica", *run_lines(r)]),
        *([f"engine profile: {r['engine']} ({r['scheduler']}, {r['token_budget']:,} tokens and {r['max_batch']} "
           "sequences per iteration and rank)"] if r.get("engine") else []),
        f"workload: {r['workload']['source']}",
        f"requests: {req['completed']}/{req['total']} completed"
        + (f", {req['dropped']} dropped {req['dropped_by_reason']}" if req["dropped"] else ""),
        "",
    ]
    rows = []
    for key, label in (("ttft_s", "TTFT"), ("tbt_s", "TBT"), ("tpot_s", "TPOT (mean TBT per request)"),
                       ("e2e_s", "end-to-end"), ("queue_s", "queueing delay")):
        d = r[key]
        rows.append([label] + [fmt_time(d.get(k)) for k in ("mean", "p50", "p90", "p99")])
    lines.append(table(rows, ["latency", "mean", "p50", "p90", "p99"]))
    th, gp, kv = r["throughput"], r["goodput"], r["kv_cache"]
    lines += [
        "",
        f"throughput: {_num(th['requests_per_s'])} req/s (offered {_num(th['offered_requests_per_s'])}), "
        f"{_num(th['output_tokens_per_s'], '{:.0f}')} output tokens/s",
        f"goodput: {_num(gp['requests_per_s'])} req/s ({_num((gp['fraction_of_requests'] or 0) * 100, '{:.1f}')}% "
        f"of requests; SLO TTFT {fmt_time(gp['slo_ttft_s'])}, TBT {fmt_time(gp['slo_tbt_s'])})",
        f"KV cache: {kv['capacity_tokens']:,} tokens/replica"
        + (f" ({r['ranks_per_replica']} DP attention ranks of {kv['capacity_tokens_per_rank']:,}, each with its own "
           f"budget of {r['token_budget']:,} tokens and {r['max_batch']} sequences)" if r.get("ranks_per_replica", 1) > 1 else "")
        + f", mean use {kv['mean_used_fraction'] * 100:.1f}%, "
        f"max {kv['max_used_fraction'] * 100:.1f}%, {kv['preemptions']} preemptions",
        f"GPU utilization (busy share): {_num((r['gpu_utilization'] or 0) * 100, '{:.1f}')}%",
        *_mtp_lines(r.get("mtp")),
        *_prefix_lines(r.get("prefix_cache")),
        f"simulated {r['sim']['simulated_s']:.1f} s in {r['sim']['wall_s']:.2f} s wall "
        f"({_num(r['sim']['sim_s_per_wall_s'], '{:.0f}')} sim s/s; {r['sim']['iterations']} iterations, "
        f"{r['sim']['cost_evaluations']} forward-model evaluations)",
    ]
    if "files" in r:
        lines.append(f"records: {r['files']['records']}" + (f" and {r['files']['csv']}" if "csv" in r["files"] else ""))
    return "\n".join(lines)
