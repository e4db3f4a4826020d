"""Closed-loop workloads: a fixed number of clients, each sending its next request when its last one
finishes, as serving benchmarks run them.

This is vLLM's ``benchmark_serving.py`` (``vllm bench serve``) with ``--dataset-name random
--random-input-len ISL --random-output-len OSL --random-range-ratio R --num-prompts P
--max-concurrency N --request-rate inf --ignore-eos --num-warmups W``:

* lengths: ``random_range_ratio`` r in [0, 1) draws every prompt length uniformly from the integers
  [floor(ISL (1 - r)), ceil(ISL (1 + r))] and every output length from [max(1, floor(OSL (1 - r))),
  ceil(OSL (1 + r))] (``range_style`` "symmetric": vLLM ``vllm/benchmarks/datasets.py``,
  ``RandomDataset``). Earlier versions of ``benchmark_serving.py`` and the forks InferenceX and
  srt-slurm run draw from [int(ISL r), ISL] and [int(OSL r), OSL] instead (``range_style`` "below":
  SemiAnalysisAI/InferenceX ``utils/bench_serving/benchmark_serving.py`` since 2026-01-21 and
  NVIDIA/srt-slurm ``src/srtctl/benchmarks/scripts/sa-bench/benchmark_serving.py``,
  ``sample_random_requests``). vLLM also takes the tokenizer's special tokens off ISL; here ISL is
  the prompt length as given.
* ``--ignore-eos``: every request generates exactly its output length (the simulator always does).
* ``--request-rate inf --max-concurrency N``: all P requests are issued at once behind a semaphore of
  N, so request k+N starts the instant a running one finishes, in list order.
* ``--num-warmups W``: before the measured run, W copies of the first request (its prompt and output
  length) are sent at the same concurrency and awaited to the last; then the measured run starts on
  an idle server. Warm-ups are excluded from every metric (vLLM ``vllm/benchmarks/serve.py``,
  ``benchmark()``). The simulator does not model prefix caching, so repeated warm-up prompts cost as
  much as new ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simfoe.errors import SpecError
from simfoe.workloads.requests import RequestTable

#: how ``random_range_ratio`` r spreads the lengths around ISL and OSL (see the module docstring)
RANGE_STYLES = ("symmetric", "below")


def _check_int(field: str, v, low: int, what: str) -> None:
    if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low):
        raise SpecError(field, v, f"an integer >= {low} ({what})")


@dataclass(frozen=True)
class ClosedLoop:
    """``concurrency`` clients, ``num_prompts`` measured requests (default 10 x concurrency) after
    ``warmup`` excluded ones; prompt and output lengths ``isl`` and ``osl`` tokens, each drawn
    within ``random_range_ratio`` of them (0: fixed) as ``range_style`` says (:data:`RANGE_STYLES`). See the
    module docstring."""

    concurrency: int
    isl: int
    osl: int
    random_range_ratio: float = 0.0
    num_prompts: int | None = None
    warmup: int = 0
    range_style: str = "symmetric"

    def __post_init__(self):
        _check_int("concurrency", self.concurrency, 1, "clients, each with one request in flight")
        _check_int("isl", self.isl, 1, "prompt tokens")
        _check_int("osl", self.osl, 1, "output tokens")
        if self.range_style not in RANGE_STYLES:
            raise SpecError("range_style", self.range_style, "allowed: " + ", ".join(RANGE_STYLES))
        r = self.random_range_ratio
        below = self.range_style == "below"
        if not (isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r)
                and (0 < r <= 1 if below else 0 <= r < 1)):
            raise SpecError("random_range_ratio", r, "a number in (0, 1] with range_style below (1: fixed lengths)"
                            if below else "a number in [0, 1) (0: fixed lengths)")
        if self.num_prompts is not None:
            _check_int("num_prompts", self.num_prompts, 1, "measured requests")
        _check_int("warmup", self.warmup, 0, "warm-up requests")
        if self.num_prompts is None:
            object.__setattr__(self, "num_prompts", 10 * int(self.concurrency))

    def bounds(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((lowest, highest) prompt tokens, (lowest, highest) output tokens), both inclusive."""
        r = self.random_range_ratio
        if self.range_style == "below":
            return (max(1, int(self.isl * r)), self.isl), (max(1, int(self.osl * r)), self.osl)
        lo_i, hi_i = math.floor(self.isl * (1 - r)), math.ceil(self.isl * (1 + r))
        lo_o, hi_o = max(1, math.floor(self.osl * (1 - r))), math.ceil(self.osl * (1 + r))
        return (max(1, lo_i), hi_i), (lo_o, hi_o)

    def table(self, seed: int = 0) -> RequestTable:
        """``warmup`` copies of the first measured request, then the ``num_prompts`` measured ones
        (lengths drawn with numpy's generator seeded by ``seed``); no arrival times (the clients set them)."""
        (lo_i, hi_i), (lo_o, hi_o) = self.bounds()
        rng = np.random.default_rng(seed)
        p = rng.integers(lo_i, hi_i + 1, size=self.num_prompts)
        o = rng.integers(lo_o, hi_o + 1, size=self.num_prompts)
        w = self.warmup
        p = np.concatenate([np.full(w, p[0]), p])
        o = np.concatenate([np.full(w, o[0]), o])
        return RequestTable.from_arrays(None, p, o, source=self.describe())

    def describe(self) -> str:
        """One line: the workload as the benchmark would be run."""
        r = self.random_range_ratio
        if self.range_style == "below":
            rr = f" x [{r:g}, 1]" if r < 1 else ""
        else:
            rr = f" x (1 +- {r:g})" if r else ""
        return (f"closed loop: {self.concurrency} clients, {self.num_prompts} prompts of {self.isl}{rr} -> "
                f"{self.osl}{rr} tokens (ignore_eos), {self.warmup} warm-up")

    def to_dict(self) -> dict:
        """The summary's ``workload`` fields of this workload."""
        return {"kind": "closed-loop", "concurrency": self.concurrency, "isl": self.isl, "osl": self.osl,
                "random_range_ratio": self.random_range_ratio, "range_style": self.range_style,
                "num_prompts": self.num_prompts,
                "warmup": self.warmup, "ignore_eos": True}


def select_workload(trace=None, concurrency: int | None = None, **closed):
    """``trace`` (a path or built-in name), or the :class:`ClosedLoop` of ``concurrency`` and ``closed``
    (``isl``, ``osl``, ``random_range_ratio``, ``num_prompts``, ``warmup``; None: not given). A
    SpecError names the argument when the two kinds are mixed, or neither is given."""
    given = {k: v for k, v in closed.items() if v is not None}
    unknown = set(closed) - set(ClosedLoop.__dataclass_fields__)
    if unknown:
        k = sorted(unknown)[0]
        raise SpecError(k, closed[k], "a closed-loop setting: one of " + ", ".join(ClosedLoop.__dataclass_fields__))
    if concurrency is None:
        if given:
            k = next(iter(given))
            raise SpecError(k, given[k], "only with concurrency (a closed loop)")
        if trace is None:
            raise SpecError("trace", None, "a trace file or built-in name, or a closed loop: concurrency, isl, osl")
        return trace
    if trace is not None:
        raise SpecError("trace", trace, "omitted with concurrency (a closed loop: its clients send the requests)")
    for k in ("isl", "osl"):
        if k not in given:
            raise SpecError(k, None, f"an integer >= 1 with concurrency ({k} tokens)")
    return ClosedLoop(concurrency, **given)
