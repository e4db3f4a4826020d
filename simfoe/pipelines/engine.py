"""SimPy engine for stage pipelines: per-instance FIFO queues, slots, streaming or batch hand-over.

Model (times in seconds):

- Requests arrive as a Poisson process. On arrival the request's whole work tree is sampled in one
  pass over the stage graph (fan-outs, part counts, service times, in a fixed order), so stream and
  batch runs with the same seed see identical work, and every aggregate knows how many items it
  must receive.
- Each stage instance has ``concurrency`` slots and one FIFO queue. A stateless job (one input)
  holds a slot for the sum of its unit times; in ``stream`` mode each unit (part or output) is
  forwarded when it is produced, in ``batch`` mode all of them when the job ends.
- A stateful stage serves every arriving item, counts it against its aggregate, and emits the
  aggregate's outputs when the last item has been served; a count above the expected one, or an
  item at another instance than its aggregate's, raises ``AggregationError``.
- A request completes when every unit that leaves a sink stage has left; its latency is from
  arrival to then. Transfers between instances cost latency + bytes / bandwidth (node-aware).

Cost per item: one SimPy timeout per served unit, no process per item.
"""
from __future__ import annotations

import gc
from collections import deque
from dataclasses import dataclass

import numpy as np
import simpy
from simpy import Timeout

from simfoe.errors import SpecError
from simfoe.pipelines.graph import StageGraph, build_graph
from simfoe.pipelines.routing import make_policy, mix
from simfoe.pipelines.spec import PipelineSpec, StageSpec
from simfoe.specs.distributions import BufferedSampler

MODES = ("stream", "batch")


class AggregationError(AssertionError):
    """An aggregate saw more items than it was owed, or items at two instances."""


class Request:
    __slots__ = ("rid", "t0", "ptype", "h", "remaining", "t_done")

    def __init__(self, rid: int, t0: float, ptype: int):
        self.rid = rid
        self.t0 = t0
        self.ptype = ptype
        self.h = mix(rid)
        self.remaining = 0
        self.t_done = -1.0


class Job:
    """One input at a stateless stage: unit durations (s; an engine stage: output tokens per unit) and, per
    unit, the cells forwarded after it; ``prompt``: prompt tokens (engine stages, else 0)."""

    __slots__ = ("req", "durs", "emits", "prompt")

    def __init__(self, req, durs, emits, prompt: int = 0):
        self.req = req
        self.durs = durs
        self.emits = emits
        self.prompt = prompt


class Agg:
    """The items of one key at a stateful stage, or the units feeding one request at a ``stream_into: request``
    engine stage (``row``: that request's row in the engine)."""

    __slots__ = ("req", "key", "expected", "got", "emits", "inst", "job", "row")

    def __init__(self, req, key):
        self.req = req
        self.key = key
        self.expected = 0
        self.got = 0
        self.emits: list = []
        self.inst = None
        self.job: Job | None = None  # service_per: aggregate -> the job run on completion
        self.row = -1  # stream_into request: the engine row of its request, once its first item arrived

    def count(self, st) -> bool:
        """Count one more item; on the last, the aggregate is counted into ``st`` (a stage's stats) and True is
        returned. More items than ``expected`` raise AggregationError."""
        self.got += 1
        if self.got == self.expected:
            st.aggs_done += 1
            st.agg_items += self.got
            return True
        if self.got > self.expected:
            raise AggregationError(f"aggregate {self.key} got {self.got} items, expected {self.expected}")
        return False


class SItem:
    """One item at a stateful stage (``dur``: its service time, s, or None), or one unit streamed into a request
    (``dur``: the prompt tokens it appends)."""

    __slots__ = ("req", "dur", "agg")

    def __init__(self, req, dur, agg):
        self.req = req
        self.dur = dur
        self.agg = agg


class Instance:
    __slots__ = ("stage", "idx", "node", "slots", "busy", "queue", "busy_time", "q_area", "q_t", "q_max",
                 "served", "cache", "hits")

    def __init__(self, stage: int, idx: int, node: int, slots: int):
        self.stage = stage
        self.idx = idx
        self.node = node
        self.slots = slots
        self.busy = 0
        self.queue: deque = deque()
        self.busy_time = 0.0
        self.q_area = 0.0
        self.q_t = 0.0
        self.q_max = 0
        self.served = 0
        self.cache: list[int] = []
        self.hits = 0


class StageRT:
    """Runtime state of one stage: samplers, instances, counters."""

    def __init__(self, i: int, spec: StageSpec, ss: np.random.SeedSequence, grouped: bool = False):
        self.i = i
        self.spec = spec
        r_svc, r_out, r_parts = (np.random.default_rng(s) for s in ss.spawn(3))
        # an engine stage samples output tokens per unit where a slot stage samples seconds per unit
        eng = spec.engine is not None
        self.svc = BufferedSampler(spec.output_tokens, r_svc, counts=True) if eng else BufferedSampler(spec.service_s, r_svc)
        self.prompt = BufferedSampler(spec.prompt_tokens, np.random.default_rng(ss.spawn(1)[0]), counts=True) if eng else None
        # tokens each engine request opens with (None: none); its own stream, spawned after the others
        ctx = spec.context_tokens
        self.context = BufferedSampler(ctx, np.random.default_rng(ss.spawn(1)[0]), counts=True) if ctx is not None else None
        self.lm = None  # simfoe.pipelines.lm_engine.EngineStage serving an engine stage, set by the Simulation
        self.outs = BufferedSampler(spec.outputs, r_out, counts=True) if spec.level else None
        self.parts = BufferedSampler(spec.parts.count, r_parts, counts=True) if spec.parts else None
        self.instances = [Instance(i, k, spec.nodes[k], spec.concurrency)
                          for k in range(spec.instances)]
        self.rr = 0
        #: items grouped into aggregates (routed per aggregate): the graph gave the stage an aggregation key
        #: (a stateful stage, or units streamed into requests; simfoe.pipelines.graph.Graph.key_depth)
        self.grouped = grouped
        self.items_in = 0
        self.units_out = 0
        self.aggs_created = 0
        self.aggs_done = 0
        self.agg_items = 0


@dataclass
class RunResult:
    """Raw outcome of one run; ``metrics.summarize`` turns it into the public JSON."""

    spec: PipelineSpec
    mode: str
    routing: str
    rate: float
    duration: float
    seed: int
    sent: int
    latencies: np.ndarray  # seconds, per completed request, in arrival order
    t_end: float  # time the last request completed
    stages: list


class Simulation:
    def __init__(self, spec: PipelineSpec, mode: str = "stream", routing: str | None = None, seed: int = 0,
                 graph: StageGraph | None = None):
        if mode not in MODES:
            raise SpecError("mode", mode, "stream or batch")
        self.spec = spec
        self.mode = mode
        self.stream = mode == "stream"
        self.routing = routing or spec.routing
        self.policy = make_policy(self.routing, spec.spill_queue)
        self.g = graph or build_graph(spec)
        self.seed = seed
        ss = np.random.SeedSequence(seed)
        s_arr, s_pt, s_st = ss.spawn(3)
        self.rng_arr = np.random.default_rng(s_arr)
        self.rng_pt = np.random.default_rng(s_pt)
        self.st = [StageRT(i, s, q, self.g.key_depth[i] > 0)
                   for (i, s), q in zip(enumerate(spec.stages), s_st.spawn(len(spec.stages)))]
        net = spec.network
        # per source stage: (same-node delay, cross-node delay) for one emitted item
        self.tx = [
            (net.intra_node_latency + s.item_bytes / net.intra_node_bandwidth,
             net.inter_node_latency + s.item_bytes / net.inter_node_bandwidth)
            for s in spec.stages
        ]
        # per stage: destinations fed each finest unit, and those fed each whole output (parts stages)
        self._edge_split = []
        for i in range(len(spec.stages)):
            finest = len(self.g.out_levels[i])
            self._edge_split.append((
                tuple(e.dst for e in self.g.edges[i] if e.depth == finest),
                tuple(e.dst for e in self.g.edges[i] if e.depth != finest),
            ))
        # transfers cost nothing when every instance shares a node and intra-node forwarding is free
        one_node = len({n for s in spec.stages for n in s.nodes} | {0}) == 1
        self._free_tx = one_node and all(d[0] == 0 for d in self.tx)
        self.env = simpy.Environment()
        self._start_engines()
        self.latencies: list[float] = []
        self.t_end = 0.0
        self.sent = 0
        self.open = 0

    def _start_engines(self) -> None:
        """Put the serving engine of every stage that has one into this run's environment."""
        if not any(st.spec.engine is not None for st in self.st):
            return
        from simfoe.pipelines.lm_engine import EngineStage

        models: dict = {}  # one forward model per engine spec
        for st in self.st:
            if st.spec.engine is not None:
                st.lm = EngineStage(st, self.env, self.stream, self._forward, self.seed, models)

    # ----------------------------------------------------------------------------- plan
    def _units(self, i: int, base: tuple, sample_durs: bool, sink: bool):
        """Fan-out of one job (or aggregate) at stage ``i`` from key path ``base``.

        Returns (durations per unit or None, cells per unit) and queues the new cells downstream.
        """
        st = self.st[i]
        fine, coarse = self._edge_split[i]
        n = st.outs.next() if st.outs is not None else 1
        has_level = st.outs is not None
        parts = st.parts
        pending = self._pending
        durs = [] if sample_durs else None
        emits = []
        for o in range(n):
            po = base + (o,) if has_level else base
            m = parts.next() if parts is not None else 1
            if sample_durs:
                durs.extend(st.svc.take(m))
            for p in range(m):
                pu = po + (p,) if parts is not None else po
                cells = []
                for dst in fine:
                    cell = [dst, None]
                    cells.append(cell)
                    pending[dst].append((pu, cell))
                if coarse and p == m - 1:
                    for dst in coarse:
                        cell = [dst, None]
                        cells.append(cell)
                        pending[dst].append((po, cell))
                if sink:
                    cells.append([-1, None])
                    self._sink_units += 1
                emits.append(cells)
        return durs, emits

    @staticmethod
    def _group(req: Request, items: list, kd: int, sampler) -> dict:
        """The aggregates (key path -> :class:`Agg`) of ``items`` (``(path, cell)``) by their first ``kd`` levels;
        each cell gets its :class:`SItem`, whose ``dur`` is drawn from ``sampler`` (None: no draw)."""
        aggs: dict = {}
        for path, cell in items:
            key = path[:kd]
            a = aggs.get(key)
            if a is None:
                a = aggs[key] = Agg(req, key)
            a.expected += 1
            cell[1] = SItem(req, sampler.next() if sampler is not None else None, a)
        return aggs

    def _plan(self, req: Request) -> list:
        """Sample ``req``'s whole work tree, stage by stage in topological order; returns its root cell."""
        self._pending = pending = [[] for _ in self.st]
        self._sink_units = 0
        root = [0, None]
        pending[0].append(((req.rid,), root))
        for i in self.g.order:
            items = pending[i]
            if not items:
                continue
            if self.st[i].grouped:
                self._plan_aggregates(req, i, items)
            else:
                self._plan_jobs(req, i, items)
        req.remaining = self._sink_units
        return root

    def _plan_jobs(self, req: Request, i: int, items: list) -> None:
        """A stateless stage ``i``: each arriving item (``(path, cell)``) is one job, put into its cell."""
        st, sink = self.st[i], i in self.g.sinks
        prompt, context = st.prompt, st.context
        for path, cell in items:
            durs, emits = self._units(i, path, True, sink)
            n = prompt.next() if prompt is not None else 0
            cell[1] = Job(req, durs, emits, n + context.next() if context is not None else n)

    def _plan_aggregates(self, req: Request, i: int, items: list) -> None:
        """A grouped stage ``i``: its items' aggregates. A stateful stage serving per item draws each item's
        seconds and emits the aggregate's outputs on its last item; else each aggregate is one job (a stateful
        stage serving per aggregate; a ``stream_into: request`` stage, whose items draw the prompt tokens they
        append and whose job opens with its context tokens)."""
        st = self.st[i]
        per_item = st.spec.stateful and st.spec.service_per == "item"
        # st.prompt: the stream_into request stage's (an engine stage); None at a stateful stage
        aggs = self._group(req, items, self.g.key_depth[i], st.svc if per_item else st.prompt)
        st.aggs_created += len(aggs)
        sink = i in self.g.sinks
        for key, a in aggs.items():
            durs, emits = self._units(i, key, not per_item, sink)
            if per_item:
                a.emits = [c for cells in emits for c in cells]
            else:
                a.job = Job(req, durs, emits, st.context.next() if st.context is not None else 0)

    # ----------------------------------------------------------------------------- runtime
    def _arrivals(self, times: np.ndarray, ptypes: np.ndarray):
        env = self.env
        prev = 0.0
        for rid, (t, pt) in enumerate(zip(times.tolist(), ptypes.tolist())):
            yield env.timeout(t - prev)
            prev = t
            req = Request(rid, t, pt)
            self.sent += 1
            self.open += 1
            root = self._plan(req)
            self._deliver(root, None)

    def _deliver(self, cell, src: Instance | None):
        dst, work = cell
        st = self.st[dst]
        if st.grouped:
            a = work.agg
            inst = a.inst
            if inst is None:
                inst = a.inst = self.policy.pick_agg(st, a)
        else:
            inst = self.policy.pick(st, work.req)
        if src is not None and src is not inst and not self._free_tx:
            d = self.tx[src.stage][0 if src.node == inst.node else 1]
            if d > 0:
                self._after(d, lambda _e, inst=inst, work=work: self._enqueue(inst, work))
                return
        self._enqueue(inst, work)

    def _forward(self, cells, src: Instance, req: Request):
        for cell in cells:
            if cell[0] < 0:
                req.remaining -= 1
                if req.remaining == 0:
                    now = self.env.now
                    req.t_done = now
                    self.latencies.append((req.rid, now - req.t0))
                    self.open -= 1
                    if now > self.t_end:
                        self.t_end = now
                elif req.remaining < 0:
                    raise AggregationError(f"request {req.rid} completed more sink units than planned")
            else:
                self._deliver(cell, src)
        self.st[src.stage].units_out += len(cells)

    def _after(self, delay: float, fn) -> None:
        """Call ``fn(event)`` ``delay`` seconds from now: a SimPy ``Timeout`` (public API) with ``fn`` as its
        callback. The hottest call of a run (one per served unit)."""
        Timeout(self.env, delay).callbacks.append(fn)

    def _enqueue(self, inst: Instance, work):
        st = self.st[inst.stage]
        st.items_in += 1
        if st.lm is not None:
            st.lm.submit(inst, work)
            return
        if type(work) is SItem and work.dur is None:  # counted on arrival; the aggregate's job is served
            self._count(inst, work)
            return
        if inst.busy < inst.slots:
            self._start(inst, work)
        else:
            now = self.env.now
            inst.q_area += len(inst.queue) * (now - inst.q_t)
            inst.q_t = now
            inst.queue.append(work)
            if len(inst.queue) > inst.q_max:
                inst.q_max = len(inst.queue)

    def _start(self, inst: Instance, work):
        inst.busy += 1
        if type(work) is SItem:
            inst.busy_time += work.dur
            self._after(work.dur, lambda _e: self._finish_item(inst, work))
            return
        st = self.st[inst.stage]
        scale = 1.0
        pc = st.spec.prefix_cache
        if pc is not None:
            pt = work.req.ptype
            cache = inst.cache
            if pt in cache:
                scale = 1.0 - pc.reduction
                inst.hits += 1
                cache.remove(pt)
            elif len(cache) >= pc.capacity:
                cache.pop(0)
            cache.append(pt)
        durs = work.durs
        if not self.stream or len(durs) == 1:
            total = sum(durs) * scale
            inst.busy_time += total
            self._after(total, lambda _e: self._finish_job(inst, work))
        else:
            d0 = durs[0] * scale
            inst.busy_time += d0
            self._after(d0, lambda _e: self._unit_done(inst, work, 0, scale))

    def _unit_done(self, inst: Instance, job: Job, k: int, scale: float):
        self._forward(job.emits[k], inst, job.req)
        k += 1
        if k < len(job.durs):
            d = job.durs[k] * scale
            inst.busy_time += d
            self._after(d, lambda _e: self._unit_done(inst, job, k, scale))
        else:
            self._free(inst)

    def _finish_job(self, inst: Instance, job: Job):
        for cells in job.emits:
            self._forward(cells, inst, job.req)
        self._free(inst)

    def _finish_item(self, inst: Instance, item: SItem):
        self._count(inst, item)
        self._free(inst)

    def _count(self, inst: Instance, item: SItem):
        """Count one item into its aggregate; on the last one emit (or queue the aggregate's job)."""
        a = item.agg
        if a.inst is not inst:
            raise AggregationError(f"item of aggregate {a.key} at instance {inst.idx}, aggregate at {a.inst.idx}")
        st = self.st[inst.stage]
        if a.count(st):
            if a.job is not None:
                st.items_in -= 1  # the job is not an arriving item
                self._enqueue(inst, a.job)
            else:
                self._forward(a.emits, inst, a.req)

    def _free(self, inst: Instance):
        inst.busy -= 1
        inst.served += 1
        q = inst.queue
        if q:
            now = self.env.now
            inst.q_area += len(q) * (now - inst.q_t)
            inst.q_t = now
            self._start(inst, q.popleft())

    # ----------------------------------------------------------------------------- run
    def run(self, rate: float, duration: float, arrivals: np.ndarray | None = None,
            max_requests: int | None = None) -> RunResult:
        """Poisson arrivals at ``rate`` req/s during ``duration`` s (or given ``arrivals`` times);
        runs until every request has completed. More than ``max_requests`` expected requests
        (default: the spec's ``request_limit``, :data:`simfoe.limits.PIPELINE_REQUESTS` or, with engine-backed
        stages, :data:`simfoe.limits.PIPELINE_ENGINE_REQUESTS`) is refused before any is drawn."""
        if arrivals is None:
            if not rate > 0:
                raise SpecError("rate", rate, "a rate > 0 requests/s")
            if not duration > 0:
                raise SpecError("duration", duration, "a duration > 0 s")
            self.spec.request_limit.check("rate", rate, rate * duration, max_requests, "rate x duration")
            n_guess = int(rate * duration + 10 * np.sqrt(rate * duration) + 20)
            t = np.cumsum(self.rng_arr.exponential(1.0 / rate, n_guess))
            while t[-1] < duration:
                t = np.concatenate([t, t[-1] + np.cumsum(self.rng_arr.exponential(1.0 / rate, n_guess))])
            arrivals = t[t < duration]
        else:
            self.spec.request_limit.check("arrivals", len(arrivals), len(arrivals), max_requests, "arrival times given")
        w = np.asarray(self.spec.prompts.weights, dtype=float)
        ptypes = self.rng_pt.choice(len(w), size=len(arrivals), p=w / w.sum())
        self.env.process(self._arrivals(np.asarray(arrivals, dtype=float), ptypes))
        # Allocation-heavy loop whose garbage is freed by reference counting (no cycles per event):
        # pause the cyclic collector while it runs, so it does not rescan live objects (~10% faster).
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            self.env.run()
        finally:
            if gc_was_on:
                gc.enable()
        for st in self.st:
            if st.lm is not None:
                st.lm.close()
        self._check()
        lat = sorted(self.latencies)
        return RunResult(
            spec=self.spec, mode=self.mode, routing=self.routing, rate=rate, duration=duration, seed=self.seed,
            sent=self.sent, latencies=np.array([x[1] for x in lat]), t_end=self.t_end, stages=self.st,
        )

    def _check(self) -> None:
        """Conservation checks after the run: every request done, every aggregate complete."""
        if self.open != 0 or len(self.latencies) != self.sent:
            raise AggregationError(f"{self.open} of {self.sent} requests never completed")
        for st in self.st:
            if st.grouped and (st.aggs_done != st.aggs_created or st.agg_items != st.items_in):
                raise AggregationError(
                    f"stage {st.spec.name}: {st.aggs_done}/{st.aggs_created} aggregates completed, "
                    f"{st.agg_items} items aggregated of {st.items_in} received")
            for inst in st.instances:
                if inst.busy or inst.queue:
                    raise AggregationError(f"stage {st.spec.name} instance {inst.idx} not drained")


def simulate(spec: PipelineSpec, mode: str = "stream", rate: float = 1.0, duration: float = 60.0, seed: int = 0,
             routing: str | None = None, arrivals: np.ndarray | None = None,
             max_requests: int | None = None) -> RunResult:
    """Run one scenario; see :func:`simfoe.pipelines.metrics.summarize` for the JSON view.
    ``max_requests``: raise the bound on its requests (:data:`simfoe.limits.PIPELINE_REQUESTS`)."""
    return Simulation(spec, mode, routing, seed).run(rate, duration, arrivals, max_requests)
