"""`simfoe fit kernels|collectives`: fit a hardware profile's efficiencies to Vidur measurements.

  simfoe fit kernels --hardware h100-sxm --vidur ../shared/data/vidur [--write] [--json]
  simfoe fit collectives --hardware h100-sxm --vidur ../shared/data/vidur [--write] [--json]
  simfoe fit dispatch --hardware h100-sxm [--write] [--json]   (DeepEP kernels, AIConfigurator H100 tables)
  simfoe fit nccl --hardware h100-sxm [--write] [--json]       (NVLink/NVLS/all-to-all terms, nccl-tests table;
                                                                writes h100-sxm, h200-sxm and their -measured;
                                                                b200-sxm, gb200-nvl72: their own tables and profile)
  simfoe fit silicon [--silicon PATH] [--jobs N] [--engine PROFILE ...] [--write] [--json]
                                      (engine profiles' per-request and per-iteration overheads, real serving
                                       benchmarks; writes simfoe/specs/engines/*.yaml)

Without --write nothing is changed; with it the fitted section (and its provenance) is written into
hwprofiles/<hardware>.yaml through simfoe.specs.profile_io.update_profile.
"""
from __future__ import annotations

from simfoe.cli.common import add_json_flag, table

TARGETS = ("kernels", "collectives", "dispatch", "nccl", "silicon")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit",
        help="fit kernel or collective efficiencies of a hardware profile to measured data",
        description="Fit a hardware profile's efficiencies to measured data and report fitted/held-out errors "
        "(MAPE, %): kernels and collectives to Vidur's public measurements (--vidur); dispatch to the DeepEP "
        "normal and low-latency tables and nccl to the nccl-tests table in ../shared/data/aiconfigurator "
        "(H100; nccl also B200 and GB200).",
    )
    p.add_argument("target", help=" | ".join(TARGETS))
    p.add_argument("--hardware", default=None, help="hardware preset to fit (h100-sxm, a100-sxm, h200-sxm); "
                   "required but for silicon")
    p.add_argument("--silicon", default=None, metavar="PATH",
                   help="silicon: an AIConfigurator silicon CSV (default ../shared/data/aiconfigurator/silicon/h100_sxm.csv)")
    p.add_argument("--jobs", type=int, default=None, help="silicon: worker processes (default: the CPU count)")
    p.add_argument("--engine", action="append", default=None, metavar="PROFILE",
                   help="silicon: fit only this engine profile (repeatable; default: every profile with covered rows)")
    p.add_argument("--vidur", default=None,
                   help="Vidur profiling data folder (default: ../shared/data/vidur when present)")
    p.add_argument("--write", action="store_true", help="write the fitted section into hwprofiles/<hardware>.yaml")
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def _vidur_dir(arg):
    from pathlib import Path

    from simfoe.errors import SpecError
    from simfoe.paths import shared_data_dir

    if arg:
        p = Path(arg)
        if not p.is_dir():
            raise SpecError("--vidur", arg, "an existing folder of Vidur profiling data")
        return p
    d = shared_data_dir()
    if d is None or not (d / "vidur").is_dir():
        raise SpecError("--vidur", None, "a folder of Vidur profiling data (../shared/data/vidur is absent)")
    return d / "vidur"


def run(args) -> dict:
    import importlib

    from simfoe.errors import SpecError

    if args.target not in TARGETS:
        raise SpecError("fit", args.target, "allowed: " + ", ".join(TARGETS))
    if args.target == "silicon":
        return _fit_silicon(args)
    for flag in ("silicon", "jobs", "engine"):
        if getattr(args, flag) is not None:
            raise SpecError("--" + flag, getattr(args, flag), "only with fit silicon")
    if args.hardware is None:
        raise SpecError("--hardware", None, f"a hardware preset to fit (required for fit {args.target})")
    if args.target == "dispatch":
        from simfoe.costs.fit_dispatch import TABLE_DIR, check_hardware, fit_report
        from simfoe.paths import shared_data_dir

        check_hardware(args.hardware)  # before the data: a wrong profile is wrong with or without the tables
        shared = shared_data_dir()
        if shared is None or not (shared / TABLE_DIR).is_dir():
            raise SpecError("fit dispatch", None, f"the measured DeepEP tables in ../shared/data/{TABLE_DIR}",
                            problem="not found")
        return {"target": "dispatch", **fit_report(args.hardware, shared, args.write)}
    if args.target == "nccl":
        return _fit_nccl(args)
    vidur = _vidur_dir(args.vidur)
    if args.target == "kernels":
        from simfoe.costs.fit_kernels import run_fit
    else:
        try:
            mod = importlib.import_module("simfoe.costs.fit_collectives")
        except ModuleNotFoundError as e:
            if e.name != "simfoe.costs.fit_collectives":
                raise
            raise SpecError("fit", "collectives", "not available in this installation "
                            "(simfoe.costs.fit_collectives is missing); allowed: kernels") from None
        run_fit = getattr(mod, "run_fit", None)
        if run_fit is None:
            raise SpecError("fit", "collectives", "simfoe.costs.fit_collectives has no run_fit; allowed: kernels")
        # fit_collectives reads <dir>/{h100_dgx,a100_dgx}/*.csv: accept the Vidur root as well
        if (vidur / "network").is_dir():
            vidur = vidur / "network"
    report = run_fit(args.hardware, vidur, args.write)
    return {"target": args.target, **report}


def _fit_nccl(args) -> dict:
    """NVLink side of h100-sxm, b200-sxm or gb200-nvl72 fitted to its nccl-tests on one node
    (simfoe.costs.fit_nccl_tests)."""
    from simfoe.costs.fit_nccl_tests import SYSTEMS, run_fit, table_of
    from simfoe.errors import SpecError
    from simfoe.paths import shared_data_dir

    if args.hardware not in SYSTEMS:
        raise SpecError("--hardware", args.hardware, ", ".join(SYSTEMS) + " (the systems with nccl-tests tables; "
                        "for h100-sxm --write also updates " + ", ".join(SYSTEMS["h100-sxm"].targets[1:]) + ")")
    shared, name = shared_data_dir(), "../shared/data/" + table_of(args.hardware).as_posix()
    if shared is None or not (shared / table_of(args.hardware)).is_file():
        raise SpecError("fit nccl", None, f"the nccl-tests table {name}", problem="not found")
    return {"target": "nccl", "hardware": args.hardware, "data": name, **run_fit(shared, args.write, args.hardware)}


def _fit_silicon(args) -> dict:
    """Engine profiles' overheads fitted to real serving benchmarks (simfoe.calibration.fit_silicon)."""
    import os
    import sys

    from simfoe.calibration import fit_silicon, silicon
    from simfoe.errors import SpecError

    if args.hardware is not None or args.vidur is not None:
        raise SpecError("--hardware" if args.hardware is not None else "--vidur", args.hardware or args.vidur,
                        "omitted with fit silicon (each row names its hardware)")
    path = args.silicon or silicon.default_path()
    if path is None:
        raise SpecError("--silicon", None, "a silicon CSV (../shared/data is absent)")
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if not (isinstance(jobs, int) and jobs >= 1):
        raise SpecError("--jobs", jobs, "an integer >= 1 (worker processes)")
    silicon.load_rows(path)  # a bad file is refused before anything runs
    progress = None
    if sys.stderr.isatty() and not args.json:
        def progress(i, n, row):
            print(f"\rfit silicon: {i + 1}/{n} rows", end="", file=sys.stderr, flush=True)
    rep = fit_silicon.fit(path, workers=jobs, progress=progress, engines=args.engine)
    rep["written"] = fit_silicon.write(rep) if args.write else None
    return {"target": "silicon", **rep}


def _render_silicon(r: dict) -> str:
    """Text of a fit silicon report: parameters per engine, then errors before and after, fitted and held out."""
    lines = [f"fit silicon from {r['data']} ({r['rows']} covered rows; held out: {r['held_out']['rows']} rows, "
             f"{r['held_out']['rule']})"]
    rows = [[e, f"{p['request_s'] * 1e3:.2f}", f"{p['step_s'] * 1e3:.3f}", f"{p['step_per_seq_s'] * 1e6:.2f}",
             "yes" if r.get("accepted", {}).get(e, {}).get("kept", True) else "no (replayed worse)",
             ", ".join(r["held_out"]["models"].get(e) or ["-"])] for e, p in r["params"].items()]
    lines.append(table(rows, ["engine", "request ms", "step ms", "per seq us", "kept", "held-out model"]))
    rows = []
    for when in ("before", "linearised", "after"):
        for e, v in [("all", r[when]), *r[when]["by_engine"].items()]:
            for part in ("fitted", "held_out"):
                s = v[part]
                rows.append([when, e, part, s["rows"], *(_p(s.get(f"{w}_{k}")) for w in ("ttft", "tpot")
                                                         for k in ("mape", "mdape")),
                             *(_share(s.get(f"{w}_within_25pct")) for w in ("ttft", "tpot"))])
    lines.append(table(rows, ["", "engine", "rows", "n", "TTFT MAPE", "TTFT MdAPE", "TPOT MAPE", "TPOT MdAPE",
                              "TTFT <=25%", "TPOT <=25%"]))
    lines.append(f"written: {', '.join(r['written'])}" if r.get("written") else "not written (use --write)")
    return "\n".join(lines)


def _share(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def render(result: dict) -> str:
    if result.get("target") == "silicon":
        return _render_silicon(result)
    lines = [f"fit {result.get('target')} for {result.get('hardware')} from {result.get('data', '-')}"]
    if "mape_pct" not in result:  # another fitter's report: print it as indented YAML
        import yaml

        from simfoe.outputs import json_safe

        body = {k: v for k, v in result.items() if k not in ("target", "hardware")}
        return lines[0].replace(" from -", "") + "\n" + yaml.safe_dump(json_safe(body), sort_keys=False, width=120).rstrip()
    mape = result.get("mape_pct")
    if isinstance(mape, dict) and all(isinstance(v, dict) for v in mape.values()):
        rows = [[op, _p(v.get("train")), _p(v.get("held_out")), _p(v.get("held_out_p90")), v.get("rows", "-")]
                for op, v in mape.items()]
        lines.append(table(rows, ["op", "train MAPE", "held-out MAPE", "held-out p90", "rows"]))
    if result.get("held_out_groups"):
        lines.append("held out: " + ", ".join(result["held_out_groups"]))
    params = result.get("params")
    if isinstance(params, dict):
        for fam, vals in params.items():
            if isinstance(vals, dict):
                lines.append(f"{fam}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in vals.items()))
            else:
                lines.append(f"{fam}: {vals}")
    lines.append(f"written: {result['written']}" if result.get("written") else "not written (use --write)")
    return "\n".join(lines)


def _p(x) -> str:
    return "-" if x is None else f"{x:.2f}%"
