"""Iteration-time models for the serving engine, and the memo that makes hours of traffic cheap.

The engine describes one iteration (one forward pass of a continuous batch) by four numbers:

* ``prefill_tokens``: new prompt tokens computed this step (sum of chunk sizes);
* ``prefill_attn_pairs``: causal query-key pairs of those chunks,
  sum of ``chunk * (past_context + (chunk + 1) / 2)``;
* ``decode_seqs``: sequences decoding one token each;
* ``decode_kv_tokens``: sum of their context lengths (tokens attended, incl. the new one).

Any object with ``iteration(prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens)``
returning seconds or an object with ``latency_s`` (and optionally ``breakdown_s``) is a step model;
:class:`simfoe.forward.ForwardModel` is the real one. The analytic ones here serve tests and
queueing-theory checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

from simfoe.errors import SpecError


class StepModel(Protocol):
    def iteration(self, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int,
                  decode_kv_tokens: int): ...


@dataclass(frozen=True)
class ConstantStep:
    """Every iteration takes ``step_s`` seconds whatever the batch (queueing-theory checks)."""

    step_s: float

    def __post_init__(self):
        if not self.step_s > 0:
            raise SpecError("step_s", self.step_s, "seconds > 0")

    def iteration(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens) -> float:
        return self.step_s


@dataclass(frozen=True)
class LinearStep:
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


class _RankCompute:
    """A step model of the compute one DP attention rank's own sequences cost (``rank_compute_s``)."""

    def __init__(self, model):
        self.f = model.rank_compute_s

    def iteration(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens) -> float:
        return self.f(prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens)


def _tokens(load) -> int:
    return load[0] + load[2]


_pairs = itemgetter(1)
_decodes = itemgetter(2)
_kv_tokens = itemgetter(3)


class RankExcess:
    """How much longer an iteration takes because its DP attention ranks carry unequal work (s).

    The step model prices an iteration's summed batch spread evenly over its ``groups`` ranks. The
    ranks step together, so the iteration waits for the rank whose own compute (the model's
    ``rank_compute_s``: attention, dense and shared-expert FFN, router, LM head) is largest; the
    excess is that compute less the even share's, never below 0. The even share is the busiest
    group's as the cost prices it: exact model evaluations (``folded=False``) put one of
    ``prefill_seqs`` equal prefill chunks and ``ceil(decode_seqs / groups)`` decodes on it;
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

    def __init__(self, model, groups: int, folded: bool = False):
        self.groups = int(groups)
        self.folded = bool(folded)
        self.cost = InterpCost(_RankCompute(model), 3)

    @staticmethod
    def supports(model) -> bool:
        return callable(getattr(model, "rank_compute_s", None))

    def __call__(self, loads, prefill_tokens: int, attn_pairs: float, decode_seqs: int, kv_tokens: int,
                 prefill_seqs: int) -> float:
        """``loads``: per busy rank ``(prefill tokens, pairs, decodes, decode KV tokens)``; the rest:
        the iteration's totals as given to the step model."""
        f = self.cost
        if len(loads) <= self.EXHAUSTIVE:
            busiest = max(f(*x) for x in loads)
        else:  # the busiest by tokens, decodes, KV tokens and prefill pairs
            most_d, most_k = max(loads, key=_decodes), max(loads, key=_kv_tokens)
            cand = {max(loads, key=_tokens), most_d, most_k}
            if prefill_tokens:
                cand.add(max(loads, key=_pairs))
            busiest = max(f(*x) for x in cand)
            if not prefill_tokens and f(0, 0, most_d[2], most_k[3]) > (1 + self.EXACT_WITHIN) * busiest:
                # decode only: no rank exceeds the most decodes with the most KV tokens; when that bound
                # is not close, look at every rank
                busiest = max(f(*x) for x in loads)
        D = self.groups
        s = occupied_groups(D, prefill_tokens, prefill_seqs) or 1
        d0 = -(-decode_seqs // D)
        kv0 = round(kv_tokens * d0 / decode_seqs) if decode_seqs else 0
        if self.folded and prefill_tokens:
            even = f(round((prefill_tokens + decode_seqs) / s), (attn_pairs + decode_seqs) / s, 0, 0)
            if decode_seqs:
                even += max(0.0, f(0, 0, d0, kv0) - f(0, 0, d0, d0))
        else:
            even = f(round(prefill_tokens / s), attn_pairs / s, d0, kv0)
        return max(0.0, busiest - even)


class _CostWrapper:
    """What the engine's cost wrappers share: the rank excess of their model, built once per wrapper
    (so serving runs that share a wrapper, such as the planner's probes, share its table)."""

    #: whether the wrapper prices an iteration with prefill as if its decodes were prefill tokens
    folded = False
    _excess: RankExcess | None = None

    def __init__(self, model):
        self.model = model
        #: the model's data-parallel attention groups (its ``prefill_groups``; 1 if it has none)
        self.groups = getattr(model, "prefill_groups", 1)

    def rank_excess(self, groups: int) -> RankExcess | None:
        """The :class:`RankExcess` of this wrapper's model over ``groups`` ranks (None if the model has
        no ``rank_compute_s``)."""
        ex = self._excess
        if ex is None or ex.groups != groups:
            if not RankExcess.supports(self.model):
                return None
            ex = self._excess = RankExcess(self.model, groups, self.folded)
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

    def __call__(self, prefill_tokens: int, attn_pairs: float, decode_seqs: int, kv_tokens: int,
                 prefill_seqs: int = 1) -> float:
        b = self.bits
        s = occupied_groups(self.groups, prefill_tokens, prefill_seqs)
        key = (bucket_up(prefill_tokens, b), bucket_up(attn_pairs, b), bucket_up(decode_seqs, b),
               bucket_up(kv_tokens, b), s)
        t = self.table.get(key)
        if t is None:
            extra = {"prefill_seqs": s} if s else {}
            r = self.model.iteration(key[0], float(key[1]), key[2], key[3], **extra)
            t = float(getattr(r, "latency_s", r))
            if not t > 0:
                raise SpecError("step model", t, "iteration latency > 0 seconds")
            self.table[key] = t
            bd = getattr(r, "breakdown_s", None)
            if bd:
                self.breakdown[key] = dict(bd)
            self.counts[key] = 1
            self.misses += 1
        else:
            self.counts[key] += 1
        return t

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


def occupied_groups(groups: int, prefill_tokens: int, prefill_seqs: int) -> int:
    """How many of a model's ``groups`` data-parallel attention groups (its ``prefill_groups``: the
    forward model of an MoE layout) an iteration's prefill chunks occupy: ``min(prefill_seqs, groups)``,
    rounded down to 3 significant bits above 8 (fewer groups: a little pessimistic); 0 when the model
    has one group or the iteration no prefill (then the model is not asked)."""
    if groups <= 1 or prefill_tokens <= 0:
        return 0
    return bucket_down(max(1, min(int(prefill_seqs), groups)), 3)


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
    groups as they fill (:func:`occupied_groups`; one grid per group count).
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
            extra = {"prefill_seqs": seqs} if seqs else {}
            r = self.model.iteration(pf, float(pairs), ds, kv, **extra)
            t = float(getattr(r, "latency_s", r))
            if not t > 0:
                raise SpecError("step model", t, "iteration latency > 0 seconds")
            self.table[key] = t
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
        x0, x1 = bucket_down(x, b), bucket_up(x, b)
        y0, y1 = bucket_down(y, b), bucket_up(y, b)
        f00, f01, f10, f11 = self._cell(x0, x1, y0, y1, prefill, seqs)
        if x1 == x0 and y1 == y0:
            return f00
        wx = (x - x0) / (x1 - x0) if x1 != x0 else 0.0
        wy = (y - y0) / (y1 - y0) if y1 != y0 else 0.0
        return (f00 * (1 - wx) + f10 * wx) * (1 - wy) + (f01 * (1 - wx) + f11 * wx) * wy

    def __call__(self, prefill_tokens: int, attn_pairs: float, decode_seqs: int, kv_tokens: int,
                 prefill_seqs: int = 1) -> float:
        self.calls += 1
        if prefill_tokens == 0:
            return self._bilinear(decode_seqs, kv_tokens, False)
        seqs = occupied_groups(self.groups, prefill_tokens, prefill_seqs)
        t = self._bilinear(prefill_tokens + decode_seqs, attn_pairs + decode_seqs, True, seqs)
        if decode_seqs:
            t += max(0.0, self._bilinear(decode_seqs, kv_tokens, False) - self._bilinear(decode_seqs, decode_seqs, False))
        return t

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
