"""Request lengths (tokens) for synthetic arrivals: resampled from a trace, or from a fitted law.

* ``sample_rows``: draw whole requests from a table with replacement (keeps the joint law of
  prompt and output lengths, the prompt type and prefix hashes).
* ``LognormalLengths``: a bivariate lognormal fitted to (prompt, output) tokens by the mean,
  standard deviation and correlation of their logarithms; samples are rounded and clipped to
  [1, the largest value seen in the fitted table] so they never exceed the source's context.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simfoe.errors import SpecError
from simfoe.workloads.requests import RequestTable


def sample_rows(table: RequestTable, n: int, rng: np.random.Generator) -> RequestTable:
    """``n`` requests drawn uniformly with replacement from ``table`` (ids relabelled 0..n-1)."""
    if len(table) == 0:
        raise SpecError("trace", table.source, "a trace with at least one valid request")
    return table[rng.integers(0, len(table), size=n)].relabelled()


@dataclass(frozen=True)
class LognormalLengths:
    """Bivariate lognormal over (prompt, output) tokens; parameters are of natural logs."""

    mu: tuple[float, float]  # mean of ln(prompt tokens), ln(output tokens)
    sigma: tuple[float, float]  # std of the same
    rho: float  # correlation of the two logs
    max_tokens: tuple[int, int]  # clip bounds (largest prompt, output seen when fitted)

    @classmethod
    def fit(cls, table: RequestTable) -> LognormalLengths:
        """Fit by moments of the logs (the maximum-likelihood estimate for a lognormal)."""
        if len(table) < 2:
            raise SpecError("trace", table.source, "at least 2 requests to fit a length distribution")
        logs = np.log(np.stack([table.prompt_tokens, table.output_tokens]).astype(np.float64))
        mu = logs.mean(axis=1)
        sd = logs.std(axis=1)
        rho = float(np.corrcoef(logs)[0, 1]) if np.all(sd > 0) else 0.0
        return cls(
            (float(mu[0]), float(mu[1])),
            (float(sd[0]), float(sd[1])),
            rho,
            (int(table.prompt_tokens.max()), int(table.output_tokens.max())),
        )

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(prompt tokens, output tokens), int64 arrays of length ``n``."""
        e = rng.standard_normal((2, n))
        r = min(max(self.rho, -1.0), 1.0)
        z0 = self.mu[0] + self.sigma[0] * e[0]
        z1 = self.mu[1] + self.sigma[1] * (r * e[0] + np.sqrt(1.0 - r * r) * e[1])
        z = np.stack([z0, z1], axis=1)
        z = np.minimum(z, np.log(np.asarray(self.max_tokens, dtype=np.float64)) + 1.0)  # no overflow in exp
        x = np.rint(np.exp(z)).astype(np.int64)
        p = np.clip(x[:, 0], 1, self.max_tokens[0])
        o = np.clip(x[:, 1], 1, self.max_tokens[1])
        return p, o

    def sample_table(self, n: int, rng: np.random.Generator, source: str = "") -> RequestTable:
        """``n`` untimed requests with sampled lengths."""
        p, o = self.sample(n, rng)
        return RequestTable.from_arrays(None, p, o, source=source or "lognormal fit")


LENGTH_MODES = ("empirical", "lognormal")


def sample_lengths(table: RequestTable, n: int, rng: np.random.Generator, mode: str = "empirical") -> RequestTable:
    """``n`` requests (arrivals as resampled, or NaN for a fit) with lengths following ``table``."""
    if mode == "empirical":
        return sample_rows(table, n, rng)
    if mode == "lognormal":
        return LognormalLengths.fit(table).sample_table(n, rng, source=f"lognormal fit of {table.source}")
    raise SpecError("lengths", mode, "one of " + ", ".join(LENGTH_MODES))
