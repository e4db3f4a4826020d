"""ALTO pipelines: queueing-theory checks, stream vs batch, aggregation, validation, determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from simfoe.errors import SpecError
from simfoe.pipelines.engine import AggregationError, Simulation, simulate
from simfoe.pipelines.metrics import max_load_meeting, parse_rates, summarize
from simfoe.pipelines.spec import load_pipeline

EXP1 = {"dist": "exponential", "mean": 1.0}


def _spec(stages, **kw):
    return load_pipeline({"name": "t", "stages": stages, **kw})


def erlang_c_sojourn(lam: float, mu: float, c: int) -> float:
    """Mean time in system of M/M/c: Erlang-C wait + 1/mu."""
    a = lam / mu
    rho = a / c
    top = a**c / math.factorial(c) / (1 - rho)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait / (c * mu - lam) + 1 / mu


@pytest.mark.slow
def test_mm1_mean_latency():
    r = simulate(_spec([{"name": "a", "service_s": EXP1}]), "stream", rate=0.5, duration=400_000, seed=1)
    assert r.latencies.mean() == pytest.approx(1 / (1.0 - 0.5), rel=0.03)


@pytest.mark.slow
def test_two_mm1_in_series_add_up():
    spec = _spec([{"name": "a", "service_s": EXP1, "to": ["b"]},
                  {"name": "b", "service_s": {"dist": "exponential", "mean": 0.5}}])
    r = simulate(spec, "batch", rate=0.5, duration=400_000, seed=2)
    assert r.latencies.mean() == pytest.approx(1 / (1 - 0.5) + 1 / (2 - 0.5), rel=0.03)


@pytest.mark.slow
def test_mmc_shared_queue_matches_erlang_c():
    spec = _spec([{"name": "a", "instances": 1, "concurrency": 3, "service_s": EXP1}])
    r = simulate(spec, "stream", rate=2.4, duration=200_000, seed=3)
    assert r.latencies.mean() == pytest.approx(erlang_c_sojourn(2.4, 1.0, 3), rel=0.03)


def test_design_md_minimal_spec_parses_and_runs():
    spec = _spec([
        {"name": "generate", "instances": 2, "service_s": {"dist": "lognormal", "mean": 0.4, "std": 0.3},
         "outputs": {"dist": "normal", "mean": 3.3, "std": 1.8}, "to": ["retrieve"]},
        {"name": "retrieve", "instances": 4, "service_s": {"dist": "exponential", "mean": 0.05}, "stateful": True},
    ], )
    out = summarize(simulate(spec, "stream", rate=2, duration=100, seed=0))
    assert {"offered_rps", "achieved_rps", "completed", "latency_s"} <= set(out)
    assert {"mean", "p50", "p99"} <= set(out["latency_s"])
    assert out["completed"] == out["sent"] > 0
    assert out["stages"]["retrieve"]["aggregates"] == out["completed"]  # key = request by default


def test_stream_equals_batch_without_fanout():
    spec = _spec([{"name": "a", "instances": 2, "service_s": EXP1, "to": ["b", "c"]},
                  {"name": "b", "service_s": {"dist": "gamma", "mean": 0.3, "std": 0.2}, "to": ["d"]},
                  {"name": "c", "instances": 3, "service_s": {"dist": "lognormal", "mean": 0.5, "std": 0.5}, "to": ["d"]},
                  {"name": "d", "instances": 2, "stateful": True, "key": "request", "service_s": 0.1}])
    s = simulate(spec, "stream", 1.2, 2000, seed=5)
    b = simulate(spec, "batch", 1.2, 2000, seed=5)
    assert np.array_equal(s.latencies, b.latencies)


# ------------------------------------------------------------------ random specs (hypothesis)
DIST = hst.sampled_from([
    {"dist": "exponential", "mean": 0.2}, {"dist": "lognormal", "mean": 0.3, "std": 0.4},
    {"dist": "gamma", "mean": 0.1, "std": 0.05}, {"dist": "constant", "mean": 0.05},
])
FAN = hst.sampled_from([{"dist": "normal", "mean": 2.5, "std": 1.3}, {"dist": "constant", "mean": 3},
                        {"dist": "exponential", "mean": 2.0}])


@hst.composite
def chain_specs(draw, concurrency=None):
    """A random chain LM -> (LM with parts) -> stateful aggregator -> optional tail."""
    conc = concurrency or draw(hst.integers(1, 3))
    stages = [{"name": "s0", "instances": draw(hst.integers(1, 3)), "concurrency": conc, "service_s": draw(DIST),
               "outputs": draw(FAN), "level": "claim", "to": ["s1"]}]
    s1 = {"name": "s1", "instances": draw(hst.integers(1, 3)), "concurrency": conc, "service_s": draw(DIST),
          "outputs": draw(FAN), "level": "query", "to": ["agg"]}
    if draw(hst.booleans()):
        s1["parts"] = {"count": draw(FAN), "level": "token"}
    stages.append(s1)
    keys = ["request", "claim"] + (["query"] if "parts" in s1 else [])
    agg = {"name": "agg", "instances": draw(hst.integers(1, 4)), "concurrency": conc, "stateful": True,
           "key": draw(hst.sampled_from(keys)), "service_s": draw(DIST)}
    if draw(hst.booleans()):
        agg["to"] = ["tail"]
        stages.append({"name": "tail", "instances": 2, "concurrency": conc, "service_s": draw(DIST)})
    stages.insert(2, agg)
    return {"name": "rand", "stages": stages}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=chain_specs(concurrency=10_000), seed=hst.integers(0, 10_000))
def test_stream_never_worse_than_batch_unloaded(d, seed):
    spec = load_pipeline(d)
    arrivals = np.arange(20) * 1000.0  # far apart: no request sees another
    s = Simulation(spec, "stream", "round-robin", seed).run(1.0, 20_000.0, arrivals)
    b = Simulation(spec, "batch", "round-robin", seed).run(1.0, 20_000.0, arrivals)
    assert (s.latencies <= b.latencies + 1e-9).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=chain_specs(), seed=hst.integers(0, 10_000), mode=hst.sampled_from(["stream", "batch"]),
       routing=hst.sampled_from(["round-robin", "hash-all", "aggregation-aware", "least-loaded", "prompt-aware"]))
def test_aggregation_conserves_items(d, seed, mode, routing):
    spec = load_pipeline(d)
    sim = Simulation(spec, mode, routing, seed)
    r = sim.run(3.0, 30.0)  # engine raises AggregationError on a lost / duplicated / misrouted item
    agg = next(st for st in r.stages if st.spec.name == "agg")
    s1 = next(st for st in r.stages if st.spec.name == "s1")
    assert agg.items_in == agg.agg_items == s1.units_out  # every unit s1 emitted was aggregated once
    assert agg.aggs_done == agg.aggs_created
    assert len(r.latencies) == r.sent


@settings(max_examples=30, deadline=None)
@given(d=chain_specs(), seed=hst.integers(0, 10_000))
def test_dumped_spec_runs_the_same(d, seed):
    """A spec dumped to a mapping (as the run record stores it) validates back equal and runs the same work."""
    spec = load_pipeline(d)
    again = load_pipeline(spec.model_dump())
    assert again == spec
    arrivals = np.arange(5) * 2.0
    a = Simulation(spec, "stream", None, seed).run(1.0, 10.0, arrivals)
    b = Simulation(again, "stream", None, seed).run(1.0, 10.0, arrivals)
    assert np.array_equal(a.latencies, b.latencies)


def test_duplicated_item_is_caught(monkeypatch):
    spec = load_pipeline("factool")
    sim = Simulation(spec, "stream", "aggregation-aware", 0)
    orig = Simulation._count
    seen = []

    def dup(self, inst, item):
        orig(self, inst, item)
        if not seen:
            seen.append(1)
            orig(self, inst, item)

    monkeypatch.setattr(Simulation, "_count", dup)
    with pytest.raises(AggregationError):
        sim.run(2.0, 20.0)


def test_deterministic_given_seed():
    spec = load_pipeline("factool")
    a = summarize(simulate(spec, "stream", 8, 60, seed=7))
    b = summarize(simulate(spec, "stream", 8, 60, seed=7))
    c = summarize(simulate(spec, "stream", 8, 60, seed=8))
    assert a == b
    assert a["latency_s"] != c["latency_s"]


# ------------------------------------------------------------------ validation
OK = {"name": "a", "service_s": 0.1}


@pytest.mark.parametrize("stages,field", [
    ([{**OK, "to": ["zz"]}], "stages.a.to"),
    ([{**OK, "to": ["b"]}, {"name": "b", "service_s": 0.1, "to": ["a"]}], "stages.to"),
    ([{**OK, "instances": 0}], "stages.a.instances"),
    ([{**OK, "service_s": {"dist": "gamma", "mean": -1, "std": 1}}], "stages.a.service_s.mean"),
    ([{**OK, "service_s": {"dist": "normal", "mean": 1}}], "stages.a.service_s.std"),
    ([{"name": "a"}], "stages.a.service_s"),
    ([{**OK, "stateful": True}], "stages.a.stateful"),
    ([{**OK, "to": ["b"]}, {"name": "b", "service_s": 0.1, "stateful": True}], "stages.b.key"),
    ([{**OK, "outputs": 3, "to": ["b"]}, {"name": "b", "service_s": 0.1, "stateful": True, "key": "claim"}],
     "stages.b.key"),
    ([{**OK, "to": [{"stage": "b", "unit": "token"}]}, {"name": "b", "service_s": 0.1}], "stages.a.to.b.unit"),
    ([OK, {"name": "b", "service_s": 0.1}], "stages.b"),
    ([{**OK, "placement": {"nodes": [0, 1]}}], "stages.a.placement.nodes"),
])
def test_validation_errors(stages, field):
    with pytest.raises(SpecError) as e:
        _spec(stages)
    assert e.value.field == field


def test_bad_routing_and_overrides():
    with pytest.raises(SpecError):
        _spec([OK], routing="random")
    spec = load_pipeline("factool", ["stages.bm25.service_s.mean=0.003", "stages.bm25.instances=2"])
    assert spec.stage("bm25").service_s.mean == 0.003 and spec.stage("bm25").instances == 2
    with pytest.raises(SpecError):
        load_pipeline("factool", ["stages.nosuch.instances=2"])


@pytest.mark.parametrize("overrides,field,value", [
    (["stages.nosuch.instances=2"], "stages", "nosuch"),
    (["stages.bm25.instance=2"], "stages.bm25", "instance"),
    (["stages.bm25.instances=0"], "stages.bm25.instances", 0),
    (["stages.bm25.service_s.mean=-1"], "stages.bm25.service_s.mean", -1),
    (["stages.question_answering.prefix_cache.reduction=2"], "stages.question_answering.prefix_cache.reduction", 2),
    (["stages.bm25.kind=gpu"], "stages.bm25.kind", "gpu"),
    (["stages.bm25.key=sentence"], "stages.bm25.key", "sentence"),
    (["routing=random"], "routing", "random"),
    (["network.inter_node_bandwidth=0"], "network.inter_node_bandwidth", 0),
    (["prompts.weights=[0, 0]"], "prompts.weights", [0.0, 0.0]),
    (["bogus=1"], "--set", "bogus"),
    (["stages.bm25"], "--set", "stages.bm25"),
])
def test_spec_errors_name_the_field_and_value(overrides, field, value):
    """--set goes through the specs' set_path; a bad value is one SpecError naming the field by stage name."""
    with pytest.raises(SpecError) as e:
        load_pipeline("factool", overrides)
    assert (e.value.field, e.value.value) == (field, value)
    assert "\n" not in str(e.value) and e.value.allowed


def test_unknown_stage_key_lists_the_allowed_keys():
    with pytest.raises(SpecError) as e:
        _spec([{**OK, "servce_s": 0.2}])
    assert e.value.field == "stages.a.servce_s" and "service_s" in e.value.allowed


def test_preset_yaml_loads_as_written_and_round_trips():
    """The preset's keys keep their meaning (derived levels, parts level, kinds), and the dumped spec
    validates back to an equal spec."""
    spec = load_pipeline("factool")
    q = spec.stage("query_generation")
    assert (q.level, q.parts_level, q.kind, q.nodes) == ("query", "token", "lm", (0, 0, 0))
    assert [(e.stage, e.unit) for e in q.to] == [("bm25", None), ("colbert_encoder", "query")]
    assert spec.stage("bm25").kind == "compute" and spec.prompts.weights == (0.4, 0.3, 0.2, 0.1)
    assert load_pipeline(spec.model_dump()) == spec


# ------------------------------------------------------------------ network, routing, metrics
def test_cross_node_transfer_costs_latency_plus_bytes_over_bandwidth():
    net = {"inter_node_bandwidth": 1e6, "inter_node_latency": 0.01, "intra_node_latency": 0.0}
    stages = [{**OK, "item_bytes": 5e4, "to": ["b"], "placement": {"node": 0}},
              {"name": "b", "service_s": 0.2, "placement": {"node": 1}}]
    r = simulate(_spec(stages, network=net), "stream", 1, 10, seed=0, arrivals=np.array([0.0, 100.0]))
    assert r.latencies == pytest.approx([0.1 + 0.01 + 0.05 + 0.2] * 2)
    stages[1]["placement"] = {"node": 0}
    r = simulate(_spec(stages, network=net), "stream", 1, 10, seed=0, arrivals=np.array([0.0]))
    assert r.latencies == pytest.approx([0.3])


def test_hash_all_pins_requests_and_prompt_aware_gets_cache_hits():
    spec = load_pipeline("factool", ["stages.question_answering.prefix_cache.reduction=0.3",
                                     "stages.question_answering.prefix_cache.capacity=1"])
    hits = {}
    for routing in ("round-robin", "prompt-aware"):
        r = simulate(spec, "stream", 6, 120, seed=1, routing=routing)
        hits[routing] = sum(i.hits for i in r.stages[0].instances)
    assert hits["prompt-aware"] > 1.5 * hits["round-robin"]


def test_metrics_helpers():
    assert parse_rates("1:5:2") == [1, 3, 5]
    assert parse_rates("2,4") == [2, 4]
    with pytest.raises(SpecError):
        parse_rates("5:1")
    pts = [{"achieved_rps": 3, "valid_point": True, "latency_s": {"p50": 2}},
           {"achieved_rps": 6, "valid_point": True, "latency_s": {"p50": 5}},
           {"achieved_rps": 9, "valid_point": False, "latency_s": {"p50": 1}}]
    assert max_load_meeting(pts, 4.0) == 3


def _pt(rate, p50, valid=True):
    return {"offered_rps": rate, "achieved_rps": 0.9 * rate, "valid_point": valid, "latency_s": {"p50": p50}}


def test_load_at_target_says_found_not_reached_or_none():
    """Hand-made points: the limit is only a limit when a higher rate missed the target (or was dropped)."""
    from simfoe.pipelines.metrics import load_at_target, load_at_target_text

    found = load_at_target([_pt(2, 1.0), _pt(4, 3.0), _pt(6, 5.0)], 4.0)
    assert (found["max_load_status"], found["max_load_at_target_rps"]) == ("found", pytest.approx(3.6))
    assert load_at_target_text(found, 4.0) == "3.60"
    saturated = load_at_target([_pt(2, 1.0), _pt(4, 3.0), _pt(6, 2.0, valid=False)], 4.0)
    assert saturated["max_load_status"] == "found" and saturated["dropped_rates_rps"] == [6]
    never = load_at_target([_pt(2, 1.0), _pt(4, 3.0)], 4.0)
    assert (never["max_load_status"], never["max_load_at_target_rps"]) == ("not_reached", None)
    assert never["meets_target_up_to_rps"] == pytest.approx(3.6)
    assert load_at_target_text(never, 4.0) == "not reached up to 4 req/s"
    none = load_at_target([_pt(2, 5.0), _pt(4, 6.0)], 4.0)
    assert none["max_load_status"] == "none_met" and none["meets_target_up_to_rps"] is None
    assert max_load_meeting([_pt(2, 1.0), _pt(4, 3.0)], 4.0) == never["meets_target_up_to_rps"]


def test_one_api_for_cli_whatif_and_sweeps():
    """whatif and a sweep's pipeline kind run the same simfoe.pipelines.run_pipeline: same inputs, same numbers."""
    import simfoe.pipelines as pl
    import simfoe.whatif as wi
    from simfoe.sweep.scenarios import get_kind

    ov = ("stages.bm25.instances=2",)
    ref = pl.run_pipeline("factool", "batch", 4.0, 30.0, 3, "least-loaded", ov)
    row = wi.run(wi.scenario("pipeline", spec="factool", mode="batch", rate=4.0, duration=30.0, seed=3,
                             pipeline_routing="least-loaded", overrides=ov))
    assert row["latency_s.p99"] == ref["latency_s"]["p99"] and row["completed"] == ref["completed"]
    swept = get_kind("pipeline").function()(spec="factool", mode="batch", rate=4.0, duration=30.0, seed=3,
                                            routing="least-loaded", overrides=ov)
    assert swept == ref


def test_hardware_profile_sets_network_and_cross_node_transfers_cost_time():
    """Instances placed on two nodes of an A100 profile pay its calibrated NIC rate and latency."""
    from simfoe.pipelines.spec import parse_pipeline as parse_spec
    from simfoe.specs.io import load_hardware

    hw = load_hardware("a100-sxm")

    def spec(nodes_b):
        return {
            "name": "two-node", "hardware": "a100-sxm", "nodes": 2,
            "stages": [
                {"name": "a", "instances": 1, "service_s": {"dist": "constant", "mean": 0.01}, "to": ["b"],
                 "item_bytes": 50e6},
                {"name": "b", "instances": 1, "service_s": {"dist": "constant", "mean": 0.01},
                 "placement": {"node": nodes_b}},
            ],
        }

    s = parse_spec(spec(1))
    assert s.network.inter_node_bandwidth == pytest.approx(hw.network.nic_bandwidth * hw.collectives.network.efficiency)
    same = summarize(simulate(parse_spec(spec(0)), "stream", rate=0.5, duration=200, seed=1))
    cross = summarize(simulate(s, "stream", rate=0.5, duration=200, seed=1))
    # 50 MB over the NIC instead of NVLink: the extra latency per request is the difference of the transfer times
    extra = 50e6 / s.network.inter_node_bandwidth - 50e6 / s.network.intra_node_bandwidth
    assert cross["latency_s"]["mean"] - same["latency_s"]["mean"] == pytest.approx(extra, rel=0.05)
    with pytest.raises(SpecError, match="placement"):
        parse_spec({**spec(2)})
