"""Multi-token prediction (speculative decoding with the model's MTP module) in the serving engine.

Every decode step, each decoding sequence's draft module proposes ``k`` tokens (``k`` passes of the
module, one draft position each); the main model verifies the ``k + 1`` query tokens of every
sequence in one pass; the sequence emits 1 + its accepted drafts. Draft ``j`` is accepted with
probability ``acceptance[j]`` given that drafts ``1..j-1`` were (conditional rates, drafts after a
rejection are discarded). Accepted counts are *sampled*, not taken in expectation: one vectorized
draw per iteration from a numpy Generator seeded by the run's seed (no per-token loop).

Pricing (seconds, through the step models):

* verification: the iteration's decodes count ``k + 1`` query tokens each; query token ``j`` of a
  sequence attends its context plus ``j`` tokens, so decode KV tokens become
  ``(k + 1) (context + 1) + k (k + 1) / 2`` per sequence. The decode attention kernel is priced per
  query row (an upper bound on the KV bytes: a kernel that reads a sequence's KV once for all its
  query rows reads less).
* drafts: pass 1 of the draft module over the iteration's prefill chunks (the module computes the
  prompt's KV in its own layer) and decodes, passes 2..k over the decodes alone.
"""
from __future__ import annotations

from dataclasses import replace
from numbers import Real

import numpy as np

from simfoe.errors import SpecError
from simfoe.forward.work import Work

#: Default acceptance of draft position 1: the low end of "the acceptance rate of the second token
#: prediction ranges between 85% and 90%" (DeepSeek-V3 Technical Report, arXiv:2412.19437, Sec. 5.4.3).
#: No published figure covers positions 2.. of DeepSeek-V3's one MTP module reused recursively.
DEEPSEEK_V3_ACCEPTANCE = 0.85


def resolve_acceptance(k: int, acceptance) -> tuple[float, ...]:
    """``k`` conditional acceptance rates from ``acceptance`` (None: DeepSeek-V3's published figure,
    for ``k == 1`` only; one rate: every position; else exactly ``k`` rates in [0, 1])."""
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 0):
        raise SpecError("mtp", k, "an integer >= 0 (draft tokens per decode step; 0: off)")
    if k == 0:
        if acceptance is not None:
            raise SpecError("mtp_acceptance", acceptance, "omitted without mtp (draft tokens per step) >= 1")
        return ()
    if acceptance is None:
        if k > 1:
            raise SpecError("mtp_acceptance", None, f"{k} rates, one per draft position (the published figure, "
                            "DeepSeek-V3's 85-90%, covers position 1 only)")
        return (DEEPSEEK_V3_ACCEPTANCE,)
    acc = (acceptance,) if isinstance(acceptance, Real) else tuple(acceptance)
    if len(acc) == 1:
        acc = acc * k
    if len(acc) != k or not all(isinstance(a, Real) and 0.0 <= a <= 1.0 for a in acc):
        raise SpecError("mtp_acceptance", ",".join(map(str, acc)),
                        f"one rate in [0, 1], or {k} of them (one per draft position, conditional on the previous)")
    return tuple(float(a) for a in acc)


class Drafts:
    """MTP state of one engine: ``k`` drafts per decode step, their acceptance, the draft module's cost
    (a wrapped step model, or None: drafts cost nothing) and counters (draft seconds, steps, tokens)."""

    def __init__(self, k: int, acceptance, draft_cost=None, seed: int = 0):
        self.k = int(k)
        self.acceptance = resolve_acceptance(k, acceptance)
        self.step_tokens = self.k + 1
        self._acc = np.asarray(self.acceptance)
        self._rng = np.random.default_rng([int(seed), 0x4D5450])  # its own stream, apart from other draws
        self.cost = draft_cost
        self.reset_counters()

    def reset_counters(self) -> None:
        """Restart the draft seconds, sequence decode steps and the tokens they emitted."""
        self.draft_s = 0.0
        self.steps = 0
        self.tokens = 0

    def emitted(self, remaining: np.ndarray) -> np.ndarray:
        """Tokens each decoding sequence emits this step: 1 + its accepted drafts, at most ``remaining``."""
        ok = self._rng.random((len(remaining), self.k)) < self._acc
        m = np.minimum(1 + np.cumprod(ok, axis=1).sum(axis=1), remaining)
        self.steps += len(m)
        self.tokens += int(m.sum())
        return m

    def verify(self, it):
        """Iteration ``it`` (a Batch) as the main model prices it: ``k + 1`` query tokens per decode."""
        s = self.step_tokens
        if not it.decode_seqs:
            return it
        extra = s * (s - 1) // 2
        loads = it.loads
        if loads is not None:
            loads = replace(loads, decode_seqs=[d * s for d in loads.decode_seqs],
                            decode_kv_tokens=[kv * s + d * extra for d, kv in zip(loads.decode_seqs,
                                                                                 loads.decode_kv_tokens)])
        return replace(it, decode_seqs=it.decode_seqs * s, decode_kv_tokens=it.decode_kv_tokens * s
                       + it.decode_seqs * extra, loads=loads)

    def price(self, it: Work) -> float:
        """Seconds the draft module adds to iteration ``it``: pass 1 over its prefill chunks and decodes,
        passes 2..k over its decodes."""
        if self.cost is None:
            return 0.0
        t = self.cost(Work(it.prefill_tokens, it.prefill_pairs, it.prefill_seqs, it.decode_seqs, it.decode_kv_tokens))
        if it.decode_seqs and self.k > 1:
            t += (self.k - 1) * self.cost(Work(0, 0.0, 0, it.decode_seqs, it.decode_kv_tokens))
        self.draft_s += t
        return t

    def summary(self, busy_s: float) -> dict:
        """The summary's ``mtp`` block: settings, mean tokens per sequence step, draft share of busy time."""
        return {"draft_tokens": self.k, "acceptance": list(self.acceptance),
                "tokens_per_step": self.tokens / self.steps if self.steps else None,
                "draft_busy_fraction": self.draft_s / busy_s if busy_s > 0 else 0.0,
                "draft_priced": self.cost is not None}
