"""Disaggregated serving from presets (issue 24.1): the function ``simfoe serve --disagg`` calls.

:func:`simulate_disagg_serving` builds one forward model per pool (its :class:`simfoe.specs.disagg.PoolSpec`:
placement, workers, GPUs per worker, engine knobs) and runs :func:`simfoe.serving.disagg.simulate_disagg`
on a trace or a closed loop. Units: seconds, tokens, bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

from simfoe.errors import SpecError
from simfoe.serving.api import serving_workload
from simfoe.serving.disagg import DisaggConfig, DisaggResult, Pool, simulate_disagg


@dataclass(frozen=True)
class DisaggRun:
    """What a disaggregated run is asked for besides its workload: the KV ``transfer`` mode, the
    ``first_token`` convention, the pools' ``order`` (decode-first or prefill-first), ``xpyd`` (prefill, decode
    workers; None: the pool specs' ``workers``),
    the expert ``routing`` distribution, ``--set`` ``overrides`` (hardware.* and model.* only: each pool's
    layout is its spec), ``seed``, SLOs (s), ``horizon_s``, and the bounds ``max_requests``, ``max_gpus``."""

    transfer: str = "layerwise"
    first_token: str = "prefill"
    order: str = "decode-first"
    xpyd: tuple[int, int] | None = None
    routing: str = "uniform"
    overrides: tuple[str, ...] = ()
    seed: int = 0
    slo_ttft: float | None = None
    slo_tbt: float | None = None
    horizon_s: float | None = None
    max_requests: int | None = None
    max_gpus: int | None = None


def parse_xpyd(text: str, field: str = "xpyd") -> tuple[int, int]:
    """``"2:1"`` -> (2, 1): prefill and decode workers."""
    parts = str(text).split(":")
    if len(parts) == 2 and all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        return int(parts[0]), int(parts[1])
    raise SpecError(field, text, "PREFILL:DECODE workers, two integers >= 1 (e.g. 2:1)")


def pool_of(spec, model, hardware, workers: int | None, routing: str, seed: int, max_gpus: int | None,
            field: str) -> tuple[Pool, dict]:
    """The :class:`Pool` of a pool spec (PoolSpec, mapping or YAML path) for ``model`` on ``hardware``
    (specs), and its description for the summary (layout, workers, GPUs per worker)."""
    from simfoe.forward import ForwardModel
    from simfoe.limits import check_instance_gpus
    from simfoe.provenance import layout_info
    from simfoe.specs.disagg import load_pool
    from simfoe.specs.routing import parse_routing

    ps = load_pool(spec, field)
    pl = ps.placement()
    hw = hardware
    if ps.gpus is not None:
        if ps.nodes != 1 or ps.gpus > hardware.node.gpus_per_node:
            raise SpecError(f"{field}.gpus", ps.gpus, f"at most {hardware.node.gpus_per_node} (one node) with nodes 1")
        hw = hardware.model_copy(deep=True)
        hw.node.gpus_per_node = ps.gpus
    check_instance_gpus(pl.nodes, hw.node.gpus_per_node, max_gpus)
    fm = ForwardModel(model, hw, pl, parse_routing(routing), seed=seed)
    cfg = _engine_of(ps, field)
    n = workers if workers is not None else ps.workers
    mtp = cfg.mtp > 0
    pool = Pool(fm, fm.kv_capacity_tokens(mtp=mtp), n, cfg, fm.gpus, fm.kv_bytes_per_token_per_gpu(), model.n_layers,
                fm.mtp_module() if mtp else None)
    return pool, {"workers": n, "gpus_per_worker": fm.gpus, "arch": pl.arch, "nodes_per_worker": pl.nodes,
                  "layout": layout_info(fm.layout, pl.nodes).to_dict()}


def _engine_of(ps, field: str):
    """The :class:`EngineConfig` of pool spec ``ps``; a bad knob is a SpecError naming ``field.engine.<knob>``."""
    from simfoe.serving.engine import BUDGET_SCOPES, engine_config
    from simfoe.serving.router import make_router
    from simfoe.serving.scheduler import make_scheduler

    cfg = engine_config(**ps.engine.model_dump())
    try:
        make_scheduler(cfg.scheduler, cfg.max_batch, cfg.token_budget)
        make_router(cfg.router, 1)
        make_router(cfg.rank_router, 1, "rank_router")
        if cfg.budget_scope not in BUDGET_SCOPES:
            raise SpecError("budget_scope", cfg.budget_scope, "allowed: " + ", ".join(BUDGET_SCOPES))
    except SpecError as e:
        raise SpecError(f"{field}.engine.{e.field}", e.value, e.allowed) from None
    return cfg


def simulate_disagg_serving(model, hardware, prefill, decode, trace, rate: float | None = None,
                            duration: float | None = None, run: DisaggRun | None = None,
                            arrival: str | None = None) -> DisaggResult:
    """Serve ``trace`` (a path or built-in name with ``rate``, ``duration``, ``arrival``; or a
    :class:`simfoe.workloads.closed_loop.ClosedLoop`) on ``model`` (preset, path or spec) disaggregated on
    ``hardware``: a ``prefill`` and a ``decode`` pool, each a :class:`simfoe.specs.disagg.PoolSpec` (or a
    mapping or YAML path), as ``run`` (:class:`DisaggRun`) asks. The summary is that of ``simfoe serve``
    plus ``disagg`` (see :func:`simfoe.serving.disagg.disagg_summary`) and ``prefill``/``decode`` pools."""
    from simfoe.specs.io import check_override_roots, load_hardware, load_model, split_override

    run = run or DisaggRun()
    ov = list(run.overrides)
    check_override_roots(ov)
    for item in ov:
        if split_override(item)[0] == "placement":
            raise SpecError("--set", item, "hardware.* or model.* with --disagg (each pool's layout is its spec file)")
    m = model if not isinstance(model, str) else load_model(model, ov)
    hw = hardware if not isinstance(hardware, str) else load_hardware(hardware, ov)
    x, y = run.xpyd if run.xpyd is not None else (None, None)
    pre, pre_info = pool_of(prefill, m, hw, x, run.routing, run.seed, run.max_gpus, "prefill")
    dec, dec_info = pool_of(decode, m, hw, y, run.routing, run.seed, run.max_gpus, "decode")
    reqs, workload = serving_workload(trace, rate, duration, arrival, run.seed, False, run.max_requests)
    res = simulate_disagg(reqs, pre, dec, DisaggConfig(run.transfer, run.first_token, hw, run.horizon_s, run.order),
                          slo_ttft=run.slo_ttft, slo_tbt=run.slo_tbt, seed=run.seed)
    head = {"model": str(getattr(model, "name", model)), "hardware": str(getattr(hardware, "name", hardware)),
            "mode": "disagg", "xpyd": f"{pre.workers}:{dec.workers}", "seed": run.seed, "workload": workload,
            # the decode workers' budgets (what the clients' requests run under after prefill)
            "max_batch": dec.engine.max_batch, "token_budget": dec.engine.token_budget}
    res.summary = {**head, **res.summary}
    res.summary["disagg"]["prefill"].update(pre_info)
    res.summary["disagg"]["decode"].update(dec_info)
    return res


def run_serve_disagg(model, hardware, prefill, decode, trace=None, rate: float | None = None,
                     duration: float | None = None, xpyd: str | None = None, kv_transfer: str = "layerwise",
                     first_token: str = "prefill", disagg_order: str = "decode-first", routing: str = "uniform",
                     overrides=(), seed: int = 0,
                     slo_ttft: float | None = None, slo_tbt: float | None = None, arrival: str | None = None,
                     concurrency: int | None = None, isl: int | None = None, osl: int | None = None,
                     random_range_ratio: float | None = None, num_prompts: int | None = None,
                     warmup: int | None = None) -> dict:
    """The JSON summary of ``simfoe serve --disagg`` with plain options: a sweep's ``kind: serve-disagg``
    scenario. ``prefill``/``decode``: pool specs (YAML paths or mappings); ``xpyd``: ``"P:D"`` or None;
    a ``trace`` (with ``rate``, ``duration``, ``arrival``) or a closed loop of ``concurrency`` clients."""
    from simfoe.workloads.closed_loop import select_workload

    work = select_workload(trace, concurrency, isl=isl, osl=osl, random_range_ratio=random_range_ratio,
                           num_prompts=num_prompts, warmup=warmup)
    run = DisaggRun(kv_transfer, first_token, disagg_order, parse_xpyd(xpyd) if xpyd is not None else None, routing,
                    tuple(overrides or ()), seed, slo_ttft, slo_tbt)
    return simulate_disagg_serving(model, hardware, prefill, decode, work, rate, duration, run, arrival).summary
