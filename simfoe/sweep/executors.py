"""Executors: run chunks of scenarios and yield each chunk's records as it finishes.

``local``: a process pool (spawned workers, each imports the simulator once and exits when the
sweep process dies; workers=1 runs in-process). ``ray``: the same
:func:`simfoe.sweep.worker.run_chunk` as Ray tasks on a local instance or an existing cluster
(``address``), retried when a worker dies. Each scenario's result
depends only on its inputs (seeded), so both give identical tables.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator

from simfoe.errors import SpecError, require_extra
from simfoe.sweep.worker import init_worker, run_chunk

Chunk = list[tuple]  # [(index, run_id, options, override_list), ...]


def _failed(chunk: Chunk, why: str) -> list[dict]:
    return [{"index": t[0], "run_id": t[1], "status": "error", "error": why, "metrics": {},
             "wall_s": None, "worker": None} for t in chunk]


def iter_local(kind: str, chunks: list[Chunk], metrics, fn: Callable | None, workers: int,
               max_retries: int = 2) -> Iterator[list[dict]]:
    """Yield record lists as chunks finish on a local process pool (in-process when workers == 1)."""
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield run_chunk(kind, c, metrics, fn)
        return
    ctx = mp.get_context("spawn")  # no fork of a parent holding threads (progress bar) or Ray state
    todo = list(range(len(chunks)))
    attempts = [0] * len(chunks)
    while todo:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                   initializer=init_worker, initargs=(kind, fn, os.getpid()))
        futs = {pool.submit(run_chunk, kind, chunks[i], metrics, fn): i for i in todo}
        todo = []
        try:
            pending = set(futs)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    i = futs[f]
                    try:
                        recs = f.result()
                    except BrokenProcessPool:
                        attempts[i] += 1
                        if attempts[i] > max_retries:
                            yield _failed(chunks[i], "WorkerDied: a pool worker exited while running this chunk")
                        else:
                            todo.append(i)
                        continue
                    yield recs
        finally:
            pool.shutdown(wait=not todo, cancel_futures=True)


def iter_ray(kind: str, chunks: list[Chunk], metrics, fn: Callable | None, workers: int,
             address: str | None = None, max_retries: int = 3) -> Iterator[list[dict]]:
    """Yield record lists as chunks finish as Ray tasks (retried up to ``max_retries`` on worker death)."""
    ray = require_extra("ray", "ray", "--executor", "ray")
    started = False
    if not ray.is_initialized():
        kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            if address:
                ray.init(address=address, **kw)
            else:
                ray.init(num_cpus=workers, **kw)
        except ConnectionError as e:
            raise SpecError("--address", address, "the address of a running Ray cluster (auto: one started with "
                            f"`ray start --head`), or no --address to start a local instance ({e})") from None
        started = True
    try:
        # a task whose worker or node died (NodeDiedError exists only in some Ray versions)
        lost_errors = tuple(getattr(ray.exceptions, n) for n in ("WorkerCrashedError", "RayTaskError", "NodeDiedError")
                          if hasattr(ray.exceptions, n))
        remote = ray.remote(num_cpus=1, max_retries=max_retries)(run_chunk)
        fn_ref = ray.put(fn) if fn is not None else None
        refs = {remote.remote(kind, c, metrics, fn_ref): i for i, c in enumerate(chunks)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                try:
                    yield ray.get(r)
                except lost_errors as e:
                    yield _failed(chunks[refs[r]], f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    finally:
        if started:
            ray.shutdown()
