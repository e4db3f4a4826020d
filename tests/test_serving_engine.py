"""Serving engine: conservation, Little's law, latency lower bounds, M/D/1, determinism, metrics."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from simfoe.errors import SpecError
from simfoe.forward.work import Work
from simfoe.serving import ConstantStep, LinearStep, MemoCost, bucket_up, simulate
from simfoe.serving.metrics import GapHistogram
from simfoe.workloads import RequestTable

LIN = LinearStep(base_s=5e-3, per_prefill_token_s=2e-5, per_attn_pair_s=1e-9, per_decode_seq_s=1e-4,
                 per_kv_token_s=1e-7)


def poisson_table(n, rate, prompt, output, seed=0):
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(1 / rate, n))
    arr -= arr[0]
    p = np.broadcast_to(prompt, (n,)) if np.isscalar(prompt) else prompt
    o = np.broadcast_to(output, (n,)) if np.isscalar(output) else output
    return RequestTable.from_arrays(arr, p, o)


def random_table(seed, n):
    rng = np.random.default_rng(seed)
    arr = np.sort(rng.uniform(0, 5, n))
    return RequestTable.from_arrays(arr, rng.integers(1, 400, n), rng.integers(1, 60, n))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 10_000), n=hs.integers(1, 60), kv=hs.integers(64, 3000),
       max_batch=hs.integers(1, 16), extra=hs.integers(0, 512),
       sched=hs.sampled_from(["chunked", "whole-prompt"]), reps=hs.integers(1, 3),
       router=hs.sampled_from(["round-robin", "least-outstanding", "vllm-lb"]))
def test_every_request_completed_or_dropped_with_reason(seed, n, kv, max_batch, extra, sched, reps, router):
    t = random_table(seed, n)
    r = simulate(t, LIN, kv, max_batch=max_batch, token_budget=max_batch + extra, scheduler=sched,
                 replicas=reps, router=router)
    rec = r.records
    assert len(rec) == n
    done = rec["completed"].to_numpy()
    assert (done | (rec["dropped"] != "")).all()
    assert not (done & (rec["dropped"] != "")).any()
    # completed requests produced exactly their output; dropped ones only for the KV reason here
    assert (rec.loc[done, "generated_tokens"] == rec.loc[done, "output_tokens"]).all()
    too_big = np.ceil((t.prompt_tokens + t.output_tokens - 1) / 16) > kv // 16
    assert (rec["dropped"].to_numpy() == "kv_capacity").tolist() == too_big.tolist()
    s = r.summary["requests"]
    assert s["completed"] + s["dropped"] == s["total"] == n
    # KV blocks all returned
    assert all(q.kv.free == q.kv.total for rep in r.engine.replicas for q in rep.ranks)
    # causality
    d = rec[done]
    assert (d["scheduled_s"] >= d["arrival_s"]).all()
    assert (d["first_token_s"] > d["scheduled_s"]).all()
    assert (d["finish_s"] >= d["first_token_s"]).all()


def test_preemption_recomputes_and_completes():
    t = poisson_table(200, 50.0, 300, 200, seed=3)
    r = simulate(t, LIN, 4000, max_batch=64, token_budget=2048)
    assert r.summary["kv_cache"]["preemptions"] > 0
    assert r.summary["requests"]["completed"] == 200
    assert r.records["preemptions"].sum() == r.summary["kv_cache"]["preemptions"]
    assert r.summary["kv_cache"]["max_used_fraction"] <= 1.0


def test_low_load_throughput_matches_offered_rate_littles_law():
    rate = 2.0
    t = poisson_table(4000, rate, 500, 50, seed=1)
    r = simulate(t, LIN, 500_000)
    s = r.summary
    offered = s["throughput"]["offered_requests_per_s"]
    assert s["throughput"]["requests_per_s"] == pytest.approx(offered, rel=0.01)
    # Little's law: mean number in system = throughput x mean time in system
    rec = r.records
    span = rec["finish_s"].max() - rec["arrival_s"].min()
    area = (rec["finish_s"] - rec["arrival_s"]).sum()  # integral of N(t) dt
    assert area / span == pytest.approx(s["throughput"]["requests_per_s"] * s["e2e_s"]["mean"], rel=1e-9)
    assert s["gpu_utilization"] < 1.0


def test_ttft_and_tbt_lower_bounds():
    rng = np.random.default_rng(7)
    n = 400
    t = RequestTable.from_arrays(np.sort(rng.uniform(0, 20, n)), rng.integers(1, 6000, n), rng.integers(1, 100, n))
    budget = 2048
    r = simulate(t, LIN, 300_000, max_batch=32, token_budget=budget)
    rec = r.records
    assert rec["completed"].all()
    for _, row in rec.iterrows():
        p = int(row.prompt_tokens)
        alone, done = 0.0, 0
        while done < p:  # the same prompt prefilled alone, in budget-sized chunks
            c = min(budget, p - done)
            alone += LIN.iteration(c, c * (done + (c + 1) / 2), 0, 0)
            done += c
        assert row.ttft_s >= alone * (1 - 1e-12)
        if row.generated_tokens > 1:
            assert row.tbt_min_s >= LIN.iteration(0, 0, 1, p + 1) * (1 - 1e-12)


@pytest.mark.parametrize("rho", [0.3, 0.7])
def test_md1_mean_wait(rho):
    """Batch size 1, constant step D, one-token requests: M/D/1, Wq = rho / (2 mu (1 - rho))."""
    d = 0.01
    mu = 1 / d
    lam = rho * mu
    t = poisson_table(40_000, lam, 10, 1, seed=11)
    r = simulate(t, ConstantStep(d), 10_000, max_batch=1, token_budget=64)
    wq = rho / (2 * mu * (1 - rho))
    got = r.summary["queue_s"]["mean"]
    assert got == pytest.approx(wq, rel=0.06)
    rec = r.records
    assert np.allclose(rec["ttft_s"] - rec["queue_s"], d)
    assert r.summary["gpu_utilization"] == pytest.approx(rho, rel=0.03)


def test_deterministic():
    t = random_table(5, 300)
    a = simulate(t, LIN, 20_000, max_batch=8, token_budget=512, replicas=2, router="least-outstanding")
    b = simulate(t, LIN, 20_000, max_batch=8, token_budget=512, replicas=2, router="least-outstanding")
    assert a.records.equals(b.records)
    sa = {k: v for k, v in a.summary.items() if k != "sim"}
    sb = {k: v for k, v in b.summary.items() if k != "sim"}
    assert sa == sb


def test_horizon_reports_unfinished():
    t = poisson_table(100, 10.0, 100, 500, seed=2)
    r = simulate(t, LIN, 100_000, horizon_s=3.0)
    rec = r.records
    assert (rec["completed"] | (rec["dropped"] == "unfinished")).all()
    assert r.summary["requests"]["dropped_by_reason"]["unfinished"] > 0


def test_round_robin_and_least_outstanding():
    t = poisson_table(90, 5.0, 100, 20, seed=4)
    r = simulate(t, LIN, 100_000, replicas=3)
    assert r.records["replica"].tolist() == [i % 3 for i in range(90)]
    r2 = simulate(t, LIN, 100_000, replicas=3, router="least-outstanding")
    assert set(r2.records["replica"]) <= {0, 1, 2}
    assert r2.summary["requests"]["completed"] == 90


def test_token_times_match_aggregates():
    t = random_table(9, 80)
    r = simulate(t, LIN, 3_000, max_batch=6, token_budget=256, token_times=True)
    rec = r.records
    for i, row in rec.iterrows():
        if not row.completed:
            continue
        tt = r.token_times(i)
        assert len(tt) == row.output_tokens
        assert tt[0] == row.first_token_s and tt[-1] == row.finish_s
        if len(tt) > 1:
            g = np.diff(tt)
            assert g.max() == pytest.approx(row.tbt_max_s)
            assert g.mean() == pytest.approx(row.tbt_mean_s)


def test_gap_histogram_quantiles():
    rng = np.random.default_rng(0)
    x = rng.lognormal(np.log(0.02), 0.8, 100_000)
    h = GapHistogram()
    for chunk in np.array_split(x, 100):
        h.add(chunk)
    for q in (0.5, 0.9, 0.99):
        assert h.quantile(q) == pytest.approx(np.quantile(x, q), rel=0.015)
    assert h.stats()["mean"] == pytest.approx(x.mean(), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(sizes=hs.lists(hs.integers(0, 700), min_size=1, max_size=30), seed=hs.integers(0, 2**16))
def test_gap_histogram_buffering_is_exact(sizes, seed):
    """Buffered binning (small buffer, chunks crossing it and larger than it) == binning all at once."""
    rng = np.random.default_rng(seed)
    chunks = [rng.lognormal(np.log(0.01), 2.0, n) for n in sizes]
    h = GapHistogram()
    h.BUFFER = 256
    h._buf = np.empty(h.BUFFER)
    for c in chunks:
        h.add(c)
    ref = GapHistogram()
    ref._bin(np.concatenate(chunks))
    assert np.array_equal(h.counts, ref.counts)
    assert h.n == ref.n == sum(sizes)
    if h.n:
        assert h.stats()["max"] == ref.stats()["max"] and h.quantile(0) == ref.quantile(0)  # exact min
        assert h.stats()["mean"] == pytest.approx(ref.stats()["mean"], rel=1e-12)
        assert h.quantile(0.9) == pytest.approx(ref.quantile(0.9), rel=1e-12)


@given(x=hs.floats(0, 1e12), bits=hs.integers(2, 12))
def test_bucket_up(x, bits):
    b = bucket_up(x, bits)
    assert b >= x
    assert b - x <= max(1.0, x * 2.0 ** -(bits - 1))
    assert bucket_up(b, bits) == b


def test_memo_counts_and_bad_inputs():
    m = MemoCost(LIN, bits=4)
    a = m(Work(100, 5000.0, 1, 3, 900))
    b = m(Work(100, 5000.0, 1, 3, 900))
    assert a == b and m.misses == 1 and m.lookups == 2
    t = random_table(1, 5)
    with pytest.raises(SpecError):
        simulate(t, LIN, 10_000, max_batch=8, token_budget=4)
    with pytest.raises(SpecError):
        simulate(t, LIN, 10_000, router="nope")
    with pytest.raises(SpecError):
        simulate(t, LIN, 10_000, slo_ttft=-1)
    with pytest.raises(SpecError):
        simulate(t, LIN, 8)  # less than one block


def test_goodput_slo():
    t = poisson_table(300, 20.0, 2000, 50, seed=6)
    r = simulate(t, LIN, 200_000, slo_ttft=0.05, slo_tbt=0.02)
    rec = r.records
    tpot_ok = ~(rec["tbt_mean_s"] > 0.02)
    ok = rec["completed"] & (rec["ttft_s"] <= 0.05) & tpot_ok
    assert r.summary["goodput"]["fraction_of_requests"] == pytest.approx(ok.mean())
    assert r.summary["goodput"]["requests_per_s"] <= r.summary["throughput"]["requests_per_s"]


class _GroupedPrefill:
    """A step model with 8 data-parallel attention groups: prefill time divides by the groups its
    chunks occupy; records the ``prefill_seqs`` it is asked about."""

    dp_ranks = 8
    rank_compute_s = None

    def __init__(self):
        self.seen = []

    def iteration(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens, prefill_seqs=1):
        self.seen.append(prefill_seqs)
        return 1e-3 + 1e-6 * prefill_tokens / prefill_seqs + 1e-5 * decode_seqs


@pytest.mark.parametrize("cost", ["interp", "memo"])
def test_prefill_chunks_spread_over_dp_groups(cost):
    # four 1000-token prompts at t = 0 fit one iteration: four equal chunks occupy four groups
    m = _GroupedPrefill()
    t = RequestTable.from_arrays(np.zeros(4), np.full(4, 1000), np.full(4, 2))
    simulate(t, m, 1_000_000, cost=cost)
    assert 4 in m.seen and max(m.seen) == 4
    # one 3000-token prompt beside a 100-token one: the big chunk alone bounds its group
    m2 = _GroupedPrefill()
    t2 = RequestTable.from_arrays(np.zeros(2), np.array([3000, 100]), np.full(2, 2))
    simulate(t2, m2, 1_000_000, cost=cost)
    assert max(m2.seen) == 1  # not 2: spread evenly, 1550 tokens per group would be optimistic


def test_models_without_dp_groups_ignore_prefill_seqs():
    mc = MemoCost(LIN)
    assert mc(Work(1000, 5e5, 4, 4, 400)) == mc(Work(1000, 5e5, 1, 4, 400))


def test_one_engine_config_or_its_fields_as_keywords():
    from simfoe.serving import EngineConfig

    t = random_table(3, 60)
    a = simulate(t, LIN, 20_000, EngineConfig(replicas=2, max_batch=8, token_budget=512))
    b = simulate(t, LIN, 20_000, replicas=2, max_batch=8, token_budget=512)
    c = simulate(t, LIN, 20_000, EngineConfig(replicas=3, max_batch=8), replicas=2, token_budget=512)
    for r in (b, c):
        assert r.records.equals(a.records)
    with pytest.raises(SpecError) as e:
        simulate(t, LIN, 20_000, max_batchh=8)
    assert e.value.field == "max_batchh"


def test_a_step_model_missing_part_of_the_protocol_is_named():
    class OnlyIteration:
        def iteration(self, *a, **k):
            return 0.01

    t = random_table(1, 5)
    with pytest.raises(SpecError) as e:
        simulate(t, OnlyIteration(), 20_000)
    assert e.value.field == "step_model" and "dp_ranks" in str(e.value) and "rank_compute_s" in str(e.value)
