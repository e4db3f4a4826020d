"""Python API of the serving simulator.

* :func:`simulate` - a request table + any step model + KV capacity -> :class:`ServingResult`
  (for tests, notebooks and custom cost models).
* :func:`simulate_serving` - the same from preset names: model, hardware, nodes, arch, trace; the
  iteration time and KV capacity come from :class:`simfoe.forward.ForwardModel`.
* :func:`run_serve` - the JSON summary of ``simfoe serve`` (optionally writing records to ``out``).

Units: seconds, tokens, requests/s. Metric definitions (see docs/serving.md): TTFT = first token
time - arrival; TBT = gap between consecutive output tokens of a request (all gaps pooled);
TPOT = a request's mean TBT; e2e = last token - arrival; queueing delay = first scheduled -
arrival; throughput = completed requests (or their output tokens) / (last finish - first
arrival); goodput = completed requests meeting both SLOs (TTFT <= slo_ttft, TPOT <= slo_tbt) per
second of the same span; GPU utilization = share of that span a replica spends in iterations.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simfoe.errors import SpecError
from simfoe.limits import check_instance_gpus
from simfoe.provenance import layout_info
from simfoe.serving.engine import Engine, EngineConfig
from simfoe.serving.metrics import DROP_REASONS, STATUS_DONE, dist


#: Top-level keys of a serving summary that are results (what-if columns, `simfoe compare` metrics);
#: the other keys describe the run (model, layout, options, workload) or its wall-clock cost (``sim``).
SUMMARY_METRICS = ("requests", "ttft_s", "tbt_s", "tpot_s", "e2e_s", "queue_s", "throughput", "goodput",
                   "gpu_utilization", "gpus_per_replica", "ranks_per_replica", "rank_imbalance_fraction")


@dataclass
class ServingResult:
    """Outcome of one serving simulation: ``summary`` (JSON-able dict) and per-request ``records``."""

    summary: dict
    engine: Engine = field(repr=False)
    _records: object = field(default=None, repr=False)

    @property
    def records(self):
        """pandas DataFrame, one row per request (see RequestStore.frame for columns)."""
        if self._records is None:
            self._records = self.engine.store.frame()
        return self._records

    def token_times(self, row: int) -> np.ndarray:
        """Output-token times (s) of request ``row``; needs ``token_times=True``."""
        return self.engine.store.token_times(row)

    def write(self, out: str | Path, files=None) -> dict[str, str]:
        """Write ``requests.parquet`` and ``summary.json`` into directory ``out``; returns the paths.

        Both are written under temporary names and renamed together (no half-written folder); with
        ``files`` (a :class:`simfoe.outputs.AtomicFiles` group) they are renamed when that group is."""
        from simfoe.outputs import AtomicFiles, json_text

        if files is None:
            with AtomicFiles("out") as group:
                return self.write(out, group)
        d = Path(out)
        rec = d / "requests.parquet"
        summ = d / "summary.json"
        self.records.to_parquet(files.path(rec), index=False)
        files.path(summ).write_text(json_text(self.summary), encoding="utf-8")
        return {"records": str(rec), "summary": str(summ)}


def _check_slo(name: str, v) -> None:
    if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
        raise SpecError(name, v, "seconds > 0, or omitted")


def summarize(eng: Engine, wall_s: float, slo_ttft: float | None = None, slo_tbt: float | None = None) -> dict:
    """Summary dict of a finished engine (see module docstring for definitions)."""
    st = eng.store
    done = st.status == STATUS_DONE
    n = st.n
    ttft = st.first - st.arrival
    e2e = np.where(done, st.last - st.arrival, np.nan)
    queue = st.scheduled - st.arrival
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(done & (st.gen > 1), st.sum_gap / np.maximum(st.gen - 1, 1), np.nan)
    t0 = float(st.arrival.min()) if n else 0.0
    t_end = float(np.nanmax(st.last[done])) if done.any() else t0
    span = t_end - t0
    ncomp = int(done.sum())
    out_tok = int(st.gen[done].sum())

    def per_s(x):
        return x / span if span > 0 else None

    ok = done.copy()
    if slo_ttft is not None:
        ok &= ttft <= slo_ttft
    if slo_tbt is not None:
        ok &= ~(tpot > slo_tbt)  # one-token requests have no TBT and pass
    reasons = {DROP_REASONS[k].split(":")[0]: int((st.dropped == k).sum()) for k in DROP_REASONS}
    reps = eng.replicas
    cost = eng.cost
    iters = sum(r.iterations for r in reps)
    busy = sum(r.busy_s for r in reps)
    offered_span = float(st.arrival.max() - t0) if n > 1 else 0.0
    sim_s = float(eng.env.now) - t0
    summary = {
        "ranks_per_replica": eng.ranks,
        "rank_router": eng.cfg.rank_router if eng.ranks > 1 else None,
        # share of busy time the busiest DP attention rank added over an evenly spread batch
        "rank_imbalance_fraction": (sum(r.excess_s for r in reps) / busy if busy > 0 else 0.0)
        if eng.excess is not None else None,
        "requests": {"total": n, "completed": ncomp, "dropped": n - ncomp, "dropped_by_reason": reasons},
        "ttft_s": dist(ttft[done]),
        "tbt_s": st.gaps.stats(),
        "tpot_s": dist(tpot),
        "e2e_s": dist(e2e),
        "queue_s": dist(queue[done]),
        "throughput": {
            "requests_per_s": per_s(ncomp),
            "output_tokens_per_s": per_s(out_tok),
            "offered_requests_per_s": (n - 1) / offered_span if offered_span > 0 else None,
        },
        "goodput": {
            "slo_ttft_s": slo_ttft,
            "slo_tbt_s": slo_tbt,
            "requests_per_s": per_s(int(ok.sum())),
            "fraction_of_requests": float(ok.sum()) / n if n else None,
        },
        "kv_cache": {
            "capacity_tokens": reps[0].kv_total * reps[0].ranks[0].kv.block_size,
            "capacity_tokens_per_rank": reps[0].ranks[0].kv.capacity_tokens,
            "block_size": reps[0].ranks[0].kv.block_size,
            "mean_used_fraction": (sum(r.kv_time for r in reps) / busy) if busy > 0 else 0.0,
            "max_used_fraction": max(r.kv_max for r in reps),
            "preemptions": int(sum(r.preemptions for r in reps)),
        },
        "gpu_utilization": (busy / (len(reps) * span)) if span > 0 else None,
        "replica_utilization": [r.busy_s / span if span > 0 else None for r in reps],
        "sim": {
            "simulated_s": sim_s,
            "wall_s": wall_s,
            "sim_s_per_wall_s": sim_s / wall_s if wall_s > 0 else None,
            "iterations": iters,
            "cost_model": type(cost).__name__,
            "cost_evaluations": cost.misses,
            "memo_hit_rate": 1.0 - cost.misses / iters if iters else None,
        },
    }
    bd = cost.total_breakdown()
    if bd:
        summary["busy_breakdown_s"] = bd
    return summary


def simulate(requests, step_model, kv_capacity_tokens: int, *, replicas: int = 1, router: str = "round-robin",
             scheduler: str = "chunked", max_batch: int = 256, token_budget: int = 8192, block_size: int = 16,
             budget_scope: str = "rank", rank_router: str = "vllm-lb", cost: str = "auto",
             bucket_bits: int | None = None, horizon_s: float | None = None, token_times: bool = False,
             slo_ttft: float | None = None, slo_tbt: float | None = None, progress: bool = False,
             timeline: bool = False) -> ServingResult:
    """Serve ``requests`` (a RequestTable, or anything with ``arrival_s, prompt_tokens,
    output_tokens``) on ``replicas`` copies of an instance whose iteration time is ``step_model``
    and whose KV cache holds ``kv_capacity_tokens`` tokens. See module docstring for metrics.
    ``max_batch`` (sequences) and ``token_budget`` (tokens per iteration) apply to each
    data-parallel attention rank of an instance (``budget_scope="rank"``, the step model's
    ``prefill_groups``, as vLLM and SGLang do: each rank has its own queue and KV share, and
    ``rank_router`` pins an arriving request to one) or to the whole instance (``"instance"``).
    ``timeline``: record one Chrome-trace event per engine iteration (replica = thread)."""
    _check_slo("slo_ttft", slo_ttft)
    _check_slo("slo_tbt", slo_tbt)
    arr = np.asarray(requests.arrival_s, dtype=np.float64)
    if len(arr) and np.isnan(arr).any():
        raise SpecError("rate", None, "a rate in requests/s: the trace has no timestamps")
    rid = getattr(requests, "request_id", None)
    if rid is None:
        rid = np.arange(len(arr))
    cfg = EngineConfig(replicas=replicas, router=router, scheduler=scheduler, max_batch=max_batch,
                       token_budget=token_budget, block_size=block_size, budget_scope=budget_scope,
                       rank_router=rank_router, cost=cost, bucket_bits=bucket_bits, horizon_s=horizon_s,
                       token_times=token_times, timeline=timeline)
    eng = Engine(arr, requests.prompt_tokens, requests.output_tokens, rid, step_model, kv_capacity_tokens, cfg,
                 progress=progress)
    t = time.perf_counter()
    eng.run()
    wall = time.perf_counter() - t
    return ServingResult(summarize(eng, wall, slo_ttft, slo_tbt), eng)


def build_forward(model, hardware, nodes: int, arch: str, routing: str = "uniform", overrides=(), seed: int = 0,
                  max_gpus: int | None = None):
    """(ForwardModel, model spec, hardware spec) for one instance from preset names or specs; an
    instance of more than ``max_gpus`` GPUs (default :data:`simfoe.limits.INSTANCE_GPUS`) is refused."""
    from simfoe.specs.io import build_placement, check_override_roots, load_hardware, load_model
    from simfoe.specs.routing import parse_routing

    try:
        from simfoe.forward import ForwardModel
    except ImportError as e:  # pragma: no cover - only while the forward layer is absent
        raise RuntimeError("simfoe.forward.ForwardModel is not available in this checkout") from e
    ov = list(overrides or [])
    check_override_roots(ov)
    m = model if not isinstance(model, (str, Path)) else load_model(model, ov)
    hw = hardware if not isinstance(hardware, (str, Path)) else load_hardware(hardware, ov)
    if not (isinstance(nodes, (int, np.integer)) and nodes >= 1):
        raise SpecError("nodes", nodes, "an integer >= 1 (nodes per model instance)")
    pl = build_placement(arch, int(nodes), ov)
    check_instance_gpus(pl.nodes, hw.node.gpus_per_node, max_gpus)
    fm = ForwardModel(m, hw, pl, parse_routing(routing), seed=seed)
    return fm, m, hw


def simulate_serving(model, hardware, nodes: int, arch: str, trace, rate: float | None = None,
                     duration: float | None = None, replicas: int = 1, routing: str = "uniform", overrides=(),
                     seed: int = 0, slo_ttft: float | None = None, slo_tbt: float | None = None,
                     max_batch: int = 256, token_budget: int = 8192, *, router: str = "round-robin",
                     scheduler: str = "chunked", arrival: str | None = None, block_size: int = 16,
                     budget_scope: str = "rank", rank_router: str = "vllm-lb", cost: str = "auto",
                     bucket_bits: int | None = None, horizon_s: float | None = None,
                     token_times: bool = False, progress: bool = False, skip_bad_rows: bool = False, step_model=None,
                     kv_capacity_tokens: int | None = None, timeline: str | None = None,
                     record_timeline: bool = False, max_requests: int | None = None,
                     max_gpus: int | None = None) -> ServingResult:
    """Simulate serving ``trace`` (path or built-in name) on ``replicas`` instances of ``model`` on
    ``nodes`` nodes of ``hardware`` each, laid out as ``arch`` (moe | foe).

    ``rate`` req/s and ``duration`` s shape the workload (simfoe.workloads.make_workload);
    ``routing`` is the expert-routing distribution, ``router`` the replica router. ``step_model``
    and ``kv_capacity_tokens`` replace the forward model (both or neither). ``cost``: how iteration
    times are cached (memo | interp | auto, see simfoe.serving.step_models.make_cost). ``timeline``: path of a
    Chrome/Perfetto trace of every iteration (batch composition, KV use) to write; ``record_timeline``:
    record those events without writing them (write later with :func:`write_serving_timeline`).
    ``max_requests``, ``max_gpus``: raise the bounds checked before the run (:mod:`simfoe.limits`)."""
    from simfoe.workloads import make_workload

    _check_slo("slo_ttft", slo_ttft)
    _check_slo("slo_tbt", slo_tbt)
    reqs = make_workload(trace, rate=rate, duration=duration, arrival=arrival, seed=seed, skip_bad_rows=skip_bad_rows,
                         max_requests=max_requests)
    gpus = layout = None
    if step_model is None:
        fm, m, hw = build_forward(model, hardware, nodes, arch, routing, overrides, seed, max_gpus)
        step_model = fm
        kv_capacity_tokens = fm.kv_capacity_tokens()
        gpus = fm.gpus
        layout = layout_info(fm.layout, fm.placement.nodes).to_dict()
    elif kv_capacity_tokens is None:
        raise SpecError("kv_capacity_tokens", None, "an integer number of tokens when step_model is given")
    res = simulate(reqs, step_model, kv_capacity_tokens, replicas=replicas, router=router, scheduler=scheduler,
                   max_batch=max_batch, token_budget=token_budget, block_size=block_size,
                   budget_scope=budget_scope, rank_router=rank_router, cost=cost, bucket_bits=bucket_bits,
                   horizon_s=horizon_s, token_times=token_times,
                   slo_ttft=slo_ttft, slo_tbt=slo_tbt, progress=progress,
                   timeline=timeline is not None or record_timeline)
    if timeline is not None:
        write_serving_timeline(res, timeline)
    head = {
        "model": str(getattr(model, "name", model)),
        "hardware": str(getattr(hardware, "name", hardware)),
        "nodes": nodes,
        "arch": arch,
        "replicas": replicas,
        "gpus_per_replica": gpus,
        "layout": layout,  # simfoe.provenance.LayoutInfo of one replica (None with a custom step_model)
        "router": router,
        "scheduler": scheduler,
        "max_batch": max_batch,
        "token_budget": token_budget,
        "budget_scope": budget_scope,
        "seed": seed,
        "workload": {"source": reqs.source, "requests": len(reqs), "skipped_rows": reqs.skipped_rows},
    }
    res.summary = {**head, **res.summary}
    return res


def write_serving_timeline(res: ServingResult, path: str | Path, files=None, field: str = "--timeline") -> None:
    """Write the iteration events ``res`` recorded (``timeline``/``record_timeline``) as a Chrome trace
    (into the :class:`simfoe.outputs.AtomicFiles` group ``files`` when given)."""
    from simfoe.timeline import write_timeline

    write_timeline(path, res.engine.timeline,
                   {0: f"serving iterations (one row per replica){' - truncated' if res.engine.timeline_truncated else ''}"},
                   field, files)


def write_serving_outputs(res: ServingResult, out=None, timeline=None, out_field: str = "out",
                          timeline_field: str = "timeline") -> None:
    """Write the timeline and/or ``out`` (records + summary) of ``res``, all files or none; the
    summary gains ``files`` when ``out`` is given. Errors name ``out_field`` / ``timeline_field``."""
    from simfoe.outputs import AtomicFiles

    with AtomicFiles(out_field) as w:
        if timeline is not None:
            write_serving_timeline(res, timeline, w, timeline_field)
        if out is not None:
            res.summary["files"] = res.write(out, w)


def run_serve(model, hardware, nodes: int, arch: str, trace, rate: float | None = None,
              duration: float | None = None, replicas: int = 1, routing: str = "uniform", overrides=(),
              seed: int = 0, slo_ttft: float | None = None, slo_tbt: float | None = None,
              max_batch: int = 256, token_budget: int = 8192, budget_scope: str = "rank", progress: bool = False,
              out=None, rank_router: str = "vllm-lb", **kw) -> dict:
    """The JSON summary of ``simfoe serve`` (keys in DESIGN.md plus more); writes ``requests.parquet``
    and ``summary.json`` under ``out`` when given."""
    timeline = kw.pop("timeline", None)
    res = simulate_serving(model, hardware, nodes, arch, trace, rate=rate, duration=duration, replicas=replicas,
                           routing=routing, overrides=overrides, seed=seed, slo_ttft=slo_ttft, slo_tbt=slo_tbt,
                           max_batch=max_batch, token_budget=token_budget, budget_scope=budget_scope,
                           rank_router=rank_router, progress=progress, record_timeline=timeline is not None, **kw)
    write_serving_outputs(res, out, timeline)
    return res.summary
