"""Fast-forward of decode-only iterations (simfoe.serving.fastforward): the same results, bit for bit,
as the loop that runs one iteration per turn, on random small workloads; and the pieces it rests on."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from simfoe.serving import LinearStep, simulate
from simfoe.serving.fastforward import exact_hops
from simfoe.serving.metrics import GapHistogram
from simfoe.serving.step_models import InterpCost, MemoCost
from simfoe.workloads import RequestTable
from simfoe.workloads.closed_loop import ClosedLoop

LIN = LinearStep(base_s=5e-3, per_prefill_token_s=2e-5, per_attn_pair_s=1e-9, per_decode_seq_s=1e-4,
                 per_kv_token_s=1e-7)

#: per-request columns of the store that the metrics read
COLUMNS = ("arrival", "scheduled", "first", "last", "sum_gap", "max_gap", "min_gap", "gen", "ctx", "blocks",
           "status", "preempted", "dropped", "rank", "replica")


class Ranked(LinearStep):
    """LIN on an instance of ``dp_ranks`` DP attention ranks whose own compute is 1 us per token plus 0.1 us
    per decode KV token (so the busiest rank's excess is priced)."""

    def __init__(self, ranks: int):
        super().__init__(**{k: getattr(LIN, k) for k in LIN.__dataclass_fields__})
        object.__setattr__(self, "dp_ranks", ranks)

    def rank_compute_s(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens):
        return 1e-6 * (prefill_tokens + decode_seqs) + 1e-7 * decode_kv_tokens

    def iteration(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens, prefill_seqs=None):
        return super().iteration(prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens)


def both(requests, model, kv, **knobs):
    """The results of ``simulate`` with and without fast-forward (fresh cost wrappers each)."""
    return [simulate(requests, model, kv, fast_forward=ff, token_times=True, **knobs) for ff in (True, False)]


def assert_identical(fast, slow):
    """Every per-request column, per-token time, counter and summary figure equal (bit for bit)."""
    a, b = fast.engine.store, slow.engine.store
    for c in COLUMNS:
        assert np.array_equal(getattr(a, c), getattr(b, c), equal_nan=c in ("arrival", "scheduled", "first", "last")), c
    assert np.array_equal(a.token_buf, b.token_buf, equal_nan=True)
    assert np.array_equal(a.gaps.counts, b.gaps.counts)
    sa, sb = dict(fast.summary), dict(slow.summary)
    for s in (sa, sb):
        s["sim"] = {k: v for k, v in s["sim"].items() if k not in ("wall_s", "sim_s_per_wall_s")}
    assert json.dumps(sa, sort_keys=True) == json.dumps(sb, sort_keys=True)
    for ra, rb in zip(fast.engine.replicas, slow.engine.replicas):
        assert (ra.busy_s, ra.kv_time, ra.kv_max, ra.excess_s, ra.iterations) == \
               (rb.busy_s, rb.kv_time, rb.kv_max, rb.excess_s, rb.iterations)
    assert fast.engine.env.now == slow.engine.env.now


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 10_000), clients=hs.integers(1, 12), isl=hs.integers(1, 600), osl=hs.integers(1, 200),
       ratio=hs.sampled_from([0.0, 0.8]), kv=hs.sampled_from([3000, 400_000]), ranks=hs.sampled_from([1, 1, 3]),
       sched=hs.sampled_from(["chunked", "whole-prompt", "prefill-first"]), cost=hs.sampled_from(["memo", "interp"]),
       overhead=hs.sampled_from([0.0, 1e-3]))
def test_closed_loop_same_as_step_by_step(seed, clients, isl, osl, ratio, kv, ranks, sched, cost, overhead):
    """Closed loops (per-request TTFT, TPOT, per-token times, TBT histogram, busy time and KV use), with
    preemption (small KV cache), DP ranks with per-rank excess, every scheduling policy, both cost tables
    and per-request and per-step host overheads."""
    model = Ranked(ranks) if ranks > 1 else LIN
    w = ClosedLoop(clients, isl, osl, ratio, 4 * clients, clients)
    fast, slow = both(w, model, kv * ranks, seed=seed, scheduler=sched, cost=cost, token_budget=512,
                      request_overhead_s=overhead, step_overhead_s=overhead, step_overhead_per_seq_s=overhead / 10)
    assert_identical(fast, slow)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 10_000), n=hs.integers(1, 40), reps=hs.integers(1, 3),
       horizon=hs.sampled_from([None, 1.5]), cost=hs.sampled_from(["memo", "interp"]))
def test_open_loop_same_as_step_by_step(seed, n, reps, horizon, cost):
    """Open-loop arrivals (events the runs must stop at), several replicas behind a router, and a horizon."""
    rng = np.random.default_rng(seed)
    t = RequestTable.from_arrays(np.sort(rng.uniform(0, 3, n)), rng.integers(1, 400, n), rng.integers(1, 300, n))
    fast, slow = both(t, LIN, 50_000, replicas=reps, router="least-outstanding", horizon_s=horizon, cost=cost)
    assert_identical(fast, slow)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 10_000), n=hs.integers(1, 30), xp=hs.integers(1, 2), yd=hs.integers(1, 3),
       mode=hs.sampled_from(["after", "layerwise", "prefill-first"]), kv=hs.sampled_from([4000, 100_000]))
def test_disaggregated_same_as_step_by_step(seed, n, xp, yd, mode, kv):
    """Prefill and decode pools joined by KV transfers (events the decode runs stop at), decode room limits;
    prefill-first: a decode completion admits a prefilled request and starts its transfer."""
    from simfoe.serving import EngineConfig
    from simfoe.serving.disagg import DisaggConfig, Pool, simulate_disagg
    from simfoe.specs.io import load_hardware

    rng = np.random.default_rng(seed)
    t = RequestTable.from_arrays(np.sort(rng.uniform(0, 2, n)), rng.integers(2, 2000, n), rng.integers(1, 300, n))
    out = []
    for ff in (True, False):
        cfg = EngineConfig(fast_forward=ff)
        pools = [Pool(LIN, size, workers=w, gpus=8, kv_bytes_per_token_per_gpu=2e4, layers=30, engine=cfg)
                 for size, w in ((50_000, xp), (kv, yd))]
        order = "prefill-first" if mode == "prefill-first" else "decode-first"
        cfg = DisaggConfig("after" if order == "prefill-first" else mode, "prefill", load_hardware("h100-sxm"),
                           order=order)
        out.append(simulate_disagg(t, *pools, cfg))
    fast, slow = out
    assert fast.records.equals(slow.records)
    sa, sb = (json.dumps({k: v for k, v in r.summary.items() if k != "sim"}, sort_keys=True) for r in out)
    assert sa == sb


def test_decode_runs_are_advanced_at_once():
    """Eight clients, 2000 output tokens each: almost every iteration is fast-forwarded (the loop turns
    only at arrivals, prefills and completions); off, none is."""
    w = ClosedLoop(8, 128, 2000, 0.0, 16, 0)
    fast, slow = both(w, LIN, 10**6, cost="interp")
    assert_identical(fast, slow)
    rf, rs = fast.engine.replicas[0], slow.engine.replicas[0]
    assert rf.fast_forwarded > 0.95 * rf.iterations
    assert rs.fast_forwarded == 0


@pytest.mark.parametrize("ranks", [1, 2])
def test_runs_stop_before_the_kv_cache_runs_out(ranks):
    """Two clients per rank whose requests outgrow the KV cache while nothing waits: the run stops at the
    iteration that finds no free block, which preempts as the loop does."""
    w = ClosedLoop(2 * ranks, 300, 400, 0.0, 6 * ranks, 0)
    fast, slow = both(w, Ranked(ranks) if ranks > 1 else LIN, 1000 * ranks, cost="interp")
    assert_identical(fast, slow)
    assert fast.summary["kv_cache"]["preemptions"] > 0 and fast.engine.replicas[0].fast_forwarded > 0


def test_exact_hops_reach_a_time_one_addition_cannot():
    """0.10854425736824891 + d skips 2.312985944928338 for every d (a rounding tie): the hops end there
    through the last iteration's latency."""
    now, lat = 0.10854425736824891, np.array([2.2044416799, 0.0173])
    t = np.add.accumulate(np.concatenate(([now], lat)))
    end = float(t[-1])
    hops = exact_hops(now, t, lat)
    x = now
    for d in hops:
        x += d
    assert x == end
    one = exact_hops(now, t[:2], lat[:1])
    assert len(one) == 1 and now + one[0] == t[1]


@settings(max_examples=40, deadline=None)
@given(ds=hs.integers(1, 300), kv0=hs.integers(1, 100_000), k=hs.integers(1, 400), bits=hs.integers(2, 6),
       cls=hs.sampled_from([InterpCost, MemoCost]))
def test_decode_prices_are_the_one_by_one_prices(ds, kv0, k, bits, cls):
    """Bulk decode prices equal the one-iteration prices, float for float, as far as they go (at least one)."""
    a, b = cls(LIN, bits), cls(LIN, bits)
    kv = kv0 + ds * np.arange(k, dtype=np.int64)
    got = a.decode_prices(ds, kv)
    assert 1 <= len(got) <= k
    want = [b.price(0, 0.0, ds, int(y)) if cls is InterpCost else b(_decode(ds, int(y))) for y in kv[:len(got)]]
    assert got.tolist() == want
    assert cls(LIN, bits).decode_price(ds, int(kv[0])) == want[0]


def _decode(ds: int, kv: int):
    from simfoe.forward.work import Work

    return Work(0, 0.0, 0, ds, kv)


@settings(max_examples=40, deadline=None)
@given(pre=hs.integers(0, GapHistogram.BUFFER), n=hs.integers(1, 5000), m=hs.integers(0, 60), seed=hs.integers(0, 99))
def test_histogram_repeated_adds_are_the_single_adds(pre, n, m, seed):
    """``add_repeated(values, n)`` bins, sums and bounds exactly as ``add(np.full(n, v))`` per value."""
    rng = np.random.default_rng(seed)
    vals, first = rng.uniform(1e-4, 1e-1, m), rng.uniform(1e-4, 1e-1, pre)
    a, b = GapHistogram(), GapHistogram()
    for h in (a, b):
        h.add(first)
    a.add_repeated(vals, n)
    for v in vals:
        b.add(np.full(n, v))
    assert np.array_equal(a.counts, b.counts)
    assert a.stats() == b.stats()


@pytest.mark.parametrize("mtp", [0, 1])
def test_off_where_it_does_not_apply(mtp):
    """A timeline (one event per iteration) and multi-token prediction (sampled drafts) run one iteration
    per turn: no iteration is fast-forwarded."""
    w = ClosedLoop(4, 64, 300, 0.0, 8, 0)
    r = simulate(w, LIN, 10**6, cost="interp", timeline=not mtp, mtp=mtp)
    assert r.engine.replicas[0].fast_forwarded == 0
