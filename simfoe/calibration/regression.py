"""Stored measurements vs current predictions: the CI calibration regression (``simfoe validate``).

Sources (each judged against its tolerance in validation/tolerances.yaml):

* ``<set>:<op>`` for every measurement set in validation/data/ (kernels.csv rows at 1 thread:
  gemm, attention, memcopy, grouped_ffn; collectives.csv rows at world size 2, not oversubscribed),
  predicted with the profile the tolerances file assigns to the set;
* ``vidur:<gpu>:gemm`` and ``vidur:<dataset>:all_reduce`` (sizes >= 1 MB): Vidur's H100/A100 operator
  and NCCL data, read in place from ``<shared>/vidur`` when present (simfoe.paths.shared_data_dir);
* ``deepep:h100_sxm:<normal|ll>:<op>:<n>n`` (and ``:shapes``): DeepEP dispatch/combine on 1-8 H100 nodes
  (AIConfigurator's SGLang tables, read in place from ``<shared>/aiconfigurator``), predicted with h100-sxm
  (:func:`deepep_rows`);
* ``nccl:<system>:<op>[:<n>gpu|:small]``: nccl-tests on one node of H100, B200 or GB200 (``h100_sxm``,
  ``b200_sxm``, ``gb200``; AIConfigurator's tables, read in place from ``<shared>/aiconfigurator``), predicted
  with h100-sxm, b200-sxm, gb200-nvl72 (:func:`nccl_rows`, :data:`TABLE_SYSTEMS`);
* ``kernels:<system>:<op>:<kind>:<fitted|held_out>``: the same systems' kernel tables (AIConfigurator's SGLang
  GEMM, fused MoE, attention, MLA) predicted with the stored profile fitted from them (h100-sxm-tables,
  b200-sxm, gb200-nvl72), split as its fit held shapes out (:func:`kernel_table_rows`);
* ``testbed:<profile>``: the stored testbed measurements (reports/calibration/testbed-<profile>.json, one per
  machine kind, each naming its profile; tolerance ``testbed:<profile>``) against the current
  forward-model predictions, judged by the MoE/FoE speedup error.

A source fails when its MAPE (%) exceeds its ``mape`` tolerance (or ``speedup_error`` for the testbed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from simfoe.errors import SpecError
from simfoe.inputs import check_text_file
from simfoe.paths import REPO_ROOT

TOLERANCES = REPO_ROOT / "validation" / "tolerances.yaml"
DATA_DIR = REPO_ROOT / "validation" / "data"
TESTBED_DIR = REPO_ROOT / "reports" / "calibration"
VIDUR_GPU = {"h100-sxm": ("h100", "h100_dgx"), "a100-sxm": ("a100", "a100_dgx")}


def testbed_result_path(hardware: str, folder: Path = TESTBED_DIR) -> Path:
    """Where the stored testbed run measured on ``hardware``'s machine kind lives."""
    return folder / f"testbed-{hardware}.json"


TOLERANCE_KEYS = ("measurement_sets", "sources")


def load_tolerances(path: str | Path = TOLERANCES, field: str = "tolerances") -> dict:
    """The tolerance file, parsed and checked: a UTF-8 YAML mapping of ``measurement_sets`` and/or
    ``sources`` mappings (a typo must not turn every source into a silent pass). Errors name ``field``."""
    what = "a tolerance YAML file with measurement_sets and sources, like validation/tolerances.yaml"
    p = Path(path)
    if not p.is_file():
        raise SpecError(field, str(path), f"{what} ({'not a file' if p.exists() else 'no such file'})")
    check_text_file(field, path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SpecError(field, str(path), f"{what} (invalid YAML" + (f" at line {mark.line + 1})" if mark else ")")) from None
    if not isinstance(data, dict) or not data:
        raise SpecError(field, str(path), f"{what} (the file is empty or not a mapping)")
    unknown = [k for k in data if k not in TOLERANCE_KEYS]
    if unknown:
        raise SpecError(field, str(path), f"{what} (unknown key {unknown[0]!r})")
    for k in TOLERANCE_KEYS:
        if data.get(k) is not None and not isinstance(data[k], dict):
            raise SpecError(field, str(path), f"{what} ({k} must be a mapping)")
    return data


def judge(summary: dict, tolerance: dict | None) -> tuple[dict | None, bool]:
    """(the bounds of ``tolerance``, whether ``summary`` meets them). A key ``X`` bounds ``summary[X]``
    from above, a key ``X_min`` from below (e.g. ``coverage_min``); a metric absent or None fails; no
    tolerance (None) passes. ``reason`` is the tolerance's text, not a bound."""
    if tolerance is None:
        return None, True
    bounds = {k: v for k, v in tolerance.items() if k != "reason"}

    def meets(k, v):
        low = k.endswith("_min")
        x = summary.get(k[:-4] if low else k)
        return x is not None and (x >= v if low else x <= v)

    return bounds, all(meets(k, v) for k, v in bounds.items())


def _rows(source: str, op: str, pred, meas) -> list[dict]:
    return [{"source": source, "op": op, "predicted_s": float(p), "measured_s": float(m)} for p, m in zip(pred, meas)]


def set_rows(set_dir: Path, hw) -> list[dict]:
    """Predicted vs measured rows of one measurement set (1-thread kernels, world-size-2 collectives)."""
    from simfoe.calibration.fit_gpu import GROUPED_VARIANT
    from simfoe.calibration.fit_profile import ATTENTION_VARIANT, load_set, predict_collective_row, predict_kernel_row

    k, c, _ = load_set(set_dir)
    name = set_dir.name
    out = []
    k = k[(k.threads == 1) | k.threads.isna()]
    # attention: the GQA SDPA variant simfoe's attention families model (fit_profile.ATTENTION_VARIANT);
    # MHA-through-SDPA and expand-KV variants are different kernels with no family of their own
    k = k[(k.op != "attention") | k.variant.astype(str).str.endswith(":" + ATTENTION_VARIANT)]
    # grouped FFN: where the set timed the one-kernel grouped GEMM (CUDA), that is what simfoe's expert cost
    # models; the per-expert loop beside it (a launch per expert) is judged as its own source
    has_grouped = ((k.op == "grouped_ffn") & (k.variant.astype(str) == GROUPED_VARIANT)).any()
    for r in k.itertuples(index=False):
        p = predict_kernel_row(hw, r)
        if p is not None:
            op = r.op if r.op != "attention" else "attention_" + str(r.variant).split(":")[0]
            if r.op == "grouped_ffn" and has_grouped and str(r.variant) != GROUPED_VARIANT:
                op = "grouped_ffn_loop"
            if r.op == "gemm" and str(r.dtype) == "fp8":  # its own family and tolerance (kernels.gemm_fp8)
                op = "gemm_fp8"
            out += _rows(f"{name}:{op}", f"{r.op}:{r.variant}:{r.dtype}", [p], [r.t_s])
    if not c.empty:
        cc = c[(c.world_size == 2) & (c.oversubscribed == 0)]
        for r in cc.itertuples(index=False):
            out += _rows(f"{name}:collectives", r.collective, [predict_collective_row(hw, r)], [r.median_s])
    return out


def vidur_rows(vidur: Path, hardware: str, missing: dict | None = None) -> list[dict]:
    """Vidur GEMM rows (all shapes) and one-node all-reduce rows (>= 1 MB) predicted with ``hardware``;
    an absent all-reduce file is noted in ``missing`` (source -> path looked for)."""
    from simfoe.costs import fit_collectives as fc
    from simfoe.costs import fit_kernels as fk
    from simfoe.costs.collectives import predict
    from simfoe.specs.io import load_hardware

    gpu, dataset = VIDUR_GPU[hardware]
    hw = load_hardware(hardware)
    out = []
    df = fk.load_rows(fk.resolve_gpu_dir(vidur, gpu))
    g = df[df.kind == "gemm"]
    out += _rows(f"vidur:{gpu}:gemm", "gemm", fk.predict(hw, g), g.t_s)
    net = vidur / "network" if (vidur / "network").is_dir() else vidur
    if (net / dataset / "all_reduce.csv").is_file():
        ar = fc.load_vidur(net, dataset, "all_reduce")
        # one node only: h100_dgx has no multi-node all_reduce, and a100_dgx's 2-node rows (5.8 GB/s per GPU)
        # are not the DGX A100 network the profile describes (simfoe.costs.fit_collectives)
        ar = ar[(ar.bytes >= fc.MIN_BYTES) & (ar.nodes == 1)]
        cache: dict = {}
        pred = []
        for r in ar.itertuples(index=False):
            key = (int(r.num_workers), float(r.bytes), int(r.nodes))
            if key not in cache:
                cache[key] = predict(hw, "all_reduce", key[0], key[1], "auto", key[2])
            pred.append(cache[key])
        out += _rows(f"vidur:{dataset}:all_reduce", "all_reduce", pred, ar.time_s)
    elif missing is not None:
        missing[f"vidur:{dataset}:all_reduce"] = str(net / dataset / "all_reduce.csv")
    return out


DEEPEP_PROFILE = "h100-sxm"


def deepep_rows(shared: Path, hw) -> list[dict]:
    """DeepEP dispatch/combine on H100 (AIConfigurator's SGLang tables, simfoe.costs.fit_dispatch) predicted
    with ``hw``: ``deepep:h100_sxm:<normal|ll>:<op>:<n>n`` per node count (0.5.6.post2; normal at DeepEP's
    default 20 SMs), ``...:<op>:shapes`` for the one-node table of other shapes (0.5.12)."""
    from simfoe.costs import fit_dispatch as fd

    df = fd.load_rows(shared)
    df = df[(df["mode"] == "ll") | (df.sms == fd.DEFAULT_SMS)].reset_index(drop=True)
    pred = fd.predict_rows(hw, df)
    out = []
    where = np.where(df.table.str.startswith("0.5.12"), "shapes", df.nodes.astype(str) + "n")
    for (mode, op, w), idx in df.groupby([df["mode"], df.op, where]).groups.items():
        out += _rows(f"deepep:h100_sxm:{mode}:{op}:{w}", f"deepep-{mode}:{op}", pred[idx], df.loc[idx, "measured_s"])
    return out


NCCL_PROFILE = "h100-sxm"
#: AIConfigurator system -> (profile judged on its nccl-tests table, profile judged on its kernel tables): each
#: fitted from them (simfoe fit nccl, simfoe calibrate --from-tables)
TABLE_SYSTEMS = {"h100_sxm": (NCCL_PROFILE, "h100-sxm-tables"), "b200_sxm": ("b200-sxm", "b200-sxm"),
                 "gb200": ("gb200-nvl72", "gb200-nvl72")}


def nccl_rows(table: Path, hw, system: str = "h100_sxm") -> list[dict]:
    """nccl-tests rows of one node (simfoe.costs.fit_nccl_tests) predicted with ``hw``. Sources, N = the table's
    largest GPU count (8; GB200: 4): ``nccl:<system>:<op>`` = N GPUs, >= 1 MiB; ``...:<op>:<n>gpu`` = fewer GPUs,
    >= 1 MiB; ``...:<op>:small`` = N GPUs, < 1 MiB (the latency regime)."""
    from simfoe.costs import fit_nccl_tests as fn

    df = fn.load_nccl_tests(table)
    pred = fn.predict_rows(hw, df)
    most = int(df["n_gpus"].max())
    out = []
    for (op, n, big), idx in df.groupby(["op", "n_gpus", df["bytes"] >= fn.MIN_BYTES]).groups.items():
        if n != most and not big:
            continue
        src = f"nccl:{system}:{op}" + ("" if n == most and big else f":{n}gpu" if big else ":small")
        out += _rows(src, op, pred[idx], df.loc[idx, "time_s"])
    return out


KERNEL_TABLES = "aiconfigurator/h100_sxm"
KERNEL_TABLES_PROFILE = "h100-sxm-tables"


def kernel_table_rows(root: Path, hw, system: str = "h100_sxm") -> list[dict]:
    """Kernel tables (AIConfigurator's SGLang GEMM, fused MoE, attention and MLA tables; records and hold-out of
    simfoe.calibration.fit_tables) predicted with ``hw``: ``kernels:<system>:<op>:<kind>:<split>``, split
    ``fitted`` (shapes the stored profile was fitted on) or ``held_out``."""
    from simfoe.calibration import fit_tables as ft

    out = []
    for part in ft.table_parts(ft.find_tables(root, "sglang")):
        if part.rows is None or part.rows.empty:
            continue
        for split, rows in ft.split_rows(part):
            out += _rows(f"kernels:{system}:{part.key}:{split}", part.family, ft.predict_rows(hw, rows), rows.t_s)
    return out


def table_sources(hardware, hw_overrides, missing: dict, skipped: dict) -> list[dict]:
    """Rows of the nccl-tests and kernel-table sources of every system in TABLE_SYSTEMS (H100's when ``hardware``
    names h100-sxm; all when None); an absent table is named in ``missing`` / ``skipped`` (H100: keys nccl,
    kernels; others nccl:<system>, kernels:<system>)."""
    from simfoe.costs.fit_nccl_tests import table_of
    from simfoe.paths import shared_data_expected
    from simfoe.specs.io import load_hardware

    rows: list[dict] = []
    for system, (nccl_prof, kern_prof) in TABLE_SYSTEMS.items():
        if hardware is not None and nccl_prof not in hardware:
            continue
        tag = "" if system == "h100_sxm" else f":{system}"
        table = shared_data_expected() / table_of(nccl_prof)
        if table.is_file():
            rows += nccl_rows(table, load_hardware(nccl_prof, hw_overrides), system)
        else:
            _absent("nccl" + tag, table, missing, skipped)
        root = shared_data_expected() / "aiconfigurator" / system  # judged with the profile fitted from them
        if (root / "gemm").is_dir():
            rows += kernel_table_rows(root, load_hardware(kern_prof, hw_overrides), system)
        else:
            _absent("kernels" + tag, root, missing, skipped)
    return rows


def _absent(key: str, path, missing: dict, skipped: dict, why: str = "{} absent") -> None:
    """Record source ``key`` as not found: ``missing`` names the path looked for, ``skipped`` says why."""
    missing[key] = str(path)
    skipped[key] = why.format(missing[key])


def testbed_results(folder: Path = TESTBED_DIR) -> list[Path]:
    """Stored testbed runs: reports/calibration/testbed-<profile>.json, one per machine kind."""
    return sorted(folder.glob("testbed-*.json")) if folder.is_dir() else []


def testbed_source(path: Path) -> tuple[list[dict], dict] | None:
    """Stored testbed measurements vs current predictions on the profile they name: (rows, comparison)
    or None if absent. Rows carry the source ``testbed:<profile>``."""
    import json

    from simfoe.calibration import testbed

    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    measured = {"cases": [{"arch": c["arch"], "phase": c["phase"], "batch": c["batch"], "seq_len": c["seq_len"],
                           "cpu_median_s": c["measured_s"], "wall_median_s": c["measured_wall_s"],
                           "wall_min_s": c["measured_wall_min_s"],
                           **{k: c[k] for k in ("expert_counts", "probe_cpu_median_s") if k in c},
                           **({"breakdown_cpu_s": c["breakdown"]["measured_cpu_s"],
                               "breakdown_wall_s": c["breakdown"]["measured_wall_s"]} if "breakdown" in c else {})}
                          for c in stored["cases"]], "env": stored.get("env", {})}
    cmp = testbed.run(testbed.DEFAULT_MODEL, stored.get("hardware", testbed.DEFAULT_HARDWARE), measured=measured)
    src = f"testbed:{cmp['hardware']}"
    rows = [{"source": src, "op": f"{c['arch']}:{c['phase']}:{c['batch']}", "predicted_s": c["predicted_s"],
             "measured_s": c["measured_s"]} for c in cmp["cases"]]
    return rows, cmp


def _summ(rows: list[dict]) -> dict:
    p = np.array([r["predicted_s"] for r in rows])
    m = np.array([r["measured_s"] for r in rows])
    ape = np.abs(p / m - 1) * 100
    return {"n": int(ape.size), "mape": float(ape.mean()), "max_ape": float(ape.max()),
            "bias_pct": float((np.exp(np.mean(np.log(p / m))) - 1) * 100)}


def validate(vidur: str | Path | None = None, hardware: list[str] | None = None, include_sets: bool = True,
             include_testbed: bool = True, tolerances: str | Path | dict = TOLERANCES,
             hw_overrides: list[str] | None = None) -> dict:
    """Run every source; returns {"cases", "mape", "max_ape", "by_source", "failed", "skipped", "missing",
    "rows"}; ``missing`` maps each source not found to the path looked for (its rows are not judged).

    ``vidur``: Vidur data folder (default <shared>/vidur when present); ``hardware``: Vidur profiles
    to check (default h100-sxm, a100-sxm); ``hw_overrides``: --set items applied to every profile;
    ``tolerances``: the tolerance file, or its already loaded contents (:func:`load_tolerances`).
    """
    tol = tolerances if isinstance(tolerances, dict) else load_tolerances(tolerances)
    extra: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    missing: dict[str, str] = {}  # source (or group) -> the path looked for and not found
    rows = _measurement_set_rows(tol, hw_overrides, skipped) if include_sets else []
    rows += _vidur_source(vidur, hardware, hw_overrides, missing, skipped)
    if hardware is None or DEEPEP_PROFILE in hardware:
        rows += _deepep_source(hw_overrides, missing, skipped)
    rows += table_sources(hardware, hw_overrides, missing, skipped)
    if include_testbed:
        rows += _testbed_sources(extra, missing, skipped)
    if not rows:
        raise SpecError("validate", None, "at least one source (validation/data sets or Vidur data)",
                        problem="found no data to check")
    by = _by_source(rows, extra, tol)
    allsum = _summ(rows)
    cases = [{"source": src, **{k: v for k, v in s.items() if k in ("n", "mape", "max_ape", "ok")}} for src, s in by.items()]
    return {"cases": cases, "mape": allsum["mape"], "max_ape": allsum["max_ape"], "by_source": by,
            "failed": [s for s, v in by.items() if not v["ok"]], "skipped": skipped, "missing": missing, "rows": rows}


def _measurement_set_rows(tol: dict, hw_overrides, skipped: dict) -> list[dict]:
    """Rows of every validation/data set with a kernels.csv, on the profile validation/tolerances.yaml assigns it
    (a set with none is named in ``skipped``)."""
    from simfoe.specs.io import load_hardware

    rows: list[dict] = []
    for d in sorted(DATA_DIR.iterdir()) if DATA_DIR.is_dir() else []:
        if not (d / "kernels.csv").is_file():
            continue
        hwname = (tol.get("measurement_sets") or {}).get(d.name, {}).get("hardware")
        if hwname is None:
            skipped[d.name] = "no profile assigned in validation/tolerances.yaml measurement_sets"
            continue
        rows += set_rows(d, load_hardware(hwname, hw_overrides))
    return rows


def _vidur_source(vidur, hardware, hw_overrides, missing: dict, skipped: dict) -> list[dict]:
    """Rows of the Vidur profiles ``hardware`` (default all of VIDUR_GPU) from the folder ``vidur`` (default
    <shared>/vidur; absent: recorded in ``missing``)."""
    from simfoe.paths import shared_data_dir, shared_data_expected
    from simfoe.specs.io import load_hardware

    vdir = Path(vidur) if vidur else (shared_data_dir() / "vidur" if shared_data_dir() else None)
    if vidur and not Path(vidur).is_dir():
        raise SpecError("--vidur", str(vidur), "an existing folder of Vidur profiling data")
    if vdir is None or not vdir.is_dir():
        _absent("vidur", shared_data_expected() / "vidur", missing, skipped)
        return []
    rows: list[dict] = []
    for h in hardware or list(VIDUR_GPU):
        if h not in VIDUR_GPU:
            raise SpecError("--hardware", h, "allowed: " + ", ".join(VIDUR_GPU))
        if hw_overrides:
            from unittest import mock

            hwo = load_hardware(h, hw_overrides)
            with mock.patch("simfoe.specs.io.load_hardware", lambda *a, **k: hwo):  # noqa: B023 (used in the with)
                rows += vidur_rows(vdir, h, missing)
        else:
            rows += vidur_rows(vdir, h, missing)
    return rows


def _deepep_source(hw_overrides, missing: dict, skipped: dict) -> list[dict]:
    """Rows of the DeepEP tables on DEEPEP_PROFILE (absent: recorded in ``missing``)."""
    from simfoe.costs.fit_dispatch import TABLE_DIR
    from simfoe.paths import shared_data_expected
    from simfoe.specs.io import load_hardware

    if not (shared_data_expected() / TABLE_DIR).is_dir():
        _absent("deepep", shared_data_expected() / TABLE_DIR, missing, skipped)
        return []
    return deepep_rows(shared_data_expected(), load_hardware(DEEPEP_PROFILE, hw_overrides))


def _testbed_sources(extra: dict, missing: dict, skipped: dict) -> list[dict]:
    """Rows of every stored testbed run; each one's speed-up errors go to ``extra`` under its source."""
    stored = testbed_results()
    if not stored:
        _absent("testbed", TESTBED_DIR / "testbed-*.json", missing, skipped, "no {}")
    rows: list[dict] = []
    for path in stored:
        tb = testbed_source(path)
        rows += tb[0]
        extra[tb[0][0]["source"]] = {"speedup_error": tb[1]["speedup_error"],
                                     "speedup_error_max": tb[1]["speedup_error_max"]}
    return rows


def _by_source(rows: list[dict], extra: dict, tol: dict) -> dict[str, dict]:
    """Each source's error summary (:func:`_summ`, plus ``extra``), judged against its tolerance."""
    by: dict[str, dict] = {}
    for src in sorted({r["source"] for r in rows}):
        s = _summ([r for r in rows if r["source"] == src])
        s.update(extra.get(src, {}))
        s["tolerance"], s["ok"] = judge(s, (tol.get("sources") or {}).get(src))
        by[src] = s
    return by
