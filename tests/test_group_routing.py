"""Group-limited routing (DeepSeek-V3 n_group / topk_group): the sampler, node-aligned placement
(plain and EPLB), nodes per token in the forward result, and the spec fields."""
from __future__ import annotations

from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.api import forward
from simfoe.cli import main
from simfoe.forward.eplb import balance
from simfoe.forward.routing import GroupLimit, expert_probs, route_group, sample_topk
from simfoe.specs.io import load_model
from simfoe.specs.routing import parse_routing

SPECS = ["uniform", "zipf:1.2", "dirichlet:0.05", "dirichlet:0.5", "hotset:0.25:0.7"]


@st.composite
def grouped(draw):
    """(probs, k, limit) with k <= the experts of topk_group groups."""
    n_group = draw(st.sampled_from([2, 4, 8]))
    m = draw(st.sampled_from([1, 2, 4, 8]))
    topk_group = draw(st.integers(1, n_group - 1))
    k = draw(st.integers(1, topk_group * m))
    spec = draw(st.sampled_from(SPECS))
    seed = draw(st.integers(0, 2**16))
    p = expert_probs(parse_routing(spec), n_group * m, 1, np.random.default_rng(seed))[0]
    return p, k, GroupLimit(n_group, topk_group), seed


@settings(max_examples=60, deadline=None)
@given(case=grouped(), n=st.integers(1, 400))
def test_grouped_choices_are_distinct_and_inside_topk_group_groups(case, n):
    p, k, limit, seed = case
    c = sample_topk(p, n, k, np.random.default_rng(seed), limit)
    E, m = len(p), len(p) // limit.n_group
    assert c.shape == (n, k) and c.min() >= 0 and c.max() < E
    srt = np.sort(c, axis=1)
    assert (srt[:, 1:] != srt[:, :-1]).all()  # k distinct experts
    groups = np.sort(c // m, axis=1)
    distinct = 1 + (groups[:, 1:] != groups[:, :-1]).sum(axis=1)
    assert distinct.max() <= limit.topk_group


@settings(max_examples=40, deadline=None)
@given(case=grouped(), nodes=st.sampled_from([1, 2, 4, 8]), per_node=st.sampled_from([1, 2, 4]),
       tokens=st.lists(st.integers(0, 200), min_size=1, max_size=4))
def test_tokens_reach_at_most_topk_group_nodes_when_groups_sit_on_nodes(case, nodes, per_node, tokens):
    """Experts in order over the GPUs, each node holding whole groups: at most topk_group nodes per token."""
    p, k, limit, seed = case
    if limit.n_group % nodes:
        nodes = 1
    g = nodes * per_node
    E = len(p)
    if E % g:
        return
    tpg = np.resize(np.array(tokens), g)
    s = route_group(p, tpg, k, E // g, True, np.random.default_rng(seed), limit=limit,
                    node_of=np.arange(g) // per_node)
    T = int(tpg.sum())
    assert s.expert_load.sum() == pytest.approx(T * k)
    assert s.node_visits <= limit.topk_group * T + 1e-9
    assert s.node_visits >= min(T, 1) * (T > 0) - 1e-9


def test_uniform_deepseek_ep64_reaches_four_nodes_and_ungrouped_reaches_5_3():
    """256 experts, top-8, 64 GPUs on 8 nodes: grouped (8 groups, top-4) a token reaches exactly 4 nodes
    under uniform routing (each chosen group serves one expert); ungrouped, 8 x (1 - C(224,8)/C(256,8))."""
    p = np.full(256, 1 / 256)
    tpg = np.full(64, 512)
    node_of = np.arange(64) // 8
    s = route_group(p, tpg, 8, 4, True, np.random.default_rng(0), limit=GroupLimit(8, 4), node_of=node_of)
    assert s.node_visits / tpg.sum() == pytest.approx(4.0)
    s = route_group(p, tpg, 8, 4, True, np.random.default_rng(0), node_of=node_of)
    analytic = 8 * (1 - comb(224, 8) / comb(256, 8))  # 5.298
    assert s.node_visits / tpg.sum() == pytest.approx(analytic, abs=0.03)


def test_uniform_routing_stays_uniform_per_expert_under_groups():
    c = sample_topk(np.full(256, 1 / 256), 200_000, 8, np.random.default_rng(1), GroupLimit(8, 4))
    load = np.bincount(c.ravel(), minlength=256)
    # 6250 expected per expert; binomial sd ~79: 6 sd
    assert np.abs(load - 6250).max() < 480


@pytest.mark.parametrize("spec", ["zipf:1.2", "zipf:0.8", "dirichlet:0.3", "hotset:0.1:0.5"])
def test_skewed_marginals_stay_close_to_the_ungrouped_ones(spec):
    """The numbers the sample_topk_grouped docstring quotes: correlation >= 0.99, hottest expert up to 8% hotter."""
    p = expert_probs(parse_routing(spec), 256, 1, np.random.default_rng(1))[0]
    a = np.bincount(sample_topk(p, 100_000, 8, np.random.default_rng(2)).ravel(), minlength=256)
    b = np.bincount(sample_topk(p, 100_000, 8, np.random.default_rng(3), GroupLimit(8, 4)).ravel(), minlength=256)
    assert np.corrcoef(a, b)[0, 1] >= 0.99
    assert 1.0 <= b.max() / a.max() <= 1.08


def test_memo_keeps_grouped_and_ungrouped_samples_apart():
    p, tpg, node_of = np.full(256, 1 / 256), np.full(64, 64), np.arange(64) // 8
    memo: dict = {}
    plain = route_group(p, tpg, 8, 4, True, np.random.default_rng(0), memo=memo, node_of=node_of)
    limited = route_group(p, tpg, 8, 4, True, np.random.default_rng(0), memo=memo, limit=GroupLimit(8, 4),
                          node_of=node_of)
    assert plain.node_visits > limited.node_visits == 4 * tpg.sum()
    again = route_group(p, tpg, 8, 4, True, np.random.default_rng(0), memo=memo, limit=GroupLimit(8, 4),
                        node_of=node_of)
    assert again is limited


@settings(max_examples=30, deadline=None)
@given(alpha=st.floats(0.05, 5.0), seed=st.integers(0, 2**16), nodes=st.sampled_from([2, 4, 8]),
       extra=st.integers(0, 2))
def test_eplb_keeps_each_group_and_its_replicas_on_one_node(alpha, seed, nodes, extra):
    E, n_group, gpn = 256, 8, 8
    ep = nodes * gpn
    R = extra * ep
    probs = np.random.default_rng(seed).dirichlet(np.full(E, alpha))
    m = balance(probs, R, ep, gpn, n_group)
    assert sorted(m.slots.tolist()) == list(range(E + R)) and (m.count >= 1).all()
    owner = np.repeat(np.arange(E), m.count)
    node = m.slots // m.per_gpu // gpn
    for g in range(n_group):
        assert len(set(node[owner // (E // n_group) == g].tolist())) == 1
    assert np.bincount(node, minlength=nodes).tolist() == [(E + R) // nodes] * nodes
    # routed through the replicas, a token still reaches at most topk_group nodes
    s = route_group(probs, np.full(ep, 50), 8, m.per_gpu, True, np.random.default_rng(seed), m,
                    limit=GroupLimit(n_group, 4), node_of=np.arange(ep) // gpn)
    assert s.node_visits <= 4 * 50 * ep + 1e-9


def test_forward_reports_nodes_per_token_beside_the_local_activation_rate():
    kw = dict(model="deepseek-v3", hardware="h100-sxm", nodes=8, arch="moe", phase="decode", batch=1024,
              seq_len=512)
    r = forward(**kw)
    assert r["nodes_per_token"] == pytest.approx(4.0)  # <= topk_group = 4, and exactly 4 under uniform routing
    assert 0 < r["local_activation_rate"] < 1
    r1 = forward(overrides=["model.moe.n_group=1"], **kw)
    assert r1["nodes_per_token"] == pytest.approx(8 * (1 - comb(224, 8) / comb(256, 8)), abs=0.15)  # the 5.3
    one = forward("deepseek-v3", "h100-sxm", nodes=1, phase="decode", batch=64, seq_len=512)
    assert one["nodes_per_token"] == 1.0
    foe = forward("mixtral-8x7b", "h100-sxm", nodes=2, arch="foe", phase="decode", batch=8, seq_len=512)
    assert foe["nodes_per_token"] == 2.0  # every cluster, on every node, serves every token
    assert forward("llama-3-70b", "h100-sxm", phase="decode", batch=8, seq_len=512)["nodes_per_token"] is None


def test_forward_text_prints_nodes_per_token(capsys):
    code = main(["forward", "--model", "deepseek-v3", "--hardware", "h100-sxm", "--nodes", "8", "--phase", "decode",
                 "--batch", "64", "--seq-len", "512"])
    assert code == 0
    assert "nodes per token: 4.00" in capsys.readouterr().out


def test_presets_carry_the_published_groups():
    m = load_model("deepseek-v3")
    assert (m.moe.n_group, m.moe.topk_group) == (8, 4)  # deepseek-ai/DeepSeek-V3 config.json
    assert GroupLimit.of(m.moe) == GroupLimit(8, 4)
    for name in ("mixtral-8x7b", "qwen3-235b-a22b", "olmoe-1b-7b", "gpt-oss-120b"):
        moe = load_model(name).moe
        assert (moe.n_group, moe.topk_group) == (1, 1) and GroupLimit.of(moe) is None
    # topk_group >= n_group limits nothing: --set model.moe.n_group=1 on DeepSeek-V3 is ungrouped
    assert GroupLimit.of(load_model("deepseek-v3", ["model.moe.n_group=1"]).moe) is None


@pytest.mark.parametrize("setting,words", [("model.moe.n_group=3", ["n_group", "3", "divide"]),
                                           ("model.moe.topk_group=0", ["topk_group", "0"]),
                                           ("model.moe.n_group=256", ["topk_group", "top_k"])])
def test_bad_groups_exit_2_with_one_line(capsys, setting, words):
    code = main(["forward", "--model", "deepseek-v3", "--hardware", "h100-sxm", "--set", setting, "--json"])
    cap = capsys.readouterr()
    assert code == 2 and cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for w in words:
        assert w in lines[0]
