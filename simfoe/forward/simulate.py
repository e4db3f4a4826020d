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

from simfoe.errors import SpecError
from simfoe.fabric.flows import FlowNetwork
from simfoe.fabric.topology import build_cluster
from simfoe.forward.plan import Collective, Compute, LayerPlan, _Costs, foe_layer, head_seconds, moe_layer
from simfoe.forward.routing import expert_probs
from simfoe.forward.work import Work
from simfoe.specs.hardware import HardwareSpec
from simfoe.specs.model import ModelSpec
from simfoe.specs.placement import PlacementSpec, resolve_foe, resolve_moe
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

    def to_dict(self) -> dict:
        out = {
            "latency_s": self.latency_s,
            "gpus": self.gpus,
            "breakdown_s": dict(self.breakdown_s),
            "comm_bytes": {k: dict(v) for k, v in self.comm_bytes.items()},
            "local_activation_rate": self.local_activation_rate,
        }
        if self.memory is not None:
            out["memory"] = dict(self.memory)
        return out


@dataclass(frozen=True)
class IterationCost:
    latency_s: float
    breakdown_s: dict


class _Recorder:
    """Collects Chrome-trace events (compute per GPU, transfers per collective batch)."""

    def __init__(self, offset_s: float = 0.0, label: str = ""):
        self.events: list[dict] = []
        self.offset_s, self.label = offset_s, label

    def compute(self, gpu: int, name: str, start: float, end: float):
        if end > start:
            self.events.append({"name": name, "cat": "compute", "ph": "X", "pid": 0, "tid": int(gpu),
                                "ts": (self.offset_s + start) * 1e6, "dur": (end - start) * 1e6,
                                "args": {"layer": self.label}})

    def __call__(self, kind, name, resource, start, end, nbytes):
        self.events.append({"name": name, "cat": kind, "ph": "X", "pid": 1, "tid": str(resource),
                            "ts": (self.offset_s + start) * 1e6, "dur": (end - start) * 1e6,
                            "args": {"bytes": nbytes, "layer": self.label}})


def run_program(hw: HardwareSpec, nodes: int, plan: LayerPlan, recorder: _Recorder | None = None):
    """Simulate one layer program; returns (latency_s, breakdown by category, bytes by tag)."""
    env = simpy.Environment()
    net = FlowNetwork(env, build_cluster(hw, nodes), recorder)
    steps = plan.steps
    G = next(len(s.seconds) for s in steps if isinstance(s, Compute))
    done_at = np.zeros((len(steps), G))
    # per collective step: group index of each GPU, arrival counters, completion events
    coll_state = {}
    for si, s in enumerate(steps):
        if isinstance(s, Collective):
            member = np.full(G, -1)
            for gi, grp in enumerate(s.groups):
                member[grp] = gi
            coll_state[si] = (member, [0] * len(s.groups), [env.event() for _ in s.groups])

    def gpu_proc(gpu: int):
        for si, s in enumerate(steps):
            if isinstance(s, Compute):
                d = float(s.seconds[gpu])
                if d > 0:
                    t0 = env.now
                    yield env.timeout(d)
                    if recorder:
                        recorder.compute(gpu, s.category, t0, env.now)
            else:
                member, arrived, events = coll_state[si]
                gi = member[gpu]
                if gi >= 0:
                    arrived[gi] += 1
                    if arrived[gi] == len(s.groups[gi]):
                        env.process(_run_coll(s, gi, events[gi]))
                    yield events[gi]
            done_at[si, gpu] = env.now

    def _run_coll(s: Collective, gi: int, ev):
        yield from s.fn(net, gi, s.groups[gi])
        ev.succeed()

    for gpu in range(G):
        env.process(gpu_proc(gpu))
    env.run()
    ends = done_at.max(axis=1)
    breakdown = dict.fromkeys(CATEGORIES, 0.0)
    prev = 0.0
    for si, s in enumerate(steps):
        breakdown[s.category] += float(max(ends[si] - prev, 0.0))
        prev = max(prev, float(ends[si]))
    return float(ends[-1]), breakdown, net.bytes_by_tag


class ForwardModel:
    """A model placed on ``placement.nodes`` nodes of ``hw``: forward passes and serving iterations."""

    def __init__(self, model: ModelSpec, hw: HardwareSpec, placement: PlacementSpec,
                 routing: RoutingSpec | str | None = None, seed: int = 0):
        self.model, self.hw, self.placement = model, hw, placement
        self.routing = parse_routing(routing)
        self.seed = int(seed)
        gpn = hw.node.gpus_per_node
        if placement.arch == "foe":
            self.layout = resolve_foe(model, gpn, placement)
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
        self._costs = _Costs(hw, model.dtype)

    # ---- memory ------------------------------------------------------------------------------
    def weight_bytes_per_gpu(self) -> float:
        """Weight bytes on the most loaded GPU."""
        m, L, b = self.model, self.layout, self.model.dtype_bytes
        emb = 2 * m.vocab * m.hidden
        if self.placement.arch == "foe":
            attn = m.attn_params() * L.clusters_per_gpu / (L.clusters / 1.0) / L.gpus_per_cluster
            experts = (L.experts_per_gpu * L.expert_ffn + L.clusters_per_gpu * L.shared_ffn) * m.ffn_mats * m.hidden
            router = m.hidden * L.experts_per_cluster * L.clusters_per_gpu
            dense = m.dense_ffn_params() / L.gpus
            per_layer_moe = attn + experts + router
            total = m.n_moe_layers * per_layer_moe + m.n_dense_layers * (attn + dense) + emb / L.gpus
        else:
            t = L.attention_tp
            attn = m.attn_params() / t
            if m.moe:
                experts = L.experts_per_gpu * m.expert_params() + m.shared_params() + m.hidden * m.moe.n_experts
            else:
                experts = 0.0
            dense = m.dense_ffn_params() / t
            total = m.n_layers * attn + m.n_moe_layers * experts + m.n_dense_layers * dense + emb / t
        return float(total * b)

    def kv_bytes_per_token_per_gpu(self) -> float:
        """KV-cache bytes one token of a sequence occupies on each GPU that holds its KV."""
        m, L, a = self.model, self.layout, self.model.attention
        if a.kind == "mla":
            return float(m.kv_bytes_per_token())
        if self.placement.arch == "foe":
            kv = max(1.0, math.ceil(a.n_kv_heads / L.clusters * L.clusters_per_gpu / L.gpus_per_cluster))
        else:
            kv = max(1.0, math.ceil(a.n_kv_heads / L.attention_tp))
        return float(2 * kv * a.head_dim * m.dtype_bytes * m.n_layers)

    def kv_capacity_tokens(self) -> int:
        """KV-cache tokens one instance can hold: HBM minus weights minus the reserve, per GPU layout."""
        free = self.hw.gpu.hbm_bytes * (1 - HBM_RESERVE_FRACTION) - self.weight_bytes_per_gpu()
        if free <= 0:
            return 0
        per_gpu = int(free // self.kv_bytes_per_token_per_gpu())
        # sequences are split over data-parallel groups; each group stores its own sequences
        if self.placement.arch == "foe":
            return per_gpu
        return per_gpu * (self.gpus // self.layout.attention_tp)

    def fits(self) -> bool:
        return self.weight_bytes_per_gpu() < self.hw.gpu.hbm_bytes * (1 - HBM_RESERVE_FRACTION)

    def memory(self, work: Work) -> dict:
        """HBM per GPU that ``work`` needs (bytes): weights, the KV cache of its tokens (prompt tokens of a
        prefill, context of a decode) on the busiest GPU, the usable HBM (less the reserve), and whether it fits."""
        per = work if self.placement.arch == "foe" else work.split(self.gpus // self.layout.attention_tp)[0]
        weights = self.weight_bytes_per_gpu()
        kv = (per.prefill_tokens + per.decode_kv_tokens) * self.kv_bytes_per_token_per_gpu()
        usable = self.hw.gpu.hbm_bytes * (1 - HBM_RESERVE_FRACTION)
        return {"weights_bytes_per_gpu": weights, "kv_cache_bytes_per_gpu": float(kv),
                "usable_hbm_bytes_per_gpu": float(usable), "fits": bool(weights + kv <= usable)}

    # ---- simulation --------------------------------------------------------------------------
    def _plan(self, work: Work, layer: int, dense: bool, rng) -> LayerPlan:
        probs = None if (dense or self._probs is None) else self._probs[layer]
        if self.placement.arch == "foe":
            return foe_layer(self._costs, self.model, self.layout, work, probs, rng, dense)
        return moe_layer(self._costs, self.model, self.layout, work, None if probs is None else probs[0], rng, dense)

    def simulate(self, work: Work, per_layer: bool = False, timeline: list | None = None) -> ForwardResult:
        """Simulate ``work``; ``timeline`` (a list) receives Chrome-trace events when given."""
        m = self.model
        rng = np.random.default_rng(self.seed + 1)
        total = 0.0
        breakdown = dict.fromkeys(CATEGORIES, 0.0)
        comm = {k: {"intra_node": 0.0, "inter_node": 0.0} for k in COMM_KINDS}
        local = acts = 0.0
        kinds = []
        if m.n_dense_layers:
            kinds.append((True, [0], m.n_dense_layers))
        if m.n_moe_layers:
            layers = list(range(m.n_moe_layers)) if per_layer else [0]
            kinds.append((False, layers, m.n_moe_layers / len(layers)))
        offset = 0.0
        for dense, layers, weight in kinds:
            for layer in layers:
                plan = self._plan(work, layer, dense, rng)
                rec = _Recorder(offset, f"{'dense' if dense else 'moe'} layer {layer}") if timeline is not None else None
                lat, bd, tags = run_program(self.hw, self.placement.nodes, plan, rec)
                if rec:
                    timeline.extend(rec.events)
                    offset += lat
                total += weight * lat
                for k, v in bd.items():
                    breakdown[k] += weight * v
                for tag, acc in tags.items():
                    kind = "all_to_all" if tag == "all_to_all" else "all_reduce"
                    for loc, v in acc.items():
                        comm[kind][loc] += weight * v
                local += weight * plan.local_activations
                acts += weight * plan.activations
        if self.placement.arch == "foe":
            head = head_seconds(self._costs, m, work, self.gpus, 1)
        else:
            t = self.layout.attention_tp
            head = head_seconds(self._costs, m, work, t, self.gpus // t)
        breakdown["embed_lm_head"] += head
        total += head
        lar = (local / acts) if acts > 0 else None
        return ForwardResult(float(total), self.gpus, breakdown, comm, None if lar is None else float(lar))

    def run(self, phase: str, batch: int, seq_len: int, per_layer: bool = False, timeline: list | None = None) -> ForwardResult:
        work = Work.from_phase(phase, batch, seq_len)
        r = self.simulate(work, per_layer, timeline)
        r.memory = self.memory(work)
        return r

    def iteration(self, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int, decode_kv_tokens: int,
                  prefill_seqs: int | None = None) -> IterationCost:
        """One continuous-batching iteration (prefill chunks + decodes); see ``Work``."""
        if prefill_tokens < 0 or decode_seqs < 0:
            raise SpecError("iteration", (prefill_tokens, decode_seqs), "non-negative token counts")
        if prefill_tokens == 0 and decode_seqs == 0:
            return IterationCost(0.0, {})
        ps = prefill_seqs if prefill_seqs is not None else (1 if prefill_tokens else 0)
        r = self.simulate(Work(int(prefill_tokens), float(prefill_attn_pairs), int(ps), int(decode_seqs), int(decode_kv_tokens)))
        return IterationCost(r.latency_s, r.breakdown_s)
