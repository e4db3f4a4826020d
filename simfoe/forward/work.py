"""What one forward pass (one serving iteration) has to compute, independent of placement."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simfoe.errors import SpecError


@dataclass(frozen=True)
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
        """Split sequences over ``parts`` data-parallel groups (as evenly as whole sequences allow)."""
        out = []
        ps = _even(self.prefill_seqs, parts)
        ds = _even(self.decode_seqs, parts)
        for i in range(parts):
            fp = ps[i] / self.prefill_seqs if self.prefill_seqs else (1.0 / parts if self.prefill_tokens else 0.0)
            fd = ds[i] / self.decode_seqs if self.decode_seqs else 0.0
            out.append(Work(int(round(self.prefill_tokens * fp)), self.prefill_pairs * fp, int(ps[i]),
                            int(ds[i]), int(round(self.decode_kv_tokens * fd))))
        return out


def _even(n: int, parts: int) -> np.ndarray:
    base = np.full(parts, n // parts, dtype=np.int64)
    base[: n % parts] += 1
    return base


def even_split(n: int, parts: int) -> np.ndarray:
    """``n`` items over ``parts`` bins, sizes differing by at most one."""
    return _even(int(n), int(parts))
