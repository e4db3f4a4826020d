"""One forward pass (or serving iteration) of a model placed on a cluster, as a SimPy simulation.

Every GPU is a SimPy process walking the layer program (``simfoe.forward.plan``): compute steps are
timeouts; collectives start when all members of a group have arrived and run as flows on the
shared ``FlowNetwork`` (max-min fair link sharing), so concurrent groups contend for NICs and links.
Identical layers are simulated once and the time scaled (DESIGN.md, performance principles):
one dense layer (if the model has any) and one MoE layer; ``per_layer=True`` simulates every
MoE layer with its own routing sample instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import simpy

from simfoe.costs.program import run_step
from simfoe.errors import SpecError
from simfoe.fabric.flows import FlowNetwork
from simfoe.fabric.topology import build_cluster
from simfoe.forward.eplb import balance
from simfoe.forward.plan import (
    Collective, Compute, LayerPlan, _Costs, foe_layer, head_seconds, moe_layer, rank_compute_seconds,
)
from simfoe.forward.routing import expert_probs
from simfoe.forward.work import Work
from simfoe.specs.hardware import HardwareSpec
from simfoe.specs.model import ModelSpec
from simfoe.specs.placement import PlacementSpec, resolve_foe, resolve_moe
from simfoe.specs.precision import FORMATS
from simfoe.specs.routing import RoutingSpec, parse_routing

CATEGORIES = ("embed_lm_head", "attention", "all_reduce", "dispatch", "experts", "combine", "dense_ffn")
COMM_KINDS = ("all_to_all", "all_reduce")

#: Share of HBM kept for activations, CUDA graphs and fragmentation: vLLM's default
#: gpu_memory_utilization = 0.9 (vLLM EngineArgs default).
HBM_RESERVE_FRACTION = 0.10


@dataclass
class ForwardResult:
    """Outcome of one pass. Times in seconds, bytes in bytes (summed over GPUs and layers)."""

    latency_s: float
    gpus: int
    breakdown_s: dict[str, float]
    comm_bytes: dict[str, dict[str, float]]
    local_activation_rate: float | None
    extra: dict = field(default_factory=dict)
    memory: dict | None = None  # ForwardModel.memory of the pass (run() sets it)
    micro_batches: int = 1  # 2: two-batch overlap ran (placement.overlap); 1: one batch
    nodes_per_token: float | None = None  # mean distinct nodes serving a token's routed experts, per MoE layer

    def to_dict(self) -> dict:
        out = {
            "latency_s": self.latency_s,
            "gpus": self.gpus,
            "breakdown_s": dict(self.breakdown_s),
            "comm_bytes": {k: dict(v) for k, v in self.comm_bytes.items()},
            "local_activation_rate": self.local_activation_rate,
            "nodes_per_token": self.nodes_per_token,
            "micro_batches": self.micro_batches,
        }
        if self.memory is not None:
            out["memory"] = dict(self.memory)
        return out


@dataclass(frozen=True)
class _LayerRun:
    """One simulation standing for several layers of one kind: ``latency_s`` and ``breakdown_s`` already
    scaled to them (s); bytes per tag and where (as ``FlowNetwork.bytes_by_tag``) and the routing counts of
    the simulated layers, scaled by ``bytes_weight`` and ``weight``; ``recorder``: its timeline or None."""

    latency_s: float
    breakdown_s: dict
    bytes_by_tag: dict
    local_activations: float
    activations: float
    node_visits: float
    recorder: _Recorder | None
    weight: float
    bytes_weight: float


@dataclass(frozen=True)
class IterationCost:
    latency_s: float
    breakdown_s: dict


class _Recorder:
    """Collects Chrome-trace events (compute per GPU, transfers per collective batch)."""

    def __init__(self, label: str = ""):
        self.events: list[dict] = []
        self.label = label
        self.span_s = 0.0  # simulated seconds the recorded run lasted

    def shifted(self, by_s: float) -> list[dict]:
        """The events, ``by_s`` seconds later."""
        return [{**e, "ts": e["ts"] + by_s * 1e6} for e in self.events]

    def compute(self, gpu: int, name: str, start: float, end: float, stage: int | None = None):
        """A compute step on ``gpu`` from ``start`` to ``end`` (s); ``stage``: its two-batch-overlap stage."""
        if end > start:
            args = {"layer": self.label} if stage is None else {"layer": self.label, "stage": stage}
            self.events.append({"name": name, "cat": "compute", "ph": "X", "pid": 0, "tid": int(gpu),
                                "ts": start * 1e6, "dur": (end - start) * 1e6, "args": args})

    def repeated(self, name: str, start: float, end: float):
        """A collective that repeated an earlier layer's duration (no flows) from ``start`` to ``end`` (s)."""
        self.events.append({"name": name, "cat": "comm", "ph": "X", "pid": 1, "tid": "fabric", "ts": start * 1e6,
                            "dur": (end - start) * 1e6, "args": {"layer": self.label, "repeats": "layer 0"}})

    def __call__(self, kind, name, resource, start, end, nbytes):
        self.events.append({"name": name, "cat": kind, "ph": "X", "pid": 1, "tid": str(resource),
                            "ts": start * 1e6, "dur": (end - start) * 1e6,
                            "args": {"bytes": nbytes, "layer": self.label}})


def run_program(hw: HardwareSpec, nodes: int, plan: LayerPlan, recorder: _Recorder | None = None):
    """Simulate one layer program; returns (latency_s, breakdown by category, bytes by tag)."""
    return run_programs(hw, nodes, [plan.steps], recorder)


def stages(steps: list) -> dict[int, int]:
    """Two-batch-overlap stage of each compute step (by step index), as SGLang's two-batch overlap cuts a
    layer at its communication points: a stage runs until a collective is launched; compute that needs
    none of the collectives in flight (``Compute.independent``: shared experts beside the dispatch) is a
    stage of its own; the next stage begins by waiting for them. Attention and the router that follows it
    are one stage (the router fused into attention)."""
    out, stage, launched, prev_independent = {}, 0, False, False
    for si, s in enumerate(steps):
        if isinstance(s, Collective):
            launched = True
            continue
        if launched or (prev_independent and not s.independent):
            stage += 1
        out[si], launched, prev_independent = stage, False, s.independent
    return out


class _Streams:
    """The GPUs' compute streams when several programs (micro-batches) share them.

    Each stream runs compute stages (:func:`stages`) in a fixed turn order, stage k of every program in
    turn (k = 0, 1, ...), as SGLang's two-batch overlap launches the micro-batches' stages; a step waits
    for its turn. While a collective a GPU belongs to is in flight,
    its compute runs at ``1 - share`` of its speed (the SMs the communication kernels hold); ``share``
    "auto": each collective's own ``sm_share`` (the largest of those in flight on the GPU).
    """

    def __init__(self, env: simpy.Environment, G: int, programs: list[list], share):
        auto = share == "auto"
        if not auto and not 0.0 <= share < 1.0:
            raise SpecError("placement.comm_sm_share", share, "a share of the GPU in [0, 1), or auto")
        self.env, self.share = env, (1.0 if auto else share)  # truthy when compute can slow down
        self.held: list[list[float]] | None = [[] for _ in range(G)] if auto else None  # in-flight shares
        self.stage_of = [stages(steps) for steps in programs]
        order = sorted((k, pi, si) for pi, st in enumerate(self.stage_of) for si, k in st.items())
        self.turn_of = {(pi, si): pos for pos, (_, pi, si) in enumerate(order)}
        self.turn = [0] * G  # the turn each stream is at
        self.waiting: dict[tuple[int, int], simpy.Event] = {}
        self.inflight = np.zeros(G, dtype=np.int64)  # collectives in flight that each GPU belongs to
        self.changed = [env.event() for _ in range(G)] if share else []  # fires when inflight[g] changes

    def run(self, pi: int, si: int, gpu: int, d: float):
        """Step ``si`` of program ``pi`` on ``gpu``: ``d`` seconds of compute, in its turn; returns its start (s)."""
        env, mine = self.env, self.turn_of[(pi, si)]
        if self.turn[gpu] != mine:
            ev = self.waiting[(gpu, mine)] = env.event()
            yield ev
        start, left = env.now, d
        if not self.share and d > 0:  # nothing slows compute down
            yield env.timeout(d)
            left = 0.0
        while left > 1e-12 * d:
            rate = 1.0 - self._held(gpu) if (self.share and self.inflight[gpu]) else 1.0
            t0 = env.now
            done = env.timeout(left / rate)
            if not self.share:
                yield done
                break
            yield done | self.changed[gpu]
            if done.processed:
                break
            left -= (env.now - t0) * rate
        self.turn[gpu] += 1
        nxt = self.waiting.pop((gpu, self.turn[gpu]), None)
        if nxt is not None:
            nxt.succeed()
        return start

    def _held(self, gpu: int) -> float:
        """Share of ``gpu``'s compute its in-flight collectives hold."""
        if self.held is None:
            return self.share
        return max(self.held[gpu], default=0.0)

    def communicating(self, group, delta: int, sm_share: float = 0.0) -> None:
        """A collective of ``group`` (holding ``sm_share`` of each member's SMs) started (+1) or ended (-1)."""
        if self.share:
            self.inflight[group] += delta
            if self.held is not None:
                for g in group:
                    (self.held[g].append if delta > 0 else self.held[g].remove)(sm_share)
            for g in group:
                ev, self.changed[g] = self.changed[g], self.env.event()
                ev.succeed()


@dataclass
class _Launch:
    """Run state of one collective step: each GPU's group (-1: none), and per group its arrivals, its completion
    event and its seconds (``took``)."""

    member: np.ndarray
    arrived: list
    done: list
    took: np.ndarray

    @classmethod
    def of(cls, env: simpy.Environment, G: int, step: Collective) -> _Launch:
        """Fresh run state of ``step`` on ``G`` GPUs: nobody arrived, nothing done."""
        member = np.full(G, -1)
        for gi, grp in enumerate(step.groups):
            member[grp] = gi
        n = len(step.groups)
        return cls(member, [0] * n, [env.event() for _ in step.groups], np.zeros(n))


def run_programs(hw: HardwareSpec, nodes: int, programs: list[list], recorder: _Recorder | None = None,
                 comm_sm_share: float | str = 0.0, step_ends: list | None = None, layer_steps: int = 0):
    """Simulate step lists that run at once on the same GPUs; returns (latency_s, breakdown, bytes by tag).

    One program: every GPU walks it in order, and a category's time is the time its steps add to the
    pass. Several (the micro-batches of two-batch overlap): each GPU runs one process per program and
    one compute stream (:class:`_Streams`) that runs their compute stages in a fixed alternating order,
    as the kernels of an engine that launches the micro-batches' stages in turn (SGLang's two-batch
    overlap, DeepSeek's inference) run on one stream. A collective is launched and the micro-batch
    goes on; its next step waits for it (an independent compute step does not). Collectives need only
    the fabric, so one micro-batch's communication overlaps the other's compute. (Running compute steps
    first come, first served instead made the pipeline settle into different steady states from one
    routing sample to the next, up to 10% apart.) ``comm_sm_share``: the share of a GPU's compute that its in-flight
    collectives hold (0: none, an optimistic bound; "auto": each collective's own ``sm_share``). Breakdown then:
    each compute category's busy seconds on the GPU that finishes last, and the rest of the pass (exposed communication and
    waiting) split over the collectives' categories in proportion to their durations. Either way
    the breakdown sums to the latency. ``step_ends`` (a list), when given, receives one array per program:
    when each step ended on its last GPU (s; a collective under several programs: when it was launched).
    ``layer_steps`` (m > 0): every program is a chain of layers of m steps each, alike step by step; a collective
    at step i >= m puts no flows on the fabric and lasts what the same group's step i mod m took (its first
    layer's), which costs no fabric events (``ForwardModel.OVERLAP_CHAIN``).
    """
    run = _ProgramRun(hw, nodes, programs, recorder, comm_sm_share, layer_steps)
    for pi in range(len(programs)):
        for gpu in range(run.G):
            run.env.process(run.walk(pi, gpu))
    run.env.run()
    done_at = [np.array(d) for d in run.done_at]
    if step_ends is not None:
        step_ends.extend(d.max(axis=1) for d in done_at)
    latency, breakdown = run.serial_breakdown(done_at[0]) if not run.multi else run.overlap_breakdown(done_at)
    return latency, breakdown, run.net.bytes_by_tag


class _ProgramRun:
    """The state of one :func:`run_programs` simulation: its fabric, the GPUs' compute streams (several
    programs), each collective step's :class:`_Launch`, each compute category's busy seconds per GPU and
    when each step ended on each GPU (s)."""

    def __init__(self, hw: HardwareSpec, nodes: int, programs: list[list], recorder: _Recorder | None,
                 comm_sm_share: float | str, layer_steps: int):
        self.env = env = simpy.Environment()
        self.net = FlowNetwork(env, build_cluster(hw, nodes), recorder)
        self.programs, self.recorder, self.layer_steps = programs, recorder, layer_steps
        self.G = G = next(len(s.seconds) for steps in programs for s in steps if isinstance(s, Compute))
        self.multi = len(programs) > 1
        share = comm_sm_share if comm_sm_share == "auto" else float(comm_sm_share)
        self.streams = _Streams(env, G, programs, share) if self.multi else None
        self.busy = {c: [0.0] * G for c in CATEGORIES}  # compute seconds per GPU (several programs)
        self.done_at = [[[0.0] * G for _ in steps] for steps in programs]  # when each step ended, per GPU (s)
        self.launches = [{si: _Launch.of(env, G, s) for si, s in enumerate(steps) if isinstance(s, Collective)}
                         for steps in programs]
        # per program and step: compute seconds per GPU as floats (None: a collective)
        self.seconds = [[np.asarray(s.seconds).tolist() if isinstance(s, Compute) else None for s in steps]
                        for steps in programs]

    def walk(self, pi: int, gpu: int):
        """SimPy process: ``gpu`` walks program ``pi``. With several programs a collective is launched and
        awaited before the next step that needs it (an independent compute step does not)."""
        env, done_at, seconds = self.env, self.done_at[pi], self.seconds[pi]
        inflight: list = []  # several programs: this micro-batch's collectives launched here, not yet awaited
        for si, s in enumerate(self.programs[pi]):
            secs = seconds[si]
            if inflight and not (secs is not None and s.independent):
                yield inflight[0] if len(inflight) == 1 else simpy.AllOf(env, inflight)
                inflight = []
            if secs is not None:
                yield from self._compute(pi, si, gpu, float(secs[gpu]))
            else:
                done = self._arrive(pi, si, gpu)
                if done is not None:
                    if self.multi:
                        inflight.append(done)
                    else:
                        yield done
            done_at[si][gpu] = env.now
        if inflight:
            yield simpy.AllOf(env, inflight)
            done_at[-1][gpu] = env.now

    def _compute(self, pi: int, si: int, gpu: int, d: float):
        """Compute step ``si`` of program ``pi`` on ``gpu``: ``d`` seconds (several programs: in its stream's
        turn, counted in ``busy``), recorded on the timeline."""
        env, s = self.env, self.programs[pi][si]
        t0 = env.now
        if self.multi:
            t0 = yield from self.streams.run(pi, si, gpu, d)
        elif d > 0:
            yield env.timeout(d)
        if d > 0:
            if self.multi:
                self.busy[s.category][gpu] += env.now - t0
            if self.recorder:
                label = f" mb{pi}" if self.multi else ""
                self.recorder.compute(gpu, s.category + label, t0, env.now,
                                      self.streams.stage_of[pi][si] if self.multi else None)

    def _arrive(self, pi: int, si: int, gpu: int) -> simpy.Event | None:
        """``gpu`` reaches collective step ``si`` of program ``pi``; the last member of its group launches the
        group's run. Returns the group's completion event (None: ``gpu`` is in no group)."""
        s, st = self.programs[pi][si], self.launches[pi][si]
        gi = st.member[gpu]
        if gi < 0:
            return None
        st.arrived[gi] += 1
        if st.arrived[gi] == len(s.groups[gi]):
            self.env.process(self._collective(pi, si, gi))
        return st.done[gi]

    def _collective(self, pi: int, si: int, gi: int):
        """SimPy process: group ``gi`` of collective step ``si`` of program ``pi`` runs (as flows on the fabric,
        or, at a later layer of a chain, for its first layer's seconds) and records its seconds in ``took``."""
        env, s, st = self.env, self.programs[pi][si], self.launches[pi][si]
        t0, group = env.now, s.groups[gi]
        if self.multi:
            self.streams.communicating(group, +1, s.sm_share)
        if self.layer_steps and si >= self.layer_steps:  # a later layer of a chain: its first layer's seconds
            yield env.timeout(self.launches[pi][si % self.layer_steps].took[gi])
            if self.recorder:
                self.recorder.repeated(s.tag, t0, env.now)
        else:
            yield from run_step(self.net, s, gi)
        st.took[gi] = env.now - t0
        if self.multi:
            self.streams.communicating(group, -1, s.sm_share)
        st.done[gi].succeed()

    def serial_breakdown(self, done_at: np.ndarray) -> tuple[float, dict[str, float]]:
        """One program (``done_at``: (steps, G) end times, s): its latency and the seconds each step's
        category adds to the pass."""
        breakdown = dict.fromkeys(CATEGORIES, 0.0)
        ends = done_at.max(axis=1)
        prev = 0.0
        for si, s in enumerate(self.programs[0]):
            breakdown[s.category] += float(max(ends[si] - prev, 0.0))
            prev = max(prev, float(ends[si]))
        return float(ends[-1]), breakdown

    def overlap_breakdown(self, done_at: list[np.ndarray]) -> tuple[float, dict[str, float]]:
        """Several programs (``done_at``: (steps, G) end times per program, s): the latency of the GPU that
        finishes last and its breakdown (:func:`_overlap_breakdown`; a collective step counts its longest group)."""
        finish = np.max([d[-1] for d in done_at], axis=0)  # per GPU
        last = int(np.argmax(finish))
        comm_s = dict.fromkeys(CATEGORIES, 0.0)
        for pi, steps in enumerate(self.programs):
            for si, st in self.launches[pi].items():
                comm_s[steps[si].category] += float(st.took.max())  # the longest group's seconds
        latency = float(finish[last])
        return latency, _overlap_breakdown(latency, {c: float(b[last]) for c, b in self.busy.items()}, comm_s)


def _overlap_breakdown(latency: float, busy: dict[str, float], comm_s: dict[str, float]) -> dict[str, float]:
    """Compute categories: busy seconds on the last GPU; the rest of ``latency`` (exposed communication
    and waiting) over the communication categories in proportion to their durations ``comm_s``."""
    breakdown = dict(busy)
    rest = max(latency - sum(breakdown.values()), 0.0)
    total_comm = sum(comm_s.values())
    if total_comm > 0:
        for c, v in comm_s.items():
            breakdown[c] += rest * v / total_comm
    else:
        breakdown[max(breakdown, key=breakdown.get)] += rest
    return breakdown


def _layer_steps(plans: list) -> int:
    """Steps of one layer when every chain of ``plans`` (per micro-batch, its layers' plans) has more than one
    layer and all layers are alike step by step (kind, collective and group count), else 0."""
    first = plans[0][0].steps

    def alike(a, b) -> bool:
        return type(a) is type(b) and (isinstance(a, Compute) or (a.kind == b.kind and len(a.groups) == len(b.groups)))

    if len(plans[0]) < 2 or any(len(p.steps) != len(first) or not all(map(alike, p.steps, first))
                                for ps in plans for p in ps):
        return 0
    return len(first)


class ForwardModel:
    """A model placed on ``placement.nodes`` nodes of ``hw``: forward passes and serving iterations."""

    #: Layers simulated back to back under two-batch overlap (each MoE layer with its own routing
    #: sample; only the first layer's collectives on the fabric, the others repeat their seconds); more
    #: layers are extrapolated at one turn of the stream (:meth:`_turn_s`). Against simulating every layer
    #: with every collective on the fabric (H100, MoE and FoE, prefill and decode; docs/forward.md;
    #: tests/test_overlap.py checks four): mean |error| 0.14%, worst 0.50% on 17 cases, 0.21% and 0.88% on
    #: 13 held out. Turns measured from layer 0 were up to 37% off (the pipeline is still filling: FoE on
    #: one node); identical layers were up to 6% pessimistic (the same straggler GPU every layer).
    OVERLAP_CHAIN = 3

    def __init__(self, model: ModelSpec, hw: HardwareSpec, placement: PlacementSpec,
                 routing: RoutingSpec | str | None = None, seed: int = 0):
        self.model, self.hw, self.placement = model, hw, placement
        self.routing = parse_routing(routing)
        self.seed = int(seed)
        gpn = hw.node.gpus_per_node
        if placement.arch == "foe":
            self.layout = resolve_foe(model, gpn, placement, hw.node.gpus_per_domain)
            n_dist = self.layout.clusters
            n_exp = self.layout.experts_per_cluster
        else:
            self.layout = resolve_moe(model, gpn, placement)
            n_dist, n_exp = 1, (model.moe.n_experts if model.moe else 1)
        self.gpus = self.layout.gpus
        rng = np.random.default_rng(self.seed)
        n_moe = model.n_moe_layers
        if n_moe:
            p = expert_probs(self.routing, n_exp, n_moe * n_dist, rng)
            self._probs = p.reshape(n_moe, n_dist, n_exp)
        else:
            self._probs = None
        self._costs = _Costs(hw, model.formats)
        # redundant experts: one EPLB placement per MoE layer, from that layer's expected loads
        R = getattr(self.layout, "redundant", 0)
        self._route_memo: dict = {}  # routing samples by inputs and generator state (exact; route_group)
        self._slots = None
        if R and self._probs is not None:
            placed: dict[bytes, object] = {}  # layers with the same loads (uniform routing: all) share one
            self._slots = []
            for p in self._probs:
                key = p[0].tobytes()
                if key not in placed:
                    placed[key] = balance(p[0], R, self.layout.ep, gpn, model.moe.n_group)
                self._slots.append(placed[key])
        #: data-parallel attention ranks that prefill chunks are spread over (MoE: GPUs / attention TP;
        #: FoE: 1, every GPU sees every token); serving passes ``prefill_seqs`` up to this many
        self.dp_ranks = self.layout.attention_dp

    # ---- memory ------------------------------------------------------------------------------
    def weight_bytes_per_gpu(self) -> float:
        """Weight bytes on the most loaded GPU, each part in its format (``model.precision``): routed experts in
        expert_weights; attention, dense FFN and shared experts in gemm_weights; router, embedding and LM head
        in the residual format. Block scales amortized (NumberFormat.bytes_per_param)."""
        m, L, f = self.model, self.layout, self.model.formats
        emb = 2 * m.vocab * m.hidden
        if self.placement.arch == "foe":
            attn = m.attn_params() * L.clusters_per_gpu / (L.clusters / 1.0) / L.gpus_per_cluster
            experts = L.experts_per_gpu * L.expert_ffn * m.ffn_mats * m.hidden
            shared = L.clusters_per_gpu * L.shared_ffn * m.ffn_mats * m.hidden
            router = m.hidden * L.experts_per_cluster * L.clusters_per_gpu
            dense = m.dense_ffn_params() / L.gpus
            emb /= L.gpus
        else:
            t = L.attention_tp
            attn = m.attn_params() / t
            experts = L.experts_per_gpu * m.expert_params() / L.expert_tp if m.moe else 0.0  # 1/expert_tp slices
            shared = m.shared_params()
            router = m.hidden * m.moe.n_experts if m.moe else 0.0
            dense = m.dense_ffn_params() / t
            emb /= t
        gemm = m.n_layers * attn + m.n_moe_layers * shared + m.n_dense_layers * dense
        residual = m.n_moe_layers * router + emb
        per = {k: FORMATS[getattr(f, k)].bytes_per_param for k in ("gemm_weights", "expert_weights", "residual")}
        return float(gemm * per["gemm_weights"] + m.n_moe_layers * experts * per["expert_weights"]
                     + residual * per["residual"])

    def kv_bytes_per_token_per_gpu(self) -> float:
        """KV-cache bytes one token of a sequence occupies on each GPU that holds its KV."""
        m, L, a = self.model, self.layout, self.model.attention
        if a.kind == "mla":
            return float(m.kv_bytes_per_token())
        if self.placement.arch == "foe":
            kv = max(1.0, math.ceil(a.n_kv_heads / L.clusters * L.clusters_per_gpu / L.gpus_per_cluster))
        else:
            kv = max(1.0, math.ceil(a.n_kv_heads / L.attention_tp))
        return float(2 * kv * a.head_dim * m.formats.bytes_of("kv_cache") * m.n_layers)

    def kv_capacity_tokens(self, mtp: bool = False) -> int:
        """KV-cache tokens one instance can hold: HBM minus weights minus the reserve, per GPU layout. With
        ``mtp``, the multi-token-prediction module is loaded too: its ``model.mtp_layers`` layers add their
        weights and their KV per token (an SGLang/vLLM draft keeps its own KV cache of every token)."""
        if mtp and self.model.mtp_layers:
            more = self.model.model_copy(update={"n_layers": self.model.n_layers + self.model.mtp_layers})
            return ForwardModel(more, self.hw, self.placement, self.routing, self.seed).kv_capacity_tokens()
        free = self.usable_hbm_bytes() - self.weight_bytes_per_gpu()
        if free <= 0:
            return 0
        per_gpu = int(free // self.kv_bytes_per_token_per_gpu())
        # sequences are split over data-parallel groups; each group stores its own sequences
        return per_gpu * self.dp_ranks

    def mtp_module(self) -> ForwardModel:
        """The model's multi-token-prediction module placed as this model: ``model.mtp_layers`` layers like
        its last (MoE where the model has experts) plus the shared embedding and LM head, so that one of
        its passes prices one draft step. Its 2h -> h input projection is not priced (DeepSeek-V3: 0.10 B
        parameters beside the layer's 11.5 B and the head's 0.93 B). A model without one is a SpecError."""
        m = self.model
        if not m.mtp_layers:
            raise SpecError("model.mtp_layers", 0, f">= 1 to draft tokens: {m.name} has no multi-token-prediction "
                            "module (deepseek-v3 has one; --set model.mtp_layers=1 assumes one like its last layer)")
        upd = {"n_layers": m.mtp_layers, "mtp_layers": 0, "name": f"{m.name}-mtp"}
        if m.moe is not None:
            upd["moe"] = m.moe.model_copy(update={"first_dense_layers": 0})
        return ForwardModel(m.model_copy(update=upd), self.hw, self.placement, self.routing, self.seed)

    def usable_hbm_bytes(self) -> float:
        """HBM per GPU less the reserve (bytes)."""
        return self.hw.gpu.hbm_bytes * (1 - HBM_RESERVE_FRACTION)

    def fits(self) -> bool:
        return self.weight_bytes_per_gpu() < self.usable_hbm_bytes()

    def memory(self, work: Work) -> dict:
        """HBM per GPU that ``work`` needs (bytes): weights, the KV cache of its tokens (prompt tokens of a
        prefill, context of a decode) on the busiest GPU, the usable HBM (less the reserve), and whether it fits."""
        per = work.split(self.dp_ranks)[0]
        weights = self.weight_bytes_per_gpu()
        kv = (per.prefill_tokens + per.decode_kv_tokens) * self.kv_bytes_per_token_per_gpu()
        usable = self.usable_hbm_bytes()
        return {"weights_bytes_per_gpu": weights, "kv_cache_bytes_per_gpu": float(kv),
                "usable_hbm_bytes_per_gpu": float(usable), "fits": bool(weights + kv <= usable)}

    # ---- simulation --------------------------------------------------------------------------
    def _micro_batches(self, work: Work) -> list:
        """What each of two overlapped micro-batches computes (FoE: halves of the pass, every GPU sees
        every token; MoE: halves of each data-parallel group's share, one list per micro-batch), or
        ``[work]`` when one half would have no tokens."""
        if self.placement.arch == "foe":
            halves = list(work.halves())
            return halves if all(h.tokens for h in halves) else [work]
        shares = [g.halves() for g in work.split(self.dp_ranks)]
        mbs = [[s[i] for s in shares] for i in range(2)]
        return mbs if all(sum(w.tokens for w in mb) for mb in mbs) else [work]

    def _plan(self, work, layer: int, dense: bool, rng) -> LayerPlan:
        probs = None if (dense or self._probs is None) else self._probs[layer]
        if self.placement.arch == "foe":
            return foe_layer(self._costs, self.model, self.layout, work, probs, rng, dense, self._route_memo)
        slots = None if (dense or self._slots is None) else self._slots[layer]
        return moe_layer(self._costs, self.model, self.layout, work, None if probs is None else probs[0], rng, dense,
                         slots, self._route_memo)

    def simulate(self, work: Work, per_layer: bool = False, timeline: list | None = None,
                 progress=None) -> ForwardResult:
        """Simulate ``work``; ``timeline`` (a list) receives Chrome-trace events when given;
        ``progress`` (a callable, or None) is called with 1 after each simulated layer program.

        ``placement.overlap``: ``none`` one batch; ``two-batch`` two overlapped micro-batches (one batch
        when a half would be empty); ``auto`` whichever of the two is faster for this pass."""
        mode = self.placement.overlap
        if mode == "none":
            return self._simulate(work, [work], per_layer, timeline, progress)
        parts = self._micro_batches(work)
        if mode == "two-batch" or len(parts) == 1:
            return self._simulate(work, parts, per_layer, timeline, progress)
        tl_one, tl_two = ([], []) if timeline is not None else (None, None)
        one = self._simulate(work, [work], per_layer, tl_one, progress)
        if self._compute_floor(work, parts) >= one.latency_s * (1 + self.AUTO_MARGIN):
            # two micro-batches' compute alone already takes longer (weight-bound decode reads the
            # weights twice): no need to simulate them
            if timeline is not None:
                timeline.extend(tl_one)
            return one
        two = self._simulate(work, parts, per_layer, tl_two, progress)
        best, tl = (two, tl_two) if two.latency_s < one.latency_s else (one, tl_one)
        if timeline is not None:
            timeline.extend(tl)
        return best

    #: ``auto`` skips simulating two micro-batches when their compute alone exceeds the one-batch pass
    #: by this share (the floor uses layer 0's routing for every layer; the margin covers the spread)
    AUTO_MARGIN = 0.05

    def _compute_steps(self, parts: list):
        """(layers of the kind, [per-GPU seconds of each compute step of ``parts``]) per layer kind,
        every layer priced with layer 0's routing."""
        rng = np.random.default_rng(self.seed + 1)
        for dense, n in ((True, self.model.n_dense_layers), (False, self.model.n_moe_layers)):
            if n:
                yield n, [np.asarray(s.seconds, dtype=float) for w in parts for s in self._plan(w, 0, dense, rng).steps
                          if isinstance(s, Compute)]

    def _compute_floor(self, work: Work, parts: list) -> float:
        """A floor on the two-batch pass (s): the busiest GPU's compute for both micro-batches, all layers,
        plus the embedding/LM head; communication and waiting can only add to it."""
        return sum(n * float(np.max(sum(steps))) for n, steps in self._compute_steps(parts)) + self._head(work)

    def serial_compute_s(self, work: Work, two_batch: bool) -> float:
        """Compute on the pass's path were nothing overlapped (s): each compute step's busiest GPU, summed over
        steps, layers (layer 0's routing for all) and, with ``two_batch``, both micro-batches, plus the
        embedding/LM head. What two micro-batches add to it (weights read twice, half-size kernels) is all
        that overlap may cost over one batch (tests/test_overlap.py)."""
        parts = self._micro_batches(work) if two_batch else [work]
        return sum(n * sum(float(np.max(x)) for x in steps) for n, steps in self._compute_steps(parts)) + self._head(work)

    def _head(self, work: Work) -> float:
        vocab_split = self.gpus if self.placement.arch == "foe" else self.layout.attention_tp
        return head_seconds(self._costs, self.model, work, vocab_split, self.dp_ranks)

    def _simulate(self, work: Work, parts: list, per_layer: bool, timeline: list | None,
                  progress=None) -> ForwardResult:
        m = self.model
        rng = np.random.default_rng(self.seed + 1)
        total = 0.0
        breakdown = dict.fromkeys(CATEGORIES, 0.0)
        comm = {k: {"intra_node": 0.0, "inter_node": 0.0} for k in COMM_KINDS}
        local = acts = visits = 0.0
        kinds = []
        if m.n_dense_layers:
            kinds.append((True, m.n_dense_layers))
        if m.n_moe_layers:
            kinds.append((False, m.n_moe_layers))
        offset = 0.0
        for dense, n in kinds:
            for run in self._layer_runs(parts, dense, n, per_layer, rng, timeline is not None):
                if progress is not None:
                    progress(1)
                if run.recorder:
                    timeline.extend(run.recorder.shifted(offset))
                    offset += run.recorder.span_s
                total += run.latency_s
                for k, v in run.breakdown_s.items():
                    breakdown[k] += v
                for tag, acc in run.bytes_by_tag.items():
                    kind = "all_to_all" if tag == "all_to_all" else "all_reduce"
                    for where, v in acc.items():
                        comm[kind][where] += run.bytes_weight * v
                local += run.weight * run.local_activations
                acts += run.weight * run.activations
                visits += run.weight * run.node_visits
        head = self._head(work)
        breakdown["embed_lm_head"] += head
        total += head
        lar = (local / acts) if acts > 0 else None
        return ForwardResult(float(total), self.gpus, breakdown, comm, None if lar is None else float(lar),
                             micro_batches=len(parts), nodes_per_token=self._nodes_per_token(visits, acts))

    def _nodes_per_token(self, visits: float, acts: float) -> float | None:
        """Mean distinct nodes whose experts serve one token in one MoE layer (None: no routed tokens).
        MoE: nodes its dispatch reaches; FoE: every node, since every cluster routes every token (the
        token gets there by the all-reduce, not a dispatch)."""
        if acts <= 0:
            return None
        if self.placement.arch == "foe":
            return float(-(-self.gpus // self.hw.node.gpus_per_node))
        return float(visits * self.model.moe.top_k / acts)

    def _layer_runs(self, parts: list, dense: bool, n: int, per_layer: bool, rng, record: bool):
        """Simulations (:class:`_LayerRun`) standing for the ``n`` layers of one kind. One batch: each
        simulated layer stands for n / simulated layers. Two micro-batches: :meth:`_chain_run`."""
        if len(parts) > 1:
            yield self._chain_run(parts, dense, n, per_layer, rng, record)
            return
        layers = list(range(n)) if (per_layer and not dense) else [0]
        weight = n / len(layers)
        for layer in layers:
            plan = self._plan(parts[0], layer, dense, rng)
            rec = _Recorder(f"{'dense' if dense else 'moe'} layer {layer}") if record else None
            lat, bd, tags = run_program(self.hw, self.placement.nodes, plan, rec)
            if rec:
                rec.span_s = lat
            yield _LayerRun(weight * lat, {k: weight * v for k, v in bd.items()}, tags, plan.local_activations,
                            plan.activations, plan.node_visits, rec, weight, weight)

    def _chain_run(self, parts: list, dense: bool, n: int, per_layer: bool, rng, record: bool) -> _LayerRun:
        """Two micro-batches: layers overlap each other too, so a chain of ``OVERLAP_CHAIN`` layers (each MoE
        layer with its own routing sample) runs back to back and the rest is extrapolated at the chain's
        steady rate. Only the chain's first layer puts its collectives on the fabric; the later layers' last
        what the first layer's took (``run_programs``' ``layer_steps``). ``per_layer``: all n layers, every
        collective on the fabric."""
        k = n if (per_layer or n <= self.OVERLAP_CHAIN) else self.OVERLAP_CHAIN
        if dense:
            plans = [[self._plan(w, 0, True, rng)] * k for w in parts]
        else:
            plans = [[self._plan(w, layer, False, rng) for layer in range(k)] for w in parts]
        rec = _Recorder(f"{'dense' if dense else 'moe'} layers 0-{k - 1}, two micro-batches") if record else None
        m = 0 if per_layer else _layer_steps(plans)
        ends: list = []
        lat, bd, tags = run_programs(self.hw, self.placement.nodes, [[s for p in ps for s in p.steps] for ps in plans],
                                     rec, self.placement.comm_sm_share, ends, m)
        if rec:
            rec.span_s = lat
        if k < n:  # steady state: each further layer adds one turn of the stream (the first layer fills
            # the pipeline and the last drains it, once in any chain)
            total = lat + (n - k) * self._turn_s(plans[-1], ends[-1])
            bd = {c: v * total / lat for c, v in bd.items()}
            lat = total
        return _LayerRun(lat, bd, tags, sum(p.local_activations for ps in plans for p in ps),
                         sum(p.activations for ps in plans for p in ps), sum(p.node_visits for ps in plans for p in ps),
                         rec, n / k, n if m else n / k)

    @staticmethod
    def _turn_s(plans: list, ends: np.ndarray) -> float:
        """Seconds between the last micro-batch's first collective launches (without one: its last steps) in
        layers 1 and 2 of a chain ``plans`` (its layers, >= 3) whose steps ended at ``ends``: one turn of the
        stream, the steady rate. Layer 0 fills the pipeline; the stages between these launches are all of
        one turn, each after its predecessor of the turn before."""
        m = len(plans[0].steps)
        mark = next((i for i, s in enumerate(plans[0].steps) if isinstance(s, Collective)), m - 1)
        return max(float(ends[2 * m + mark] - ends[m + mark]), 0.0)

    def run(self, phase: str, batch: int, seq_len: int, per_layer: bool = False, timeline: list | None = None,
            progress=None) -> ForwardResult:
        work = Work.from_phase(phase, batch, seq_len)
        r = self.simulate(work, per_layer, timeline, progress)
        r.memory = self.memory(work)
        return r

    def rank_compute_s(self, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int,
                       decode_kv_tokens: int) -> float:
        """Compute (s) that one data-parallel attention rank's own sequences cost in one pass (see
        :func:`simfoe.forward.plan.rank_compute_seconds`); the serving engine prices the busiest
        rank's excess over an even share with it. Only MoE layouts have ranks (FoE: 1)."""
        if self.placement.arch == "foe":
            raise SpecError("arch", "foe", "an MoE layout: FoE has one data-parallel attention rank")
        w = Work(int(prefill_tokens), float(prefill_attn_pairs), 1 if prefill_tokens else 0, int(decode_seqs),
                 int(decode_kv_tokens))
        return rank_compute_seconds(self._costs, self.model, self.layout, w)

    def iteration(self, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int, decode_kv_tokens: int,
                  prefill_seqs: int | None = None) -> IterationCost:
        """One continuous-batching iteration (prefill chunks + decodes); see ``Work``. ``prefill_seqs``:
        how many equal chunks the prefill tokens stand for (default 1), spread over the DP groups."""
        if prefill_tokens < 0 or decode_seqs < 0:
            raise SpecError("iteration", (prefill_tokens, decode_seqs), "non-negative token counts")
        if prefill_tokens == 0 and decode_seqs == 0:
            return IterationCost(0.0, {})
        ps = prefill_seqs if prefill_seqs is not None else (1 if prefill_tokens else 0)
        r = self.simulate(Work(int(prefill_tokens), float(prefill_attn_pairs), int(ps), int(decode_seqs), int(decode_kv_tokens)))
        return IterationCost(r.latency_s, r.breakdown_s)
