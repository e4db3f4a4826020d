"""Sweep spec (YAML) -> validated :class:`SweepSpec` -> list of :class:`Scenario`.

Format (see docs/sweep.md)::

    kind: forward                 # forward | serve | serve-disagg | pipeline
    name: moe_vs_foe              # optional, used in titles
    base:                         # options of that command (model, hardware, nodes, ...)
      model: qwen3-30b-a3b        # presets or YAML paths
      set: [hardware.network.nic_bandwidth=50e9]   # optional --set list (or a mapping)
    grid:                         # cartesian product over these lists
      arch: [moe, foe]
      hardware.network.nic_bandwidth: [25e9, 50e9]  # dotted path = --set override
    zip:                          # optional: lists of equal length varied together
      batch: [1, 64]
      seq_len: [4096, 512]
    samples:                      # optional random search, crossed with grid and zip
      n: 20
      seed: 0
      space:
        batch: {loguniform: [1, 1024], int: true}
        routing: {choice: [uniform, "zipf:1.2"]}
    metrics: [latency_s, breakdown_s]   # optional: metric prefixes to keep (default all)

Option keys may be written with ``-`` or ``_``. Every scenario's inputs are the resolved options
(defaults of the scenario function filled in) plus the overrides; its ``run_id`` is a hash of
their canonical JSON (and of the content of any spec file they name).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from simfoe.errors import SpecError
from simfoe.limits import LIMIT_OPTIONS
from simfoe.sweep.scenarios import REQUIRED, ScenarioKind, get_kind

TOP_KEYS = ("kind", "name", "description", "base", "grid", "zip", "samples", "metrics")
SAMPLE_KEYS = ("n", "seed", "space")
DISTS = ("choice", "uniform", "loguniform")
MAX_SCENARIOS = 1_000_000


@dataclass(frozen=True)
class Scenario:
    """One point of a sweep. ``options``: keyword arguments of the scenario function (without
    ``overrides``); ``overrides``: dotted path -> value; ``run_id``: stable hash of both."""

    index: int
    run_id: str
    options: dict
    overrides: dict

    def inputs(self) -> dict:
        """Input columns of the results table: options, then one column per override path."""
        return {**self.options, **self.overrides}

    def override_list(self) -> list[str]:
        return [format_override(p, v) for p, v in sorted(self.overrides.items())]


@dataclass
class SweepSpec:
    kind: str
    name: str
    base: dict
    base_overrides: dict
    grid: dict
    zip: dict
    samples: list[dict]
    metrics: list[str] | None
    source: str = "<dict>"
    raw: dict = field(default_factory=dict)

    def scenario_kind(self) -> ScenarioKind:
        return get_kind(self.kind)

    def axes(self) -> list[str]:
        """Keys that vary across scenarios (grid, zip and sampled keys), in spec order."""
        return list(self.grid) + list(self.zip) + (list(self.samples[0]) if self.samples else [])

    def count(self) -> int:
        n = 1
        for v in self.grid.values():
            n *= len(v)
        if self.zip:
            n *= len(next(iter(self.zip.values())))
        if self.samples:
            n *= len(self.samples)
        return n

    def scenarios(self) -> list[Scenario]:
        """Expand, fill defaults, compute run_ids, and check every distinct value (SpecError)."""
        kind = self.scenario_kind()
        params = kind.parameters()
        if (self.base_overrides or _first_dotted(self)) and not kind.takes_overrides():
            raise SpecError("grid", next(iter(self.base_overrides), None) or _first_dotted(self),
                            f"--set paths are not accepted by kind {self.kind!r}")
        zip_rows = ([dict(zip(self.zip, vals)) for vals in zip(*self.zip.values())] if self.zip else [{}])
        sample_rows = self.samples or [{}]
        grid_keys = list(self.grid)
        digests: dict[str, str | None] = {}
        out: list[Scenario] = []
        seen: dict[str, int] = {}
        for combo in itertools.product(*(self.grid[k] for k in grid_keys)):
            for zrow in zip_rows:
                for srow in sample_rows:
                    point = {**dict(zip(grid_keys, combo)), **zrow, **srow}
                    options = dict(self.base)
                    overrides = dict(self.base_overrides)
                    for k, v in point.items():
                        (overrides if "." in k else options)[k] = v
                    for name, default in params.items():
                        if name not in options:
                            if default is REQUIRED:
                                raise SpecError("base", name, f"a required option of {self.kind!r} is "
                                                "missing; give it in base, grid, zip or samples")
                            options[name] = default
                    options = {k: _plain(v) for k, v in options.items()}
                    overrides = {k: _plain(v) for k, v in overrides.items()}
                    rid = run_id(self.kind, options, overrides, digests)
                    if rid in seen:
                        continue  # the same scenario twice (e.g. samples repeating a choice)
                    seen[rid] = len(out)
                    out.append(Scenario(len(out), rid, options, overrides))
        if kind.check is not None:
            checked: set[str] = set()
            for s in out:
                key = _canon({k: v for k, v in s.options.items() if k not in ("seed",)} | {"@o": s.overrides})
                if key in checked:
                    continue
                checked.add(key)
                kind.check(s.options, s.overrides)
        return out


def _first_dotted(spec: SweepSpec) -> str | None:
    return next((k for k in spec.axes() if "." in k), None)


# ---- canonical values and run ids ---------------------------------------------------------------

def _plain(v: Any) -> Any:
    """numpy scalars -> Python; tuples -> lists (canonical JSON)."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        v = v.item()
    if isinstance(v, tuple):
        v = list(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _finite(where: str, v: Any) -> Any:
    """``v`` (plain) unless it is an infinite or NaN number: those get past the specs' own checks."""
    if isinstance(v, float) and not math.isfinite(v):
        raise SpecError(where, v, "a finite number")
    return v


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _file_digest(value: Any, cache: dict) -> str | None:
    """Content hash of an option naming an existing spec/trace file (so edits change run_id)."""
    if not isinstance(value, str) or not (value.endswith((".yaml", ".yml", ".csv", ".npy", ".json", ".parquet"))
                                          or "/" in value):
        return None
    if value not in cache:
        p = Path(value)
        cache[value] = hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None
    return cache[value]


def run_id(kind: str, options: dict, overrides: dict, digests: dict | None = None) -> str:
    """Stable 16-hex-digit id of a scenario: hash of the canonical JSON of its inputs. Size limits
    (``max_gpus``, ...: :data:`simfoe.limits.LIMIT_OPTIONS`) bound a run without changing its result
    and are left out."""
    digests = {} if digests is None else digests
    options = {k: v for k, v in options.items() if k not in LIMIT_OPTIONS}
    files = {k: d for k, v in options.items() if (d := _file_digest(v, digests))}
    payload = {"kind": kind, "options": options, "overrides": overrides}
    if files:
        payload["files"] = files
    return hashlib.sha256(_canon(payload).encode()).hexdigest()[:16]


def format_override(path: str, value: Any) -> str:
    """(path, value) -> ``path=value`` text that ``--set`` parses back to the same value."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (list, dict)):
        text = json.dumps(value)
    else:
        text = str(value)
    return f"{path}={text}"


# ---- parsing ------------------------------------------------------------------------------------

def _norm_key(k: Any, where: str) -> str:
    if not isinstance(k, str) or not k.strip():
        raise SpecError(where, k, "keys must be option names or dotted --set paths")
    k = k.strip()
    return k if "." in k else k.replace("-", "_")


def _check_key(key: str, where: str, kind: ScenarioKind, params: dict) -> None:
    if "." in key:
        root = key.split(".", 1)[0]
        if kind.override_roots and root not in kind.override_roots:
            raise SpecError(where, key, "a dotted --set path must start with " + ", ".join(kind.override_roots))
        return
    if key not in params:
        roots = ", ".join(f"{r}.*" for r in kind.override_roots) if kind.override_roots else "any dotted path"
        raise SpecError(where, key, f"unknown option of {kind.name!r}; allowed: "
                        + ", ".join(params) + f", or a --set path ({roots})")


def _parse_set(v: Any) -> dict:
    """``set:`` in base: a list of "path=value" strings or a mapping path -> value."""
    from simfoe.specs.io import parse_value

    if isinstance(v, dict):
        return {str(k).strip(): x for k, x in v.items()}
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise SpecError("base.set", v, "a list of PATH=VALUE strings or a mapping PATH: VALUE")
    out = {}
    for item in v:
        if not isinstance(item, str) or "=" not in item:
            raise SpecError("base.set", item, "form PATH=VALUE, e.g. hardware.network.nic_bandwidth=100e9")
        p, _, val = item.partition("=")
        out[p.strip()] = parse_value(val)
    return out


def _parse_lists(d: Any, where: str, kind: ScenarioKind, params: dict) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise SpecError(where, d, "a mapping of option -> list of values")
    out = {}
    for k, v in d.items():
        key = _norm_key(k, where)
        _check_key(key, where, kind, params)
        if not isinstance(v, list):
            raise SpecError(f"{where}.{key}", v, "a list of values (use base: for a single value)")
        if not v:
            raise SpecError(f"{where}.{key}", v, "a non-empty list")
        out[key] = [_finite(f"{where}.{key}", _plain(x)) for x in v]
    return out


def _draw(dist: Any, key: str, rng) -> Any:
    where = f"samples.space.{key}"
    if isinstance(dist, list):
        dist = {"choice": dist}
    if not isinstance(dist, dict):
        raise SpecError(where, dist, "{choice: [...]}, {uniform: [lo, hi]} or {loguniform: [lo, hi]}, "
                        "optionally with int: true")
    names = [k for k in dist if k in DISTS]
    extra = [k for k in dist if k not in DISTS and k != "int"]
    if len(names) != 1 or extra:
        raise SpecError(where, dist, "exactly one of " + ", ".join(DISTS) + " (plus optional int: true)")
    name, args = names[0], dist[names[0]]
    as_int = bool(dist.get("int", False))
    if name == "choice":
        if not isinstance(args, list) or not args:
            raise SpecError(where, args, "choice: a non-empty list")
        args = [_finite(where, _plain(a)) for a in args]
        return lambda: args[int(rng.integers(len(args)))]
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args)
            or not args[0] < args[1] or (name == "loguniform" and args[0] <= 0)):
        raise SpecError(where, args, f"{name}: [lo, hi], finite numbers with lo < hi"
                        + (" and lo > 0" if name == "loguniform" else ""))
    lo, hi = float(args[0]), float(args[1])

    def draw():
        x = rng.uniform(lo, hi) if name == "uniform" else math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return int(round(x)) if as_int else float(x)

    return draw


def _parse_samples(d: Any, kind: ScenarioKind, params: dict) -> list[dict]:
    import numpy as np

    if d is None:
        return []
    if not isinstance(d, dict):
        raise SpecError("samples", d, "a mapping with n, seed, space")
    for k in d:
        if k not in SAMPLE_KEYS:
            raise SpecError("samples", k, "unknown key; allowed: " + ", ".join(SAMPLE_KEYS))
    n, seed, space = d.get("n"), d.get("seed", 0), d.get("space")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SpecError("samples.n", n, "a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpecError("samples.seed", seed, "an integer")
    if not isinstance(space, dict) or not space:
        raise SpecError("samples.space", space, "a non-empty mapping of option -> distribution")
    rng = np.random.default_rng(seed)
    draws = {}
    for k, dist in space.items():
        key = _norm_key(k, "samples.space")
        _check_key(key, "samples.space", kind, params)
        draws[key] = _draw(dist, key, rng)
    return [{k: f() for k, f in draws.items()} for _ in range(n)]


def parse_sweep_spec(data: Any, source: str = "<dict>") -> SweepSpec:
    """Validate a sweep mapping; SpecError names the offending key. Nothing is run."""
    if not isinstance(data, dict):
        raise SpecError("sweep spec", source, "a YAML mapping with kind, base, grid")
    for k in data:
        if k not in TOP_KEYS:
            raise SpecError("sweep spec", k, "unknown key; allowed: " + ", ".join(TOP_KEYS))
    if "kind" not in data:
        raise SpecError("kind", None, "required: forward, serve, serve-disagg or pipeline")
    kind = get_kind(data["kind"])
    params = kind.parameters()
    base_raw = data.get("base") or {}
    if not isinstance(base_raw, dict):
        raise SpecError("base", base_raw, "a mapping of option -> value")
    base: dict = {}
    base_over: dict = {}
    for k, v in base_raw.items():
        if k == "set":
            for p, x in _parse_set(v).items():
                _check_key(p, "base.set", kind, params)
                base_over[p] = _finite(f"base.set.{p}", _plain(x))
            continue
        key = _norm_key(k, "base")
        _check_key(key, "base", kind, params)
        (base_over if "." in key else base)[key] = _finite(f"base.{key}", _plain(v))
    grid = _parse_lists(data.get("grid"), "grid", kind, params)
    zp = _parse_lists(data.get("zip"), "zip", kind, params)
    if zp and len({len(v) for v in zp.values()}) != 1:
        raise SpecError("zip", {k: len(v) for k, v in zp.items()}, "lists of equal length")
    samples = _parse_samples(data.get("samples"), kind, params)
    if not grid and not zp and not samples:
        raise SpecError("grid", data.get("grid"), "a non-empty mapping of option -> list of values "
                        "(or give zip: or samples:)")
    seen: dict[str, str] = {}
    for where, keys in (("grid", grid), ("zip", zp), ("samples", samples[0] if samples else {})):
        for k in keys:
            if k in seen:
                raise SpecError(where, k, f"already varied in {seen[k]}; vary a key in one place only")
            seen[k] = where
    metrics = data.get("metrics")
    if metrics is not None:
        if isinstance(metrics, str):
            metrics = [metrics]
        if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) and m for m in metrics):
            raise SpecError("metrics", metrics, "a non-empty list of metric names (dotted prefixes)")
        if kind.metrics:
            for m in metrics:
                if m.split(".", 1)[0] not in kind.metrics:
                    raise SpecError("metrics", m, "allowed: " + ", ".join(kind.metrics) + " (or dotted sub-keys)")
    name = data.get("name") or (Path(source).stem if source not in ("<dict>", "<default>") else "sweep")
    spec = SweepSpec(kind=kind.name, name=str(name), base=base, base_overrides=base_over, grid=grid, zip=zp,
                     samples=samples, metrics=metrics, source=source, raw=data)
    if spec.count() > MAX_SCENARIOS:
        raise SpecError("grid", spec.count(), f"at most {MAX_SCENARIOS} scenarios per sweep")
    return spec


def default_spec_path():
    """The embedded default demo sweep (MoE vs FoE on H100)."""
    return resources.files("simfoe.sweep") / "default.yaml"


def load_sweep_spec(path: str | Path | None = None) -> SweepSpec:
    """Read a sweep YAML (None: the embedded default) and validate it."""
    if path is None:
        text, source = default_spec_path().read_text(), "<default>"
    else:
        p = Path(path)
        if not p.is_file():
            raise SpecError("spec", str(path), "an existing sweep YAML file")
        text, source = p.read_text(), str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SpecError("spec", source, f"valid YAML{where}") from None
    return parse_sweep_spec(data, source)
