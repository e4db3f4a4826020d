"""Silicon rows with experts tensor-parallel (moe_tp) and 4-bit checkpoints -> serving scenarios."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

from simfoe.api import forward_model
from simfoe.calibration import silicon as si


def _row(**kw) -> si.SiliconRow:
    base = dict(id="r", system="h100_sxm", model_path="openai/gpt-oss-120b", backend="vllm", backend_version="0.18.0",
                mode="agg", isl=1024, osl=1024, gemm_quant="nvfp4", moe_quant="nvfp4", batch_size=16, tp=4, pp=1,
                adp=1, moe_tp=4, moe_ep=1, ttft_ms=60.0, tpot_ms=6.0)
    return si.SiliconRow(**{**base, **kw})


def test_vllm_fp4_gpt_oss_row_runs_its_mxfp4_checkpoint_with_experts_tensor_parallel():
    sc = si.scenario(_row())
    assert sc.overrides == ("hardware.node.gpus_per_node=4", "placement.moe.attention=tp",
                            "placement.moe.attention_tp=4", "placement.moe.ep=1", "placement.moe.expert_tp=4",
                            "model.dtype=bf16")
    fm = forward_model(sc.model, sc.hardware, 1, "moe", overrides=sc.overrides)
    f = fm.model.formats
    assert (f.expert_weights, f.gemm_weights, f.gemm_activations, f.kv_cache) == ("mxfp4", "bf16", "bf16", "bf16")
    assert (fm.layout.ep, fm.layout.expert_tp, fm.layout.expert_ffn_per_gpu) == (1, 4, 2880 // 4)


def test_trtllm_hybrid_row_sets_both_expert_parallel_and_expert_tensor_parallel():
    sc = si.scenario(_row(backend="trtllm", gemm_quant="fp8", moe_quant="fp8", tp=4, moe_tp=2, moe_ep=2))
    assert "placement.moe.ep=2" in sc.overrides and "placement.moe.expert_tp=2" in sc.overrides
    assert "model.dtype=fp8" in sc.overrides


def test_expert_parallel_rows_keep_their_overrides():
    sc = si.scenario(_row(model_path="Qwen/Qwen3-235B-A22B-FP8", gemm_quant="fp8_block", moe_quant="fp8_block",
                          tp=8, moe_tp=1, moe_ep=8))
    assert not any("expert_tp" in o for o in sc.overrides)  # their deployments, and so results, are unchanged


def test_trtllm_expert_parallel_rows_gather_their_tokens():
    # TensorRT-LLM on H100 all-reduces and sums instead of dispatching (silicon.GATHERING_BACKENDS); vLLM dispatches
    kw = dict(model_path="Qwen/Qwen3-235B-A22B-FP8", gemm_quant="fp8_block", moe_quant="fp8_block", tp=4, moe_tp=1,
              moe_ep=4)
    trt = si.scenario(_row(backend="trtllm", **kw)).overrides
    assert "placement.moe.token_exchange=gather" in trt and "placement.moe.ep=4" in trt
    assert not any("token_exchange" in o for o in si.scenario(_row(**kw)).overrides)
    hybrid = si.scenario(_row(backend="trtllm", **{**kw, "moe_tp": 2, "moe_ep": 2})).overrides
    assert not any("token_exchange" in o for o in hybrid)  # expert_tp 2 gathers already
    fm = forward_model("qwen3-235b-a22b", "h100-sxm", 1, "moe", overrides=trt)
    assert fm.layout.gather and fm.layout.sliced


def test_fp4_row_of_a_model_without_an_fp4_checkpoint_says_why():
    row = _row(model_path="Qwen/Qwen3-235B-A22B-FP8", tp=8, moe_tp=8)
    assert si.scenario(row) == si.NotCovered("quant nvfp4: the model preset has no fp4 checkpoint (4-bit expert weights)")
    assert si.scenario(replace(row, gemm_quant="int4_awq")).reason.startswith("quant int4_awq: not mapped yet")


def test_h100_file_covers_every_tensor_parallel_and_fp4_aggregated_row(shared_data):
    s = si.load_rows(shared_data / si.H100_FILE)
    agg = [r for r in s.rows if r.mode == "agg"]
    reasons = Counter(x.reason for x in map(si.scenario, agg) if isinstance(x, si.NotCovered))
    # left: the 15 MiniMax-M2.5 rows of the data README's known encoding problem
    assert sum(reasons.values()) == 15 and all(k.startswith("suspect encoding") for k in reasons)
    by_id = {r.id: r for r in s.rows}
    r = by_id["2026_04_06_gpt_oss_120b_h100_sxm_vllm_fp4_agg_1024x1024_c64_tp2_ep1_381"]
    assert "placement.moe.expert_tp=2" in si.scenario(r).overrides
