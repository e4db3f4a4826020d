"""Precision per component (issue 22.3): byte counts per format, the math peak a GEMM runs at, the
``model.dtype`` shorthand, KV-cache and weight memory following the formats, and bad values refused."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.api import forward, forward_model
from simfoe.costs import kernels as K
from simfoe.errors import SpecError
from simfoe.specs.io import load_hardware, load_model
from simfoe.specs.precision import FORMATS, Precision, number_format

H100 = load_hardware("h100-sxm")
GPU1 = ["hardware.node.gpus_per_node=1"]  # one GPU per node: an instance of --nodes GPUs


# ---- bytes per format, by hand ---------------------------------------------------------------------
def test_fp8_block_weight_counts_one_fp32_scale_per_128x128_block():
    # DeepSeek-V3 expert down-projection 7168 x 2048: 56 x 16 blocks of 128 x 128, 4 bytes each
    assert number_format("fp8-block").weight_bytes(7168, 2048) == 7168 * 2048 + 4 * (7168 / 128) * (2048 / 128)


def test_fp8_block_activation_counts_one_scale_per_1x128_tile():
    assert number_format("fp8-block").act_bytes(4, 7168) == 4 * 7168 + 4 * 4 * (7168 / 128)


def test_mxfp4_is_4_25_bits_and_nvfp4_4_5_bits_per_element():
    k, n = 2880, 5760  # gpt-oss-120b expert up-projection
    assert number_format("mxfp4").weight_bytes(k, n) == k * n / 2 + (k / 32) * n * 1  # one e8m0 byte per 32
    assert number_format("nvfp4").weight_bytes(k, n) == k * n / 2 + (k / 16) * n * 1 + 4  # e4m3 per 16, fp32 per tensor
    assert FORMATS["mxfp4"].bytes_per_param * 8 == 4.25
    assert FORMATS["nvfp4"].bytes_per_param * 8 == 4.5


def test_partial_blocks_round_up():
    # 130 x 129: 2 x 2 blocks of 128 x 128
    assert number_format("fp8-block").weight_bytes(130, 129) == 130 * 129 + 4 * 2 * 2


def test_gemm_bytes_count_each_operand_in_its_format():
    m, n, k = 16, 2048, 7168
    c = K.gemm(H100, m, n, k, "fp8-block", "fp8-block")
    # A fp8 + 1x128 scales, B fp8 + 128x128 scales, C written in bf16 (DeepGEMM gemm_fp8_fp8_bf16_nt)
    assert c.bytes == m * k + 4 * m * 56 + k * n + 4 * 56 * 16 + 2 * m * n
    w4 = K.gemm(H100, m, n, k, "bf16", "mxfp4")
    assert w4.bytes == 2 * m * k + k * n / 2 + (k / 32) * n + 2 * m * n


def test_plain_dtype_gemm_unchanged():
    """A GEMM given one plain dtype counts it for A, B and C, as before formats existed."""
    c = K.gemm(H100, 64, 4096, 4096, "fp8")
    assert c.bytes == 64 * 4096 + 4096 * 4096 + 64 * 4096


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 4096), k=st.integers(1, 16384), n=st.integers(1, 16384),
       name=st.sampled_from(sorted(FORMATS)))
def test_scale_bytes_never_negative(m, k, n, name):
    f = FORMATS[name]
    assert f.weight_bytes(k, n) >= f.elem_bytes * k * n
    assert f.act_bytes(m, k) >= f.elem_bytes * m * k


NARROWING = ("bf16", "fp8-block", "fp8", "nvfp4", "mxfp4")  # weight formats by falling bytes per element


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 32), k=st.integers(1, 64).map(lambda x: 128 * x), n=st.integers(1, 64).map(lambda x: 128 * x),
       act=st.sampled_from(["bf16", "fp8", "fp8-block"]))
def test_narrower_weights_never_slow_a_decode_gemm(m, k, n, act):
    """Same activations (same math peak), fewer weight bytes: a decode-sized GEMM is never slower."""
    times = [K.gemm(H100, m, n, k, act, w).latency_s for w in NARROWING]
    assert all(b <= a for a, b in zip(times, times[1:])), dict(zip(NARROWING, times))
    loads = [m, 0, 2 * m]
    grouped = [K.grouped_gemm(H100, loads, n, k, act, w).latency_s for w in NARROWING]
    assert all(b <= a for a, b in zip(grouped, grouped[1:]))


# ---- math peak ---------------------------------------------------------------------------------------
def test_fp4_weights_run_at_the_activation_peak_without_fp4_tensor_cores():
    """H100 has no fp4 peak: mxfp4 weights with bf16 activations are weight-only quantization, so a
    compute-bound GEMM takes as long as in bf16 (same FLOPs, bf16 peak)."""
    assert K.operands("bf16", "mxfp4")[2] == "bf16"
    assert K.operands("fp8-block", "nvfp4")[2] == "fp8"
    big = (8192, 8192, 8192)
    assert K.gemm(H100, *big, "bf16", "mxfp4").latency_s == pytest.approx(K.gemm(H100, *big, "bf16").latency_s,
                                                                          rel=1e-3)
    with pytest.raises(SpecError, match="fp4"):
        K.gemm(H100, 64, 64, 64, "nvfp4", "nvfp4")  # fp4 x fp4 needs fp4 tensor cores


def test_fp4_peak_where_the_hardware_has_one():
    b = H100.model_copy(deep=True)
    b.gpu.peak_flops["fp4"] = 2 * b.gpu.peak_flops["fp8"]
    big = (8192, 8192, 8192)
    t4 = K.gemm(b, *big, "nvfp4", "nvfp4").latency_s
    t8 = K.gemm(b, *big, "fp8", "fp8").latency_s
    assert t4 < 0.6 * t8


# ---- the model.dtype shorthand -----------------------------------------------------------------------
def _model(dtype: str, **precision):
    m = load_model("mixtral-8x7b").model_copy(update={"dtype": dtype})
    return m.model_copy(update={"precision": m.precision.model_copy(update=precision)})


def test_fp8_shorthand_expansion():
    assert _model("fp8").formats == Precision(
        gemm_weights="fp8-block", gemm_activations="fp8-block", expert_weights="fp8-block", attention="bf16",
        kv_cache="bf16", dispatch="fp8", combine="bf16", residual="bf16", shorthand="fp8")


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_plain_shorthand_puts_everything_in_it(dtype):
    f = _model(dtype).formats
    assert {getattr(f, k) for k in Precision.__dataclass_fields__} == {dtype}


def test_fields_given_override_the_shorthand():
    f = _model("fp8", kv_cache="fp8", attention="fp8").formats
    assert (f.kv_cache, f.attention, f.gemm_weights, f.combine) == ("fp8", "fp8", "fp8-block", "bf16")
    g = _model("bf16", gemm_weights="fp8-block").formats
    assert g.expert_weights == "fp8-block" and g.gemm_activations == "bf16"  # experts follow the GEMM weights
    h = _model("bf16", gemm_weights="fp8-block", expert_weights="mxfp4").formats
    assert h.expert_weights == "mxfp4"


def test_published_formats_of_the_presets():
    assert load_model("deepseek-v3").formats.gemm_weights == "fp8-block"  # the released fp8 checkpoint
    assert load_model("deepseek-v3").formats.attention == "bf16"
    gpt = load_model("gpt-oss-120b").formats
    assert (gpt.expert_weights, gpt.gemm_weights) == ("mxfp4", "bf16")
    for name in ("mixtral-8x7b", "qwen3-235b-a22b", "olmoe-1b-7b", "llama-3-70b"):
        assert load_model(name).formats.gemm_weights == "bf16"


# ---- memory and the forward pass ---------------------------------------------------------------------
def test_fp8_kv_cache_halves_kv_bytes():
    kw = dict(model="mixtral-8x7b", hardware="h100-sxm", nodes=1)
    bf = forward_model(**kw)
    f8 = forward_model(**kw, overrides=["model.precision.kv_cache=fp8"])
    assert f8.kv_bytes_per_token_per_gpu() == bf.kv_bytes_per_token_per_gpu() / 2
    assert f8.model.kv_bytes_per_token() == bf.model.kv_bytes_per_token() / 2
    assert f8.kv_capacity_tokens() == pytest.approx(2 * bf.kv_capacity_tokens(), rel=1e-6, abs=8)
    assert f8.weight_bytes_per_gpu() == bf.weight_bytes_per_gpu()


def test_gpt_oss_fits_one_h100_with_mxfp4_experts_only():
    """gpt-oss-120b's MXFP4 experts fit one 80 GB H100 (72 GB usable); in bf16 they need ~234 GB."""
    kw = dict(model="gpt-oss-120b", hardware="h100-sxm", nodes=1, phase="decode", batch=8, seq_len=1024)
    mx = forward(**kw, overrides=GPU1)
    bf = forward(**kw, overrides=GPU1 + ["model.precision.expert_weights=bf16"])
    assert mx["memory"]["fits"] and not bf["memory"]["fits"]
    m = load_model("gpt-oss-120b")
    expert_params = m.n_moe_layers * m.moe.n_experts * m.expert_params()
    saved = bf["memory"]["weights_bytes_per_gpu"] - mx["memory"]["weights_bytes_per_gpu"]
    assert saved == pytest.approx(expert_params * (2 - 4.25 / 8))
    assert mx["latency_s"] < bf["latency_s"]  # decode reads fewer expert bytes at the same math


def test_fp8_shorthand_runs_attention_at_bf16():
    """Under model.dtype=fp8 attention stays bf16 (DeepSeek runs MLA in bf16); fp8 attention is a choice."""
    kw = dict(model="mixtral-8x7b", hardware="h100-sxm", nodes=1, phase="prefill", batch=2, seq_len=4096)
    short = forward(**kw, overrides=["model.dtype=fp8"])["breakdown_s"]["attention"]
    explicit = forward(**kw, overrides=["model.dtype=fp8", "model.precision.attention=bf16"])["breakdown_s"]["attention"]
    fp8 = forward(**kw, overrides=["model.dtype=fp8", "model.precision.attention=fp8"])["breakdown_s"]["attention"]
    assert short == explicit and fp8 < short


def test_dispatch_and_combine_follow_their_formats():
    kw = dict(model="mixtral-8x7b", hardware="h100-sxm", nodes=1, phase="decode", batch=64, seq_len=512)
    bf = forward(**kw)["comm_bytes"]["all_to_all"]["intra_node"]
    f8 = forward(**kw, overrides=["model.precision.dispatch=fp8"])["comm_bytes"]["all_to_all"]["intra_node"]
    h = load_model("mixtral-8x7b").hidden
    # a decode pass runs deepep-ll: its fp8 dispatch moves hidden + hidden/128 x 4 + 16 bytes per message instead
    # of 2 x hidden; the bf16 combine is unchanged
    assert f8 == pytest.approx(bf * (h + h / 128 * 4 + 16 + 2 * h) / (4 * h), rel=1e-9)


# ---- bad input -----------------------------------------------------------------------------------------
FWD = ["forward", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--batch", "2", "--seq-len", "64",
       "--phase", "decode", "--json"]


@pytest.mark.parametrize("settings, words", [
    (["model.precision.kv_cache=fp4"], ["model.precision.kv_cache", "fp4", "fp8"]),
    (["model.precision.expert_weights=int4"], ["model.precision.expert_weights", "int4", "mxfp4"]),
    (["model.precision.combine=fp8"], ["model.precision.combine", "fp8", "bf16"]),
    # fp4 x fp4 on an H100: no fp4 tensor cores
    (["model.precision.gemm_activations=nvfp4", "model.precision.expert_weights=nvfp4",
      "model.precision.gemm_weights=nvfp4"], ["model.precision.gemm_activations", "nvfp4", "fp4", "bf16, fp8"]),
])
def test_bad_precision_exits_2_with_one_line(refused, settings, words):
    refused([*FWD, *(a for s in settings for a in ("--set", s))], *words)


def test_fp8_attention_needs_an_fp8_peak(refused, capsys):
    from simfoe.cli import main

    assert main([*FWD, "--set", "model.precision.attention=fp8"]) == 0  # H100 has one
    capsys.readouterr()
    refused([*FWD[:4], "a100-sxm", *FWD[5:], "--set", "model.precision.attention=fp8"],
            "model.precision.attention", "fp8", "bf16")


def test_presets_list_the_weight_formats():
    from simfoe.presets import model_preset

    gpt = model_preset("gpt-oss-120b")
    assert gpt.line.endswith("bf16 weights (mxfp4 experts)") and gpt.to_dict()["precision"]["expert_weights"] == "mxfp4"
    assert model_preset("deepseek-v3").line.endswith("MLA, fp8-block weights")


# ---- simfoe kernel takes the formats -------------------------------------------------------------------
def _kernel(capsys, *argv):
    import json

    from simfoe.cli import main

    assert main(["kernel", "--hardware", "h100-sxm", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_kernel_cli_prices_weight_and_kv_formats(capsys):
    m, n, k = 4, 2048, 7168
    r = _kernel(capsys, "--op", "gemm", "--m", m, "--n", n, "--k", k, "--dtype", "bf16", "--weights", "mxfp4")
    assert r["bytes"] == 2 * m * k + k * n / 2 + (k / 32) * n + 2 * m * n
    b, ctx, h, hkv, d = 8, 4096, 8, 1, 128
    r = _kernel(capsys, "--op", "attention_decode", "--batch", b, "--kv-len", ctx, "--heads", h, "--kv-heads", hkv,
                "--head-dim", d, "--kv-dtype", "fp8")
    assert r["bytes"] == d * (1 * 2 * hkv * b * ctx + 2 * 2 * b * h)  # K, V in fp8; Q, O in bf16
    fp4 = _kernel(capsys, "--op", "gemm", "--m", 8192, "--n", 8192, "--k", 8192, "--dtype", "nvfp4",
                  "--set", "hardware.gpu.peak_flops.fp4=3.958e15")
    fp8 = _kernel(capsys, "--op", "gemm", "--m", 8192, "--n", 8192, "--k", 8192, "--dtype", "fp8")
    assert fp4["latency_s"] < fp8["latency_s"]


KERNEL = ["kernel", "--hardware", "h100-sxm", "--op", "gemm", "--m", "4", "--n", "64", "--k", "64", "--json"]


@pytest.mark.parametrize("extra, words", [
    (["--dtype", "nvfp4"], ["--dtype", "nvfp4", "fp8-block"]),  # no fp4 peak on an H100
    (["--weights", "int4"], ["--weights", "int4", "mxfp4"]),
    (["--weights", "fp32"], ["--weights", "fp32", "peak"]),
    (["--kv-dtype", "fp8"], ["--kv-dtype", "fp8", "attention"]),  # a GEMM has no KV cache
])
def test_kernel_cli_refuses_bad_formats(refused, extra, words):
    refused([*KERNEL, *extra], *words)
