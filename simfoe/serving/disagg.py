"""Prefill-decode disaggregation: a prefill pool and a decode pool of serving workers, the KV cache
moving between them as flows on the fabric (issue 24.1).

Order (:data:`ORDERS`), ``decode-first`` (default): a request is first pinned to a decode worker and
rank (the decode pool's router and rank router), where it waits until the rank's free KV blocks hold
its prompt and the rank runs fewer than ``max_batch`` requests (running plus accepted): the decode
side's free KV memory bounds the transfers in flight, and a prefill worker only computes KV that has
somewhere to go (SGLang's decode server allocates the KV before the prefill runs, and Dynamo's
frontend sends SGLang's prefill and decode halves at once: ai-dynamo/dynamo
lib/llm/src/kv_router/prefill_router.rs, the bootstrap path). The accepted request then queues at a
prefill worker (the prefill pool's router), is prefilled there in prefill-only iterations (the pool's
step model, chunked as configured), and its KV cache moves to the decode rank; the prefill worker
holds the request's KV blocks until the transfer has ended.

``prefill-first``: the request goes to a prefill worker at once; when its prefill has ended it is
pinned to a decode worker and rank and waits there, its KV blocks still held on the prefill rank,
until the rank has room (as above); then the KV moves. A decode slot is not held while the prompt is
queued or prefilled. This is Dynamo's frontend with TensorRT-LLM (and any engine without SGLang's
bootstrap address): ``PrefillRouter`` awaits the prefill worker's answer (``max_tokens`` 1, its
``disaggregated_params``) before it routes the request to a decode worker (prefill_router.rs, "original
prefill path"; ai-dynamo/dynamo pull request 4097, Dynamo 0.7: the TensorRT-LLM workers' own
``decode_first``/``prefill_first`` strategies removed, the frontend orders the hops), and TensorRT-LLM's
generation server allocates the request's KV and pulls it from the context server only when its
capacity scheduler admits the generation-only request (tensorrt_llm/_torch/pyexecutor/py_executor.py,
``DISAGG_GENERATION_INIT`` -> ``DISAGG_GENERATION_TRANS_IN_PROGRESS``). It sends the KV ``after``
prefill (or ``instant``); ``layerwise`` streaming needs the decode room while prefill runs.

KV transfer modes (:data:`TRANSFERS`):

* ``after``: the whole KV is sent once prefill has ended (vLLM's NIXL connector, TensorRT-LLM);
* ``layerwise``: each layer's KV is sent as it is computed: when the request's first prefill chunk
  is scheduled the first ``(L-1)/L`` of the bytes start to stream as one flow, and the last layer's
  share is sent when prefill ends. The transfer ends when both have arrived, about
  ``max(prefill end + last layer's share, prefill start + all bytes)`` on an idle link (a flow may
  run ahead of the layers' compute; the last layer's share cannot);
* ``instant``: free and infinitely fast (a what-if bound and the aggregated-equivalence check).

Flows run on a cluster of both pools (:func:`place_workers`: prefill workers first, the decode pool
from a fresh node, as DeepSeek and Dynamo deploy them), so a transfer inside a node uses NVLink and
one across nodes the NICs, sharing links max-min fairly with every other transfer in flight. A
request's KV lives on the GPUs of its data-parallel attention rank; each source GPU sends its share
to the destination rank's GPUs (``max(src, dst)`` flows, round-robin pairs).

First token (:data:`FIRST_TOKENS`): ``prefill`` (default) - the prefill worker samples it and the
client sees it when the KV has arrived at the decode worker, TTFT = queueing + prefill + exposed
transfer; the decode worker produces tokens 2..OSL. This is AIConfigurator's convention for its
disaggregated rows (aiconfigurator sdk/picking.py ``_build_disagg_summary_dict``: TTFT = the prefill
worker's TTFT, which includes its KV transfer; request latency = TTFT + TPOT x (OSL - 1)).
``decode``: the decode worker recomputes the last prompt token in its first iteration and samples
token 1 there (vLLM's disaggregated prefill), TTFT adds that first decode step; only ``prompt - 1``
tokens' KV are sent.

Units: seconds, tokens, bytes. Deterministic.
"""
from __future__ import annotations

import gc
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from simfoe.errors import SpecError
from simfoe.serving.engine import Engine, EngineConfig, Replica
from simfoe.serving.metrics import STATUS_DONE, STATUS_DROPPED, STATUS_RUNNING, STATUS_WAITING, dist

TRANSFERS = ("layerwise", "after", "instant")
FIRST_TOKENS = ("prefill", "decode")
ORDERS = ("decode-first", "prefill-first")


@dataclass(frozen=True)
class Pool:
    """One pool of identical workers: a step model and KV capacity (tokens) per worker, its engine
    knobs (:class:`EngineConfig`; ``replicas`` is replaced by ``workers``; ``mtp`` drafts in its decodes),
    GPUs per worker, KV bytes one token occupies on each GPU of its rank, the model's layers (for
    ``layerwise``) and the MTP draft module's step model."""

    step_model: object
    kv_capacity_tokens: int
    workers: int = 1
    engine: EngineConfig = field(default_factory=EngineConfig)
    gpus: int = 1
    kv_bytes_per_token_per_gpu: float = 0.0
    layers: int = 1
    draft_model: object = None  # with engine.mtp: the draft module's step model (None: drafts cost nothing)


@dataclass(frozen=True)
class DisaggConfig:
    """How the pools are joined: KV ``transfer`` mode, ``first_token`` convention, the fabric's
    ``hardware`` spec (None only with ``transfer="instant"``), a ``horizon_s`` (None: run until drained)
    and the ``order`` of the decode room and the prefill (:data:`ORDERS`, see the module docstring)."""

    transfer: str = "layerwise"
    first_token: str = "prefill"
    hardware: object = None
    horizon_s: float | None = None
    order: str = "decode-first"

    def __post_init__(self):
        if self.transfer not in TRANSFERS:
            raise SpecError("kv_transfer", self.transfer, "allowed: " + ", ".join(TRANSFERS))
        if self.first_token not in FIRST_TOKENS:
            raise SpecError("first_token", self.first_token, "allowed: " + ", ".join(FIRST_TOKENS))
        if self.order not in ORDERS:
            raise SpecError("disagg_order", self.order, "allowed: " + ", ".join(ORDERS))
        if self.order == "prefill-first" and self.transfer == "layerwise":
            raise SpecError("kv_transfer", self.transfer, "after or instant with disagg_order prefill-first (the "
                            "decode room is taken only once prefill has ended)")
        if self.transfer != "instant" and self.hardware is None:
            raise SpecError("hardware", None, "a hardware spec for the KV transfer's fabric (or kv_transfer instant)")


def place_workers(pools: tuple[tuple[int, int], ...], gpus_per_node: int) -> tuple[list[list[np.ndarray]], int]:
    """GPU ranks of every worker of each pool (``(workers, gpus per worker)`` pairs) and the nodes they
    take: each pool starts on a fresh node; a worker of a node or more takes whole nodes, a smaller
    one is packed after the previous worker unless it would straddle a node boundary."""
    out, g = [], 0
    for workers, gpus in pools:
        g = -(-g // gpus_per_node) * gpus_per_node
        ranks = []
        for _ in range(workers):
            if gpus < gpus_per_node and g // gpus_per_node != (g + gpus - 1) // gpus_per_node:
                g = -(-g // gpus_per_node) * gpus_per_node
            ranks.append(np.arange(g, g + gpus))
            g += -(-gpus // gpus_per_node) * gpus_per_node if gpus >= gpus_per_node else gpus
        out.append(ranks)
    return out, -(-g // gpus_per_node)


class _PendingView:
    """Rank ``k`` of decode worker ``rep`` as its router sees it: running and waiting requests, plus those
    waiting for KV room (as waiting) and those accepted but not yet arrived (as running)."""

    __slots__ = ("rep", "k")

    def __init__(self, rep, k: int):
        self.rep = rep
        self.k = k

    def outstanding(self, waiting_weight: int = 1) -> int:
        rep, k = self.rep, self.k
        return rep.ranks[k].outstanding(waiting_weight) + waiting_weight * len(rep.pending[k]) + rep.in_flight[k]


class PrefillReplica(Replica):
    """A prefill worker: its requests end at their first token; their KV blocks stay until sent."""

    def _schedule(self, now: float):
        batch = super()._schedule(now)
        if batch is not None and batch.chunks and self.engine.disagg.cfg.transfer == "layerwise":
            for i, _ in batch.chunks:  # a first chunk: the first layers' KV start to stream
                self.engine.disagg.prefill_started(i)
        return batch

    def _finish(self, fin: np.ndarray) -> None:
        st = self.engine.store
        st.status[fin] = STATUS_DONE
        for q in {self.ranks[int(k)] if len(self.ranks) > 1 else self.ranks[0] for k in st.rank[fin]}:
            q.running = [j for j in q.running if st.status[j] == STATUS_RUNNING]
        for i in fin.tolist():
            self.engine.disagg.prefilled(i)


class DecodeReplica(Replica):
    """A decode worker: requests join its ranks' running lists when their KV has arrived; each rank keeps
    the requests routed to it that wait for KV room (``pending``) and counts its transfers in flight."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.pending = [deque() for _ in self.ranks]
        self.in_flight = [0] * len(self.ranks)
        self.views = [_PendingView(self, k) for k in range(len(self.ranks))]

    def outstanding(self, waiting_weight: int = 1) -> int:
        return sum(v.outstanding(waiting_weight) for v in self.views)

    def _finish(self, fin: np.ndarray) -> None:
        super()._finish(fin)
        for k in range(len(self.ranks)):
            self.engine.disagg.pump(self, k)


def _rank_gpus(gpus: int, ranks: int) -> int:
    """GPUs holding one request's KV in a worker of ``gpus`` GPUs and ``ranks`` DP attention ranks (all of
    them when the ranks do not split the GPUs evenly)."""
    return gpus // ranks if gpus % ranks == 0 else gpus


def _split(gpus: np.ndarray, ranks: int) -> list[np.ndarray]:
    """The GPU ranks of each DP attention rank of a worker on ``gpus`` (contiguous equal groups)."""
    k = _rank_gpus(len(gpus), ranks)
    return [gpus[r * k:(r + 1) * k] if k < len(gpus) else gpus for r in range(ranks)]


def _pool_engine(pool: Pool, arr, prompt, output, rid, replica_cls, env=None, seed: int = 0) -> Engine:
    """An :class:`Engine` of ``pool``'s workers as ``replica_cls`` replicas (in ``env`` when given)."""
    from dataclasses import replace

    cfg = replace(pool.engine, replicas=pool.workers, horizon_s=None, timeline=False, token_times=False)
    eng = Engine(arr, prompt, output, rid, pool.step_model, pool.kv_capacity_tokens, cfg, env=env,
                 draft_model=pool.draft_model, seed=seed)
    eng.replicas = [replica_cls(eng, k, pool.kv_capacity_tokens, cfg.block_size, eng.ranks_per_replica,
                                cfg.rank_router) for k in range(cfg.replicas)]
    return eng


class DisaggEngine:
    """Both pools in one SimPy environment: a prefill :class:`Engine` whose rows end at their first
    token and a decode :class:`Engine` whose rows start when their KV has arrived, joined by the KV
    transfers. The decode engine's store is the clients' view (arrival shared, first token, TPOT)."""

    def __init__(self, arrival_s, prompt_tokens, output_tokens, request_id, prefill: Pool, decode: Pool,
                 cfg: DisaggConfig, closed=None, seed: int = 0):
        n = len(prompt_tokens)
        arr = np.zeros(n) if closed is not None else np.asarray(arrival_s, dtype=np.float64)
        self.cfg = cfg
        self.pools = (prefill, decode)
        self.pre = _pool_engine(prefill, arr, prompt_tokens, np.ones(n, np.int64), request_id, PrefillReplica)
        self.dec = _pool_engine(decode, arr, prompt_tokens, output_tokens, request_id, DecodeReplica, self.pre.env, seed)
        self.env = self.pre.env
        shared = np.full(n, np.nan) if closed is not None else self.pre.store.arrival
        self.pre.store.arrival = self.dec.store.arrival = shared  # one arrival column
        self.pre.disagg = self.dec.disagg = self
        self.reserved = np.full(n, np.nan)  # decode KV blocks reserved, the request sent to prefill (s)
        self.arrived_kv = np.full(n, np.nan)  # KV complete at the decode worker (s)
        self.kv_bytes = np.zeros(n)  # bytes sent
        self._parts = np.zeros(n, np.int8)  # flows of a transfer still to arrive
        self.net = self._rank_gpus = self.nodes = None
        if cfg.transfer != "instant":
            self._build_fabric()
        self.clients = None
        if closed is not None:
            from simfoe.serving.clients import Clients

            self.clients = self.dec.clients = Clients(self, closed.concurrency, closed.warmup)
            self.dec.measure_from = closed.warmup
        self.measure_from = self.dec.measure_from

    # ---- the clients' view: the decode store, the decode pool's KV pools, arrival at the decode side's queue
    @property
    def store(self):
        return self.dec.store

    @property
    def replicas(self):
        return self.dec.replicas

    def arrive(self, i: int) -> None:
        """Request row ``i`` is sent now: to a decode rank's queue for KV room, or refused when its prompt
        can never fit a prefill rank (a closed loop's client hears of it at once, as of a failed request)."""
        if not self.pre.replicas[0].ranks[0].kv.fits(int(self.pre.store.prompt[i])):
            self.dec.store.status[i] = STATUS_DROPPED
            self.dec.store.dropped[i] = 1
            if self.clients is not None:
                ev = self.env.timeout(0)
                ev.callbacks.append(lambda _e: self.clients.finished(1, self.env.now))
            return
        ov = self.pre.cfg.request_overhead_s  # the API server's time per request (engine profile), as Engine.arrive
        if ov:
            self.env.timeout(ov).callbacks.append(lambda _e: self._route(i))
        else:
            self._route(i)

    def _arrivals(self):
        """Open loop: every row arrives at its arrival time (as Engine.arrivals)."""
        env, arr = self.env, self.dec.store.arrival
        for i in range(len(arr)):
            dt = arr[i] - env.now
            if dt > 0:
                yield env.timeout(dt)
                arr[i] = env.now  # never one ulp before the arrival time (see Engine.arrivals)
            self.arrive(i)

    def begin_measurement(self) -> None:
        self.pre.begin_measurement()
        self.dec.begin_measurement()

    # ---- fabric
    def _build_fabric(self) -> None:
        from simfoe.fabric.flows import FlowNetwork
        from simfoe.fabric.topology import build_cluster

        hw = self.cfg.hardware
        gpn = hw.node.gpus_per_node
        ranks, nodes = place_workers(tuple((p.workers, p.gpus) for p in self.pools), gpn)
        self._rank_gpus = [[_split(g, eng.ranks_per_replica) for g in ws] for ws, eng in zip(ranks, (self.pre, self.dec))]
        self.nodes = nodes
        self.net = FlowNetwork(self.env, build_cluster(hw, nodes))

    def _flow(self, i: int, nbytes: float) -> None:
        """Send ``nbytes`` of request ``i``'s KV from its prefill rank's GPUs to its decode rank's; when
        every part of the transfer has arrived, the request joins the decode rank."""
        ps, ds = self.pre.store, self.dec.store
        src = self._rank_gpus[0][ps.replica[i]][ps.rank[i]]
        dst = self._rank_gpus[1][ds.replica[i]][ds.rank[i]]
        k = max(len(src), len(dst))
        j = np.arange(k)
        ev = self.net.transfer_many(src[j % len(src)], dst[j % len(dst)], nbytes / k, "kv")
        ev.callbacks.append(lambda _e: self._part_arrived(i))

    def _part_arrived(self, i: int) -> None:
        self._parts[i] -= 1
        if self._parts[i] == 0:
            self._arrive(i)

    # ---- the hand-over: decode room first, then prefill, then the KV transfer
    def _route(self, i: int) -> None:
        """Request ``i`` arrives: pin it to a decode worker and rank, where it waits for KV room (decode-first),
        or send it to the prefill pool (prefill-first)."""
        if self.cfg.order == "prefill-first":
            self.dec.store.status[i] = STATUS_WAITING
            self._set_kv_bytes(i)
            self.pre.admit(i)
        else:
            self._pin(i)

    def _pin(self, i: int) -> None:
        """Pin request ``i`` to a decode worker and rank, where it waits for KV room."""
        d, st = self.dec, self.dec.store
        k = d.router.pick(d.replicas, i)
        rep = d.replicas[k]
        r = rep.rank_router.pick(rep.views, i) if rep.rank_router is not None else 0
        st.replica[i], st.rank[i] = k, r
        st.status[i] = STATUS_WAITING
        rep.pending[r].append(i)
        self.pump(rep, r)

    def _tokens_sent(self, i: int) -> int:
        """Prompt tokens whose KV is sent: all of them, or all but the one the decode worker recomputes."""
        p = int(self.dec.store.prompt[i])
        return p - 1 if self.cfg.first_token == "decode" else p

    def pump(self, rep: DecodeReplica, r: int) -> None:
        """Accept rank ``r`` of decode worker ``rep``'s waiting requests, in order, while its free KV
        blocks hold their prompts and it runs fewer than ``max_batch`` (running + accepted); an accepted
        request goes to the prefill pool (decode-first) or its KV starts to move (prefill-first)."""
        q, pend, st = rep.ranks[r], rep.pending[r], self.dec.store
        cap = self.dec.scheduler.max_batch
        while pend:
            i = pend[0]
            if not q.kv.fits(int(st.prompt[i] + st.target[i] - 1)):  # the scheduler's rule: never fits
                pend.popleft()
                self._refuse(i)
                continue
            need = q.kv.blocks_for(int(st.prompt[i]))
            if need > q.kv.free or len(q.running) + rep.in_flight[r] >= cap:
                return
            pend.popleft()
            q.kv.free -= need
            st.blocks[i] = need
            rep.in_flight[r] += 1
            self.reserved[i] = self.env.now
            if self.cfg.order == "prefill-first":
                self._send(i)
            else:
                self._set_kv_bytes(i)
                self.pre.admit(i)

    def _set_kv_bytes(self, i: int) -> None:
        """The KV bytes request ``i`` sends to each decode GPU of its rank, summed over them."""
        dec = self.pools[1]
        self.kv_bytes[i] = self._tokens_sent(i) * dec.kv_bytes_per_token_per_gpu * _rank_gpus(
            dec.gpus, self.dec.ranks_per_replica)

    def prefill_started(self, i: int) -> None:
        """Layerwise: request ``i``'s first prefill chunk is scheduled; its first L - 1 layers start to stream."""
        if self._parts[i] == 0 and self.net is not None:
            self._parts[i] = 2
            self._flow(i, self.kv_bytes[i] * (1 - 1 / self.pools[1].layers))

    def prefilled(self, i: int) -> None:
        """Request ``i``'s prefill has ended (now): send its KV (after), its last layer (layerwise), or
        hand it over at once (instant); prefill-first: first pin it to a decode rank, which sends for it
        when it has room."""
        if self.cfg.order == "prefill-first":
            self._pin(i)
        else:
            self._send(i)

    def _send(self, i: int) -> None:
        """Move request ``i``'s KV to its decode rank (see :meth:`prefilled`)."""
        if self.net is None:
            self._arrive(i)
        elif self.cfg.transfer == "after":
            self._parts[i] = 1
            self._flow(i, self.kv_bytes[i])
        else:
            self._flow(i, self.kv_bytes[i] / self.pools[1].layers)

    def _release_prefill(self, i: int) -> None:
        """Free request ``i``'s KV blocks on its prefill rank (and wake that worker)."""
        ps = self.pre.store
        rep = self.pre.replicas[ps.replica[i]]
        rep.ranks[ps.rank[i]].kv.free += int(ps.blocks[i])
        ps.blocks[i] = 0
        rep.wake()

    def _refuse(self, i: int) -> None:
        """Drop request ``i`` at the decode side: prompt + output never fit a decode rank's KV cache
        (prefill-first: its prefill rank's KV blocks are freed)."""
        if self.cfg.order == "prefill-first":
            self._release_prefill(i)
        st = self.dec.store
        st.status[i] = STATUS_DROPPED
        st.dropped[i] = 1
        if self.clients is not None:
            self.clients.finished(1, self.env.now)

    def _arrive(self, i: int) -> None:
        """Request ``i``'s KV is complete at its decode rank: it joins the running requests there."""
        now = self.env.now
        self.arrived_kv[i] = now
        self._release_prefill(i)
        st = self.dec.store
        rep = self.dec.replicas[st.replica[i]]
        r = int(st.rank[i])
        rep.in_flight[r] -= 1
        st.scheduled[i] = self.pre.store.scheduled[i]
        st.status[i] = STATUS_RUNNING
        p = int(st.prompt[i])
        if self.cfg.first_token == "prefill":
            st.ctx[i], st.pf_left[i] = p, 0
            idx = np.array([i])
            st.emit(idx, now)
            if st.gen[i] >= st.target[i]:
                rep._finish(idx)
                return
        else:
            st.ctx[i], st.pf_left[i] = p - 1, 1
        rep.ranks[r].running.append(i)
        rep.wake()

    # ---- run
    def run(self) -> DisaggEngine:
        """Simulate until every request is done (or the horizon); returns self."""
        env = self.env
        if self.clients is not None:
            self.clients.start()
        else:
            env.process(self._arrivals())
        for rep in self.pre.replicas + self.dec.replicas:
            env.process(rep.loop())
        gc_was_on = gc.isenabled()
        gc.disable()  # as Engine.run: the loop's garbage is freed by reference counting
        try:
            env.run(until=self.cfg.horizon_s)
        finally:
            if gc_was_on:
                gc.enable()
        st = self.dec.store
        left = (st.status != STATUS_DONE) & (st.status != STATUS_DROPPED)
        st.status[left] = STATUS_DROPPED
        st.dropped[left] = 2
        return self


def _pool_summary(eng: Engine, pool: Pool, span: float) -> dict:
    """Workers, GPUs, busy share, iterations, KV use and preemptions of one pool (span: the measured s)."""
    reps = eng.replicas
    busy = sum(r.busy_s for r in reps)
    return {"workers": len(reps), "gpus_per_worker": pool.gpus, "ranks_per_worker": eng.ranks_per_replica,
            "max_batch": eng.cfg.max_batch, "token_budget": eng.cfg.token_budget,
            "kv_capacity_tokens": reps[0].kv_total * reps[0].ranks[0].kv.block_size,
            "utilization": busy / (len(reps) * span) if span > 0 else None,
            "kv_mean_used_fraction": sum(r.kv_time for r in reps) / busy if busy > 0 else 0.0,
            "kv_max_used_fraction": max(r.kv_max for r in reps),
            "preemptions": int(sum(r.preemptions for r in reps)),
            "iterations": sum(r.iterations for r in reps), "cost_evaluations": eng.cost.misses}


def disagg_summary(de: DisaggEngine, wall_s: float, slo_ttft: float | None = None,
                   slo_tbt: float | None = None) -> dict:
    """The serving summary of the decode side (TTFT, TPOT, throughput as the clients see them; see
    :func:`simfoe.serving.api.summarize`) with ``gpu_utilization`` over both pools and a ``disagg``
    section: each pool, and the KV transfers (bytes by NVLink / network, exposed time after prefill,
    the wait for decode room)."""
    from simfoe.serving.api import summarize

    s = summarize(de.dec, wall_s, slo_ttft, slo_tbt)
    w = de.measure_from
    ps, ds = de.pre.store, de.dec.store
    done = ds.status[w:] == STATUS_DONE
    arr = ds.arrival[w:]
    span = float(np.nanmax(ds.last[w:][done]) - np.nanmin(arr)) if done.any() else 0.0  # as summarize's
    pools = {name: _pool_summary(e, p, span) for name, e, p in (("prefill", de.pre, de.pools[0]),
                                                                 ("decode", de.dec, de.pools[1]))}
    gpus = {k: v["workers"] * v["gpus_per_worker"] for k, v in pools.items()}
    if span > 0:
        s["gpu_utilization"] = sum((pools[k]["utilization"] or 0.0) * gpus[k] for k in pools) / sum(gpus.values())
    end = ps.first[w:]
    moved = de.arrived_kv[w:][done]
    s["disagg"] = {
        "kv_transfer": de.cfg.transfer, "first_token": de.cfg.first_token, "order": de.cfg.order,
        "gpus": sum(gpus.values()),
        "nodes": de.nodes, **pools,
        "transfer": {
            "bytes": dict(de.net.bytes_by_tag.get("kv", {"intra_node": 0.0, "inter_node": 0.0}))
            if de.net is not None else {"intra_node": 0.0, "inter_node": 0.0},
            "kv_bytes_per_request": dist(de.kv_bytes[w:][done]),
            "exposed_s": dist(moved - end[done]),  # KV complete at the decode rank less prefill end
            "wait_for_room_s": dist((de.reserved[w:] - arr)[done]),  # arrival to decode KV reserved (+ prefill:
            # prefill-first)
        },
    }
    s["sim"]["iterations"] = pools["prefill"]["iterations"] + pools["decode"]["iterations"]
    return s


@dataclass
class DisaggResult:
    """Outcome of a disaggregated run: ``summary`` (JSON-able dict) and per-request ``records``."""

    summary: dict
    engine: DisaggEngine = field(repr=False)

    @property
    def records(self):
        """pandas DataFrame, one row per request: the decode side's columns (RequestStore.frame; ``replica``
        and ``rank`` are the decode worker's) plus the prefill worker, prefill start and end, when the decode
        room was reserved and the KV arrived (s), and the KV bytes sent."""
        de = self.engine
        ps, w = de.pre.store, de.measure_from
        rec = de.dec.store.frame()
        rec.insert(2, "prefill_worker", ps.replica)
        extra = {"prefill_start_s": ps.scheduled, "prefill_end_s": ps.first, "kv_reserved_s": de.reserved,
                 "kv_arrived_s": de.arrived_kv, "kv_bytes": de.kv_bytes}
        for k, v in extra.items():
            rec[k] = v
        return rec.iloc[w:].reset_index(drop=True) if w else rec


def simulate_disagg(requests, prefill: Pool, decode: Pool, cfg: DisaggConfig | None = None, *,
                    slo_ttft: float | None = None, slo_tbt: float | None = None, seed: int = 0) -> DisaggResult:
    """Serve ``requests`` (a RequestTable or anything with ``arrival_s, prompt_tokens, output_tokens``; or a
    :class:`simfoe.workloads.closed_loop.ClosedLoop`, lengths drawn with ``seed``) on a ``prefill`` and a
    ``decode`` :class:`Pool` joined by ``cfg`` (:class:`DisaggConfig`). See the module docstring."""
    import time

    from simfoe.serving.api import _check_slo
    from simfoe.workloads.closed_loop import ClosedLoop

    cfg = cfg or DisaggConfig(transfer="instant")
    _check_slo("slo_ttft", slo_ttft)
    _check_slo("slo_tbt", slo_tbt)
    for name, p in (("prefill", prefill), ("decode", decode)):
        if not (isinstance(p.workers, (int, np.integer)) and p.workers >= 1):
            raise SpecError(f"{name}.workers", p.workers, "an integer >= 1")
    closed = requests if isinstance(requests, ClosedLoop) else None
    if closed is not None:
        requests = closed.table(seed)
    rid = getattr(requests, "request_id", None)
    n = len(requests.prompt_tokens)
    de = DisaggEngine(requests.arrival_s, requests.prompt_tokens, requests.output_tokens,
                      np.arange(n) if rid is None else rid, prefill, decode, cfg, closed, seed)
    t = time.perf_counter()
    de.run()
    return DisaggResult(disagg_summary(de, time.perf_counter() - t, slo_ttft, slo_tbt), de)
