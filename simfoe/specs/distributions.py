"""Named probability distributions for spec files, with vectorized numpy samplers.

A distribution is written in YAML as ``{dist: NAME, mean: M, std: S}`` or as a bare number
(a constant). Names: ``constant`` (``mean`` or ``value``), ``exponential`` (``mean``),
``normal``, ``lognormal`` and ``gamma`` (``mean`` and ``std``). Every sampler is truncated at 0:
a normal draw below 0 is redrawn (so the truncated mean is slightly above ``mean`` when
``std`` is large against it); the other families are non-negative by construction.

Units are whatever the field says (seconds for ``service_s``, a count for ``outputs``).
Samples are drawn in blocks with numpy; :class:`BufferedSampler` hands them out one at a
time for event loops without a numpy call per item.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simfoe.errors import SpecError

DIST_NAMES = ("constant", "exponential", "normal", "lognormal", "gamma")
_NEEDS_STD = {"normal", "lognormal", "gamma"}


@dataclass(frozen=True)
class DistSpec:
    """A non-negative distribution given by its family, mean and (where needed) std."""

    dist: str
    mean: float
    std: float = 0.0

    def __post_init__(self) -> None:
        if self.dist not in DIST_NAMES:
            raise SpecError("dist", self.dist, f"one of {', '.join(DIST_NAMES)}")

    @staticmethod
    def constant(value: float) -> "DistSpec":
        return DistSpec("constant", float(value), 0.0)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dist": self.dist, "mean": self.mean}
        if self.dist in _NEEDS_STD:
            d["std"] = self.std
        return d


def as_number(field: str, value: Any) -> float:
    """A spec number: int or float, or a string PyYAML left unparsed (it reads 1.0e3, with no exponent
    sign, as a string); bools and other types are a SpecError naming ``field``."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(field, value, "a number")
    return float(value)


def _num(field: str, value: Any) -> float:
    v = as_number(field, value)
    if not math.isfinite(v):
        raise SpecError(field, value, "a finite number")
    return v


def parse_dist(value: Any, field: str = "dist") -> DistSpec:
    """Parse a YAML distribution (mapping or bare number); bad input raises SpecError naming ``field``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = _num(field, value)
        if v < 0:
            raise SpecError(field, value, "a value >= 0")
        return DistSpec.constant(v)
    if not isinstance(value, dict):
        raise SpecError(field, value, "a number or a mapping {dist: NAME, mean: M, std: S}")
    unknown = set(value) - {"dist", "mean", "std", "value"}
    if unknown:
        raise SpecError(f"{field}.{sorted(unknown)[0]}", value[sorted(unknown)[0]], "keys dist, mean, std (value for constant)")
    name = value.get("dist", "constant")
    if name not in DIST_NAMES:
        raise SpecError(f"{field}.dist", name, f"one of {', '.join(DIST_NAMES)}")
    if "mean" in value:
        mean = _num(f"{field}.mean", value["mean"])
    elif name == "constant" and "value" in value:
        mean = _num(f"{field}.value", value["value"])
    else:
        raise SpecError(f"{field}.mean", None, f"a mean is required for dist {name}")
    if mean < 0:
        raise SpecError(f"{field}.mean", value.get("mean"), "a value >= 0 (distributions are truncated at 0)")
    if name == "exponential" and mean <= 0:
        raise SpecError(f"{field}.mean", mean, "a value > 0 for an exponential")
    std = 0.0
    if name in _NEEDS_STD:
        if "std" not in value:
            raise SpecError(f"{field}.std", None, f"a std is required for dist {name}")
        std = _num(f"{field}.std", value["std"])
        if std < 0:
            raise SpecError(f"{field}.std", value["std"], "a value >= 0")
        if name in ("lognormal", "gamma") and mean == 0 and std > 0:
            raise SpecError(f"{field}.mean", mean, f"a value > 0 for a {name} with std > 0")
    elif "std" in value and name == "exponential" and _num(f"{field}.std", value["std"]) != mean:
        raise SpecError(f"{field}.std", value["std"], "equal to the mean for an exponential, or left out")
    return DistSpec(name, mean, std)


def sample(spec: DistSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` float64 samples >= 0 from ``spec`` (vectorized)."""
    m, s = spec.mean, spec.std
    if spec.dist == "constant" or (s <= 1e-9 * m and spec.dist != "exponential"):  # std ~ 0: a constant
        return np.full(n, m, dtype=np.float64)
    if spec.dist == "exponential":
        return rng.exponential(m, n)
    if spec.dist == "lognormal":
        sigma2 = math.log1p((s / m) ** 2)
        return rng.lognormal(math.log(m) - sigma2 / 2, math.sqrt(sigma2), n)
    if spec.dist == "gamma":
        return rng.gamma((m / s) ** 2, s * s / m, n)
    # normal truncated at 0 by redrawing the negative draws
    x = rng.normal(m, s, n)
    for _ in range(64):
        bad = x < 0
        k = int(bad.sum())
        if k == 0:
            return x
        x[bad] = rng.normal(m, s, k)
    return np.maximum(x, 0.0)  # pathological mean << 0 relative to std: clip what is left


def sample_counts(spec: DistSpec, rng: np.random.Generator, n: int, minimum: int = 1) -> np.ndarray:
    """Integer counts: samples rounded to the nearest integer, at least ``minimum``."""
    return np.maximum(np.rint(sample(spec, rng, n)), minimum).astype(np.int64)


class BufferedSampler:
    """Hands out samples one by one (or k at a time) from numpy blocks of ``block`` draws.

    ``counts=True`` gives integers (rounded, >= 1). Deterministic given the generator.
    """

    __slots__ = ("spec", "rng", "block", "counts", "_buf", "_i")

    def __init__(self, spec: DistSpec, rng: np.random.Generator, block: int = 4096, counts: bool = False):
        self.spec = spec
        self.rng = rng
        self.block = block
        self.counts = counts
        self._buf: list = []
        self._i = 0

    def _refill(self) -> None:
        arr = sample_counts(self.spec, self.rng, self.block) if self.counts else sample(self.spec, self.rng, self.block)
        self._buf = self._buf[self._i:] + arr.tolist()
        self._i = 0

    def next(self):
        if self._i >= len(self._buf):
            self._refill()
        v = self._buf[self._i]
        self._i += 1
        return v

    def take(self, k: int) -> list:
        while self._i + k > len(self._buf):
            self._refill()
        out = self._buf[self._i:self._i + k]
        self._i += k
        return out
