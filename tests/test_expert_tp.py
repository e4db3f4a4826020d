"""Experts tensor-parallel (placement.moe.expert_tp): the layer program, GEMM shapes and memory per GPU, by hand."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simfoe.api import forward, forward_model
from simfoe.costs.program import Collective
from simfoe.errors import SpecError
from simfoe.forward.plan import moe_layer
from simfoe.forward.work import Work
from simfoe.specs.io import load_hardware, load_model
from simfoe.specs.placement import PlacementSpec, resolve_moe
from simfoe.specs.precision import FORMATS

MODEL = "olmoe-1b-7b"  # hidden 2048, 64 experts of width 1024, top-8, 16 MoE layers, bf16


class _Shapes:
    """A cost table in which every kernel is free; it records each grouped GEMM's (rows, n, k), GPU by GPU."""

    def __init__(self, model):
        self.hw, self.formats, self.act_bytes, self.grouped_calls = load_hardware("h100-sxm"), model.formats, 2, []

    def gemm(self, *args, **kw):
        return 0.0

    ew = attn_prefill = attn_decode = slots = gemm

    def grouped(self, loads, n, k):
        self.grouped_calls.append((float(loads.sum()), n, k))
        return 0.0


def _program(gpus: int, seqs: int, **moe):
    """(collectives as (kind, groups, sizes), grouped GEMMs per GPU as [(rows, n, k) up, down]) of one decode
    layer of MODEL on ``gpus`` GPUs of one node, ``seqs`` sequences, placement.moe = ``moe``."""
    m = load_model(MODEL)
    L = resolve_moe(m, gpus, PlacementSpec(moe=moe))
    c = _Shapes(m)
    probs = np.full(m.moe.n_experts, 1.0 / m.moe.n_experts)
    plan = moe_layer(c, m, L, Work(0, 0.0, 0, seqs, seqs * 512), probs, np.random.default_rng(0), dense=False)
    colls = [(s.kind, [g.tolist() for g in s.groups], s.sizes) for s in plan.steps if isinstance(s, Collective)]
    calls = c.grouped_calls
    return colls, [calls[2 * g:2 * g + 2] for g in range(gpus)]


def test_pure_expert_tp_is_two_all_reduces_and_every_gpu_runs_every_expert_slice():
    # vLLM without expert parallelism on 4 GPUs: 16 tokens, each GPU all 64 experts sliced to width 1024/4 = 256
    colls, gemms = _program(4, 16, attention_tp=4, expert_tp=4, ep=1)
    S = 16 * 2048 * 2  # the layer's tokens x hidden x bf16
    assert colls == [("all_reduce", [[0, 1, 2, 3]], (S,)), ("all_reduce", [[0, 1, 2, 3]], (S,))]
    for up, down in gemms:
        assert up == (16 * 8, 2 * 256, 2048)  # every choice of every token; gated up projection (2 x 256) x hidden
        assert down == (16 * 8, 2048, 256)


def test_hybrid_expert_tp_x_ep_splits_experts_over_ep_ranks_and_slices_over_tp_ranks():
    # TRT-LLM moe_tp 2 x moe_ep 2 under attention TP 4: GPU r holds EP rank r % 2's 32 experts, width 512
    colls, gemms = _program(4, 16, attention_tp=4, expert_tp=2, ep=2)
    assert [k for k, _, _ in colls] == ["all_reduce", "all_reduce"]
    rows = [up[0] for up, _ in gemms]
    assert rows[0] == rows[2] and rows[1] == rows[3]  # the two slices of one EP rank see the same tokens
    assert rows[0] + rows[1] == 16 * 8
    assert all(up[1:] == (2 * 512, 2048) and down[1:] == (2048, 512) for up, down in gemms)


def test_gathered_expert_parallelism_is_two_all_reduces_and_whole_experts_over_ep_ranks():
    # TRT-LLM EP 4 under attention TP 4 on H100 (token_exchange gather): no all-to-all; every GPU runs its 16 whole
    # experts (width 1024) on the choices of all 16 tokens routed to them, each choice on exactly one GPU
    colls, gemms = _program(4, 16, attention_tp=4, ep=4, token_exchange="gather")
    S = 16 * 2048 * 2
    assert colls == [("all_reduce", [[0, 1, 2, 3]], (S,)), ("all_reduce", [[0, 1, 2, 3]], (S,))]
    assert sum(up[0] for up, _ in gemms) == 16 * 8
    assert all(up[1:] == (2 * 1024, 2048) and down[1:] == (2048, 1024) for up, down in gemms)
    info = forward(model=MODEL, hardware="h100-sxm", nodes=1, arch="moe", phase="decode", batch=8, seq_len=512,
                   overrides=["hardware.node.gpus_per_node=4", "placement.moe.token_exchange=gather"])["layout"]
    assert info["token_exchange"] == "gather" and "tokens gathered" in info["label"]
    dispatched, _ = _program(4, 16, attention_tp=4, ep=4)
    assert [k for k, _, _ in dispatched] == ["reduce_scatter", "dispatch", "combine", "all_gather"]


def test_attention_dp_gathers_the_tokens_and_reduce_scatters_the_partial_outputs():
    # 4 DP attention ranks of 4 sequences each; one expert group of ep 2 x expert_tp 2
    colls, gemms = _program(4, 16, attention="dp", expert_tp=2, ep=2)
    assert colls == [("all_gather", [[0, 1, 2, 3]], (4 * 2048 * 2,)),  # each rank contributes its 4 tokens
                     ("reduce_scatter", [[0, 1, 2, 3]], (16 * 2048 * 2,))]  # partial sums of all 16 tokens
    assert sum(up[0] for up, _ in gemms[:2]) == 16 * 8


def test_expert_tp_moves_two_all_reduces_of_bytes_and_no_all_to_all():
    """2 GPUs, no NVLS: any all-reduce of S bytes moves 2 S over NVLink (ring: each GPU sends S/2 twice; tree: S up,
    S down). Expert TP: an all-reduce after attention and one after the experts, 2 x 2 S per layer; EP: a
    reduce-scatter (S) and an all-gather (S) plus the all-to-all."""
    base = dict(model=MODEL, hardware="h100-sxm", nodes=1, arch="moe", phase="decode", batch=8, seq_len=512)
    ov = ["hardware.node.gpus_per_node=2", "hardware.node.nvswitch_reduction=false", "placement.moe.attention_tp=2"]
    tp = forward(**base, overrides=ov + ["placement.moe.expert_tp=2", "placement.moe.ep=1"])
    ep = forward(**base, overrides=ov + ["placement.moe.ep=2"])
    S = 8 * 2048 * 2
    assert tp["comm_bytes"]["all_reduce"]["intra_node"] == pytest.approx(16 * 2 * 2 * S)
    assert ep["comm_bytes"]["all_reduce"]["intra_node"] == pytest.approx(16 * 2 * S)
    assert tp["comm_bytes"]["all_to_all"] == {"intra_node": 0.0, "inter_node": 0.0}
    assert ep["comm_bytes"]["all_to_all"]["intra_node"] > 0
    assert tp["layout"]["expert_tp"] == 2 and "expert TP 2" in tp["layout"]["label"]
    assert "expert_tp" not in ep["layout"]  # 1: the layouts' outputs stay as they were


def _weights(gpus: int, ep: int, expert_tp: int) -> float:
    ov = [f"hardware.node.gpus_per_node={gpus}", "placement.moe.attention=dp", f"placement.moe.ep={ep}",
          f"placement.moe.expert_tp={expert_tp}"]
    return forward_model(MODEL, "h100-sxm", 1, "moe", overrides=ov).weight_bytes_per_gpu()


def test_memory_per_gpu_holds_one_slice_of_its_experts():
    m = load_model(MODEL)
    all_experts = m.n_moe_layers * 64 * (3 * 2048 * 1024) * 2  # bytes of every routed expert, bf16
    full = _weights(4, 1, 1)  # every GPU holds every expert
    assert full - _weights(4, 1, 4) == pytest.approx(all_experts * (1 - 1 / 4))
    assert _weights(4, 1, 4) == pytest.approx(_weights(4, 2, 2)) == pytest.approx(_weights(4, 4, 1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gpus_log=st.integers(0, 3), group_log=st.integers(0, 3), tp_log=st.integers(0, 3), seqs=st.integers(1, 64))
def test_expert_bytes_and_flops_are_conserved_over_the_ep_x_expert_tp_grid(gpus_log, group_log, tp_log, seqs):
    """Every expert group (ep x expert_tp GPUs) holds every expert's weights once and computes every routed
    choice's FLOPs once, however it splits them between EP and TP."""
    gpus, X = 2 ** gpus_log, 2 ** min(group_log, gpus_log)
    T = 2 ** min(tp_log, group_log, gpus_log)
    m = load_model(MODEL)
    per_param = FORMATS[m.formats.expert_weights].bytes_per_param
    expert_bytes = m.n_moe_layers * 64 * m.expert_params() * per_param
    assert _weights(gpus, 1, 1) - _weights(gpus, X // T, T) == pytest.approx(expert_bytes * (1 - 1 / X))
    _, gemms = _program(gpus, seqs, attention="dp", expert_tp=T, ep=X // T)
    flops = sum(2 * rows * n * k for per_gpu in gemms for rows, n, k in per_gpu)
    assert flops == pytest.approx(2 * seqs * 8 * 3 * 2048 * 1024)  # all tokens x top-8 x (gate, up, down)


@pytest.mark.parametrize("moe, field", [
    (dict(expert_tp=3), "placement.moe.expert_tp"),  # does not divide 4 GPUs
    (dict(expert_tp=2, ep=4), "placement.moe.ep"),  # ep x expert_tp = 8 > 4 GPUs
    (dict(expert_tp=2, ep=1, attention_tp=4), "placement.moe.expert_tp"),  # group of 2 inside a TP group of 4
    (dict(expert_tp=2, ep=2, redundant_experts=4), "placement.moe.expert_tp"),
    (dict(token_exchange="gather", ep=2, attention_tp=4), "placement.moe.token_exchange"),  # group inside a TP group
    (dict(token_exchange="gather", ep=4, redundant_experts=4), "placement.moe.token_exchange"),
])
def test_impossible_expert_tp_names_the_field(moe, field):
    with pytest.raises(SpecError) as e:
        resolve_moe(load_model(MODEL), 4, PlacementSpec(moe=moe))
    assert e.value.field == field
