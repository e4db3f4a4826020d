"""Arrival processes, length sampling and the RequestTable container."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.errors import SpecError
from simfoe.workloads import (
    LognormalLengths,
    RequestTable,
    gamma_arrivals,
    parse_arrival,
    poisson_arrivals,
    renewal_arrivals_until,
    rescale_to_rate,
    sample_rows,
)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_poisson_rate_and_cv():
    a = poisson_arrivals(200_000, 5.0, rng())
    g = np.diff(a)
    assert a[0] == 0.0 and np.all(g >= 0)
    # mean gap 1/rate = 0.2 s; exponential gaps have CV 1 (sampling error ~ 1/sqrt(n) ~ 0.2%)
    assert g.mean() == pytest.approx(0.2, rel=0.01)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_burstiness(cv):
    g = np.diff(gamma_arrivals(200_000, 10.0, cv, rng(1)))
    assert g.mean() == pytest.approx(0.1, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(cv, rel=0.05)


def test_deterministic_given_seed():
    np.testing.assert_array_equal(gamma_arrivals(100, 3.0, 2.0, rng(7)), gamma_arrivals(100, 3.0, 2.0, rng(7)))
    assert not np.array_equal(poisson_arrivals(100, 3.0, rng(7)), poisson_arrivals(100, 3.0, rng(8)))


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0.05, 500), duration=st.floats(0.1, 200), cv=st.floats(0.2, 5), seed=st.integers(0, 2**31))
def test_until_duration_properties(rate, duration, cv, seed):
    a = renewal_arrivals_until(duration, rate, rng(seed), cv)
    assert a[0] == 0.0 and a[-1] < duration and np.all(np.diff(a) >= 0)


def test_until_duration_count_matches_rate():
    a = renewal_arrivals_until(1000.0, 20.0, rng(3))
    # Poisson count over 1000 s at 20/s: mean 20,000, std ~141
    assert abs(len(a) - 20_000) < 6 * 141


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1e5), min_size=2, max_size=50, unique=True), st.floats(0.01, 100))
def test_rescale_hits_rate_and_keeps_order(ts, rate):
    a = np.sort(np.asarray(ts))
    b = rescale_to_rate(a, rate)
    assert b[0] == 0.0
    assert (len(b) - 1) / b[-1] == pytest.approx(rate, rel=1e-9)
    np.testing.assert_array_equal(np.argsort(a, kind="stable"), np.argsort(b, kind="stable"))


@pytest.mark.parametrize(
    "spec, cv, expect",
    [("poisson", None, ("renewal", 1.0)), ("gamma:2.5", None, ("renewal", 2.5)), ("gamma", 3, ("renewal", 3.0)),
     ("trace", None, ("trace", 1.0)), (None, None, ("renewal", 1.0))],
)
def test_parse_arrival(spec, cv, expect):
    assert parse_arrival(spec, cv) == expect


@pytest.mark.parametrize("spec, cv", [("gamma", None), ("gamma:x", None), ("gamma:-1", None), ("weibull", None),
                                      ("poisson", 2.0)])
def test_parse_arrival_rejects(spec, cv):
    with pytest.raises(SpecError):
        parse_arrival(spec, cv)


@pytest.mark.parametrize("rate", [0, -1, float("nan"), float("inf")])
def test_bad_rate(rate):
    with pytest.raises(SpecError, match="rate"):
        poisson_arrivals(10, rate, rng())


# ------------------------------------------------------------------ RequestTable
def table_with_hashes():
    return RequestTable.from_arrays(
        [0, 1, 2, 3], [10, 20, 30, 40], [1, 2, 3, 4], prompt_type=list("abcd"),
        hash_lists=[[1], [2, 3], [], [4, 5, 6]], hash_block_tokens=512,
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=12))
def test_fancy_index_keeps_hashes_aligned(idx):
    t = table_with_hashes()
    s = t[np.asarray(idx, dtype=np.int64)]
    assert len(s) == len(idx)
    for k, i in enumerate(idx):
        np.testing.assert_array_equal(s.prefix_hashes(k), t.prefix_hashes(i))
        assert s.prompt_tokens[k] == t.prompt_tokens[i] and s.prompt_type[k] == t.prompt_type[i]


@pytest.mark.parametrize("sl", [slice(1, 3), slice(0, 0), slice(2, None), slice(None, None, 2), slice(3, 1)])
def test_slices_keep_hashes_aligned(sl):
    t = table_with_hashes()
    s = t[sl]
    for k, i in enumerate(range(4)[sl]):
        np.testing.assert_array_equal(s.prefix_hashes(k), t.prefix_hashes(i))


def test_table_validation():
    with pytest.raises(SpecError, match="prompt_tokens"):
        RequestTable.from_arrays([0, 1], [0, 5], [1, 1])
    with pytest.raises(SpecError, match="request_id"):
        RequestTable.from_arrays([0, 1], [1, 5], [1, 1], request_id=[3, 3])
    with pytest.raises(SpecError, match="arrival_s"):
        RequestTable.from_arrays([0, -1], [1, 5], [1, 1])
    with pytest.raises(SpecError, match="output_tokens"):
        RequestTable(np.zeros(2), np.ones(2, np.int64), np.ones(3, np.int64), np.arange(2))


def test_truncate_and_rate():
    t = RequestTable.from_arrays([0, 1, 2, 3, 4], [1] * 5, [1] * 5)
    assert len(t.truncated(2.5)) == 3
    assert t.mean_rate == pytest.approx(1.0)
    with pytest.raises(SpecError, match="duration"):
        RequestTable.from_arrays(None, [1], [1]).truncated(1.0)


# ------------------------------------------------------------------ lengths
def test_sample_rows_deterministic_and_from_source():
    t = table_with_hashes()
    a, b = sample_rows(t, 50, rng(4)), sample_rows(t, 50, rng(4))
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert set(a.prompt_tokens) <= set(t.prompt_tokens)
    np.testing.assert_array_equal(a.request_id, np.arange(50))


def test_lognormal_fit_recovers_parameters():
    r = rng(5)
    z0 = r.normal(7.0, 0.8, 100_000)
    z1 = 4.0 + 0.5 * (0.6 * (z0 - 7.0) / 0.8 + 0.8 * r.normal(size=100_000))
    t = RequestTable.from_arrays(None, np.rint(np.exp(z0)) + 1, np.rint(np.exp(z1)) + 1)
    f = LognormalLengths.fit(t)
    assert f.mu[0] == pytest.approx(7.0, abs=0.02) and f.sigma[1] == pytest.approx(0.5, rel=0.05)
    assert f.rho == pytest.approx(0.6, abs=0.03)
    p, o = f.sample(100_000, rng(6))
    assert p.min() >= 1 and p.max() <= t.prompt_tokens.max() and o.max() <= t.output_tokens.max()
    assert np.median(p) == pytest.approx(np.median(t.prompt_tokens), rel=0.05)
