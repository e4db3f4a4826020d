"""Disaggregated deployments in the planner (issue 24.4): a prefill pool of x workers and a decode pool
of y workers (xPyD), each worker one of the planner's layouts (:func:`simfoe.planner.layouts.enumerate_layouts`),
the decode pool with or without multi-token prediction where the model has an MTP module.

Closed loop only (N clients): every deployment is judged at the workload's concurrency, as the aggregated
closed-loop search judges its layouts, so the two modes compare on one footing. Steps:

Both pools run one model, so one architecture: an MoE model's KV cache cannot be decoded by an FoE model (a
different, retrained model), nor the other way round; MoE/MoE and FoE/FoE deployments are compared.

1. **Pool screening**, once per layout and role. Prefill: weights fit, one DP attention rank's KV holds the
   longest prompt, the solo prefill of the p90 prompt is within the p90 TTFT SLO; its bound is the requests/s
   one worker prefills at full chunks of ``TOKEN_BUDGETS[0]`` tokens per rank (no decodes share its
   iterations, so the TBT SLO does not cap its chunk). Decode: weights (and the MTP module) fit, a rank's KV
   holds the longest request, one decode step of one sequence is within the p99 TBT SLO; its bound is the
   requests/s one worker decodes at the largest batch its KV, ``max_batch`` per rank and its share of the N
   clients allow: ``n e / (t_dec(n) (O - 1))`` with ``e`` the expected tokens a sequence emits per step
   (1 without MTP; 1 + a1 + a1 a2 + ... with it, the draft module's cost left out: an upper bound).
2. **Deployment bound**: a staircase over the decode batch n per worker (:meth:`DisaggSearch.staircase`): in
   the range [n_i, n_i+1] at most ``min(y n_i+1 e / ((O - 1) t(n_i)), (N - y n_i) / (P c_pf), x R_pf)``
   requests/s (decode stage; Little's law on the clients not decoding, each spending at least the full-chunk
   prefill time; the prefill pool) and at most ``e / t(n_i)`` tokens/s per user. Ranges whose rate cannot
   carry the clients not decoding through a mean TTFT within twice the p90 TTFT SLO are dropped (this takes a
   passing run's mean TTFT to be at most twice its p90: :data:`TTFT_MEAN_OVER_P90`); a deployment with none left
   is pruned.
3. **Branch and bound**: deployments in decreasing order of their bound; one is pruned when its bound is not
   above the runner-up so far (the two best of either mode) *and* every step of its staircase has an achieved
   deployment at least as good in tokens/s per GPU and per user (then it can neither rank in the top two nor
   reach the Pareto front). The aggregated layouts the planner simulated seed both; the best-bound deployment of
   each architecture is always simulated, as the aggregated search does, so that the report compares them. The others get one
   probe (:func:`simfoe.serving.disagg.simulate_disagg`, layerwise KV transfer on the fabric, the first
   token from the prefill worker, least-outstanding routers); a probe passes as the aggregated ones do.
4. **Ranking and front**: every passing deployment of both modes by output tokens/s per GPU (per dollar
   with prices), and the Pareto front of tokens/s per GPU against tokens/s per user (1 / mean TPOT).

Both pools are on one GPU type (one fabric). Units: seconds, tokens, requests/s, tokens/s.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

from simfoe.errors import SpecError
from simfoe.planner.layouts import Candidate
from simfoe.planner.search import TOKEN_BUDGETS, TopTwo, _chunk_ranks, _s, per_gpu_or_dollar

#: How the pools are joined in a probe (simfoe.serving.disagg): KV sent layer by layer, first token from prefill.
KV_TRANSFER, FIRST_TOKEN = "layerwise", "prefill"
#: A passing probe's mean TTFT is taken to be at most this many p90 TTFT SLOs when the staircase drops the
#: decode batches whose rate cannot carry the clients not decoding (an assumption, checked, not a theorem: a
#: closed loop's first wave of N simultaneous requests can lift the mean above the p90; the highest mean/p90
#: among the passing probes of benchmarks/bench_recommend.py --disagg was 1.35, qwen3-235b-a22b, 2026-12-07).
TTFT_MEAN_OVER_P90 = 2.0
#: Router of both pools: each request to the worker with the fewest in flight (as the closed-loop planner).
POOL_ROUTER = "least-outstanding"


@dataclass
class PoolCandidate:
    """One layout screened for one role (``prefill`` or ``decode``, the latter with ``mtp`` drafts per step).
    ``rps``: requests/s one worker serves in the role (a bound); ``t_min``: prefill: seconds of a mean prompt
    at full chunks; decode: one step of one sequence. ``tokens_per_step``: expected tokens a sequence emits
    per decode step."""

    cand: Candidate
    role: str
    mtp: int = 0
    status: str = "pending"  # screened | rejected
    reason: str = ""
    reason_kind: str = ""
    kv_capacity_tokens: int | None = None
    token_budget: int | None = None
    rps: float | None = None
    t_min: float | None = None
    tokens_per_step: float = 1.0
    speed: tuple = ()  # seconds another layout of the role must match to dominate it (:func:`drop_dominated`)
    fm: object = field(default=None, repr=False)
    cost: object = field(default=None, repr=False)

    def reject(self, kind: str, reason: str) -> None:
        self.status, self.reason_kind, self.reason = "rejected", kind, reason

    def to_dict(self, workers: int | None = None) -> dict:
        c = dataclasses.replace(self.cand, replicas=workers or 1)
        return {"role": self.role, "label": c.label, "arch": c.arch, "nodes": c.nodes, "hardware": c.hardware,
                "settings": dict(c.settings), "overrides": list(c.overrides), "gpus_per_worker": c.gpus,
                "workers": workers, "mtp": self.mtp, "status": self.status, "reason": self.reason,
                "token_budget": self.token_budget, "kv_capacity_tokens": self.kv_capacity_tokens,
                "bound_rps_per_worker": self.rps, "tokens_per_step": self.tokens_per_step}


@dataclass
class Deployment:
    """x prefill workers of ``pre`` and y decode workers of ``dec``; bounds and the probe's outcome."""

    pre: PoolCandidate
    x: int
    dec: PoolCandidate
    y: int
    bound_rps: float = 0.0
    bound_user_tps: float = 0.0
    stairs: list = field(default_factory=list, repr=False)  # (requests/s, tokens/s per user) bounds (staircase)
    price: float | None = None
    status: str = "pending"  # feasible | infeasible | pruned
    reason: str = ""
    reason_kind: str = ""
    probe: dict | None = None

    @property
    def gpus(self) -> int:
        return self.x * self.pre.cand.gpus + self.y * self.dec.cand.gpus

    @property
    def nodes(self) -> int:
        return self.x * self.pre.cand.nodes + self.y * self.dec.cand.nodes

    @property
    def label(self) -> str:
        mtp = f", MTP {self.dec.mtp}" if self.dec.mtp else ""
        p, d = (dataclasses.replace(c.cand, replicas=w).label for c, w in ((self.pre, self.x), (self.dec, self.y)))
        return f"{self.x}P{self.y}D | prefill {p} | decode {d}{mtp}"

    @property
    def output_tps(self) -> float | None:
        return None if self.probe is None else self.probe.get("output_tokens_per_s")

    @property
    def user_tps(self) -> float | None:
        """Output tokens/s one client sees while decoding: 1 / mean TPOT."""
        t = None if self.probe is None else self.probe.get("tpot_mean_s")
        return 1.0 / t if t else None

    def to_dict(self, mean_output: float) -> dict:
        tps, g = self.output_tps, self.gpus
        return {"mode": "disagg", "label": self.label, "arch": self.pre.cand.arch, "hardware": self.pre.cand.hardware,
                "xpyd": f"{self.x}:{self.y}", "nodes": self.nodes, "total_gpus": g, "mtp": self.dec.mtp,
                "prefill": self.pre.to_dict(self.x), "decode": self.dec.to_dict(self.y),
                "status": self.status, "reason": self.reason,
                "bound_output_tokens_per_s_per_gpu": self.bound_rps * mean_output / g,
                "bound_tokens_per_s_per_user": self.bound_user_tps,
                "output_tokens_per_s": tps, "output_tokens_per_s_per_gpu": None if tps is None else tps / g,
                "output_tokens_per_dollar": per_gpu_or_dollar(tps, g, self.price, True),
                "tokens_per_s_per_user": self.user_tps, "price_per_gpu_hour": self.price,
                "at_max_rate": self.probe, "probes": [self.probe] if self.probe else [],
                "launch": None}  # launch commands from engine profiles: not available yet


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (x, y), both larger-is-better, that no other point dominates (at least as
    good in both and better in one); equal points are all kept. Ordered by decreasing x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y, last = [], -math.inf, None
    for i in order:
        x, y = points[i]
        if y > best_y or (last is not None and points[i] == last):
            front.append(i)
            best_y, last = max(best_y, y), points[i]
    return front


def expected_tokens_per_step(k: int, acceptance=None) -> float:
    """Expected tokens a decoding sequence emits per step with ``k`` drafts: 1 + a1 + a1 a2 + ..."""
    from simfoe.serving.mtp import resolve_acceptance

    e, run = 1.0, 1.0
    for a in resolve_acceptance(k, acceptance):
        run *= a
        e += run
    return e


def _dominates(q: PoolCandidate, p: PoolCandidate, q_first: bool) -> bool:
    """Whether screened ``q`` dominates ``p`` in their role: same GPU type, nodes, drafts and architecture (an FoE
    model is another model: it never stands in for an MoE layout), no more DP attention
    ranks, at least as many KV tokens per rank, no slower on any of ``speed``; strictly better somewhere, or
    equal and enumerated first."""
    c, d = q.cand, p.cand
    if (c.hardware, c.nodes, q.mtp, c.arch) != (d.hardware, d.nodes, p.mtp, d.arch) or q.fm.dp_ranks > p.fm.dp_ranks:
        return False
    kq, kp = q.kv_capacity_tokens // q.fm.dp_ranks, p.kv_capacity_tokens // p.fm.dp_ranks
    if kq < kp or any(a > b for a, b in zip(q.speed, p.speed)):
        return False
    return q_first or kq > kp or q.fm.dp_ranks < p.fm.dp_ranks or any(a < b for a, b in zip(q.speed, p.speed))


def drop_dominated(pcs: list[PoolCandidate]) -> list[PoolCandidate]:
    """Reject each screened layout that another of its role dominates (:func:`_dominates`): deployments with it
    would differ only by a pool that is no faster and holds no more. A heuristic on the simulator, not a bound
    (the pools' routing and KV transfers are not compared)."""
    ok = [p for p in pcs if p.status == "screened"]
    for i, p in enumerate(ok):
        q = next((q for j, q in enumerate(ok) if j != i and q.status == "screened" and _dominates(q, p, j < i)), None)
        if q is not None:
            p.reject(f"dominated in the {p.role} role", f"{q.cand.label} is no slower and holds at least as much KV "
                     "per rank")
    return pcs


class DisaggSearch:
    """The disaggregated part of a closed-loop :class:`simfoe.planner.search.Planner` run (module docstring).
    ``planner``: the planner after its aggregated search (its config, workload statistics, forward models)."""

    def __init__(self, planner):
        self.pl = planner
        self.cfg, self.st, self.closed = planner.cfg, planner.stats, planner.closed
        self.mtps = (0, 1) if planner.model.mtp_layers else (0,)
        t = self.closed.table(self.cfg.seed)
        self.max_prompt = int(max(t.prompt_tokens[self.closed.warmup:]))
        self._fms: dict = {}
        self._t_dec: dict = {}
        self._drafts: dict = {}

    # ---- pools ------------------------------------------------------------------------------------
    def _fm(self, cand: Candidate):
        """The forward model of ``cand`` (one per layout, shared by its roles); a SpecError is returned."""
        k = cand.key()
        if k not in self._fms:
            try:
                self._fms[k] = self.pl._forward(cand)
            except SpecError as e:
                self._fms[k] = e
        return self._fms[k]

    def _common(self, pc: PoolCandidate, tokens: int) -> bool:
        """Placement, weights and KV checks of either role: one DP attention rank's KV holds ``tokens``."""
        from simfoe.serving.kv_cache import KVBlocks

        fm = self._fm(pc.cand)
        if isinstance(fm, SpecError):
            pc.reject("placement", str(fm))
            return False
        pc.fm = fm
        mtp = pc.mtp > 0
        if not fm.fits() or (mtp and fm.weight_bytes_per_gpu() + fm.mtp_module().weight_bytes_per_gpu()
                              >= fm.usable_hbm_bytes()):
            pc.reject("memory: weights do not fit", f"weights{' with the MTP module' if mtp else ''} need more "
                      f"than 90% of {fm.hw.gpu.hbm_bytes / 1e9:.0f} GB HBM per GPU")
            return False
        pc.kv_capacity_tokens = kv = fm.kv_capacity_tokens(mtp=mtp)
        try:
            kvb = KVBlocks(kv, ranks=fm.dp_ranks)
            fits, per_rank = kvb.fits(tokens - 1), kvb.capacity_tokens
        except SpecError:
            fits, per_rank = False, 0
        if not fits:
            pc.reject("memory: KV cache too small", f"KV cache holds {per_rank:,} tokens per DP attention rank, "
                      f"less than {tokens:,}")
        return fits

    def screen_prefill(self, pc: PoolCandidate) -> None:
        """Prefill role: the checks and bound of the module docstring's step 1."""
        from simfoe.forward.work import Work

        cfg, st, pl = self.cfg, self.st, self.pl
        if not self._common(pc, self.max_prompt):
            return
        fm = pc.fm
        pl.forward_evals += 1
        t = fm.simulate(Work.from_phase("prefill", 1, st.p90_prompt)).latency_s
        if cfg.slo_ttft_p90 is not None:
            if t > cfg.slo_ttft_p90:
                pc.reject("latency bound: TTFT", f"a {st.p90_prompt}-token prompt (p90) alone takes {t:.3f} s "
                          f"to prefill, above the p90 TTFT SLO {cfg.slo_ttft_p90:g} s")
                return
        c, ranks = TOKEN_BUDGETS[0], fm.dp_ranks
        t_chunk = pl._it(fm, c * ranks, c * ranks * st.pairs_per_token, 0, 0, _chunk_ranks(ranks))
        pc.token_budget, pc.t_min = c, st.mean_prompt * t_chunk / (c * ranks)
        pc.rps, pc.status, pc.speed = 1.0 / pc.t_min, "screened", (pc.t_min, t)

    def screen_decode(self, pc: PoolCandidate) -> None:
        """Decode role: the checks of the module docstring's step 1 (its bound depends on y: :meth:`decode_rps`)."""
        cfg, st = self.cfg, self.st
        if not self._common(pc, st.max_tokens):
            return
        t1 = self.pl._it(pc.fm, 0, 0, 1, st.mean_prompt + 1)
        if cfg.slo_tbt_p99 is not None and t1 > cfg.slo_tbt_p99:
            pc.reject("latency bound: TBT", f"one decode step of one sequence takes {t1 * 1e3:.1f} ms, above "
                      "the p99 TBT SLO")
            return
        pc.t_min, pc.token_budget = t1, TOKEN_BUDGETS[0]
        pc.tokens_per_step = expected_tokens_per_step(pc.mtp) if pc.mtp else 1.0
        pc.rps, pc.status = self.decode_rps(pc, 1), "screened"
        N = self.closed.concurrency
        pc.speed = tuple(self._step(pc, 2 ** i) for i in range(N.bit_length()) if 2 ** i <= N)

    def _step(self, pc: PoolCandidate, n: int) -> float:
        """Seconds of one decode step of ``n`` sequences at the mean context (forward model, cached)."""
        st = self.st
        key = (pc.cand.key(), pc.mtp, n)
        if key not in self._t_dec:
            self._t_dec[key] = self.pl._it(pc.fm, 0, 0, n, n * (st.mean_prompt + st.mean_output / 2))
        return self._t_dec[key]

    def batches(self, pc: PoolCandidate, y: int) -> list[int]:
        """Decode batches per worker to bound at: powers of two up to the largest batch one of ``y`` workers
        can run (its KV, ``max_batch`` per rank, its share of the clients), and that batch."""
        st = self.st
        cap = min(self.cfg.max_batch * pc.fm.dp_ranks, pc.kv_capacity_tokens // max(1, int(st.mean_prompt + st.mean_output)),
                  -(-self.closed.concurrency // y))
        cap = max(1, int(cap))
        return sorted({*(2 ** i for i in range(cap.bit_length()) if 2 ** i < cap), cap})

    def decode_rps(self, pc: PoolCandidate, y: int) -> float:
        """Requests/s one of ``y`` decode workers of ``pc`` decodes at its largest batch (module docstring)."""
        n = self.batches(pc, y)[-1]
        return n * pc.tokens_per_step / (self._step(pc, n) * max(self.st.mean_output - 1, 1e-9))

    def staircase(self, p: PoolCandidate, x: int, d: PoolCandidate, y: int) -> list[tuple[float, float]]:
        """(requests/s, tokens/s per user) bounds of xPyD, one pair per range of the decode batch n per worker
        [n_i, n_i+1]: the decode stage runs at most y n_i+1 e / ((O - 1) t(n_i)) requests/s, the clients not
        decoding (N - y n_i) each spend at least the prefill time, x prefill workers prefill at most x R_pf,
        and a client sees at most e / t(n_i) tokens/s (module docstring, step 2). A range is left out when
        its rate cannot carry the clients not decoding through a mean TTFT within :data:`TTFT_MEAN_OVER_P90` p90
        TTFT SLOs (X < (N - y n_i+1) / (2 SLO)): there the deployment is taken not to pass; none left: not at all."""
        N, o1, e = self.closed.concurrency, max(self.st.mean_output - 1, 1e-9), d.tokens_per_step
        slo = None if self.cfg.slo_ttft_p90 is None else TTFT_MEAN_OVER_P90 * self.cfg.slo_ttft_p90
        ns = self.batches(d, y)
        out = []
        for i, n in enumerate(ns):
            hi = ns[i + 1] if i + 1 < len(ns) else n
            t, lo = self._step(d, n), 0 if i == 0 else n  # the first range starts at no decodes
            dec = y * hi * e / (o1 * t)
            rps = min(dec, (N - y * lo) / p.t_min if y * lo < N else dec, x * p.rps)
            if slo is None or rps >= (N - y * hi) / slo:
                out.append((rps, e / t))
        return out

    def pools(self, cands: list[Candidate]) -> tuple[list[PoolCandidate], list[PoolCandidate]]:
        """Every layout screened as a prefill worker and as a decode worker (with and without MTP)."""
        pre, dec = [], []
        for c in cands:
            c = dataclasses.replace(c, replicas=1)
            pre.append(PoolCandidate(c, "prefill"))
            self.screen_prefill(pre[-1])
            for k in self.mtps:
                dec.append(PoolCandidate(c, "decode", k))
                self.screen_decode(dec[-1])
        return drop_dominated(pre), drop_dominated(dec)

    # ---- deployments ------------------------------------------------------------------------------
    def deployments(self, pre: list[PoolCandidate], dec: list[PoolCandidate]) -> list[Deployment]:
        """Every xPyD pairing of screened pools on one GPU type within ``max_nodes`` nodes, with its bounds."""
        n_max = self.pl.max_nodes
        out = []
        for p in (p for p in pre if p.status == "screened"):
            for d in (d for d in dec if d.status == "screened" and (d.cand.hardware, d.cand.arch) == (p.cand.hardware,
                                                                                               p.cand.arch)):
                for x in range(1, (n_max - d.cand.nodes) // p.cand.nodes + 1):
                    for y in range(1, (n_max - x * p.cand.nodes) // d.cand.nodes + 1):
                        dep = Deployment(p, x, d, y, price=self.pl.prices.get(p.cand.hardware))
                        dep.stairs = self.staircase(p, x, d, y)
                        dep.bound_rps = max((r for r, _ in dep.stairs), default=0.0)
                        dep.bound_user_tps = max((u for _, u in dep.stairs), default=0.0)
                        out.append(dep)
        return out

    def score(self, tps: float | None, gpus: int, price: float | None) -> float:
        """Output tokens/s per GPU (per dollar when the planner ranks so) of ``tps``; -1 when unknown."""
        v = per_gpu_or_dollar(tps, gpus, price, self.pl.rank_by == "dollar")
        return -1.0 if v is None else v

    def search(self, deps: list[Deployment], seeds: list[tuple[float, float]], t0: float) -> None:
        """Branch and bound over ``deps`` (module docstring, step 3); ``seeds``: (score, tokens/s per user)
        of the aggregated layouts that passed."""
        done = list(seeds)
        top = TopTwo.of(s for s, _ in seeds)
        order = sorted(deps, key=lambda d: -self.score(d.bound_rps * self.st.mean_output, d.gpus, d.price))
        # the best-bound deployment of each architecture is simulated whatever its bound (the report compares them)
        baselines = {id(next(d for d in order if d.stairs and d.pre.cand.arch == a))
                     for a in {d.pre.cand.arch for d in order if d.stairs}}
        for dep in order:
            b = self.score(dep.bound_rps * self.st.mean_output, dep.gpus, dep.price)
            second = top.runner_up
            if not dep.stairs:
                dep.status, dep.reason_kind = "pruned", "latency bound: TTFT at the concurrency"
                dep.reason = ("at no decode batch can its bound rate carry the clients not decoding through a mean "
                              f"TTFT within {TTFT_MEAN_OVER_P90:g} x the p90 TTFT SLO ({self.cfg.slo_ttft_p90:g} s)")
                continue
            if id(dep) not in baselines and second is not None and b <= second and self._dominated(dep, done):
                dep.status, dep.reason_kind = "pruned", "bounds dominated"
                dep.reason = (f"its bound ({self.pl._unit(b)}) is not above the runner-up ({self.pl._unit(second)}) and "
                              "achieved deployments are at least as good per GPU and per user at every decode batch")
                continue
            self.probe(dep)
            if self.cfg.progress:
                self.cfg.progress(f"{dep.label}: {dep.status} {self.score(dep.output_tps, dep.gpus, dep.price):.3g} "
                                  f"({time.perf_counter() - t0:.0f} s)")
            if dep.status == "feasible":
                s = self.score(dep.output_tps, dep.gpus, dep.price)
                done.append((s, dep.user_tps or 0.0))
                top.add(s)

    def _dominated(self, dep: Deployment, done: list[tuple[float, float]]) -> bool:
        """Whether every (score, tokens/s per user) bound of ``dep``'s staircase has an achieved point in
        ``done`` at least as good in both: then ``dep`` cannot reach the Pareto front."""
        mo = self.st.mean_output
        return all(any(s >= self.score(r * mo, dep.gpus, dep.price) and u >= ub for s, u in done) for r, ub in dep.stairs)

    def _pool(self, pc: PoolCandidate, workers: int):
        """The serving :class:`simfoe.serving.disagg.Pool` of ``workers`` workers of ``pc``."""
        from simfoe.serving.disagg import Pool
        from simfoe.serving.engine import EngineConfig

        if pc.cost is None:
            pc.cost = self.pl._cost(pc.fm)
        eng = EngineConfig(router=POOL_ROUTER, max_batch=self.cfg.max_batch, token_budget=pc.token_budget, mtp=pc.mtp)
        return Pool(pc.cost, pc.kv_capacity_tokens, workers, eng, pc.cand.gpus, pc.fm.kv_bytes_per_token_per_gpu(),
                    self.pl.model.n_layers, self._draft(pc.fm) if pc.mtp else None)

    def _draft(self, fm):
        """The interpolated step model of ``fm``'s MTP module, one per forward model (shared by its probes)."""
        k = id(fm)
        if k not in self._drafts:
            self._drafts[k] = (fm, self.pl._cost(fm.mtp_module()))  # fm kept: its id stays unique
        return self._drafts[k][1]

    def probe(self, dep: Deployment) -> None:
        """One closed-loop run of the deployment; feasible when the planner's probe rule passes."""
        from simfoe.serving.disagg import DisaggConfig, simulate_disagg

        t0 = time.perf_counter()
        hw = self.pl.hw[dep.pre.cand.hardware]
        res = simulate_disagg(self.closed, self._pool(dep.pre, dep.x), self._pool(dep.dec, dep.y),
                              DisaggConfig(KV_TRANSFER, FIRST_TOKEN, hw), seed=self.cfg.seed)
        s = res.summary
        rps = s["throughput"]["requests_per_s"]
        p = self.pl._judge(s, t0, {"concurrency": self.closed.concurrency, "xpyd": f"{dep.x}:{dep.y}", "rate_rps": rps})
        p["kv_exposed_mean_s"] = s["disagg"]["transfer"]["exposed_s"].get("mean")
        p["mtp_tokens_per_step"] = (s.get("mtp") or {}).get("tokens_per_step")  # None without MTP
        dep.probe = p
        if p["ok"]:
            dep.status = "feasible"
            return
        dep.status, dep.reason_kind = "infeasible", "SLO missed at the concurrency"
        dep.reason = (f"at concurrency {p['concurrency']}: {p['completed']} of {p['requests']} requests completed, "
                      f"p90 TTFT {_s(p['ttft_p90_s'])}, p99 TBT {_s(p['tbt_p99_s'])}")

    # ---- the whole search and its summary ----------------------------------------------------------
    def run(self, cands: list[Candidate], aggregated: list[dict], evs: list = ()) -> dict:
        """Screen ``cands`` in both roles, search the deployments and return the summary's ``disagg`` block;
        ``aggregated``: the planner's feasible layouts (dicts), ranked and put on the front with them; ``evs``: its
        Evaluations (with an MTP module, the screened ones are probed again with MTP: :meth:`aggregated_mtp`)."""
        t0 = time.perf_counter()
        probes0 = self.pl.probes
        pre, dec = self.pools(cands)
        deps = self.deployments(pre, dec)
        entries = [_aggregated_entry(x) for x in aggregated if x["status"] == "feasible"]
        mtp = self.aggregated_mtp(evs, entries)
        entries += [x["entry"] for x in mtp if x["status"] == "feasible"]
        self.search(deps, [(self._entry_score(e), e["tokens_per_s_per_user"] or 0.0) for e in entries], t0)
        out = self.summary(pre, dec, deps, entries, self.pl.probes - probes0, time.perf_counter() - t0)
        out["aggregated_mtp"] = [{k: v for k, v in x.items() if k != "entry"} for x in mtp]
        return out

    def aggregated_mtp(self, evs: list, entries: list[dict]) -> list[dict]:
        """The aggregated layouts the planner screened, probed once more with MTP (1 draft per step) where the model
        has an MTP module, in decreasing order of their bound x e (MTP speeds decodes up at most e times); one whose
        scaled bound is not above the runner-up so far is pruned (tokens/s per GPU only). Records of the probed."""
        if 1 not in self.mtps:
            return []
        from simfoe.serving.api import simulate

        e, pl, out = expected_tokens_per_step(1), self.pl, []
        top = TopTwo.of(self._entry_score(x) for x in entries)
        for ev in sorted((v for v in evs if v.bound_rps is not None), key=lambda v: -pl._score(v, bound=True)):
            if top.runner_up is not None and pl._score(ev, bound=True) * e <= top.runner_up:
                continue
            t0 = time.perf_counter()
            res = simulate(self.closed, ev.cost or pl._cost(ev.fm), ev.fm.kv_capacity_tokens(mtp=True),
                           replicas=ev.cand.replicas, router=POOL_ROUTER, max_batch=self.cfg.max_batch,
                           token_budget=ev.token_budget, seed=self.cfg.seed, mtp=1, draft_model=self._draft(ev.fm))
            p = pl._judge(res.summary, t0, {"concurrency": self.closed.concurrency, "replicas": ev.cand.replicas})
            p["mtp_tokens_per_step"] = (res.summary.get("mtp") or {}).get("tokens_per_step")
            t, tps, g = p["tpot_mean_s"], p["output_tokens_per_s"], ev.cand.total_gpus
            entry = _brief({"mode": "aggregated", "label": f"{ev.cand.label}, MTP 1", "arch": ev.cand.arch,
                            "total_gpus": g, "output_tokens_per_s": tps, "price_per_gpu_hour": ev.price,
                            "output_tokens_per_s_per_gpu": None if tps is None else tps / g,
                            "output_tokens_per_dollar": per_gpu_or_dollar(tps, g, ev.price, True),
                            "tokens_per_s_per_user": 1.0 / t if t else None, "at_max_rate": p})
            out.append({"label": entry["label"], "status": "feasible" if p["ok"] else "infeasible", "probe": p,
                        "entry": entry})
            if p["ok"]:
                top.add(self._entry_score(entry))
            if self.cfg.progress:
                self.cfg.progress(f"{entry['label']}: {out[-1]['status']} {self._entry_score(entry):.3g}")
        return out

    def _entry_score(self, e: dict) -> float:
        return self.score(e["output_tokens_per_s"], e["total_gpus"], e.get("price_per_gpu_hour"))

    def summary(self, pre, dec, deps: list[Deployment], entries: list[dict], probes: int, wall_s: float) -> dict:
        """The ``disagg`` block (docs/planner.md): both modes ranked, the Pareto front, the disaggregated
        deployments that passed and that were simulated and missed, the pools, and the search's counts."""
        mo = self.st.mean_output
        feas = sorted((d for d in deps if d.status == "feasible"), key=lambda d: -self.score(d.output_tps, d.gpus, d.price))
        entries = entries + [_brief(d.to_dict(mo)) for d in feas]
        entries.sort(key=lambda e: -self._entry_score(e))
        key = "output_tokens_per_dollar" if self.pl.rank_by == "dollar" else "output_tokens_per_s_per_gpu"
        front = pareto_front([(e[key], e["tokens_per_s_per_user"] or 0.0) for e in entries])
        for i, e in enumerate(entries):
            e["pareto"] = i in set(front)
        by_reason: dict[str, int] = {}
        for d in deps:
            if d.status == "pruned":
                by_reason[d.reason_kind] = by_reason.get(d.reason_kind, 0) + 1
        pools_by: dict[str, int] = {}
        for pc in pre + dec:
            if pc.status == "rejected":
                k = f"{pc.role}: {pc.reason_kind}"
                pools_by[k] = pools_by.get(k, 0) + 1
        return {
            "kv_transfer": KV_TRANSFER, "first_token": FIRST_TOKEN, "router": POOL_ROUTER, "mtp": list(self.mtps),
            "front_key": key,  # the front: this (the ranked figure) against tokens_per_s_per_user
            "recommended": entries[0] if entries else None, "runner_up": entries[1] if len(entries) > 1 else None,
            "best_by_arch": {a: next(e for e in entries if e["arch"] == a)["label"] for a in {e["arch"] for e in entries}},
            "deployments": entries, "pareto": [entries[i]["label"] for i in front],
            "layouts": [d.to_dict(mo) for d in feas],
            "rejected": [d.to_dict(mo) for d in deps if d.status == "infeasible"],
            "pools": {"prefill": [pc.to_dict() for pc in pre], "decode": [pc.to_dict() for pc in dec]},
            "search": {"candidates": len(deps), "simulated": sum(1 for d in deps if d.probe is not None),
                       "infeasible_after_simulation": sum(1 for d in deps if d.status == "infeasible"),
                       "pruned": sum(by_reason.values()), "pruned_by_reason": by_reason, "probes": probes,
                       "pools_screened": len(pre) + len(dec), "pools_rejected_by_reason": pools_by, "wall_s": wall_s},
        }


#: keys of a deployment, aggregated or disaggregated, in the ``disagg.deployments`` ranking
BRIEF_KEYS = ("mode", "label", "arch", "total_gpus", "output_tokens_per_s", "output_tokens_per_s_per_gpu",
              "output_tokens_per_dollar", "tokens_per_s_per_user", "price_per_gpu_hour")


def _brief(x: dict) -> dict:
    at = x.get("at_max_rate") or {}
    return {**{k: x.get(k) for k in BRIEF_KEYS}, "ttft_p90_s": at.get("ttft_p90_s"), "tbt_p99_s": at.get("tbt_p99_s")}


def _aggregated_entry(x: dict) -> dict:
    """A feasible aggregated layout (the planner's dict) as a ``deployments`` entry."""
    t = (x.get("at_max_rate") or {}).get("tpot_mean_s")
    return _brief({**x, "mode": "aggregated", "tokens_per_s_per_user": 1.0 / t if t else None})
