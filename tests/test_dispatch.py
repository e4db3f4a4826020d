"""MoE dispatch/combine pricing (simfoe.costs.dispatch) and its fit to measured DeepEP tables."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.api import forward
from simfoe.costs import dispatch as D
from simfoe.errors import SpecError
from simfoe.specs.io import load_hardware


def _network_bytes(traffic, algorithm):
    return sum(float(s.nbytes.sum()) for s in D.flows(traffic, 1.0, algorithm, "dispatch") if s.network)


@settings(max_examples=60, deadline=None)
@given(nodes=st.integers(2, 4), gpn=st.integers(1, 4), seed=st.integers(0, 10_000), tokens=st.integers(1, 50))
def test_per_node_dedup_never_moves_more_nic_bytes_than_per_gpu_copies(nodes, gpn, seed, tokens):
    rng = np.random.default_rng(seed)
    n = nodes * gpn
    gpu = rng.uniform(0, tokens, (n, n)) * (rng.random((n, n)) < 0.7)  # copies per destination GPU, <= tokens
    tr = D.traffic_from_gpu_copies(gpu, gpu, np.full(n, float(tokens)), np.arange(n), gpn)
    assert _network_bytes(tr, "deepep-normal") <= _network_bytes(tr, "direct") * (1 + 1e-12)
    assert _network_bytes(tr, "hierarchical") == pytest.approx(_network_bytes(tr, "direct"))


@pytest.mark.parametrize("nodes", [2, 4, 8])
def test_deepep_test_routing_dedup_moves_fewer_nic_bytes(nodes):
    tr = D.deepep_test_traffic(nodes, 8, 1.0, 256, 8, min(nodes, 4), samples=2048)
    assert _network_bytes(tr, "deepep-normal") < _network_bytes(tr, "direct") / 1.5


def test_hand_computed_relay():
    """2 nodes x 2 GPUs; GPU 0 holds one token for GPUs 2 and 3 (node 1): deepep-normal sends it once over
    RDMA to GPU 2 (GPU 0's rail), which forwards it over NVLink to GPU 3; direct sends two RDMA copies."""
    gpu = np.zeros((4, 4))
    gpu[0, 2] = gpu[0, 3] = 1.0
    tr = D.traffic_from_gpu_copies(gpu, gpu, np.array([1.0, 0, 0, 0]), np.arange(4), 2)
    sets = {s.network: s for s in D.flows(tr, 100.0, "deepep-normal", "dispatch")}
    assert list(zip(sets[True].src, sets[True].dst, sets[True].nbytes)) == [(0, 2, 100.0)]
    assert list(zip(sets[False].src, sets[False].dst, sets[False].nbytes)) == [(2, 3, 100.0)]
    combine = {s.network: s for s in D.flows(tr, 100.0, "deepep-normal", "combine")}
    assert (combine[True].src[0], combine[True].dst[0]) == (2, 0)
    direct = D.flows(tr, 100.0, "direct", "dispatch")
    assert len(direct) == 1 and direct[0].network and sorted(direct[0].dst.tolist()) == [2, 3]


@pytest.mark.parametrize("algorithm", ["deepep-normal", "deepep-ll", "hierarchical", "direct"])
@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_simulated_exchange_matches_closed_form(algorithm, nodes):
    hw = load_hardware("h100-sxm")
    tr = D.deepep_test_traffic(nodes, 8, 2048, 256, 8, min(nodes, 4), samples=1024)
    for op in D.OPS:
        sim = D.predict(hw, tr, 7392.0, algorithm, op, nodes)
        assert sim == pytest.approx(D.alone_seconds(hw, tr, 7392.0, algorithm, op, nodes), rel=0.02)


def test_ll_hand_computed_latency_and_rate():
    """One node, 1024 tokens per GPU, each to 7 other GPUs: alpha + 7 x 1024 x B / (eff x NVLink)."""
    hw = load_hardware("h100-sxm")
    k = hw.collectives.deepep.ll_combine
    choice = np.full((8, 8), 1024.0) * (1 - np.eye(8))
    tr = D.traffic_from_gpu_copies(choice, choice, np.full(8, 1024.0), np.arange(8), 8)
    want = (k.alpha_s + k.message_s * 7 * 1024 + hw.node.nvlink_latency_s
            + 7 * 1024 * 14336 / (hw.node.nvlink_bandwidth * k.nvlink_efficiency))
    assert D.predict(hw, tr, 14336.0, "deepep-ll", "combine", 1) == pytest.approx(want, rel=1e-6)


def test_auto_follows_sglang_deepep_mode_auto():
    assert D.resolve("auto", prefill=True) == "deepep-normal"
    assert D.resolve("auto", prefill=False) == "deepep-ll"
    assert D.resolve("direct", prefill=True) == "direct"
    with pytest.raises(SpecError, match="placement.moe.all_to_all"):
        D.resolve("pxn", prefill=True)


def test_fp8_dispatch_carries_scales():
    assert D.copy_bytes(7168, 1, "deepep-normal", "dispatch") == 7168 + 224
    assert D.copy_bytes(7168, 1, "deepep-ll", "dispatch") == 7168 + 224 + 16
    assert D.copy_bytes(7168, 2, "deepep-ll", "combine") == 14336


def test_forward_deepep_normal_moves_fewer_network_bytes_and_is_faster_than_direct():
    kw = dict(model="olmoe-1b-7b", hardware="h100-sxm", nodes=2, arch="moe", phase="prefill", batch=16, seq_len=512)
    normal = forward(**kw, overrides=["placement.moe.attention=dp"])
    direct = forward(**kw, overrides=["placement.moe.attention=dp", "placement.moe.all_to_all=direct"])
    assert normal["comm_bytes"]["all_to_all"]["inter_node"] < direct["comm_bytes"]["all_to_all"]["inter_node"] / 1.5
    assert normal["breakdown_s"]["dispatch"] < direct["breakdown_s"]["dispatch"]


def test_bad_algorithm_name_is_refused():
    with pytest.raises(SpecError, match="all_to_all"):
        forward("olmoe-1b-7b", "h100-sxm", nodes=1, phase="decode", batch=4, seq_len=64,
                overrides=["placement.moe.all_to_all=pxn"])


def test_stored_fit_meets_bounds_on_measured_deepep_tables(shared_data):
    """The profile's DeepEP kernels against the 0.5.6.post2 tables at DeepEP's default 20 SMs: <= 15% MAPE per
    node count (normal 1, 2, 4 nodes; low latency 1-8 nodes). 8-node normal: docs/calibration-collectives.md."""
    from simfoe.costs import fit_dispatch as F

    rows = F.load_rows(shared_data)
    rows = rows[rows.table.str.startswith("0.5.6") & ((rows["mode"] == "ll") | (rows.sms == F.DEFAULT_SMS))]
    rows = rows[~((rows["mode"] == "normal") & (rows.nodes == 8))]
    ape = (F.predict_rows(load_hardware("h100-sxm"), rows) / rows.measured_s.to_numpy() - 1) * 100
    by = rows.assign(ape=np.abs(ape)).groupby(["mode", "op", "nodes"]).ape.mean()
    assert (by <= 15).all(), by.to_dict()


def test_sm_share_held_by_each_algorithm():
    hw = load_hardware("h100-sxm")
    assert D.sm_share(hw, "deepep-normal") == pytest.approx(20 / 132)
    assert D.sm_share(hw, "deepep-ll") == 0.0 and D.sm_share(hw, "direct") == 0.0


def test_comm_sm_share_auto_slows_overlapped_compute_only_under_normal_kernels():
    """auto: the normal kernels (prefill) hold 20/132 SMs, the low-latency ones (decode) none."""
    def lat(phase, share):
        return forward("olmoe-1b-7b", "h100-sxm", nodes=2, phase=phase, batch=8, seq_len=512,
                       overrides=["placement.moe.attention=dp", "placement.overlap=two-batch",
                                  f"placement.comm_sm_share={share}"])["latency_s"]

    free, auto, fixed = lat("prefill", 0), lat("prefill", "auto"), lat("prefill", 20 / 132)
    assert free < auto <= fixed * (1 + 1e-9)
    assert lat("decode", "auto") == lat("decode", 0)


def test_notify_step_only_for_normal_kernels_across_nodes():
    """DeepEP's normal kernels exchange per-rank counts first across nodes: notify_s + per node + per token."""
    hw = load_hardware("h100-sxm")
    k = hw.collectives.deepep.normal_dispatch
    assert D.notify_seconds(hw, "deepep-normal", "dispatch", 4, 512) == pytest.approx(
        k.notify_s + 4 * k.notify_per_node_s + 512 * k.notify_per_token_s)
    assert D.notify_seconds(hw, "deepep-normal", "dispatch", 1, 512) == 0.0
    assert D.notify_seconds(hw, "deepep-ll", "dispatch", 4, 512) == 0.0
    tr = D.deepep_test_traffic(2, 8, 512, 256, 8, 2, samples=512)
    without = D.seconds(hw, k, D._sm_rate(hw, "deepep-normal", k), D.shape(hw, tr, 7392.0, "deepep-normal", "dispatch", 2))
    assert D.predict(hw, tr, 7392.0, "deepep-normal", "dispatch", 2) == pytest.approx(
        without + D.notify_seconds(hw, "deepep-normal", "dispatch", 2, 512), rel=0.02)


def test_stored_notify_fit_on_measured_tables(shared_data):
    """Median error of the fitted notify step on its fitted node counts (2, 4) within 25%."""
    from simfoe.costs import fit_dispatch as F

    err = F.notify_errors(load_hardware("h100-sxm"), F.load_notify(shared_data))
    assert (err.loc[(slice(None), [2, 4]), "median"] <= 25).all(), err.to_dict()
