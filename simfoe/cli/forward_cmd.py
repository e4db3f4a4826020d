"""`simfoe forward`: one forward pass of a model placed on a cluster."""
from __future__ import annotations

from simfoe.cli.common import add_json_flag, add_set_flag, fmt_bytes, fmt_time, table
from simfoe.paths import hardware_presets

HELP = """Simulate one forward pass (prefill: BATCH prompts of SEQ_LEN tokens; decode: BATCH sequences
generating one token each with SEQ_LEN tokens of context) of one model instance spread over NODES
nodes, as MoE expert parallelism or the Federation-of-Experts layout. Reports the critical-path
time per phase, bytes moved over NVLink (intra_node) and the network (inter_node), and the local
activation rate. Example:
  simfoe forward --model mixtral-8x7b --hardware h100-sxm --nodes 2 --arch foe --phase prefill --batch 8 --seq-len 4096
"""


def register(sub) -> None:
    p = sub.add_parser("forward", help="simulate one forward pass (MoE or FoE)", description=HELP)
    p.add_argument("--model", required=True, help="model preset (mixtral-8x7b, deepseek-v3, ...) or YAML path")
    p.add_argument("--hardware", required=True, help="hardware profile: " + ", ".join(hardware_presets()) + ", or a YAML path")
    p.add_argument("--nodes", type=int, default=1, help="nodes for ONE model instance (default 1)")
    p.add_argument("--arch", choices=["moe", "foe"], default="moe", help="moe: expert parallelism; foe: Federation of Experts")
    p.add_argument("--phase", choices=["prefill", "decode"], default="prefill")
    p.add_argument("--batch", type=int, default=1, help="sequences in the batch (default 1)")
    p.add_argument("--seq-len", type=int, default=2048, help="prompt length (prefill) or context length (decode), tokens")
    p.add_argument("--routing", default="uniform", help="uniform | zipf:S | dirichlet:ALPHA | hotset:FRACTION:SHARE | trace:PATH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-layer", action="store_true", help="simulate every MoE layer with its own routing sample (slower)")
    p.add_argument("--timeline", metavar="FILE.json", help="write a Chrome/Perfetto trace of the simulated events")
    add_set_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def run(args) -> dict:
    from simfoe.api import forward
    from simfoe.errors import SpecError

    for name in ("nodes", "batch", "seq_len"):
        if getattr(args, name) < 1:
            raise SpecError(name.replace("_", "-"), getattr(args, name), "an integer >= 1")
    return forward(args.model, args.hardware, args.nodes, args.arch, args.phase, args.batch, args.seq_len,
                   args.routing, args.overrides, args.seed, args.per_layer, args.timeline)


def render(r: dict) -> str:
    total = r["latency_s"]
    rows = [[k, fmt_time(v), f"{100 * v / total:.1f}%" if total else "-"] for k, v in r["breakdown_s"].items() if v > 0]
    out = [f"latency: {fmt_time(total)} on {r['gpus']} GPUs", "", table(rows, ["phase", "time", "share"]), ""]
    crow = [[k, fmt_bytes(v["intra_node"]), fmt_bytes(v["inter_node"])] for k, v in r["comm_bytes"].items()]
    out.append(table(crow, ["bytes moved", "NVLink (intra-node)", "network (inter-node)"]))
    lar = r.get("local_activation_rate")
    out.append("")
    out.append(f"local activation rate: {lar:.3f}" if lar is not None else "local activation rate: - (dense model)")
    return "\n".join(out)
