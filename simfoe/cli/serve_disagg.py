"""`simfoe serve --disagg`: prefill-decode disaggregated serving (issue 24.1), a thin shell over
:func:`simfoe.serving.disagg_api.simulate_disagg_serving`."""
from __future__ import annotations

from simfoe.cli.closed_loop import CLOSED_LOOP_FLAGS

#: internal field names of disaggregation errors -> the serve flags
FLAGS = {"kv_transfer": "--kv-transfer", "first_token": "--first-token", "disagg_order": "--disagg-order", "xpyd": "--xpyd",
         "prefill.workers": "--xpyd", "decode.workers": "--xpyd", "rate": "--rate", "duration": "--duration",
         "trace": "--trace", "arrival": "--arrival", "cv": "--arrival", "horizon_s": "--horizon",
         "slo_ttft": "--slo-ttft", "slo_tbt": "--slo-tbt", "routing": "--routing", "seed": "--seed",
         "max_requests": "--max-requests", "max_gpus": "--max-gpus", **CLOSED_LOOP_FLAGS}

#: serve options that describe one aggregated instance: refused with --disagg (a pool's are in its spec)
AGGREGATED_ONLY = {"arch": "--arch", "nodes": "--nodes", "timeline": "--timeline", "out": "--out"}

#: an instance's engine flags and their defaults: given with --disagg they are refused (each pool's engine
#: knobs are its spec's ``engine``), so that none is silently ignored
ENGINE_FLAGS = {"engine": None, "scheduler": None, "max_batch": None, "token_budget": None, "mtp": 0,
                "mtp_acceptance": None, "prefix_cache": False, "router": "round-robin", "rank_router": "vllm-lb",
                "block_size": 16, "budget_scope": "rank", "replicas": 1, "skip_bad_rows": False, "csv": False}


def add_disagg_flags(p) -> None:
    g = p.add_argument_group("disaggregated serving (--disagg; docs/serving.md)")
    g.add_argument("--disagg", action="store_true",
                   help="serve on a prefill pool and a decode pool (--prefill, --decode, --xpyd) whose KV cache "
                   "moves between them on the fabric, instead of --arch/--nodes/--replicas")
    g.add_argument("--prefill", metavar="SPEC.yaml", default=None,
                   help="the prefill pool: a placement spec (arch, nodes, moe/foe) plus workers, gpus (GPUs of a "
                   "worker smaller than a node) and engine (max_batch, token_budget, ...)")
    g.add_argument("--decode", metavar="SPEC.yaml", default=None, help="the decode pool, as --prefill")
    g.add_argument("--xpyd", metavar="P:D", default=None,
                   help="prefill and decode workers, e.g. 2:1 (default: the specs' workers)")
    g.add_argument("--kv-transfer", default="layerwise",
                   help="layerwise (default: each layer's KV sent as it is computed, the last layer's share after "
                   "prefill) | after (all of it after prefill) | instant (free and infinitely fast)")
    g.add_argument("--first-token", default="prefill",
                   help="prefill (default; AIConfigurator's convention: the prefill worker's token reaches the "
                   "client when the KV has arrived) | decode (the decode worker's first step makes it)")
    g.add_argument("--disagg-order", default="decode-first",
                   help="decode-first (default: a request takes its decode room, then is prefilled; SGLang) | "
                   "prefill-first (prefilled at once, then it waits for decode room with its KV on the prefill "
                   "worker; Dynamo's frontend with TensorRT-LLM); with prefill-first, --kv-transfer after or instant")


def run_disagg(args) -> dict:
    """The JSON summary of ``simfoe serve --disagg``."""
    from simfoe.cli.closed_loop import workload_of
    from simfoe.cli.common import check_seed, command_run, renamed_fields
    from simfoe.errors import SpecError
    from simfoe.inputs import check_routing_file, check_text_file
    from simfoe.serving.disagg_api import DisaggRun, parse_xpyd, simulate_disagg_serving
    from simfoe.specs.disagg import load_pool

    check_seed(args.seed)
    for k, flag in AGGREGATED_ONLY.items():
        if getattr(args, k, None) is not None:
            raise SpecError(flag, getattr(args, k), "omitted with --disagg (each pool's layout is its --prefill/--decode "
                            "spec; records and timelines are not written yet)")
    for k, default in ENGINE_FLAGS.items():
        if getattr(args, k, default) != default:
            raise SpecError("--" + k.replace("_", "-"), getattr(args, k), "omitted with --disagg (workers: --xpyd; "
                            "engine knobs: the pool spec's engine, e.g. engine: {max_batch: 64, mtp: 1})")
    pools = {}
    for flag in ("prefill", "decode"):
        if getattr(args, flag) is None:
            raise SpecError("--" + flag, None, "a pool spec YAML with --disagg")
        pools[flag] = load_pool(getattr(args, flag), "--" + flag)
    for flag in ("model", "hardware", "trace"):
        if getattr(args, flag) is not None:
            check_text_file("--" + flag, getattr(args, flag))
    check_routing_file(args.routing)
    xpyd = parse_xpyd(args.xpyd, "--xpyd") if args.xpyd is not None else None
    run = DisaggRun(transfer=args.kv_transfer, first_token=args.first_token, order=args.disagg_order, xpyd=xpyd,
                    routing=args.routing,
                    overrides=tuple(args.overrides), seed=args.seed, slo_ttft=args.slo_ttft, slo_tbt=args.slo_tbt,
                    horizon_s=args.horizon, max_requests=args.max_requests, max_gpus=args.max_gpus)
    with renamed_fields(FLAGS, {"cv": args.arrival}):
        res = simulate_disagg_serving(args.model, args.hardware, pools["prefill"], pools["decode"], workload_of(args),
                                      rate=args.rate, duration=args.duration, run=run, arrival=args.arrival)
    res.summary["run"] = command_run(args)
    return res.summary


def render_disagg(r: dict) -> list[str]:
    """The head lines of a ``--disagg`` summary's text: the pools and the transfers (the serve table follows)."""
    from simfoe.outputs import fmt_time

    d = r["disagg"]
    lines = [f"{r['model']} on {r['hardware']}, disaggregated {r['xpyd']} (prefill:decode workers), {d['gpus']} GPUs "
             f"on {d['nodes'] or '?'} node(s); {d['order']}, KV transfer {d['kv_transfer']}, first token from "
             f"{d['first_token']}"]
    for name in ("prefill", "decode"):
        p = d[name]
        lines.append(f"  {name}: {p['workers']} x {p['layout']['label'] if p.get('layout') else p['gpus_per_worker']}; "
                     f"busy {(p['utilization'] or 0) * 100:.1f}%, KV {p['kv_capacity_tokens']:,} tokens/worker "
                     f"(max use {p['kv_max_used_fraction'] * 100:.1f}%), {p['preemptions']} preemptions")
    t = d["transfer"]
    lines.append(f"  KV moved: {t['bytes']['intra_node'] / 1e9:.2f} GB NVLink, {t['bytes']['inter_node'] / 1e9:.2f} GB "
                 f"network; exposed after prefill p50 {fmt_time(t['exposed_s']['p50'])}, p99 "
                 f"{fmt_time(t['exposed_s']['p99'])}; wait for decode room p50 {fmt_time(t['wait_for_room_s']['p50'])}")
    return lines
