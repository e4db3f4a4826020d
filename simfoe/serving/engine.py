"""SimPy serving engine: arrivals -> router -> replicas, each a continuous-batching loop.

Each replica is one SimPy process: form a batch (scheduler), ask the memoized step model for the
iteration time, wait that long, then advance every scheduled request (tokens, KV, metrics). An
idle replica sleeps on an event that the next submitted request triggers, so the event count
grows with iterations and arrivals, not with tokens. Per-request bookkeeping is vectorized over
numpy columns (:class:`simfoe.serving.metrics.RequestStore`). Deterministic: no randomness here.
"""
from __future__ import annotations

import gc

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from simfoe.errors import SpecError
from simfoe.serving.kv_cache import KVBlocks
from simfoe.serving.metrics import (
    STATUS_DONE, STATUS_DROPPED, STATUS_RUNNING, STATUS_WAITING, RequestStore,
)
from simfoe.serving.router import make_router
from simfoe.serving.scheduler import make_scheduler
from simfoe.serving.step_models import make_cost
from simfoe.timeline import MAX_EVENTS


class Replica:
    """One model instance: waiting queue, running list, KV blocks and busy-time counters (s)."""

    def __init__(self, engine: Engine, index: int, kv_capacity_tokens: int, block_size: int, ranks: int = 1):
        self.engine = engine
        self.index = index
        self.kv = KVBlocks(kv_capacity_tokens, block_size, ranks)
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        self.idle: simpy.Event | None = None
        self.busy_s = 0.0
        self.kv_time = 0.0  # integral of used KV fraction over busy time, s
        self.kv_max = 0.0
        self.iterations = 0
        self.preemptions = 0

    def submit(self, i: int) -> None:
        self.waiting.append(i)
        ev = self.idle
        if ev is not None:
            self.idle = None
            ev.succeed()

    def loop(self):
        eng = self.engine
        env, st, sched, cost = eng.env, eng.store, eng.scheduler, eng.cost
        emit = st.emit
        while True:
            batch = sched.schedule(self, st, env.now)
            if batch is None:
                self.idle = env.event()
                yield self.idle
                continue
            dec, chunks = batch
            pf_tok = 0
            pairs = 0.0
            biggest = 0
            for i, c in chunks:
                pf_tok += c
                pairs += c * (int(st.ctx[i]) + (c + 1) / 2)
                biggest = max(biggest, c)
            nd = len(dec)
            kv_tok = int(st.ctx[dec].sum()) + nd if nd else 0
            # the chunks as equal chunks that load the busiest data-parallel group alike (8000 + 192
            # tokens: one; 4096 + 4096: two), so an MoE layout spreads them over its DP attention groups
            lat = cost(pf_tok, pairs, nd, kv_tok, pf_tok // biggest if biggest else 0)
            used = self.kv.used_fraction
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
                               "args": {"prefill_tokens": pf_tok, "decode_seqs": nd, "kv_tokens": kv_tok,
                                        "kv_used_fraction": round(used, 4), "waiting": len(self.waiting)}})
                else:
                    eng.timeline_truncated = True
            yield env.timeout(lat)
            now = env.now
            # ---- advance decodes
            if nd:
                st.ctx[dec] += 1
                emit(dec, now)
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
                    dp = np.asarray(done_pf, np.int64)
                    emit(dp, now)
                    f2 = dp[st.gen[dp] >= st.target[dp]]
                    if len(f2):
                        fin = np.concatenate([fin, f2])
            if len(fin):
                self.kv.free += int(st.blocks[fin].sum())
                st.blocks[fin] = 0
                st.status[fin] = STATUS_DONE
                self.running = [j for j in self.running if st.status[j] == STATUS_RUNNING]
                eng.completed += len(fin)
            if eng.pbar is not None:
                eng.tick(now)


BUDGET_SCOPES = ("rank", "instance")


@dataclass
class EngineConfig:
    """Knobs of the serving engine (tokens, sequences, seconds)."""

    replicas: int = 1
    router: str = "round-robin"
    scheduler: str = "chunked"
    max_batch: int = 256  # per rank (budget_scope "rank") or per instance
    token_budget: int = 8192  # per rank (budget_scope "rank") or per instance
    # "rank": every data-parallel attention rank of an instance (the step model's prefill_groups)
    # has its own max_batch, token_budget and KV share, as in vLLM and SGLang; "instance": one
    # budget and one KV pool for the whole instance
    budget_scope: str = "rank"
    block_size: int = 16
    cost: str = "auto"  # memo | interp | auto (see step_models.make_cost)
    bucket_bits: int | None = None
    horizon_s: float | None = None  # stop here; unfinished requests are reported dropped
    token_times: bool = False
    timeline: bool = False  # record one trace event per iteration (bounded by simfoe.timeline.MAX_EVENTS)
    extra: dict = field(default_factory=dict)


class Engine:
    """Wires a request table, a step model and replicas into one SimPy environment."""

    def __init__(self, arrival_s, prompt_tokens, output_tokens, request_id, step_model,
                 kv_capacity_tokens: int, cfg: EngineConfig, progress: bool = False):
        if not (isinstance(cfg.replicas, (int, np.integer)) and cfg.replicas >= 1):
            raise SpecError("replicas", cfg.replicas, "an integer >= 1")
        if cfg.horizon_s is not None and not (cfg.horizon_s > 0 and math.isfinite(cfg.horizon_s)):
            raise SpecError("horizon_s", cfg.horizon_s, "seconds > 0, or None to run until drained")
        arr = np.asarray(arrival_s, dtype=np.float64)
        if len(arr) and not (np.isfinite(arr).all() and (np.diff(arr) >= 0).all()):
            raise SpecError("arrival_s", "unsorted or missing", "finite, sorted arrival times (s)")
        self.cfg = cfg
        self.env = simpy.Environment()
        self.store = RequestStore(arr, prompt_tokens, output_tokens, request_id, token_times=cfg.token_times)
        if cfg.budget_scope not in BUDGET_SCOPES:
            raise SpecError("budget_scope", cfg.budget_scope, "allowed: " + ", ".join(BUDGET_SCOPES))
        self.cost = make_cost(step_model, cfg.cost, cfg.bucket_bits)
        #: data-parallel attention ranks per instance, each with its own budget (1: one for all)
        self.ranks = int(getattr(self.cost.model, "prefill_groups", 1)) if cfg.budget_scope == "rank" else 1
        self.scheduler = make_scheduler(cfg.scheduler, cfg.max_batch, cfg.token_budget, self.ranks)
        self.router = make_router(cfg.router, int(cfg.replicas))
        self.replicas = [Replica(self, k, kv_capacity_tokens, cfg.block_size, self.ranks)
                         for k in range(int(cfg.replicas))]
        self.completed = 0
        self.arrived = 0
        self.pbar = None
        self.timeline: list | None = [] if cfg.timeline else None
        self.timeline_truncated = False
        self._progress = progress
        self._last_tick = 0.0

    def tick(self, now: float) -> None:
        if now - self._last_tick >= 1.0:
            self.pbar.update(now - self._last_tick)
            self._last_tick = now
            self.pbar.set_postfix_str(f"done {self.completed}/{self.store.n}", refresh=False)

    def arrivals(self):
        env, st, reps, router = self.env, self.store, self.replicas, self.router
        arr = st.arrival
        for i in range(st.n):
            dt = arr[i] - env.now
            if dt > 0:
                yield env.timeout(dt)
                # now + (arr - now) can round one ulp below arr: the request arrives when the
                # simulation gets to it, so later times (scheduled, first token) never precede it
                arr[i] = env.now
            k = router.pick(reps, i)
            st.replica[i] = k
            st.status[i] = STATUS_WAITING
            self.arrived += 1
            reps[k].submit(i)

    def run(self) -> Engine:
        """Simulate until every request is done (or the horizon); returns self."""
        if self._progress:
            from tqdm import tqdm

            total = float(self.store.arrival[-1]) if self.store.n else 0.0
            self.pbar = tqdm(total=round(total, 1), unit="sim s", desc="serve", leave=False,
                             bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} sim s [{elapsed}<{remaining}] {postfix}")
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
