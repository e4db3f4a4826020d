"""Collective microbenchmarks through torch.distributed (gloo on CPU processes, NCCL on GPUs).

One process per rank is spawned with torch.multiprocessing on 127.0.0.1 (a free port). Sizes follow
nccl-tests: ``bytes`` is the per-rank buffer size that nccl-tests prints as "size":
all_reduce = the reduced buffer; all_gather = the gathered output (world_size x the input);
all_to_all = the whole send buffer of one rank (world_size chunks). Each sample times ``inner``
back-to-back calls after a barrier on every rank; the sample is the slowest rank's time per call.
algbw = bytes / time; busbw = algbw x (2(n-1)/n for all_reduce, (n-1)/n for all_gather and all_to_all).
"""
from __future__ import annotations

import datetime
import inspect
import json
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from validation.bench_common import Stats, TimingPolicy, available_cpus, log

COLLECTIVE_COLUMNS: tuple[str, ...] = (
    "collective", "backend", "device", "dtype", "world_size", "threads_per_rank", "oversubscribed",
    "bytes", "count", "median_s", "p10_s", "p90_s", "min_s", "max_s", "repeats", "inner",
    "algbw_Bps", "busbw_Bps",
)
"""Columns of collectives.csv, in order."""

COLLECTIVES = ("all_reduce", "all_gather", "all_to_all")

_KIB, _MIB = 1024, 1024 * 1024
FULL_SIZES = tuple(_KIB * 4 ** i for i in range(8))  # 1 KiB .. 16 MiB, x4 steps
QUICK_SIZES = (4 * _KIB, 256 * _KIB)


def bus_factor(collective: str, world_size: int) -> float:
    """nccl-tests bus-bandwidth factor: busbw = algbw * factor."""
    n = world_size
    if collective == "all_reduce":
        return 2.0 * (n - 1) / n
    return (n - 1) / n


@dataclass(frozen=True)
class CollectiveJob:
    """What one spawned group measures. ``sizes`` are nccl-tests sizes in bytes (fp32 elements)."""

    backend: str
    device_type: str
    world_size: int
    port: int
    collectives: tuple[str, ...]
    sizes: tuple[int, ...]
    policy: TimingPolicy
    threads_per_rank: int
    result_path: str


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (asked from the OS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _buffers(collective: str, size: int, n: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input, output, element count of the nccl-tests size) for one rank."""
    count = max(n, size // 4)
    count -= count % n  # divisible into world_size chunks
    if collective == "all_reduce":
        t = torch.ones(count, dtype=torch.float32, device=dev)
        return t, t, count
    if collective == "all_gather":
        return (torch.ones(count // n, dtype=torch.float32, device=dev),
                torch.empty(count, dtype=torch.float32, device=dev), count)
    return (torch.ones(count, dtype=torch.float32, device=dev),
            torch.empty(count, dtype=torch.float32, device=dev), count)


# torch >= 2.10 names it all_gather_single and deprecates all_gather_into_tensor; same semantics.
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _call(collective: str, inp: torch.Tensor, out: torch.Tensor) -> None:
    if collective == "all_reduce":
        dist.all_reduce(inp)
    elif collective == "all_gather":
        _ALL_GATHER(out, inp)
    else:
        dist.all_to_all_single(out, inp)


def _worker(rank: int, job: CollectiveJob) -> None:
    torch.set_num_threads(job.threads_per_rank)
    cuda = job.device_type == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
    else:
        dev = torch.device("cpu")
    kwargs: dict = {}
    if cuda and "device_id" in inspect.signature(dist.init_process_group).parameters:
        kwargs["device_id"] = dev  # binds the NCCL communicator (and barriers) to this rank's GPU
    dist.init_process_group(job.backend, init_method=f"tcp://127.0.0.1:{job.port}", rank=rank,
                            world_size=job.world_size, timeout=datetime.timedelta(seconds=120), **kwargs)
    n = job.world_size
    pol = job.policy

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def timed(collective: str, inp: torch.Tensor, out: torch.Tensor, inner: int) -> float:
        dist.barrier()
        sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            _call(collective, inp, out)
        sync()
        return (time.perf_counter() - t0) / inner

    results = []
    for collective in job.collectives:
        for size in job.sizes:
            inp, out, count = _buffers(collective, size, n, dev)
            # every rank must run the same number of warm-up calls: rank 0's clock decides when to stop
            t_start = time.perf_counter()
            warm = 0
            while True:
                _call(collective, inp, out)
                warm += 1
                done = warm >= pol.min_warmup and time.perf_counter() - t_start >= pol.warmup_s
                flag = torch.tensor([1.0 if done else 0.0], device=dev)
                dist.broadcast(flag, 0)
                if flag.item() > 0:
                    break
            one = torch.tensor([timed(collective, inp, out, 1)], device=dev)
            dist.all_reduce(one, op=dist.ReduceOp.MAX)
            one_s = max(float(one.item()), 1e-9)
            inner = max(1, math.ceil(pol.min_sample_s / one_s))
            repeats = max(pol.min_repeats, min(pol.max_repeats, int(pol.budget_s / (one_s * inner))))
            samples = torch.tensor([timed(collective, inp, out, inner) for _ in range(repeats)],
                                   dtype=torch.float64, device=dev)
            dist.all_reduce(samples, op=dist.ReduceOp.MAX)
            st = Stats.of(samples.cpu().tolist())
            nbytes = count * 4
            algbw = nbytes / st.median_s
            results.append(dict(
                collective=collective, backend=job.backend, device=job.device_type, dtype="fp32",
                world_size=n, threads_per_rank=job.threads_per_rank if not cuda else None,
                oversubscribed=(not cuda) and n * job.threads_per_rank > available_cpus(),
                bytes=nbytes, count=count, median_s=st.median_s, p10_s=st.p10_s, p90_s=st.p90_s,
                min_s=st.min_s, max_s=st.max_s, repeats=st.repeats, inner=inner,
                algbw_Bps=algbw, busbw_Bps=algbw * bus_factor(collective, n)))
            del inp, out
    if rank == 0:
        with open(job.result_path, "w") as fh:
            json.dump(results, fh)
    dist.barrier()
    dist.destroy_process_group()


def run_collectives(backend: str, device_type: str, world_sizes: Sequence[int], sizes: Sequence[int],
                    policy: TimingPolicy, threads_per_rank: int = 1,
                    collectives: Sequence[str] = COLLECTIVES) -> list[dict]:
    """Spawn one process group per world size and return one row per (collective, world size, size)."""
    rows: list[dict] = []
    for ws in world_sizes:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "result.json")
            for attempt in range(2):  # the free port can be taken between asking and binding: retry once
                job = CollectiveJob(backend=backend, device_type=device_type, world_size=ws, port=free_port(),
                                    collectives=tuple(collectives), sizes=tuple(sizes), policy=policy,
                                    threads_per_rank=threads_per_rank, result_path=path)
                try:
                    mp.spawn(_worker, args=(job,), nprocs=ws, join=True)
                    break
                except Exception as exc:  # noqa: BLE001 - report and retry on a new port
                    if attempt == 1:
                        raise
                    log(f"  collectives world_size={ws}: {type(exc).__name__}: {exc}; retrying on a new port")
            with open(path) as fh:
                got = json.load(fh)
        for r in got:
            log(f"  {r['collective']} {backend} n={ws} bytes={r['bytes']} median={r['median_s'] * 1e6:.1f}us "
                f"busbw={r['busbw_Bps'] / 1e9:.3f} GB/s")
        log(f"  world_size={ws} done in {time.perf_counter() - t0:.1f}s")
        rows.extend(got)
    return rows
