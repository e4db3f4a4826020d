"""`simfoe compare RUN_A RUN_B`: which spec fields differ between two outputs and how much each metric moved."""
from __future__ import annotations

from simfoe.cli.common import add_json_flag, table


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare two outputs: spec fields that differ, each metric's change",
        description="Compare two outputs written by simfoe: forward/serve --json output saved to a file, a serve "
        "--out folder, or two sweep output folders. Prints the spec fields that differ (from the outputs' run "
        "records, layouts or sweep specs) and each metric's relative change (B - A) / |A|; sweep rows are matched "
        "on their inputs and each metric's change is summarised over the matched rows (median, min, max).")
    p.add_argument("run_a", metavar="RUN_A", help="the reference output (file or folder)")
    p.add_argument("run_b", metavar="RUN_B", help="the output compared with it (same kind)")
    p.add_argument("--all", action="store_true", help="list unchanged metrics too (text output)")
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def run(args) -> dict:
    from simfoe.compare import compare

    r = compare(args.run_a, args.run_b)
    r["show_all"] = bool(args.all)
    return r


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _short(v, width: int = 40) -> str:
    s = "-" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
    return s if len(s) <= width else s[:width - 3] + "..."


def render(r: dict) -> str:
    lines = [f"{tag}: {r[k]['path']} ({r['kind']}; simfoe {r[k].get('simfoe_version') or '?'})"
             + (f": {r[k]['command']}" if r[k].get("command") else "") for tag, k in (("A", "a"), ("B", "b"))]
    specs = r["specs"]
    lines.append("")
    if not r["specs_known"]:
        lines.append("specs: an output carries no run record (written by an older simfoe); differences unknown")
    lines.append(f"spec fields that differ: {len(specs)}")
    if specs:
        lines.append(table([[d["field"], _short(d["a"]), _short(d["b"]), _pct(d["change"]) if "change" in d else ""]
                            for d in specs], ["field", "A", "B", "change"]))
    if "match" in r:
        m = r["match"]
        lines += ["", f"rows: {m['matched_rows']} matched (A {m['rows_a']}, B {m['rows_b']}) on "
                  f"{', '.join(m['matched_on']) or 'nothing'}"]
        lines += [f"inputs that differ: {c} (A {', '.join(va)}; B {', '.join(vb)})"
                  for c, (va, vb) in m["inputs_that_differ"].items()]
    moved = [d for d in r["metrics"] if r.get("show_all") or d["change"] != 0]
    lines += ["", f"metrics: {len(moved)} of {len(r['metrics'])} moved" + (" (all listed)" if r.get("show_all") else "")]
    if moved:
        head = ["metric", "A", "B", "change"] + (["min", "max"] if "match" in r else [])
        rows = [[d["metric"], _short(d["a"]), _short(d["b"]), _pct(d["change"])]
                + ([_pct(d["change_min"]), _pct(d["change_max"])] if "match" in r else []) for d in moved]
        lines.append(table(rows, head))
    for k in ("only_in_a", "only_in_b"):
        if r[k]:
            lines.append(f"{k.replace('_', ' ')}: {', '.join(r[k])}")
    return "\n".join(lines)
