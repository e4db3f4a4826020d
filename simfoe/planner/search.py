"""Placement search: the highest request rate each layout sustains under the SLOs, ranked.

For every candidate (``simfoe.planner.layouts``), cheapest checks first:

1. memory: weights must fit in 90% of HBM (``ForwardModel.fits``) and the KV cache must hold the
   longest request of the workload;
2. latency bounds (one request alone on the layout, no queueing): the solo prefill of the
   90th-percentile prompt must not exceed the p90 TTFT SLO, a one-sequence decode step at the
   mean context must not exceed the p99 TBT SLO;
3. throughput bound (roofline-like, per replica): ``1 / (P * c_pf + O * min(c_pf, c_dec))`` req/s
   with P, O the mean prompt/output tokens, ``c_pf`` the per-token time of a full prefill chunk
   (attention pairs per token as in the workload: a prompt of P tokens has P(P+1)/2 causal pairs)
   and ``c_dec`` the per-sequence time of a decode step at the largest batch the KV cache allows.
   Candidates are simulated in decreasing order of this bound per GPU (per dollar); one whose
   bound cannot beat the runner-up found so far is pruned (branch and bound). The bound is loose
   under latency SLOs (queueing), so it is also calibrated: a candidate is pruned when
   bound x ``calibration_margin`` x (highest max-rate/bound ratio among the layouts simulated so
   far) cannot beat the runner-up (reported as its own reason; ``calibration_margin=inf`` turns
   this heuristic off). The best-bound layout of each architecture (MoE, FoE) is always
   simulated so that the report compares the two.

Simulated candidates get a rate search with the serving simulator (fixed seed, ~``requests``
requests per probe and at least ``probe_slo_multiple`` x the TTFT SLO of arrivals, so that a small
overload has time to build a queue that breaks the SLO): probe half the bound, then the bound (if half
passed) or halves until the SLOs hold, then bisect geometrically. A search stops once its failing
rate scores no more than the runner-up so far ('partial' if a rate passed; 'pruned' if none did, except
for the two architecture baselines, which halve on to a passing rate).
A probe passes when every request completes, p90 TTFT <= ``slo_ttft_p90`` and p99 TBT <=
``slo_tbt_p99``. Iteration times are shared across a layout's probes (one interpolated cost
table per ForwardModel). The token budget per iteration (chunked-prefill size) is chosen per
layout: the largest of ``TOKEN_BUDGETS`` whose chunk iteration takes <= 80% of the TBT SLO. Budget
and ``max_batch`` are per data-parallel attention rank (``ForwardModel.dp_ranks``), as in
the serving engine: the chunk iteration runs one such chunk on every rank. That is an upper bound
(and so are the busy-time breakdowns): the simulated serving pins requests to ranks and waits for the
busiest.

Replicas: a layout of n nodes runs ``floor(max_nodes / n)`` data-parallel copies; one replica is
simulated and the deployment's goodput is ``replicas x`` its rate (round-robin splitting of
Poisson arrivals gives each replica a smoother stream, so this is not optimistic);
``verify_replicas`` re-checks the winner with all replicas simulated.

Closed loop (``trace`` a :class:`simfoe.workloads.closed_loop.ClosedLoop` of N clients): there is no
rate to search. Steps 1-3 screen as above; then each layout is probed once, the whole deployment
simulated: N clients over its ``replicas`` replicas through the ``least-outstanding`` router (each
request goes to the replica with the fewest in flight, so every replica carries floor(N/R) or
ceil(N/R) clients, as a load balancer in front of R servers splits N benchmark clients). A layout
passes when every request completes and both SLOs hold; passing layouts are ranked by output
tokens/s per GPU (per dollar with prices). Branch and bound: a layout whose throughput bound x mean
output tokens per GPU is not above the runner-up's achieved tokens/s per GPU is pruned (no calibrated
pruning: one probe per layout costs what the calibration would save). The 2x-load check runs 2N
clients (and twice the prompts and warm-ups); skew and half-bandwidth checks rerun the same probe.
With ``disagg`` (closed loop only), prefill-decode disaggregated deployments are searched after the aggregated
layouts and ranked with them (:mod:`simfoe.planner.disagg`; the summary's ``disagg`` block).
Units: seconds, requests/s, bytes, tokens; prices in $ per GPU-hour.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from simfoe.errors import SpecError
from simfoe.limits import PLANNER_LAYOUTS, SERVING_REQUESTS
from simfoe.planner.layouts import Candidate, enumerate_layouts, layout_bound
from simfoe.serving.kv_cache import KVBlocks
from simfoe.serving.step_models import occupied_ranks
from simfoe.workloads.closed_loop import ClosedLoop

#: Chunked-prefill token budgets tried per layout, largest first (vLLM max_num_batched_tokens).
TOKEN_BUDGETS = (8192, 4096, 2048, 1024, 512, 256)
#: Share of the TBT SLO one prefill chunk may take (the rest is left to the decodes in its batch).
CHUNK_SHARE_OF_TBT = 0.8
COMPUTE_CATS = ("attention", "experts", "dense_ffn", "embed_lm_head")


def _chunk_ranks(ranks: int) -> int | None:
    """Ranks a full chunk on every DP attention rank occupies, as the serving cost model counts them
    (:func:`simfoe.serving.step_models.occupied_ranks`); None (one chunk) for one rank."""
    return occupied_ranks(ranks, ranks, ranks) or None


def _s(x: float | None) -> str:
    """Seconds as '0.123 s', or '-' when unknown."""
    return "-" if x is None else f"{x:.3g} s"


@dataclass
class TopTwo:
    """The best two scores achieved so far in a search (higher is better; units of the ranking metric): a layout
    whose bound is not above the runner-up cannot rank in the top two, so the search may prune it."""

    scores: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, scores) -> TopTwo:
        """The top two of the iterable ``scores``."""
        return cls(sorted(scores, reverse=True)[:2])

    def add(self, score: float) -> None:
        """Record an achieved score."""
        self.scores = TopTwo.of(self.scores + [score]).scores

    @property
    def runner_up(self) -> float | None:
        """The second-best score so far (None until two are recorded)."""
        return self.scores[1] if len(self.scores) >= 2 else None


@dataclass
class PlanConfig:
    """Search settings. SLOs in seconds; ``requests``: requests per probe; ``bisect_steps``:
    geometric bisection steps after bracketing (precision ~ 2**(1/2**steps) of the bracket)."""

    slo_ttft_p90: float | None = None
    slo_tbt_p99: float | None = None
    trace: str | ClosedLoop = "longbench"  # a trace name/path (rate search) or a closed loop (one probe per layout)
    requests: int = 240
    bisect_steps: int = 4
    max_halvings: int = 6
    seed: int = 0
    max_batch: int = 256
    routing: str = "uniform"
    overrides: tuple[str, ...] = ()
    prices: dict | None = None  # {hardware name: $ per GPU-hour}
    interp_bits: int = 3
    sensitivity: bool = True
    verify_replicas: bool = True
    skew_routing: str = "zipf:1.2"
    probe_slo_multiple: float = 20.0  # a probe lasts at least this many TTFT SLOs (s)
    calibration_margin: float = 1.25  # prune when bound x margin x (best rate/bound seen) < runner-up; inf = off
    progress: object = None  # callable(str) for one line per layout screened and simulated, or None
    max_layouts: int | None = None  # refuse a search of more candidate layouts (None: simfoe.limits.PLANNER_LAYOUTS)
    max_requests: int | None = None  # refuse probes of more requests (None: simfoe.limits.SERVING_REQUESTS)
    engine: str | None = None  # engine profile whose launch command the summary gives (simfoe.planner.launch)
    disagg: bool = False  # also search prefill-decode disaggregated deployments (closed loop; simfoe.planner.disagg)

    def check(self):
        from simfoe.specs.routing import parse_routing

        for name in ("slo_ttft_p90", "slo_tbt_p99"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise SpecError("--" + name.replace("_", "-"), v, "seconds > 0")
        if self.slo_ttft_p90 is None and self.slo_tbt_p99 is None:
            raise SpecError("--slo-ttft-p90/--slo-tbt-p99", None,
                            "give at least one of --slo-ttft-p90, --slo-tbt-p99 (seconds)", problem="neither is given")
        if not (isinstance(self.requests, int) and self.requests >= 20):
            raise SpecError("--requests", self.requests, "an integer >= 20 requests per probe")
        if not (isinstance(self.bisect_steps, int) and 0 <= self.bisect_steps <= 10):
            raise SpecError("--bisect-steps", self.bisect_steps, "an integer in 0..10")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise SpecError("--seed", self.seed, "an integer >= 0")
        try:
            parse_routing(self.routing)  # a bad --routing is an input error, not a rejected layout
        except SpecError as e:
            raise SpecError("--routing", self.routing, e.allowed) from None
        if self.disagg and not isinstance(self.trace, ClosedLoop):
            raise SpecError("--disagg", True, "with a closed-loop workload (--concurrency N --isl L --osl L): "
                            "deployments are compared at one concurrency", problem="no --concurrency is given")


#: (closed loop, per dollar) -> (``rank_by`` words, the layout key ranked by, its unit)
RANK_METRICS = {
    (False, False): ("goodput per GPU", "goodput_rps_per_gpu", "req/s per GPU"),
    (False, True): ("goodput per dollar", "requests_per_dollar", "requests per $"),
    (True, False): ("output tokens/s per GPU", "output_tokens_per_s_per_gpu", "output tokens/s per GPU"),
    (True, True): ("output tokens per dollar", "output_tokens_per_dollar", "output tokens per $"),
}


def per_gpu_or_dollar(x: float | None, gpus: int, price: float | None, dollar: bool) -> float | None:
    """``x`` (a rate, per second) per GPU, or per dollar (x x 3600 / (GPUs x $ per GPU-hour)) when ``dollar``;
    None when ``x`` or the needed price is unknown."""
    if x is None or (dollar and not price):
        return None
    return x * 3600.0 / (gpus * price) if dollar else x / gpus


@dataclass
class Evaluation:
    """What the search learned about one candidate (see module docstring for statuses)."""

    cand: Candidate
    status: str = "pending"  # pruned | infeasible | feasible | partial
    reason: str = ""
    reason_kind: str = ""
    token_budget: int | None = None  # per DP attention rank
    dp_ranks: int | None = None  # data-parallel attention ranks per replica (ForwardModel.dp_ranks)
    kv_capacity_tokens: int | None = None
    weight_bytes_per_gpu: float | None = None
    bound_rps: float | None = None  # per replica
    rate_rps: float | None = None  # highest passing rate found, per replica
    probes: list = field(default_factory=list)
    at_rate: dict | None = None  # metrics of the passing probe at rate_rps
    output_tps: float | None = None  # closed loop: the deployment's output tokens/s at the workload's concurrency
    price: float | None = None
    fm: object = field(default=None, repr=False)
    cost: object = field(default=None, repr=False)

    @property
    def goodput_rps(self) -> float | None:
        return None if self.rate_rps is None else self.rate_rps * self.cand.replicas

    @property
    def per_gpu(self) -> float | None:
        return None if self.rate_rps is None else self.rate_rps / self.cand.gpus

    @property
    def per_dollar(self) -> float | None:
        """Requests per dollar."""
        return per_gpu_or_dollar(self.rate_rps, self.cand.gpus, self.price, True)

    def score(self, rank_by: str, bound: bool = False, rate: float | None = None) -> float:
        """Requests/s per GPU or per dollar at ``rate`` (default: the bound or the found rate); -1 when unknown."""
        r = rate if rate is not None else (self.bound_rps if bound else self.rate_rps)
        v = per_gpu_or_dollar(r, self.cand.gpus, self.price, rank_by == "dollar")
        return -1.0 if v is None else v

    def to_dict(self) -> dict:
        c = self.cand
        return {
            "label": c.label, "hardware": c.hardware, "nodes": c.nodes, "arch": c.arch,
            "settings": {k: v for k, v in c.settings}, "overrides": list(c.overrides),
            "replicas": c.replicas, "gpus_per_replica": c.gpus, "total_gpus": c.total_gpus,
            "status": self.status, "reason": self.reason,
            "token_budget": self.token_budget, "dp_ranks": self.dp_ranks, "kv_capacity_tokens": self.kv_capacity_tokens,
            "weight_bytes_per_gpu": self.weight_bytes_per_gpu,
            "bound_rps_per_replica": self.bound_rps, "max_rate_rps_per_replica": self.rate_rps,
            "goodput_rps": self.goodput_rps, "goodput_rps_per_gpu": self.per_gpu,
            "price_per_gpu_hour": self.price, "requests_per_dollar": self.per_dollar,
            "at_max_rate": self.at_rate, "probes": self.probes,
            **(self._closed_dict() if self.output_tps is not None else {}),
        }

    def _closed_dict(self) -> dict:
        """Closed-loop keys: output tokens/s of the deployment, per GPU and per dollar."""
        c, tps = self.cand, self.output_tps
        return {"output_tokens_per_s": tps, "output_tokens_per_s_per_gpu": tps / c.total_gpus,
                "output_tokens_per_dollar": per_gpu_or_dollar(tps, c.total_gpus, self.price, True)}


@dataclass
class WorkloadStats:
    mean_prompt: float
    mean_output: float
    p90_prompt: int
    max_tokens: int
    pairs_per_token: float  # causal attention pairs per prompt token, token-weighted: E[P(P+1)/2] / E[P]

    @classmethod
    def of(cls, trace: str | ClosedLoop, seed: int, max_requests: int | None = None) -> WorkloadStats:
        """Token statistics of ``trace`` (a closed loop: of its measured requests, lengths drawn with ``seed``)."""
        from simfoe.workloads import make_workload

        if isinstance(trace, ClosedLoop):
            t = trace.table(seed)
            p, o = (np.asarray(x)[trace.warmup:] for x in (t.prompt_tokens, t.output_tokens))
        else:
            t = make_workload(trace, rate=1.0, seed=seed, max_requests=max_requests)
            p = np.asarray(t.prompt_tokens)
            o = np.asarray(t.output_tokens)
        pf = p.astype(np.float64)
        return cls(float(p.mean()), float(o.mean()), int(np.quantile(p, 0.9, method="higher")), int((p + o).max()),
                   float((pf * (pf + 1) / 2).sum() / pf.sum()))


class Planner:
    """Runs the search for one model; see :func:`recommend` for the one-call entry point."""

    def __init__(self, model: str, hardware: list[str], max_nodes: int, cfg: PlanConfig):
        from simfoe.specs.io import check_override_roots, load_hardware, load_model

        cfg.check()
        if not (isinstance(max_nodes, int) and max_nodes >= 1):
            raise SpecError("--max-nodes", max_nodes, "an integer >= 1")
        if cfg.disagg and max_nodes < 2:
            raise SpecError("--max-nodes", max_nodes, "an integer >= 2 with --disagg (each pool's workers take whole "
                            "nodes: one prefill and one decode worker need two)")
        if not hardware:
            raise SpecError("--hardware", hardware, "one or more hardware presets or YAML paths")
        check_override_roots(list(cfg.overrides))
        self.model_name, self.max_nodes, self.cfg = str(model), max_nodes, cfg
        self.model = load_model(model, list(cfg.overrides))
        self.hw = {str(h): load_hardware(h, list(cfg.overrides)) for h in hardware}
        self.engine = _launch_engine(cfg.engine)
        #: the closed-loop workload (one probe per layout), or None (a trace: rate search)
        self.closed = cfg.trace if isinstance(cfg.trace, ClosedLoop) else None
        self._check_size()
        prices = dict(cfg.prices or {})
        for k, v in prices.items():
            if k not in self.hw:
                raise SpecError("--price", k, "a hardware name given in --hardware: " + ", ".join(self.hw))
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise SpecError("--price", v, "$ per GPU-hour > 0")
        self.prices = prices
        self._check_routing_trace()
        self.rank_by = "dollar" if prices and all(h in prices for h in self.hw) else "gpu"
        self.stats = WorkloadStats.of(cfg.trace, cfg.seed, cfg.max_requests)
        self.probes = 0
        self.forward_evals = 0

    def _check_size(self) -> None:
        """Refuse, before enumerating, a search whose candidate layouts or probes are too many (:mod:`simfoe.limits`)."""
        n, hw = self.max_nodes, len(self.hw)
        bound = layout_bound(self.model, hw, n, self.cfg.overrides)
        PLANNER_LAYOUTS.check("--max-nodes", n, bound, self.cfg.max_layouts,
                              f"at most {bound // (hw * n)} per node count and hardware, {hw} hardware x {n} node counts")
        w = self.closed
        if w is not None:
            k = 2 if self.cfg.sensitivity else 1  # the 2x-load check doubles prompts and warm-ups
            SERVING_REQUESTS.check("--num-prompts", w.num_prompts, k * (w.num_prompts + w.warmup),
                                   self.cfg.max_requests, "num_prompts + warmup" + (", x 2 for the 2x-load check" * (k - 1)))
            return
        SERVING_REQUESTS.check("--requests", self.cfg.requests, self.cfg.requests * n, self.cfg.max_requests,
                               f"per probe, x up to {n} replicas")

    def _check_routing_trace(self) -> None:
        """A ``trace:PATH`` routing is read once up front: a bad file is an input error (exit 2),
        not a reason to reject every layout."""
        from simfoe.specs.routing import parse_routing

        spec = parse_routing(self.cfg.routing)
        if spec.kind != "trace" or self.model.moe is None:
            return
        from simfoe.forward.routing import expert_probs

        try:
            expert_probs(spec, self.model.moe.n_experts, max(1, self.model.n_moe_layers), np.random.default_rng(0))
        except SpecError as e:
            raise SpecError("--routing", self.cfg.routing, e.allowed) from None

    # ---- per-candidate pieces ------------------------------------------------------------------
    def _forward(self, cand: Candidate, routing: str | None = None, extra: tuple[str, ...] = ()):
        from simfoe.api import forward_model

        return forward_model(self.model_name, cand.hardware, cand.nodes, cand.arch, routing or self.cfg.routing,
                             tuple(self.cfg.overrides) + cand.overrides + tuple(extra), self.cfg.seed)

    def _cost(self, fm):
        from simfoe.serving.step_models import InterpCost

        return InterpCost(fm, self.cfg.interp_bits)

    def _it(self, fm, pf: int, pairs: float, ds: int, kv: int, prefill_seqs: int | None = None) -> float:
        self.forward_evals += 1
        return float(fm.iteration(int(pf), float(pairs), int(ds), int(kv), prefill_seqs).latency_s)

    def screen(self, ev: Evaluation) -> None:
        """Memory fit, latency bounds, token budget and throughput bound (a few forward passes)."""
        cfg, st = self.cfg, self.stats
        try:
            fm = self._forward(ev.cand)
        except SpecError as e:
            ev.status, ev.reason_kind, ev.reason = "pruned", "placement", str(e)
            return
        ev.fm = fm
        ev.price = self.prices.get(ev.cand.hardware)
        hbm = fm.hw.gpu.hbm_bytes
        ev.weight_bytes_per_gpu = fm.weight_bytes_per_gpu()
        if not fm.fits():
            ev.status, ev.reason_kind = "pruned", "memory: weights do not fit"
            ev.reason = (f"weights need {ev.weight_bytes_per_gpu / 1e9:.1f} GB per GPU, more than 90% of "
                         f"{hbm / 1e9:.0f} GB HBM")
            return
        ev.kv_capacity_tokens = kv = fm.kv_capacity_tokens()
        ev.dp_ranks = ranks = fm.dp_ranks
        try:  # the serving engine's own check (a request's KV lives on one DP attention rank; 16-token blocks)
            kvb = KVBlocks(kv, ranks=ranks)  # one rank's pool
            fits, per_rank = kvb.fits(st.max_tokens - 1), kvb.capacity_tokens
        except SpecError:
            fits, per_rank = False, 0
        if not fits:
            ev.status, ev.reason_kind = "pruned", "memory: KV cache too small"
            per = f" per DP attention rank ({ranks} ranks)" if ranks > 1 else ""
            ev.reason = f"KV cache holds {per_rank:,} tokens{per}, less than the longest request ({st.max_tokens:,})"
            return
        p_mean, o_mean = st.mean_prompt, st.mean_output
        if cfg.slo_ttft_p90 is not None:
            from simfoe.forward.work import Work

            self.forward_evals += 1
            t = fm.simulate(Work.from_phase("prefill", 1, st.p90_prompt)).latency_s
            if t > cfg.slo_ttft_p90:
                ev.status, ev.reason_kind = "infeasible", "latency bound: TTFT"
                ev.reason = (f"a {st.p90_prompt}-token prompt (p90) alone takes {t:.3f} s to prefill, "
                             f"above the p90 TTFT SLO {cfg.slo_ttft_p90:g} s")
                return
        t1 = self._it(fm, 0, 0, 1, p_mean + 1)
        if cfg.slo_tbt_p99 is not None and t1 > cfg.slo_tbt_p99:
            ev.status, ev.reason_kind = "infeasible", "latency bound: TBT"
            ev.reason = f"one decode step of one sequence takes {t1 * 1e3:.1f} ms, above the p99 TBT SLO"
            return
        # token budget per rank: largest chunk whose iteration (one chunk on every DP attention rank)
        # leaves room for the decodes in the TBT SLO
        budget, t_chunk = None, None
        for c in TOKEN_BUDGETS:
            t = self._it(fm, c * ranks, c * ranks * st.pairs_per_token, 0, 0, _chunk_ranks(ranks))
            budget, t_chunk = c, t
            if cfg.slo_tbt_p99 is None or t <= CHUNK_SHARE_OF_TBT * cfg.slo_tbt_p99:
                break
        ev.token_budget = budget
        c_pf = t_chunk / (budget * ranks)
        n = int(max(1, min(cfg.max_batch * ranks, kv // max(1, int(p_mean + o_mean)))))
        c_dec = self._it(fm, 0, 0, n, n * (p_mean + o_mean / 2)) / n
        ev.bound_rps = 1.0 / (p_mean * c_pf + o_mean * min(c_pf, c_dec))
        ev.status = "screened"

    def _probe(self, ev: Evaluation, rate: float, cost=None, replicas: int = 1, requests: int | None = None) -> dict:
        from simfoe.serving.api import simulate
        from simfoe.workloads import make_workload

        cfg = self.cfg
        n = (requests or cfg.requests) * replicas
        dur = n / rate
        if cfg.slo_ttft_p90 is not None:
            # a probe much shorter than the TTFT SLO cannot see a small overload build up a queue
            dur = max(dur, cfg.probe_slo_multiple * cfg.slo_ttft_p90)
        reqs = make_workload(cfg.trace, rate=rate, duration=dur, seed=cfg.seed, max_requests=cfg.max_requests)
        horizon = None
        if cfg.slo_ttft_p90 is not None and cfg.slo_tbt_p99 is not None:
            # past this, requests are so late that the probe fails anyway: stop the backlog early
            horizon = dur + 4 * (cfg.slo_ttft_p90 + (self.stats.max_tokens) * cfg.slo_tbt_p99)
        t0 = time.perf_counter()
        res = simulate(reqs, cost if cost is not None else ev.cost, ev.kv_capacity_tokens, replicas=replicas,
                       router="round-robin", max_batch=cfg.max_batch, token_budget=ev.token_budget,
                       horizon_s=horizon)
        return self._judge(res.summary, t0, {"rate_rps": rate})

    def _closed_probe(self, ev: Evaluation, times: int = 1, cost=None) -> dict:
        """One closed-loop run of the whole deployment: ``times`` x the workload's clients (and prompts
        and warm-ups) over ``ev.cand.replicas`` replicas, least-outstanding router (module docstring).
        ``rate_rps`` in the result is the achieved request rate per replica."""
        from simfoe.serving.api import simulate

        w, reps = self.closed, ev.cand.replicas
        if times != 1:
            w = dataclasses.replace(w, concurrency=w.concurrency * times, num_prompts=w.num_prompts * times,
                                    warmup=w.warmup * times)
        t0 = time.perf_counter()
        res = simulate(w, cost if cost is not None else ev.cost, ev.kv_capacity_tokens, replicas=reps,
                       router="least-outstanding", max_batch=self.cfg.max_batch, token_budget=ev.token_budget,
                       seed=self.cfg.seed)
        rps = res.summary["throughput"]["requests_per_s"]
        return self._judge(res.summary, t0, {"concurrency": w.concurrency, "replicas": reps,
                                             "rate_rps": None if rps is None else rps / reps})

    def _judge(self, s: dict, t0: float, head: dict) -> dict:
        """A probe's record from serving summary ``s``: ``head``, whether it passes (every request
        completed, p90 TTFT and p99 TBT within the SLOs) and its metrics; ``t0``: its perf_counter start."""
        cfg = self.cfg
        self.probes += 1
        ttft, tbt = s["ttft_s"].get("p90"), s["tbt_s"].get("p99")
        done = s["requests"]["completed"] == s["requests"]["total"] and s["requests"]["total"] > 0
        ok = done
        if cfg.slo_ttft_p90 is not None:
            ok = ok and ttft is not None and ttft <= cfg.slo_ttft_p90
        if cfg.slo_tbt_p99 is not None:
            ok = ok and (tbt is None or tbt <= cfg.slo_tbt_p99)
        return {**head, "ok": bool(ok), "requests": s["requests"]["total"],
                "completed": s["requests"]["completed"], "ttft_p90_s": ttft, "tbt_p99_s": tbt,
                "ttft_mean_s": s["ttft_s"].get("mean"), "queue_mean_s": s["queue_s"].get("mean"),
                "e2e_mean_s": s["e2e_s"].get("mean"), "tpot_mean_s": s["tpot_s"].get("mean"),
                "gpu_utilization": s.get("gpu_utilization"),
                "output_tokens_per_s": s["throughput"]["output_tokens_per_s"],
                "wall_s": time.perf_counter() - t0}

    def search_rate(self, ev: Evaluation, stop_below: float | None = None, need_rate: bool = False) -> None:
        """Bracket and bisect the highest passing rate (per replica). ``stop_below``: a score below
        which the exact value does not matter: stop early, status 'partial' once a rate passed, or
        'pruned' when a failing rate already scores at most ``stop_below`` and none passed yet (unless
        ``need_rate``: the architecture baselines the report compares keep halving to a passing rate)."""
        cfg = self.cfg
        ev.cost = self._cost(ev.fm)
        bound = ev.bound_rps
        # first probe at half the bound (rates near the bound are rarely met under latency SLOs
        # and an overloaded probe is the slowest kind), then up to the bound or down by halves
        r = bound / 2
        p = self._probe(ev, r)
        ev.probes.append(p)
        if p["ok"]:
            lo, lo_p = r, p
            p = self._probe(ev, bound)
            ev.probes.append(p)
            if p["ok"]:
                lo, lo_p, hi = bound, p, bound * 2
            else:
                hi = bound
        else:
            lo = lo_p = None
            hi = r
            for _ in range(cfg.max_halvings - 1):
                if not need_rate and stop_below is not None and self._score_at(ev, hi) <= stop_below:
                    self._prune_failed(ev, hi, stop_below)
                    return
                r /= 2
                p = self._probe(ev, r)
                ev.probes.append(p)
                if p["ok"]:
                    lo, lo_p = r, p
                    break
                hi = r
            if lo is None:
                ev.status, ev.reason_kind = "infeasible", "SLO missed at low load"
                ev.reason = f"misses the SLOs even at {r:.3g} req/s (1/{2 ** cfg.max_halvings} of its throughput bound)"
                return
        ev.rate_rps, ev.at_rate, ev.status = lo, lo_p, "feasible"
        for _ in range(cfg.bisect_steps):
            if stop_below is not None and self._score_at(ev, hi) <= stop_below:
                ev.status = "partial"
                ev.reason = "rate search stopped early: its bracket lies below the runner-up"
                return
            mid = math.sqrt(lo * hi)
            p = self._probe(ev, mid)
            ev.probes.append(p)
            if p["ok"]:
                lo, ev.rate_rps, ev.at_rate = mid, mid, p
            else:
                hi = mid

    def _prune_failed(self, ev: Evaluation, rate: float, second: float) -> None:
        """Pruned after its probes: it missed the SLOs at ``rate`` req/s per replica, whose score is not
        above the runner-up's ``second`` (a higher rate cannot pass where a lower one failed)."""
        ev.status, ev.reason_kind = "pruned", "missed the SLOs below the runner-up"
        ev.reason = (f"misses the SLOs at {rate:.3g} req/s per replica ({self._unit(self._score_at(ev, rate))}), "
                     f"not above the runner-up found so far ({self._unit(second)})")

    def _unit(self, score: float) -> str:
        if self.closed is not None:
            return f"{score:.3g} output tokens per $" if self.rank_by == "dollar" else f"{score:.3g} output tokens/s per GPU"
        return f"{score:.3g} requests per $" if self.rank_by == "dollar" else f"{score:.3g} req/s per GPU"

    def _score(self, ev: Evaluation, bound: bool = False) -> float:
        """What layouts are ranked by: req/s (open loop) or output tokens/s (closed loop; its bound: the
        throughput bound x mean output tokens) per GPU, or per dollar; -1 when unknown."""
        if self.closed is None:
            return ev.score(self.rank_by, bound)
        tps = ev.output_tps if not bound else (
            None if ev.bound_rps is None else ev.bound_rps * self.stats.mean_output * ev.cand.replicas)
        v = per_gpu_or_dollar(tps, ev.cand.total_gpus, ev.price, self.rank_by == "dollar")
        return -1.0 if v is None else v

    def _score_at(self, ev: Evaluation, rate: float) -> float:
        return ev.score(self.rank_by, rate=rate)

    # ---- the whole search -----------------------------------------------------------------------
    def _screen_all(self, evs: list[Evaluation], t0: float) -> list[Evaluation]:
        """Screen every candidate; the screened ones in decreasing order of their bound score."""
        for i, ev in enumerate(evs):
            self.screen(ev)
            if self.cfg.progress:
                self.cfg.progress(f"screened {i + 1}/{len(evs)} {ev.cand.label}: {ev.status} "
                                  f"({time.perf_counter() - t0:.0f} s)")
        return sorted((e for e in evs if e.status == "screened"), key=lambda e: -self._score(e, bound=True))

    @staticmethod
    def _baselines(order: list[Evaluation]) -> set[int]:
        """ids of the best-bound layout of each architecture: always simulated, so that the report can
        compare MoE with FoE even when one of them cannot win."""
        return {id(next(e for e in order if e.cand.arch == a)) for a in {e.cand.arch for e in order}}

    def _prune_bound(self, ev: Evaluation, b: float, second: float) -> None:
        ev.status, ev.reason_kind = "pruned", "throughput bound below the runner-up"
        ev.reason = (f"its throughput bound ({self._unit(b)}) is not above the runner-up found so far "
                     f"({self._unit(second)})")

    def _search_rates(self, order: list[Evaluation], t0: float) -> None:
        """Open loop: rate search of each layout in ``order`` that its (calibrated) bound does not prune."""
        top = TopTwo()
        eff = 0.0  # highest (max rate / throughput bound) seen among simulated layouts
        baselines = self._baselines(order)
        for ev in order:
            second = top.runner_up
            b = ev.score(self.rank_by, bound=True)
            k = min(1.0, self.cfg.calibration_margin * eff)
            if id(ev) in baselines:
                pass  # simulated whatever its bound, so that the report can compare the architectures
            elif second is not None and b <= second:
                self._prune_bound(ev, b, second)
                continue
            elif second is not None and eff > 0 and b * k <= second:
                ev.status, ev.reason_kind = "pruned", "calibrated bound below the runner-up"
                ev.reason = (f"its throughput bound ({self._unit(b)}) x {k:.2f} (the best rate/bound ratio "
                             f"simulated so far x {self.cfg.calibration_margin:g}) is not above the runner-up found "
                             f"so far ({self._unit(second)})")
                continue
            self.search_rate(ev, stop_below=second, need_rate=id(ev) in baselines)
            if self.cfg.progress:
                self.cfg.progress(f"{ev.cand.label}: {ev.status} {ev.rate_rps or 0:.3g} req/s/replica "
                                  f"({len(ev.probes)} probes, {time.perf_counter() - t0:.0f} s)")
            if ev.rate_rps is not None and ev.status == "feasible":
                eff = max(eff, ev.rate_rps / ev.bound_rps)
                top.add(ev.score(self.rank_by))

    def _search_closed(self, order: list[Evaluation], t0: float) -> None:
        """Closed loop: one probe of each layout in ``order`` whose bound is above the runner-up so far."""
        top = TopTwo()
        baselines = self._baselines(order)
        for ev in order:
            second = top.runner_up
            b = self._score(ev, bound=True)
            if id(ev) not in baselines and second is not None and b <= second:
                self._prune_bound(ev, b, second)
                continue
            self.probe_closed(ev)
            if self.cfg.progress:
                self.cfg.progress(f"{ev.cand.label}: {ev.status} {self._unit(self._score(ev))} "
                                  f"({time.perf_counter() - t0:.0f} s)")
            if ev.status == "feasible":
                top.add(self._score(ev))

    def probe_closed(self, ev: Evaluation) -> None:
        """Closed loop: one probe at the workload's concurrency; feasible when it meets the SLOs."""
        ev.cost = self._cost(ev.fm)
        p = self._closed_probe(ev)
        ev.probes.append(p)
        ev.at_rate, ev.rate_rps = p, p["rate_rps"]
        ev.output_tps = p["output_tokens_per_s"] or 0.0
        if p["ok"]:
            ev.status = "feasible"
            return
        ev.status, ev.reason_kind = "infeasible", "SLO missed at the concurrency"
        ev.reason = (f"at concurrency {p['concurrency']} over {ev.cand.replicas} replica(s): {p['completed']} of "
                     f"{p['requests']} requests completed, p90 TTFT {_s(p['ttft_p90_s'])}, p99 TBT {_s(p['tbt_p99_s'])}")

    def run(self) -> dict:
        t0 = time.perf_counter()
        enum = enumerate_layouts(self.model, self.hw, self.max_nodes, self.cfg.overrides)
        evs = [Evaluation(c) for c in enum.candidates]
        order = self._screen_all(evs, t0)
        (self._search_rates if self.closed is None else self._search_closed)(order, t0)
        search_s = time.perf_counter() - t0
        ranked = sorted((e for e in evs if e.status in ("feasible", "partial")),
                        key=lambda e: (e.status != "feasible", -self._score(e)))
        result = self._summary(enum, evs, ranked, search_s)
        self._ranked = ranked
        if self.cfg.disagg:  # after the aggregated search: its passing layouts seed the bounds and the front
            from simfoe.planner.disagg import DisaggSearch

            result["disagg"] = DisaggSearch(self).run(enum.candidates, result["layouts"], evs)
        if ranked:
            t1 = time.perf_counter()
            result["analysis"] = {e.cand.label: self.analyse(e) for e in ranked[:2]}
            for arch in ("moe", "foe"):  # best of the other architecture: breakdown only
                if ranked[0].cand.arch != arch:
                    other = next((e for e in ranked if e.cand.arch == arch), None)
                    if other is not None and other.cand.label not in result["analysis"]:
                        result["analysis"][other.cand.label] = {"breakdown": self.breakdown(other)}
            w = ranked[0]  # a closed-loop probe already simulates every replica
            if self.cfg.verify_replicas and w.cand.replicas > 1 and w.status == "feasible" and self.closed is None:
                p = self._probe(w, w.rate_rps * w.cand.replicas, replicas=w.cand.replicas)
                result["recommended"]["replica_check"] = p
            result["search"]["analysis_wall_s"] = time.perf_counter() - t1
        result["launch"] = None
        if self.engine is not None:
            from simfoe.planner.launch import add_launches

            add_launches(result, self.model, self.hw, self.engine, self.cfg.max_batch)
        result["search"]["total_wall_s"] = time.perf_counter() - t0
        return result

    def _workload(self) -> dict:
        """The summary's ``workload`` block: the trace's or closed loop's settings and token statistics."""
        st, cfg = self.stats, self.cfg
        tokens = {"mean_prompt_tokens": st.mean_prompt, "mean_output_tokens": st.mean_output,
                  "p90_prompt_tokens": st.p90_prompt, "max_request_tokens": st.max_tokens}
        if self.closed is not None:
            return {**self.closed.to_dict(), "source": self.closed.describe(), **tokens, "seed": cfg.seed,
                    "router": "least-outstanding"}
        return {"kind": "open-loop", **tokens, "requests_per_probe": cfg.requests, "seed": cfg.seed,
                "bisect_steps": cfg.bisect_steps}

    def _summary(self, enum, evs: list[Evaluation], ranked: list[Evaluation], search_s: float) -> dict:
        """The result dict without the analysis (see docs/planner.md)."""
        rank_by, rank_key, rank_unit = RANK_METRICS[(self.closed is not None, self.rank_by == "dollar")]
        result = {
            "model": self.model_name, "hardware": list(self.hw), "max_nodes": self.max_nodes,
            "trace": None if self.closed is not None else self.cfg.trace, "routing": self.cfg.routing,
            "overrides": list(self.cfg.overrides),
            "slo": {"ttft_p90_s": self.cfg.slo_ttft_p90, "tbt_p99_s": self.cfg.slo_tbt_p99},
            "rank_by": rank_by, "rank_key": rank_key, "rank_unit": rank_unit, "workload": self._workload(),
            "recommended": ranked[0].to_dict() if ranked else None,
            "runner_up": ranked[1].to_dict() if len(ranked) > 1 else None,
            "layouts": [e.to_dict() for e in ranked],
            "rejected": [e.to_dict() for e in evs if e.status in ("pruned", "infeasible")],
            "skipped": enum.skipped,
        }
        by_reason: dict[str, int] = {}  # rejected without a rate search
        for e in evs:
            if e.status in ("pruned", "infeasible") and not e.probes:
                by_reason[e.reason_kind] = by_reason.get(e.reason_kind, 0) + 1
        result["search"] = {
            "candidates": len(evs), "simulated": sum(1 for e in evs if e.probes),
            "infeasible_after_simulation": sum(1 for e in evs if e.probes and e.status == "infeasible"),
            "pruned": sum(by_reason.values()), "pruned_by_reason": by_reason,
            "skipped_placements": len(enum.skipped), "probes": self.probes,
            "forward_evaluations": self.forward_evals + sum(e.cost.misses for e in evs if e.cost is not None),
            "wall_s": search_s,
        }
        return result

    # ---- explanation ----------------------------------------------------------------------------
    def breakdown(self, ev: Evaluation) -> dict:
        """Busy GPU seconds per request by category (compute, all-to-all, all-reduce) at the operating
        point, plus the mean queueing delay (s): prefill iterations x P / (budget x DP attention ranks) +
        decode steps x O / batch."""
        st, fm, at = self.stats, ev.fm, ev.at_rate or {}
        ranks = fm.dp_ranks
        c = ev.token_budget * ranks  # one chunk of the per-rank budget on every DP attention rank
        pf = fm.iteration(c, c * st.pairs_per_token, 0, 0, _chunk_ranks(ranks)).breakdown_s
        # Little's law: sequences decoding at once = rate x (mean time from first token to last)
        dec_time = max((at.get("e2e_mean_s") or 0) - (at.get("ttft_mean_s") or 0), 0.0)
        n = int(min(self.cfg.max_batch * ranks, max(1, round((ev.rate_rps or 0) * dec_time))))
        dc = fm.iteration(0, 0, n, int(n * (st.mean_prompt + st.mean_output / 2))).breakdown_s
        self.forward_evals += 2

        def group(bd, scale):
            return {
                "compute_s": scale * sum(bd.get(k, 0.0) for k in COMPUTE_CATS),
                "all_to_all_s": scale * (bd.get("dispatch", 0.0) + bd.get("combine", 0.0)),
                "all_reduce_s": scale * bd.get("all_reduce", 0.0),
            }

        a = group(pf, st.mean_prompt / c)
        b = group(dc, st.mean_output / n)
        out = {k: a[k] + b[k] for k in a}
        out["queueing_s"] = at.get("queue_mean_s") or 0.0
        out["prefill_busy_s"] = a
        out["decode_busy_s"] = b
        out["decode_batch"] = n
        out["token_budget"] = ev.token_budget
        out["dp_ranks"] = ranks
        return out

    def sensitivity(self, ev: Evaluation) -> dict:
        """SLO metrics at the layout's max rate (closed loop: its concurrency) under changed conditions
        (one probe each)."""
        cfg = self.cfg
        out = {}
        out["2x load"] = self._at_load(ev, 2)
        try:
            fm2 = self._forward(ev.cand, routing=cfg.skew_routing)
            ev2 = Evaluation(ev.cand, token_budget=ev.token_budget, kv_capacity_tokens=ev.kv_capacity_tokens)
            out[f"skewed routing ({cfg.skew_routing})"] = self._at_load(ev, 1, ev2, self._cost(fm2))
        except SpecError as e:
            out[f"skewed routing ({cfg.skew_routing})"] = {"error": str(e)}
        key = "half network bandwidth"
        if ev.cand.nodes == 1:
            out[key] = {**(ev.at_rate or {}), "note": "one node per instance: no inter-node traffic, unchanged"}
        else:
            bw = self.hw[ev.cand.hardware].network.nic_bandwidth / 2
            fm3 = self._forward(ev.cand, extra=(f"hardware.network.nic_bandwidth={bw!r}",))
            ev3 = Evaluation(ev.cand, token_budget=ev.token_budget, kv_capacity_tokens=fm3.kv_capacity_tokens())
            out[key] = self._at_load(ev, 1, ev3, self._cost(fm3))
        for v in out.values():
            if "ttft_p90_s" in v:
                v["meets_slo"] = bool(v.get("ok", False))
        return out

    def _at_load(self, ev: Evaluation, times: int, other: Evaluation | None = None, cost=None) -> dict:
        """One probe of ``other`` (default ``ev``) at ``times`` ``ev``'s operating load: its max rate
        (open loop) or the workload's concurrency (closed loop)."""
        if self.closed is not None:
            return self._closed_probe(other or ev, times, cost)
        return self._probe(other or ev, times * ev.rate_rps, cost=cost)

    def analyse(self, ev: Evaluation) -> dict:
        out = {"breakdown": self.breakdown(ev)}
        if self.cfg.sensitivity and ev.rate_rps:
            out["sensitivity"] = self.sensitivity(ev)
        return out


def _launch_engine(name: str | None):
    """The engine profile ``name`` (None: no launch command); SpecError ``engine`` without a launch template."""
    if name is None:
        return None
    from simfoe.specs.engine import load_engine

    prof = load_engine(name)
    if prof.launch is None:
        raise SpecError("engine", name, "an engine profile with a launch template (vllm, sglang, trtllm)")
    return prof


def recommend(model: str, hardware: str | list[str], max_nodes: int = 1, trace: str | ClosedLoop = "longbench",
              slo_ttft_p90: float | None = None, slo_tbt_p99: float | None = None, **kw) -> dict:
    """Search layouts and return the JSON summary (see docs/planner.md). ``hardware``: one name,
    a comma-separated string or a list; ``trace``: a trace name or path (rate search), or a
    :class:`simfoe.workloads.closed_loop.ClosedLoop` (one probe per layout at its concurrency;
    ``requests`` and ``bisect_steps`` then do not apply); other keywords are :class:`PlanConfig` fields."""
    hws = [h.strip() for h in hardware.split(",")] if isinstance(hardware, str) else list(hardware)
    cfg = PlanConfig(slo_ttft_p90=slo_ttft_p90, slo_tbt_p99=slo_tbt_p99, trace=trace, **kw)
    cfg.overrides = tuple(cfg.overrides)
    result = Planner(model, hws, int(max_nodes), cfg).run()
    from simfoe.planner.report import caveats, explain

    result["why"] = explain(result)
    result["caveats"] = caveats(result)
    return result
