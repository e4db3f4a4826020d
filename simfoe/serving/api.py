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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from simfoe.errors import SpecError
from simfoe.limits import SERVING_REQUESTS, check_instance_gpus
from simfoe.provenance import layout_info
from simfoe.serving.engine import Engine, EngineConfig, engine_config
from simfoe.serving.metrics import DROP_REASONS, STATUS_DONE, dist
from simfoe.serving.prefix_cache import Prefixes
from simfoe.workloads.closed_loop import ClosedLoop


#: Top-level keys of a serving summary that are results (what-if columns, `simfoe compare` metrics);
#: the other keys describe the run (model, layout, options, workload) or its wall-clock cost (``sim``).
SUMMARY_METRICS = ("requests", "ttft_s", "tbt_s", "tpot_s", "e2e_s", "queue_s", "throughput", "goodput",
                   "gpu_utilization", "gpus_per_replica", "ranks_per_replica", "rank_imbalance_fraction",
                   "mtp", "prefix_cache")


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
            w = self.engine.measure_from  # closed loop: warm-ups are not records
            rec = self.engine.store.frame()
            self._records = rec.iloc[w:].reset_index(drop=True) if w else rec
        return self._records

    def token_times(self, row: int) -> np.ndarray:
        """Output-token times (s) of request ``row`` of :attr:`records`; needs ``token_times=True``."""
        return self.engine.store.token_times(row + self.engine.measure_from)

    def write(self, out: str | Path, files=None, csv: bool = False) -> dict[str, str]:
        """Write ``requests.parquet`` and ``summary.json`` into directory ``out`` (with ``csv``, also
        ``requests.csv``: the same table as CSV); returns the paths (keys records, summary[, csv]).

        All are written under temporary names and renamed together (no half-written folder); with
        ``files`` (a :class:`simfoe.outputs.AtomicFiles` group) they are renamed when that group is."""
        from simfoe.outputs import AtomicFiles, json_text

        if files is None:
            with AtomicFiles("out") as group:
                return self.write(out, group, csv)
        d = Path(out)
        paths = {"records": d / "requests.parquet", "summary": d / "summary.json"}
        self.records.to_parquet(files.path(paths["records"]), index=False)
        if csv:
            paths["csv"] = d / "requests.csv"
            self.records.to_csv(files.path(paths["csv"]), index=False)
        files.path(paths["summary"]).write_text(json_text(self.summary), encoding="utf-8")
        return {k: str(v) for k, v in paths.items()}


def _check_slo(name: str, v) -> None:
    if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
        raise SpecError(name, v, "seconds > 0, or omitted")


def summarize(eng: Engine, wall_s: float, slo_ttft: float | None = None, slo_tbt: float | None = None) -> dict:
    """Summary dict of a finished engine (see module docstring for definitions)."""
    m = _Measured.of(eng)
    reps = eng.replicas
    busy = sum(r.busy_s for r in reps)
    summary = {
        "ranks_per_replica": eng.ranks_per_replica,
        "rank_router": eng.cfg.rank_router if eng.ranks_per_replica > 1 else None,
        # share of busy time the busiest DP attention rank added over an evenly spread batch
        "rank_imbalance_fraction": (sum(r.excess_s for r in reps) / busy if busy > 0 else 0.0)
        if eng.excess is not None else None,
        **_request_summary(eng, m, slo_ttft, slo_tbt),
        "kv_cache": _kv_summary(reps, busy),
        "gpu_utilization": (busy / (len(reps) * m.span)) if m.span > 0 else None,
        "replica_utilization": [r.busy_s / m.span if m.span > 0 else None for r in reps],
        "sim": _sim_summary(eng, m, wall_s),
    }
    # multi-token prediction: drafts per step, acceptance, mean tokens a sequence emits per decode step (null: off)
    summary["mtp"] = eng.drafts.summary(busy) if eng.drafts is not None else None
    # prefix caching: share of the prompt tokens found cached (null: off)
    summary["prefix_cache"] = _prefix_cache_summary(eng) if eng.prefixes is not None else None
    bd = eng.cost.total_breakdown()
    if bd:
        summary["busy_breakdown_s"] = bd
    return summary


@dataclass(frozen=True)
class _Measured:
    """The measured requests of a finished engine (closed loop: after the warm-ups, whose counters restarted
    when they ended), per request: completed or not, TTFT, end-to-end, queueing delay and TPOT (s; NaN where
    undefined), output tokens, drop reason code; the arrival times of those sent (s), the first of them
    (``t0``) and the ``span`` from it to the last completion (s)."""

    done: np.ndarray
    ttft: np.ndarray
    e2e: np.ndarray
    queue: np.ndarray
    tpot: np.ndarray
    gen: np.ndarray
    dropped: np.ndarray
    issued: np.ndarray
    t0: float
    span: float

    @classmethod
    def of(cls, eng: Engine) -> _Measured:
        st = eng.store
        status, arrival, first, last, scheduled, gen, sum_gap, dropped = (
            a[eng.measure_from:] for a in (st.status, st.arrival, st.first, st.last, st.scheduled, st.gen,
                                           st.sum_gap, st.dropped))
        done = status == STATUS_DONE
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(done & (gen > 1), sum_gap / np.maximum(gen - 1, 1), np.nan)
        issued = arrival[~np.isnan(arrival)]  # closed loop: rows not sent before the horizon have no arrival
        t0 = float(issued.min()) if len(issued) else 0.0
        t_end = float(np.nanmax(last[done])) if done.any() else t0
        return cls(done, first - arrival, np.where(done, last - arrival, np.nan), scheduled - arrival, tpot, gen,
                   dropped, issued, t0, t_end - t0)

    def per_s(self, x):
        """``x`` per second of the span (None: an empty span)."""
        return x / self.span if self.span > 0 else None


def _request_summary(eng: Engine, m: _Measured, slo_ttft: float | None, slo_tbt: float | None) -> dict:
    """The summary's request counts, latency distributions (s), throughput and goodput (per s)."""
    n, done = len(m.done), m.done
    ncomp = int(done.sum())
    ok = done.copy()
    if slo_ttft is not None:
        ok &= m.ttft <= slo_ttft
    if slo_tbt is not None:
        ok &= ~(m.tpot > slo_tbt)  # one-token requests have no TBT and pass
    reasons = {DROP_REASONS[k].split(":")[0]: int((m.dropped == k).sum()) for k in DROP_REASONS}
    offered_span = float(m.issued.max() - m.t0) if len(m.issued) > 1 else 0.0
    return {
        "requests": {"total": n, "completed": ncomp, "dropped": n - ncomp, "dropped_by_reason": reasons},
        "ttft_s": dist(m.ttft[done]),
        "tbt_s": eng.store.gaps.stats(),
        "tpot_s": dist(m.tpot),
        "e2e_s": dist(m.e2e),
        "queue_s": dist(m.queue[done]),
        "throughput": {
            "requests_per_s": m.per_s(ncomp),
            "output_tokens_per_s": m.per_s(int(m.gen[done].sum())),
            "offered_requests_per_s": (len(m.issued) - 1) / offered_span if offered_span > 0 else None,
        },
        "goodput": {
            "slo_ttft_s": slo_ttft,
            "slo_tbt_s": slo_tbt,
            "requests_per_s": m.per_s(int(ok.sum())),
            "fraction_of_requests": float(ok.sum()) / n if n else None,
        },
    }


def _kv_summary(reps: list, busy: float) -> dict:
    """The summary's ``kv_cache`` block: capacity (tokens), use over the replicas' ``busy`` seconds, preemptions."""
    kv = reps[0].ranks[0].kv
    return {
        "capacity_tokens": reps[0].kv_total * kv.block_size,
        "capacity_tokens_per_rank": kv.capacity_tokens,
        "block_size": kv.block_size,
        "mean_used_fraction": (sum(r.kv_time for r in reps) / busy) if busy > 0 else 0.0,
        "max_used_fraction": max(r.kv_max for r in reps),
        "preemptions": int(sum(r.preemptions for r in reps)),
    }


def _sim_summary(eng: Engine, m: _Measured, wall_s: float) -> dict:
    """The summary's ``sim`` block: simulated and ``wall_s`` seconds, iterations, the cost model's memo."""
    cost, iters = eng.cost, sum(r.iterations for r in eng.replicas)
    sim_s = float(eng.env.now) - (float(np.nanmin(eng.store.arrival)) if len(m.issued) else 0.0)
    return {
        "simulated_s": sim_s,
        "wall_s": wall_s,
        "sim_s_per_wall_s": sim_s / wall_s if wall_s > 0 else None,
        "iterations": iters,
        "cost_model": type(cost).__name__,
        "cost_evaluations": cost.misses,
        "memo_hit_rate": 1.0 - cost.misses / iters if iters else None,
    }


def _prefix_cache_summary(eng: Engine) -> dict:
    """The summary's ``prefix_cache`` block: prompt tokens that the measured requests' first prefills found
    cached over their prompt tokens (requests that reached a prefill), and the tokens evicted."""
    st, w = eng.store, eng.measure_from
    ran = ~np.isnan(st.scheduled[w:])
    hit, prompt = int(st.hit[w:][ran].sum()), int(st.prompt[w:][ran].sum())
    pools = [q.kv for r in eng.replicas for q in r.ranks]
    for kv in pools:
        kv.cache.usage()  # evicts what the last allocations claimed
    return {"block_tokens": eng.prefixes.block_tokens, "hit_rate": hit / prompt if prompt else None,
            "hit_tokens": hit, "prompt_tokens": prompt,
            "evicted_tokens": sum(kv.cache.evicted for kv in pools) * pools[0].block_size}


def simulate(requests, step_model, kv_capacity_tokens: int, engine: EngineConfig | None = None, *,
             slo_ttft: float | None = None, slo_tbt: float | None = None, progress: bool = False, seed: int = 0,
             draft_model=None, **knobs) -> ServingResult:
    """Serve ``requests`` (a RequestTable, or anything with ``arrival_s, prompt_tokens,
    output_tokens``; or a :class:`simfoe.workloads.closed_loop.ClosedLoop`, whose lengths are drawn
    with ``seed`` and whose clients send the requests) on replicas of an instance whose iteration time is ``step_model`` (a
    :class:`simfoe.serving.step_models.StepModel`) and whose KV cache holds ``kv_capacity_tokens``
    tokens. ``engine``: the engine's knobs (:class:`EngineConfig`; ``knobs``, its fields as keywords,
    override them: ``simulate(t, m, kv, replicas=2)``). ``max_batch`` (sequences) and ``token_budget``
    (tokens per iteration) apply to each data-parallel attention rank of an instance
    (``budget_scope="rank"``, the step model's ``dp_ranks``, as vLLM and SGLang do: each rank has its
    own queue and KV share, and ``rank_router`` pins an arriving request to one) or to the whole
    instance (``"instance"``). With ``mtp`` draft tokens per decode step (:mod:`simfoe.serving.mtp`),
    ``draft_model`` prices the draft module (a step model; None: drafts cost nothing) and ``seed`` seeds
    the accepted drafts. With ``prefix_cache``, the requests' prefix block ids (a table's ``hash_ids``)
    feed one prefix cache per KV pool (:mod:`simfoe.serving.prefix_cache`). See module docstring for metrics."""
    cfg = engine_config(engine, **knobs)
    _check_slo("slo_ttft", slo_ttft)
    _check_slo("slo_tbt", slo_tbt)
    closed = requests if isinstance(requests, ClosedLoop) else None
    if closed is not None:
        requests = closed.table(seed)
    arr = np.asarray(requests.arrival_s, dtype=np.float64)
    if closed is None and len(arr) and np.isnan(arr).any():
        raise SpecError("rate", None, "a rate in requests/s: the trace has no timestamps")
    rid = getattr(requests, "request_id", None)
    if rid is None:
        rid = np.arange(len(arr))
    eng = Engine(arr, requests.prompt_tokens, requests.output_tokens, rid, step_model, kv_capacity_tokens, cfg,
                 progress=progress, closed=closed, draft_model=draft_model, seed=seed, prefixes=Prefixes.of(requests))
    t = time.perf_counter()
    eng.run()
    wall = time.perf_counter() - t
    return ServingResult(summarize(eng, wall, slo_ttft, slo_tbt), eng)


def _open_loop_only(**given) -> None:
    """SpecError naming the first of ``given`` (open-loop workload options) that is set."""
    for k, v in given.items():
        if v is not None:
            raise SpecError(k, v, "omitted with a closed-loop workload (its clients send the requests)")


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
                     duration: float | None = None, *, engine: EngineConfig | None = None, routing: str = "uniform",
                     overrides=(), seed: int = 0, slo_ttft: float | None = None, slo_tbt: float | None = None,
                     arrival: str | None = None, skip_bad_rows: bool = False, step_model=None,
                     kv_capacity_tokens: int | None = None, timeline: str | None = None,
                     record_timeline: bool = False, progress: bool = False, max_requests: int | None = None,
                     max_gpus: int | None = None, draft_model=None, **knobs) -> ServingResult:
    """Simulate serving ``trace`` (path or built-in name, or a closed-loop workload,
    :class:`simfoe.workloads.closed_loop.ClosedLoop`) on replicas of ``model`` on ``nodes`` nodes
    of ``hardware`` each, laid out as ``arch`` (moe | foe).

    ``rate`` req/s and ``duration`` s shape a trace's workload (simfoe.workloads.make_workload);
    ``routing`` is the expert-routing distribution. ``engine`` (or its fields as keywords, e.g.
    ``replicas=2, router="vllm-lb"``): the engine's knobs, :class:`EngineConfig`. ``step_model``
    and ``kv_capacity_tokens`` replace the forward model (both or neither; ``draft_model`` then prices
    MTP drafts, else the forward model's MTP module does and its KV and weights shrink the cache). ``timeline``: path of a
    Chrome/Perfetto trace of every iteration (batch composition, KV use) to write; ``record_timeline``:
    record those events without writing them (write later with :func:`write_serving_timeline`).
    ``max_requests``, ``max_gpus``: raise the bounds checked before the run (:mod:`simfoe.limits`)."""
    cfg = engine_config(engine, **knobs)
    cfg = replace(cfg, timeline=cfg.timeline or timeline is not None or record_timeline)
    _check_slo("slo_ttft", slo_ttft)
    _check_slo("slo_tbt", slo_tbt)
    reqs, workload = serving_workload(trace, rate, duration, arrival, seed, skip_bad_rows, max_requests)
    gpus = layout = None
    if step_model is None:
        fm, m, hw = build_forward(model, hardware, nodes, arch, routing, overrides, seed, max_gpus)
        step_model = fm
        kv_capacity_tokens = fm.kv_capacity_tokens(mtp=True) if cfg.mtp else fm.kv_capacity_tokens()
        if cfg.mtp:
            draft_model = fm.mtp_module()
        gpus = fm.gpus
        layout = layout_info(fm.layout, fm.placement.nodes).to_dict()
    elif kv_capacity_tokens is None:
        raise SpecError("kv_capacity_tokens", None, "an integer number of tokens when step_model is given")
    res = simulate(reqs, step_model, kv_capacity_tokens, cfg, slo_ttft=slo_ttft, slo_tbt=slo_tbt, progress=progress,
                   seed=seed, draft_model=draft_model)
    if timeline is not None:
        write_serving_timeline(res, timeline)
    head = {
        "model": str(getattr(model, "name", model)),
        "hardware": str(getattr(hardware, "name", hardware)),
        "nodes": nodes,
        "arch": arch,
        "replicas": cfg.replicas,
        "gpus_per_replica": gpus,
        "layout": layout,  # simfoe.provenance.LayoutInfo of one replica (None with a custom step_model)
        **_engine_head(cfg),
        "seed": seed,
        "workload": workload,
    }
    res.summary = {**head, **res.summary}
    return res


def serving_workload(trace, rate: float | None, duration: float | None, arrival: str | None, seed: int,
                      skip_bad_rows: bool, max_requests: int | None) -> tuple:
    """(requests, the summary's ``workload`` block) of a closed loop (checked against ``max_requests``; it
    takes no open-loop option) or of a trace shaped by ``rate`` (req/s), ``duration`` (s) and ``arrival``."""
    from simfoe.workloads import make_workload

    if isinstance(trace, ClosedLoop):
        _open_loop_only(rate=rate, duration=duration, arrival=arrival)
        SERVING_REQUESTS.check("num_prompts", trace.num_prompts, trace.num_prompts + trace.warmup, max_requests,
                               "num_prompts + warmup")
        return trace, {**trace.to_dict(), "source": trace.describe(), "requests": trace.num_prompts, "skipped_rows": 0}
    reqs = make_workload(trace, rate=rate, duration=duration, arrival=arrival, seed=seed, skip_bad_rows=skip_bad_rows,
                         max_requests=max_requests)
    return reqs, {"kind": "open-loop", "source": reqs.source, "requests": len(reqs), "skipped_rows": reqs.skipped_rows}


def _engine_head(cfg: EngineConfig) -> dict:
    """The engine knobs a serving summary reports: routers' and scheduler's names, the engine profile the knobs
    came from (None: none), the per-rank budgets (sequences, tokens) and their scope."""
    return {"router": cfg.router, "scheduler": cfg.scheduler, "engine": cfg.engine, "max_batch": cfg.max_batch,
            "token_budget": cfg.token_budget, "budget_scope": cfg.budget_scope}


def write_serving_timeline(res: ServingResult, path: str | Path, files=None, field: str = "--timeline") -> None:
    """Write the iteration events ``res`` recorded (``timeline``/``record_timeline``) as a Chrome trace
    (into the :class:`simfoe.outputs.AtomicFiles` group ``files`` when given)."""
    from simfoe.timeline import write_timeline

    write_timeline(path, res.engine.timeline,
                   {0: f"serving iterations (one row per replica){' - truncated' if res.engine.timeline_truncated else ''}"},
                   field, files)


def write_serving_outputs(res: ServingResult, out=None, timeline=None, out_field: str = "out",
                          timeline_field: str = "timeline", csv: bool = False) -> None:
    """Write the timeline and/or ``out`` (records + summary, with ``csv`` the records as CSV too) of
    ``res``, all files or none; the summary gains ``files`` when ``out`` is given. Errors name
    ``out_field`` / ``timeline_field``."""
    from simfoe.outputs import AtomicFiles

    with AtomicFiles(out_field) as w:
        if timeline is not None:
            write_serving_timeline(res, timeline, w, timeline_field)
        if out is not None:
            res.summary["files"] = res.write(out, w, csv)


def run_serve(model, hardware, nodes: int, arch: str, trace=None, rate: float | None = None,
              duration: float | None = None, replicas: int = 1, routing: str = "uniform", overrides=(),
              seed: int = 0, slo_ttft: float | None = None, slo_tbt: float | None = None,
              max_batch: int | None = None, token_budget: int | None = None, budget_scope: str = "rank",
              progress: bool = False,
              out=None, rank_router: str = "vllm-lb", concurrency: int | None = None, isl: int | None = None,
              osl: int | None = None, random_range_ratio: float | None = None, num_prompts: int | None = None,
              warmup: int | None = None, timeline: str | None = None, mtp: int = 0, mtp_acceptance=None,
              prefix_cache: bool = False, **kw) -> dict:
    """The JSON summary of ``simfoe serve`` (keys in DESIGN.md plus more); writes ``requests.parquet``
    and ``summary.json`` under ``out`` and the iteration trace to ``timeline`` when given. A sweep's or
    what-if's serve scenario: ``trace`` (with ``rate``, ``duration``), or a closed loop of
    ``concurrency`` clients (``isl``, ``osl``, ``random_range_ratio``, ``num_prompts``, ``warmup``; see
    :class:`simfoe.workloads.closed_loop.ClosedLoop`); ``kw`` as for :func:`simulate_serving` (e.g.
    ``engine="vllm"``: that engine profile's knobs). ``max_batch``, ``token_budget``: None keeps the
    engine's (default 256 sequences, 8192 tokens). ``mtp``, ``mtp_acceptance`` (one rate or a list),
    ``prefix_cache``: :class:`EngineConfig`'s multi-token prediction and prefix caching, named here so
    that sweeps may vary them."""
    from simfoe.workloads.closed_loop import select_workload

    work = select_workload(trace, concurrency, isl=isl, osl=osl, random_range_ratio=random_range_ratio,
                           num_prompts=num_prompts, warmup=warmup)
    res = simulate_serving(model, hardware, nodes, arch, work, rate=rate, duration=duration, replicas=replicas,
                           routing=routing, overrides=overrides, seed=seed, slo_ttft=slo_ttft, slo_tbt=slo_tbt,
                           **{k: v for k, v in (("max_batch", max_batch), ("token_budget", token_budget)) if v is not None},
                           budget_scope=budget_scope,
                           rank_router=rank_router, progress=progress, record_timeline=timeline is not None, mtp=mtp,
                           mtp_acceptance=tuple(mtp_acceptance) if isinstance(mtp_acceptance, list) else mtp_acceptance,
                           prefix_cache=prefix_cache, **kw)
    write_serving_outputs(res, out, timeline)
    return res.summary
