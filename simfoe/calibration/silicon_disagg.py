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
attention DP it is the client concurrency); the prefill side's, the prefill ranks'. The KV moves
``after`` prefill (vLLM's NIXL connector, TensorRT-LLM's and SGLang's transfer backends send a
request's KV once its prefill, or its chunk, is done), and the first token is the prefill worker's
(AIConfigurator's TTFT convention for these rows; :mod:`simfoe.serving.disagg`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

import re

from simfoe.calibration.silicon import (BACKEND_ENGINES, INFERENCEX_RANGE_RATIO, TOKEN_BUDGET, NotCovered,
                                        PoolColumns, Scenario, SiliconRow)
from simfoe.errors import SpecError

#: how the replay joins the pools (see the module docstring)
TRANSFER = "after"
FIRST_TOKEN = "prefill"


@dataclass(frozen=True)
class DisaggScenario(Scenario):
    """A disaggregated row as two pool specs (JSON of :class:`simfoe.specs.disagg.PoolSpec` mappings);
    ``max_batch`` is the decode side's."""

    prefill: str = ""
    decode: str = ""

    @property
    def deployment(self) -> tuple:
        return (self.hardware, self.model, self.overrides, self.prefill, self.decode)


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
    """The scenario of a disaggregated ``row`` (its presets and dtype already resolved), or why it has none."""
    specs = {}
    for side in ("prefill", "decode"):
        cols = getattr(row, side)
        if cols is None:
            return NotCovered(f"disagg: {side} columns missing")
        spec = _pool_spec(side, _expert_split(cols, row.backend), is_moe, gpus_per_node)
        if isinstance(spec, NotCovered):
            return spec
        specs[side] = json.dumps(spec, sort_keys=True)
    return DisaggScenario(hardware, preset, (f"model.dtype={dtype}",), max_batch=row.decode.batch_size,
                          token_budget=TOKEN_BUDGET, concurrency=row.concurrency, isl=row.isl, osl=row.osl,
                          range_ratio=INFERENCEX_RANGE_RATIO if row.inferencex else 0.0,
                          engine=BACKEND_ENGINES.get(row.backend), **specs)


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
        return simulate_disagg(sc.workload(), pre, dec, DisaggConfig(TRANSFER, FIRST_TOKEN, hw), seed=seed)
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


def complete_summary(preds: list, summarize) -> dict:
    """``summarize`` (silicon's per-group summary) of the complete disaggregated rows among ``preds``,
    its keys prefixed ``disagg_complete_`` (flat, so that validation/tolerances.yaml can bound them)."""
    s = summarize([p for p in preds if complete(p.row)])
    return {f"disagg_complete_{k}": v for k, v in s.items()}
