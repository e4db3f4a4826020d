"""Event-driven fast-forward of the serving loop: decode-only iterations between the events that matter.

While every running request of a replica just decodes and nothing waits, its batch cannot change
until a request finishes, a rank runs out of KV blocks, or another event (an arrival, a KV transfer,
another replica's iteration, the horizon) comes due. :func:`decode_run` prices and books those k
iterations at once (numpy over the k steps instead of k turns of the SimPy loop), with the same
floating-point operations in the same order as the step-by-step loop, so every time, metric and
counter is bit-identical: iteration end times accumulate one latency at a time, each request's gap sum
adds its gaps one at a time, the gap histogram receives the same arrays. Per-token times are kept
exactly (``token_times``). The last of the k iterations ends through the loop's own code (its
tokens, completions, clients), at its exact end time.

Off (the loop steps one iteration at a time) with ``EngineConfig.fast_forward=False``, multi-token
prediction, a timeline, prefix caching, a progress bar, an emit hook (``RequestStore.on_emit``) or a
policy without the all-decode fast path (:func:`simfoe.serving.scheduler.fast_decode`), whose promise
(the batches ``schedule`` forms when every rank just decodes) is what a run relies on.
"""
from __future__ import annotations

import math

import numpy as np

from simfoe.forward.work import Work
from simfoe.serving.scheduler import fast_decode
from simfoe.serving.step_models import RankLoads


def enabled(engine) -> bool:
    """Whether ``engine``'s replicas may fast-forward decode-only iterations (see the module docstring); read
    once, when a replica's loop starts (after a pipeline stage has set its emit hook)."""
    return (engine.cfg.fast_forward and engine.drafts is None and engine.timeline is None
            and engine.prefixes is None and engine.pbar is None and engine.store.on_emit is None
            and engine.cost.decode_prices is not None and fast_decode(engine.scheduler) is not None)


def decode_run(rep, batch, now: float) -> tuple[float, ...] | None:
    """Fast-forward replica ``rep`` whose just-scheduled ``batch`` (decode-only) starts at ``now`` (s):
    book the iterations its decodes run before the next event but the last one's tokens, and return the
    delays (s) of the timeouts that end that last one exactly (:func:`exact_hops`); None (nothing changed)
    when fewer than 2 iterations run."""
    eng = rep.engine
    st = eng.store
    dec = batch.decodes
    nd = len(dec)
    if any(q.waiting for q in rep.ranks) or sum(len(q.running) for q in rep.ranks) != nd:
        return None
    k = int((st.target[dec] - st.gen[dec]).min())  # the first completion ends the run
    if k < 2 or not _second_starts(eng, batch, now) or np.isnan(st.last[dec]).any():
        return None
    ctx0 = st.ctx[dec]
    bs = rep.ranks[0].kv.block_size
    rank = st.rank[dec] if len(rep.ranks) > 1 else np.zeros(nd, np.int64)
    k, alloc = _block_room(rep, ctx0, rank, k, bs)
    lat, ex = _latencies(rep, batch, k, now)
    k = len(lat)
    if k < 2:
        return None
    t = np.add.accumulate(np.concatenate(([now], lat)))  # t[j]: start of iteration j, as the loop adds them
    eng.cost.note_lookups(nd, batch.decode_kv_tokens + nd * np.arange(k, dtype=np.int64))
    rep.fast_forwarded += k
    blocks = (ctx0 + k - 1) // bs - ctx0 // bs  # blocks each decode adds in iterations 1..k-1
    alloc = alloc[:, :k]  # the blocks of the k iterations that run (a prefix of those tried)
    _book_counters(rep, lat, ex, alloc)
    st.emit_run(dec, t[1:k])  # enabled(): no emit hook, so no held rows
    st.ctx[dec] += k - 1
    st.blocks[dec] += blocks
    for q, n in zip(rep.ranks, alloc.sum(axis=1).tolist()):
        q.kv.free -= n
    return exact_hops(now, t, lat)


def _second_starts(eng, batch, now: float) -> bool:
    """Whether a second iteration can start before the engine's next event: the first one's cost and
    host overheads end before it (its rank excess, >= 0, can only make it later). A cheap test that
    spares the run's set-up where other replicas' iterations interleave."""
    nxt = eng.env.peek()
    if nxt <= now:
        return False
    nd = batch.decode_seqs
    c = eng.cost.decode_price(nd, batch.decode_kv_tokens)
    a, b = eng.cfg.step_overhead_s, eng.cfg.step_overhead_per_seq_s
    return now + (c + (a + b * nd) if (a or b) else c) < nxt


def _allocations(ctx0: np.ndarray, rank: np.ndarray, ranks: int, k: int, bs: int) -> np.ndarray:
    """KV blocks the decodes (contexts ``ctx0``, on ranks ``rank``) take per rank (rows) in each of
    ``k`` iterations (columns; iteration 0's are already taken): a decode at context ``c`` takes one
    when ``c`` is a multiple of ``bs``, as the scheduler does."""
    res = (-ctx0) % bs  # iteration j >= 1 allocates for a decode when j % bs == res
    steps = np.arange(k) % bs
    alloc = np.zeros((ranks, k), np.int64)
    for r in range(ranks):
        alloc[r] = np.bincount(res[rank == r], minlength=bs)[steps]
    alloc[:, 0] = 0
    return alloc


def _block_room(rep, ctx0: np.ndarray, rank: np.ndarray, k: int, bs: int) -> tuple[int, np.ndarray]:
    """(iterations (at most ``k``) whose KV blocks every rank of ``rep`` has free - the run stops before
    an iteration where a rank would preempt -, :func:`_allocations` of the ``k`` tried)."""
    alloc = _allocations(ctx0, rank, len(rep.ranks), k, bs)
    for r, q in enumerate(rep.ranks):
        over = np.flatnonzero(np.cumsum(alloc[r]) > q.kv.free)
        if len(over):
            k = min(k, int(over[0]))
    return k, alloc


def _latencies(rep, batch, k: int, now: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(seconds of at most ``k`` iterations of ``batch``'s decodes from ``now``, each with one more token
    of context per decode: cost, busiest-rank excess and host overheads, summed as the loop sums them;
    the excess (s) of each, None when the engine prices ranks as even). Stops before an iteration that
    would start at or after the next event, or whose cost needs a new step-model evaluation."""
    eng = rep.engine
    nd = batch.decode_seqs
    kv = batch.decode_kv_tokens + nd * np.arange(k, dtype=np.int64)
    lat = eng.cost.decode_prices(nd, kv)
    a, b = eng.cfg.step_overhead_s, eng.cfg.step_overhead_per_seq_s
    o = a + b * nd
    if batch.loads is None:
        return _before_next(eng, now, lat + o if (a or b) else lat), None
    # the excess only lengthens iterations: find the bound without it, then price the excess that far
    k = len(_before_next(eng, now, lat + o if (a or b) else lat))
    ex = _excess(eng, batch, kv[:k])
    lat = lat[:k] + ex
    lat = _before_next(eng, now, lat + o if (a or b) else lat)
    return lat, ex[:len(lat)]


def _before_next(eng, now: float, lat: np.ndarray) -> np.ndarray:
    """The leading latencies of ``lat`` whose iterations start before the engine's next event (the first
    one always: it runs now)."""
    t = np.add.accumulate(np.concatenate(([now], lat[:-1])))  # start times
    late = np.flatnonzero(t[1:] >= eng.env.peek())
    return lat[:int(late[0]) + 1] if len(late) else lat


def _excess(eng, batch, kv: np.ndarray) -> np.ndarray:
    """The busiest rank's excess (s) in each iteration (the engine's RankExcess, one call per iteration)."""
    ld = batch.loads
    nds, kv_r = ld.decode_seqs, ld.decode_kv_tokens
    out = np.empty(len(kv))
    for j in range(len(kv)):
        loads = RankLoads(ld.prefill_tokens, ld.prefill_pairs, nds, [c + j * n for c, n in zip(kv_r, nds)])
        out[j] = eng.excess(loads, Work(0, 0.0, 0, batch.decode_seqs, int(kv[j])))
    return out


def _book_counters(rep, lat: np.ndarray, ex: np.ndarray | None, alloc: np.ndarray) -> None:
    """Add the run's iterations (latencies ``lat``, excesses ``ex``, KV blocks ``alloc`` per rank and
    iteration) to ``rep``'s busy-time, KV-use and excess counters, one at a time."""
    free = sum(q.kv.free for q in rep.ranks) - np.cumsum(alloc.sum(axis=0))
    used = 1.0 - free / rep.kv_total
    rep.kv_time = _sum(rep.kv_time, used * lat)
    rep.kv_max = max(rep.kv_max, float(used.max()))
    rep.busy_s = _sum(rep.busy_s, lat)
    rep.iterations += len(lat)
    if ex is not None:
        rep.excess_s = _sum(rep.excess_s, ex)


def _sum(start: float, xs: np.ndarray) -> float:
    """``start + xs[0] + xs[1] + ...`` left to right (as a loop adds them)."""
    return float(np.add.accumulate(np.concatenate(([start], xs)))[-1]) if len(xs) else start


def exact_hops(now: float, t: np.ndarray, lat: np.ndarray) -> tuple[float, ...]:
    """Delays (s) whose timeouts, one after the other from ``now``, end exactly at ``t[-1]``. SimPy adds a
    delay to the current time, and ``now + d`` cannot hit every float (rounding ties skip some): jump
    to the latest iteration end ``t[m]`` some delay reaches, then step by the latencies after it."""
    for m in range(len(t) - 1, 0, -1):
        end = float(t[m])
        d = end - now
        while now + d < end:
            d = math.nextafter(d, math.inf)
        while now + d > end:
            d = math.nextafter(d, -math.inf)
        if now + d == end:
            return (d, *lat[m:].tolist())
    raise AssertionError("unreachable: t[1] = now + lat[0]")
