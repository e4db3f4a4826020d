"""What-if analysis for notebooks: describe a scenario once, change fields, compare side by side.

>>> import simfoe.whatif as wi
>>> base = wi.scenario("forward", model="mixtral-8x7b", hardware="h100-sxm", phase="decode", batch=64)
>>> df = wi.whatif(base, foe={"arch": "foe"}, ib_x2={"hardware.network.nic_bandwidth": "x2"})  # doctest: +SKIP
>>> wi.plot(df, "latency_s")  # doctest: +SKIP

The module itself is callable: ``simfoe.whatif(base, **changes)`` is :func:`whatif`.

* A :class:`Scenario` is one run: ``kind`` ``forward`` (one pass: model, hardware, nodes, arch, phase,
  batch, seq_len, routing), ``serve`` (a trace at a rate, or a closed loop with ``concurrency``: TTFT/TBT/throughput/goodput) or
  ``pipeline`` (an ALTO stage graph: spec, mode, rate, duration, pipeline_routing).
* A change is a mapping: keys are Scenario fields (``arch``, ``nodes``, ``routing``, ``batch`` ...) or
  dotted ``--set`` paths (``hardware.network.nic_bandwidth``, ``model.dtype``,
  ``placement.foe.clusters``; for pipelines ``stages.NAME.KEY``). A value ``"x2"`` / ``"x0.5"``
  multiplies the base value of a hardware/model/placement path.
* :func:`run` returns one flat dict of metrics; :func:`whatif` and :func:`sweep` return pandas
  DataFrames (one row per scenario); :func:`plot` draws one column in one call.

Units: seconds, bytes, bytes/s, requests/s (as everywhere in simfoe).
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass, fields, replace
from typing import Any

from simfoe.errors import SpecError

KINDS = ("forward", "serve", "pipeline")
SPEC_ROOTS = ("hardware", "model", "placement")


@dataclass(frozen=True)
class Scenario:
    """One what-if run. Fields not used by ``kind`` are ignored. ``overrides``: ``--set`` strings."""

    kind: str = "forward"
    model: str = "mixtral-8x7b"
    hardware: str = "h100-sxm"
    nodes: int = 1
    arch: str = "moe"
    phase: str = "decode"
    batch: int = 64
    seq_len: int = 2048
    routing: str = "uniform"
    trace: str = "longbench"
    rate: float | None = 1.0
    duration: float | None = 120.0
    replicas: int = 1
    slo_ttft: float | None = None
    slo_tbt: float | None = None
    token_budget: int = 8192  # per DP attention rank (budget_scope "rank") or per instance
    budget_scope: str = "rank"
    rank_router: str = "vllm-lb"  # which DP attention rank a request is pinned to
    # a closed loop instead of trace/rate/duration (simfoe.workloads.closed_loop.ClosedLoop)
    concurrency: int | None = None
    isl: int | None = None
    osl: int | None = None
    random_range_ratio: float | None = None
    num_prompts: int | None = None
    warmup: int | None = None
    spec: str = "factool"
    mode: str = "stream"
    pipeline_routing: str | None = None
    overrides: tuple[str, ...] = ()
    seed: int = 0

    def with_changes(self, changes: dict | None = None, **kw) -> Scenario:
        """A copy with Scenario fields replaced and dotted paths added to ``overrides``."""
        ch = {**(changes or {}), **kw}
        names = {f.name for f in fields(self)}
        direct, ov = {}, list(self.overrides)
        for k, v in ch.items():
            if k in names and k != "overrides":
                direct[k] = v
            elif k == "overrides":
                ov += list(v)
            elif "." in k:
                if isinstance(v, str) and v[:1] in ("x", "*") and _is_num(v[1:]):
                    v = _base_value(self, k) * float(v[1:])
                ov = [o for o in ov if o.split("=", 1)[0].strip() != k] + [f"{k}={_fmt(v)}"]
            else:
                raise SpecError("whatif change", k, "a Scenario field (" + ", ".join(sorted(names)) +
                                ") or a dotted path such as hardware.network.nic_bandwidth")
        return replace(self, **direct, overrides=tuple(ov))


def _is_num(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def scenario(kind: str = "forward", **fields_) -> Scenario:
    """A :class:`Scenario` of ``kind`` (forward | serve | pipeline); keyword changes as in
    :meth:`Scenario.with_changes`."""
    if kind not in KINDS:
        raise SpecError("kind", kind, "one of " + ", ".join(KINDS))
    return Scenario(kind=kind).with_changes(fields_)


def load(kind: str, name: str, overrides=()):
    """A validated spec: ``kind`` hardware | model | pipeline; ``name`` a preset or YAML path."""
    from simfoe.specs.io import load_hardware, load_model

    if kind == "hardware":
        return load_hardware(name, list(overrides))
    if kind == "model":
        return load_model(name, list(overrides))
    if kind == "pipeline":
        from simfoe.pipelines.api import load_pipeline

        return load_pipeline(name, tuple(overrides))
    raise SpecError("kind", kind, "hardware, model or pipeline")


def _base_value(s: Scenario, path: str) -> float:
    """Current value of a hardware/model/placement dotted path in scenario ``s``."""
    from simfoe.specs.io import build_placement

    root, _, rest = path.partition(".")
    if root not in SPEC_ROOTS:
        raise SpecError("whatif change", path, "multipliers (x2) need a hardware., model. or placement. path")
    if root == "placement":
        obj = build_placement(s.arch, s.nodes, list(s.overrides))
    else:
        obj = load(root, getattr(s, root), s.overrides)
    cur: Any = obj.model_dump()
    for k in rest.split("."):
        if not isinstance(cur, dict) or k not in cur:
            raise SpecError("whatif change", path, "an existing field")
        cur = cur[k]
    if not isinstance(cur, (int, float)) or isinstance(cur, bool):
        raise SpecError("whatif change", path, f"a numeric field to multiply (it is {cur!r})")
    return float(cur)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def run(s: Scenario) -> dict:
    """Run one scenario; a flat dict of its metrics (seconds, bytes, requests/s)."""
    if s.kind == "forward":
        from simfoe.api import forward

        r = forward(s.model, s.hardware, s.nodes, s.arch, s.phase, s.batch, s.seq_len, s.routing, s.overrides, s.seed)
        return _flat(r)
    if s.kind == "serve":
        from simfoe.serving import run_serve

        closed = s.concurrency is not None  # a closed loop replaces the trace and its arrival rate
        r = run_serve(s.model, s.hardware, s.nodes, s.arch, None if closed else s.trace,
                      rate=None if closed else s.rate, duration=None if closed else s.duration,
                      replicas=s.replicas, routing=s.routing, overrides=s.overrides, seed=s.seed,
                      slo_ttft=s.slo_ttft, slo_tbt=s.slo_tbt, token_budget=s.token_budget,
                      budget_scope=s.budget_scope, rank_router=s.rank_router, concurrency=s.concurrency,
                      isl=s.isl, osl=s.osl, random_range_ratio=s.random_range_ratio, num_prompts=s.num_prompts,
                      warmup=s.warmup)
        from simfoe.serving.api import SUMMARY_METRICS

        return _flat({k: r[k] for k in SUMMARY_METRICS if k in r})
    if s.kind == "pipeline":
        from simfoe.pipelines.api import run_pipeline

        return _flat(run_pipeline(s.spec, s.mode, float(s.rate or 1.0), float(s.duration or 60.0), s.seed,
                                  s.pipeline_routing, s.overrides))
    raise SpecError("kind", s.kind, "one of " + ", ".join(KINDS))


HEADLINE = {"forward": "latency_s", "serve": "ttft_s.p90", "pipeline": "latency_s.p99"}


def whatif(base: Scenario | dict, **changes) -> Any:
    """Side-by-side comparison: one row for ``base`` and one per named change.

    Each keyword is a variant name and a mapping of changes (or a Scenario). Columns: the
    changed settings (``changes``), every metric, and ``vs_base`` = headline metric / base
    (latency_s for forward, ttft_s.p90 for serve, latency_s.p99 for pipeline; < 1 is faster)."""
    import pandas as pd

    if isinstance(base, dict):
        base = scenario(**base)
    rows, names = [], []
    variants = {"base": (base, "")}
    for name, ch in changes.items():
        if isinstance(ch, Scenario):
            variants[name] = (ch, "")
        elif isinstance(ch, dict):
            variants[name] = (base.with_changes(ch), ", ".join(f"{k}={v}" for k, v in ch.items()))
        else:
            raise SpecError(f"whatif {name}", ch, "a mapping of changes or a Scenario")
    for name, (s, desc) in variants.items():
        m = run(s)
        rows.append({"changes": desc, **m})
        names.append(name)
    df = pd.DataFrame(rows, index=pd.Index(names, name="scenario"))
    h = HEADLINE.get(base.kind)
    if h in df.columns and df.loc["base", h]:
        df.insert(1, "vs_base", df[h] / df.loc["base", h])
    return df


def sweep(base: Scenario | dict, field: str, values, **fixed) -> Any:
    """One row per value of ``field`` (a Scenario field or dotted path); ``fixed`` changes apply to all."""
    import pandas as pd

    if isinstance(base, dict):
        base = scenario(**base)
    base = base.with_changes(fixed) if fixed else base
    rows = []
    for v in values:
        rows.append({field: v, **run(base.with_changes({field: v}))})
    return pd.DataFrame(rows).set_index(field)


def plot(df, y: str | list[str] | None = None, x: str | None = None, kind: str | None = None, ax=None, **kw):
    """Plot column(s) ``y`` of a :func:`whatif` / :func:`sweep` DataFrame in one call; returns the Axes.

    Default ``y``: the forward breakdown (stacked bars) when present, else the headline column;
    default ``kind``: bar for whatif tables, line for sweeps over numbers."""
    import matplotlib.pyplot as plt

    if y is None:
        bd = [c for c in df.columns if c.startswith("breakdown_s.")]
        y = bd if bd else next((c for c in HEADLINE.values() if c in df.columns), df.columns[-1])
    data = df.set_index(x) if x else df
    if kind is None:
        import pandas as pd

        kind = "line" if pd.api.types.is_numeric_dtype(data.index) else "bar"
    if ax is None:
        _, ax = plt.subplots(figsize=kw.pop("figsize", (7, 3.5)))
    cols = [y] if isinstance(y, str) else list(y)
    stacked = kw.pop("stacked", len(cols) > 1 and kind == "bar")
    if kind == "line":
        kw.setdefault("marker", "o")
    else:
        kw["stacked"] = stacked
    data[cols].rename(columns=lambda c: c.replace("breakdown_s.", "")).plot(kind=kind, ax=ax, **kw)
    ax.set_ylabel(cols[0] if len(cols) == 1 else "seconds" if cols[0].startswith("breakdown_s.") else "")
    return ax


class _CallableModule(types.ModuleType):
    """Lets ``simfoe.whatif(base, **changes)`` work whether simfoe.whatif is this module or the function."""

    def __call__(self, base, **changes):
        return whatif(base, **changes)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["KINDS", "Scenario", "load", "plot", "run", "scenario", "sweep", "whatif"]
