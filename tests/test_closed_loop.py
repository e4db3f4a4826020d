"""Closed-loop workloads: N clients, each sending its next request when its last one finishes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from simfoe.errors import SpecError
from simfoe.serving import LinearStep, simulate
from simfoe.workloads.closed_loop import ClosedLoop

LIN = LinearStep(base_s=5e-3, per_prefill_token_s=2e-5, per_attn_pair_s=1e-9, per_decode_seq_s=1e-4,
                 per_kv_token_s=1e-7)
EXACT = {"cost": "memo", "bucket_bits": 20}  # memo keys exact below 2**20: every iteration priced exactly


def test_length_bounds_follow_vllm_random_range_ratio():
    # [floor(L (1 - r)), ceil(L (1 + r))], output at least 1 token
    assert ClosedLoop(1, 1000, 100, 0.5).bounds() == ((500, 1500), (50, 150))
    # in floating point, as vLLM computes it: 1000 x (1 - 0.8) = 199.99999999999997
    assert ClosedLoop(1, 1000, 100, 0.8).bounds() == ((199, 1800), (19, 180))
    assert ClosedLoop(1, 1000, 100).bounds() == ((1000, 1000), (100, 100))
    assert ClosedLoop(1, 7, 1, 0.5).bounds() == ((3, 11), (1, 2))


def test_length_bounds_below_as_sa_bench_draws_them():
    # [int(L r), L] (srt-slurm sa-bench, InferenceX benchmark_serving.py): int(1000 x 0.8) = 800
    assert ClosedLoop(1, 1000, 100, 0.8, range_style="below").bounds() == ((800, 1000), (80, 100))
    assert ClosedLoop(1, 1024, 3, 0.5, range_style="below").bounds() == ((512, 1024), (1, 3))
    assert ClosedLoop(1, 1000, 100, 1.0, range_style="below").bounds() == ((1000, 1000), (100, 100))
    assert "1000 x [0.8, 1]" in ClosedLoop(1, 1000, 100, 0.8, range_style="below").describe()
    with pytest.raises(SpecError, match=r"\(0, 1\]"):  # r = 0 would draw from [0, L], as the benchmark does
        ClosedLoop(1, 1000, 100, range_style="below")


@settings(max_examples=40, deadline=None)
@given(isl=hs.integers(1, 5000), osl=hs.integers(1, 2000), r=hs.floats(0, 0.99), n=hs.integers(1, 40),
       w=hs.integers(0, 10), seed=hs.integers(0, 1000))
def test_table_rows_warmups_first_then_lengths_in_bounds(isl, osl, r, n, w, seed):
    cl = ClosedLoop(3, isl, osl, r, n, w)
    t = cl.table(seed)
    (lo_i, hi_i), (lo_o, hi_o) = cl.bounds()
    assert len(t) == w + n and np.isnan(t.arrival_s).all()
    assert (t.prompt_tokens >= lo_i).all() and (t.prompt_tokens <= hi_i).all()
    assert (t.output_tokens >= lo_o).all() and (t.output_tokens <= hi_o).all()
    # warm-ups repeat the first measured request (vLLM sends input_requests[0] num_warmups times)
    assert (t.prompt_tokens[:w] == t.prompt_tokens[w]).all() and (t.output_tokens[:w] == t.output_tokens[w]).all()
    assert np.array_equal(cl.table(seed).prompt_tokens, t.prompt_tokens)


@pytest.mark.parametrize("kw,field", [
    ({"concurrency": 0}, "concurrency"), ({"isl": 0}, "isl"), ({"osl": -1}, "osl"),
    ({"random_range_ratio": 1.0}, "random_range_ratio"), ({"random_range_ratio": -0.1}, "random_range_ratio"),
    ({"num_prompts": 0}, "num_prompts"), ({"warmup": -1}, "warmup"), ({"concurrency": 2.5}, "concurrency"),
    ({"range_style": "above"}, "range_style"),
])
def test_bad_parameters_name_the_field(kw, field):
    args = {"concurrency": 4, "isl": 128, "osl": 16, **kw}
    with pytest.raises(SpecError) as e:
        ClosedLoop(**args)
    assert e.value.field == field


def test_num_prompts_defaults_to_ten_per_client():
    assert ClosedLoop(64, 1024, 1024).num_prompts == 640


@pytest.mark.parametrize("isl", [1, 100, 1024, 8000])
def test_one_client_ttft_is_one_prefill(isl):
    """Concurrency 1: every request finds the engine idle, so its TTFT is the step model's time for
    one prefill of its prompt (one chunk: the prompt fits the 8192-token budget), by hand:
    base + per token x L + per pair x L (L + 1) / 2."""
    r = simulate(ClosedLoop(1, isl, 8, 0.0, 5), LIN, 10**6, **EXACT)
    want = 5e-3 + 2e-5 * isl + 1e-9 * isl * (isl + 1) / 2
    assert r.records["ttft_s"].to_numpy() == pytest.approx(np.full(5, want), rel=1e-12)
    # and each request is sent the instant the previous one finished
    rec = r.records
    assert np.array_equal(rec["arrival_s"].to_numpy()[1:], rec["finish_s"].to_numpy()[:-1])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=hs.integers(1, 48), isl=hs.integers(1, 3000), osl=hs.integers(32, 300), seed=hs.integers(0, 100))
def test_littles_law_fixed_lengths(n, isl, osl, seed):
    """Fixed lengths, 10 prompts per client after 2 warm-ups per client: throughput = concurrency /
    mean latency within 2%. The clients are busy but for the drain at the end, when chunked prefills
    have staggered them by a few iterations; with 32+ output tokens a request spans 32+ iterations, so
    that is well under 2% of the run (with 1 output token it reached 2.1%: n=20, isl=410)."""
    s = simulate(ClosedLoop(n, isl, osl, 0.0, 10 * n, 2 * n), LIN, 400_000, seed=seed, **EXACT).summary
    assert s["requests"]["completed"] == 10 * n
    assert s["throughput"]["requests_per_s"] * s["e2e_s"]["mean"] == pytest.approx(n, rel=0.02)

@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=hs.integers(1, 48), isl=hs.integers(1, 3000), osl=hs.integers(32, 300))
def test_littles_law_holds_under_the_overlap_scheduler(n, isl, osl):
    """TensorRT-LLM's overlap scheduler delays when a request joins a batch, not whether the clients stay busy:
    throughput = concurrency / mean latency within 2% as above, and every request completes."""
    s = simulate(ClosedLoop(n, isl, osl, 0.0, 10 * n, 2 * n), LIN, 400_000, overlap_scheduler=True, **EXACT).summary
    assert s["requests"]["completed"] == 10 * n
    assert s["throughput"]["requests_per_s"] * s["e2e_s"]["mean"] == pytest.approx(n, rel=0.02)


@pytest.mark.parametrize("n", [4, 16, 64])
def test_littles_law_ranged_lengths_needs_a_long_run(n):
    """Lengths +-80%: the drain at the end, when clients run out of prompts one by one, is part of the
    measured span (as in the benchmark tool); with 50 prompts per client it is within 2%."""
    s = simulate(ClosedLoop(n, 1024, 128, 0.8, 50 * n, 2 * n), LIN, 400_000, **EXACT).summary
    assert s["throughput"]["requests_per_s"] * s["e2e_s"]["mean"] == pytest.approx(n, rel=0.02)


def test_never_more_in_flight_than_clients_and_warmups_left_out():
    n, w, p = 6, 12, 40
    r = simulate(ClosedLoop(n, 700, 40, 0.8, p, w), LIN, 400_000, token_times=True, **EXACT)
    rec = r.records
    assert len(rec) == p and r.summary["requests"]["total"] == p and rec["completed"].all()
    arr, fin = rec["arrival_s"].to_numpy(), rec["finish_s"].to_numpy()
    st = r.engine.store
    # the measured run starts when the last warm-up finished, with n requests at once
    assert arr.min() == st.last[:w].max() and (arr == arr.min()).sum() == n
    for t in arr:
        assert ((arr <= t) & (fin > t)).sum() <= n
    # every later request is sent the instant an earlier one finished
    assert set(arr[n:]) <= set(fin)
    # TBT pools the measured requests' gaps only
    assert r.summary["tbt_s"]["count"] == int((rec["generated_tokens"] - 1).sum())
    assert len(r.token_times(0)) == rec["output_tokens"][0]


def test_a_request_too_big_for_the_kv_cache_is_dropped_and_its_client_goes_on():
    r = simulate(ClosedLoop(2, 3000, 10, 0.0, 6), LIN, 2048, **EXACT)
    s = r.summary
    assert s["requests"]["dropped_by_reason"]["kv_capacity"] == 6 and s["requests"]["completed"] == 0


def test_closed_loop_with_open_loop_options_is_refused():
    from simfoe.serving import simulate_serving

    with pytest.raises(SpecError) as e:
        simulate_serving("m", "h", 1, "moe", ClosedLoop(2, 10, 10), rate=3.0, step_model=LIN, kv_capacity_tokens=10**5)
    assert e.value.field == "rate"


SERVE = ["serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe"]


def test_serve_closed_loop_json_has_the_workload_block(fake_forward, capsys):
    import json

    from simfoe.cli import main

    assert main(SERVE + ["--concurrency", "4", "--isl", "256", "--osl", "16", "--random-range-ratio", "0.5",
                         "--num-prompts", "20", "--warmup", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    w = out["workload"]
    assert w["kind"] == "closed-loop" and w["ignore_eos"] is True
    assert (w["concurrency"], w["isl"], w["osl"], w["random_range_ratio"], w["num_prompts"], w["warmup"]) == (
        4, 256, 16, 0.5, 20, 8)
    assert out["requests"]["total"] == out["requests"]["completed"] == 20


@pytest.mark.parametrize("extra,words", [
    (["--concurrency", "4", "--isl", "8", "--osl", "8", "--trace", "longbench"], ["--trace", "concurrency"]),
    (["--concurrency", "4", "--isl", "8", "--osl", "8", "--rate", "2"], ["--rate", "closed-loop"]),
    (["--isl", "8"], ["--isl", "only with concurrency"]),
    (["--concurrency", "4", "--isl", "8"], ["--osl", "not given"]),
    (["--concurrency", "0", "--isl", "8", "--osl", "8"], ["--concurrency", "0"]),
    (["--concurrency", "4", "--isl", "8", "--osl", "8", "--random-range-ratio", "1"], ["--random-range-ratio", "[0, 1)"]),
    (["--concurrency", "4", "--isl", "8", "--osl", "8", "--warmup", "-2"], ["--warmup", "-2"]),
    ([], ["--trace", "not given"]),
])
def test_serve_bad_workload_flags_exit_2_with_one_line(fake_forward, refused, extra, words):
    refused(SERVE + extra + ["--json"], *words)


def test_whatif_and_run_serve_take_a_closed_loop(fake_forward):
    from simfoe.serving import run_serve
    from simfoe.whatif import run, scenario

    s = run_serve("mixtral-8x7b", "h100-sxm", 1, "moe", concurrency=2, isl=64, osl=8, num_prompts=6)
    assert s["workload"]["kind"] == "closed-loop" and s["requests"]["completed"] == 6
    r = run(scenario("serve", concurrency=2, isl=64, osl=8, num_prompts=6))  # its trace/rate defaults make way
    assert r["requests.completed"] == 6
    with pytest.raises(SpecError) as e:
        run_serve("mixtral-8x7b", "h100-sxm", 1, "moe", "longbench", concurrency=2, isl=64, osl=8)
    assert e.value.field == "trace"


def test_sweep_validates_a_closed_loop_before_running():
    from simfoe.sweep.scenarios import check_model_options

    check_model_options({"concurrency": 8, "isl": 128, "osl": 16, "trace": None}, {})
    with pytest.raises(SpecError) as e:
        check_model_options({"concurrency": 8, "isl": 128, "osl": 16, "rate": 2.0}, {})
    assert e.value.field == "rate"
    with pytest.raises(SpecError) as e:
        check_model_options({"concurrency": 8, "isl": 128}, {})
    assert e.value.field == "osl"
