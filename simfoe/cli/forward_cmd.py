"""`simfoe forward`: one forward pass of a model placed on a cluster."""
from __future__ import annotations

from simfoe.cli.common import add_json_flag, add_limit_flag, add_progress_flag, add_set_flag, run_lines, table
from simfoe.inputs import check_text_file
from simfoe.limits import INSTANCE_GPUS
from simfoe.outputs import fmt_bytes, fmt_time
from simfoe.paths import hardware_presets

HELP = """Simulate one forward pass (prefill: BATCH prompts of SEQ_LEN tokens; decode: BATCH sequences
generating one token each with SEQ_LEN tokens of context) of one model instance spread over NODES
nodes, as MoE expert parallelism or the Federation-of-Experts layout. Reports the critical-path
time per phase, bytes moved over NVLink (intra_node) and the network (inter_node), and the local
activation rate. --set placement.overlap=two-batch splits the pass into two micro-batches whose
communication overlaps the other's compute (DeepSeek/SGLang two-batch overlap). Example:
  simfoe forward --model mixtral-8x7b --hardware h100-sxm --nodes 2 --arch foe --phase prefill --batch 8 --seq-len 4096
"""


def register(sub) -> None:
    p = sub.add_parser("forward", help="simulate one forward pass (MoE or FoE)", description=HELP)
    p.add_argument("--model", required=True, help="model preset (mixtral-8x7b, deepseek-v3, ...) or YAML path")
    p.add_argument("--hardware", required=True, help="hardware profile: " + ", ".join(hardware_presets()) + ", or a YAML path")
    p.add_argument("--nodes", type=int, default=None,
                   help="nodes for ONE model instance (default 1, or --set placement.nodes)")
    p.add_argument("--arch", choices=["moe", "foe"], default=None,
                   help="moe: expert parallelism; foe: Federation of Experts (default moe, or --set placement.arch)")
    p.add_argument("--phase", choices=["prefill", "decode"], default="prefill",
                   help="prefill: BATCH prompts of SEQ_LEN tokens; decode: BATCH sequences, one new token each")
    p.add_argument("--batch", type=int, default=1, help="sequences in the batch")
    p.add_argument("--seq-len", type=int, default=2048, help="prompt length (prefill) or context length (decode), tokens")
    p.add_argument("--routing", default="uniform", help="uniform | zipf:S | dirichlet:ALPHA | hotset:FRACTION:SHARE | trace:PATH")
    p.add_argument("--seed", type=int, default=0, help="routing sample seed, an integer >= 0")
    p.add_argument("--per-layer", action="store_true", help="simulate every MoE layer with its own routing sample (slower)")
    p.add_argument("--timeline", metavar="FILE.json", help="write a Chrome/Perfetto trace of the simulated events")
    add_limit_flag(p, INSTANCE_GPUS, "GPUs in the instance (--nodes x GPUs per node)")
    add_progress_flag(p, "a count of simulated layers of a --per-layer run on stderr")
    add_set_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def run(args) -> dict:
    import warnings

    from simfoe.api import forward
    from simfoe.cli.common import (MAX_TOKENS, check_finite_result, check_seed, placement_conflicts, renamed_fields,
                                   run_record)
    from simfoe.inputs import check_routing_file
    from simfoe.errors import SpecError
    from simfoe.outputs import AtomicFiles, check_file
    from simfoe.specs.io import check_override_roots

    for name in ("nodes", "batch", "seq_len"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise SpecError("--" + name.replace("_", "-"), v, "an integer >= 1")
    if args.batch * args.seq_len > MAX_TOKENS:
        raise SpecError("--batch", args.batch, f"--batch x --seq-len <= {MAX_TOKENS} tokens "
                        f"(got {args.batch} x {args.seq_len})")
    check_seed(args.seed)
    check_override_roots(args.overrides)
    placement_conflicts(args, args.overrides)
    for flag, value in (("--model", args.model), ("--hardware", args.hardware)):
        check_text_file(flag, value)
    check_routing_file(args.routing)
    # without an explicit --nodes/--arch, a --set placement.* value applies as given
    nodes = args.nodes if args.nodes is not None else 1
    arch = args.arch if args.arch is not None else "moe"
    if args.timeline is not None:
        check_file("--timeline", args.timeline)
    with AtomicFiles("--timeline") as w:  # the timeline is kept only when the run succeeds
        tl = str(w.path(args.timeline)) if args.timeline is not None else None
        with warnings.catch_warnings(record=True) as caught, _layer_bar(args) as bar, \
                renamed_fields({"nodes": "--nodes", "max_gpus": "--max-gpus"}):  # warnings held until valid
            r = forward(args.model, args.hardware, nodes, arch, args.phase, args.batch, args.seq_len,
                        args.routing, args.overrides, args.seed, args.per_layer, tl, args.max_gpus,
                        progress=bar.update if bar is not None else None)
        check_finite_result(r.get("latency_s"), args, "simulated latency is a finite number", caught)
    r["run"] = run_record(args, nodes, arch, args.seed, args.routing)
    mem = r.get("memory")
    if mem and not mem["fits"]:
        import sys

        print(f"warning: this pass needs {(mem['weights_bytes_per_gpu'] + mem['kv_cache_bytes_per_gpu']) / 1e9:.1f} GB "
              f"per GPU (weights {mem['weights_bytes_per_gpu'] / 1e9:.1f} GB + KV cache "
              f"{mem['kv_cache_bytes_per_gpu'] / 1e9:.1f} GB) but {mem['usable_hbm_bytes_per_gpu'] / 1e9:.1f} GB are "
              "usable: it does not fit (latency reported as if it did; try more --nodes or a smaller --batch)", file=sys.stderr)
    return r


def _layer_bar(args):
    """A context giving a tqdm counter of simulated layers on stderr for a --per-layer run when progress
    is wanted (--progress, or a terminal without --json), else None."""
    import contextlib
    import sys

    from simfoe.cli.common import want_progress

    if not (args.per_layer and want_progress(args)):
        return contextlib.nullcontext()
    from tqdm import tqdm

    return tqdm(unit=" layers", desc="forward", leave=False, file=sys.stderr)


def render(r: dict) -> str:
    total = r["latency_s"]
    rows = [[k, fmt_time(v), f"{100 * v / total:.1f}%" if total else "-"] for k, v in r["breakdown_s"].items() if v > 0]
    mb = ("; two micro-batches overlapped (communication rows: the exposed part)"
          if r.get("micro_batches", 1) > 1 else "")
    out = [f"latency: {fmt_time(total)} on {r['gpus']} GPUs{mb}", *run_lines(r), "",
           table(rows, ["phase", "time", "share"]), ""]
    crow = [[k, fmt_bytes(v["intra_node"]), fmt_bytes(v["inter_node"])] for k, v in r["comm_bytes"].items()]
    out.append(table(crow, ["bytes moved", "NVLink (intra-node)", "network (inter-node)"]))
    lar = r.get("local_activation_rate")
    out.append("")
    out.append(f"local activation rate: {lar:.3f}" if lar is not None else "local activation rate: - (dense model)")
    npt = r.get("nodes_per_token")
    if npt is not None:
        out.append(f"nodes per token: {npt:.2f} (distinct nodes serving a token's routed experts, per MoE layer)")
    return "\n".join(out)
