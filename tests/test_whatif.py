"""What-if API: scenarios, changes (fields, dotted paths, multipliers), side-by-side DataFrames, plots."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

import simfoe.whatif as wi  # noqa: E402
from simfoe.errors import SpecError  # noqa: E402


def test_changes_fields_paths_and_multipliers():
    base = wi.scenario("forward", model="mixtral-8x7b", nodes=2)
    s = base.with_changes({"arch": "foe", "hardware.network.nic_bandwidth": "x2", "placement.foe.clusters": 4})
    assert s.arch == "foe" and s.nodes == 2
    ov = dict(o.split("=", 1) for o in s.overrides)
    assert float(ov["hardware.network.nic_bandwidth"]) == pytest.approx(2 * wi.load("hardware", "h100-sxm").network.nic_bandwidth)
    assert ov["placement.foe.clusters"] == "4"
    # a later change of the same path replaces the earlier one
    s2 = s.with_changes({"hardware.network.nic_bandwidth": 1e9})
    assert [o for o in s2.overrides if o.startswith("hardware.network")] == ["hardware.network.nic_bandwidth=1000000000.0"]
    with pytest.raises(SpecError):
        base.with_changes({"no_such_field": 1})
    with pytest.raises(SpecError):
        base.with_changes({"hardware.network.topology": "x2"})  # not numeric
    with pytest.raises(SpecError):
        wi.scenario("nope")


def test_whatif_forward_side_by_side():
    base = wi.scenario("forward", model="mixtral-8x7b", phase="decode", batch=32, seq_len=1024)
    df = wi.whatif(base, foe={"arch": "foe"}, nvlink_half={"hardware.node.nvlink_bandwidth": "x0.5"})
    assert list(df.index) == ["base", "foe", "nvlink_half"]
    assert df.loc["base", "vs_base"] == 1.0
    assert (df["latency_s"] > 0).all()
    # halving NVLink cannot make a one-node MoE pass faster
    assert df.loc["nvlink_half", "latency_s"] >= df.loc["base", "latency_s"]
    # FoE on one node with C = 8 KV heads (one cluster per GPU) has no all-to-all at all
    assert df.loc["foe", "comm_bytes.all_to_all.intra_node"] == 0
    assert df.loc["base", "comm_bytes.all_to_all.intra_node"] > 0
    ax = wi.plot(df)
    assert ax.get_legend() is not None


def test_module_is_callable_as_simfoe_whatif():
    import simfoe

    base = wi.scenario("forward", model="olmoe-1b-7b", phase="decode", batch=8, seq_len=512)
    df = simfoe.whatif(base, foe={"arch": "foe"}) if callable(getattr(simfoe, "whatif", None)) else wi(base, foe={"arch": "foe"})
    assert list(df.index) == ["base", "foe"]


def test_sweep_and_line_plot():
    base = wi.scenario("forward", model="olmoe-1b-7b", phase="prefill", seq_len=512)
    df = wi.sweep(base, "batch", [1, 4])
    assert list(df.index) == [1, 4]
    assert df.loc[4, "latency_s"] >= df.loc[1, "latency_s"]
    wi.plot(df, "latency_s")


def test_serve_and_pipeline_scenarios():
    s = wi.scenario("serve", model="olmoe-1b-7b", trace="longbench:lcc", rate=2.0, duration=10)
    df = wi.whatif(s, foe={"arch": "foe"})
    assert {"ttft_s.p90", "throughput.requests_per_s"} <= set(df.columns)
    p = wi.scenario("pipeline", spec="factool", rate=2.0, duration=20)
    dp = wi.whatif(p, batch={"mode": "batch"})
    assert "latency_s.p99" in dp.columns and dp.loc["batch", "changes"] == "mode=batch"


def test_serve_budget_scope_is_a_scenario_field():
    base = wi.scenario("serve", model="olmoe-1b-7b", trace="longbench", rate=2, duration=3,
                       overrides=("placement.moe.attention=dp",))
    df = wi.whatif(base, inst={"budget_scope": "instance"})
    assert list(df["ranks_per_replica"]) == [8, 1]
