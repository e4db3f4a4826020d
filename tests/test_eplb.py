"""Redundant experts (placement.moe.redundant_experts): the EPLB-style balancer and its effect on a pass."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from simfoe.api import forward
from simfoe.errors import SpecError
from simfoe.forward.eplb import balance
from simfoe.forward.routing import route_group
from simfoe.specs.io import build_placement, load_model
from simfoe.specs.placement import resolve_moe
from simfoe.specs.precision import FORMATS


def _gpu_loads(m, probs):
    owner = np.repeat(np.arange(len(probs)), m.count)
    load = np.zeros(m.n_slots)
    load[m.slots] = probs[owner] / m.count[owner]
    return load.reshape(-1, m.per_gpu).sum(axis=1)


@settings(max_examples=60, deadline=None)
@given(E=hs.sampled_from([8, 16, 64]), ep=hs.sampled_from([2, 4, 8]), extra=hs.integers(0, 3),
       alpha=hs.floats(0.05, 5.0), seed=hs.integers(0, 2**16))
def test_balance_places_every_replica_once_and_bounds_the_hottest_gpu(E, ep, extra, alpha, seed):
    R = extra * ep
    probs = np.random.default_rng(seed).dirichlet(np.full(E, alpha))
    m = balance(probs, R, ep)
    assert sorted(m.slots.tolist()) == list(range(E + R))  # each slot holds one replica
    assert m.count.sum() == E + R and (m.count >= 1).all()
    loads = _gpu_loads(m, probs)
    assert loads.sum() == pytest.approx(1.0)
    # greedy packing: the busiest GPU exceeds the mean by at most one (the heaviest) replica
    per_replica = probs / m.count
    assert loads.max() <= 1.0 / ep + per_replica.max() + 1e-12
    # replicas go to the experts with the most load per replica: no expert left heavier per replica than
    # any replicated expert was before its last replica
    if R:
        rep = m.count > 1
        assert per_replica.max() <= (probs[rep] / (m.count[rep] - 1)).min() + 1e-12


def test_balance_spreads_a_hot_expert():
    probs = np.array([0.65] + [0.05] * 7)
    m = balance(probs, 8, 8)  # 16 slots on 8 GPUs
    assert m.count[0] == 9 and (m.count[1:] == 1).all()  # 0.65 / 8 = 0.081 > 0.05 still takes the last one
    # heaviest first: 8 replicas (0.0722 each) one per GPU, the 9th beside one of them, the cold experts
    # fill the other GPUs' second slots
    assert _gpu_loads(m, probs).max() == pytest.approx(2 * 0.65 / 9)


def test_routing_to_replicas_conserves_tokens():
    rng = np.random.default_rng(0)
    probs = np.random.default_rng(1).dirichlet(np.full(16, 0.3))
    m = balance(probs, 16, 8)
    s = route_group(probs, np.full(8, 500), 2, m.per_gpu, False, rng, m)
    plain = route_group(probs, np.full(8, 500), 2, 2, False, np.random.default_rng(0))  # same expert choices
    assert len(s.expert_load) == 32 and s.expert_load.sum() == pytest.approx(8 * 500 * 2)
    assert s.traffic_tokens.sum() == pytest.approx(8 * 500 * 2)  # one copy per choice without dedup
    # the replicas of an expert together serve exactly its choices, each about 1/count of them
    owner = np.repeat(np.arange(16), m.count)
    per_expert = np.bincount(owner, weights=s.expert_load[m.slots], minlength=16)
    assert np.array_equal(per_expert, plain.expert_load)
    hot = int(np.argmax(m.count))
    share = s.expert_load[m.slots[m.start[hot]:m.start[hot] + m.count[hot]]] / plain.expert_load[hot]
    assert share == pytest.approx(np.full(m.count[hot], 1 / m.count[hot]), abs=0.05)


def test_redundant_experts_cut_skewed_latency_and_cost_memory():
    kw = dict(model="deepseek-v3", hardware="h100-sxm", nodes=4, arch="moe", phase="decode", batch=1024,
              seq_len=2048, routing="zipf:1.2")
    base = forward(overrides=["placement.moe.attention=dp"], **kw)
    eplb = forward(overrides=["placement.moe.attention=dp", "placement.moe.redundant_experts=32"], **kw)
    assert eplb["latency_s"] < 0.85 * base["latency_s"]
    # 32 replicas over 32 GPUs: one more expert's weights on every GPU
    m = load_model("deepseek-v3")
    extra = eplb["memory"]["weights_bytes_per_gpu"] - base["memory"]["weights_bytes_per_gpu"]
    assert extra == pytest.approx(m.expert_params() * FORMATS[m.formats.expert_weights].bytes_per_param * m.n_moe_layers)


def test_redundant_experts_must_split_over_the_ep_group():
    m = load_model("deepseek-v3")
    lay = resolve_moe(m, 8, build_placement("moe", 4, ["placement.moe.redundant_experts=32"]))
    assert lay.ep == 32 and lay.experts_per_gpu == 9
    with pytest.raises(SpecError, match="placement.moe.ep"):
        resolve_moe(m, 8, build_placement("moe", 4, ["placement.moe.redundant_experts=8", "placement.moe.ep=32"]))
    with pytest.raises(SpecError, match="redundant_experts"):
        resolve_moe(m, 8, build_placement("moe", 1, ["placement.moe.redundant_experts=1"]))
    with pytest.raises(SpecError, match="redundant_experts"):
        build_placement("moe", 1, ["placement.moe.redundant_experts=-1"])
