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
H100M = load_hardware("h100-sxm-measured")  # kernels fitted from our H100 set, with a grouped_gemm family
# h100-sxm without its fused-MoE fits: grouped GEMMs priced by the dense fit (the fallback of profiles without one)
H100D = H100.model_copy(update={"kernels": {f: v for f, v in H100.kernels.items() if not f.startswith("grouped_gemm")}})
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
    # one expert == a plain GEMM where no grouped family is fitted
    assert K.grouped_gemm(H100D, [77], n, k).latency_s == pytest.approx(K.gemm(H100D, 77, n, k).latency_s)
    assert K.grouped_gemm(H100, [0, 0], n, k).latency_s == 0.0


def test_grouped_gemm_row_tiles_by_hand():
    """A grouped_gemm family with m_tile pads each active expert's rows to whole tiles; the small tile
    applies when the mean rows over all experts are at most small_rows (torch._grouped_mm's rule)."""
    fam = {"m_tile": 256, "m_tile_small": 128, "small_rows": 128, "eff_max": 1.0, "n_pad": 0.0, "k_pad": 0.0,
           "mem_eff": 1.0, "mem_floor_bytes": 0.0, "launch_s": 0.0, "smooth_p": math.inf}
    hw = RAW.model_copy(update={"kernels": {"grouped_gemm": fam}})
    n = k = 8192  # compute-bound once an active expert has more than ~300 rows (PEAK / BW / 2 bytes)
    big = K.grouped_gemm(hw, [700, 300], n, k)  # mean 500 rows: 256-row tiles, 3 + 2 of them
    assert big.bound == "compute" and big.flops == 2 * 1000 * n * k
    assert big.latency_s == pytest.approx(2 * 1280 * n * k / PEAK)
    # six idle experts are still groups: the mean drops to 125 rows, so 128-row tiles, 6 + 3 of them
    small = K.grouped_gemm(hw, [700, 300, 0, 0, 0, 0, 0, 0], n, k)
    assert small.bound == "compute" and small.latency_s == pytest.approx(2 * 1152 * n * k / PEAK)
    # skew costs partial tiles: same tokens, same active experts
    assert K.grouped_gemm(hw, [1000, 24], n, k).latency_s > K.grouped_gemm(hw, [512, 512], n, k).latency_s
    # keys the family lacks come from kernels.gemm; without m_tile it is the dense form
    only = RAW.model_copy(update={"kernels": {"gemm": H100.kernels["gemm"], "grouped_gemm": {"launch_s": 1e-3}}})
    assert K.grouped_gemm(only, [5, 7], 1024, 1024).latency_s == pytest.approx(
        K.grouped_gemm(H100D, [5, 7], 1024, 1024).latency_s - H100.kernels["gemm"]["launch_s"] + 1e-3)


def test_moe_slots_by_hand_and_absent_without_its_keys():
    """Per-slot work of a fused MoE kernel: slots x (hidden x slot_bytes + inter x slot_inter_bytes) bytes at
    the grouped family's mem_eff of HBM; the fp8 family's keys price fp8 slots only; no keys, no cost."""
    fam = {"mem_eff": 0.5, "slot_bytes": 2.0, "slot_inter_bytes": 1.0}
    hw = RAW.model_copy(update={"kernels": {"grouped_gemm": fam, "grouped_gemm_fp8": {"slot_bytes": 4.0}}})
    c = K.moe_slots(hw, 100, 1000, 10)
    assert c.bytes == 100 * (1000 * 2.0 + 10 * 1.0) and c.bound == "memory" and c.flops == 0.0
    assert c.latency_s == pytest.approx(201_000 / (BW * 0.5))
    assert K.moe_slots(hw, 100, 1000, 10, "fp8").bytes == 100 * (1000 * 4.0 + 10 * 1.0)
    for prof in (H100, A100, H200, H100M, RAW):  # profiles fitted before the term price experts as before
        assert K.moe_slots(prof, 4096, 7168, 2048).latency_s == 0.0
    assert K.moe_slots(hw, 0, 1000, 10).latency_s == 0.0
    with pytest.raises(SpecError):
        K.moe_slots(hw, -1, 1000, 10)


@settings(max_examples=50, deadline=None)
@given(st.floats(0, 1e6), st.floats(0, 1e6), st.integers(1, 16384), st.integers(1, 8192))
def test_moe_slots_grow_with_the_slots(a, b, hidden, inter):
    hw = RAW.model_copy(update={"kernels": {"grouped_gemm": {"slot_bytes": 1.5, "slot_inter_bytes": 0.5}}})
    lo, hi = sorted((a, b))
    assert K.moe_slots(hw, lo, hidden, inter).latency_s <= K.moe_slots(hw, hi, hidden, inter).latency_s


def test_gemm_fp8_family_prices_fp8_only():
    """kernels.gemm_fp8 overrides kernels.gemm for fp8 GEMMs only; without it fp8 takes the bf16 fit."""
    hw8 = H100.model_copy(update={"kernels": {**H100.kernels, "gemm_fp8": {"eff_max": 0.3}}})
    m, n, k = 8192, 8192, 8192  # compute-bound: latency ~ flops / (fp8 peak * eff_max)
    assert K.gemm(hw8, m, n, k, "bf16") == K.gemm(H100, m, n, k, "bf16")
    slow, base = K.gemm(hw8, m, n, k, "fp8").latency_s, K.gemm(H100, m, n, k, "fp8").latency_s
    assert slow > 1.5 * base
    assert slow >= 2 * m * n * k / (H100.peak("fp8") * 0.3)


def test_gemm_row_tile_by_hand():
    """A gemm family's m_tile rounds the compute term's rows up to whole tiles (gemm_fp8 over gemm); m = 1 (the
    matrix-vector kernel) and families without it keep the exact rows."""
    fam = {"eff_max": 1.0, "m_pad": 0.0, "n_pad": 0.0, "k_pad": 0.0, "mem_eff": 1.0, "mem_floor_bytes": 0.0,
           "launch_s": 0.0, "smooth_p": math.inf}
    hw = RAW.model_copy(update={"kernels": {"gemm": fam, "gemm_fp8": {"m_tile": 128}}})
    n = k = 16384  # compute-bound from 512 rows of fp8 (2 x 512 x n x k / fp8 peak > fp8 bytes / BW)
    c = K.gemm(hw, 513, n, k, "fp8")
    assert c.bound == "compute" and c.flops == 2 * 513 * n * k
    assert c.latency_s == pytest.approx(2 * 640 * n * k / hw.peak("fp8"))  # five 128-row tiles
    assert K.gemm(hw, 512, n, k, "fp8").latency_s == pytest.approx(2 * 512 * n * k / hw.peak("fp8"))
    assert K.gemm_rows(hw, "fp8", 1) == 1 and K.gemm_rows(hw, "fp8", 2) == 128
    assert K.gemm_rows(hw, "bf16", 129) == 129  # bf16 takes kernels.gemm, which has no m_tile
    assert K.gemm(H100, 129, n, k, "fp8") == K.gemm(H100.model_copy(), 129, n, k, "fp8")


def test_grouped_gemm_is_one_launch():
    one = K.grouped_gemm(H100, [4] * 8, 1024, 1024).latency_s
    eight = sum(K.gemm(H100, 4, 1024, 1024).latency_s for _ in range(8))
    assert one < eight


def test_fused_moe_decode_by_hand_no_per_expert_padding():
    """gpt-oss-120b's up projection on vLLM TP 2 at 64 decodes (top-4 of 128 experts: 2 rows per expert;
    n = 2 x 2880 / 2, k = 2880, bf16 activations, MXFP4 weights: 0.5 byte + one 1-byte scale per 32) with
    h100-sxm's grouped_gemm family (fitted to the measured fused-MoE tables): memory-bound, no per-expert row
    padding. The dense fit's 163-row padding per expert made it 2.2x dearer (compute-bound); the measured fused
    MoE layer (both projections) takes 392 us here (vLLM 0.24 gpt-oss kernel, AIConfigurator h100_sxm moe table)."""
    c = K.grouped_gemm(H100, [2] * 128, 2880, 2880, "bf16", "mxfp4")
    weights = 128 * 2880 * 2880 * (0.5 + 1 / 32)  # 564,019,200 B
    assert c.bytes == weights + 2 * 256 * 2880 * 2  # + activations in, outputs out (bf16)
    t_c = 2 * (256 + 128 * 0.0010086) * (2880 + 0.0010005) * (2880 + 373.5) / (989e12 * 0.17564)  # 27.6 us
    t_m = (c.bytes + 1.4799) / (3.35e12 * 0.90115)  # 187.8 us
    p = 1.1151
    assert c.bound == "memory"
    assert c.latency_s == pytest.approx((t_c**p + t_m**p) ** (1 / p) + 1.9971e-5, rel=1e-9)  # 227.5 us
    assert K.grouped_gemm(H100D, [2] * 128, 2880, 2880, "bf16", "mxfp4").latency_s > 2 * c.latency_s


GPU_PROFILES = [load_hardware(p) for p in ("h100-sxm", "h100-sxm-tables", "h100-sxm-measured", "a100-sxm", "h200-sxm",
                                            "b200-sxm", "gb200-nvl72")]


@settings(max_examples=150, deadline=None)
@given(loads=st.lists(st.integers(0, 64), min_size=1, max_size=64), n=st.integers(64, 8192), k=st.integers(64, 8192),
       which=st.integers(0, len(GPU_PROFILES) - 1), dtype=st.sampled_from(["bf16", "fp8"]),
       weights=st.sampled_from([None, "mxfp4"]))
def test_grouped_gemm_between_weight_read_and_separate_launches(loads, n, k, which, dtype, weights):
    """Decode-sized loads on every GPU profile: a grouped launch never takes less than reading its active experts'
    weights at the HBM bandwidth, nor more than launching the same kernel once per active expert (one launch, one
    size floor). Against E dense GEMMs the bound holds where grouped GEMMs are priced by the dense fit (rows >= 2:
    one row is a GEMV without a row tile); measured fused-MoE kernels are not bounded by it (a ~20 us fixed cost: the
    whole gpt-oss-120b MoE layer on TP 4 at one token takes 42.8 us against 4 us to read its weights)."""
    hw = GPU_PROFILES[which]
    dtype = dtype if dtype in hw.gpu.peak_flops else "bf16"  # A100 has no fp8
    w = weights if dtype == "bf16" else None
    c = K.grouped_gemm(hw, loads, n, k, dtype, w)
    active = [t for t in loads if t > 0]
    _, wf, _ = K.operands(dtype, w)
    assert c.latency_s >= len(active) * wf.weight_bytes(k, n) / hw.gpu.hbm_bandwidth * (1 - 1e-12)
    fam = K.grouped_params(hw, "fp8" if dtype == "fp8" else "bf16")
    if "m_tile_small" not in fam:  # a tile chosen by the mean over all experts differs for one expert alone
        alone = sum(K.grouped_gemm(hw, [t], n, k, dtype, w).latency_s for t in active)
        assert c.latency_s <= alone * (1 + 1e-12)
    if not any(f.startswith("grouped_gemm") for f in hw.kernels) and all(t >= 2 for t in active):
        assert c.latency_s <= sum(K.gemm(hw, t, n, k, dtype, w).latency_s for t in active) * (1 + 1e-12)


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
    for hw in (H100D, H100M, H100):  # dense padding; measured row tiles (a tile switch only adds rows); fused MoE fit
        c = K.grouped_gemm(hw, loads, n, k)
        more = list(loads)
        more[idx % len(more)] += extra
        assert K.grouped_gemm(hw, more, n, k).latency_s >= c.latency_s
        assert c.latency_s >= c.flops / hw.peak("bf16") * (1 - 1e-12)
        assert c.latency_s >= c.bytes / hw.gpu.hbm_bandwidth * (1 - 1e-12)


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


# Tiled attention terms (kernel-table fits on Blackwell; kernels.py module doc). A 10-SM toy GPU keeps the hand
# computations short: peak 1e13 FLOP/s, 1e12 B/s, no launch.
TOY = RAW.model_copy(update={"gpu": RAW.gpu.model_copy(update={"sms": 10, "peak_flops": {"bf16": 1e13},
                                                                 "hbm_bandwidth": 1e12, "launch_overhead_s": 0.0})})


def _with(hw, family, **fam):
    return hw.model_copy(update={"kernels": {**hw.kernels, family: fam}})


def test_tiled_prefill_by_hand():
    """q = kv = 300, tile 128: 3 q tiles x 3 kv tiles, causal 6 blocks; 2 x 4 heads = 24 CTAs in 3 waves on
    10 SMs (fill 24/30); head_dim 64 + pad 64 = 128: a block is 4 * 128 * 128^2 FLOP."""
    hw = _with(TOY, "attention_prefill", tile=128, head_dim_pad=64, per_wave_s=1e-6)
    c = K.attention_prefill(hw, 2, 300, 300, 4, 4, 64)
    block = 4 * 128 * 128**2 / 1e13
    t_c = 6 * 8 * block / (24 / 30)
    assert t_c > 3 * block * 10  # the longest CTA (3 blocks on one SM) is shorter here
    assert c.bytes / 1e12 < t_c  # compute-bound (plain max): + 3 waves
    assert c.latency_s == pytest.approx(t_c + 3e-6)
    assert c.flops == 4 * 2 * 4 * 64 * (300 * 300 - 300 * 300 / 2)  # reported work: the exact pairs
    # one sequence, one head: a single CTA per q tile; the last q tile's 3 blocks on one SM bound it
    one = K.attention_prefill(_with(TOY, "attention_prefill", tile=128, head_dim_pad=64), 1, 300, 300, 1, 1, 64)
    assert one.latency_s == pytest.approx(3 * block * 10)


def test_decode_kv_tile_and_split_fill_by_hand():
    """kv 100 and 300 in 128-token tiles read 128 and 384 tokens; 2 sequences x 1 KV head, at most 4 splits
    of >= 128 tokens (mean kv 200: 2 splits) on 10 SMs keep 4 of 10 streaming the KV (Q and O unsplit)."""
    h, hkv, d = 8, 1, 128
    plain = K.attention_decode(TOY, 2, [100, 300], h, hkv, d)
    tiled = K.attention_decode(_with(TOY, "attention_decode", kv_tile=128), 2, [100, 300], h, hkv, d)
    split = K.attention_decode(_with(TOY, "attention_decode", kv_tile=128, max_splits=4, split_tokens=128),
                               2, [100, 300], h, hkv, d)
    q_o = 2 * 2 * h * d * 2  # Q and O, bf16
    assert plain.latency_s == pytest.approx((2 * 2 * d * 400 + q_o) / 1e12)
    assert tiled.latency_s == pytest.approx((2 * 2 * d * 512 + q_o) / 1e12)
    assert split.latency_s == pytest.approx((2 * 2 * d * 512 / (2 * 2 / 10) + q_o) / 1e12)
    assert tiled.bytes == plain.bytes and tiled.flops == plain.flops  # reported traffic: what the model reads
    assert K.attention_decode(_with(TOY, "attention_decode", kv_tile=128), 2, 200, h, hkv, d).latency_s == \
        pytest.approx((2 * 2 * d * 512 + q_o) / 1e12)


def test_prefill_rescale_term_and_shortest_wave_by_hand():
    """rescale_elems E adds d^2 / E head-dim elements per score (the O rescale per kv tile of E / d tokens): d 64,
    pad 64, E 256 -> 144 per score, the 24-CTA case of test_tiled_prefill_by_hand otherwise; min_wave_s: 40 one-token
    sequences are 40 CTAs in 4 waves of 10, each wave at least min_wave_s long."""
    hw = _with(TOY, "attention_prefill", tile=128, head_dim_pad=64, rescale_elems=256)
    block = 4 * (64 + 64 + 64 * 64 / 256) * 128**2 / 1e13
    assert K.attention_prefill(hw, 2, 300, 300, 4, 4, 64).latency_s == pytest.approx(6 * 8 * block / (24 / 30))
    fam = dict(tile=128, head_dim_pad=64)
    short = K.attention_prefill(_with(TOY, "attention_prefill", **fam), 40, 1, 1, 1, 1, 64)
    floored = K.attention_prefill(_with(TOY, "attention_prefill", **fam, min_wave_s=2e-5), 40, 1, 1, 1, 1, 64)
    one_block = 4 * 128 * 128**2 / 1e13 * 10  # one CTA's block on one SM
    assert short.latency_s == pytest.approx(4 * one_block) and 4 * one_block < 8e-5
    assert floored.latency_s == pytest.approx(4 * 2e-5)


MLA_TOY = TOY.model_copy(update={"gpu": TOY.gpu.model_copy(update={"peak_flops": {"bf16": 1e16}})})  # KV-read bound


def test_mla_decode_head_groups_by_hand():
    """TRT-LLM's MLA decode kernels (kernels.MLA_DECODE_HEAD_TILES) on 10 SMs, d = 288 (one latent read as K and V
    halves), reread 0.5, 1e-8 s per (sequence x head group), 1e-9 s per (sequence x query head):
    16 heads: one group of 16; 32 heads: two, the KV latent read 1 + 0.5 times; 128 heads of one sequence at 1000
    tokens: 8 CTAs fit 10 SMs and one split of 1000 <= 1024 tokens, the low-latency kernel, 8 groups; at 2000 tokens
    the high-throughput kernel, one group (measured: B200 128 heads, 16 sequences, 26.8 us at 1024 tokens, 22.8 at
    2048); 2 sequences x 128 heads = 16 CTAs > 10 SMs: one group."""
    hw = _with(MLA_TOY, "attention_decode_mla", head_groups=1, reread=0.5, per_seq_head_s=1e-8, per_seq_qhead_s=1e-9)
    d = 288

    def by_hand(b, kv, h, groups):
        kv_bytes = 2 * 2 * d * b * kv * (1 + 0.5 * (groups - 1))
        t_c = 4 * h * d * b * kv / 1e16
        return max(t_c, (kv_bytes + 2 * 2 * d * b * h) / 1e12) + 1e-8 * b * groups + 1e-9 * b * h

    for b, kv, h, groups in ((1, 1000, 16, 1), (1, 1000, 32, 2), (1, 1000, 128, 8), (1, 2000, 128, 1),
                             (2, 100, 128, 1)):
        assert K.attention_decode(hw, b, kv, h, 1, d, mla=True).latency_s == pytest.approx(by_hand(b, kv, h, groups))
    assert K.attention_decode(hw, 1, 2000, 128, 1, d, mla=True).latency_s < \
        K.attention_decode(hw, 1, 1000, 128, 1, d, mla=True).latency_s  # the kernel switch, as measured
    # the plain family (GQA decode) never groups heads; without head_groups MLA reads the latent once
    assert K.attention_decode(_with(MLA_TOY, "attention_decode", head_groups=1), 1, 1000, 32, 1, d).latency_s == \
        pytest.approx(by_hand(1, 1000, 32, 1) - 1e-8 - 32e-9)
    assert K.attention_decode(_with(MLA_TOY, "attention_decode_mla", reread=0.5), 1, 1000, 32, 1, d,
                              mla=True).latency_s == pytest.approx(by_hand(1, 1000, 32, 1) - 1e-8 - 32e-9)


def test_tiled_terms_need_an_sm_count():
    """Without gpu.sms the tile and split terms are off (the h100-sxm-tables-style smooth form), the pad is not."""
    nosm = TOY.model_copy(update={"gpu": TOY.gpu.model_copy(update={"sms": None})})
    fam = dict(tile=128, per_wave_s=1e-3, max_splits=4)
    assert K.attention_prefill(_with(nosm, "attention_prefill", **fam), 2, 300, 300, 4, 4, 64) == \
        K.attention_prefill(nosm, 2, 300, 300, 4, 4, 64)
    assert K.attention_decode(_with(nosm, "attention_decode", **fam), 2, 300, 4, 4, 64) == \
        K.attention_decode(nosm, 2, 300, 4, 4, 64)


@settings(max_examples=100, deadline=None)
@given(b=st.integers(1, 64), q=st.integers(1, 4096), extra=st.integers(0, 4096), kvh=st.sampled_from([1, 2, 8]),
       g=st.sampled_from([1, 4, 16]), d=st.sampled_from([64, 128, 256]), system=st.sampled_from(["b200-sxm", "gb200-nvl72"]))
def test_tiled_attention_never_beats_untiled_and_grows_with_context(b, q, extra, kvh, g, d, system):
    """On the Blackwell profiles (tiled families): padding to tiles, partial waves and splits only add time over
    the same family without them, and more context never costs less."""
    hw = load_hardware(system)
    untiled = hw.model_copy(update={"kernels": {f: {k: v for k, v in fam.items() if k not in K.TILE_KEYS}
                                                for f, fam in hw.kernels.items()}})
    h = kvh * g
    for mla in (False, True):
        a = K.attention_prefill(hw, b, q, q, h, kvh, d, mla=mla)
        assert a.latency_s >= K.attention_prefill(untiled, b, q, q, h, kvh, d, mla=mla).latency_s * (1 - 1e-12)
        assert K.attention_prefill(hw, b, q, q + extra, h, kvh, d, mla=mla).latency_s >= a.latency_s * (1 - 1e-12)
        dec = K.attention_decode(hw, b, q, h, kvh, d, mla=mla)
        assert dec.latency_s >= K.attention_decode(untiled, b, q, h, kvh, d, mla=mla).latency_s * (1 - 1e-12)
        assert K.attention_decode(hw, b, q + extra, h, kvh, d, mla=mla).latency_s >= dec.latency_s * (1 - 1e-12)
