"""Placement spec: how one model instance is laid out on ``nodes`` x ``gpus_per_node`` GPUs.

MoE baseline: attention tensor-parallel inside a node and data-parallel across nodes (``tp``), or
data-parallel everywhere (``dp``); experts spread over expert-parallel groups of ``ep`` GPUs.
FoE: ``clusters`` expert clusters, each owning n_kv_heads/clusters KV heads and its own experts,
each on ``gpus_per_cluster`` GPUs inside one node; one residual all-reduce per layer across clusters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator

from simfoe.errors import SpecError
from simfoe.specs.base import Spec
from simfoe.specs.model import ModelSpec


class MoEPlacement(Spec):
    attention: Literal["tp", "dp"] = Field(
        "tp", description="tp: TP inside a node, DP across nodes (vLLM EP); dp: DP everywhere (DeepSeek/SGLang)")
    attention_tp: PositiveInt | None = Field(None, description="TP degree for attention='tp' (default: GPUs per node)")
    ep: PositiveInt | None = Field(
        None, description="expert-parallel group size (default: the largest divisor of the GPU count that divides n_experts)")
    expert_tp: PositiveInt = Field(
        1, description="tensor-parallel degree of the routed experts (TRT-LLM moe_tp_size; vLLM without expert "
        "parallelism: the TP size): each expert's intermediate dimension is sliced over expert_tp GPUs, which hold "
        "the same experts; with more than 1, ep x expert_tp GPUs hold all experts, see every token of their "
        "attention ranks (gathered, no all-to-all) and sum their partial outputs; 1: expert parallelism only")
    token_exchange: Literal["all_to_all", "gather"] = Field(
        "all_to_all", description="how tokens reach their experts with expert_tp 1: all_to_all (dispatch and combine, "
        "priced by all_to_all below) or gather: every GPU of an expert group runs its experts on all of the group's "
        "tokens (the all-reduce after TP attention leaves them there; across attention DP ranks they are all-gathered) "
        "and the partial outputs are summed back, no all-to-all, as TensorRT-LLM runs expert parallelism on H100 (its "
        "fused MoE all-to-alls only with attention DP over multi-node NVLink, else all-gather / reduce-scatter). "
        "expert_tp > 1 always gathers")
    dedup_dispatch: bool = Field(True, description="send a token once per destination GPU (DeepEP-style), not once per expert choice")
    all_to_all: Literal["auto", "deepep-normal", "deepep-ll", "nccl", "direct", "hierarchical"] = Field(
        "auto", description="dispatch/combine algorithm (simfoe.costs.dispatch): auto = as SGLang --deepep-mode auto "
        "and vLLM deploy DeepEP: deepep-normal for passes with prefill tokens, deepep-ll for decode; nccl: torch "
        "all_to_all_single with the split exchange; direct: per-GPU copies, no split exchange (the old default); "
        "hierarchical: per-GPU copies relayed on the same rail, pipelined")
    redundant_experts: NonNegativeInt = Field(0, description="extra expert replicas per EP group, placed by an "
                                              "EPLB-style balancer on the routing's expected loads (DeepSeek-V3 "
                                              "prefill: 32 over 256 experts); n_experts + this must split over the EP group")
    split_exchange: bool = Field(False, description="exchange the per-destination row counts in a small all-to-all "
                                 "before each variable-size dispatch (torch all_to_all_single with splits, DeepEP "
                                 "normal mode's notify step) with all_to_all direct or hierarchical; false: fixed-capacity "
                                 "buffers, no exchange. nccl always runs it, deepep-normal its fitted notify step, "
                                 "deepep-ll none")


class FoEPlacement(Spec):
    clusters: PositiveInt | None = Field(None, description="number of clusters (default: n_kv_heads)")
    gpus_per_cluster: PositiveInt | None = Field(
        None, description="GPUs per cluster, inside one node (default: GPUs / clusters, at least 1)")
    experts_per_cluster: PositiveInt | None = None
    top_k_per_cluster: PositiveInt | None = None
    expert_ffn: PositiveInt | None = Field(None, description="width of one FoE expert")
    shared_ffn: PositiveInt | None = Field(None, description="width of one cluster's slice of the shared expert(s) "
                                           "(default: n_shared_experts x shared width / clusters)")
    all_reduce: Literal["auto", "ring", "tree", "nvls", "nvls_tree", "hierarchical"] = "auto"


class PlacementSpec(Spec):
    arch: Literal["moe", "foe"] = "moe"
    nodes: PositiveInt = 1
    overlap: Literal["none", "two-batch", "auto"] = Field(
        "none", description="two-batch: split each pass into two micro-batches whose communication overlaps "
        "the other's compute (DeepSeek/SGLang two-batch overlap); none: one batch, communication exposed; "
        "auto: whichever is faster, pass by pass (an engine that always picks right)")
    comm_sm_share: float | Literal["auto"] = Field(
        0.0, description="with overlap: share of a GPU's compute that its in-flight "
        "communication kernels hold (DeepEP normal kernels: Buffer.num_sms = 20 of an H100's 132 SMs = 0.15; "
        "DeepEP low-latency hook mode: 0); 0 (default) is the optimistic bound; auto: what each collective's "
        "kernels hold (simfoe.costs.dispatch.sm_share: deepep-normal deepep.sms / gpu.sms, others 0)")

    @field_validator("comm_sm_share", mode="before")
    @classmethod
    def _share(cls, v):
        if v == "auto":
            return v
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = math.nan
        if not 0.0 <= x < 1.0:
            raise ValueError("a share of the GPU in [0, 1), or auto")
        return x

    @field_validator("overlap", mode="before")
    @classmethod
    def _none_is_a_name(cls, v):
        return "none" if v is None else v  # YAML and --set read a bare `none` as null
    moe: MoEPlacement = Field(default_factory=MoEPlacement)
    foe: FoEPlacement = Field(default_factory=FoEPlacement)


# ---- resolved layouts (derived, immutable) ---------------------------------------------------
@dataclass(frozen=True)
class MoELayout:
    gpus: int
    gpus_per_node: int
    attention: str  # "tp" | "dp"
    attention_tp: int  # 1 for dp
    ep: int
    n_experts: int
    top_k: int
    expert_ffn: int
    dedup: bool
    all_to_all: str
    split_exchange: bool = False
    redundant: int = 0  # extra expert replicas per EP group (simfoe.forward.eplb)
    expert_tp: int = 1  # GPUs each expert's intermediate dimension is sliced over (placement.moe.expert_tp)
    gather: bool = False  # placement.moe.token_exchange gather: experts see their group's tokens, no all-to-all

    @property
    def sliced(self) -> bool:
        """Whether an expert group gathers its tokens and sums partial outputs (no all-to-all): expert_tp > 1 or
        token_exchange gather."""
        return self.expert_tp > 1 or self.gather

    @property
    def experts_per_gpu(self) -> int:
        """Expert slots per GPU (replicas included); with expert_tp > 1, each a 1/expert_tp slice."""
        return (self.n_experts + self.redundant) // self.ep

    @property
    def expert_ffn_per_gpu(self) -> int:
        """Intermediate width of one expert's slice on one GPU: expert_ffn / expert_tp."""
        return self.expert_ffn // self.expert_tp

    @property
    def expert_group(self) -> int:
        """GPUs that together hold every expert once: ep x expert_tp."""
        return self.ep * self.expert_tp

    @property
    def attention_dp(self) -> int:
        """Data-parallel attention ranks: GPUs / attention TP (each holds its own sequences)."""
        return self.gpus // self.attention_tp


@dataclass(frozen=True)
class FoELayout:
    gpus: int
    gpus_per_node: int
    clusters: int
    gpus_per_cluster: int
    clusters_per_gpu: int
    experts_per_cluster: int
    top_k_per_cluster: int
    expert_ffn: int
    kv_heads_per_cluster: float  # may be < 1 never; MLA: n_heads / clusters query heads
    all_reduce: str
    shared_ffn: int = 0  # width of one cluster's slice of the shared expert(s); 0: none

    @property
    def experts_per_gpu(self) -> int:
        return self.experts_per_cluster * self.clusters_per_gpu // self.gpus_per_cluster

    @property
    def attention_dp(self) -> int:
        """Data-parallel attention ranks: 1 (every GPU computes its clusters' heads for every token)."""
        return 1


def ep_sizes(gpus: int, slots: int) -> list[int]:
    """Valid expert-parallel group sizes: divisors of the GPU count that split the expert slots
    (n_experts + redundant_experts) evenly."""
    return [d for d in range(1, gpus + 1) if gpus % d == 0 and slots % d == 0]


def resolve_moe(model: ModelSpec, gpus_per_node: int, p: PlacementSpec) -> MoELayout:
    G = p.nodes * gpus_per_node
    moe = model.moe
    if p.moe.attention == "tp":
        tp = p.moe.attention_tp or min(gpus_per_node, G)
        if (gpus_per_node % tp if tp <= gpus_per_node else tp % gpus_per_node or G % tp):
            raise SpecError("placement.moe.attention_tp", tp, f"must divide GPUs per node ({gpus_per_node}), or be "
                            f"whole nodes dividing the GPU count ({G}): a TP group spanning nodes, as TensorRT-LLM "
                            "runs attention TP 16 on two nodes")
        if tp > model.attention.n_heads or model.attention.n_heads % tp:
            raise SpecError("placement.moe.attention_tp", tp, f"must divide the {model.attention.n_heads} query heads")
    else:
        tp = 1
    if moe is None:
        return MoELayout(G, gpus_per_node, p.moe.attention, tp, G, 1, 1, model.ffn, True, p.moe.all_to_all,
                         p.moe.split_exchange)
    R = p.moe.redundant_experts
    slots = moe.n_experts + R
    T = _expert_tp(model, p, G)
    if p.moe.ep is not None:
        ep = p.moe.ep
        if (G // T) % ep or slots % ep:
            what = f"n_experts ({moe.n_experts})" if not R else f"n_experts + redundant_experts ({slots})"
            on = f"the GPU count ({G})" if T == 1 else f"GPUs / expert_tp ({G} / {T})"
            raise SpecError("placement.moe.ep", ep, f"must divide both {on} and {what}")
    else:
        ep = max(ep_sizes(G // T, slots))
    if R and ep == 1:
        raise SpecError("placement.moe.redundant_experts", R,
                        f"0 here: n_experts + redundant_experts ({slots}) must split over an EP group of more "
                        f"than one of the {G} GPUs")
    gather = p.moe.token_exchange == "gather"
    if (T > 1 or gather) and (ep * T) % tp:
        field, v = ("placement.moe.expert_tp", T) if T > 1 else ("placement.moe.token_exchange", "gather")
        raise SpecError(field, v, f"ep x expert_tp ({ep} x {T}) must be a multiple of attention_tp ({tp}): an "
                        "expert group holds whole attention TP groups")
    if gather and R:
        raise SpecError("placement.moe.token_exchange", "gather", "all_to_all with redundant_experts (replicas are "
                        "placed for dispatched tokens)")
    return MoELayout(G, gpus_per_node, p.moe.attention, tp, ep, moe.n_experts, moe.top_k, moe.expert_ffn,
                     p.moe.dedup_dispatch, p.moe.all_to_all, p.moe.split_exchange, R, T, gather)


def _expert_tp(model: ModelSpec, p: PlacementSpec, G: int) -> int:
    """placement.moe.expert_tp, checked: it divides the GPU count and the expert width; no redundant experts."""
    T = p.moe.expert_tp
    if T > 1 and (G % T or model.moe.expert_ffn % T):
        raise SpecError("placement.moe.expert_tp", T, f"must divide the GPU count ({G}) and expert_ffn "
                        f"({model.moe.expert_ffn})")
    if T > 1 and p.moe.redundant_experts:
        raise SpecError("placement.moe.expert_tp", T, "1 with redundant_experts (replicas are placed over an "
                        "expert-parallel group, not over slices)")
    return T


def derive_foe_experts(model: ModelSpec, clusters: int, f: FoEPlacement) -> tuple[int, int, int]:
    """Iso-parameter FoE experts (E_c, k_c, f') from an MoE with E experts, top-k, width f.

    k_c = ceil(k/C), E_c = k_c*E/k, f' = f*k/(C*k_c): total and active expert parameters equal the
    MoE's. Explicit values in ``f`` take precedence; a non-integral derivation is refused.
    """
    moe = model.moe
    if moe is None:
        raise SpecError("model.moe", None, "FoE needs an MoE model (a dense model has no experts to federate); "
                        "use arch moe", problem="absent: the model is dense")
    E, k, w = moe.n_experts, moe.top_k, moe.expert_ffn
    kc = f.top_k_per_cluster or math.ceil(k / clusters)
    if f.experts_per_cluster is None:
        if (kc * E) % k:
            raise SpecError("placement.foe.experts_per_cluster", None,
                            f"iso-parameter E_c = k_c*E/k = {kc}*{E}/{k} is not an integer; set placement.foe.experts_per_cluster")
        ec = kc * E // k
    else:
        ec = f.experts_per_cluster
    if kc > ec:
        raise SpecError("placement.foe.top_k_per_cluster", kc, f"must be <= experts per cluster ({ec})")
    if f.expert_ffn is None:
        if (w * k) % (clusters * kc):
            raise SpecError("placement.foe.expert_ffn", None,
                            f"iso-parameter f' = f*k/(C*k_c) = {w}*{k}/({clusters}*{kc}) is not an integer; set placement.foe.expert_ffn")
        fw = w * k // (clusters * kc)
    else:
        fw = f.expert_ffn
    return ec, kc, fw


def derive_foe_shared(model: ModelSpec, clusters: int, f: FoEPlacement) -> int:
    """Width of one cluster's slice of the MoE's shared expert(s): n_s*f_s/C, so that (every token visiting
    every cluster) total and active shared parameters equal the MoE's; 0 without shared experts."""
    moe = model.moe
    if not moe.n_shared_experts:
        return 0
    if f.shared_ffn is not None:
        return f.shared_ffn
    sw = moe.shared_width
    if sw % clusters:
        raise SpecError("placement.foe.shared_ffn", None,
                        f"iso-parameter shared slice n_s*f_s/C = {sw}/{clusters} is not an integer; set placement.foe.shared_ffn")
    return sw // clusters


def resolve_foe(model: ModelSpec, gpus_per_node: int, p: PlacementSpec, gpus_per_domain: int | None = None) -> FoELayout:
    """The FoE layout of ``model`` on ``p.nodes`` x ``gpus_per_node`` GPUs. A cluster never crosses an NVLink
    domain (``gpus_per_domain``, one node when None; GB200 NVL72: 72): it may span trays inside one."""
    G = p.nodes * gpus_per_node
    dom = gpus_per_domain or gpus_per_node
    a = model.attention
    f = p.foe
    if f.clusters is None:
        if a.kind == "mla":
            raise SpecError("placement.foe.clusters", None,
                            "MLA models have no GQA KV heads; set placement.foe.clusters (e.g. --set placement.foe.clusters=8)")
        C = a.n_kv_heads
    else:
        C = f.clusters
    if a.kind != "mla" and a.n_kv_heads % C:
        raise SpecError("placement.foe.clusters", C, f"must divide n_kv_heads ({a.n_kv_heads})")
    if a.n_heads % C:
        raise SpecError("placement.foe.clusters", C, f"must divide n_heads ({a.n_heads})")
    ec, kc, fw = derive_foe_experts(model, C, f)
    try:
        g, cpg = _foe_shape(G, C, min(dom, G), ec, f.gpus_per_cluster, "node" if dom == gpus_per_node else "NVLink domain")
    except SpecError as e:
        if f.gpus_per_cluster is not None:
            raise  # the user's own gpus_per_cluster: the message names it
        raise _foe_misfit(model, p, gpus_per_node, C, e, dom) from None
    kvpc = (a.n_kv_heads / C) if a.kind != "mla" else a.n_heads / C
    return FoELayout(G, gpus_per_node, C, g, cpg, ec, kc, fw, kvpc, f.all_reduce, derive_foe_shared(model, C, f))


def _foe_shape(G: int, C: int, gpn: int, ec: int, g_set: int | None = None, unit: str = "node") -> tuple[int, int]:
    """(GPUs per cluster, clusters per GPU) of C clusters with ec experts each on G GPUs, gpn per ``unit`` (a node, or
    the GPUs of one NVLink domain in use); ``g_set``: the user's placement.foe.gpus_per_cluster (None: derived).
    SpecError when none exists."""
    if g_set is not None and g_set * C != G and not (g_set == 1 and C % G == 0):
        raise SpecError("placement.foe.gpus_per_cluster", g_set, f"clusters x gpus_per_cluster must equal the {G} GPUs")
    g = g_set if g_set is not None else max(1, G // C)
    if G >= C:
        if G % C:
            raise SpecError("placement.foe.clusters", C, f"must divide the GPU count ({G}) or be a multiple of it")
        cpg = 1
    else:
        if C % G:
            raise SpecError("placement.foe.clusters", C, f"must be a multiple of the GPU count ({G}) when larger")
        cpg, g = C // G, 1
    if g > gpn or gpn % g:
        raise SpecError("placement.foe.gpus_per_cluster", g,
                        f"a cluster lives inside one {unit}: must divide GPUs per {unit} ({gpn})")
    if ec % g:
        raise SpecError("placement.foe.gpus_per_cluster", g, f"must divide experts per cluster ({ec})")
    return g, cpg


def _foe_experts(model: ModelSpec, C: int, f: FoEPlacement) -> int | None:
    """Experts per cluster of C clusters as :func:`resolve_foe` derives them (the shared slice checked too);
    None when the derivation is refused."""
    try:
        ec = derive_foe_experts(model, C, f)[0]
        derive_foe_shared(model, C, f)
    except SpecError:
        return None
    return ec


def _shape_fits(G: int, C: int, dom: int, ec: int | None) -> bool:
    """Whether C clusters of ``ec`` experts (None: not derivable) have a shape on G GPUs, ``dom`` per NVLink
    domain."""
    if ec is None:
        return False
    try:
        _foe_shape(G, C, min(dom, G), ec)
    except SpecError:
        return False
    return True


def _foe_misfit(model: ModelSpec, p: PlacementSpec, gpn: int, C: int, e: SpecError, dom: int) -> SpecError:
    """The error for a derived FoE shape that does not exist: it names the user's inputs (nodes, arch,
    clusters) and the node counts and cluster counts that would work (``dom`` GPUs per NVLink domain)."""
    a, G = model.attention, p.nodes * gpn
    box = f"{gpn}-GPU node" if dom == gpn else f"{min(dom, G)}-GPU NVLink domain"
    heads = a.n_heads if a.kind == "mla" else a.n_kv_heads
    unit = "query heads" if a.kind == "mla" else "KV heads"
    src = "placement.foe.clusters" if p.foe.clusters is not None else f"the default, one per {unit[:-1]}"
    if e.field == "placement.foe.clusters":
        why = f"the {G} GPUs do not split evenly into them"
    elif "a cluster lives inside one" in e.allowed:
        why = f"that is {e.value} GPUs per cluster, and a cluster must fit evenly inside one {box}"
    else:
        why = (f"that is {e.value} GPUs per cluster, which do not split a cluster's "
               f"{derive_foe_experts(model, C, p.foe)[0]} experts evenly")
    ec = _foe_experts(model, C, p.foe)  # derived once for every node count tried
    nodes_ok = [str(n) for n in range(1, 65) if _shape_fits(n * gpn, C, dom, ec)][:6]
    cs = [c for c in range(1, heads + 1) if heads % c == 0 and a.n_heads % c == 0]
    cs_ok = [str(c) for c in cs if _shape_fits(G, c, dom, _foe_experts(model, c, p.foe))]
    on_these = (f"placement.foe.clusters={' or '.join(cs_ok)} on {p.nodes} node(s)" if cs_ok else
                f"no cluster count that divides the {heads} {unit} fits {p.nodes} node(s)")
    return SpecError("nodes", p.nodes,
                     f"allowed: nodes {', '.join(nodes_ok) or 'none up to 64'} for {C} clusters; {on_these}; or arch moe",
                     problem=f"{p.nodes} is not allowed with arch foe: {C} clusters ({src}) on {p.nodes} node(s) "
                     f"of {gpn} GPUs; {why}")
