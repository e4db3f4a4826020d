"""Bounds on the size of a run (issue 26.2): refused from the inputs, before anything is allocated,
with one line naming the flag, the estimate and the flag that raises the limit; the Python API
refuses too; raising the limit lets the run through."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simfoe.errors import SpecError
from simfoe.limits import (INSTANCE_GPUS, PIPELINE_ENGINE_REQUESTS, PIPELINE_REQUESTS, PLANNER_LAYOUTS,
                           SERVING_REQUESTS, Limit)

SERVE = ["serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe", "--trace", "longbench"]


def _boom(*a, **k):
    raise AssertionError("the run was started before its size was checked")


@pytest.fixture
def no_drawing(monkeypatch):
    """Drawing arrival times fails loudly, so a refusal is shown to come before it."""
    import simfoe.workloads.workload

    monkeypatch.setattr(simfoe.workloads.workload, "renewal_arrivals_until", _boom)


@pytest.fixture
def no_building(monkeypatch):
    """Building a forward model or enumerating layouts fails loudly (a refusal must come first)."""
    import simfoe.api
    import simfoe.forward
    import simfoe.planner.search

    monkeypatch.setattr(simfoe.api, "ForwardModel", _boom)
    monkeypatch.setattr(simfoe.forward, "ForwardModel", _boom)
    monkeypatch.setattr(simfoe.planner.search, "enumerate_layouts", _boom)


# ---- the Limit itself ---------------------------------------------------------------------------

TOY = Limit("requests", 100, "max_things", "--max-things", s_per_unit=0.5, bytes_per_unit=1000, source="hand-made")


def test_estimate_by_hand():
    # 7200 requests x 0.5 s = 3600 s = 60 min; x 1000 bytes = 7.2 MB
    assert TOY.estimate(7200) == "~7,200 requests, about 60 min and 7.2 MB at the measured 500 ms and 1,000 bytes per request"


@given(count=st.integers(0, 10**12), bound=st.integers(1, 10**9))
def test_check_refuses_exactly_above_the_bound(count, bound):
    if count <= bound:
        TOY.check("rate", 3.0, count, bound)
        return
    with pytest.raises(SpecError) as e:
        TOY.check("rate", 3.0, count, bound)
    msg = str(e.value)
    assert msg.startswith("rate: 3.0 is not allowed;")
    assert f"at most {bound:,} requests" in msg and f"~{count:,} requests" in msg
    assert "--max-things N" in msg and "max_things=N" in msg


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_a_bad_override_names_itself(bad):
    with pytest.raises(SpecError) as e:
        TOY.check("rate", 1.0, 1, bad)
    assert e.value.field == "max_things"


def test_every_limit_names_how_it_was_measured():
    for lim in (SERVING_REQUESTS, PIPELINE_REQUESTS, PIPELINE_ENGINE_REQUESTS, INSTANCE_GPUS, PLANNER_LAYOUTS):
        assert lim.default >= 1 and lim.s_per_unit > 0 and lim.bytes_per_unit > 0
        assert "s wall" in lim.source and "maxrss" in lim.source  # both costs come from a measurement


# ---- the Python API -----------------------------------------------------------------------------

def test_workload_refuses_before_drawing_and_override_lets_it_through(no_drawing, monkeypatch):
    from simfoe.workloads import make_workload

    with pytest.raises(SpecError) as e:
        make_workload("longbench", rate=2, duration=1e9)
    assert e.value.field == "rate" and "~2,000,000,000 requests" in str(e.value)
    monkeypatch.undo()
    assert len(make_workload("longbench", rate=2, duration=10, max_requests=100)) > 0
    with pytest.raises(SpecError, match="at most 10 requests"):
        make_workload("longbench", rate=2, duration=10, max_requests=10)


def test_trace_rows_count_too():
    from simfoe.workloads import make_workload

    with pytest.raises(SpecError) as e:  # the LongBench suite has thousands of rows
        make_workload("longbench", rate=1.0, max_requests=50)
    assert e.value.field == "trace" and "rows of the trace" in str(e.value)


def test_forward_api_refuses_a_huge_instance(no_building):
    import simfoe.api

    with pytest.raises(SpecError) as e:
        simfoe.api.forward("mixtral-8x7b", "h100-sxm", nodes=100_000)
    assert e.value.field == "nodes" and "~800,000 GPUs" in str(e.value)  # 100,000 nodes x 8 GPUs
    with pytest.raises(SpecError, match="at most 16,384 GPUs"):  # --set placement.nodes counts the same
        simfoe.api.forward("mixtral-8x7b", "h100-sxm", nodes=1, overrides=["placement.nodes=3000"])


def test_forward_api_override_lets_a_large_instance_through():
    import simfoe.api

    with pytest.raises(SpecError, match="at most 8 GPUs"):
        simfoe.api.forward("mixtral-8x7b", "h100-sxm", nodes=2, phase="decode", batch=8, seq_len=128, max_gpus=8)
    r = simfoe.api.forward("mixtral-8x7b", "h100-sxm", nodes=2, phase="decode", batch=8, seq_len=128, max_gpus=16)
    assert r["gpus"] == 16


def test_pipeline_api_refuses_and_override_lets_through():
    from simfoe.pipelines.engine import simulate
    from simfoe.pipelines.spec import load_pipeline

    spec = load_pipeline("factool")
    with pytest.raises(SpecError) as e:
        simulate(spec, "stream", rate=1e9, duration=720)
    assert e.value.field == "rate" and "~720,000,000,000 requests" in str(e.value)
    with pytest.raises(SpecError, match="at most 5 requests"):
        simulate(spec, "stream", rate=1.0, duration=10, max_requests=5)
    assert simulate(spec, "stream", rate=1.0, duration=10, max_requests=50).sent > 0


def test_engine_backed_pipeline_states_the_engine_stages_cost():
    """A pipeline with LM stages on the serving engine is estimated at their measured cost per request
    (1.8 ms, not the slot model's 0.97 ms): 10,000 requests ~ 18 s."""
    from simfoe.pipelines.engine import simulate
    from simfoe.pipelines.spec import load_pipeline

    with pytest.raises(SpecError) as e:
        simulate(load_pipeline("factool-engine"), "stream", rate=100.0, duration=100.0, max_requests=9_999)
    assert "~10,000 requests, about 18 s" in str(e.value) and "1.8 ms" in str(e.value)
    with pytest.raises(SpecError) as e:
        simulate(load_pipeline("factool"), "stream", rate=100.0, duration=100.0, max_requests=9_999)
    assert "about 10 s" in str(e.value) and "0.97 ms" in str(e.value)


def test_pipeline_curves_count_every_run():
    from simfoe.pipelines.curves import sweep
    from simfoe.pipelines.spec import load_pipeline

    # 2 variants x (10 + 20) req/s x 100 s = 6,000 requests, refused under a bound of 5,999
    with pytest.raises(SpecError, match="~6,000 requests"):
        sweep(load_pipeline("factool"), [("stream", None), ("batch", None)], [10.0, 20.0], 100.0, jobs=1,
              max_requests=5_999)


def test_layout_bound_covers_the_enumeration():
    from simfoe.planner.layouts import enumerate_layouts, layout_bound
    from simfoe.specs.io import load_hardware, load_model

    hw = {"h100-sxm": load_hardware("h100-sxm")}
    for name in ("mixtral-8x7b", "deepseek-v3", "llama-3-70b"):
        model = load_model(name)
        for n in (1, 2, 3):
            enum = enumerate_layouts(model, hw, n)
            tried = len(enum.candidates) + sum(1 for s in enum.skipped if not s.get("foe_not_federable"))
            assert tried <= layout_bound(model, 1, n), (name, n)
    # mixtral: 2 attentions x 2 EP sizes x 2 dispatch variants + 4 FoE cluster counts (8 KV heads) per node count
    assert layout_bound(load_model("mixtral-8x7b"), 2, 10) == 2 * 10 * 12


def test_recommend_api_refuses_before_enumerating(no_building):
    from simfoe.planner import recommend

    with pytest.raises(SpecError) as e:
        recommend("mixtral-8x7b", "h100-sxm", max_nodes=100_000, slo_ttft_p90=2.0)
    assert e.value.field == "--max-nodes" and "~1,200,000 layouts" in str(e.value)
    with pytest.raises(SpecError, match="at most 10 layouts"):
        recommend("mixtral-8x7b", "h100-sxm", max_nodes=1, slo_ttft_p90=2.0, max_layouts=10)


# ---- the CLI: exit 2, one line, nothing written --------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--rate", "2", "--duration", "1e9"], ["--rate", "~2,000,000,000 requests", "--max-requests N"]),
    (["--rate", "1e9", "--duration", "10"], ["--rate", "~10,000,000,000 requests", "--max-requests N"]),
    (["--nodes", "100000", "--rate", "1", "--duration", "10"], ["--nodes", "~800,000 GPUs", "--max-gpus N"]),
    (["--rate", "1", "--duration", "10", "--max-requests", "0"], ["--max-requests", "an integer >= 1"]),
    (["--rate", "1", "--duration", "10", "--max-gpus", "0"], ["--max-gpus", "an integer >= 1"]),
])
def test_serve_refuses_oversized_runs(refused, no_building, request, tmp_path, extra, words):
    if "--nodes" not in extra and "--max-gpus" not in extra:  # refused from --rate x --duration alone
        request.getfixturevalue("no_drawing")
    out, tl = tmp_path / "out", tmp_path / "serve.json"
    refused(SERVE + extra + ["--out", out, "--timeline", tl], *words)
    assert not out.exists() and not tl.exists()


def test_forward_refuses_a_huge_instance(refused, no_building, tmp_path):
    tl = tmp_path / "fwd.json"
    refused(["forward", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--nodes", "100000",
             "--timeline", tl, "--json"], "--nodes: 100000", "~800,000 GPUs", "--max-gpus N")
    assert not tl.exists()
    refused(["forward", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--max-gpus", "-1"], "--max-gpus")


@pytest.mark.parametrize("extra, words", [
    (["--rate", "1e9"], ["--rate", "~720,000,000,000 requests", "--max-requests N"]),
    (["--compare", "stream,batch", "--rates", "1000:30000:1000"], ["--rates", "'1000:30000:1000'", "--max-requests N"]),
    (["--compare", "stream,batch", "--rate", "1e5"], ["--rate", "--max-requests N"]),
    (["--rate", "1", "--max-requests", "0"], ["--max-requests", "an integer >= 1"]),
])
def test_pipeline_refuses_oversized_runs(refused, tmp_path, extra, words):
    out = tmp_path / "out"
    argv = ["pipeline", "--spec", "factool"] + extra + (["--out", out] if "--compare" in extra else [])
    refused(argv, *words)
    assert not out.exists()


def test_recommend_refuses_many_nodes(refused, no_building, tmp_path):
    html = tmp_path / "r.html"
    base = ["recommend", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--slo-ttft-p90", "2", "--out", html]
    refused(base + ["--max-nodes", "100000"], "--max-nodes: 100000", "~1,200,000 layouts", "--max-layouts N")
    refused(base + ["--max-nodes", "2", "--requests", "600000"], "--requests: 600000", "--max-requests N")
    refused(base + ["--max-layouts", "0"], "--max-layouts", "an integer >= 1")
    assert not html.exists() and not html.with_suffix(".json").exists()


def test_a_limit_is_not_part_of_a_sweep_scenarios_identity():
    from simfoe.sweep.spec import run_id

    opts = {"model": "mixtral-8x7b", "hardware": "h100-sxm", "nodes": 2}
    same = {run_id("forward", {**opts, "max_gpus": g}, {}) for g in (None, 64, 100_000)}
    assert same == {run_id("forward", opts, {})}  # a stored sweep stays up to date
    assert run_id("forward", {**opts, "nodes": 4}, {}) not in same


@pytest.mark.parametrize("model, nodes, per_layer, calls", [
    ("mixtral-8x7b", 1, False, 1),  # 32 identical MoE layers: one program, scaled
    ("mixtral-8x7b", 1, True, 32),  # one per MoE layer
    ("deepseek-v3", 4, False, 2),  # 3 dense + 58 MoE layers: one program of each kind
    ("deepseek-v3", 4, True, 59),  # the dense program + one per MoE layer
])
def test_forward_progress_counts_simulated_layer_programs(model, nodes, per_layer, calls):
    import simfoe.api

    seen = []
    simfoe.api.forward(model, "h100-sxm", nodes=nodes, phase="decode", batch=8, seq_len=128, per_layer=per_layer,
                       progress=seen.append)
    assert seen == [1] * calls


def test_progress_is_not_a_sweep_option():
    from simfoe.sweep.scenarios import get_kind

    params = get_kind("forward").parameters()
    assert "progress" not in params and "per_layer" in params
