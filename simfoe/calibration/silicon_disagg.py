"""Disaggregated silicon rows (issue 24.5): a ``mode=disagg`` row of AIConfigurator's H100 file as a
prefill pool and a decode pool (:mod:`simfoe.serving.disagg`), replayed beside the aggregated rows.

A row is replayed when both sides give tp, attention DP, workers and batch size, and moe_ep for an
MoE model (the data README: some disagg rows lack batch sizes or workers); others are not covered,
with the missing column named. vLLM rows that record neither moe_tp nor moe_ep run vLLM's default
(experts sliced over every GPU of the worker, :func:`_expert_split`). A row is *complete*
(:func:`complete`) when, besides, its run records the client concurrency and that equals the
columns' (decode batch x attention DP x workers): the rows of AIConfigurator's gap analysis record
none (ids ``..._c_...``), and the aggregated rows of the same job replay 6-120% slow in TPOT, all
too slow, where the replay is within a few % on the same models and engines at recorded
concurrencies, so their columns do not give the load they ran (docs/calibration.md). Each side's
worker maps as an aggregated row's instance does (:func:`simfoe.calibration.silicon._layout`:
attention TP ``tp`` inside each of ``attention_dp`` ranks, experts over ``moe_ep`` x ``moe_tp``); a
worker of more than one node takes whole nodes, its attention TP group too (TensorRT-LLM's decode
workers of attention TP 16 on two nodes).
The decode side's ``batch_size`` is its ``max_batch`` per rank (with the decode workers and their
attention DP it is the client concurrency); the prefill side's, the prefill ranks'. A row of a published
deployment recipe (:data:`RECIPES`, :func:`recipe`) runs the recipe's engine settings instead: the file's
batch sizes of those rows are the concurrency / workers, not the engines' ``max_batch_size``. The KV moves
``after`` prefill (vLLM's NIXL connector, TensorRT-LLM's and SGLang's transfer backends send a
request's KV once its prefill, or its chunk, is done), and the first token is the prefill worker's
(AIConfigurator's TTFT convention for these rows; :mod:`simfoe.serving.disagg`). Rows of Dynamo's
TensorRT-LLM images run ``prefill-first`` (Dynamo's frontend prefills, then routes to a decode worker),
the others ``decode-first``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

import re

from simfoe.calibration.silicon import (BACKEND_ENGINES, INFERENCEX_RANGE_RATIO, TOKEN_BUDGET, NotCovered,
                                        PoolColumns, Scenario, SiliconRow, summarize_group)
from simfoe.errors import SpecError

#: how the replay joins the pools (see the module docstring)
TRANSFER = "after"
FIRST_TOKEN = "prefill"

#: Dynamo's TensorRT-LLM images: the frontend prefills first, then routes to a decode worker
#: (simfoe.serving.disagg, ``prefill-first``); other rows' tool is unrecorded and keep ``decode-first``.
DYNAMO_TRTLLM_IMAGE = "ai-dynamo/tensorrtllm-runtime"


@dataclass(frozen=True)
class Recipe:
    """The engine settings of a published disaggregated deployment whose silicon rows record others:
    its NVIDIA/srt-slurm recipe (``path`` under recipes/trtllm/h100-fp8/), the decode workers' TensorRT-LLM
    ``max_batch_size`` (sequences per worker: attention TP, no attention DP) and the prefill attention-DP
    ranks' (sequences per rank), and how many decode workers it runs."""

    path: str
    decode_max_batch: int
    prefill_max_batch: int
    decode_workers: int


#: DeepSeek-R1 FP8 on H100, Dynamo 0.8.1.post3 with TensorRT-LLM, no MTP: SemiAnalysisAI/InferenceX pull request 651
#: (2026-02-07, .github/configs/nvidia-master.yaml ``dsr1-fp8-h100-dynamo-trt``) names one srt-slurm recipe per
#: (ISL, OSL, concurrency); the recipes (NVIDIA/srt-slurm 5063eb43, recipes/trtllm/h100-fp8/) set the engines'
#: max_batch_size. The silicon file's decode_batch_size is the concurrency / workers instead (2, 3, 10, 20, 77),
#: so its runs held 1.2-2x more clients than decode slots (6 clients on 3 x 1). Prefill: one worker of attention
#: DP 16 (ctx1 dep16). Their sa-bench clients draw lengths from [int(L r), L] (srt-slurm
#: src/srtctl/benchmarks/scripts/sa-bench/benchmark_serving.py ``sample_random_requests``; the recipes' max_seq_len,
#: ISL + OSL + 40, admits no more), as InferenceX's client does: the rows' own ``range_style``.
RECIPES = {
    (1024, 1024, 6): Recipe("1k1k/stp/ctx1_gen3_tep16_batch1_eplb0_mtp0.yaml", 1, 2, 3),
    (1024, 1024, 9): Recipe("1k1k/stp/ctx1_gen3_tep16_batch2_eplb0_mtp0.yaml", 2, 2, 3),
    (1024, 1024, 30): Recipe("1k1k/stp/ctx1_gen3_tep16_batch8_eplb0_mtp0.yaml", 8, 2, 3),
    (1024, 1024, 60): Recipe("1k1k/stp/ctx1_gen3_tep16_batch16_eplb0_mtp0.yaml", 16, 2, 3),
    (8192, 1024, 6): Recipe("8k1k/stp/ctx1_gen3_tep16_batch1_eplb0_mtp0.yaml", 1, 1, 3),
    (8192, 1024, 9): Recipe("8k1k/stp/ctx1_gen3_tep16_batch2_eplb0_mtp0.yaml", 2, 1, 3),
    (8192, 1024, 30): Recipe("8k1k/stp/ctx1_gen3_tep16_batch8_eplb0_mtp0.yaml", 8, 1, 3),
    (8192, 1024, 154): Recipe("8k1k/stp/ctx1_gen2_tep16_batch64_eplb0_mtp0.yaml", 64, 1, 2),
}
RECIPE_IMAGE = f"nvcr.io/nvidia/{DYNAMO_TRTLLM_IMAGE}:0.8.1.post3"


@dataclass(frozen=True)
class DisaggScenario(Scenario):
    """A disaggregated row as two pool specs (JSON of :class:`simfoe.specs.disagg.PoolSpec` mappings);
    ``max_batch`` is the decode side's; ``order`` joins the pools (:data:`simfoe.serving.disagg.ORDERS`)."""

    prefill: str = ""
    decode: str = ""
    order: str = "decode-first"

    @property
    def deployment(self) -> tuple:
        return (self.hardware, self.model, self.overrides, self.prefill, self.decode)


def recipe(row: SiliconRow) -> Recipe | None:
    """The :data:`RECIPES` entry of ``row``: its image, model (DeepSeek-V3 or -R1), ISL, OSL and concurrency
    name one and its decode columns (workers, attention TP 16, no attention DP) agree with it; else None."""
    rec = RECIPES.get((row.isl, row.osl, row.concurrency))
    d = row.decode
    if rec is None or RECIPE_IMAGE not in row.source or "DeepSeek" not in row.model_path or d is None:
        return None
    return rec if (d.workers, d.tp, d.adp) == (rec.decode_workers, 16, 1) else None


def _expert_split(c: PoolColumns, backend: str) -> PoolColumns:
    """``c`` with vLLM's default expert split where the row records none (moe_tp and moe_ep both 0 or
    empty, the gap-analysis rows of vLLM): without ``--enable-expert-parallel`` vLLM's fused MoE slices
    every expert over all tp x attention-DP GPUs (vllm/model_executor/layers/fused_moe/config.py,
    FusedMoEParallelConfig.make: use_ep only with enable_expert_parallel, else moe tp = dp x tp)."""
    if backend != "vllm" or c.moe_tp or c.moe_ep or not (c.tp and c.adp):
        return c
    return replace(c, moe_tp=c.tp * c.adp, moe_ep=1)


def _pool_spec(side: str, c: PoolColumns, is_moe: bool, gpus_per_node: int) -> dict | NotCovered:
    """The PoolSpec mapping of one side of a row, or why it has none."""
    need = {"tp_size": c.tp, "attention_dp_size": c.adp, "num_workers": c.workers, "batch_size": c.batch_size}
    if is_moe:
        need["moe_ep_size"] = c.moe_ep
    missing = [k for k, v in need.items() if not v]
    if missing:
        return NotCovered(f"disagg: {side}_{missing[0]} missing (data README: some disagg rows lack batch sizes "
                          "or workers)")
    if (c.pp or 1) > 1:
        return NotCovered("pp_size > 1: pipeline parallelism not modelled")
    gpus = c.tp * c.adp
    if gpus > gpus_per_node and (gpus % gpus_per_node or (c.tp > gpus_per_node and c.tp % gpus_per_node)):
        return NotCovered(f"disagg: {side} worker of {gpus} GPUs (attention TP {c.tp}) is not whole nodes")
    spec = {"arch": "moe", "nodes": max(1, gpus // gpus_per_node), "workers": c.workers,
            "moe": {"attention": "tp", "attention_tp": c.tp}, "engine": {"max_batch": c.batch_size}}
    if gpus < gpus_per_node:
        spec["gpus"] = gpus
    if is_moe:
        etp = c.moe_tp or 1
        if etp * c.moe_ep != gpus:
            return NotCovered("moe_tp x moe_ep != tp x attention_dp: inconsistent parallelism")
        spec["moe"]["ep"] = c.moe_ep
        if etp > 1:
            spec["moe"]["expert_tp"] = etp
    return spec


def disagg_scenario(row: SiliconRow, hardware: str, preset: str, is_moe: bool, dtype: str,
                    gpus_per_node: int) -> DisaggScenario | NotCovered:
    """The scenario of a disaggregated ``row`` (its presets and dtype already resolved), or why it has none:
    with its :func:`recipe`'s batch sizes, KV cache format and clients where it has one."""
    rec = recipe(row)
    batch = {"prefill": rec.prefill_max_batch, "decode": rec.decode_max_batch} if rec else {}
    specs = {}
    for side in ("prefill", "decode"):
        cols = getattr(row, side)
        if cols is None:
            return NotCovered(f"disagg: {side} columns missing")
        spec = _pool_spec(side, _expert_split(cols, row.backend), is_moe, gpus_per_node)
        if isinstance(spec, NotCovered):
            return spec
        if side in batch:
            spec["engine"]["max_batch"] = batch[side]
        specs[side] = json.dumps(spec, sort_keys=True)
    overrides = (f"model.dtype={dtype}",) + (("model.precision.kv_cache=fp8",) if rec else ())  # kv_cache_config
    return DisaggScenario(hardware, preset, overrides, max_batch=batch.get("decode", row.decode.batch_size),
                          token_budget=TOKEN_BUDGET, concurrency=row.concurrency, isl=row.isl, osl=row.osl,
                          range_ratio=INFERENCEX_RANGE_RATIO if row.inferencex else 0.0,
                          engine=BACKEND_ENGINES.get(row.backend), **specs,
                          order="prefill-first" if DYNAMO_TRTLLM_IMAGE in row.source else "decode-first",
                          range_style=row.range_style)


def _pools(sc: DisaggScenario, engines: dict | None):
    """(prefill, decode) :class:`simfoe.serving.disagg.Pool` s of ``sc``: forward models wrapped in their
    iteration-cost tables, engine knobs from the row's backend profile with the row's batch sizes."""
    from simfoe.serving.disagg_api import pool_of
    from simfoe.serving.engine import EngineConfig, profile_config
    from simfoe.serving.step_models import make_cost
    from simfoe.specs.io import load_hardware, load_model

    m = load_model(sc.model, list(sc.overrides))
    hw = load_hardware(sc.hardware)
    if sc.engine is None:
        base = EngineConfig(token_budget=sc.token_budget)
    else:
        base = (engines or {}).get(sc.engine) or profile_config(sc.engine)
    out = []
    for side in ("prefill", "decode"):
        pool = pool_of(json.loads(getattr(sc, side)), m, hw, None, "uniform", 0, None, side)[0]
        # AIConfigurator runs TensorRT-LLM's prefill workers without the overlap scheduler and its decode workers
        # with it (src/aiconfigurator/cli/backends/trtllm.py, 2025-08-22: disable_overlap_scheduler True / False)
        eng = replace(base, max_batch=pool.engine.max_batch, token_budget=max(base.token_budget, pool.engine.max_batch),
                      overlap_scheduler=base.overlap_scheduler and side == "decode")
        out.append(replace(pool, step_model=make_cost(pool.step_model, "interp"), engine=eng))
    return tuple(out), hw


def serve_disagg_row(sc: DisaggScenario, deployments, seed: int = 0, engines: dict | None = None):
    """The :class:`simfoe.serving.disagg.DisaggResult` of a disaggregated row's scenario, or why it has none;
    ``deployments`` (:class:`simfoe.calibration.silicon._Deployments`) keeps each deployment's pools."""
    from simfoe.serving.disagg import DisaggConfig, simulate_disagg

    try:
        if sc.deployment not in deployments.built:
            deployments.built[sc.deployment] = _pools(sc, engines)
        (pre, dec), hw = deployments.built[sc.deployment]
        return simulate_disagg(sc.workload(), pre, dec, DisaggConfig(TRANSFER, FIRST_TOKEN, hw, order=sc.order),
                               seed=seed)
    except SpecError as e:
        return NotCovered(f"simulator refused: {e.field}")


def recorded_concurrency(row: SiliconRow) -> int | None:
    """The client concurrency the row's run records: ``silicon_concurrency=N`` in its source, else
    ``_cN_`` in its id; None when neither does (AIConfigurator's gap-analysis rows, ids ``..._c_...``)."""
    m = re.search(r"silicon_concurrency=(\d+)", row.source) or re.search(r"_c(\d+)_", row.id)
    return int(m.group(1)) if m else None


def complete(row: SiliconRow) -> bool:
    """A disaggregated row with both sides' tp, attention DP, workers and batch size and a recorded
    concurrency equal to the columns' (see the module docstring)."""
    sides = (row.prefill, row.decode)
    if row.mode != "disagg" or any(c is None or not all((c.tp, c.adp, c.workers, c.batch_size)) for c in sides):
        return False
    return recorded_concurrency(row) == row.concurrency


def complete_summary(preds: list) -> dict:
    """The per-group summary (:func:`simfoe.calibration.silicon.summarize_group`) of the complete disaggregated
    rows among ``preds``, its keys prefixed ``disagg_complete_`` (flat, so that validation/tolerances.yaml can
    bound them)."""
    s = summarize_group([p for p in preds if complete(p.row)])
    return {f"disagg_complete_{k}": v for k, v in s.items()}
