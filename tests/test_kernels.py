"""Kernel cost model: hand-computed roofline cases and properties of the calibrated model."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.costs import kernels as K
from simfoe.errors import SpecError
from simfoe.specs.io import load_hardware

H100 = load_hardware("h100-sxm")
A100 = load_hardware("a100-sxm")
H200 = load_hardware("h200-sxm")
RAW = H100.model_copy(update={"kernels": {}})  # uncalibrated: pure roofline + launch
PEAK, BW, LAUNCH = 989e12, 3.35e12, 3e-6


def test_roofline_gemm_compute_bound_by_hand():
    c = K.gemm(RAW, 4096, 4096, 4096)
    flops = 2 * 4096**3
    nbytes = 2 * 3 * 4096 * 4096
    assert c.flops == flops and c.bytes == nbytes
    assert c.bound == "compute"
    assert c.latency_s == pytest.approx(flops / PEAK + LAUNCH)


def test_roofline_gemm_memory_bound_by_hand():
    c = K.gemm(RAW, 1, 8192, 8192)
    nbytes = 2 * (8192 + 8192 * 8192 + 8192)
    assert c.bytes == nbytes and c.bound == "memory"
    assert c.latency_s == pytest.approx(nbytes / BW + LAUNCH)


def test_roofline_launch_bound_and_zero():
    c = K.gemm(RAW, 1, 16, 16)
    assert c.bound == "launch"
    assert K.gemm(H100, 0, 16, 16).latency_s == 0.0


def test_fp8_halves_bytes_and_uses_fp8_peak():
    c = K.gemm(RAW, 4096, 4096, 4096, "fp8")
    assert c.bytes == 3 * 4096 * 4096
    assert c.latency_s == pytest.approx(2 * 4096**3 / 1979e12 + LAUNCH)


def test_grouped_gemm_by_hand_and_idle_experts_free():
    n, k = 2048, 1024
    c = K.grouped_gemm(RAW, [0, 3, 5, 0], n, k)
    assert c.flops == 2 * 8 * n * k
    assert c.bytes == 2 * (2 * n * k + 8 * (n + k))  # 2 active experts' weights once, tokens in/out
    assert c.latency_s == pytest.approx(c.bytes / BW + LAUNCH)
    # adding idle experts changes nothing
    assert K.grouped_gemm(H100, [0, 3, 5, 0, 0, 0], n, k) == K.grouped_gemm(H100, [3, 5], n, k)
    # one expert == a plain GEMM
    assert K.grouped_gemm(H100, [77], n, k).latency_s == pytest.approx(K.gemm(H100, 77, n, k).latency_s)
    assert K.grouped_gemm(H100, [0, 0], n, k).latency_s == 0.0


def test_grouped_gemm_is_one_launch():
    one = K.grouped_gemm(H100, [4] * 8, 1024, 1024).latency_s
    eight = sum(K.gemm(H100, 4, 1024, 1024).latency_s for _ in range(8))
    assert one < eight


def test_attention_prefill_by_hand():
    b, q, h, hkv, d = 2, 1024, 32, 8, 128
    c = K.attention_prefill(RAW, b, q, q, h, hkv, d, causal=True)
    full = K.attention_prefill(RAW, b, q, q, h, hkv, d, causal=False)
    assert full.flops == 4 * b * h * q * q * d
    assert c.flops == full.flops / 2
    assert c.bytes == 2 * b * d * (2 * q * h + 2 * q * hkv)
    assert full.latency_s == pytest.approx(max(full.flops / PEAK, full.bytes / BW) + LAUNCH)
    with pytest.raises(SpecError):
        K.attention_prefill(H100, 1, 10, 5, 8, 8, 64)


def test_attention_prefill_uses_published_efficiency():
    c = K.attention_prefill(H100, 4, 8192, 8192, 32, 8, 128)
    achieved = c.flops / c.latency_s
    assert 0.9 * 328e12 < achieved <= 328e12 * 1.001


def test_attention_decode_by_hand_and_memory_bound():
    b, kv, h, hkv, d = 16, 4096, 32, 8, 128
    c = K.attention_decode(RAW, b, kv, h, hkv, d)
    assert c.bytes == 2 * d * (2 * hkv * b * kv + 2 * b * h)
    assert c.flops == 4 * h * d * b * kv
    assert c.bound == "memory"
    assert c.latency_s == pytest.approx(c.bytes / BW + LAUNCH)
    per_seq = K.attention_decode(H100, 3, [100, 200, 300], h, hkv, d)
    assert per_seq == K.attention_decode(H100, 3, 200, h, hkv, d)
    with pytest.raises(SpecError):
        K.attention_decode(H100, 2, [1, 2, 3], h, hkv, d)


def test_elementwise_by_hand_and_kinds():
    c = K.elementwise(RAW, 1e9)
    assert c.latency_s == pytest.approx(1e9 / BW + LAUNCH) and c.bound == "memory"
    assert K.elementwise(H100, 1e8, kind="norm").latency_s > K.elementwise(H100, 1e8, kind="add").latency_s
    with pytest.raises(SpecError):
        K.elementwise(H100, 1e8, kind="softmax")


@pytest.mark.parametrize("bad", [dict(m=-1), dict(n=0), dict(k=float("nan")), dict(dtype="int3")])
def test_bad_input_raises_spec_error(bad):
    args = dict(m=8, n=8, k=8, dtype="bf16") | bad
    with pytest.raises(SpecError):
        K.gemm(H100, args["m"], args["n"], args["k"], args["dtype"])


def test_vectorized_twin_matches_scalar():
    m = np.array([1, 7, 128, 1000, 4096], dtype=float)
    n, k = np.full(5, 5120.0), np.full(5, 2048.0)
    arr = K.gemm_time_array(H100.peak("bf16"), H100.gpu.hbm_bandwidth, K.gemm_params(H100), m, n, k)
    for i in range(5):
        assert arr[i] == pytest.approx(K.gemm(H100, int(m[i]), 5120, 2048).latency_s, rel=1e-12)


def test_h200_shares_h100_efficiency_but_faster_memory():
    assert H200.kernels["gemm"] == H100.kernels["gemm"]
    assert K.gemm(H200, 1, 8192, 8192).latency_s < K.gemm(H100, 1, 8192, 8192).latency_s


dims = st.integers(min_value=1, max_value=1 << 15)
HWS = [H100, A100, H200, RAW]


@settings(max_examples=150, deadline=None)
@given(m=dims, n=dims, k=dims, dm=st.integers(0, 4096), which=st.sampled_from(range(len(HWS))),
       axis=st.sampled_from("mnk"))
def test_gemm_monotone_in_each_dim(m, n, k, dm, which, axis):
    hw = HWS[which]
    base = K.gemm(hw, m, n, k).latency_s
    bigger = dict(m=m, n=n, k=k)
    bigger[axis] += dm
    assert K.gemm(hw, **bigger).latency_s >= base


@settings(max_examples=150, deadline=None)
@given(m=dims, n=dims, k=dims, which=st.sampled_from(range(len(HWS))),
       fp=st.floats(1.0, 4.0), fb=st.floats(1.0, 4.0))
def test_more_peak_or_bandwidth_never_slower_and_bounds(m, n, k, which, fp, fb):
    hw = HWS[which]
    c = K.gemm(hw, m, n, k)
    assert c.latency_s >= c.flops / hw.peak("bf16") * (1 - 1e-12)
    assert c.latency_s >= c.bytes / hw.gpu.hbm_bandwidth * (1 - 1e-12)
    gpu = hw.gpu.model_copy(update={"peak_flops": {d: v * fp for d, v in hw.gpu.peak_flops.items()},
                                    "hbm_bandwidth": hw.gpu.hbm_bandwidth * fb})
    faster = hw.model_copy(update={"gpu": gpu})
    assert K.gemm(faster, m, n, k).latency_s <= c.latency_s * (1 + 1e-12)


@settings(max_examples=100, deadline=None)
@given(b=st.floats(0, 1e11), db=st.floats(0, 1e10), which=st.sampled_from(range(len(HWS))),
       kind=st.sampled_from([None, "norm", "act", "add"]))
def test_elementwise_monotone_in_bytes(b, db, which, kind):
    hw = HWS[which]
    c = K.elementwise(hw, b, kind=kind)
    assert K.elementwise(hw, b + db, kind=kind).latency_s >= c.latency_s
    assert c.latency_s >= b / hw.gpu.hbm_bandwidth * (1 - 1e-12)


@settings(max_examples=100, deadline=None)
@given(loads=st.lists(st.integers(0, 2000), min_size=1, max_size=64), extra=st.integers(0, 500),
       idx=st.integers(0, 63), n=st.integers(64, 8192), k=st.integers(64, 8192))
def test_grouped_gemm_monotone_and_bounded(loads, extra, idx, n, k):
    c = K.grouped_gemm(H100, loads, n, k)
    more = list(loads)
    more[idx % len(more)] += extra
    assert K.grouped_gemm(H100, more, n, k).latency_s >= c.latency_s
    assert c.latency_s >= c.flops / H100.peak("bf16") * (1 - 1e-12)
    assert c.latency_s >= c.bytes / H100.gpu.hbm_bandwidth * (1 - 1e-12)


@settings(max_examples=100, deadline=None)
@given(b=st.integers(1, 64), q=st.integers(1, 4096), extra=st.integers(0, 4096),
       kvh=st.sampled_from([1, 2, 8]), g=st.sampled_from([1, 4, 8]), d=st.sampled_from([64, 128]))
def test_attention_monotone_in_context(b, q, extra, kvh, g, d):
    h = kvh * g
    a = K.attention_prefill(H100, b, q, q, h, kvh, d)
    assert K.attention_prefill(H100, b, q, q + extra, h, kvh, d).latency_s >= a.latency_s
    dec = K.attention_decode(H100, b, q, h, kvh, d)
    assert K.attention_decode(H100, b, q + extra, h, kvh, d).latency_s >= dec.latency_s
    assert dec.latency_s >= dec.bytes / H100.gpu.hbm_bandwidth


def test_cost_is_cheap_plain_floats():
    c = K.gemm(H100, 100, 200, 300)
    assert all(type(x) is float for x in (c.latency_s, c.flops, c.bytes))
    assert math.isfinite(c.latency_s)
