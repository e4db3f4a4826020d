"""Turn (model, placement, work) into a per-GPU *layer program*: compute steps and collectives.

A program is a list of steps executed in order by every GPU:

* ``Compute(category, seconds)``: GPU-local work, ``seconds`` is an array over GPUs;
* ``Collective(kind, category, groups, sizes, algorithm, ...)``: each group (array of global GPU ranks)
  runs it once all its members have arrived; plain data, priced by one dispatcher,
  :func:`simfoe.costs.program.run_step` (see :mod:`simfoe.costs.program`).

Layouts (see DESIGN.md "MoE placement" / "FoE placement"):

MoE, attention ``tp`` (vLLM EP): attention heads split over a TP group of t GPUs inside a node,
sequences split over the G/t groups; the attention output is reduce-scattered over the TP group
(each GPU keeps 1/t of the tokens), tokens are dispatched to their experts' GPUs within the EP
group (all-to-all), experts run, results return (all-to-all) and are all-gathered in the TP group.
Reduce-scatter + all-gather move the bytes of one all-reduce and are counted as ``all_reduce``.
MoE, attention ``dp`` (DeepSeek/SGLang): every GPU holds all attention heads and its own sequences;
dispatch and combine all-to-all only.
MoE, ``expert_tp`` T > 1 (vLLM without EP, TRT-LLM moe_tp) or ``token_exchange`` gather (TRT-LLM EP on H100):
experts sliced over T GPUs (T = 1: whole); an expert group of ep x T GPUs sees all its attention ranks' tokens
(all-reduce, or all-gather) and sums the partial outputs (all-reduce, or reduce-scatter); no all-to-all
(:func:`_sliced_experts`).
FoE: every GPU computes the attention heads of its cluster(s) for all tokens; one all-reduce over all
GPUs sums the post-attention residuals; each cluster routes every token to k_c of its experts. With
one GPU per cluster (or several clusters per GPU) the experts are local: no all-to-all. With g GPUs
per cluster, tokens are sharded g ways inside the cluster, dispatched and combined by an all-to-all
among the cluster's g GPUs (one node, NVLink) and all-gathered back inside the cluster.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simfoe.costs import dispatch as D
from simfoe.costs import kernels as K
from simfoe.costs.program import Collective, Compute
from simfoe.errors import SpecError
from simfoe.forward.routing import GroupLimit, route_group
from simfoe.forward.work import Work, even_split
from simfoe.specs.hardware import HardwareSpec
from simfoe.specs.model import ModelSpec
from simfoe.specs.placement import FoELayout, MoELayout
from simfoe.specs.precision import Precision


@dataclass
class LayerPlan:
    steps: list
    local_activations: float = 0.0
    activations: float = 0.0
    node_visits: float = 0.0  # (token, node) pairs its expert choices reach (routing.RoutingSample.node_visits)


def check_peaks(hw: HardwareSpec, f: Precision) -> None:
    """Every math dtype the formats compute in has a peak on ``hw``; else a SpecError naming the component
    (e.g. nvfp4 activations on an H100: no fp4 tensor cores)."""
    for field, act, w in (("gemm_activations", f.gemm_activations, f.gemm_weights),
                          ("gemm_activations", f.gemm_activations, f.expert_weights),
                          ("attention", f.attention, f.attention)):
        mdt = K.operands(act, w)[2]
        try:
            hw.peak(mdt)  # the one peak lookup (fp16 falls back to bf16 there)
        except SpecError:
            have = ", ".join(sorted(hw.gpu.peak_flops))
            raise SpecError(f"model.precision.{field}", act, f"a format whose math {hw.gpu.name} has a peak for "
                            f"({have}); {act} computes in {mdt} (formats not given follow model.dtype={f.shorthand})") from None


class _Costs:
    """Memoized kernel costs for one pass (the same shapes recur across GPUs), each component in its
    format (``formats``: the model's resolved precision, checked against the hardware's peaks)."""

    def __init__(self, hw: HardwareSpec, formats: Precision):
        check_peaks(hw, formats)
        self.hw, self.formats = hw, formats
        #: bytes of one residual-stream element (``ModelSpec.act_bytes``, resolved once, not per kernel)
        self.act_bytes = formats.bytes_of("residual")
        self._c: dict = {}

    def gemm(self, m, n, k, head: bool = False) -> float:
        """A dense GEMM: gemm_activations x gemm_weights; ``head``: router and LM head, both operands in the
        residual format (DeepSeek-V3 and gpt-oss ship them unquantized)."""
        if m <= 0 or n <= 0 or k <= 0:
            return 0.0
        key = ("g", int(m), int(n), int(k), head)
        v = self._c.get(key)
        if v is None:
            f = self.formats
            a, w = (f.residual, f.residual) if head else (f.gemm_activations, f.gemm_weights)
            v = self._c[key] = K.gemm(self.hw, int(m), int(n), int(k), a, w).latency_s
        return v

    def ew(self, nbytes, kind) -> float:
        if nbytes <= 0:
            return 0.0
        key = ("e", float(nbytes), kind)
        v = self._c.get(key)
        if v is None:
            v = self._c[key] = K.elementwise(self.hw, float(nbytes), kind=kind).latency_s
        return v

    def grouped(self, loads: np.ndarray, n, k) -> float:
        if loads.sum() <= 0:
            return 0.0
        f = self.formats
        return K.grouped_gemm(self.hw, np.rint(loads), int(n), int(k), f.gemm_activations, f.expert_weights).latency_s

    def slots(self, rows: float, h, width) -> float:
        """Per-slot work of the fused MoE kernel over ``rows`` local token-expert rows (0 unless the profile
        fitted it, see simfoe.costs.kernels.moe_slots)."""
        f = self.formats
        on = self._c.get("slots")
        if on is None:  # whether the profile fitted the term at all: most do not, and then it is 0 every call
            on = self._c["slots"] = K.moe_slots_fitted(self.hw, f.gemm_activations, f.expert_weights)
        if not on:
            return 0.0
        return K.moe_slots(self.hw, float(rows), int(h), int(width), f.gemm_activations, f.expert_weights).latency_s

    def attn_prefill(self, tokens, pairs, h, hkv, d, mla: bool = False) -> float:
        """Prefill chunks as one non-causal block of ``tokens`` queries x pairs/tokens keys
        (FLOPs = 4 h d pairs, the causal count the caller computed); ``mla``: the profile's MLA family."""
        if tokens <= 0 or pairs <= 0:
            return 0.0
        key = ("ap", int(tokens), float(pairs), h, hkv, d, mla)
        v = self._c.get(key)
        if v is None:
            q = int(tokens)
            kv_true = pairs / q
            kv = max(q, int(math.ceil(kv_true)))
            v = K.attention_prefill(self.hw, 1, q, kv, h, hkv, d, self.formats.attention, causal=False,
                                    kv_dtype=self.formats.kv_cache, mla=mla).latency_s
            v = self._c[key] = v * (kv_true / kv if kv > kv_true else 1.0)
        return v

    def attn_decode(self, seqs, kv_tokens, h, hkv, d, mla: bool = False) -> float:
        if seqs <= 0:
            return 0.0
        key = ("ad", int(seqs), int(kv_tokens), h, hkv, d, mla)
        v = self._c.get(key)
        if v is None:
            per = max(1, int(round(kv_tokens / seqs)))
            v = self._c[key] = K.attention_decode(self.hw, int(seqs), per, h, hkv, d, self.formats.attention,
                                                  kv_dtype=self.formats.kv_cache, mla=mla).latency_s
        return v


# ------------------------------------------------------------------------------------------- helpers
def _attention_dims(model: ModelSpec, heads_per_gpu: float, kv_per_gpu: float):
    """(qkv_out, o_in, h_q, h_kv, d, d_decode, kv_decode_heads) for attention on one GPU."""
    a = model.attention
    hq = max(1, int(math.ceil(heads_per_gpu)))
    if a.kind == "mla":
        # prefill: latent up-projected to per-head K (nope+rope) and V; decode: weight-absorbed
        # attention reads the latent (kv_lora_rank + rope) once per token and head group.
        d = a.qk_nope_head_dim + a.qk_rope_head_dim
        d_dec = (a.kv_lora_rank + a.qk_rope_head_dim) / 2.0  # K and V halves of one latent read
        return hq, hq, d, d_dec, 1
    hkv = max(1, int(math.ceil(kv_per_gpu)))
    if hq % hkv:
        hkv = 1
    return hq, hkv, a.head_dim, a.head_dim, hkv


def _attention_seconds(c: _Costs, model: ModelSpec, w: Work, heads_per_gpu: float, kv_per_gpu: float) -> float:
    """Norm, QKV projection, attention kernel, output projection and residual add on one GPU."""
    a, h, b = model.attention, model.hidden, c.act_bytes
    T = w.tokens
    if T <= 0:
        return 0.0
    hq, hkv, d, d_dec, kv_dec = _attention_dims(model, heads_per_gpu, kv_per_gpu)
    t = c.ew(2 * T * h * b, "norm")
    if a.kind == "mla":
        qk = a.qk_nope_head_dim + a.qk_rope_head_dim
        if a.q_lora_rank:
            t += c.gemm(T, a.q_lora_rank, h) + c.gemm(T, hq * qk, a.q_lora_rank)
        else:
            t += c.gemm(T, hq * qk, h)
        t += c.gemm(T, a.kv_lora_rank + a.qk_rope_head_dim, h)
        t += c.gemm(T, hq * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank)
        o_in = hq * a.v_head_dim
    else:
        t += c.gemm(T, (hq + 2 * hkv) * a.head_dim, h)
        o_in = hq * a.head_dim
    pairs, kv_tok = w.prefill_pairs, w.decode_kv_tokens
    if a.sliding_window:
        # layers alternate full and sliding-window attention; the representative layer carries the
        # average attention work (the kernel time is linear in the pairs/KV tokens read).
        frac = 1.0 / a.sliding_every
        W = a.sliding_window
        pairs = (1 - frac) * pairs + frac * min(pairs, w.prefill_tokens * W)
        kv_tok = (1 - frac) * kv_tok + frac * min(kv_tok, w.decode_seqs * W)
    mla = a.kind == "mla"  # priced with the profile's attention_*_mla families where fitted (kernel tables)
    t += c.attn_prefill(w.prefill_tokens, pairs, hq, hkv if not mla else hq, d, mla)
    t += c.attn_decode(w.decode_seqs, kv_tok, hq, kv_dec if mla else hkv, d_dec, mla)
    t += c.gemm(T, h, o_in)
    t += c.ew(3 * T * h * b, "add")
    return t


def _ffn_seconds(c: _Costs, model: ModelSpec, tokens: int, width: float) -> float:
    """Dense (or shared-expert) gated FFN of intermediate ``width`` on ``tokens`` tokens."""
    if tokens <= 0 or width <= 0:
        return 0.0
    h, b = model.hidden, c.act_bytes
    up = (2 if model.gated else 1) * width
    return (c.gemm(tokens, int(up), h) + c.ew(3 * tokens * width * b, "act") + c.gemm(tokens, h, int(width))
            + c.ew(2 * tokens * h * b, "norm"))


def _experts_seconds(c: _Costs, model: ModelSpec, loads: np.ndarray, width: int) -> float:
    """Grouped expert FFN on one GPU; ``loads`` = tokens per local expert. The fused kernel walks the rows
    dispatched to this GPU (its routed slots: ``loads.sum()``)."""
    if loads.sum() <= 0:
        return 0.0
    h, b = model.hidden, c.act_bytes
    up = (2 if model.gated else 1) * width
    return (c.grouped(loads, up, h) + c.ew(3 * loads.sum() * width * b, "act") + c.grouped(loads, h, width)
            + c.slots(loads.sum(), h, width))


def _glue_seconds(c: _Costs, loads: np.ndarray, ranks: int, tokens: float) -> float:
    """Eager routing ops of one MoE layer on one GPU (simfoe.costs.kernels.routing_glue; 0 unless the
    profile fitted them): ``loads`` = rows per local expert, ``ranks`` = dispatch destinations (0: local)."""
    if not c.hw.kernels.get("routing_glue"):
        return 0.0
    active = int(np.count_nonzero(np.rint(loads) > 0))
    return K.routing_glue(c.hw, active, len(loads) - active, ranks, float(loads.sum()), float(tokens))


def _traffic(s, tokens: np.ndarray, grp: np.ndarray, k: int, dom: int) -> D.DispatchTraffic:
    """Dispatch traffic of one EP group's routing sample ``s`` (tokens per source GPU ``tokens``): its
    per-destination-GPU copies (per choice without dedup), and per-choice copies from the sampled loads."""
    load = s.expert_load.reshape(len(grp), -1).sum(axis=1)
    choice = np.outer(tokens, k * load / max(load.sum(), 1e-300))
    return D.traffic_from_gpu_copies(s.traffic_tokens, choice, tokens, grp, dom, s.node_visits)


def _groups(G: int, size: int) -> tuple[np.ndarray, ...]:
    return tuple(np.arange(i, i + size) for i in range(0, G, size))


# ------------------------------------------------------------------------------------------- MoE
@dataclass(frozen=True)
class _Routed:
    """One layer's tokens routed to their experts: seconds of routed experts and routing glue per GPU (s),
    each group's dispatch traffic (empty where the experts are local), and the routing counts."""

    expert_s: np.ndarray  # (G,)
    traffic: tuple
    local: float  # expert activations served on the token's own GPU
    activations: float
    node_visits: float = 0.0  # (token, node) pairs the expert choices reach


def _per_gpu_step(fn, tokens: np.ndarray, independent: bool = False, reps: int = 1) -> Compute:
    """An ``experts`` compute step of ``fn(n)`` seconds on each GPU, ``n`` its tokens (``tokens``, one per GPU;
    with ``reps``, one per GPU of a group the step repeats ``reps`` times, each ``fn(n)`` priced once)."""
    return Compute("experts", np.tile([fn(n) for n in tokens], reps), independent=independent)


def _rows_bytes(tokens: np.ndarray, h: int, b: float) -> tuple:
    """Bytes of ``tokens`` rows of the residual stream (width ``h``, ``b`` bytes per element), one per group."""
    return tuple(n * h * b for n in tokens)


def moe_layer(c: _Costs, model: ModelSpec, L: MoELayout, work: Work | list[Work], probs: np.ndarray | None,
              rng: np.random.Generator, dense: bool, slot_map=None, memo: dict | None = None) -> LayerPlan:
    """Program of one MoE (or, with ``dense``, dense-FFN) layer under the expert-parallel baseline.
    ``work``: the pass, split here over the data-parallel groups, or already one Work per group.
    ``slot_map``: where redundant expert replicas live (simfoe.forward.eplb), None without them.
    ``memo``: routing memo (:func:`simfoe.forward.routing.route_group`)."""
    G, t = L.gpus, L.attention_tp
    n_groups = G // t
    per_group = list(work) if isinstance(work, list) else work.split(n_groups)
    if len(per_group) != n_groups:
        raise ValueError(f"moe_layer: {len(per_group)} group shares for {n_groups} data-parallel groups")
    heads, kvh = _moe_heads(model, L)
    steps: list = [Compute("attention", np.repeat([_attention_seconds(c, model, w, heads, kvh) for w in per_group], t))]
    tok_group = np.array([w.tokens for w in per_group])
    if dense:
        return LayerPlan(steps + _tp_dense_ffn(c, model, L, tok_group))
    if L.sliced:
        return _sliced_experts(c, model, L, steps, tok_group, probs, rng, memo)
    tp_groups, tp_bytes = _groups(G, t), _rows_bytes(tok_group, model.hidden, c.act_bytes)
    # tokens each GPU holds after the TP reduce-scatter (sequence-parallel shard)
    tok_gpu = np.concatenate([even_split(n, t) for n in tok_group])
    if t > 1:
        steps.append(Collective("reduce_scatter", "all_reduce", tp_groups, tp_bytes))
    # router on the local shard (shared experts run beside the routed ones, in _ep_exchange)
    steps.append(_per_gpu_step(lambda n: _router_seconds(c, model, n, model.moe.n_experts), tok_gpu))
    routed = _ep_experts(c, model, L, tok_gpu, probs, rng, slot_map, memo)
    algo = D.resolve(L.all_to_all, any(w.prefill_tokens for w in per_group))
    steps += _ep_exchange(c, model, L, tok_gpu, routed, algo)
    if t > 1:
        steps.append(Collective("all_gather", "all_reduce", tp_groups, tuple(x / t for x in tp_bytes)))
    return LayerPlan(steps, routed.local, routed.activations, routed.node_visits)


def _tp_dense_ffn(c: _Costs, model: ModelSpec, L: MoELayout, tok_group: np.ndarray) -> list:
    """Dense FFN of a dense layer, sliced over each attention TP group (``tok_group`` tokens per group),
    between the group's all-reduces."""
    t = L.attention_tp
    ffn = Compute("dense_ffn", np.repeat([_ffn_seconds(c, model, n, model.ffn / t) for n in tok_group], t))
    if t == 1:
        return [ffn]
    tp_groups, tp_bytes = _groups(L.gpus, t), _rows_bytes(tok_group, model.hidden, c.act_bytes)
    return [Collective("all_reduce", "all_reduce", tp_groups, tp_bytes), ffn,
            Collective("all_reduce", "all_reduce", tp_groups, tp_bytes)]


def _ep_experts(c: _Costs, model: ModelSpec, L: MoELayout, tok_gpu: np.ndarray, probs: np.ndarray | None,
                rng: np.random.Generator, slot_map, memo: dict | None) -> _Routed:
    """Route each EP group's tokens (``tok_gpu`` per GPU) inside the group, which holds all experts, and
    price every GPU's routed experts and routing glue."""
    moe, epg, dom = model.moe, L.experts_per_gpu, c.hw.node.gpus_per_domain
    limit = GroupLimit.of(moe)
    traffic, expert_s = [], np.zeros(L.gpus)
    local = acts = visits = 0.0
    for grp in _groups(L.gpus, L.ep):
        s = route_group(probs, tok_gpu[grp], moe.top_k, epg, L.dedup, rng, slot_map, memo, limit, grp // dom)
        visits += s.node_visits
        traffic.append(_traffic(s, tok_gpu[grp], grp, moe.top_k, dom))
        local += s.local
        acts += s.activations
        for j, gpu in enumerate(grp):
            loads = s.expert_load[j * epg:(j + 1) * epg]
            expert_s[gpu] = (_experts_seconds(c, model, loads, moe.expert_ffn)
                             + _glue_seconds(c, loads, L.ep if L.ep > 1 else 0, tok_gpu[gpu]))
    return _Routed(expert_s, tuple(traffic), local, acts, visits)


def _ep_exchange(c: _Costs, model: ModelSpec, L: MoELayout, tok_gpu: np.ndarray, routed: _Routed,
                 algo: str) -> list:
    """The expert-parallel half of a MoE layer in all-to-all algorithm ``algo``: the split exchange where
    ``algo`` needs it, dispatch, shared experts beside it, routed experts, combine and the residual add."""
    h, ep_groups, moe = model.hidden, _groups(L.gpus, L.ep), model.moe
    steps: list = []
    # nccl runs its split exchange itself, deepep-normal its notify step; deepep-ll needs none (fixed buffers)
    if L.split_exchange and L.ep > 1 and algo in ("direct", "hierarchical"):
        # one int64 row count per peer, before the variable-size dispatch
        counts = np.full((L.ep, L.ep), 8.0) - 8.0 * np.eye(L.ep)
        steps.append(Collective("all_to_all", "dispatch", ep_groups, (counts,) * len(ep_groups), "direct"))
    # dispatch and combine in their formats (fp8 dispatch: + per-128 scales, simfoe.costs.dispatch.copy_bytes)
    held = D.sm_share(c.hw, algo)
    steps.append(Collective("dispatch", "dispatch", ep_groups, routed.traffic, algo,
                            D.copy_bytes(h, c.formats.bytes_of("dispatch"), algo, "dispatch"), held))
    if moe.n_shared_experts:  # need no dispatched token: under two-batch overlap they run during the dispatch
        steps.append(_per_gpu_step(lambda n: _ffn_seconds(c, model, n, moe.shared_width), tok_gpu, True))
    steps.append(Compute("experts", routed.expert_s))
    steps.append(Collective("combine", "combine", ep_groups, routed.traffic, algo,
                            D.copy_bytes(h, c.formats.bytes_of("combine"), algo, "combine"), held))
    steps.append(_per_gpu_step(lambda n: _add_seconds(c, model, n), tok_gpu))
    return steps


def _sliced_experts(c: _Costs, model: ModelSpec, L: MoELayout, steps: list, tok_group: np.ndarray,
                    probs: np.ndarray | None, rng: np.random.Generator, memo: dict | None) -> LayerPlan:
    """The MoE half of a layer whose expert groups gather their tokens (``L.sliced``: experts tensor-parallel,
    ``L.expert_tp`` = T > 1, or whole with ``token_exchange`` gather, T = 1), after ``steps``
    (attention); ``tok_group``: tokens per attention TP group. As TRT-LLM runs moe_tp_size (docs/source/advanced/
    expert-parallelism.md: each GPU of the expert TP group receives all tokens' hidden states and computes with
    its partial weights) and vLLM without expert parallelism (vllm/model_executor/layers/fused_moe/layer.py
    FusedMoE: intermediate size / tp per GPU, outputs all-reduced): each expert group of ep x T GPUs gathers
    its attention ranks' tokens, each GPU runs its E/ep experts' 1/T slices (width expert_ffn / T) on the tokens
    routed to them, and the partial outputs are summed back; no all-to-all. When the expert group is one
    attention TP group, gather and sum are the engines' all-reduces after attention and after the MoE; else a
    reduce-scatter in the TP group, an all-gather in the expert group, and a reduce-scatter there after the
    experts (TRT-LLM attention DP without all-to-all). Router and shared experts are priced on the GPU's 1/t
    share of the tokens, as :func:`rank_compute_seconds` does (the FLOPs of vLLM's TP-sliced shared experts)."""
    G, t, h, b, X = L.gpus, L.attention_tp, model.hidden, c.act_bytes, L.expert_group
    moe = model.moe
    tp_groups, x_groups, tp_bytes = _groups(G, t), _groups(G, X), _rows_bytes(tok_group, h, b)
    tok_gpu = np.concatenate([even_split(n, t) for n in tok_group])
    tok_x = tok_group.reshape(-1, X // t).sum(axis=1)  # tokens every GPU of an expert group computes on
    one = X == t
    if one:
        steps.append(Collective("all_reduce", "all_reduce", tp_groups, tp_bytes))
    elif t > 1:
        steps.append(Collective("reduce_scatter", "all_reduce", tp_groups, tp_bytes))
    steps.append(_per_gpu_step(lambda n: _router_seconds(c, model, n, moe.n_experts), tok_gpu))
    if not one:
        steps.append(Collective("all_gather", "all_reduce", x_groups,
                                tuple(float(tok_gpu[g].max()) * h * b for g in x_groups)))
    if moe.n_shared_experts:
        steps.append(_per_gpu_step(lambda n: _ffn_seconds(c, model, n, moe.shared_width), tok_gpu, not one))
    routed = _sliced_routing(c, model, L, x_groups, tok_x, probs, rng, memo)
    steps.append(Compute("experts", routed.expert_s))
    if one:
        steps.append(Collective("all_reduce", "all_reduce", tp_groups, tp_bytes))
    else:
        steps.append(Collective("reduce_scatter", "all_reduce", x_groups, tuple(float(n) * h * b for n in tok_x)))
    steps.append(_per_gpu_step(lambda n: _add_seconds(c, model, n), tok_gpu))
    if not one and t > 1:
        steps.append(Collective("all_gather", "all_reduce", tp_groups, tuple(x / t for x in tp_bytes)))
    return LayerPlan(steps, routed.local, routed.activations, routed.node_visits)


def _sliced_routing(c: _Costs, model: ModelSpec, L: MoELayout, x_groups: tuple, tok_x: np.ndarray,
                    probs: np.ndarray | None, rng: np.random.Generator, memo: dict | None) -> _Routed:
    """Route each expert group's tokens (``tok_x`` per group) over its EP ranks and price every GPU's expert
    slices and routing glue. Every GPU of an expert group holds every token it computes on: all activations
    are local."""
    moe, ep, epg = model.moe, L.ep, L.experts_per_gpu
    limit = GroupLimit.of(moe)
    expert_s = np.zeros(L.gpus)
    acts = visits = 0.0
    for grp, n in zip(x_groups, tok_x):
        # EP rank of GPU r of the group: r % ep (TRT-LLM Mapping: moe_ep_rank = tp_rank % moe_ep_size)
        s = route_group(probs, even_split(n, ep), moe.top_k, epg, True, rng, None, memo, limit,
                        grp[:ep] // c.hw.node.gpus_per_domain)
        acts += s.activations
        visits += s.node_visits
        for r, gpu in enumerate(grp):
            loads = s.expert_load[(r % ep) * epg:(r % ep + 1) * epg]
            expert_s[gpu] = (_experts_seconds(c, model, loads, L.expert_ffn_per_gpu)
                             + _glue_seconds(c, loads, 0, float(n)))
    return _Routed(expert_s, (), acts, acts, visits)


def _router_seconds(c: _Costs, model: ModelSpec, tokens: int, n_experts: int) -> float:
    """Pre-router norm and router GEMM over ``tokens`` tokens and ``n_experts`` experts on one GPU."""
    h = model.hidden
    return c.gemm(tokens, n_experts, h, head=True) + c.ew(2 * tokens * h * c.act_bytes, "norm")


def _add_seconds(c: _Costs, model: ModelSpec, tokens: int) -> float:
    """Residual add of the combined expert outputs over ``tokens`` tokens on one GPU."""
    return c.ew(3 * tokens * model.hidden * c.act_bytes, "add")


def _moe_heads(model: ModelSpec, L: MoELayout) -> tuple[float, float]:
    """Query and KV heads per GPU of the expert-parallel layout's attention (TP splits them)."""
    a, t = model.attention, L.attention_tp
    if L.attention == "tp":
        return a.n_heads / t, (a.n_kv_heads or 1) / t
    return a.n_heads, (a.n_kv_heads or 1)


def rank_compute_seconds(c: _Costs, model: ModelSpec, L: MoELayout, w: Work) -> float:
    """Seconds of one pass's compute that follow one data-parallel attention group's own sequences
    ``w`` under the expert-parallel layout, on the busiest GPU of its TP group, all layers: attention,
    dense FFN (dense layers), router, shared experts and residual add (MoE layers), and the LM head,
    as :func:`moe_layer` and :func:`head_seconds` price them. Not included: the eager routing glue
    (fitted on CPU profiles only) and the group's TP collectives."""
    t = L.attention_tp
    heads, kvh = _moe_heads(model, L)
    n = w.tokens
    total = model.n_layers * _attention_seconds(c, model, w, heads, kvh)
    if model.n_dense_layers:
        total += model.n_dense_layers * _ffn_seconds(c, model, n, model.ffn / t)
    moe = model.moe
    if model.n_moe_layers and moe:
        g = -(-n // t)  # tokens of the busiest GPU's sequence-parallel shard
        per = _router_seconds(c, model, g, moe.n_experts) + _add_seconds(c, model, g)
        if moe.n_shared_experts:
            per += _ffn_seconds(c, model, g, moe.shared_width)
        total += model.n_moe_layers * per
    return total + head_seconds(c, model, w, t, 1)


# ------------------------------------------------------------------------------------------- FoE
def foe_layer(c: _Costs, model: ModelSpec, L: FoELayout, work: Work, probs: np.ndarray | None,
              rng: np.random.Generator, dense: bool, memo: dict | None = None) -> LayerPlan:
    """Program of one FoE layer (or a dense layer of an FoE model, FFN tensor-parallel over all GPUs).
    ``memo``: routing memo (:func:`simfoe.forward.routing.route_group`)."""
    G, a, T = L.gpus, model.attention, work.tokens
    C, cpg, g = L.clusters, L.clusters_per_gpu, L.gpus_per_cluster
    heads, kvh = a.n_heads / C * cpg / g, (a.n_kv_heads or 1) / C * cpg / g  # a GPU's share of the heads
    steps: list = [Compute("attention", np.full(G, _attention_seconds(c, model, work, heads, kvh)))]
    if G > 1:
        steps.append(_foe_all_reduce(c, model, L, T))
    if dense:
        steps.append(Compute("dense_ffn", np.full(G, _ffn_seconds(c, model, T, model.ffn / G))))
        if G > 1:
            steps.append(_foe_all_reduce(c, model, L, T))
        return LayerPlan(steps)
    if g == 1:
        return _foe_local_experts(c, model, L, steps, T, probs, rng, memo)
    return _foe_cluster_experts(c, model, L, steps, T, probs, rng, memo)


def _foe_all_reduce(c: _Costs, model: ModelSpec, L: FoELayout, tokens: int) -> Collective:
    """The all-reduce over all GPUs that sums the clusters' residuals of ``tokens`` tokens."""
    return Collective("all_reduce", "all_reduce", (np.arange(L.gpus),), (tokens * model.hidden * c.act_bytes,),
                      L.all_reduce)


def _foe_local_experts(c: _Costs, model: ModelSpec, L: FoELayout, steps: list, T: int, probs: np.ndarray,
                       rng: np.random.Generator, memo: dict | None) -> LayerPlan:
    """The expert half of an FoE layer with a GPU per cluster or several clusters per GPU, after ``steps``:
    every cluster routes all ``T`` tokens to its own experts on its GPU; no all-to-all."""
    Ec, cpg = L.experts_per_cluster, L.clusters_per_gpu
    router = _router_seconds(c, model, T, Ec * cpg)
    expert_time = np.zeros(L.gpus)
    acts = 0.0
    for gpu in range(L.gpus):
        loads = []
        for cl in range(gpu * cpg, (gpu + 1) * cpg):
            s = route_group(probs[cl], np.array([T]), L.top_k_per_cluster, Ec, True, rng, memo=memo)
            loads.append(s.expert_load)
            expert_time[gpu] += _glue_seconds(c, s.expert_load, 0, T)
            acts += s.activations
        expert_time[gpu] += _experts_seconds(c, model, np.concatenate(loads), L.expert_ffn)
    # the clusters' slices of the shared expert(s) on this GPU, one fused FFN over all its tokens
    expert_time += _ffn_seconds(c, model, T, L.shared_ffn * cpg)
    steps.append(Compute("experts", np.full(L.gpus, router) + expert_time + _add_seconds(c, model, T)))
    return LayerPlan(steps, acts, acts)


def _foe_cluster_experts(c: _Costs, model: ModelSpec, L: FoELayout, steps: list, T: int, probs: np.ndarray,
                         rng: np.random.Generator, memo: dict | None) -> LayerPlan:
    """The expert half of an FoE layer with g > 1 GPUs per cluster, after ``steps``: the ``T`` tokens sharded
    g ways in each cluster, dispatched to and combined from the cluster's experts by an all-to-all among its
    GPUs (NVLink), the clusters' shared-expert slices beside the dispatch, and an all-gather in the cluster."""
    g, h, b = L.gpus_per_cluster, model.hidden, c.act_bytes
    clusters, shard, C = _groups(L.gpus, g), even_split(T, g), L.clusters
    steps.append(_per_gpu_step(lambda n: _router_seconds(c, model, n, L.experts_per_cluster), shard, reps=C))
    routed = _foe_route_clusters(c, model, L, clusters, shard, probs, rng, memo)
    per_elem = {op: D.copy_bytes(h, c.formats.bytes_of(op), "direct", op) / h for op in ("dispatch", "combine")}
    steps.append(Collective("all_to_all", "dispatch", clusters,
                            tuple(m * per_elem["dispatch"] for m in routed.traffic), "direct"))
    if L.shared_ffn:  # the clusters' shared-expert slices, during the dispatch under two-batch overlap
        steps.append(_per_gpu_step(lambda n: _ffn_seconds(c, model, n, L.shared_ffn), shard, True, reps=C))
    steps.append(Compute("experts", routed.expert_s))
    steps.append(Collective("all_to_all", "combine", clusters,
                            tuple(m.T * per_elem["combine"] for m in routed.traffic), "direct"))
    steps.append(_per_gpu_step(lambda n: _add_seconds(c, model, n), shard, reps=C))
    steps.append(Collective("all_gather", "all_reduce", clusters, (float(shard.max()) * h * b,) * len(clusters)))
    return LayerPlan(steps, routed.local, routed.activations)


def _foe_route_clusters(c: _Costs, model: ModelSpec, L: FoELayout, clusters: tuple, shard: np.ndarray,
                        probs: np.ndarray, rng: np.random.Generator, memo: dict | None) -> _Routed:
    """Route each cluster's tokens (``shard`` per GPU of a cluster) to k_c of its experts and price every
    GPU's experts and routing glue; traffic in elements (token copies x hidden)."""
    g, epg = L.gpus_per_cluster, L.experts_per_cluster // L.gpus_per_cluster  # a cluster's experts on one GPU
    traffic, expert_s = [], np.zeros(L.gpus)
    local = acts = 0.0
    for ci, grp in enumerate(clusters):
        s = route_group(probs[ci], shard, L.top_k_per_cluster, epg, True, rng, memo=memo)
        traffic.append(s.traffic_tokens * model.hidden)  # elements
        local += s.local
        acts += s.activations
        for j, gpu in enumerate(grp):
            loads = s.expert_load[j * epg:(j + 1) * epg]
            expert_s[gpu] = _experts_seconds(c, model, loads, L.expert_ffn) + _glue_seconds(c, loads, g, shard[j])
    return _Routed(expert_s, tuple(traffic), local, acts)


def head_seconds(c: _Costs, model: ModelSpec, work: Work, vocab_split: int, dp_groups: int) -> float:
    """Embedding lookup + final norm + LM head on the busiest GPU (logits for one token per sequence)."""
    h, b = model.hidden, c.act_bytes
    per = work.split(dp_groups)[0]
    emb = c.ew(2 * per.tokens * h * b, "add")
    seqs = per.seqs
    return emb + c.ew(2 * seqs * h * b, "norm") + c.gemm(seqs, int(math.ceil(model.vocab / vocab_split)), h, head=True)
