"""Per-rank scheduling: each data-parallel attention rank of an instance has its own token budget,
sequence limit and KV share (as in vLLM and SGLang), modeled as one balanced queue."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from simfoe.errors import SpecError
from simfoe.serving import simulate
from simfoe.serving.engine import Engine, EngineConfig
from simfoe.serving.metrics import STATUS_DONE, STATUS_DROPPED
from simfoe.serving.kv_cache import KVBlocks
from simfoe.workloads import RequestTable


class RankedStep:
    """Constant 10 ms iterations on an instance with ``prefill_groups`` DP attention ranks."""

    def __init__(self, groups: int, step_s: float = 0.01):
        self.prefill_groups = groups
        self.step_s = step_s

    def iteration(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens, prefill_seqs=None):
        return self.step_s


def burst(n, prompt, output):
    return RequestTable.from_arrays(np.zeros(n), np.full(n, prompt), np.full(n, output))


def test_each_rank_admits_its_own_batch_and_budget():
    """100 prompts of 100 tokens at t=0, 8 sequences and 1000 tokens per rank: with 4 ranks the
    first iteration admits min(4 x 8, 4 x 1000 / 100) = 32; one budget for the instance admits 8."""
    t = burst(100, 100, 5)
    per_rank = simulate(t, RankedStep(4), 10**6, max_batch=8, token_budget=1000, cost="memo")
    per_inst = simulate(t, RankedStep(4), 10**6, max_batch=8, token_budget=1000, cost="memo",
                        budget_scope="instance")
    assert per_rank.summary["ranks_per_replica"] == 4 and per_inst.summary["ranks_per_replica"] == 1
    assert int((per_rank.records["scheduled_s"] == 0).sum()) == 32
    assert int((per_inst.records["scheduled_s"] == 0).sum()) == 8
    # four times the concurrency: the burst drains about four times sooner (whole waves of 32 vs 8)
    assert per_rank.records["e2e_s"].max() < per_inst.records["e2e_s"].max() / 3


def test_a_chunk_never_exceeds_one_ranks_budget():
    """One 5000-token prompt, 1000 tokens per rank, 4 ranks: a chunk runs on one rank, so the
    prompt takes 5 iterations (10 ms each), not ceil(5000 / 4000) = 2."""
    r = simulate(burst(1, 5000, 1), RankedStep(4), 10**6, max_batch=8, token_budget=1000, cost="memo")
    assert r.records["ttft_s"].iloc[0] == pytest.approx(0.05)
    r1 = simulate(burst(1, 5000, 1), RankedStep(1), 10**6, max_batch=8, token_budget=4000, cost="memo")
    assert r1.records["ttft_s"].iloc[0] == pytest.approx(0.02)


def test_a_request_must_fit_one_ranks_kv_share():
    """4000 KV tokens over 4 ranks: a 1500-token request fits the pool but no rank's 1000."""
    t = RequestTable.from_arrays(np.zeros(2), np.array([1400, 500]), np.array([100, 100]))
    r = simulate(t, RankedStep(4), 4000, max_batch=8, token_budget=1000, block_size=8, cost="memo")
    assert r.summary["requests"]["dropped_by_reason"]["kv_capacity"] == 1
    assert r.summary["kv_cache"]["capacity_tokens_per_rank"] == 1000
    inst = simulate(t, RankedStep(4), 4000, max_batch=8, token_budget=1000, cost="memo", budget_scope="instance")
    assert inst.summary["requests"]["completed"] == 2


def test_bad_scope_and_block_size_name_the_field():
    with pytest.raises(SpecError, match="budget_scope"):
        simulate(burst(1, 10, 1), RankedStep(2), 1000, budget_scope="node", cost="memo")
    with pytest.raises(SpecError, match="block_size.*one DP attention rank, 250 tokens"):
        KVBlocks(1000, 300, ranks=4)
    with pytest.raises(SpecError, match="kv_capacity_tokens"):
        KVBlocks(3, 16, ranks=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 10_000), ranks=hs.integers(1, 6), max_batch=hs.integers(1, 8),
       extra=hs.integers(0, 300), n=hs.integers(1, 50), sched=hs.sampled_from(["chunked", "whole-prompt"]),
       kv_per_rank=hs.integers(200, 5000))
def test_iterations_respect_per_rank_limits_and_conserve_requests(seed, ranks, max_batch, extra, n, sched,
                                                                   kv_per_rank):
    """Every iteration: pooled tokens <= ranks x budget, running sequences <= ranks x max_batch, and
    (chunked) no chunk above one rank's budget; every request completes or is dropped with a reason,
    also when a small KV cache forces preemptions."""
    rng = np.random.default_rng(seed)
    arr = np.sort(rng.uniform(0, 0.5, n))
    prompt, output = rng.integers(1, 600, n), rng.integers(1, 30, n)
    budget = max_batch + extra
    cfg = EngineConfig(max_batch=max_batch, token_budget=budget, scheduler=sched, cost="memo")
    eng = Engine(arr, prompt, output, np.arange(n), RankedStep(ranks, 0.005), kv_per_rank * ranks, cfg)
    inner = eng.scheduler.schedule
    seen = []

    def spy(rep, st, now):
        b = inner(rep, st, now)
        if b is not None:
            dec, chunks = b
            seen.append((len(dec), [c for _, c in chunks], len(rep.running)))
        return b

    eng.scheduler.schedule = spy
    eng.run()
    st = eng.store
    assert ((st.status == STATUS_DONE) | (st.status == STATUS_DROPPED)).all()
    assert not (st.dropped == 2).any()  # nothing left unfinished without a horizon
    assert seen or (st.dropped == 1).all()  # nothing ran only when every request exceeds a rank's KV share
    for nd, chunks, running in seen:
        assert nd + sum(chunks) <= ranks * budget or (sched == "whole-prompt" and chunks and chunks[0] > budget)
        assert running <= ranks * max_batch
        if sched == "chunked":
            assert max(chunks, default=0) <= budget
