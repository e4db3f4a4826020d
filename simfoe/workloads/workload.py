"""``make_workload``: one entry point from a trace (path or built-in name) to timed requests.

Rules (seconds, requests/s):

* No ``rate`` and ``arrival`` unset or ``trace``: the trace's own timestamps.
* ``arrival="trace"`` with ``rate``: the trace's timestamps stretched to that mean rate (bursts kept).
* ``arrival`` ``poisson`` or ``gamma:CV`` (the default is Poisson once ``rate`` is given): arrivals
  from that process at ``rate`` (or, without ``rate``, at the trace's own mean rate). Lengths:
  with ``duration``, as many requests as arrive in it, each drawn from the trace (``lengths=
  "empirical"``: whole rows with replacement; ``"lognormal"``: a fitted bivariate lognormal);
  without ``duration``, the trace's requests in their order (or as many fitted samples).
* ``duration`` always keeps only arrivals in [0, duration).

Built-in names (the shared public data is read in place, see simfoe.paths):
``longbench`` or ``longbench:DS1,DS2`` (synthetic, see simfoe.workloads.longbench; no timestamps),
``multi-turn`` or ``multi-turn:KEY=VALUE,...`` (synthetic conversations with prefix block ids, see
simfoe.workloads.multiturn),
``sharegpt``, ``azure-conv``, ``azure-code``, ``mooncake-conv``, ``mooncake-synthetic``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from simfoe.errors import SpecError
from simfoe.limits import SERVING_REQUESTS
from simfoe.paths import shared_data_dir
from simfoe.workloads.arrivals import parse_arrival, renewal_arrivals, renewal_arrivals_until, rescale_to_rate
from simfoe.workloads.lengths import LENGTH_MODES, LognormalLengths, sample_lengths
from simfoe.workloads.loaders import load_trace
from simfoe.workloads import multiturn
from simfoe.workloads.longbench import longbench_suite
from simfoe.workloads.requests import RequestTable

#: Built-in trace names -> file under <shared data>/traces/.
SHARED_TRACES = {
    "sharegpt": "sharegpt_8k_lengths_llama2_tokenizer.csv",
    "azure-conv": "azure_llm_inference_2023_conv.csv",
    "azure-code": "azure_llm_inference_2023_code.csv",
    "mooncake-conv": "mooncake_conversation_trace.jsonl",
    "mooncake-synthetic": "mooncake_synthetic_trace.jsonl",
}
BUILTIN_NAMES = ("longbench", multiturn.NAME, *SHARED_TRACES)


def resolve_trace(trace: str | Path, rng: np.random.Generator, skip_bad_rows: bool = False) -> RequestTable:
    """The request table behind ``trace``: a built-in name or a file path (format detected)."""
    name = str(trace)
    if name == "longbench" or name.startswith("longbench:"):
        return longbench_suite(rng, datasets=name.partition(":")[2] or None)
    if name == multiturn.NAME or name.startswith(multiturn.NAME + ":"):
        return multiturn.multi_turn(name, rng)
    if name in SHARED_TRACES:
        d = shared_data_dir()
        if d is None or not (d / "traces" / SHARED_TRACES[name]).is_file():
            raise SpecError(
                "trace", name,
                f"a path to the file; built-in {name!r} needs ../shared/data/traces/{SHARED_TRACES[name]} "
                "(or SIMFOE_SHARED_DATA) and it is absent",
            )
        return load_trace(d / "traces" / SHARED_TRACES[name], skip_bad_rows=skip_bad_rows)
    if not Path(name).is_file():
        raise SpecError("trace", name, "an existing trace file or one of " + ", ".join(BUILTIN_NAMES))
    return load_trace(name, skip_bad_rows=skip_bad_rows)


def _check_positive(field: str, x: float | None, what: str) -> None:
    if x is not None and not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
        raise SpecError(field, x, f"{what} > 0, or omitted")


def make_workload(
    trace: str | Path,
    rate: float | None = None,
    duration: float | None = None,
    arrival: str | None = None,
    seed: int = 0,
    skip_bad_rows: bool = False,
    *,
    cv: float | None = None,
    lengths: str = "empirical",
    max_requests: int | None = None,
) -> RequestTable:
    """Timed requests (arrival seconds from 0, sorted) for the serving simulator; see module rules.

    ``trace``: path or built-in name; ``rate``: requests/s; ``duration``: seconds; ``arrival``:
    ``trace`` | ``poisson`` | ``gamma:CV`` (or ``gamma`` with ``cv``); ``seed`` seeds one numpy
    Generator for every draw; ``lengths``: ``empirical`` | ``lognormal``. More than ``max_requests``
    requests (default :data:`simfoe.limits.SERVING_REQUESTS`; expected ``rate x duration`` for a
    process, checked before drawing; else the trace's rows) is a SpecError naming ``rate`` (``trace``).
    The result's ``skipped_rows`` reports malformed trace rows dropped under ``skip_bad_rows``."""
    _check_positive("rate", rate, "requests/s")
    _check_positive("duration", duration, "seconds")
    SERVING_REQUESTS.resolve(max_requests)
    if lengths not in LENGTH_MODES:
        raise SpecError("lengths", lengths, "one of " + ", ".join(LENGTH_MODES))
    kind, cv_ = parse_arrival(arrival, cv)
    if arrival is None and rate is None and cv is None:
        kind = "trace"
    rng = np.random.default_rng(seed)
    src = resolve_trace(trace, rng, skip_bad_rows)
    if len(src) == 0:
        raise SpecError("trace", str(trace), "a trace with at least one valid request")
    label = f"{src.source} | "
    if kind == "trace":
        timed = _replayed(src, trace, rate, duration, arrival, lengths, rng, max_requests)
    else:
        timed = _drawn(src, trace, rate, duration, cv_, lengths, rng, max_requests)
    t, desc = timed.table, timed.desc
    if duration is not None:
        desc += f", {duration:g} s"
    return replace(t, source=label + desc, skipped_rows=src.skipped_rows, skipped_lines=src.skipped_lines)


@dataclass(frozen=True)
class _Timed:
    """Timed requests and the words that say how they were timed."""

    table: RequestTable
    desc: str


def _replayed(src: RequestTable, trace, rate, duration, arrival, lengths: str, rng, max_requests) -> _Timed:
    """The trace's own timestamps, rescaled to ``rate`` (requests/s) and cut at ``duration`` (s) when given."""
    if not src.has_arrivals:
        if arrival is not None:  # asked to replay timestamps the trace does not have
            raise SpecError("arrival", arrival, f"poisson or gamma:CV: trace {str(trace)!r} has no timestamps to replay")
        raise SpecError("rate", rate, f"a rate in requests/s: trace {str(trace)!r} has no timestamps")
    t = src
    if lengths == "lognormal":
        p, o = LognormalLengths.fit(src).sample(len(src), rng)
        t = RequestTable.from_arrays(src.arrival_s, p, o, request_id=src.request_id, source=src.source)
    if rate is not None:
        t = t.with_arrivals(rescale_to_rate(t.arrival_s, rate))
    if duration is not None:
        t = t.truncated(duration)
    # the trace's rows are in memory already: bound what the simulation would hold and run
    SERVING_REQUESTS.check("trace", str(trace), len(t), max_requests, "rows of the trace kept")
    return _Timed(t, "trace timestamps" + (f" rescaled to {rate:g} req/s" if rate is not None else ""))


def _drawn(src: RequestTable, trace, rate, duration, cv_: float, lengths: str, rng, max_requests) -> _Timed:
    """Renewal arrivals (Poisson, or gamma of CV ``cv_``) at ``rate`` (default: the trace's mean rate) for
    ``duration`` seconds, else one per trace row; lengths from the trace."""
    if rate is None:
        rate = src.mean_rate
        if not math.isfinite(rate):
            raise SpecError("rate", None, f"a rate in requests/s: trace {str(trace)!r} has no timestamps to take it from")
    if duration is not None:
        SERVING_REQUESTS.check("rate", rate, rate * duration, max_requests, "rate x duration")
        arr = renewal_arrivals_until(duration, rate, rng, cv_)
        reqs = sample_lengths(src, len(arr), rng, lengths)
    else:
        SERVING_REQUESTS.check("trace", str(trace), len(src), max_requests, "rows of the trace")
        arr = renewal_arrivals(len(src), rate, rng, cv_)
        reqs = src if lengths == "empirical" else sample_lengths(src, len(src), rng, lengths)
    return _Timed(reqs.with_arrivals(arr), ("poisson" if cv_ == 1.0 else f"gamma cv={cv_:g}") + f" at {rate:g} req/s")
