"""What one forward pass (one serving iteration) has to compute, independent of placement."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simfoe.errors import SpecError


@dataclass(frozen=True, slots=True)
class Work:
    """Tokens of one iteration.

    prefill_tokens: new prompt tokens (all prefill chunks); prefill_pairs: causal query-key pairs of
    those chunks (sum of new * (past + (new + 1) / 2)); prefill_seqs: sequences with a prefill chunk;
    decode_seqs: sequences generating one token each; decode_kv_tokens: sum of their context lengths.
    """

    prefill_tokens: int = 0
    prefill_pairs: float = 0.0
    prefill_seqs: int = 0
    decode_seqs: int = 0
    decode_kv_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs

    @property
    def seqs(self) -> int:
        return self.prefill_seqs + self.decode_seqs

    @staticmethod
    def from_phase(phase: str, batch: int, seq_len: int) -> "Work":
        """prefill: ``batch`` prompts of ``seq_len`` tokens; decode: ``batch`` sequences, one new token
        each, ``seq_len`` tokens of context."""
        if batch < 1:
            raise SpecError("batch", batch, "an integer >= 1")
        if seq_len < 1:
            raise SpecError("seq_len", seq_len, "an integer >= 1")
        if phase == "prefill":
            return Work(batch * seq_len, batch * seq_len * (seq_len + 1) / 2.0, batch, 0, 0)
        if phase == "decode":
            return Work(0, 0.0, 0, batch, batch * seq_len)
        raise SpecError("phase", phase, "allowed: prefill, decode")

    def split(self, parts: int) -> list["Work"]:
        """Split sequences over ``parts`` data-parallel groups (as evenly as whole sequences allow).
        Tokens follow the sequences and are conserved exactly (cumulative rounding); with prefill
        tokens but no sequence count, the tokens are split evenly."""
        ps = _even(self.prefill_seqs, parts)
        ds = _even(self.decode_seqs, parts)
        fp = ps / self.prefill_seqs if self.prefill_seqs else np.full(parts, 1.0 / parts)
        fd = ds / self.decode_seqs if self.decode_seqs else np.zeros(parts)
        tok = _shares(self.prefill_tokens, fp)
        kv = _shares(self.decode_kv_tokens, fd)
        return [Work(int(tok[i]), self.prefill_pairs * float(fp[i]) if self.prefill_tokens else 0.0, int(ps[i]),
                     int(ds[i]), int(kv[i])) for i in range(parts)]

    def halves(self) -> tuple["Work", "Work"]:
        """Two micro-batches for two-batch overlap: :meth:`split` in two, except that a lone prefill
        chunk is split by tokens (first half, then the second half attending to the first), its causal
        pairs recomputed for each half. Either half may be empty (no tokens) when there is too little work."""
        a, b = self.split(2)
        n = self.prefill_tokens
        if n and self.prefill_seqs < 2:
            # one chunk of n new tokens after `past` cached ones: pairs = n (past + (n + 1) / 2)
            past = max(self.prefill_pairs / n - (n + 1) / 2.0, 0.0)
            h1, h2 = n // 2, n - n // 2
            a = Work(h1, h1 * (past + (h1 + 1) / 2.0), 1 if h1 else 0, a.decode_seqs, a.decode_kv_tokens)
            b = Work(h2, h2 * (past + h1 + (h2 + 1) / 2.0), 1, b.decode_seqs, b.decode_kv_tokens)
        return a, b


def _shares(total: int, fractions: np.ndarray) -> np.ndarray:
    """Integer shares of ``total`` in proportion to ``fractions`` (summing to 1 or 0), summing to
    ``total`` exactly: differences of the rounded cumulative sums."""
    cum = np.rint(total * np.cumsum(fractions)).astype(np.int64)
    return np.diff(cum, prepend=0)


def _even(n: int, parts: int) -> np.ndarray:
    base = np.full(parts, n // parts, dtype=np.int64)
    base[: n % parts] += 1
    return base


def even_split(n: int, parts: int) -> np.ndarray:
    """``n`` items over ``parts`` bins, sizes differing by at most one."""
    return _even(int(n), int(parts))
