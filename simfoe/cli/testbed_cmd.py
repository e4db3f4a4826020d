"""`simfoe testbed`: real MoE and FoE forward passes on this machine (torch, gloo) vs simfoe's prediction.

  simfoe testbed [--model validation/models/testbed-moe.yaml] [--hardware auto|PROFILE] [--quick]
                 [--repeats N] [--breakdown N] [--out FILE.json] [--json]

-> {"cases": [{"arch", "phase", "batch", "measured_s", "predicted_s", "expert_counts", "host_speed", ...}],
    "mape", "speedup_error", "host_speed", ...}   (all keys: docs/calibration.md, Testbed)
    with --breakdown, each case also has "breakdown": {"measured_cpu_s", "measured_wall_s", "predicted_s"}
"""
from __future__ import annotations

import argparse

from simfoe.cli.common import add_json_flag
from simfoe.outputs import fmt_time


def register(subparsers) -> None:
    p = subparsers.add_parser("testbed", help="run a real small MoE and FoE model across processes and compare with simfoe",
                              description=__doc__.split("\n\n")[0],
                              epilog="--json prints " + __doc__.split("-> ")[1].strip(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="validation/models/testbed-moe.yaml", help="testbed ModelSpec YAML (fp32 GQA MoE)")
    p.add_argument("--hardware", default="auto",
                   help="calibrated profile of this machine; auto (default): the profile whose measurement set was "
                        "taken on this CPU kind (vendor, family, model), else cpu-amd-epyc-zen4 with a warning")
    p.add_argument("--quick", action="store_true", help="two shapes only (prefill B=2, decode B=16): a fast smoke run; CI judges all four")
    p.add_argument("--repeats", type=int, default=None, help="timed forward passes per case, MoE and FoE interleaved (default 9)")
    p.add_argument("--breakdown", type=int, default=0, metavar="N",
                   help="after each case's timed passes, N more passes timed section by section (attention, "
                        "experts, dispatch, combine, all_reduce, embed_lm_head): where the time goes, measured "
                        "vs predicted (default 0: none; 3 is enough)")
    p.add_argument("--out", default=None, help="also write the result JSON here")
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def run(args) -> dict:
    from simfoe.calibration import testbed
    from simfoe.errors import SpecError, require_extra

    if args.repeats is not None and args.repeats < 1:
        raise SpecError("--repeats", args.repeats, "an integer >= 1")
    if args.breakdown < 0:
        raise SpecError("--breakdown", args.breakdown, "an integer >= 0")
    from simfoe.inputs import check_text_file
    from simfoe.outputs import check_file, write_text

    check_text_file("--model", args.model)
    check_text_file("--hardware", args.hardware)
    if args.out:
        check_file("--out", args.out)  # before the (long) measurement
    require_extra("torch", "validation", "testbed")  # the real model runs in torch
    res = testbed.run(args.model, args.hardware, quick=args.quick, repeats=args.repeats, breakdown=args.breakdown)
    if not res["hardware_matched"]:
        import sys

        print(f"warning: no calibrated profile matches this CPU; predicting with {res['hardware']} "
              "(calibrate this machine: simfoe calibrate --device cpu --out validation/data/NAME/)", file=sys.stderr)
    if args.out:
        from simfoe.outputs import json_text

        write_text(args.out, json_text(res), field="--out")  # atomic; NaN -> null
    return res


def render(r: dict) -> str:
    lines = [f"testbed {r['model']} on {r['hardware']} (measured = {r['measure']})",
             f"{'arch':5} {'phase':8} {'batch':>5} {'measured':>11} {'wall':>11} {'predicted':>11} {'err':>7}"]
    for c in r["cases"]:
        lines.append(f"{c['arch']:5} {c['phase']:8} {c['batch']:>5} {fmt_time(c['measured_s']):>11} "
                     f"{fmt_time(c['measured_wall_s']):>11} {fmt_time(c['predicted_s']):>11} {c['ape_pct']:6.1f}%")
    lines.append(f"MAPE {r['mape']:.1f}%  max {r['max_ape']:.1f}%  speedup error {100 * r['speedup_error']:.1f}% "
                 f"(max {100 * r['speedup_error_max']:.1f}%)")
    from simfoe.forward.simulate import CATEGORIES

    with_bd = [c for c in r["cases"] if c.get("breakdown")]
    if with_bd:
        lines.append("breakdown, measured/predicted (CPU time per category, largest over ranks; predicted: critical path)")
    for c in with_bd:
        bd = c["breakdown"]
        cats = [k for k in CATEGORIES if k in bd["predicted_s"] or k in bd["measured_cpu_s"]]
        lines.append(f"  {c['arch']:5} {c['phase']:8} {c['batch']:>5}  " + "  ".join(
            f"{k} {fmt_time(bd['measured_cpu_s'].get(k, 0.0))}/{fmt_time(bd['predicted_s'].get(k, 0.0))}" for k in cats))
    if r.get("host_speed") is not None:
        lines.append(f"host speed {r['host_speed']:.2f} (probe GEMM, profile prediction / measured; 1.00 = as at calibration)")
    return "\n".join(lines)
