"""`simfoe calibrate`: measure this machine, or fit a hardware profile from a stored measurement set.

  simfoe calibrate --device cpu --out validation/data/NAME/ [--quick]        # runs python -m validation.harness
                                                                            #   --concurrent 2 on a CPU
  simfoe calibrate --from validation/data/NAME/ --out hwprofiles/NAME.yaml   # fit (and write) a profile
  simfoe calibrate --from-tables ../shared/data/aiconfigurator/h100_sxm --base h100-sxm --out hwprofiles/NAME.yaml
                                                                            # fit kernel families from per-op tables

A CPU set is fitted whole (kernels, GEMM tables, gloo collectives). A CUDA set (one GPU: kernels only)
refits the kernel families of the published profile of that GPU (--base, default from the set's device
name: H100 -> h100-sxm, A100 -> a100-sxm, H200 -> h200-sxm) and keeps everything else of it.
"""
from __future__ import annotations

import argparse

from simfoe.cli.common import add_json_flag


def register(subparsers) -> None:
    p = subparsers.add_parser("calibrate", help="run the microbenchmark harness, or fit a profile from a measurement set",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="measure this device (runs the harness)")
    p.add_argument("--from", dest="src", default=None, help="measurement set folder to fit")
    p.add_argument("--from-tables", dest="tables", default=None,
                   help="folder of per-op kernel tables in AIConfigurator's layout (gemm/, moe/, attention/, mla/) to fit")
    p.add_argument("--framework", choices=("sglang", "vllm", "trtllm"), default=None,
                   help="with --from-tables: whose tables to fit (default sglang)")
    p.add_argument("--out", default=None, help="measurement folder (with --device) or profile YAML (with --from)")
    p.add_argument("--quick", action="store_true", help="with --device: harness quick mode (~30 s on a CPU)")
    p.add_argument("--concurrent", type=int, default=None,
                   help="with --device cpu: time each kernel in this many processes at once, as the 2-process testbed runs "
                        "(default 2 on a CPU, as the committed CPU sets were measured; 1 on CUDA)")
    p.add_argument("--base", default=None,
                   help="with --from a CUDA set: the published profile whose kernel families are refitted "
                        "(default: by the set's GPU name)")
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def run(args):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from simfoe.errors import SpecError
    from simfoe.outputs import check_dir, check_file
    from simfoe.paths import REPO_ROOT

    if args.tables is not None:
        return _run_tables(args)
    if args.framework is not None:
        raise SpecError("--framework", args.framework, "only with --from-tables")
    if (args.device is None) == (args.src is None):
        raise SpecError("--device/--from", None, "give exactly one: --device (measure) or --from (fit)",
                        problem="neither is given" if args.device is None else "both are given")
    if args.device:
        if not args.out:
            raise SpecError("--out", None, "a folder for the measurement set, e.g. validation/data/NAME/")
        if args.base is not None:
            raise SpecError("--base", args.base, "only with --from (a CUDA measurement set)")
        check_dir("--out", args.out)
        conc = args.concurrent if args.concurrent is not None else (2 if args.device == "cpu" else 1)
        if conc < 1 or (conc > 1 and args.device != "cpu"):
            raise SpecError("--concurrent", conc, "an integer >= 1, and > 1 only with --device cpu")
        _check_torch(args.device)
        cmd = [sys.executable, "-m", "validation.harness", "--device", args.device, "--out", str(Path(args.out).resolve()),
               "--concurrent", str(conc)]
        if args.quick:
            cmd.append("--quick")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        p = subprocess.run(cmd, cwd=str(REPO_ROOT), env=env, stdout=subprocess.PIPE, text=True)
        if p.returncode:
            return {"error": f"harness exited {p.returncode}", "command": cmd}, p.returncode
        return {"measured": json.loads(p.stdout.strip().splitlines()[-1]), "command": cmd}
    for flag, given in (("--quick", args.quick or None), ("--concurrent", args.concurrent)):
        if given is not None:
            raise SpecError(flag, given, "only with --device (measuring); --from fits a stored set")
    src = Path(args.src)
    if not src.is_dir():
        raise SpecError("--from", args.src, "an existing measurement set folder (kernels.csv, collectives.csv, env.json)")
    if args.out:
        check_file("--out", args.out, suffixes=(".yaml", ".yml"), what="a profile path whose folder is writable or can be created")
    from simfoe.calibration.fit_profile import run_fit
    from simfoe.cli.common import renamed_fields

    with renamed_fields({"measurement set": "--from"}):  # the set is checked before any fitting
        return run_fit(src, args.out, base=args.base)


def _run_tables(args):
    """--from-tables: fit kernel families from per-op tables on top of --base (simfoe.calibration.fit_tables)."""
    from pathlib import Path

    from simfoe.errors import SpecError
    from simfoe.outputs import check_file

    for flag, given in (("--device", args.device), ("--from", args.src), ("--quick", args.quick or None),
                        ("--concurrent", args.concurrent)):
        if given is not None:
            raise SpecError(flag, given, "not with --from-tables (it fits stored tables)")
    if not Path(args.tables).is_dir():
        raise SpecError("--from-tables", args.tables, "an existing folder of per-op tables (gemm/, moe/, attention/, mla/)")
    if not args.base:
        raise SpecError("--base", None, "the published profile the tables refit, e.g. h100-sxm")
    if args.out:
        check_file("--out", args.out, suffixes=(".yaml", ".yml"), what="a profile path whose folder is writable or can be created")
    from simfoe.calibration.fit_tables import run_fit_tables

    return run_fit_tables(args.tables, args.base, args.out, args.framework or "sglang")


def _check_torch(device: str) -> None:
    """Measuring needs torch (the validation extra), and --device cuda a GPU torch can see: else exit 2."""
    from simfoe.errors import SpecError, require_extra

    torch = require_extra("torch", "validation", "--device", device)
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device", device, "cpu on this machine (torch.cuda.is_available() is False)",
                        problem="'cuda' but torch sees no CUDA GPU here")


def render(r: dict) -> str:
    if "error" in r:  # the harness failed: its own message went to stderr
        return f"{r['error']}: {' '.join(r['command'])}"
    if "measured" in r:
        return str(r["measured"])
    if "parts" in r:  # kernel tables
        lines = [f"fit {r['tables']} ({r['framework']}) on {r['base']} -> {r.get('written') or '(not written; pass --out)'}",
                 f"  {'part':44} {'family':22} {'rows':>6} {'fitted MAPE':>12} {'held-out rows':>14} {'MAPE':>7} {'median':>7}"]
        for k, v in r["parts"].items():
            f, h = v["fitted"], v["held_out"]
            lines.append(f"  {k:44} {v['family']:22} {f['rows']:>6} {f['mape_pct']:>11.2f}% {h['rows']:>14} "
                         f"{h['mape_pct']:>6.2f}% {h['median_ape_pct']:>6.2f}%")
        return "\n".join(lines)
    if "base" in r:  # a CUDA set: kernel families refitted on a published profile
        lines = [f"fit {r['set']} ({r['device_name']}) on {r['base']} -> {r.get('written') or '(not written; pass --out)'}",
                 f"  {'':9} {'':48} {'rows':>8}  {'fitted':>14}  {r['base'] + ' as published':>24}"]
        for part in ("kernels", "held_out"):
            for k, v in r[part].items():
                b = r["base_on_set"].get(k)  # none for the cross-routing checks (a refit, not a profile)
                base = f"{'MAPE':>13} {b['mape_pct']:6.2f}% (max {b['max_ape_pct']:.1f}%)" if b else f"{'-':>13}"
                lines.append(f"  {part:9} {k:48} rows {v['rows']:>3}  MAPE {v['mape_pct']:6.2f}%  {base}")
        return "\n".join(lines)
    lines = [f"fit {r['set']} -> {r.get('written') or '(not written; pass --out)'}",
             f"peak FLOP/s {r['gpu']['peak_flops']}, DRAM {r['gpu']['hbm_bandwidth']:.4g} B/s; "
             "gloo alpha {alpha_s:.3g} s, hop {hop_s:.3g} s/step, bandwidth {bandwidth:.4g} B/s".format(**r["collectives"]["fit"])]
    for part in ("kernels", "held_out"):
        for k, v in r[part].items():
            lines.append(f"  {part:9} {k:36} rows {v['rows']:>3}  MAPE {v['mape_pct']:6.2f}%  max {v['max_ape_pct']:7.2f}%")
    for k, v in r["collectives"]["residuals"].items():
        lines.append(f"  {'coll':9} {k:36} rows {v['rows']:>3}  MAPE {v['mape_pct']:6.2f}%  max {v['max_ape_pct']:7.2f}%")
    return "\n".join(lines)
