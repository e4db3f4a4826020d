"""Routing sampler: conservation, bounds and the analytic uniform case."""
from __future__ import annotations

from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.errors import SpecError
from simfoe.forward.routing import expert_probs, route_group, sample_topk
from simfoe.specs.routing import parse_routing

SPECS = ["uniform", "zipf:1.2", "dirichlet:0.5", "hotset:0.25:0.7"]


@settings(max_examples=40, deadline=None)
@given(spec=st.sampled_from(SPECS), E=st.sampled_from([8, 16, 64]), k=st.integers(1, 4),
       g=st.sampled_from([1, 2, 4, 8]), tokens=st.lists(st.integers(0, 300), min_size=1, max_size=8),
       dedup=st.booleans(), seed=st.integers(0, 2**16))
def test_conservation_and_bounds(spec, E, k, g, tokens, dedup, seed):
    rng = np.random.default_rng(seed)
    tpg = np.resize(np.array(tokens), g)
    p = expert_probs(parse_routing(spec), E, 1, rng)[0]
    assert p.sum() == pytest.approx(1.0)
    epg = E // g
    s = route_group(p, tpg, k, epg, dedup, rng)
    T = int(tpg.sum())
    assert s.expert_load.sum() == pytest.approx(T * k)  # every token lands k times
    assert s.activations == T * k
    assert 0 <= s.local <= s.activations
    # rows of the traffic matrix: what each source GPU sends (incl. to itself)
    sent = s.traffic_tokens.sum(axis=1)
    if dedup:
        assert np.all(sent <= tpg * min(k, g) + 1e-9) and np.all(sent >= tpg - 1e-9)
    else:
        assert sent == pytest.approx(tpg * k)


def test_topk_distinct_per_token():
    rng = np.random.default_rng(0)
    p = expert_probs(parse_routing("zipf:2.0"), 16, 1, rng)[0]
    ch = sample_topk(p, 2000, 4, rng)
    assert all(len(set(r)) == 4 for r in ch)


def test_uniform_dedup_traffic_matches_analytic():
    """P(a token hits GPU j) = 1 - C(E - epg, k) / C(E, k) for uniform k-sets."""
    rng = np.random.default_rng(1)
    E, k, g = 128, 4, 16
    epg = E // g
    p = expert_probs(parse_routing("uniform"), E, 1, rng)[0]
    s = route_group(p, np.full(g, 2000), k, epg, True, rng)
    ph = 1 - comb(E - epg, k) / comb(E, k)
    off = s.traffic_tokens[~np.eye(g, dtype=bool)]
    assert off.mean() == pytest.approx(2000 * ph, rel=0.02)
    assert s.local / s.activations == pytest.approx(1 / g, rel=0.05)


@pytest.mark.parametrize("bad", ["zipf", "zipf:-1", "dirichlet:x", "hotset:2:0.5", "gauss", "trace:/no/such.npy"])
def test_bad_routing_names_the_field(bad):
    with pytest.raises(SpecError, match="routing"):
        spec = parse_routing(bad)
        expert_probs(spec, 8, 1, np.random.default_rng(0))


def test_trace_routing(tmp_path):
    f = tmp_path / "counts.csv"
    f.write_text("10,0,0,0\n0,5,5,0\n")
    p = expert_probs(parse_routing(f"trace:{f}"), 4, 3, np.random.default_rng(0))
    assert p[0].tolist() == [1, 0, 0, 0] and p[1].tolist() == [0, 0.5, 0.5, 0] and p[2].tolist() == [1, 0, 0, 0]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), g=st.sampled_from([1, 2, 4, 8, 16]), n=st.integers(0, 3000), dedup=st.booleans(),
       repeats=st.integers(1, 4))
def test_routing_memo_is_exact(seed, g, n, dedup, repeats):
    """A memoized route_group returns what sampling returns and leaves the generator where sampling
    leaves it, for any sequence of calls (repeated token counts hit the memo)."""
    probs = expert_probs(parse_routing("zipf:1.2"), 16, 2, np.random.default_rng(seed))
    memo = {}
    counts = np.random.default_rng(seed + 1).multinomial(n, np.ones(g) / g) if n else np.zeros(g, np.int64)
    for _ in range(repeats):
        for layer in (0, 1, 0):
            rng_a = np.random.default_rng(seed)  # a fresh pass: same state, so the memo hits
            rng_b = np.random.default_rng(seed)
            a = route_group(probs[layer], counts, 2, 16 // g, dedup, rng_a)
            b = route_group(probs[layer], counts, 2, 16 // g, dedup, rng_b, memo=memo)
            assert np.array_equal(a.expert_load, b.expert_load)
            assert np.array_equal(a.traffic_tokens, b.traffic_tokens)
            assert (a.local, a.activations) == (b.local, b.activations)
            assert rng_a.random() == rng_b.random()  # same generator state afterwards
    assert len(memo) <= 2  # one entry per layer's probabilities
