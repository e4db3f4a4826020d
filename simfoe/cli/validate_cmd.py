"""`simfoe validate`: stored measurement sets and Vidur data vs current predictions (CI regression).

  simfoe validate [--json] [--vidur PATH] [--hardware h100-sxm ...] [--set hardware.X=V ...] [--cases-out FILE.csv]
  simfoe validate --silicon [PATH] [--cases-out FILE.csv] [--jobs N] [--tolerances FILE] [--json]
    (real serving benchmarks, judged as source silicon:<file stem>; docs/calibration.md)

-> {"cases": [{"source", "n", "mape", "max_ape", "ok"}], "mape", "max_ape", "by_source": {...}, "failed", "skipped",
    "missing": {source: path looked for}, "run": record} (with --json, missing sources are also named in one warning
line on stderr; "run": simfoe version, command line, --set list and options, simfoe.provenance.command_record);
exit 1 when a source exceeds its tolerance (validation/tolerances.yaml), 2 on bad input (checked before
anything is predicted, including --cases-out and --tolerances).
"""
from __future__ import annotations

from simfoe.cli.common import add_json_flag, add_set_flag, command_run


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="stored measurements vs predictions; exit 1 past a tolerance",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--vidur", default=None, help="Vidur profiling data folder (default ../shared/data/vidur when present); "
                   "with it only the Vidur sources are checked")
    p.add_argument("--hardware", action="append", default=None, help="Vidur profile(s) to check: h100-sxm, a100-sxm")
    p.add_argument("--tolerances", default=None, help="tolerance file (default validation/tolerances.yaml)")
    p.add_argument("--cases-out", default=None, help="write every predicted/measured row to this CSV")
    p.add_argument("--no-testbed", action="store_true", help="skip the stored testbed source")
    p.add_argument("--silicon", nargs="?", const="", default=None, metavar="PATH",
                   help="replay real serving benchmarks (an AIConfigurator silicon CSV; default: "
                   "../shared/data/aiconfigurator/silicon/h100_sxm.csv) through simfoe serve; with it only "
                   "they are checked, against the tolerance silicon:<file stem>: "
                   "{\"silicon\": {rows, covered, coverage, ttft_mape, ..., ok}} (docs/calibration.md)")
    p.add_argument("--jobs", type=int, default=None, help="with --silicon: worker processes (default: CPU count)")
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

    if args.cases_out:
        check_file("--cases-out", args.cases_out)
    tolerances = regression.load_tolerances(args.tolerances or regression.TOLERANCES, "--tolerances")
    if args.silicon is not None:
        given = [(f, v) for f, v in (("--vidur", args.vidur), ("--hardware", args.hardware),
                                     ("--set", args.overrides)) if v]
        if given:
            f, v = given[0]
            raise SpecError(f, " ".join(v) if isinstance(v, list) else v,
                            "omitted with --silicon (it replays the benchmark rows with the committed profiles)")
        return _silicon(args, tolerances)
    if args.jobs is not None:
        raise SpecError("--jobs", args.jobs, "omitted without --silicon (only the silicon replay runs in workers)")
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
    r["run"] = command_run(args)  # no specs: the profiles judged are named per source
    return r, (1 if r["failed"] else 0)


def _silicon(args, tolerances: dict):
    """``--silicon``: the real serving benchmarks replayed (simfoe.calibration.silicon) and judged against
    ``tolerances`` (source ``silicon:<file stem>``); exit 1 past a bound."""
    import os
    import sys

    from simfoe.calibration import silicon
    from simfoe.errors import SpecError
    from simfoe.outputs import AtomicFiles

    path = args.silicon or silicon.default_path()
    if path is None:
        from simfoe.paths import shared_data_expected

        raise SpecError("--silicon", "", f"a silicon CSV path ({shared_data_expected()} is absent)")
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:
        raise SpecError("--jobs", jobs, "an integer >= 1 (worker processes)")
    rows = silicon.load_rows(path)  # bad file: one line, before anything runs
    tty = sys.stderr.isatty()

    def progress(i, n, row):
        sys.stderr.write(f"\rsilicon: {i + 1}/{n} {row.id[:60]:60}" + ("\n" if i + 1 == n else ""))
        sys.stderr.flush()

    preds = silicon.replay(rows.rows, progress if tty else None, workers=jobs)
    if args.cases_out:
        import pandas as pd

        with AtomicFiles("--cases-out") as w:
            pd.DataFrame(silicon.cases(preds), columns=list(silicon.CASE_COLUMNS)).to_csv(
                w.path(args.cases_out), index=False)
    rep = silicon.judge(silicon.report(preds, rows.dropped), path, tolerances)
    return {"silicon": rep, "run": command_run(args)}, (0 if rep["ok"] else 1)


def render(r: dict) -> str:
    if "silicon" in r:
        return _render_silicon(r["silicon"])
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


def _render_silicon(r: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x:.1f}"

    lines = [f"{'group':60} {'rows':>5} {'cov':>4} {'TTFT MAPE%':>10} {'MdAPE%':>7} {'TPOT MAPE%':>10} {'MdAPE%':>7}"]
    rows = list(r["by_group"].items()) + [(f"all {m} rows", v) for m, v in (r.get("by_mode") or {"agg": r}).items()]
    done = {k[len("disagg_complete_"):]: v for k, v in r.items() if k.startswith("disagg_complete_")}
    if done.get("rows"):
        rows.append(("complete disagg rows (concurrency recorded)", done))
    for g, v in rows:
        lines.append(f"{g[:60]:60} {v['rows']:>5} {v['covered']:>4} {pct(v['ttft_mape']):>10} {pct(v['ttft_mdape']):>7} "
                     f"{pct(v['tpot_mape']):>10} {pct(v['tpot_mdape']):>7}")
    share = r["ttft_within_25pct"], r["tpot_within_25pct"]
    if share[0] is not None:
        lines.append(f"within 25%: TTFT {share[0]:.0%}, TPOT {share[1]:.0%} of {r['covered']} covered rows")
    if "ok" in r:
        tol = ", ".join(f"{k}{'>=' if k.endswith('_min') else '<='}{x}" for k, x in (r["tolerance"] or {}).items())
        lines.append(f"tolerance {r['source']}: {tol or 'none'}  ok: {'yes' if r['ok'] else 'NO'}")
    for why, n in list(r["not_covered"].items()) + [(f"dropped, {k}", n) for k, n in r["duplicates"].items()]:
        lines.append(f"not covered ({n}): {why}")
    return "\n".join(lines)
