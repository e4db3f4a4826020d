"""Arrival processes: request arrival times in seconds, the first request at 0.

All draws come from a caller-supplied ``numpy.random.Generator`` (deterministic given its seed)
and are vectorized. Inter-arrival gaps are i.i.d.:

* Poisson at ``rate`` requests/s: exponential gaps with mean 1/rate.
* Gamma at ``rate`` with coefficient of variation ``cv`` (burstiness): gamma gaps with shape
  k = 1/cv**2 and scale 1/(rate*k), so the mean gap is 1/rate and std/mean = cv. cv = 1 is
  Poisson; cv > 1 is burstier, cv < 1 more regular.
"""
from __future__ import annotations

import math

import numpy as np

from simfoe.errors import SpecError


def _check_rate(rate: float) -> float:
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise SpecError("rate", rate, "a finite number of requests/s > 0")
    return float(rate)


def _check_cv(cv: float) -> float:
    if not (isinstance(cv, (int, float)) and math.isfinite(cv) and cv > 0):
        raise SpecError("cv", cv, "a finite coefficient of variation > 0 (1 = Poisson)")
    return float(cv)


def gaps(n: int, rate: float, rng: np.random.Generator, cv: float = 1.0) -> np.ndarray:
    """``n`` i.i.d. inter-arrival gaps (seconds) with mean 1/rate and coefficient of variation cv.

    cv == 1 draws exponential gaps (Poisson process); otherwise gamma gaps."""
    rate, cv = _check_rate(rate), _check_cv(cv)
    if cv == 1.0:
        return rng.exponential(1.0 / rate, size=n)
    shape = 1.0 / cv**2
    return rng.gamma(shape, 1.0 / (rate * shape), size=n)


def renewal_arrivals(n: int, rate: float, rng: np.random.Generator, cv: float = 1.0) -> np.ndarray:
    """``n`` arrival times (seconds, non-decreasing, first = 0) with i.i.d. gaps (see ``gaps``)."""
    if n < 0:
        raise SpecError("requests", n, "a count >= 0")
    out = np.zeros(n)
    if n > 1:
        np.cumsum(gaps(n - 1, rate, rng, cv), out=out[1:])
    return out


def renewal_arrivals_until(duration_s: float, rate: float, rng: np.random.Generator, cv: float = 1.0) -> np.ndarray:
    """Arrival times (seconds, first = 0) of every request in [0, duration_s).

    Draws gaps in blocks sized to the expected count plus a 6-sigma margin, so one block almost
    always suffices; more blocks are drawn until the horizon is passed."""
    _check_rate(rate)
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise SpecError("duration", duration_s, "a finite number of seconds > 0")
    mean_n = rate * duration_s
    block = int(mean_n + 6.0 * math.sqrt(mean_n) * max(cv, 1.0) + 16)
    parts, t = [np.zeros(1)], 0.0
    while t < duration_s:
        g = np.cumsum(gaps(block, rate, rng, cv)) + t
        parts.append(g)
        t = float(g[-1])
    arr = np.concatenate(parts)
    return arr[arr < duration_s]


def poisson_arrivals(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` Poisson arrival times at ``rate`` requests/s (seconds, first = 0)."""
    return renewal_arrivals(n, rate, rng, cv=1.0)


def gamma_arrivals(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` gamma-renewal arrival times at ``rate`` requests/s with gap CV ``cv`` (seconds, first = 0)."""
    return renewal_arrivals(n, rate, rng, cv=cv)


def rescale_to_rate(arrival_s: np.ndarray, rate: float) -> np.ndarray:
    """Stretch or compress trace timestamps so the mean rate, (n-1)/span, equals ``rate`` (req/s).

    Keeps the trace's burst shape; the first request stays at 0."""
    rate = _check_rate(rate)
    a = np.asarray(arrival_s, dtype=np.float64)
    if len(a) < 2:
        return a - (a.min() if len(a) else 0.0)
    span = float(a.max() - a.min())
    if span <= 0:
        raise SpecError("rate", rate, "a trace whose timestamps span more than 0 s (all arrive at once)")
    return (a - a.min()) / span * ((len(a) - 1) / rate)  # divide first: no overflow for tiny spans


def parse_arrival(arrival: str | None, cv: float | None = None) -> tuple[str, float]:
    """Normalize an arrival spec: ``trace``, ``poisson``, ``gamma`` (with ``cv``) or ``gamma:CV``.

    Returns (kind, cv) with kind in {"trace", "renewal"} and cv = 1 for Poisson."""
    allowed = "trace, poisson, gamma:CV (e.g. gamma:2 for bursty), or gamma with cv given"
    if arrival is None:
        return ("renewal", 1.0) if cv is None else ("renewal", _check_cv(cv))
    a = arrival.strip().lower()
    if a == "trace":
        return "trace", 1.0
    if a == "poisson":
        if cv not in (None, 1, 1.0):
            raise SpecError("cv", cv, "only with arrival gamma (Poisson has cv 1)")
        return "renewal", 1.0
    if a == "gamma" or a.startswith("gamma:"):
        text = a.partition(":")[2]
        if text:
            try:
                cv = float(text)
            except ValueError:
                raise SpecError("arrival", arrival, allowed) from None
        if cv is None:
            raise SpecError("arrival", arrival, "gamma needs a coefficient of variation: gamma:CV, e.g. gamma:2")
        return "renewal", _check_cv(cv)
    raise SpecError("arrival", arrival, allowed)
