"""Fabric: topology paths and max-min fair flow sharing (hand cases, conservation, monotonicity)."""
from __future__ import annotations

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.errors import SpecError
from simfoe.fabric import FlowNetwork, build_cluster
from simfoe.specs.io import load_hardware


@pytest.fixture(scope="module")
def hw():
    return load_hardware("h100-sxm")


def _hw(hw, **net):
    return hw.model_copy(update={"network": hw.network.model_copy(update=net)}) if net else hw


def run(cluster, batches):
    """batches: list of (src, dst, nbytes); returns (finish time of each batch, net)."""
    env = simpy.Environment()
    net = FlowNetwork(env, cluster)
    evs = [net.transfer_many(s, d, b, f"t{i}") for i, (s, d, b) in enumerate(batches)]
    done = {}
    for i, ev in enumerate(evs):
        ev.callbacks.append(lambda _e, i=i: done.__setitem__(i, env.now))
    env.run()
    return [done[i] for i in range(len(evs))], net


def test_paths(hw):
    c = build_cluster(hw, 2)
    assert c.n_gpus == 16 and c.gpus_per_node == 8 and c.node_of(9) == 1
    assert len(c.path(0, 1)) == 2 and not c.link_is_network[c.path(0, 1)].any()
    assert len(c.path(0, 8)) == 4 and c.link_is_network[c.path(0, 8)].all()  # same rail: one leaf
    assert len(c.path(0, 9)) == 6  # cross-rail: via the spine
    assert len(c.path(3, 3)) == 0
    assert build_cluster(hw, 2) is c  # memoized
    ft = build_cluster(_hw(hw, topology="fat-tree"), 2)
    assert len(ft.path(0, 8)) == 6
    with pytest.raises(SpecError):
        build_cluster(hw, 0)


def test_two_flows_share_a_link_half_each(hw):
    c = build_cluster(hw, 1)
    cap = c.link_capacity[c.path(0, 1)[0]]
    S = 1e9
    (t_one,), _ = run(c, [([0], [1], [S])])
    (t_two,), _ = run(c, [([0, 0], [1, 2], [S, S])])  # share GPU0's NVLink egress
    lat = c.link_latency[c.path(0, 1)].sum()
    assert t_one - lat == pytest.approx(S / cap, rel=1e-9)
    assert t_two - lat == pytest.approx(2 * S / cap, rel=1e-9)


def test_bottlenecked_flow_leaves_rest_to_other(hw):
    # Both flows enter GPU 8 through its NIC (capacity C). Flow A (GPU 1, other rail) climbs through leaf 1's
    # uplink, oversubscribed 8:1 -> 2 NICs * C / 8 = C/4; flow B (GPU 0, same rail) gets the rest, 3C/4.
    c = build_cluster(_hw(hw, oversubscription=8.0), 2)
    C = c.link_capacity[c.path(0, 8)[1]]
    env = simpy.Environment()
    net = FlowNetwork(env, c)
    net.transfer_many([1, 0], [8, 8], [1e9, 1e9], "x")
    env.run(until=1e-3)  # both active
    rate = dict(zip((net._path[:, 0] - 2 * c.n_gpus).tolist(), net._rate.tolist()))  # GPU->NIC link = 2G + src
    assert rate[1] == pytest.approx(C / 4, rel=1e-9)
    assert rate[0] == pytest.approx(3 * C / 4, rel=1e-9)


def test_conservation_and_accounting(hw):
    c = build_cluster(hw, 2)
    rng = np.random.default_rng(0)
    src = rng.integers(0, 16, 200)
    dst = rng.integers(0, 16, 200)
    nb = rng.uniform(0, 1e7, 200)
    nb[:10] = 0
    _, net = run(c, [(src, dst, nb)])
    off = src != dst
    acc = net.bytes_by_tag["t0"]
    assert acc["intra_node"] + acc["inter_node"] == pytest.approx(nb[off].sum())
    intra = off & (src // 8 == dst // 8)
    assert acc["intra_node"] == pytest.approx(nb[intra].sum())
    assert net.flows_completed == int((off & (nb > 0)).sum())
    assert net._rem.size == 0


def test_zero_and_self_flows_finish_at_once(hw):
    c = build_cluster(hw, 1)
    (t,), net = run(c, [([0, 1], [0, 2], [5e6, 0.0])])
    assert t == 0.0 and net.bytes_by_tag["t0"] == {"intra_node": 0.0, "inter_node": 0.0}


def test_internode_all_to_all_throttled_by_nic(hw):
    c = build_cluster(hw, 2)
    g = np.arange(16)
    s, d = np.meshgrid(g, g, indexing="ij")
    m = (s // 8) != (d // 8)  # only inter-node pairs
    per = 1e6
    (t,), _ = run(c, [(s[m], d[m], per)])
    nic = hw.network.nic_bandwidth * hw.collectives.network.efficiency
    assert t == pytest.approx(8 * per / nic, rel=0.02)


def test_recorder_called(hw):
    c = build_cluster(hw, 1)
    rec = []
    env = simpy.Environment()
    net = FlowNetwork(env, c, recorder=lambda *a: rec.append(a))
    env.run(net.transfer(0, 1, 1e6, "p2p"))
    assert rec and rec[0][0] == "comm" and rec[0][1] == "p2p" and rec[0][5] == 1e6


flows = st.lists(st.tuples(st.integers(0, 15), st.integers(0, 15), st.floats(1e3, 1e8)), min_size=1, max_size=12)


@settings(max_examples=30, deadline=None)
@given(flows, st.floats(1.1, 4.0))
def test_more_bandwidth_never_slower(hw, fl, k):
    src, dst, nb = (np.array(x) for x in zip(*fl))
    (t0,), _ = run(build_cluster(hw, 2), [(src, dst, nb)])
    hw2 = hw.model_copy(update={
        "network": hw.network.model_copy(update={"nic_bandwidth": hw.network.nic_bandwidth * k}),
        "node": hw.node.model_copy(update={"nvlink_bandwidth": hw.node.nvlink_bandwidth * k})})
    (t1,), _ = run(build_cluster(hw2, 2), [(src, dst, nb)])
    assert t1 <= t0 * (1 + 1e-9)


@settings(max_examples=30, deadline=None)
@given(flows, st.floats(1.0, 3.0))
def test_more_bytes_never_faster(hw, fl, k):
    src, dst, nb = (np.array(x) for x in zip(*fl))
    (t0,), _ = run(build_cluster(hw, 2), [(src, dst, nb)])
    (t1,), _ = run(build_cluster(hw, 2), [(src, dst, nb * k)])
    assert t1 >= t0 * (1 - 1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(flows, st.floats(0.0, 2e-4)), min_size=1, max_size=4), st.booleans())
def test_incremental_refill_gives_the_rates_of_a_full_refill(hw, batches, oversubscribed):
    """After a completion only the flows at or above the removed flows' lowest rate are re-filled; every
    batch (started at staggered times, so flows also arrive mid-transfer) must finish exactly when it does
    with every recompute from scratch (exact completions: rel_tol 0)."""
    cluster = build_cluster(_hw(hw, oversubscription=3.0) if oversubscribed else hw, 2)
    specs = [(*(np.array(x) for x in zip(*fl)), delay) for fl, delay in batches]

    def finish_times(incremental):
        env = simpy.Environment()
        net = FlowNetwork(env, cluster, rel_tol=0.0)
        net.INCREMENTAL = incremental
        done = {}
        for i, (s, d, b, delay) in enumerate(specs):
            ev = net.transfer_many(s, d, b, f"t{i}", alpha_s=delay)
            ev.callbacks.append(lambda _e, i=i: done.__setitem__(i, env.now))
        env.run()
        return [done[i] for i in range(len(specs))]

    assert finish_times(True) == pytest.approx(finish_times(False), rel=1e-9, abs=1e-15)


def test_completion_tolerance_keeps_skewed_all_to_all_within_one_percent():
    """The default 1% completion tolerance must not move a skewed 32-GPU all-to-all by more than 1%."""
    import simpy

    from simfoe.costs.collectives import all_to_all
    from simfoe.fabric.flows import FlowNetwork
    from simfoe.fabric.topology import build_cluster
    from simfoe.specs.io import load_hardware

    hw = load_hardware("h100-sxm")
    cl = build_cluster(hw, 4)
    traffic = np.random.default_rng(0).gamma(2.0, 1e6 / 2.0, size=(32, 32))

    def run(tol):
        env = simpy.Environment()
        net = FlowNetwork(env, cl, rel_tol=tol)
        env.process(all_to_all(net, list(range(32)), traffic))
        env.run()
        return env.now

    exact, fast = run(0.0), run(None)
    assert fast == pytest.approx(exact, rel=0.01)
    assert fast <= exact * (1 + 1e-12)
