"""Collective algorithms on the flow network: alpha-beta agreement, accounting, algorithm choice."""
from __future__ import annotations

import numpy as np
import pytest
import simpy

from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.costs.collectives import (all_gather, all_reduce, all_reduce_algorithms, all_to_all, predict, reduce_scatter,
                                      send_recv)
from simfoe.errors import SpecError
from simfoe.fabric import FlowNetwork, build_cluster
from simfoe.specs.io import load_hardware


@pytest.fixture(scope="module")
def hw():
    return load_hardware("h100-sxm")


def _net(hw, nodes):
    env = simpy.Environment()
    return env, FlowNetwork(env, build_cluster(hw, nodes))


def _run(env, gen):
    p = env.process(gen)
    env.run(p)
    return env.now


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("S", [1e5, 1e7, 1e9])
def test_ring_all_reduce_matches_alpha_beta(hw, n, S):
    """NCCL latency model: the fastest of Simple, LL and LL128, base + 2(n-1) hops + bytes / rate."""
    c = hw.collectives.nvlink
    B = hw.node.nvlink_bandwidth * c.efficiency
    per_gpu = 2 * (n - 1) / n * S
    simple = c.alpha_s + 2 * (n - 1) * c.hop_s + per_gpu / B
    ll = c.ll_alpha_s + 2 * (n - 1) * c.ll_hop_s + per_gpu / (B * c.ll_bandwidth_fraction)
    ll128 = c.ll128_alpha_s + 2 * (n - 1) * c.ll128_hop_s + per_gpu / (B * c.ll128_bandwidth_fraction)
    expected = min(simple, ll, ll128) + hw.node.nvlink_latency_s
    assert predict(hw, "all_reduce", n, S, "ring") == pytest.approx(expected, rel=1e-9)
    if S >= 1e9:
        assert simple < min(ll, ll128)  # large messages: Simple protocol
    if S <= 1e5 and n == 8:
        assert ll < min(simple, ll128)  # small messages: LL protocol


def test_one_ring_all_reduce_by_hand(hw):
    """4 GPUs, one node, 90 MB, Simple only: 10 us base + 6 steps x 3.4 us + 3.1 us path latency
    (GPU -> NVSwitch -> GPU) + 2 x 3/4 x 90 MB at 0.8 x 450 GB/s (375 us) = 408.5 us."""
    nv = {"alpha_s": 10e-6, "efficiency": 0.8, "hop_s": 3.4e-6}
    coll = hw.collectives.model_copy(update={"nvlink": type(hw.collectives.nvlink)(**nv)})
    h = hw.model_copy(update={"collectives": coll, "node": hw.node.model_copy(update={"nvlink_latency_s": 3.1e-6})})
    assert predict(h, "all_reduce", 4, 90e6, "ring") == pytest.approx(408.5e-6, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(per_node=st.integers(1, 8), nodes=st.integers(1, 3), log_bytes=st.floats(2.0, 9.5))
def test_auto_never_slower_than_a_modelled_algorithm(per_node, nodes, log_bytes):
    """``auto`` (NCCL's tuner) is at most every all-reduce algorithm simfoe models for the group."""
    hw = load_hardware("h100-sxm")
    n, S = per_node * nodes, 10 ** log_bytes
    env, net = _net(hw, nodes)
    gpus = (np.arange(nodes)[:, None] * 8 + np.arange(per_node)[None, :]).ravel()
    auto = predict(hw, "all_reduce", n, S, "auto", nodes)
    for a in all_reduce_algorithms(net, gpus):
        assert auto <= predict(hw, "all_reduce", n, S, a, nodes) * (1 + 1e-9), a


def test_auto_beats_sequential_choices_across_nodes(hw):
    """2 nodes x 8 GPUs, 256 MiB: auto is no slower than the ring (it once took a sequential hierarchical
    all-reduce, 2.16 vs 1.48 ms) and NVLS-tree and the pipelined hierarchical all-reduce exist."""
    S = 256 * 2**20
    t = {a: predict(hw, "all_reduce", 16, S, a, 2) for a in ("auto", "ring", "tree", "hierarchical", "nvls_tree")}
    assert t["auto"] == min(t.values())
    assert t["auto"] <= t["ring"]


def test_all_to_all_runs_at_its_own_nvlink_rate(hw):
    """8 GPUs, one node, 64 MiB to each peer: 7 x 64 MiB leave each GPU at all_to_all_nvlink_efficiency x
    450 GB/s (Simple), plus one base latency, one step and the path latency."""
    c = hw.collectives
    S = 64 * 2**20
    rate = hw.node.nvlink_bandwidth * c.all_to_all_nvlink_efficiency
    expected = c.nvlink.alpha_s + c.nvlink.hop_s + hw.node.nvlink_latency_s + 7 * S / rate
    assert predict(hw, "all_to_all", 8, S) == pytest.approx(expected, rel=1e-6)


def test_ring_across_nodes_uses_all_nics(hw):
    # 16 GPUs on 2 nodes, 8 channels: each GPU sends 2*15/16*S/8 over its NIC; NIC-bound
    S = 1e9
    t = predict(hw, "all_reduce", 16, S, "ring")
    nic = hw.network.nic_bandwidth * hw.collectives.network.efficiency
    c = hw.collectives
    # Simple protocol: base latency of the network path, 28 NVLink steps and 2 network steps
    lat = c.network.alpha_s + 28 * c.nvlink.hop_s + 2 * c.network.hop_s
    assert t == pytest.approx(2 * 15 / 16 * S / 8 / nic + lat, rel=0.01)


def test_all_reduce_accounting(hw):
    env, net = _net(hw, 2)
    S = 8e6
    _run(env, all_reduce(net, list(range(16)), S, "hierarchical"))
    acc = net.bytes_by_tag["all_reduce"]
    # RS + AG inside each node: 2 * 16 GPUs * 7/8 S; inter-node: 16 GPUs * 2*(1/2)*S/8
    assert acc["intra_node"] == pytest.approx(2 * 16 * 7 / 8 * S)
    assert acc["inter_node"] == pytest.approx(16 * S / 8)
    env, net = _net(hw, 1)
    _run(env, all_reduce(net, list(range(8)), S, "ring"))
    assert net.bytes_by_tag["all_reduce"] == {"intra_node": pytest.approx(8 * 2 * 7 / 8 * S), "inter_node": 0.0}


def test_all_to_all_bytes_equal_off_diagonal_traffic(hw):
    rng = np.random.default_rng(1)
    T = rng.uniform(0, 1e6, (16, 16))
    env, net = _net(hw, 2)
    gpus = np.arange(16)
    _run(env, all_to_all(net, gpus, T))
    acc = net.bytes_by_tag["all_to_all"]
    off = ~np.eye(16, dtype=bool)
    same = (gpus[:, None] // 8) == (gpus[None, :] // 8)
    assert acc["intra_node"] + acc["inter_node"] == pytest.approx(T[off].sum())
    assert acc["inter_node"] == pytest.approx(T[~same].sum())


def test_hierarchical_all_to_all_inter_bytes_and_rails(hw):
    T = np.full((16, 16), 1e6)
    np.fill_diagonal(T, 0)
    env, net = _net(hw, 2)
    t_h = _run(env, all_to_all(net, range(16), T, "hierarchical"))
    acc = net.bytes_by_tag["all_to_all"]
    assert acc["inter_node"] == pytest.approx(16 * 8 * 1e6)  # each byte crosses the network once
    # phase 2 only uses same-rail paths (no spine): total time ~ NVLink phase + 8 MB per NIC
    nic = hw.network.nic_bandwidth * hw.collectives.network.efficiency
    assert t_h > 8e6 / nic


def test_nvls_rules(hw):
    assert predict(hw, "all_reduce", 8, 1e8) == pytest.approx(predict(hw, "all_reduce", 8, 1e8, "nvls"))
    assert predict(hw, "all_reduce", 2, 1e8) == pytest.approx(predict(hw, "all_reduce", 2, 1e8, "ring"))
    with pytest.raises(SpecError):
        predict(hw, "all_reduce", 16, 1e6, "nvls")
    a100 = load_hardware("a100-sxm")
    with pytest.raises(SpecError):
        predict(a100, "all_reduce", 8, 1e6, "nvls")


def test_other_collectives_and_errors(hw):
    env, net = _net(hw, 1)
    _run(env, all_gather(net, range(8), 1e6))
    _run(env, reduce_scatter(net, range(8), 8e6))
    _run(env, send_recv(net, 0, 3, 1e6))
    assert net.bytes_by_tag["all_gather"]["intra_node"] == pytest.approx(8 * 7 * 1e6)
    assert net.bytes_by_tag["reduce_scatter"]["intra_node"] == pytest.approx(8 * 7 / 8 * 8e6)
    assert net.bytes_by_tag["send_recv"]["intra_node"] == 1e6
    assert predict(hw, "all_reduce", 8, 1e6, "tree") > 0
    for bad in [lambda: predict(hw, "all_reduce", 8, 1e6, "magic"), lambda: predict(hw, "broadcast", 8, 1e6),
                lambda: predict(hw, "all_reduce", 8, -1.0), lambda: predict(hw, "all_reduce", 12, 1e6, nodes=5)]:
        with pytest.raises(SpecError):
            bad()
    env, net = _net(hw, 1)
    with pytest.raises(SpecError):
        _run(env, all_to_all(net, range(4), np.ones((3, 3))))
    assert predict(hw, "all_reduce", 1, 1e6) == 0.0


def test_concurrent_collectives_share_links(hw):
    env, net = _net(hw, 1)
    S = 1e9
    p1 = env.process(all_reduce(net, range(8), S, "ring", tag="a"))
    p2 = env.process(all_reduce(net, range(8), S, "ring", tag="b"))
    env.run(p1 & p2)
    one = predict(hw, "all_reduce", 8, S, "ring")
    c = hw.collectives.nvlink  # 1 GB: Simple protocol; latency paid once, the two overlap
    lat = c.alpha_s + 14 * c.hop_s + hw.node.nvlink_latency_s
    assert env.now == pytest.approx(2 * (one - lat) + lat, rel=1e-9)


def test_algorithm_the_group_cannot_run_is_one_error_line(capsys):
    """NVLS across nodes inside a forward pass (raised in a SimPy process): exit 2, one line naming the
    algorithm and what the group can run, no traceback."""
    from simfoe.cli import main

    code = main(["forward", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--nodes", "2", "--arch", "foe",
                 "--phase", "decode", "--batch", "8", "--seq-len", "512", "--set", "placement.foe.all_reduce=nvls",
                 "--json"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: algorithm: 'nvls' is not allowed") and "nvls_tree" in err


@pytest.mark.parametrize("kind", ["all_reduce", "all_gather", "reduce_scatter"])
def test_memoized_plans_follow_the_hardware_and_do_not_wear(hw, kind):
    """Plans (protocol, latency) are memoized per cluster: the same group and bytes where NVLink's per-step
    latencies are 10x take longer (a memo keyed without the cluster returns the first plan: equal times), and a
    plan run again on the same fabric takes as long."""
    nv = hw.collectives.nvlink
    slow_nv = nv.model_copy(update={k: 10 * getattr(nv, k) for k in ("alpha_s", "hop_s", "ll_alpha_s", "ll_hop_s",
                                                                      "ll128_alpha_s", "ll128_hop_s")})
    slow = hw.model_copy(update={"collectives": hw.collectives.model_copy(update={"nvlink": slow_nv})})
    fast_s = predict(hw, kind, 8, 4096)
    assert predict(slow, kind, 8, 4096) > 2 * fast_s
    assert predict(hw, kind, 8, 4096) == fast_s
    env, net = _net(hw, 1)
    op = {"all_reduce": all_reduce, "all_gather": all_gather, "reduce_scatter": reduce_scatter}[kind]
    _run(env, op(net, np.arange(8), 64e6))
    first = env.now
    _run(env, op(net, np.arange(8), 64e6))
    assert env.now - first == pytest.approx(first, rel=1e-12)
