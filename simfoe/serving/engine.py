"""SimPy serving engine: arrivals -> router -> replicas, each a continuous-batching loop.

Each replica is one SimPy process: form a batch (scheduler), ask the memoized step model for the
iteration time, wait that long, then advance every scheduled request (tokens, KV, metrics). An
idle replica sleeps on an event that the next submitted request triggers, and a batch that only
decodes runs up to the next event that can change it (a completion, an arrival, a full KV cache) in
one turn (:mod:`simfoe.serving.fastforward`, bit-identical results), so the loop turns grow with
arrivals and completions rather than with iterations. Per-request bookkeeping is vectorized over
numpy columns (:class:`simfoe.serving.metrics.RequestStore`). Deterministic: no randomness here.
"""
from __future__ import annotations

import gc

import math
from collections import deque
from functools import partial
from operator import attrgetter
from dataclasses import dataclass, replace

import numpy as np
import simpy

from simfoe.errors import SpecError
from simfoe.forward.work import Work
from simfoe.serving.kv_cache import KVBlocks
from simfoe.serving.clients import Clients
from simfoe.serving.fastforward import decode_run, enabled as fast_forward
from simfoe.serving.mtp import Drafts
from simfoe.serving.prefix_cache import PrefixCache, Prefixes
from simfoe.serving.metrics import (
    STATUS_DONE, STATUS_DROPPED, STATUS_RUNNING, STATUS_WAITING, GapHistogram, RequestStore,
)
from simfoe.serving.router import make_router
from simfoe.serving.scheduler import fast_decode, make_scheduler
from simfoe.serving.step_models import RankLoads, make_cost
from simfoe.timeline import MAX_EVENTS
from simfoe.workloads.closed_loop import ClosedLoop


_free = attrgetter("free")


class Rank:
    """One scheduling unit: a whole instance, or one data-parallel attention rank of it, with its own
    waiting queue, running list, KV pool and budgets (one vLLM / SGLang scheduler)."""

    __slots__ = ("kv", "waiting", "running", "preemptions")

    def __init__(self, kv: KVBlocks):
        self.kv = kv
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        self.preemptions = 0

    def outstanding(self, waiting_weight: int = 1) -> int:
        """Running requests plus ``waiting_weight`` x waiting ones."""
        return waiting_weight * len(self.waiting) + len(self.running)

    def prefix_match(self, i: int) -> float:
        """Share of request ``i``'s prefix blocks this rank's prefix cache holds (0 without one)."""
        return self.kv.cache.match_rate(i) if self.kv.cache is not None else 0.0


def _chunks(chunks, st) -> tuple:
    """(prefill tokens, causal query-key pairs, largest chunk) of one batch's prefill chunks."""
    pf_tok = 0
    pairs = 0.0
    biggest = 0
    for i, c in chunks:
        pf_tok += c
        pairs += c * (int(st.ctx[i]) + (c + 1) / 2)
        if c > biggest:
            biggest = c
    return pf_tok, pairs, biggest


@dataclass(frozen=True, slots=True)
class Batch(Work):
    """One iteration: its :class:`Work` (what the step model prices) plus the requests it advances,
    ``decodes`` (int array, one token each) and ``chunks`` (``(request, prefill tokens)`` pairs), and
    ``loads``, each busy DP attention rank's share (None when the engine prices ranks as even)."""

    decodes: np.ndarray = None
    chunks: list = None
    loads: RankLoads | None = None


class Replica:
    """One model instance: its ranks (:class:`Rank`; one unless the budgets are per DP attention
    rank), busy-time counters (s) and the SimPy loop that runs its iterations.

    With several ranks an arriving request is pinned to one rank (``rank_router``). Every iteration
    each rank schedules its own batch, and the ranks step together (the MoE layers exchange their
    tokens): the step model prices the summed batch as if spread evenly, plus the busiest rank's
    excess own compute (:class:`simfoe.serving.step_models.RankExcess`) when the model provides it.
    """

    def __init__(self, engine: Engine, index: int, kv_capacity_tokens: int, block_size: int, ranks: int,
                 rank_router: str):
        self.engine = engine
        self.index = index
        self.ranks = [Rank(KVBlocks(kv_capacity_tokens, block_size, ranks)) for _ in range(ranks)]
        self.kvs = [q.kv for q in self.ranks]  # each rank's KV blocks (fixed for the run)
        self.kv_total = sum(q.total for q in self.kvs)  # blocks
        self.rank_router = make_router(rank_router, ranks, "rank_router") if ranks > 1 else None
        self.idle: simpy.Event | None = None
        self.busy_s = 0.0
        self.excess_s = 0.0  # busy time the busiest rank added over a balanced instance, s
        self.kv_time = 0.0  # integral of used KV fraction over busy time, s
        self.kv_max = 0.0
        self.iterations = 0
        self.fast_forwarded = 0  # of those, iterations advanced in decode-only runs (simfoe.serving.fastforward)
        #: overlap scheduler (EngineConfig.overlap_scheduler): requests that arrived while an iteration ran
        #: (``inbox``), and those the scheduler has fetched for the iteration after the next (``fetched``)
        self.inbox: list[int] = []
        self.fetched: list[int] = []

    @property
    def preemptions(self) -> int:
        return sum(q.preemptions for q in self.ranks)

    def outstanding(self, waiting_weight: int = 1) -> int:
        return sum(q.outstanding(waiting_weight) for q in self.ranks)

    def prefix_match(self, i: int) -> float:
        """The longest cached prefix of request ``i`` on any of its ranks, as a share of its prefix blocks."""
        return max(q.prefix_match(i) for q in self.ranks)

    def submit(self, i: int) -> None:
        rr = self.rank_router
        k = rr.pick(self.ranks, i) if rr is not None else 0
        self.engine.store.rank[i] = k
        if self.engine.cfg.overlap_scheduler and self.idle is None:  # an iteration runs: seen two batches later
            self.inbox.append(i)
            return
        self.ranks[k].waiting.append(i)
        self.wake()

    def fetch(self, everything: bool = False) -> bool:
        """Overlap scheduler, at the end of an iteration: the requests fetched one iteration ago join their
        ranks' queues and those that arrived during it are fetched (``everything``: all of them join at once,
        as an idle engine takes a request at once); whether any joined."""
        st = self.engine.store
        join = self.fetched + self.inbox if everything else self.fetched
        self.fetched, self.inbox = ([], []) if everything else (self.inbox, [])
        for i in join:
            self.ranks[st.rank[i]].waiting.append(i)
        return bool(join)

    def wake(self) -> None:
        """New work for this replica: end its idle wait, if it is waiting."""
        ev = self.idle
        if ev is not None:
            self.idle = None
            ev.succeed()

    def _schedule(self, now: float) -> Batch | None:
        """This iteration's batch, or None when no rank has work: every rank schedules its own (the
        policy's shortcut for ranks that all just decode does it for all at once)."""
        eng = self.engine
        st = eng.store
        keep = eng.excess is not None  # per-rank shares, for the busiest rank's excess
        fast = eng.decode_all(self.ranks, st) if eng.decode_all is not None else None
        if fast is not None:
            dec, counts = fast
            if not keep:
                return self._batch(dec, [], 0, 0, 0.0, None, None, None)
            nds = [n for n in counts if n]
            return self._batch(dec, [], 0, 0, 0.0, [0] * len(nds), [0.0] * len(nds), nds)
        sched = eng.scheduler
        # one queue for the whole instance: its chunks spread over the DP groups, so the biggest chunk
        # bounds the busiest group; one queue per rank: that rank's prefill tokens do
        spread = len(self.ranks) == 1
        decs, chunks = [], []
        pfs, prs, nds = ([], [], []) if keep else (None, None, None)
        top = pf_tok = 0
        pairs = 0.0
        for q in self.ranks:
            if not (q.running or q.waiting):
                continue
            b = sched.schedule(q, st, now)
            if b is None:
                continue
            d, ch = b
            decs.append(d)
            pf, pr, biggest = _chunks(ch, st) if ch else (0, 0.0, 0)
            if ch:
                chunks += ch
                pf_tok += pf
                pairs += pr
                top = max(top, biggest if spread else pf)
            if keep:
                pfs.append(pf)
                prs.append(pr)
                nds.append(len(d))
        if not decs:
            return None
        return self._batch(decs[0] if len(decs) == 1 else np.concatenate(decs), chunks, top, pf_tok, pairs, pfs, prs,
                           nds)

    def _batch(self, dec: np.ndarray, chunks: list, top: int, pf_tok: int, pairs: float, pfs: list | None,
               prs: list | None, nds: list | None) -> Batch:
        """The :class:`Batch` of decodes ``dec`` (in rank order) and ``chunks`` (``pf_tok`` prefill tokens,
        ``pairs`` causal pairs), whose busiest DP group prefills ``top`` tokens; when the engine prices
        ranks, each busy rank's prefill tokens ``pfs``, their pairs ``prs`` and its decodes ``nds`` (else None)."""
        st = self.engine.store
        nd = len(dec)
        # the chunks as equal chunks that load the busiest data-parallel group alike (8000 + 192
        # tokens: one; 4096 + 4096: two), so an MoE layout spreads them over its DP attention groups
        seqs = pf_tok // top if top else 0
        if nds is None:
            return Batch(pf_tok, pairs, seqs, nd, int(st.ctx[dec].sum()) + nd if nd else 0, dec, chunks)
        # decode KV tokens per rank (context + the new token): one prefix sum over all ranks' decodes
        lens = np.fromiter(nds, np.int64, len(nds))
        ends = np.cumsum(lens)
        cs = np.concatenate(([0], np.cumsum(st.ctx[dec])))
        loads = RankLoads(pfs, prs, nds, (cs[ends] - cs[ends - lens] + lens).tolist())
        return Batch(pf_tok, pairs, seqs, nd, int(cs[-1]) + nd, dec, chunks, loads)

    def loop(self):
        eng = self.engine
        env, st = eng.env, eng.store
        emit = st.emit
        ranks = self.ranks
        drafts = eng.drafts
        ff = fast_forward(eng)
        overlap = eng.cfg.overlap_scheduler
        while True:
            batch = self._schedule(env.now)
            if batch is None:
                if overlap and self.fetch(everything=True):
                    continue
                self.idle = env.event()
                yield self.idle
                continue
            dec, chunks = batch.decodes, batch.chunks
            nd = batch.decode_seqs
            # decode-only: its iterations up to the next event at once (the last one ends below)
            hops = (decode_run(self, batch, env.now) if ff and nd and not chunks
                    and not (overlap and (self.inbox or self.fetched)) else None)
            if hops is None:
                yield env.timeout(self._price(batch))
            else:
                for d in hops:
                    yield env.timeout(d)
            now = env.now
            if overlap:  # before this iteration's completions send their clients' next requests
                self.fetch()
            # ---- advance decodes
            if nd:
                if drafts is None:
                    st.ctx[dec] += 1
                    emit(dec, now)
                else:  # 1 + accepted drafts each; their KV stays, the rejected drafts' is overwritten
                    m = drafts.emitted(st.target[dec] - st.gen[dec])
                    st.ctx[dec] += m
                    emit(dec, now, m)
                fin = dec[st.gen[dec] >= st.target[dec]]
            else:
                fin = dec
            # ---- advance prefill chunks
            if chunks:
                done_pf = []
                for i, c in chunks:
                    st.ctx[i] += c
                    left = st.pf_left[i] - c
                    st.pf_left[i] = left
                    if left == 0:
                        done_pf.append(i)
                if done_pf:
                    if eng.prefixes is not None:  # their prompts' blocks join their rank's prefix cache
                        for i in done_pf:
                            ranks[st.rank[i]].kv.cache.insert(i, st)
                    dp = np.asarray(done_pf, np.int64)
                    emit(dp, now)
                    f2 = dp[st.gen[dp] >= st.target[dp]]
                    if len(f2):
                        fin = np.concatenate([fin, f2])
            if len(fin):
                self._finish(fin)
            if eng.pbar is not None:
                eng.tick(now)

    def _price(self, batch: Batch) -> float:
        """Seconds of one iteration of ``batch`` (cost, busiest-rank excess, MTP drafts, host overheads),
        added to the busy-time, KV-use and excess counters and the timeline."""
        eng = self.engine
        env, cost, drafts, kvs = eng.env, eng.cost, eng.drafts, self.kvs
        step_a, step_b = eng.cfg.step_overhead_s, eng.cfg.step_overhead_per_seq_s
        chunks = batch.chunks
        pf_tok, nd, kv_tok = batch.prefill_tokens, batch.decode_seqs, batch.decode_kv_tokens
        work = batch if drafts is None else drafts.verify(batch)  # MTP: k + 1 query tokens per decode
        excess = eng.excess(work.loads, work) if work.loads is not None else 0.0
        lat = cost(work) + excess + (0.0 if drafts is None else drafts.price(batch))
        self.excess_s += excess
        if step_a or step_b:  # the engine's host time per iteration, and per sequence in its batch
            lat += step_a + step_b * (nd + len(chunks))
        used = 1.0 - (sum(map(_free, kvs)) if len(kvs) > 1 else kvs[0].free) / self.kv_total
        self.kv_time += used * lat
        if used > self.kv_max:
            self.kv_max = used
        self.busy_s += lat
        self.iterations += 1
        tl = eng.timeline
        if tl is not None and lat > 0:
            if len(tl) < MAX_EVENTS:
                tl.append({"name": "prefill+decode" if (pf_tok and nd) else ("prefill" if pf_tok else "decode"),
                           "ph": "X", "pid": 0, "tid": self.index, "ts": env.now * 1e6, "dur": lat * 1e6,
                           "args": {"prefill_tokens": pf_tok, "prefill_seqs": len(chunks), "decode_seqs": nd,
                                    "kv_tokens": kv_tok,
                                    "kv_used_fraction": round(used, 4),
                                    "waiting": sum(len(q.waiting) for q in self.ranks),
                                    "rank_excess_s": excess}})
            else:
                eng.timeline_truncated = True
        return lat

    def _finish(self, fin: np.ndarray) -> None:
        """Free the KV blocks of finished requests ``fin`` on their ranks and mark them done."""
        eng = self.engine
        st = eng.store
        if eng.prefixes is not None:  # prefix caching: own blocks freed, cached prefix unpinned (blocks -> 0)
            for i in fin.tolist():
                self.ranks[st.rank[i]].kv.cache.release(i, st)
        if len(self.ranks) == 1:
            touched = ((self.ranks[0], int(st.blocks[fin].sum())),)
        else:
            rk = st.rank[fin]
            freed = np.bincount(rk, weights=st.blocks[fin], minlength=len(self.ranks))
            touched = [(self.ranks[k], int(freed[k])) for k in np.unique(rk).tolist()]
        st.blocks[fin] = 0
        st.status[fin] = STATUS_DONE
        for q, blocks in touched:
            q.kv.free += blocks
            run = np.fromiter(q.running, np.int64, len(q.running))
            q.running = run[st.status[run] == STATUS_RUNNING].tolist()
        eng.completed += len(fin)
        if eng.clients is not None:
            eng.clients.finished(len(fin), eng.env.now)

    def reset_counters(self) -> None:
        """Restart the busy-time, KV-use and preemption counters (not ``iterations``: a simulation count)."""
        self.busy_s = self.excess_s = self.kv_time = self.kv_max = 0.0
        for q in self.ranks:
            q.preemptions = 0


BUDGET_SCOPES = ("rank", "instance")


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of the serving engine (tokens, sequences, seconds); one object from the API to the engine."""

    replicas: int = 1
    router: str = "round-robin"
    scheduler: str = "chunked"
    max_batch: int = 256  # per rank (budget_scope "rank") or per instance
    token_budget: int = 8192  # per rank (budget_scope "rank") or per instance
    # "rank": every data-parallel attention rank of an instance (the step model's dp_ranks)
    # has its own queue, max_batch, token_budget and KV share, as in vLLM and SGLang; "instance":
    # one queue, one budget and one KV pool for the whole instance
    budget_scope: str = "rank"
    rank_router: str = "vllm-lb"  # which rank an arriving request is pinned to (see router.py)
    block_size: int = 16
    cost: str = "auto"  # memo | interp | auto (see step_models.make_cost)
    bucket_bits: int | None = None
    horizon_s: float | None = None  # stop here; unfinished requests are reported dropped
    token_times: bool = False
    timeline: bool = False  # record one trace event per iteration (bounded by simfoe.timeline.MAX_EVENTS)
    # host time the forward model does not price (an engine profile's fitted overheads, simfoe.specs.engine):
    # per request, from being sent to being schedulable (requests overlap in it: HTTP, tokenization and the
    # hand-over run concurrently with the engine); per iteration; per iteration and sequence in its batch. Seconds.
    request_overhead_s: float = 0.0
    step_overhead_s: float = 0.0
    step_overhead_per_seq_s: float = 0.0
    engine: str | None = None  # the engine profile the knobs came from (None: no profile)
    # multi-token prediction (simfoe.serving.mtp): draft tokens per decode step (0: off) and the conditional
    # acceptance rate of each draft position (None: DeepSeek-V3's published 0.85, for mtp 1 only)
    mtp: int = 0
    mtp_acceptance: tuple[float, ...] | None = None
    # prefix caching (simfoe.serving.prefix_cache): one block cache per KV pool, from the requests' prefix block ids
    prefix_cache: bool = False
    # TensorRT-LLM's overlap scheduler: the batch of iteration n + 2 is formed while iteration n + 1 runs,
    # from the requests that had arrived when n ended, so a request arriving during iteration n runs from
    # n + 2 on, and a closed-loop client's next request (sent when its last token, of iteration n, came out)
    # from n + 3 on; an idle engine takes a request at once. False: from the next iteration on
    overlap_scheduler: bool = False
    # advance decode-only iterations up to the next event at once (simfoe.serving.fastforward; the same
    # results, bit for bit); False: one iteration per turn of the loop
    fast_forward: bool = True


def engine_config(base: EngineConfig | str | None = None, **knobs) -> EngineConfig:
    """``base`` (default: the defaults; a name or YAML path: that engine profile's knobs, :func:`profile_config`)
    with the fields in ``knobs`` replaced; an unknown field is a SpecError."""
    fields = EngineConfig.__dataclass_fields__
    for k in knobs:
        if k not in fields:
            raise SpecError(k, knobs[k], "an engine setting: one of " + ", ".join(fields))
    if base is not None and not isinstance(base, EngineConfig):
        base = profile_config(base)
    return replace(base or EngineConfig(), **knobs) if knobs else (base or EngineConfig())


def profile_config(engine, base: EngineConfig | None = None) -> EngineConfig:
    """``base`` (default: the defaults) with the batching knobs and overheads of ``engine`` (an
    :class:`simfoe.specs.engine.EngineProfile`, or a profile name or YAML path; errors name ``engine``)."""
    from simfoe.specs.engine import load_engine

    p = engine if hasattr(engine, "overheads") else load_engine(engine)
    o = p.overheads
    return replace(base or EngineConfig(), scheduler=p.scheduler, token_budget=p.token_budget, max_batch=p.max_batch,
                   request_overhead_s=o.request_s, step_overhead_s=o.step_s, step_overhead_per_seq_s=o.step_per_seq_s,
                   overlap_scheduler=p.overlap_scheduler, engine=p.name)


class Engine:
    """Wires a request table, a step model and replicas into one SimPy environment."""

    def __init__(self, arrival_s, prompt_tokens, output_tokens, request_id, step_model,
                 kv_capacity_tokens: int, cfg: EngineConfig, progress: bool = False, closed: ClosedLoop | None = None,
                 env: simpy.Environment | None = None, draft_model=None, seed: int = 0,
                 prefixes: Prefixes | None = None):
        """``closed``: closed-loop clients issue the rows (arrival times are then ignored and set as
        they are sent; the first ``closed.warmup`` rows are warm-ups); None: rows arrive at ``arrival_s``.
        ``env``: the SimPy environment to run in (default: a new one), e.g. a pipeline's whose stages
        append rows (:meth:`RequestStore.append`) and :meth:`admit` them as they arrive.
        ``draft_model``: with ``cfg.mtp``, the step model of the draft module (None: drafts cost nothing);
        ``seed`` seeds the sampling of accepted drafts. ``prefixes``: the rows' prefix block ids, for
        ``cfg.prefix_cache``."""
        if not (isinstance(cfg.replicas, (int, np.integer)) and cfg.replicas >= 1):
            raise SpecError("replicas", cfg.replicas, "an integer >= 1")
        if cfg.horizon_s is not None and not (cfg.horizon_s > 0 and math.isfinite(cfg.horizon_s)):
            raise SpecError("horizon_s", cfg.horizon_s, "seconds > 0, or None to run until drained")
        arr = np.asarray(arrival_s, dtype=np.float64)
        if closed is not None:
            arr = np.full(len(prompt_tokens), np.nan)
        elif len(arr) and not (np.isfinite(arr).all() and (np.diff(arr) >= 0).all()):
            raise SpecError("arrival_s", "unsorted or missing", "finite, sorted arrival times (s)")
        self.cfg = cfg
        self.env = env if env is not None else simpy.Environment()
        self.store = RequestStore(arr, prompt_tokens, output_tokens, request_id, token_times=cfg.token_times)
        if cfg.budget_scope not in BUDGET_SCOPES:
            raise SpecError("budget_scope", cfg.budget_scope, "allowed: " + ", ".join(BUDGET_SCOPES))
        self.cost = make_cost(step_model, cfg.cost, cfg.bucket_bits)
        #: scheduling ranks per replica: the model's DP attention ranks, each with its own queue and
        #: budget (budget_scope "rank"), or 1 (one for the whole instance)
        self.ranks_per_replica = n = self.cost.dp_ranks if cfg.budget_scope == "rank" else 1
        self.scheduler = make_scheduler(cfg.scheduler, cfg.max_batch, cfg.token_budget)
        #: multi-token prediction (None: off): drafts per step, acceptance sampling, draft cost
        self.drafts = Drafts(cfg.mtp, cfg.mtp_acceptance, None if draft_model is None else
                             make_cost(draft_model, cfg.cost, cfg.bucket_bits), seed) if cfg.mtp else None
        if self.drafts is not None:
            self.scheduler.step_tokens = self.drafts.step_tokens
        elif cfg.mtp_acceptance is not None:
            Drafts(0, cfg.mtp_acceptance)  # refused: acceptance without drafts
        #: the policy's shortcut for several ranks that all just decode (None: schedule rank by rank);
        #: under MTP its decodes take blocks for k + 1 tokens
        fast = fast_decode(self.scheduler) if n > 1 else None
        self.decode_all = fast if fast is None or self.drafts is None else partial(fast, step_tokens=self.drafts.step_tokens)
        self.router = make_router(cfg.router, int(cfg.replicas))
        make_router(cfg.rank_router, 1, "rank_router")  # a bad name fails also where no instance has ranks
        #: the busiest rank's excess compute over a balanced instance (None: one rank, or the model has no rank costs)
        self.excess = self.cost.rank_excess(n) if n > 1 else None
        self.replicas = [Replica(self, k, kv_capacity_tokens, cfg.block_size, n, cfg.rank_router)
                         for k in range(int(cfg.replicas))]
        #: the rows' prefix block ids when prefix caching is on (None: off)
        self.prefixes = self._prefix_caches(prefixes) if cfg.prefix_cache else None
        for k in ("request_overhead_s", "step_overhead_s", "step_overhead_per_seq_s"):
            v = getattr(cfg, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise SpecError(k, v, "seconds >= 0")
        self.completed = 0
        self.arrived = 0
        #: closed-loop clients (None: open loop); rows before ``measure_from`` are warm-ups, left out of metrics
        self.clients = Clients(self, closed.concurrency, closed.warmup) if closed is not None else None
        self.measure_from = closed.warmup if closed is not None else 0
        self.pbar = None
        self.timeline: list | None = [] if cfg.timeline else None
        self.timeline_truncated = False
        self._progress = progress
        self._last_tick = 0.0

    def _prefix_caches(self, prefixes: Prefixes | None) -> Prefixes:
        """Give every KV pool its prefix cache and the store its columns (pinned blocks, tokens hit)."""
        if prefixes is None:
            raise SpecError("prefix_cache", True, "a workload whose requests carry prefix block ids: a Mooncake "
                            "trace (mooncake-conv, mooncake-synthetic) or multi-turn")
        st = self.store
        st.shared = np.zeros(st.n, np.int64)
        st.hit = np.zeros(st.n, np.int64)
        for r in self.replicas:
            for q in r.ranks:
                q.kv.cache = PrefixCache(q.kv, prefixes)
        return prefixes

    def tick(self, now: float) -> None:
        """Advance the progress bar to simulated time ``now`` (s), at most once per simulated second."""
        if now - self._last_tick >= 1.0:
            if now > self.pbar.total:
                # draining past the last arrival: the bar's end follows the clock (tqdm drops a total
                # that n overtakes, and the bar format cannot print a missing total)
                self.pbar.total = math.ceil(now)
                if self.clients is None:  # a closed loop has no last arrival to drain after
                    self.pbar.set_description("serve (draining)", refresh=False)
            self.pbar.update(now - self._last_tick)
            self._last_tick = now
            self.pbar.set_postfix_str(f"done {self.completed}/{self.store.n}", refresh=False)

    def admit(self, i: int, replica: int | None = None) -> None:
        """Request row ``i`` arrives now: route it to a replica's queue (``replica``: that one, not the router's pick)."""
        st = self.store
        k = self.router.pick(self.replicas, i) if replica is None else replica
        st.replica[i] = k
        st.status[i] = STATUS_WAITING
        self.arrived += 1
        self.replicas[k].submit(i)

    def arrive(self, i: int, replica: int | None = None) -> None:
        """Request row ``i`` is sent now: :meth:`admit` it (to ``replica`` when given) ``cfg.request_overhead_s``
        later (at once when 0)."""
        ov = self.cfg.request_overhead_s
        if not ov:
            self.admit(i, replica)
            return
        self.env.timeout(ov).callbacks.append(lambda _ev: self.admit(i, replica))

    def arrivals(self):
        """Open loop: every row arrives at its arrival time."""
        env, arr = self.env, self.store.arrival
        for i in range(self.store.n):
            dt = arr[i] - env.now
            if dt > 0:
                yield env.timeout(dt)
                # now + (arr - now) can round one ulp below arr: the request arrives when the
                # simulation gets to it, so later times (scheduled, first token) never precede it
                arr[i] = env.now
            self.arrive(i)

    def begin_measurement(self) -> None:
        """Closed loop, every warm-up done: restart the counters the summary reads (busy time, KV use,
        preemptions, the TBT histogram), so that the metrics cover the measured rows alone."""
        self.store.gaps = GapHistogram()
        for r in self.replicas:
            r.reset_counters()
        if self.drafts is not None:
            self.drafts.reset_counters()

    def run(self) -> Engine:
        """Simulate until every request is done (or the horizon); returns self."""
        if self._progress:
            from tqdm import tqdm

            total = float(self.store.arrival[-1]) if self.store.n and self.clients is None else 0.0
            self.pbar = tqdm(total=round(total, 1), unit="sim s", desc="serve", leave=False,
                             bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} sim s [{elapsed}<{remaining}] {postfix}")
        if self.clients is not None:
            self.clients.start()
        else:
            self.env.process(self.arrivals())
        for r in self.replicas:
            self.env.process(r.loop())
        # Allocation-heavy loop whose garbage is freed by reference counting: pause the cyclic
        # collector while it runs so it does not rescan live objects (same results, less time).
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            self.env.run(until=self.cfg.horizon_s)
        finally:
            if gc_was_on:
                gc.enable()
            if self.pbar is not None:
                self.pbar.close()
        st = self.store
        left = st.status != STATUS_DONE
        left &= st.status != STATUS_DROPPED
        st.status[left] = STATUS_DROPPED
        st.dropped[left] = 2
        return self
