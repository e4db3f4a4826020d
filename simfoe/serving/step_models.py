"""Iteration-time models for the serving engine, and the memo that makes hours of traffic cheap.

The engine describes one iteration (one forward pass of a continuous batch) by a
:class:`simfoe.forward.work.Work`, the forward model's own description of a pass:

* ``prefill_tokens``: new prompt tokens computed this step (sum of chunk sizes);
* ``prefill_pairs``: causal query-key pairs of those chunks,
  sum of ``chunk * (past_context + (chunk + 1) / 2)``;
* ``prefill_seqs``: how many equal chunks the prefill tokens stand for (spread over DP attention ranks);
* ``decode_seqs``: sequences decoding one token each;
* ``decode_kv_tokens``: sum of their context lengths (tokens attended, incl. the new one).

A step model implements :class:`StepModel`; :class:`simfoe.forward.ForwardModel` is the real one.
The analytic ones here serve tests and queueing-theory checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Callable, ClassVar, Protocol

import numpy as np

from simfoe.errors import SpecError
from simfoe.forward.work import Work


class StepModel(Protocol):
    """What the serving engine asks of an iteration-time model (times in seconds).

    ``dp_ranks``: data-parallel attention ranks of one instance (1: none); each has its own queue
    and budgets under ``budget_scope="rank"``, and an iteration's prefill chunks spread over them.
    ``iteration(...)``: one pass, as seconds or an object with ``latency_s`` and ``breakdown_s``
    (a dict of seconds per category); ``prefill_seqs`` is passed only when ``dp_ranks > 1``.
    ``rank_compute_s(...)``: the compute one rank's own sequences cost, or None when the model
    has no per-rank costs (then ranks are priced as evenly loaded).
    """

    dp_ranks: int
    rank_compute_s: Callable[[int, float, int, int], float] | None

    def iteration(self, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int,
                  decode_kv_tokens: int, prefill_seqs: int | None = None): ...


class StepModelBase:
    """Defaults of :class:`StepModel` for a model without DP attention ranks or per-rank costs."""

    dp_ranks: ClassVar[int] = 1
    rank_compute_s: ClassVar[None] = None


PROTOCOL = ("iteration", "dp_ranks", "rank_compute_s")


def check_step_model(model) -> None:
    """SpecError unless ``model`` has every member of :class:`StepModel`."""
    missing = [m for m in PROTOCOL if not hasattr(model, m)]
    if missing:
        raise SpecError("step_model", type(model).__name__,
                        "an object with iteration(), dp_ranks and rank_compute_s (simfoe.serving.step_models."
                        "StepModel; subclass StepModelBase for the defaults); missing: " + ", ".join(missing))


def evaluate(model: StepModel, pf: int, pairs: float, ds: int, kv: int, seqs: int = 0) -> tuple[float, dict | None]:
    """(seconds, breakdown or None) of one ``model.iteration``; ``seqs`` > 0 is passed as ``prefill_seqs``."""
    r = model.iteration(pf, float(pairs), ds, kv, prefill_seqs=seqs) if seqs else model.iteration(pf, float(pairs), ds, kv)
    t, bd = (float(r), None) if isinstance(r, Real) else (float(r.latency_s), r.breakdown_s)
    if not t > 0:
        raise SpecError("step model", t, "iteration latency > 0 seconds")
    return t, bd


@dataclass(frozen=True)
class ConstantStep(StepModelBase):
    """Every iteration takes ``step_s`` seconds whatever the batch (queueing-theory checks)."""

    step_s: float

    def __post_init__(self):
        if not self.step_s > 0:
            raise SpecError("step_s", self.step_s, "seconds > 0")

    def iteration(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens) -> float:
        return self.step_s


@dataclass(frozen=True)
class LinearStep(StepModelBase):
    """Affine iteration time (seconds): a fixed cost plus per-token, per-pair and per-sequence terms.

    Monotone in every input, so a batch never runs faster than any part of it alone.
    """

    base_s: float = 0.0
    per_prefill_token_s: float = 0.0
    per_attn_pair_s: float = 0.0
    per_decode_seq_s: float = 0.0
    per_kv_token_s: float = 0.0

    def __post_init__(self):
        for k, v in self.__dict__.items():
            if not v >= 0:
                raise SpecError(k, v, "seconds >= 0")
        if self.base_s + self.per_prefill_token_s + self.per_decode_seq_s <= 0:
            raise SpecError("base_s", self.base_s, "a step model whose iterations take time > 0")

    def iteration(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens) -> float:
        return (self.base_s + self.per_prefill_token_s * prefill_tokens + self.per_attn_pair_s * prefill_attn_pairs
                + self.per_decode_seq_s * decode_seqs + self.per_kv_token_s * decode_kv_tokens)


def bucket_up(x: float, bits: int) -> int:
    """Round ``x`` >= 0 up to a value with ``bits`` significant binary digits (exact below 2**bits).

    Relative rounding error < 2**-(bits-1); ceiling so a memoized cost never undercuts the
    exact one for a monotone step model."""
    n = int(x)
    if n < x:
        n += 1
    if n < (1 << bits):
        return n
    shift = n.bit_length() - bits
    q = ((n - 1) >> shift) + 1
    return q << shift


class _RankCompute(StepModelBase):
    """A step model of the compute one DP attention rank's own sequences cost (``rank_compute_s``)."""

    def __init__(self, model: StepModel):
        self.iteration = model.rank_compute_s


@dataclass(frozen=True, slots=True)
class RankLoads:
    """The work of each busy DP attention rank in one iteration (one entry per rank, rank order):
    prefill tokens, their causal query-key pairs, decoding sequences and their KV tokens (context +
    the new token)."""

    prefill_tokens: list[int]
    prefill_pairs: list[float]
    decode_seqs: list[int]
    decode_kv_tokens: list[int]

    def busiest(self, col: list) -> int:
        """Index of the first rank with the largest value in column ``col``."""
        return max(range(len(col)), key=col.__getitem__)


class RankExcess:
    """How much longer an iteration takes because its DP attention ranks carry unequal work (s).

    The step model prices an iteration's summed batch spread evenly over its ``dp_ranks`` ranks. The
    ranks step together, so the iteration waits for the rank whose own compute (the model's
    ``rank_compute_s``: attention, dense and shared-expert FFN, router, LM head) is largest; the
    excess is that compute less the even share's, never below 0. The even share is the busiest
    rank's as the cost prices it: exact model evaluations (``folded=False``) put one of
    ``prefill_seqs`` equal prefill chunks and ``ceil(decode_seqs / dp_ranks)`` decodes on it;
    :class:`InterpCost` (``folded=True``) puts ``(prefill + decode tokens) / prefill_seqs`` tokens
    on it in an iteration with prefill, plus an even share of the decodes' KV attention.
    Expert, all-to-all and TP-collective time follow the summed tokens and keep the even spread.
    Rank compute is interpolated like :class:`InterpCost` (3 significant bits), so equal loads give
    an excess of exactly 0. With up to ``EXHAUSTIVE`` busy ranks each is evaluated; with more, the
    ranks with the most tokens, decodes, KV tokens and (with prefill) prefill pairs, and in a
    decode-only iteration every rank when the compute of the most decodes with the most KV tokens
    (a bound: decode compute grows with both) exceeds the best of those by more than
    ``EXACT_WITHIN``. With prefill, where the interpolation is not monotone in the decodes, the
    candidates are a heuristic.
    """

    #: ranks up to which every busy rank is evaluated
    EXHAUSTIVE = 4
    #: decode-only iterations: relative accuracy to which the busiest rank's compute is found
    EXACT_WITHIN = 0.02

    def __init__(self, model: StepModel, dp_ranks: int, folded: bool = False):
        self.dp_ranks = int(dp_ranks)
        self.folded = bool(folded)
        self.cost = InterpCost(_RankCompute(model), 3)

    def __call__(self, loads: RankLoads, it: Work) -> float:
        """Excess seconds of iteration ``it`` (its totals, as given to the step model) over ``loads``."""
        f = self.cost.price
        pt, pp, ds, kv = loads.prefill_tokens, loads.prefill_pairs, loads.decode_seqs, loads.decode_kv_tokens
        prefill_tokens = it.prefill_tokens
        if len(pt) <= self.EXHAUSTIVE:
            busiest = max(f(pt[i], pp[i], ds[i], kv[i]) for i in range(len(pt)))
        else:  # the busiest by tokens, decodes, KV tokens and prefill pairs
            most_d, most_k = loads.busiest(ds), loads.busiest(kv)
            cand = {loads.busiest([p + d for p, d in zip(pt, ds)]), most_d, most_k}
            if prefill_tokens:
                cand.add(loads.busiest(pp))
            busiest = max(f(pt[i], pp[i], ds[i], kv[i]) for i in cand)
            if not prefill_tokens and f(0, 0, ds[most_d], kv[most_k]) > (1 + self.EXACT_WITHIN) * busiest:
                # decode only: no rank exceeds the most decodes with the most KV tokens; when that bound
                # is not close, look at every rank
                busiest = max(f(pt[i], pp[i], ds[i], kv[i]) for i in range(len(pt)))
        return max(0.0, busiest - self._even(it))

    def _even(self, it: Work) -> float:
        """Compute (s) of the busiest rank's share of ``it`` spread evenly, as the cost prices it."""
        f = self.cost.price
        D, pf, ds, kv, pairs = self.dp_ranks, it.prefill_tokens, it.decode_seqs, it.decode_kv_tokens, it.prefill_pairs
        s = occupied_ranks(D, pf, it.prefill_seqs) or 1
        d0 = -(-ds // D)
        kv0 = round(kv * d0 / ds) if ds else 0
        if self.folded and pf:
            even = f(round((pf + ds) / s), (pairs + ds) / s, 0, 0)
            if ds:
                even += max(0.0, f(0, 0, d0, kv0) - f(0, 0, d0, d0))
            return even
        return f(round(pf / s), pairs / s, d0, kv0)


class _CostWrapper:
    """What the engine's cost wrappers share: the rank excess of their model, built once per wrapper
    (so serving runs that share a wrapper, such as the planner's probes, share its table)."""

    #: whether the wrapper prices an iteration with prefill as if its decodes were prefill tokens
    folded = False
    _excess: RankExcess | None = None

    def __init__(self, model: StepModel):
        check_step_model(model)
        self.model = model
        #: the model's data-parallel attention ranks
        self.dp_ranks = int(model.dp_ranks)

    #: decode-only iterations priced in bulk (``decode_price(ds, kv)``, ``decode_prices(ds, kv)`` and
    #: ``note_lookups(ds, kv)``, see simfoe.serving.fastforward), or None: one by one
    decode_prices = None

    def rank_excess(self, dp_ranks: int) -> RankExcess | None:
        """The :class:`RankExcess` of this wrapper's model over ``dp_ranks`` ranks (None if the model has
        no ``rank_compute_s``)."""
        ex = self._excess
        if ex is None or ex.dp_ranks != dp_ranks:
            if self.model.rank_compute_s is None:
                return None
            ex = self._excess = RankExcess(self.model, dp_ranks, self.folded)
        return ex


class MemoCost(_CostWrapper):
    """Memoized iteration cost keyed by a bucketed batch signature.

    ``bits`` significant bits per coordinate (5: <= 6.25% relative rounding, always upwards).
    ``hits``/``misses`` count lookups; ``counts[key]`` how many iterations used each key, so that
    time-weighted breakdowns cost nothing per iteration.
    """

    def __init__(self, model, bits: int = 5):
        if not 2 <= int(bits) <= 20:
            raise SpecError("bucket_bits", bits, "an integer in 2..20")
        super().__init__(model)
        self.bits = int(bits)
        self.table: dict[tuple, float] = {}
        self.breakdown: dict[tuple, dict] = {}
        self.counts: dict[tuple, int] = {}
        self.misses = 0

    def __call__(self, it: Work) -> float:
        """Seconds of iteration ``it``."""
        b = self.bits
        s = occupied_ranks(self.dp_ranks, it.prefill_tokens, it.prefill_seqs) if self.dp_ranks > 1 else 0
        key = (bucket_up(it.prefill_tokens, b), bucket_up(it.prefill_pairs, b), bucket_up(it.decode_seqs, b),
               bucket_up(it.decode_kv_tokens, b), s)
        t = self.table.get(key)
        if t is None:
            t = self._evaluate(key)
        self.counts[key] += 1
        return t

    def _evaluate(self, key: tuple) -> float:
        """Evaluate the step model at ``key`` into the table (no lookup counted)."""
        t, bd = evaluate(self.model, key[0], key[1], key[2], key[3], key[4])
        self.table[key] = t
        if bd:
            self.breakdown[key] = dict(bd)
        self.counts[key] = 0
        self.misses += 1
        return t

    def decode_price(self, ds: int, kv: int) -> float:
        """Seconds of one decode-only iteration of ``ds`` sequences and ``kv`` KV tokens (no lookup counted)."""
        b = self.bits
        key = (0, 0, bucket_up(ds, b), bucket_up(kv, b), 0)
        t = self.table.get(key)
        return self._evaluate(key) if t is None else t

    def decode_prices(self, ds: int, kv: np.ndarray) -> np.ndarray:
        """Seconds of decode-only iterations of ``ds`` sequences and ``kv[j]`` KV tokens, as :meth:`__call__`
        gives them, for the leading entries already in the table (the first always: it runs now).
        Counts no lookups (:meth:`note_lookups`)."""
        b = self.bits
        xd = bucket_up(ds, b)
        out = []
        for y in kv.tolist():
            key = (0, 0, xd, bucket_up(y, b), 0)
            t = self.table.get(key)
            if t is None:
                if out:
                    break
                t = self._evaluate(key)
            out.append(t)
        return np.array(out)

    def note_lookups(self, ds: int, kv: np.ndarray) -> None:
        """Count the decode-only iterations of ``ds`` sequences and ``kv[j]`` KV tokens priced by
        :meth:`decode_prices` as lookups."""
        b = self.bits
        xd = bucket_up(ds, b)
        for y in kv.tolist():
            self.counts[(0, 0, xd, bucket_up(y, b), 0)] += 1

    @property
    def lookups(self) -> int:
        return sum(self.counts.values())

    def total_breakdown(self) -> dict[str, float]:
        """Seconds per breakdown category summed over all iterations (empty if the model gives none)."""
        out: dict[str, float] = {}
        for key, bd in self.breakdown.items():
            c = self.counts[key]
            for k, v in bd.items():
                out[k] = out.get(k, 0.0) + c * float(v)
        return out


def occupied_ranks(dp_ranks: int, prefill_tokens: int, prefill_seqs: int) -> int:
    """How many of a model's ``dp_ranks`` data-parallel attention ranks (the forward model of an MoE
    layout has several) an iteration's prefill chunks occupy: ``min(prefill_seqs, dp_ranks)``,
    rounded down to 3 significant bits above 8 (fewer ranks: a little pessimistic); 0 when the model
    has one rank or the iteration no prefill (then the model is not asked)."""
    if dp_ranks <= 1 or prefill_tokens <= 0:
        return 0
    return bucket_down(max(1, min(int(prefill_seqs), dp_ranks)), 3)


def bracket(x: float, bits: int) -> tuple[int, int]:
    """``(bucket_down(x, bits), bucket_up(x, bits))`` in one pass (the interpolation's hot path)."""
    n = int(x)
    c = n + 1 if n < x else n
    lim = 1 << bits
    if c < lim:
        return n, c
    if n < lim:
        lo = n
    else:
        sh = n.bit_length() - bits
        lo = (n >> sh) << sh
    sh = c.bit_length() - bits
    return lo, (((c - 1) >> sh) + 1) << sh


def bucket_down(x: float, bits: int) -> int:
    """Largest value <= ``x`` with ``bits`` significant binary digits (exact below 2**bits)."""
    n = int(x)
    if n < (1 << bits):
        return n
    shift = n.bit_length() - bits
    return (n >> shift) << shift


class InterpCost(_CostWrapper):
    """Iteration cost from a few hundred step-model evaluations, for expensive models (the forward model).

    Decode-only iterations: ``D(decode_seqs, kv_tokens)``, bilinear between grid nodes (integers
    with ``bits`` significant binary digits on each axis). Iterations with prefill:
    ``P(T, pairs + decode_seqs) + D(decode_seqs, kv_tokens) - D(decode_seqs, decode_seqs)`` with
    ``T = prefill_tokens + decode_seqs``: every token goes through the dense/expert/communication
    path of a prefill of T tokens, and the decodes add only their KV-length-dependent attention.
    P is evaluated with the iteration's prefill chunks spread over as many data-parallel attention
    ranks as they fill (:func:`occupied_ranks`; one grid per rank count).
    Same interface as :class:`MemoCost`; ``misses`` counts step-model evaluations.
    """

    folded = True

    def __init__(self, model, bits: int = 3):
        if not 2 <= int(bits) <= 12:
            raise SpecError("bucket_bits", bits, "an integer in 2..12")
        super().__init__(model)
        self.bits = int(bits)
        self.table: dict[tuple, float] = {}
        self._cells: dict[tuple, tuple] = {}
        self.misses = 0
        self.calls = 0

    def _node(self, pf: int, pairs: int, ds: int, kv: int, seqs: int = 0) -> float:
        key = (pf, pairs, ds, kv, seqs)
        t = self.table.get(key)
        if t is None:
            t = self.table[key] = evaluate(self.model, pf, pairs, ds, kv, seqs)[0]
            self.misses += 1
        return t

    def _cell(self, x0: int, x1: int, y0: int, y1: int, prefill: bool, seqs: int = 0) -> tuple:
        """Corner values (f00, f01, f10, f11) of one grid cell, evaluated once per cell."""
        key = (prefill, x0, x1, y0, y1, seqs)
        c = self._cells.get(key)
        if c is None:
            if prefill:
                def f(xx, yy):
                    return self._node(xx, yy, 0, 0, seqs)
            else:
                def f(xx, yy):
                    return self._node(0, 0, xx, yy)
            f00 = f(x0, y0)
            f01 = f(x0, y1) if y1 != y0 else f00
            f10 = f(x1, y0) if x1 != x0 else f00
            f11 = f(x1, y1) if (x1 != x0 and y1 != y0) else (f01 if x1 == x0 else f10)
            c = self._cells[key] = (f00, f01, f10, f11)
        return c

    def _bilinear(self, x: float, y: float, prefill: bool, seqs: int = 0) -> float:
        b = self.bits
        x0, x1 = bracket(x, b)
        y0, y1 = bracket(y, b)
        f00, f01, f10, f11 = self._cell(x0, x1, y0, y1, prefill, seqs)
        if x1 == x0 and y1 == y0:
            return f00
        wx = (x - x0) / (x1 - x0) if x1 != x0 else 0.0
        wy = (y - y0) / (y1 - y0) if y1 != y0 else 0.0
        return (f00 * (1 - wx) + f10 * wx) * (1 - wy) + (f01 * (1 - wx) + f11 * wx) * wy

    def __call__(self, it: Work) -> float:
        """Seconds of iteration ``it``."""
        self.calls += 1
        pf = it.prefill_tokens
        return self.price(pf, it.prefill_pairs, it.decode_seqs, it.decode_kv_tokens,
                          occupied_ranks(self.dp_ranks, pf, it.prefill_seqs) if pf and self.dp_ranks > 1 else 0)

    def price(self, prefill_tokens: int, attn_pairs: float, decode_seqs: int, kv_tokens: int, seqs: int = 0) -> float:
        """Seconds of an iteration given by its numbers, its prefill over ``seqs`` occupied ranks (0: one)."""
        if prefill_tokens == 0:
            return self._bilinear(decode_seqs, kv_tokens, False)
        t = self._bilinear(prefill_tokens + decode_seqs, attn_pairs + decode_seqs, True, seqs)
        if decode_seqs:
            t += max(0.0, self._bilinear(decode_seqs, kv_tokens, False) - self._bilinear(decode_seqs, decode_seqs, False))
        return t

    def decode_price(self, ds: int, kv: int) -> float:
        """Seconds of one decode-only iteration of ``ds`` sequences and ``kv`` KV tokens (no lookup counted)."""
        return self._bilinear(ds, kv, False)

    def decode_prices(self, ds: int, kv: np.ndarray) -> np.ndarray:
        """Seconds of decode-only iterations of ``ds`` sequences and ``kv[j]`` KV tokens (increasing
        integers), the very floats :meth:`price` gives one by one, for the leading entries whose grid
        cells need no new step-model evaluation (the first always gets one: it runs now). Counts no
        lookups (:meth:`note_lookups`)."""
        b = self.bits
        x0, x1 = bracket(ds, b)
        wx = (ds - x0) / (x1 - x0) if x1 != x0 else 0.0
        out = np.empty(len(kv))
        i = 0
        while i < len(kv):
            y0, y1 = bracket(int(kv[i]), b)
            if i and not all((0, 0, x, y, 0) in self.table for x in (x0, x1) for y in (y0, y1)):
                break  # the step loop evaluates the next cell when it gets there
            f00, f01, f10, f11 = self._cell(x0, x1, y0, y1, False)
            j = i + 1 if y1 == y0 else int(np.searchsorted(kv, y1, "left"))  # the entries inside this cell
            if x1 == x0 and y1 == y0:
                out[i:j] = f00
            else:
                wy = (kv[i:j] - y0) / (y1 - y0) if y1 != y0 else 0.0
                out[i:j] = (f00 * (1 - wx) + f10 * wx) * (1 - wy) + (f01 * (1 - wx) + f11 * wx) * wy
            i = j
        return out[:i]

    def note_lookups(self, ds: int, kv: np.ndarray) -> None:
        """Count the iterations priced by :meth:`decode_prices` (KV tokens ``kv``) as lookups."""
        self.calls += len(kv)

    @property
    def lookups(self) -> int:
        return self.calls

    def total_breakdown(self) -> dict[str, float]:
        return {}


COST_MODES = ("auto", "memo", "interp")


def make_cost(step_model, mode: str = "auto", bits: int | None = None):
    """Wrap ``step_model`` for the engine: ``memo`` (:class:`MemoCost`, default 5 bits),
    ``interp`` (:class:`InterpCost`, default 3 bits) or ``auto`` (memo for the cheap analytic
    models of this module, interp otherwise). An already wrapped cost is returned as is."""
    if isinstance(step_model, (MemoCost, InterpCost)):
        return step_model
    if mode not in COST_MODES:
        raise SpecError("cost", mode, "allowed: " + ", ".join(COST_MODES))
    if mode == "auto":
        mode = "memo" if isinstance(step_model, (ConstantStep, LinearStep)) else "interp"
    if mode == "memo":
        return MemoCost(step_model, 5 if bits is None else bits)
    return InterpCost(step_model, 3 if bits is None else bits)
