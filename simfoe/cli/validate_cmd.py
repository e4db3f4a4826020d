"""`simfoe validate`: stored measurement sets and Vidur data vs current predictions (CI regression).

  simfoe validate [--json] [--vidur PATH] [--hardware h100-sxm ...] [--set hardware.X=V ...] [--cases-out FILE.csv]

-> {"cases": [{"source", "n", "mape", "max_ape", "ok"}], "mape", "max_ape", "by_source": {...}, "failed", "skipped",
    "missing": {source: path looked for}} (with --json, missing sources are also named in one warning line on stderr);
exit 1 when a source exceeds its tolerance (validation/tolerances.yaml), 2 on bad input (checked before
anything is predicted, including --cases-out and --tolerances).
"""
from __future__ import annotations

from simfoe.cli.common import add_json_flag, add_set_flag


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="stored measurements vs predictions; exit 1 past a tolerance",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--vidur", default=None, help="Vidur profiling data folder (default ../shared/data/vidur when present); "
                   "with it only the Vidur sources are checked")
    p.add_argument("--hardware", action="append", default=None, help="Vidur profile(s) to check: h100-sxm, a100-sxm")
    p.add_argument("--tolerances", default=None, help="tolerance file (default validation/tolerances.yaml)")
    p.add_argument("--cases-out", default=None, help="write every predicted/measured row to this CSV")
    p.add_argument("--no-testbed", action="store_true", help="skip the stored testbed source")
    add_set_flag(p, help="override a hardware profile field by dotted path, applied to every profile validated, "
                 "e.g. hardware.network.nic_bandwidth=100e9 (repeatable; only hardware.* paths)")
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def run(args):
    from simfoe.calibration import regression
    from simfoe.errors import SpecError
    from simfoe.outputs import AtomicFiles, check_file
    from simfoe.specs.io import check_override_roots

    check_override_roots(args.overrides)
    bad = [o for o in args.overrides if not o.startswith("hardware.")]
    if bad:
        raise SpecError("--set", bad[0], "hardware.* paths only (applied to every profile validated)")

    tolerances = regression.load_tolerances(args.tolerances or regression.TOLERANCES, "--tolerances")
    if args.cases_out:
        check_file("--cases-out", args.cases_out)
    only_vidur = args.vidur is not None
    r = regression.validate(vidur=args.vidur, hardware=args.hardware, include_sets=not only_vidur,
                            include_testbed=not (only_vidur or args.no_testbed),
                            tolerances=tolerances, hw_overrides=args.overrides or None)
    rows = r.pop("rows")
    if r["missing"] and args.json:  # the text output lists them itself
        import sys

        sys.stderr.write(f"warning: validate: not found, so not checked: {_missing(r)}\n")
    if args.cases_out:
        import pandas as pd

        with AtomicFiles("--cases-out") as w:
            pd.DataFrame(rows).to_csv(w.path(args.cases_out), index=False)
    return r, (1 if r["failed"] else 0)


def render(r: dict) -> str:
    lines = [f"{'source':48} {'n':>6} {'MAPE%':>7} {'max%':>8} {'tolerance':>26}  ok"]
    for s, v in r["by_source"].items():
        tol = ", ".join(f"{k}<={x}" for k, x in (v.get("tolerance") or {}).items()) or "-"
        lines.append(f"{s:48} {v['n']:>6} {v['mape']:7.2f} {v['max_ape']:8.2f} {tol:>26}  {'yes' if v['ok'] else 'NO'}")
    lines.append(f"all: MAPE {r['mape']:.2f}%  max {r['max_ape']:.2f}%  failed: {', '.join(r['failed']) or 'none'}")
    for k, why in r.get("skipped", {}).items():
        if k not in r["missing"]:
            lines.append(f"skipped {k}: {why}")
    if r["missing"]:
        lines.append(f"not found, so not checked: {_missing(r)}")
    return "\n".join(lines)


def _missing(r: dict) -> str:
    return "; ".join(f"{k} ({path})" for k, path in r["missing"].items())
