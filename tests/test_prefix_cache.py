"""Prefix caching in the serving engine (simfoe.serving.prefix_cache), the cache-aware router and the
synthetic multi-turn workload."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from simfoe.serving import LinearStep, StepModelBase, simulate
from simfoe.workloads import RequestTable, make_workload

LIN = LinearStep(base_s=5e-3, per_prefill_token_s=2e-5, per_attn_pair_s=1e-9, per_decode_seq_s=1e-4,
                 per_kv_token_s=1e-7)


class Recorder(StepModelBase):
    """A constant 10 ms step that records the prefill tokens and causal pairs it is asked to price."""

    def __init__(self, dp_ranks=1):
        self.calls = []
        self.dp_ranks = dp_ranks

    def iteration(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens, prefill_seqs=None):
        self.calls.append((prefill_tokens, prefill_attn_pairs))
        return 0.01


def table(arrivals, prompts, outputs, hashes, block=512):
    return RequestTable.from_arrays(arrivals, prompts, outputs, hash_lists=hashes, hash_block_tokens=block)


@pytest.mark.parametrize("prompt, tail", [(1000, 488), (1024, 1)])
def test_second_identical_prompt_prefills_only_the_uncached_tail(prompt, tail):
    """Two identical prompts, the second after the first finished: 1000 tokens (one whole 512-token block
    cached) leave 488 to compute, attending the 512 cached ones: 488 (512 + 489 / 2) pairs; 1024 tokens
    (both blocks cached) leave the last one, for its logits."""
    ids = [[1, 2], [1, 2]]
    rec = Recorder()
    r = simulate(table([0.0, 10.0], [prompt] * 2, [3, 3], ids), rec, 10**5, prefix_cache=True, cost="memo",
                 bucket_bits=20)
    prefills = [c for c in rec.calls if c[0]]
    assert prefills == [(prompt, prompt * (prompt + 1) / 2), (tail, tail * (prompt - tail + (tail + 1) / 2))]
    assert r.records["cached_tokens"].tolist() == [0, prompt - tail]
    pc = r.summary["prefix_cache"]
    assert pc["hit_tokens"] == prompt - tail and pc["prompt_tokens"] == 2 * prompt
    assert pc["hit_rate"] == (prompt - tail) / (2 * prompt)


def shared_prefix_table(seed, n, block):
    """Requests whose ids come from a few shared prefixes (a small tree), random lengths and arrivals."""
    rng = np.random.default_rng(seed)
    prompts = rng.integers(1, 12 * block, n)
    roots = rng.integers(0, 3, n)
    hashes = []
    for i, p in enumerate(prompts.tolist()):
        k = -(-p // block)
        split = int(rng.integers(0, k + 1))  # a shared part of the tree, then the request's own blocks
        hashes.append([int(roots[i]) * 100 + j for j in range(split)] + [10_000 + i * 100 + j for j in range(split, k)])
    return table(np.sort(rng.uniform(0, 3, n)), prompts, rng.integers(1, 40, n), hashes, block)


class RankedLinear(StepModelBase):
    """LIN on an instance of two DP attention ranks (each with its own queue and KV share)."""

    dp_ranks = 2

    def iteration(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens, prefill_seqs=None):
        return LIN.iteration(prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens)


def pools(res):
    return [q.kv for rep in res.engine.replicas for q in rep.ranks]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 10_000), n=hs.integers(1, 50), kv=hs.integers(40, 400), block=hs.sampled_from([16, 32, 64]),
       reps=hs.integers(1, 2), ranked=hs.booleans(), horizon=hs.one_of(hs.none(), hs.floats(0.05, 3.0)),
       router=hs.sampled_from(["round-robin", "cache-aware"]), mtp=hs.sampled_from([0, 2]))
def test_hits_bounded_and_kv_blocks_conserved(seed, n, kv, block, reps, ranked, horizon, router, mtp):
    """Hits never exceed a prompt (less its last token); at any stop, each pool's blocks are truly free,
    cached, pinned prefix blocks or the requests' own: they add up to its capacity; once drained, nothing
    is pinned or held. Also with multi-token prediction (blocks held for drafts that may be rejected)."""
    t = shared_prefix_table(seed, n, block)
    model = RankedLinear() if ranked else LIN
    r = simulate(t, model, kv * 16 * (2 if ranked else 1), prefix_cache=True, max_batch=8, token_budget=256,
                 replicas=reps, router=router, rank_router=router, horizon_s=horizon, mtp=mtp,
                 mtp_acceptance=0.6 if mtp else None)
    rec, st = r.records, r.engine.store
    assert (rec["cached_tokens"] <= np.maximum(rec["prompt_tokens"] - 1, 0)).all()
    for p, kvp in enumerate(pools(r)):
        use = kvp.cache.usage()
        rows = (st.replica * len(r.engine.replicas[0].ranks) + st.rank) == p
        own = int((st.blocks - kvp.cache.per * st.shared)[rows].sum())
        assert use.free >= 0 and use.cached >= 0 and own >= 0
        assert use.free + use.cached + use.pinned + own == kvp.total
        if horizon is None:
            assert use.pinned == 0 and own == 0 and use.free + use.cached == kvp.total
    done = rec["completed"].to_numpy()
    assert (rec.loc[done, "generated_tokens"] == rec.loc[done, "output_tokens"]).all()
    assert (done | (rec["dropped"] != "")).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 10_000), n=hs.integers(1, 40), kv=hs.integers(100, 400))
def test_a_cache_that_never_hits_changes_nothing(seed, n, kv):
    """Every block id unique: with prefix caching on, every request is served exactly as with it off, as
    long as none is preempted (a preempted request's blocks stay cached, and its recompute hits them)."""
    t = shared_prefix_table(seed, n, 32)
    t = table(t.arrival_s, t.prompt_tokens, t.output_tokens,
              [[i * 1000 + j for j in range(len(t.prefix_hashes(i)))] for i in range(n)], 32)
    on = simulate(t, LIN, kv * 16, prefix_cache=True, max_batch=8, token_budget=256)
    off = simulate(t, LIN, kv * 16, max_batch=8, token_budget=256)
    assert on.records["cached_tokens"].sum() == 0
    if off.summary["kv_cache"]["preemptions"] == 0:
        assert on.records.drop(columns="cached_tokens").equals(off.records)


def test_lru_evicts_the_least_recently_used_prefix_first():
    """A pool of 4 blocks of 16 tokens (prefix blocks of 16): A (2 blocks), B (2 blocks), then C (2 new
    blocks) evicts A's, the least recently used; A again misses, B again hits."""
    ids = {"A": [1, 2], "B": [3, 4], "C": [5, 6]}
    order = ["A", "B", "C", "B", "A"]
    t = table([10.0 * k for k in range(5)], [32] * 5, [1] * 5, [ids[x] for x in order], 16)
    r = simulate(t, LIN, 64, prefix_cache=True, block_size=16)
    assert r.records["cached_tokens"].tolist() == [0, 0, 0, 31, 0]
    assert r.summary["prefix_cache"]["evicted_tokens"] == 4 * 16  # A's two blocks for C, C's for A again


def test_cache_aware_router_prefers_the_longest_match_else_the_least_loaded():
    """A [1, 2] -> replica 0; B [7, 8] arrives while A runs: no match anywhere, the idle replica 1;
    D [7, 8] later: replica 1 holds its prefix; C [1, 2]: replica 0 does. Round-robin would say 0, 1, 0, 1."""
    t = table([0.0, 0.001, 10.0, 20.0], [1024] * 4, [50] * 4, [[1, 2], [7, 8], [7, 8], [1, 2]])
    r = simulate(t, LIN, 10**5, prefix_cache=True, replicas=2, router="cache-aware")
    assert r.records["replica"].tolist() == [0, 1, 1, 0]
    assert r.records["cached_tokens"].tolist() == [0, 0, 1023, 1023]


def test_multi_turn_hit_rate_by_hand():
    """3 conversations x 3 turns, system 128, user 64, answers 64, blocks of 64: prompts 192, 320, 448.
    Hits: turn 1 finds the 2 system blocks (not the first conversation: 0, 128, 128); turn 2 the 3 whole
    blocks of turn 1's prompt + answer less its last token (255 tokens: 192); turn 3 likewise 5 blocks
    (383 tokens: 320). 1792 of 2880 prompt tokens."""
    t = make_workload("multi-turn:conversations=3,turns=3,system=128,user=64,output=64,block=64,rate=0.1,think=100")
    assert sorted(t.prompt_tokens.tolist()) == [192] * 3 + [320] * 3 + [448] * 3
    r = simulate(t, LIN, 10**5, prefix_cache=True)
    assert sorted(r.records["cached_tokens"].tolist()) == [0, 128, 128] + [192] * 3 + [320] * 3
    assert r.summary["prefix_cache"]["hit_rate"] == pytest.approx(1792 / 2880)


def test_serve_prefix_cache_flag(fake_forward, capsys, refused):
    from simfoe.cli import main

    argv = ["serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe",
            "--trace", "multi-turn:conversations=8,turns=2", "--prefix-cache"]
    assert main(argv + ["--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["prefix_cache"]["block_tokens"] == 64 and 0 < s["prefix_cache"]["hit_rate"] < 1
    assert main(argv) == 0
    assert "prefix cache: " in capsys.readouterr().out
    assert main(argv[:-1] + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prefix_cache"] is None
    refused(argv[:7] + ["--trace", "longbench", "--rate", "1", "--duration", "5", "--prefix-cache"],
            "--prefix-cache", "prefix block ids")
    refused(argv + ["--block-size", "48"], "--block-size", "64")
    refused(argv[:7] + ["--trace", "multi-turn:turns=0"], "--trace", "turns")
