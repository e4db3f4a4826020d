"""Per-rank scheduling: each data-parallel attention rank of an instance has its own queue, token
budget, sequence limit and KV share (as in vLLM and SGLang); a request is pinned to one rank, and an
iteration waits for the rank with the most own compute."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from simfoe.errors import SpecError
from simfoe.serving import simulate
from simfoe.serving.engine import Engine, EngineConfig
from simfoe.serving.metrics import STATUS_DONE, STATUS_DROPPED
from simfoe.serving.kv_cache import KVBlocks
from simfoe.serving.scheduler import ChunkedFCFS, WholePrompt, fast_decode
from simfoe.forward.work import Work
from simfoe.serving.step_models import RankExcess, RankLoads
from simfoe.workloads import RequestTable


class RankedStep:
    """Constant 10 ms iterations on an instance with ``dp_ranks`` DP attention ranks."""

    rank_compute_s = None

    def __init__(self, ranks: int, step_s: float = 0.01):
        self.dp_ranks = ranks
        self.step_s = step_s

    def iteration(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens, prefill_seqs=None):
        return self.step_s


class RankedLinear(RankedStep):
    """``RankedStep`` whose ranks' own compute is 1 us per token plus 0.1 us per decode KV token."""

    def rank_compute_s(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens):
        return 1e-6 * (prefill_tokens + decode_seqs) + 1e-7 * decode_kv_tokens


def rl(loads) -> RankLoads:
    """RankLoads from per-rank ``(prefill tokens, pairs, decodes, KV tokens)``."""
    return RankLoads(*(list(c) for c in zip(*loads)))


def it(pf, pairs, nd, kv, seqs) -> Work:
    """An iteration's totals, in the order the tests write them."""
    return Work(pf, pairs, seqs, nd, kv)


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
    """Every rank's batch: tokens <= its budget (whole-prompt: but for one whole prompt that starts the
    batch's prefill), running sequences <= max_batch, (chunked) no chunk above the budget, and only
    requests pinned to that rank; every request completes or is dropped with a reason, also when a
    small KV cache forces preemptions, and every rank gets all its KV blocks back."""
    rng = np.random.default_rng(seed)
    arr = np.sort(rng.uniform(0, 0.5, n))
    prompt, output = rng.integers(1, 600, n), rng.integers(1, 30, n)
    budget = max_batch + extra
    cfg = EngineConfig(max_batch=max_batch, token_budget=budget, scheduler=sched, cost="memo")
    eng = Engine(arr, prompt, output, np.arange(n), RankedLinear(ranks, 0.005), kv_per_rank * ranks, cfg)
    inner = eng.scheduler.schedule
    qs = eng.replicas[0].ranks
    seen = []

    def spy(q, st, now):
        b = inner(q, st, now)
        if b is not None:
            dec, chunks = b
            mine = np.concatenate([dec, np.array([i for i, _ in chunks], np.int64)])
            assert (st.rank[mine] == qs.index(q)).all()
            seen.append((len(dec), [c for _, c in chunks], len(q.running)))
        return b

    eng.scheduler.schedule = spy
    eng.run()
    st = eng.store
    assert ((st.status == STATUS_DONE) | (st.status == STATUS_DROPPED)).all()
    assert not (st.dropped == 2).any()  # nothing left unfinished without a horizon
    assert seen or (st.dropped == 1).all()  # nothing ran only when every request exceeds a rank's KV share
    assert all(q.kv.free == q.kv.total and not q.running and not q.waiting for q in qs)
    for nd, chunks, running in seen:
        assert nd + sum(chunks) <= budget or (sched == "whole-prompt" and nd + chunks[0] > budget)
        assert running <= max_batch
        if sched == "chunked":
            assert max(chunks, default=0) <= budget


def test_requests_are_pinned_by_the_rank_router():
    """2 ranks. Six requests at t=0 alternate ranks 0, 1, 0, ...; rank 1's are short and done long
    before G and H arrive together at t=1, when rank 0 still runs its three. G goes to the empty rank
    1 (round-robin: rank 0, the 7th arrival). H: least-outstanding counts rank 1's waiting G like a
    running request (1 < 3: rank 1); vllm-lb, the default, weighs it 4x (4 > 3: rank 0)."""
    t = RequestTable.from_arrays(np.array([0.0] * 6 + [1.0] * 2), np.full(8, 10),
                                 np.array([500, 2, 500, 2, 500, 2, 2, 2]))
    got = {name: simulate(t, RankedStep(2), 10**6, cost="memo", **({"rank_router": name} if name else {}))
           for name in ("least-outstanding", None, "round-robin")}
    assert got["least-outstanding"].records["rank"].tolist() == [0, 1, 0, 1, 0, 1, 1, 1]
    assert got[None].records["rank"].tolist() == [0, 1, 0, 1, 0, 1, 1, 0]
    assert got["round-robin"].records["rank"].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert got[None].summary["rank_router"] == "vllm-lb"
    with pytest.raises(SpecError, match="rank_router.*least-outstanding"):
        simulate(t, RankedStep(1), 10**6, cost="memo", rank_router="random")


def test_the_busiest_rank_sets_the_pace():
    """Hand-computed: 2 ranks, 10 ms iterations for the summed batch, ranks' own compute 1 us per
    token + 0.1 us per KV token. A (prompt 1000) on rank 0, B (prompt 10) on rank 1, 3 tokens each.
    Prefill: the even share is one chunk of 1010 tokens, more than either rank's own: no excess.
    First decode: rank 0 attends 1001 KV tokens, the even share (1001 + 11) / 2 = 506, so the step
    takes 10 ms + 0.1 us x (1001 - 506) = 10.0495 ms; the second the same (1002 - 507)."""
    t = RequestTable.from_arrays(np.zeros(2), np.array([1000, 10]), np.array([3, 3]))
    r = simulate(t, RankedLinear(2), 10**6, cost="memo", token_times=True)
    assert r.records["rank"].tolist() == [0, 1]
    step = 0.01 + 1e-7 * 495
    for row in range(2):
        assert np.diff(r.token_times(row)) == pytest.approx([step, step], rel=1e-12)
    assert r.records["ttft_s"].tolist() == pytest.approx([0.01, 0.01])
    assert r.summary["rank_imbalance_fraction"] == pytest.approx(2 * 1e-7 * 495 / (0.01 + 2 * step))
    inst = simulate(t, RankedLinear(2), 10**6, cost="memo", token_times=True, budget_scope="instance")
    assert np.diff(inst.token_times(0)) == pytest.approx([0.01, 0.01])
    assert inst.summary["rank_imbalance_fraction"] is None


@settings(max_examples=60, deadline=None)
@given(ranks=hs.integers(2, 8), nd=hs.integers(0, 64), kv_per_seq=hs.integers(1, 4000), chunk=hs.integers(0, 3000),
       past=hs.integers(0, 3000), bump=hs.integers(2, 5000), who=hs.integers(0, 7), folded=hs.booleans())
def test_rank_excess_is_zero_for_equal_ranks_and_grows_with_one_ranks_load(ranks, nd, kv_per_seq, chunk, past,
                                                                          bump, who, folded):
    """Equal loads on every rank cost exactly the even share (excess 0), however the cost prices it;
    two or more extra KV tokens on one rank give an excess > 0 (one may round into the even share)
    that never shrinks as they grow."""
    if nd == 0 and chunk == 0:
        chunk = 1
    exc = RankExcess(RankedLinear(ranks), ranks, folded)
    pairs = chunk * (past + (chunk + 1) / 2) if chunk else 0.0
    one = (chunk, pairs, nd, nd * kv_per_seq)
    loads = [one] * ranks

    def totals(ls):
        pf = sum(x[0] for x in ls)
        top = max(x[0] for x in ls)
        return (pf, sum(x[1] for x in ls), sum(x[2] for x in ls), sum(x[3] for x in ls), pf // top if top else 0)

    assert exc(rl(loads), it(*totals(loads))) == 0.0
    if nd:
        k = who % ranks
        more = list(loads)
        more[k] = one[:3] + (one[3] + bump,)
        e1 = exc(rl(more), it(*totals(more)))
        assert e1 > 0.0
        more[k] = one[:3] + (one[3] + 2 * bump,)
        assert exc(rl(more), it(*totals(more))) >= e1 - 1e-15  # (floating-point noise only)


def test_the_excess_sees_each_ranks_own_decode_kv_tokens():
    """4 ranks, eight requests pinned 0, 1, 2, 3, 0, 1, 2, 3; rank 1's finish at their prefill, so
    decode iterations have an idle rank between busy ones. Every decode-only iteration hands the
    excess each busy rank's decodes and KV tokens (its contexts + one new token each), in rank order."""
    prompt = np.array([100, 50, 700, 30, 900, 60, 20, 400])
    output = np.array([6, 1, 5, 4, 3, 1, 6, 2])
    eng = Engine(np.zeros(8), prompt, output, np.arange(8), RankedLinear(4), 10**6, EngineConfig(cost="memo"))
    inner, qs, st = eng.excess, eng.replicas[0].ranks, eng.store
    calls = []

    def spy(loads, work):
        if not work.prefill_tokens:  # decode only: every running request decodes
            want = [(len(q.running), int(st.ctx[q.running].sum()) + len(q.running)) for q in qs if q.running]
            assert list(zip(loads.decode_seqs, loads.decode_kv_tokens)) == want
            calls.append(len(loads.decode_seqs))
        return inner(loads, work)

    eng.excess = spy
    eng.run()
    assert st.rank.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert (st.status == STATUS_DONE).all()
    assert calls[0] == 3 and len(calls) == 5  # ranks 0, 2, 3 at first; decodes up to the 6th token


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 10_000), ranks=hs.integers(2, 6), kv_per_rank=hs.integers(200, 3000),
       router=hs.sampled_from(["vllm-lb", "least-outstanding", "round-robin"]),
       sched=hs.sampled_from(["chunked", "whole-prompt"]), replicas=hs.integers(1, 2), mtp=hs.sampled_from([0, 1, 3]))
def test_the_all_decode_fast_path_forms_the_same_batches(seed, ranks, kv_per_rank, router, sched, replicas, mtp):
    """ChunkedFCFS.decode_all (every rank just decodes: one pass for the instance) gives exactly the
    records of scheduling rank by rank, also when small KV shares force preemptions, and with ``mtp``
    draft tokens per step (k + 1 tokens' blocks per decode)."""
    rng = np.random.default_rng(seed)
    n = 40
    arr = np.sort(rng.uniform(0, 1.0, n))
    prompt, output = rng.integers(1, 500, n), rng.integers(1, 60, n)
    runs = []
    for fast in (True, False):
        cfg = EngineConfig(max_batch=8, token_budget=512, cost="memo", rank_router=router, scheduler=sched,
                           replicas=replicas, mtp=mtp, mtp_acceptance=0.7 if mtp else None)
        eng = Engine(arr, prompt, output, np.arange(n), RankedLinear(ranks, 0.002), kv_per_rank * ranks, cfg)
        if not fast:
            eng.decode_all = None
        eng.run()
        runs.append(eng.store.frame())
    pd.testing.assert_frame_equal(runs[0], runs[1])


@settings(max_examples=60, deadline=None)
@given(ranks=hs.integers(5, 16), seed=hs.integers(0, 10_000), folded=hs.booleans())
def test_the_excess_finds_the_busiest_of_many_decoding_ranks(ranks, seed, folded):
    """Decode only, more ranks than are evaluated one by one: the excess is the exhaustive one (the
    busiest rank evaluated alone) to within RankExcess.EXACT_WITHIN of the busiest rank's compute,
    and never above it."""
    rng = np.random.default_rng(seed)
    nd = rng.integers(1, 40, ranks)
    kv = nd * rng.integers(1, 25, ranks)  # short contexts: decodes and KV tokens weigh alike
    loads = [(0, 0.0, int(d), int(k)) for d, k in zip(nd, kv)]
    exc = RankExcess(RankedLinear(ranks), ranks, folded)
    t = it(0, 0.0, int(nd.sum()), int(kv.sum()), 0)
    exact = max(exc(rl([x]), t) for x in loads)
    top = max(exc.cost.price(0, 0, d, k) for _, _, d, k in loads)
    assert exact - RankExcess.EXACT_WITHIN * top <= exc(rl(loads), t) <= exact


def test_a_decode_only_rank_busier_than_the_prefill_ranks_is_found():
    """Seven ranks with a 16-token chunk and 99 decodes, one with 114 decodes and no prefill: under
    the interpolated rank compute the decode-only rank is the busiest though it has neither the most
    tokens nor the most KV tokens; it has the most decodes, which makes it a candidate."""
    exc = RankExcess(RankedLinear(8), 8)
    a, b = (16, 16 * 8.5, 99, 5000), (0, 0.0, 114, 5000)
    loads = [a] * 7 + [b]
    t = it(7 * 16, 7 * 16 * 8.5, 7 * 99 + 114, 8 * 5000, 7)
    assert exc.cost.price(0, 0, 114, 5000) > exc.cost.price(16, 16 * 8.5, 99, 5000)
    assert exc(rl(loads), t) == max(exc(rl([x]), t) for x in loads) > 0


def test_the_fast_path_is_used_only_where_it_matches_the_policy():
    class OwnSchedule(ChunkedFCFS):
        def schedule(self, q, st, now):
            return super().schedule(q, st, now)

    class OwnBoth(OwnSchedule):
        decode_all = ChunkedFCFS.decode_all

    assert fast_decode(ChunkedFCFS()) is not None and fast_decode(WholePrompt()) is not None
    assert fast_decode(OwnSchedule()) is None and fast_decode(OwnBoth()) is not None
