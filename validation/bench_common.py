"""Timing, statistics and CSV helpers shared by the kernel and collective benchmarks.

Standard library + torch only. All times are seconds.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8": torch.float8_e4m3fn,
}
"""Dtype names used in the CSV files -> torch dtypes."""

GEMM_ONLY_DTYPES = ("fp8",)
"""Dtypes timed for GEMM only (``torch._scaled_mm``: e4m3 inputs, per-tensor scales, bf16 output); the
other kernel ops take the first dtype not listed here."""


def other_op_dtypes(dtypes: Sequence[str]) -> tuple[str, ...]:
    """The one dtype the non-GEMM kernel ops are timed in: the first of ``dtypes`` they support."""
    return tuple(d for d in dtypes if d not in GEMM_ONLY_DTYPES)[:1]


def dtype_bytes(name: str) -> int:
    """Bytes per element of a dtype named as in ``DTYPES``."""
    return torch.tensor([], dtype=DTYPES[name]).element_size()


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between order statistics."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of an empty sequence")
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stats:
    """Summary of per-call times in seconds over ``repeats`` samples."""

    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    max_s: float
    repeats: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Stats":
        return cls(
            median_s=percentile(samples, 50),
            p10_s=percentile(samples, 10),
            p90_s=percentile(samples, 90),
            min_s=min(samples),
            max_s=max(samples),
            repeats=len(samples),
        )


@dataclass(frozen=True)
class TimingPolicy:
    """How long and how often one point is measured.

    ``warmup_s``: seconds of untimed calls (at least ``min_warmup`` calls).
    ``budget_s``: target seconds of timed calls per point; repeats are derived from it and
    clamped to [``min_repeats``, ``max_repeats``]. ``min_sample_s``: each sample loops over
    enough calls (``inner``) to last at least this long, so timer and launch overheads of
    very short ops are amortised; the recorded time is per call.
    """

    warmup_s: float
    budget_s: float
    min_repeats: int
    max_repeats: int
    min_sample_s: float
    min_warmup: int = 2


FULL_POLICY = TimingPolicy(warmup_s=0.05, budget_s=0.4, min_repeats=5, max_repeats=50, min_sample_s=1e-3)
QUICK_POLICY = TimingPolicy(warmup_s=0.005, budget_s=0.03, min_repeats=3, max_repeats=10, min_sample_s=2e-4)


class DeviceTimer:
    """Times a loop of calls: host clock on CPU, CUDA events (after synchronisation) on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time_loop(self, fn: Callable[[int], object], start_index: int, inner: int) -> tuple[float, float | None]:
        """(wall seconds per call, process CPU seconds per call or None on CUDA) of ``fn(i)`` for
        ``i`` in ``start_index .. start_index+inner-1``.

        Process CPU time sums all threads of this process and excludes time spent descheduled, so
        with one torch thread it estimates the wall time on an idle core of a shared host.
        """
        if self.cuda:
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            begin.record()
            for i in range(start_index, start_index + inner):
                fn(i)
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) * 1e-3 / inner, None
        c0 = time.process_time()
        t0 = time.perf_counter()
        for i in range(start_index, start_index + inner):
            fn(i)
        t1 = time.perf_counter()
        c1 = time.process_time()
        return (t1 - t0) / inner, (c1 - c0) / inner


@dataclass(frozen=True)
class Measurement:
    """Result of ``measure``: wall-time statistics, process-CPU-time statistics (CPU device only),
    and the loop structure used (calls per sample, warm-up calls)."""

    stats: Stats
    cpu_stats: Stats | None
    inner: int
    warmup: int


def _warm_up(fn: Callable[[int], object], policy: TimingPolicy, timer: DeviceTimer) -> int:
    """Untimed calls ``fn(0), fn(1), ...`` for ``policy.warmup_s`` seconds (at least ``min_warmup``);
    returns how many ran (the next index). On CUDA each call is synchronised: launches are asynchronous,
    so an unsynchronised loop would queue up to the launch-queue depth (~1000 calls, seconds of work
    for a large GEMM) within the host's warm-up time."""
    warm = 0
    t_start = time.perf_counter()
    while warm < policy.min_warmup or time.perf_counter() - t_start < policy.warmup_s:
        fn(warm)
        if timer.cuda:
            timer.sync()
        warm += 1
    return warm


def measure(fn: Callable[[int], object], timer: DeviceTimer, policy: TimingPolicy) -> Measurement:
    """Warm up, choose the inner loop length and the repeats from the policy, and time ``fn``.

    ``fn(i)`` runs the op once; ``i`` increases by one per call so that callers can rotate over
    several input buffers (cold caches).
    """
    i = warm = _warm_up(fn, policy, timer)
    timer.sync()
    one = max(timer.time_loop(fn, i, 1)[0], 1e-9)
    i += 1
    inner = max(1, math.ceil(policy.min_sample_s / one))
    repeats = int(policy.budget_s / (one * inner))
    repeats = max(policy.min_repeats, min(policy.max_repeats, repeats))
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(repeats):
        wall, cpu = timer.time_loop(fn, i, inner)
        walls.append(wall)
        if cpu is not None:
            cpus.append(cpu)
        i += inner
    return Measurement(stats=Stats.of(walls), cpu_stats=Stats.of(cpus) if cpus else None,
                       inner=inner, warmup=warm + 1)


def measure_after_flush(fn: Callable[[int], object], flush: Callable[[], object], timer: DeviceTimer,
                        policy: TimingPolicy) -> Measurement:
    """Time ``fn`` one call per sample, each sample preceded by an untimed ``flush()`` (a streaming read
    that evicts the caches, as the weights streamed between two calls of an op in a forward pass do).

    Warm-up as ``measure``; repeats from the policy's budget counting the flush time, clamped to
    [``min_repeats``, ``max_repeats``]; ``inner`` is 1.
    """
    i = warm = _warm_up(fn, policy, timer)
    t0 = time.perf_counter()
    flush()
    timer.sync()
    one = max(timer.time_loop(fn, i, 1)[0] + time.perf_counter() - t0, 1e-9)
    i += 1
    repeats = max(policy.min_repeats, min(policy.max_repeats, int(policy.budget_s / one)))
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(repeats):
        flush()
        timer.sync()
        wall, cpu = timer.time_loop(fn, i, 1)
        walls.append(wall)
        if cpu is not None:
            cpus.append(cpu)
        i += 1
    return Measurement(stats=Stats.of(walls), cpu_stats=Stats.of(cpus) if cpus else None, inner=1, warmup=warm + 1)


def measure_graph(fn: Callable[[int], object], timer: DeviceTimer, policy: TimingPolicy, buffers: int) -> Measurement:
    """CUDA only: time ``fn`` as device work, without the host's launch cost.

    After an eager warm-up (and three calls on a side stream, as capture requires), ``calls``
    consecutive calls ``fn(0) .. fn(calls-1)`` are captured into one CUDA graph, ``calls`` at least
    ``buffers`` (so each replay walks every rotated input set) and enough for ``min_sample_s`` at the
    eager rate, capped at 4096. A sample replays the graph ``r`` times between two CUDA events, ``r``
    chosen so a sample lasts at least ``policy.min_sample_s``; the recorded time is per call. Graph
    replay launches the captured kernels back to back (about a microsecond apart), so small kernels
    show their device time where an eager loop on a slow host shows the host's dispatch rate.
    ``inner`` in the result is ``calls * r``; ``warmup`` counts the eager and side-stream calls.
    Raises what capture raises (an op that cannot be captured): the caller falls back to ``measure``.
    """
    if not timer.cuda:
        raise ValueError("measure_graph needs a CUDA device")
    i = warm = _warm_up(fn, policy, timer)
    timer.sync()
    one = max(timer.time_loop(fn, i, 1)[0], 1e-9)
    calls = int(min(4096, max(buffers, math.ceil(policy.min_sample_s / one), 1)))
    side = torch.cuda.Stream(timer.device)
    side.wait_stream(torch.cuda.current_stream(timer.device))
    with torch.cuda.stream(side):
        for j in range(3):
            fn(j)
    torch.cuda.current_stream(timer.device).wait_stream(side)
    timer.sync()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for j in range(calls):
            fn(j)
    graph.replay()
    timer.sync()

    def replay(_, g=graph):
        g.replay()

    t_rep = max(timer.time_loop(replay, 0, 1)[0], 1e-9)  # seconds per replay (events around the loop)
    reps = max(1, math.ceil(policy.min_sample_s / t_rep))
    repeats = max(policy.min_repeats, min(policy.max_repeats, int(policy.budget_s / (t_rep * reps))))
    walls = [timer.time_loop(replay, 0, reps)[0] / calls for _ in range(repeats)]
    del replay, graph
    return Measurement(stats=Stats.of(walls), cpu_stats=None, inner=calls * reps, warmup=warm + 4)


def rotation_count(working_set_bytes: int, cache_bytes: int, max_buffers: int, mem_cap_bytes: int) -> int:
    """Number of input buffer sets to rotate over so that their total exceeds twice the last-level cache.

    Rotating defeats cache reuse between consecutive calls, so a call reads its inputs from
    DRAM/HBM as the minimal-traffic byte count assumes. Capped by ``max_buffers`` and by
    ``mem_cap_bytes`` of total allocation.
    """
    if working_set_bytes <= 0:
        return 1
    need = math.ceil(2 * cache_bytes / working_set_bytes)
    by_mem = max(1, mem_cap_bytes // working_set_bytes)
    return int(max(1, min(need, max_buffers, by_mem)))


def write_csv(path: str, columns: Sequence[str], rows: Iterable[dict]) -> int:
    """Write dict rows under fixed ``columns`` (missing keys and None become empty cells); returns row count."""
    n = 0
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="raise")
        w.writeheader()
        for row in rows:
            w.writerow({c: _cell(row.get(c)) for c in columns})
            n += 1
    return n


def _cell(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def log(msg: str) -> None:
    """Progress line on stderr (stdout is kept for the final summary)."""
    print(msg, file=sys.stderr, flush=True)


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask when readable)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
