"""Compare two outputs written by simfoe (``simfoe compare RUN_A RUN_B``): which spec fields differ and
how much each metric moved.

An output is one of:

* a ``forward --json`` or ``serve --json`` object saved to a file (or a serve ``--out`` folder, whose
  ``summary.json`` is that object): its ``run`` record and ``layout`` are the specs, the rest the metrics;
* a sweep output folder (``results.parquet``, ``sweep.yaml``, ``sweep.json``): the sweep spec and
  simfoe version are the specs; rows of the two tables are matched on their input columns (an input
  whose values the two sweeps share no value of is the change itself and is left out of the match),
  and each metric's change is summarised over the matched rows.

Change of a metric = (B - A) / |A| (a fraction; None when A is 0 and B is not).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from simfoe.errors import SpecError

ALLOWED = ("a forward or serve --json output saved to a file, a serve --out folder (summary.json) or a "
           "sweep output folder (results.parquet)")
#: keys of a single-run output that are neither specs nor metrics: output paths and wall-clock cost
_NEITHER = ("files", "sim", "replica_utilization")


@dataclass(frozen=True)
class Output:
    """One loaded output: ``specs`` and (single runs) ``metrics`` flattened to ``{"a.b.c": value}``;
    a sweep's rows in ``table`` with its ``inputs`` and ``metric_columns``."""

    path: str
    kind: str  # forward | serve | sweep
    meta: dict  # simfoe_version, command (None when the output does not say)
    specs: dict
    metrics: dict = field(default_factory=dict)
    table: object = None  # pandas DataFrame of ok rows (sweeps)
    inputs: tuple[str, ...] = ()
    metric_columns: tuple[str, ...] = ()


def _flat(obj) -> dict:
    from simfoe.sweep.worker import flatten

    return flatten(obj) if obj else {}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def change(a, b) -> float | None:
    """(b - a) / |a|; 0 when both are 0; None when a is 0 and b is not."""
    if a == 0:
        return 0.0 if b == 0 else None
    return (b - a) / abs(a)


def _single(path: str, r: dict, flag: str) -> Output:
    """A forward or serve result dict -> Output (SpecError when it is neither)."""
    from simfoe.serving.api import SUMMARY_METRICS

    if {"latency_s", "breakdown_s"} <= set(r):
        kind, metric_keys = "forward", [k for k in r if k not in ("run", "layout", *_NEITHER)]
    elif {"ttft_s", "requests"} <= set(r):
        kind, metric_keys = "serve", [k for k in SUMMARY_METRICS if k in r]
    else:
        raise SpecError(flag, path, f"{ALLOWED} (this JSON has neither latency_s nor ttft_s)")
    run = dict(r.get("run") or {})
    meta = {"simfoe_version": run.pop("simfoe_version", None), "command": run.pop("command", None)}
    spec_part = {k: v for k, v in r.items() if k not in metric_keys and k not in ("run", *_NEITHER)}
    specs = {**_flat(spec_part), **_flat({"run": run})}
    metrics = {k: v for k, v in _flat({k: r[k] for k in metric_keys}).items() if _number(v)}
    return Output(path, kind, meta, specs, metrics)


def _read_json(path: Path, flag: str) -> dict:
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError(flag, str(path), f"{ALLOWED} (not JSON: {type(e).__name__})") from None
    if not isinstance(r, dict):
        raise SpecError(flag, str(path), f"{ALLOWED} (the JSON is not an object)")
    return r


def _sweep_inputs(df, kind: str) -> list[str]:
    """Input columns of a sweep table: the kind's options and its --set paths."""
    from simfoe.sweep.scenarios import get_kind

    try:
        k = get_kind(kind)
        params, roots = set(k.parameters()), set(k.override_roots)
    except SpecError:
        params, roots = set(), set()
    return [c for c in df.columns if c in params or c.split(".")[0] in roots]


def _metric_columns(df, kind: str, inputs: list[str]) -> list[str]:
    """Numeric result columns of a sweep table (the kind's metrics where it names them)."""
    from simfoe.serving.api import SUMMARY_METRICS
    from simfoe.sweep.scenarios import FORWARD_METRICS
    from simfoe.sweep.store import FIRST, VOLATILE

    named = {"forward": FORWARD_METRICS, "serve": SUMMARY_METRICS}.get(kind)
    skip = set(FIRST) | set(VOLATILE) | set(inputs) | {"simfoe_version"}
    cols = [c for c in df.columns if c not in skip and not c.startswith(("layout.", "metric."))
            and (named is None or c.split(".")[0] in named)]
    return [c for c in cols if df[c].dtype.kind in "if"]


def _sweep(path: Path, flag: str) -> Output:
    """A sweep output folder -> Output."""
    import yaml

    from simfoe.sweep.store import load_results

    meta = _read_json(path / "sweep.json", flag) if (path / "sweep.json").is_file() else {}
    raw = yaml.safe_load((path / "sweep.yaml").read_text()) if (path / "sweep.yaml").is_file() else {}
    df = load_results(path)
    kind = meta.get("kind") or (df["kind"].iloc[0] if len(df) and "kind" in df else "?")
    ok = df[df["status"] == "ok"] if "status" in df else df
    inputs = _sweep_inputs(ok, kind)
    specs = {**_flat({"spec": raw if isinstance(raw, dict) else {}}), "kind": kind}
    return Output(str(path), "sweep", {"simfoe_version": meta.get("simfoe_version"), "command": meta.get("command")},
                  specs, table=ok.reset_index(drop=True), inputs=tuple(inputs),
                  metric_columns=tuple(_metric_columns(ok, kind, inputs)))


def load_output(value, flag: str) -> Output:
    """Read one output file or folder; SpecError (naming ``flag``) when it is not one simfoe writes."""
    p = Path(str(value)).expanduser()
    if p.is_dir():
        from simfoe.sweep.store import ResultStore

        if ResultStore(p).has_results():
            return _sweep(p, flag)
        if (p / "summary.json").is_file():
            return _single(str(p), _read_json(p / "summary.json", flag), flag)
        raise SpecError(flag, str(value), f"{ALLOWED} (this folder holds neither)")
    if not p.is_file():
        raise SpecError(flag, str(value), f"{ALLOWED} (no such file or folder)")
    return _single(str(p), _read_json(p, flag), flag)


def spec_differences(a: dict, b: dict) -> list[dict]:
    """``[{"field", "a", "b"[, "change"]}]`` for every flattened spec field whose values differ."""
    out = []
    for k in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(k), b.get(k)
        if va != vb:
            d = {"field": k, "a": va, "b": vb}
            if _number(va) and _number(vb):
                d["change"] = change(va, vb)
            out.append(d)
    return out


def _single_metrics(a: Output, b: Output) -> list[dict]:
    return [{"metric": k, "a": a.metrics[k], "b": b.metrics[k], "change": change(a.metrics[k], b.metrics[k]),
             "rows": 1} for k in a.metrics if k in b.metrics]


def _match_keys(a: Output, b: Output) -> tuple[list[str], dict]:
    """Input columns both sweeps share a value of (rows are matched on them), and those they do not
    (the change: column -> [A's values, B's values])."""
    keys, varied = [], {}
    for c in a.inputs:
        if c not in b.inputs:
            continue
        va, vb = set(a.table[c].astype(str)), set(b.table[c].astype(str))
        if va & vb:
            keys.append(c)
        else:
            varied[c] = [sorted(va), sorted(vb)]
    return keys, varied


def _sweep_metrics(a: Output, b: Output) -> tuple[list[dict], dict]:
    """Per metric over matched rows: medians of A and B, median/min/max change; plus the match summary."""
    import numpy as np

    keys, varied = _match_keys(a, b)
    ta, tb = (t.assign(**{c: t[c].astype(str) for c in keys}).drop_duplicates(keys) for t in (a.table, b.table))
    m = ta.merge(tb, on=keys, suffixes=("@a", "@b")) if keys else ta.iloc[:0]
    out = []
    for c in a.metric_columns:
        if c not in b.metric_columns or not len(m):
            continue
        x, y = m[c + "@a"].to_numpy(float), m[c + "@b"].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        ch = [v for v in (change(p, q) for p, q in zip(x[ok], y[ok])) if v is not None]
        if not ok.any():
            continue
        out.append({"metric": c, "a": float(np.median(x[ok])), "b": float(np.median(y[ok])),
                    "change": float(np.median(ch)) if ch else None, "change_min": min(ch, default=None),
                    "change_max": max(ch, default=None), "rows": int(ok.sum())})
    match = {"rows_a": len(a.table), "rows_b": len(b.table), "matched_rows": len(m), "matched_on": keys,
             "inputs_that_differ": varied}
    return out, match


def compare(run_a, run_b) -> dict:
    """Compare two outputs (paths); see the module docstring. Returns a JSON-able dict."""
    a, b = load_output(run_a, "RUN_A"), load_output(run_b, "RUN_B")
    if a.kind != b.kind:
        raise SpecError("RUN_B", str(run_b), f"an output of the same kind as RUN_A ({a.kind}); this is a {b.kind} output")
    out = {"kind": a.kind, "a": {"path": a.path, **a.meta}, "b": {"path": b.path, **b.meta},
           "specs_known": bool(a.specs) and bool(b.specs), "specs": spec_differences(a.specs, b.specs)}
    if a.kind == "sweep":
        metrics, match = _sweep_metrics(a, b)
        out["match"] = match
        names_a, names_b = set(a.metric_columns), set(b.metric_columns)
    else:
        metrics = _single_metrics(a, b)
        names_a, names_b = set(a.metrics), set(b.metrics)
    out["metrics"] = metrics
    out["only_in_a"], out["only_in_b"] = sorted(names_a - names_b), sorted(names_b - names_a)
    return out
