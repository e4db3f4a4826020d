"""Engine profiles (simfoe.specs.engine, ``--engine``) and the host overheads and scheduling order they set."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from simfoe.errors import SpecError
from simfoe.serving.api import simulate
from simfoe.serving.engine import EngineConfig, engine_config, profile_config
from simfoe.serving.step_models import ConstantStep, LinearStep
from simfoe.specs.engine import engine_path, engine_presets, load_engine
from simfoe.workloads.closed_loop import ClosedLoop

STEP = LinearStep(base_s=0.01, per_prefill_token_s=1e-5)  # an iteration: 10 ms + 10 us per prompt token


def _loop(concurrency=1, isl=100, osl=3, prompts=4):
    return ClosedLoop(concurrency=concurrency, isl=isl, osl=osl, num_prompts=prompts, warmup=0)


def test_concurrency_one_ttft_is_request_overhead_plus_one_prefill_step():
    # by hand: TTFT = 100 ms (API server) + one iteration of 100 prompt tokens (10 + 1 ms) + 2 ms + 1 x 1 ms
    # (host time of an iteration of one sequence); TPOT = one decode iteration 10 ms + 2 ms + 1 ms
    s = simulate(_loop(), STEP, 10**6, request_overhead_s=0.1, step_overhead_s=0.002,
                 step_overhead_per_seq_s=0.001).summary
    assert s["ttft_s"]["mean"] == pytest.approx(0.1 + 0.011 + 0.003)
    assert s["tpot_s"]["mean"] == pytest.approx(0.013)
    bare = simulate(_loop(), STEP, 10**6).summary
    assert bare["ttft_s"]["mean"] == pytest.approx(0.011) and bare["tpot_s"]["mean"] == pytest.approx(0.010)


def test_step_overhead_grows_with_the_batch():
    # 4 clients decoding together: every iteration carries 4 sequences, so 1 ms per sequence adds 4 ms a token
    s = simulate(_loop(concurrency=4, osl=20, prompts=4), STEP, 10**6, step_overhead_per_seq_s=0.001).summary
    assert s["tpot_s"]["mean"] == pytest.approx(0.014)


def test_request_overhead_is_a_delay_not_a_queue():
    # two requests sent at 0 with 100 ms each of API-server time overlap: both are schedulable at 0.1 s and share
    # one 10 ms prefill iteration
    s = simulate(_loop(concurrency=2, osl=2, prompts=2), ConstantStep(0.01), 10**6, request_overhead_s=0.1)
    assert s.records["ttft_s"].tolist() == pytest.approx([0.11, 0.11])


@settings(max_examples=25, deadline=None)
@given(ov=st.floats(0.0, 0.05), isl=st.integers(1, 3000), c=st.integers(1, 6))
def test_request_overhead_shifts_a_lone_client_and_bounds_every_ttft(ov, isl, c):
    # one client: every request is the same run ``ov`` later; several: a request is never schedulable before
    # its own ``ov`` (requests that arrive apart may meet in one iteration, so a TTFT can also get shorter)
    one = _loop(isl=isl, osl=4, prompts=3)
    base = simulate(one, STEP, 10**6).records
    slow = simulate(one, STEP, 10**6, request_overhead_s=ov).records
    assert slow["ttft_s"].to_numpy() == pytest.approx(base["ttft_s"].to_numpy() + ov)
    assert slow["tbt_mean_s"].to_numpy() == pytest.approx(base["tbt_mean_s"].to_numpy())
    many = simulate(_loop(concurrency=c, isl=isl, osl=4, prompts=2 * c), STEP, 10**6, request_overhead_s=ov).records
    assert many["ttft_s"].min() >= ov + 0.01 - 1e-12  # the API server, then at least one 10 ms iteration


def _trace(arrivals, prompts, outputs):
    n = len(arrivals)
    return SimpleNamespace(arrival_s=np.array(arrivals, float), prompt_tokens=np.array(prompts),
                           output_tokens=np.array(outputs), request_id=np.arange(n))


def test_prefill_first_makes_decodes_wait_for_a_prompt():
    # A decodes 10 tokens, one per 10 ms iteration; B's prompt arrives at 45 ms. chunked: B's prefill rides in
    # A's next iteration; prefill-first: that iteration is B's prompt alone, so A finishes one iteration later
    t = _trace([0.0, 0.045], [100, 100], [10, 2])
    fin = {pol: simulate(t, ConstantStep(0.01), 10**6, scheduler=pol).records["e2e_s"].tolist()
           for pol in ("chunked", "prefill-first")}
    assert fin["chunked"][0] == pytest.approx(0.10)
    assert fin["prefill-first"][0] == pytest.approx(0.11)
    assert fin["chunked"][1] == fin["prefill-first"][1] == pytest.approx(0.070 - 0.045)  # prompt 50-60 ms, decode 60-70


def test_prefill_first_equals_chunked_without_prompts_in_flight():
    # every prompt arrives alone into an idle engine: nothing to mix, the two orders give the same run
    t = _trace([0.0, 1.0, 2.0], [500, 800, 100], [5, 7, 3])
    a = simulate(t, STEP, 10**6, scheduler="chunked").records
    b = simulate(t, STEP, 10**6, scheduler="prefill-first").records
    assert a["e2e_s"].tolist() == b["e2e_s"].tolist()


def test_overlap_scheduler_runs_an_arrival_two_iterations_later():
    # 10 ms iterations; A arrives at 0 into an idle engine (taken at once), B at 15 ms, during iteration 2
    # (10-20 ms). Without the overlap scheduler B runs in iteration 3 (20-30 ms): TTFT 15 ms. With it, the batch of
    # iteration 3 was formed when iteration 2 began, so B is fetched at 20 ms and runs in iteration 4: TTFT 25 ms
    t = _trace([0.0, 0.015], [100, 100], [10, 3])
    plain = simulate(t, ConstantStep(0.01), 10**6).records
    lag = simulate(t, ConstantStep(0.01), 10**6, overlap_scheduler=True).records
    assert plain["ttft_s"].tolist() == pytest.approx([0.01, 0.015])
    assert lag["ttft_s"].tolist() == pytest.approx([0.01, 0.025])
    assert lag["e2e_s"][0] == pytest.approx(0.10)  # A's iterations are not delayed


def test_overlap_scheduler_keeps_a_lone_client_at_one_prefill():
    # one client finds the engine idle every time: its request is taken at once, TTFT = one prefill (11 ms)
    s = simulate(_loop(), STEP, 10**6, overlap_scheduler=True).summary
    assert s["ttft_s"]["mean"] == pytest.approx(0.011) and s["tpot_s"]["mean"] == pytest.approx(0.010)


def test_only_trtllm_runs_the_overlap_scheduler_and_says_why(tmp_path):
    assert [load_engine(n).overlap_scheduler for n in engine_presets()] == [False, True, False]
    assert engine_config("trtllm").overlap_scheduler and load_engine("trtllm").provenance["overlap_scheduler"]
    raw = yaml.safe_load(engine_path("vllm").read_text())
    raw["overlap_scheduler"] = True
    f = tmp_path / "e.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="provenance lacks overlap_scheduler"):
        load_engine(str(f))


def test_bundled_profiles_load_and_name_their_sources():
    assert engine_presets() == ["sglang", "trtllm", "vllm"]
    for name in engine_presets():
        p = load_engine(name)
        assert p.name == name and p.version
        for field in ("scheduler", "token_budget", "max_batch", "overheads.request_s", "overheads.step_s"):
            assert p.provenance[field].strip()
    assert load_engine("sglang").scheduler == "prefill-first"
    assert load_engine("trtllm").scheduler == "whole-prompt"


def test_profile_config_sets_knobs_and_keyword_overrides_win():
    p = load_engine("vllm")
    cfg = engine_config("vllm")
    assert cfg == profile_config(p)
    assert (cfg.engine, cfg.scheduler, cfg.token_budget, cfg.max_batch) == ("vllm", p.scheduler, p.token_budget,
                                                                           p.max_batch)
    assert cfg.request_overhead_s == p.overheads.request_s
    assert engine_config("vllm", max_batch=7).max_batch == 7
    assert engine_config(None) == EngineConfig()  # no profile: the defaults, no overheads


def test_profile_without_a_source_or_with_a_bad_value_is_refused(tmp_path):
    raw = yaml.safe_load(engine_path("vllm").read_text())
    del raw["provenance"]["token_budget"]
    f = tmp_path / "e.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="provenance lacks token_budget"):
        load_engine(str(f))
    raw = yaml.safe_load(engine_path("vllm").read_text())
    raw["scheduler"] = "fifo"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as e:
        load_engine(str(f))
    assert e.value.field == "engine.scheduler"
    with pytest.raises(SpecError) as e:
        load_engine("tgi")
    assert e.value.field == "engine" and "vllm" in e.value.allowed


def test_negative_overhead_is_refused():
    with pytest.raises(SpecError) as e:
        simulate(_loop(), STEP, 10**6, step_overhead_s=-1e-3)
    assert e.value.field == "step_overhead_s"


def test_serve_engine_flag(fake_forward, capsys, refused):
    from simfoe.cli import main

    argv = ["serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe", "--concurrency", "4",
            "--isl", "256", "--osl", "8", "--num-prompts", "8"]
    assert main([*argv, "--engine", "sglang", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    p = load_engine("sglang")
    assert (r["engine"], r["scheduler"], r["token_budget"], r["max_batch"]) == ("sglang", "prefill-first",
                                                                               p.token_budget, p.max_batch)
    assert main([*argv, "--engine", "sglang", "--max-batch", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_batch"] == 3  # a flag given wins over the profile
    assert main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["engine"], r["scheduler"], r["max_batch"], r["token_budget"]) == (None, "chunked", 256, 8192)
    refused([*argv, "--engine", "tgi"], "--engine", "'tgi'", "vllm")


def test_sweep_checks_a_serve_scenarios_engine_before_running():
    from simfoe.sweep.scenarios import check_model_options

    check_model_options({"engine": "trtllm"}, {})
    with pytest.raises(SpecError) as e:
        check_model_options({"engine": "tgi"}, {})
    assert e.value.field == "engine"


def test_run_serve_takes_an_engine_profile(fake_forward):
    from simfoe.serving.api import run_serve

    r = run_serve("mixtral-8x7b", "h100-sxm", 1, "moe", concurrency=2, isl=64, osl=4, num_prompts=2, engine="trtllm")
    assert (r["engine"], r["scheduler"], r["max_batch"]) == ("trtllm", "whole-prompt", load_engine("trtllm").max_batch)
    assert run_serve("mixtral-8x7b", "h100-sxm", 1, "moe", concurrency=2, isl=64, osl=4, num_prompts=2,
                     engine="trtllm", max_batch=5)["max_batch"] == 5
