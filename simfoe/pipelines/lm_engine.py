"""LM stages backed by the serving engine (issue 27.1): each instance of such a stage is one replica of
:class:`simfoe.serving.engine.Engine` running in the pipeline's SimPy environment, so the pipeline's
clock drives continuous batching, chunked prefill, the KV cache and iteration times from the forward
model.

A job (one input of the stage) becomes one serving request: ``prompt_tokens`` drawn from the stage's
distribution, and as output the sum of its units' tokens (``output_tokens`` per unit: a part when the
stage has ``parts``, else an output). Unit boundaries are precomputed per request as cumulative token
counts; the engine calls back after every iteration with the rows that got a token
(``RequestStore.on_emit``), and a unit leaves at the iteration that decodes its last token (``stream``)
or every unit leaves when the request's last token decodes (``batch``). A ``stream_into: request`` stage
instead makes one request per aggregate of arriving units (those sharing their parent key): the first unit
opens it holding before decode, each later one appends its ``prompt_tokens`` to its context
(:func:`simfoe.serving.streamed.extend`), and the last releases it to decode once prefilled. The cost grows with iterations
and emitted units, not with tokens: one vectorized comparison per iteration, Python work only for rows
that finish a unit.

Layers: serving and pipelines sit side by side above forward (DESIGN.md); this module imports
serving, serving imports nothing from pipelines (its hook is a plain callback).
"""
from __future__ import annotations

from itertools import accumulate

import numpy as np

from simfoe.errors import SpecError
from simfoe.pipelines.engine import SItem
from simfoe.serving import api as serving_api
from simfoe.serving import streamed
from simfoe.serving.engine import Engine, engine_config
from simfoe.serving.step_models import make_cost

#: fields of :class:`simfoe.pipelines.spec.EngineSpec` that are serving-engine knobs (None: its default)
ENGINE_KNOBS = ("max_batch", "token_budget", "scheduler", "budget_scope")
#: serving summary keys an engine-backed stage reports (definitions: docs/serving.md)
ENGINE_METRICS = ("requests", "ttft_s", "tbt_s", "tpot_s", "e2e_s", "queue_s", "gpu_utilization", "kv_cache")


def _priced_model(es, seed: int):
    """(iteration cost, KV capacity in tokens, GPUs) of one instance of engine spec ``es``: its forward model
    wrapped as ``simfoe serve`` wraps it (:func:`simfoe.serving.step_models.make_cost`)."""
    fm, _, _ = serving_api.build_forward(es.model, es.hardware, es.nodes, es.arch, es.routing, list(es.set), seed)
    return make_cost(fm), fm.kv_capacity_tokens(), fm.gpus


class EngineStage:
    """The serving engine behind one LM stage: replica k serves the stage's instance k.

    ``forward(cells, inst, req)`` hands a unit's cells downstream (the pipeline's hand-over);
    ``stream``: units leave as they decode (else all at the request's last token).
    """

    def __init__(self, st, env, stream: bool, forward, seed: int = 0, models: dict | None = None):
        try:
            self._build(st, env, seed, models)
        except SpecError as e:  # name the stage's key: stages.NAME.engine.FIELD
            field = "profile" + e.field[6:] if e.field.split(".")[0] == "engine" else e.field
            raise SpecError(f"stages.{st.spec.name}.engine.{field}", e.value, e.allowed, problem=e.problem) from None
        self.store = self.eng.store
        self.store.on_emit = self._emitted
        for r in self.eng.replicas:
            env.process(r.loop())
        self.st = st
        self.env = env
        self.stream = stream
        self.forward = forward
        self.jobs: list = []  # row -> (instance, job), None once every unit has left
        self.ends: list = []  # row -> cumulative output tokens at which each unit leaves
        self.unit: list[int] = []  # row -> next unit to leave
        self.next_end = np.zeros(16, np.int64)  # row -> output tokens at which the next unit leaves

    def _build(self, st, env, seed: int, models: dict | None) -> None:
        """The engine (one replica per instance) on the forward model of the stage's engine spec."""
        es = st.spec.engine
        # stages serving one model on one layout share its iteration costs (forward passes are deterministic)
        key = (es.model, es.hardware, es.nodes, es.arch, es.set, es.routing, seed)
        built = models.get(key) if models is not None else None
        if built is None:
            built = _priced_model(es, seed)
            if models is not None:
                models[key] = built
        cost, kv, self.gpus = built
        knobs = {k: getattr(es, k) for k in ENGINE_KNOBS if getattr(es, k) is not None}
        cfg = engine_config(es.profile, replicas=len(st.instances), **knobs)
        none = np.zeros(0, np.int64)
        self.eng = Engine(np.zeros(0), none, none, none, cost, kv, cfg, env=env)

    def submit(self, inst, work) -> None:
        """``work`` arrives at instance ``inst``: a job (``durs``: output tokens per unit, ``prompt``: prompt
        tokens) is a new request; an item streamed into a request (``stream_into: request``) opens or extends it."""
        if type(work) is SItem:
            self._append(inst, work)
        else:
            self._open(inst, work, work.prompt, False)

    def _append(self, inst, item: SItem) -> None:
        """Unit ``item`` (``dur``: its prompt tokens) of an aggregate arrives: the first opens the aggregate's
        request (its job's ``prompt``: the stage's context tokens, then the unit's), holding before decode unless
        it is also the last; later ones append to its context."""
        a = item.agg
        last = a.count(self.st)
        if a.got == 1:
            a.row = self._open(inst, a.job, a.job.prompt + item.dur, not last)  # its context_tokens, then the unit
        else:
            streamed.extend(self.eng, a.row, item.dur, last)

    def _open(self, inst, job, prompt: int, hold: bool) -> int:
        """Job ``job`` becomes a request of ``prompt`` tokens at instance ``inst`` (``hold``: it awaits more
        prompt before decoding, :func:`simfoe.serving.streamed.hold`); returns its row."""
        ends = list(accumulate(job.durs))
        row = self.store.append(self.env.now, prompt, ends[-1], len(self.jobs))
        if row >= len(self.next_end):
            self.next_end = np.concatenate([self.next_end, np.zeros(len(self.next_end), np.int64)])
        self.jobs.append((inst, job))
        self.ends.append(ends if self.stream else ends[-1:])
        self.unit.append(0)
        self.next_end[row] = self.ends[row][0]
        inst.busy += 1
        if hold:
            streamed.hold(self.eng, row)
        self.eng.arrive(row, inst.idx)  # after the profile's per-request overhead, if any
        return row

    def _emitted(self, rows: np.ndarray, now: float) -> None:
        """Engine callback after an iteration: ``rows`` got a token each (several with multi-token prediction);
        send the units they finished."""
        gen = self.store.gen
        hit = rows[gen[rows] >= self.next_end[rows]]
        for row in hit.tolist():
            inst, job = self.jobs[row]
            ends, k, got = self.ends[row], self.unit[row], int(gen[row])
            if self.stream:
                while k < len(ends) and ends[k] <= got:
                    self.forward(job.emits[k], inst, job.req)
                    k += 1
            else:
                for cells in job.emits:
                    self.forward(cells, inst, job.req)
                k = 1
            if k < len(ends):
                self.unit[row] = k
                self.next_end[row] = ends[k]
            else:
                self.jobs[row] = None
                inst.busy -= 1
                inst.served += 1

    def close(self) -> None:
        """After the run: trim the store, copy busy time into the instances; a request the engine dropped
        (prompt + output larger than one instance's KV cache) is an error naming the stage's lengths."""
        st = self.store
        st.trim()
        dropped = int((st.dropped != 0).sum())
        if dropped:
            r = self.eng.replicas[0]
            kv = r.ranks[0].kv.capacity_tokens
            raise SpecError(f"stages.{self.st.spec.name}.output_tokens", None,
                            f"prompt + output tokens within one instance's KV cache ({kv} tokens per rank)",
                            problem=f"{dropped} requests too long for the KV cache")
        for inst, rep in zip(self.st.instances, self.eng.replicas):
            inst.busy_time = rep.busy_s

    def summary(self) -> dict:
        """The serving metrics of this stage's requests (TTFT, TBT, ... over all its instances)."""
        es = self.st.spec.engine
        s = serving_api.summarize(self.eng, 0.0)
        head = {"model": es.model, "hardware": es.hardware, "nodes": es.nodes, "arch": es.arch,
                "gpus_per_instance": self.gpus}
        return {**head, **{k: s[k] for k in ENGINE_METRICS}}
