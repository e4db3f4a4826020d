"""`simfoe presets`: the models, hardware profiles, pipeline presets and example sweeps, one line each."""
from __future__ import annotations

from simfoe.cli.common import add_json_flag

GROUPS = ("models", "hardware", "pipelines", "sweeps")


def register(sub) -> None:
    p = sub.add_parser("presets", help="list models, hardware profiles, pipelines and example sweeps",
                       description="List what --model, --hardware, --spec and `simfoe sweep SPEC` accept by "
                       "short name, one line each (models: parameters, experts, top-k; hardware: GPU, GPUs per "
                       "node, NIC rate; pipelines: stages; sweeps: kind, scenario count, purpose). --json gives "
                       "the numbers behind each line (counts, bytes, bytes/s, FLOP/s).")
    p.add_argument("group", nargs="?", choices=GROUPS, help="list only this group (default: all)")
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def run(args) -> dict:
    from simfoe.presets import list_all

    groups = list_all()
    return {g: [p.to_dict() for p in ps] for g, ps in groups.items() if args.group in (None, g)}


def render(r: dict) -> str:
    out = []
    for group, items in r.items():
        w = max((len(p["name"]) for p in items), default=0)
        out += [f"{group}:", *(f"  {p['name']:<{w}}  {p['line']}" for p in items), ""]
    return "\n".join(out).rstrip()
