"""NVLink domains larger than a node (issue 25.2): GB200 NVL72 joins 18 trays of 4 GPUs into one NVSwitch
domain of 72, so traffic between its GPUs never touches a NIC; H100-style profiles keep domain = node."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.api import forward
from simfoe.costs.collectives import predict
from simfoe.errors import SpecError
from simfoe.fabric.topology import build_cluster
from simfoe.specs.io import build_placement, load_hardware, load_model
from simfoe.specs.placement import resolve_foe

RACK = "gb200-nvl72-datasheet"  # 4 GPUs per tray, 72 per NVLink domain
TRAYS = ["hardware.node.gpus_per_nvlink_domain=4"]  # the same rack with each tray its own domain


def _ep64(overrides=()):
    """Qwen3-30B-A3B decode, expert parallelism over 64 GPUs (16 trays of one rack)."""
    return forward("qwen3-30b-a3b", RACK, nodes=16, arch="moe", phase="decode", batch=32, seq_len=256,
                   overrides=list(overrides))


def test_ep64_on_one_nvl72_rack_moves_zero_bytes_over_the_network():
    r = _ep64()
    assert r["layout"]["ep"] == 64
    assert r["comm_bytes"]["all_to_all"]["intra_node"] > 0
    assert all(v["inter_node"] == 0.0 for v in r["comm_bytes"].values())
    # the same GPUs with a domain per tray: the dispatch crosses trays over the NICs, and takes longer
    t = _ep64(TRAYS)
    assert t["comm_bytes"]["all_to_all"]["inter_node"] > 0
    assert t["breakdown_s"]["dispatch"] > r["breakdown_s"]["dispatch"]


def test_paths_use_nvlink_inside_a_domain_and_the_nic_between_domains():
    cl = build_cluster(load_hardware(RACK), 36)  # two racks
    assert cl.gpus_per_domain == 72
    inside = cl.path(0, 71)  # tray 0 to tray 17 of rack 0
    assert len(inside) == 2 and not cl.link_is_network[inside].any()
    across = cl.path(0, 72)  # rack 0 to rack 1
    assert cl.link_is_network[across].all() and len(across) >= 4


def test_domain_defaults_to_the_node():
    hw = load_hardware("h100-sxm")
    assert hw.node.gpus_per_nvlink_domain is None and hw.node.gpus_per_domain == 8
    assert build_cluster(hw, 2).gpus_per_domain == 8
    base = forward("qwen3-30b-a3b", "h100-sxm", nodes=2, arch="moe", phase="decode", batch=16, seq_len=128)
    same = forward("qwen3-30b-a3b", "h100-sxm", nodes=2, arch="moe", phase="decode", batch=16, seq_len=128,
                   overrides=["hardware.node.gpus_per_nvlink_domain=8"])
    assert base["latency_s"] == same["latency_s"] and base["comm_bytes"] == same["comm_bytes"]
    assert base["comm_bytes"]["all_to_all"]["inter_node"] > 0


def test_domain_must_hold_whole_nodes():
    with pytest.raises(SpecError, match="gpus_per_nvlink_domain"):
        forward("qwen3-30b-a3b", RACK, nodes=2, overrides=["hardware.node.gpus_per_nvlink_domain=6"])


@settings(max_examples=10, deadline=None)
@given(collective=st.sampled_from(["all_reduce", "all_gather", "all_to_all"]), trays=st.sampled_from([2, 4]),
       nbytes=st.sampled_from([64e3, 4e6, 64e6]))
def test_collectives_across_trays_of_a_domain_are_priced_as_nvlink(collective, trays, nbytes):
    """NCCL's MNNVL: GPUs on several trays of one domain run the one-node algorithms (NVLink, NVLS); the same
    GPUs with a domain per tray go over the NICs, at a ninth of the rate here: never faster."""
    hw = load_hardware(RACK)
    trays_hw = hw.model_copy(update={"node": hw.node.model_copy(update={"gpus_per_nvlink_domain": None})})
    n = 4 * trays
    rack = predict(hw, collective, n, nbytes, "auto", trays)
    assert rack <= predict(trays_hw, collective, n, nbytes, "auto", trays)


def test_foe_cluster_may_span_trays_inside_a_domain_but_not_cross_one():
    model = load_model("deepseek-v3")
    p = build_placement("foe", 16, ["placement.foe.clusters=8"])  # 64 GPUs: 8 per cluster, 2 trays each
    lay = resolve_foe(model, 4, p, gpus_per_domain=72)
    assert (lay.clusters, lay.gpus_per_cluster) == (8, 8)
    with pytest.raises(SpecError, match="inside one 4-GPU node"):
        resolve_foe(model, 4, p)  # domain = tray: an 8-GPU cluster would cross trays
    # 32 GPUs in domains of 8 (2 trays each): clusters of 16 GPUs would cross a domain boundary
    p2 = build_placement("foe", 8, ["placement.foe.clusters=2"])
    with pytest.raises(SpecError, match="inside one 8-GPU NVLink domain"):
        resolve_foe(model, 4, p2, gpus_per_domain=8)


def test_planner_offers_foe_clusters_across_trays_of_a_rack():
    """recommend's enumeration resolves FoE with the domain: Qwen3-235B-A22B's 4 clusters of 16 GPUs on 16 trays
    (one rack) are a candidate; on 8-GPU H100 nodes the same 64 GPUs offer none."""
    from simfoe.planner.layouts import enumerate_layouts

    model = load_model("qwen3-235b-a22b")

    def foe_16(hw_name, nodes):
        e = enumerate_layouts(model, {hw_name: load_hardware(hw_name)}, nodes, archs=("foe",))
        return [c for c in e.candidates if c.nodes == nodes and ("placement.foe.gpus_per_cluster", 16) in c.settings]

    assert foe_16(RACK, 16)
    assert not foe_16("h100-sxm", 8)
