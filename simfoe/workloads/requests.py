"""Columnar table of inference requests: what the serving simulator consumes.

One row per request; columns are numpy arrays so that slicing, sorting and resampling are
vectorized and a one-hour trace (tens of thousands of rows) costs a few hundred kilobytes.

Units: ``arrival_s`` in seconds relative to the first request (the earliest arrival is 0;
NaN for length-only tables that carry no timestamps); token counts in tokens.
Optional prefix hash ids (Mooncake's ``hash_ids``: one id per ``hash_block_tokens``-token block
of the prompt) are stored in CSR form: ``hash_ids[hash_offsets[i]:hash_offsets[i+1]]``.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from simfoe.errors import SpecError

#: Header of simfoe's own csv format (see traces/README.md); the last two columns are optional.
SIMFOE_CSV_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens", "request_id", "prompt_type")


@dataclass(frozen=True)
class RequestTable:
    """Requests as parallel numpy arrays (seconds, tokens); cheap to slice with ``table[idx]``.

    ``source`` names where the rows came from; ``skipped_rows`` counts malformed rows a loader
    dropped under ``skip_bad_rows`` (0 otherwise), with ``skipped_lines`` the first few of their
    1-based line numbers in the file when known.
    """

    arrival_s: np.ndarray  # float64, seconds, NaN when the source has no timestamps
    prompt_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1
    request_id: np.ndarray  # int64, unique
    prompt_type: np.ndarray | None = None  # str (numpy unicode), e.g. LongBench dataset name
    hash_offsets: np.ndarray | None = None  # int64, len n+1, CSR offsets into hash_ids
    hash_ids: np.ndarray | None = None  # int64, prefix block ids
    hash_block_tokens: int | None = None  # tokens per hashed block (Mooncake: 512)
    source: str = ""
    skipped_rows: int = 0
    skipped_lines: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        n = len(self.prompt_tokens)
        cols = {"arrival_s": self.arrival_s, "output_tokens": self.output_tokens, "request_id": self.request_id}
        if self.prompt_type is not None:
            cols["prompt_type"] = self.prompt_type
        for name, col in cols.items():
            if len(col) != n:
                raise SpecError(name, f"length {len(col)}", f"every column must have {n} rows like prompt_tokens")
        if (self.hash_offsets is None) != (self.hash_ids is None):
            raise SpecError("hash_ids", "half given", "hash_offsets and hash_ids come together")
        if self.hash_offsets is not None and len(self.hash_offsets) != n + 1:
            raise SpecError("hash_offsets", f"length {len(self.hash_offsets)}", f"n+1 = {n + 1}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        arrival_s,
        prompt_tokens,
        output_tokens,
        *,
        request_id=None,
        prompt_type=None,
        hash_lists: list[list[int]] | None = None,
        hash_block_tokens: int | None = None,
        source: str = "",
    ) -> RequestTable:
        """Build a table, checking values: tokens >= 1, arrivals finite and >= 0 (or all NaN)."""
        p = np.asarray(prompt_tokens, dtype=np.int64)
        o = np.asarray(output_tokens, dtype=np.int64)
        a = np.asarray(arrival_s, dtype=np.float64) if arrival_s is not None else np.full(len(p), np.nan)
        if a.ndim == 0:
            a = np.full(len(p), float(a))
        if len(p) and p.min() < 1:
            raise SpecError("prompt_tokens", int(p.min()), "integers >= 1")
        if len(o) and o.min() < 1:
            raise SpecError("output_tokens", int(o.min()), "integers >= 1")
        if len(a) and not np.isnan(a).all() and not (np.isfinite(a).all() and a.min() >= 0):
            raise SpecError("arrival_s", "non-finite or negative", "finite seconds >= 0 (or all missing)")
        rid = np.arange(len(p), dtype=np.int64) if request_id is None else np.asarray(request_id, dtype=np.int64)
        if len(np.unique(rid)) != len(rid):
            raise SpecError("request_id", "duplicates", "unique integers")
        pt = None if prompt_type is None else np.asarray(prompt_type, dtype=str)
        off = ids = None
        if hash_lists is not None:
            lens = np.fromiter((len(h) for h in hash_lists), dtype=np.int64, count=len(hash_lists))
            off = np.zeros(len(lens) + 1, dtype=np.int64)
            np.cumsum(lens, out=off[1:])
            ids = np.fromiter((x for h in hash_lists for x in h), dtype=np.int64, count=int(off[-1]))
        return cls(a, p, o, rid, pt, off, ids, hash_block_tokens, source)

    # ------------------------------------------------------------------ basic protocol
    def __len__(self) -> int:
        return len(self.prompt_tokens)

    @property
    def has_arrivals(self) -> bool:
        """True when every request has a timestamp."""
        return len(self) > 0 and not np.isnan(self.arrival_s).any()

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last arrival (0 for <= 1 request, NaN if untimed)."""
        if not self.has_arrivals:
            return float("nan")
        return float(self.arrival_s.max() - self.arrival_s.min()) if len(self) else 0.0

    @property
    def mean_rate(self) -> float:
        """Average arrival rate in requests/s: (n - 1) gaps over the span; NaN if undefined."""
        d = self.duration_s
        return (len(self) - 1) / d if d > 0 else float("nan")

    def __getitem__(self, idx) -> RequestTable:
        """Rows selected by a slice, an integer array or a boolean mask (a new table)."""
        if isinstance(idx, (int, np.integer)):
            idx = np.array([int(idx)])
        off = ids = None
        if self.hash_offsets is not None:
            if isinstance(idx, slice) and idx.step in (None, 1):
                lo, hi, _ = idx.indices(len(self))
                hi = max(hi, lo)
                off = self.hash_offsets[lo : hi + 1] - self.hash_offsets[lo]
                ids = self.hash_ids[self.hash_offsets[lo] : self.hash_offsets[hi]]
            else:
                rows = np.arange(len(self))[idx]
                starts, ends = self.hash_offsets[rows], self.hash_offsets[rows + 1]
                lens = ends - starts
                off = np.zeros(len(rows) + 1, dtype=np.int64)
                np.cumsum(lens, out=off[1:])
                # gather each row's block ids: position k of the output maps to starts[row] + (k - off[row])
                gather = np.repeat(starts - off[:-1], lens) + np.arange(off[-1])
                ids = self.hash_ids[gather]
        return replace(
            self,
            arrival_s=self.arrival_s[idx],
            prompt_tokens=self.prompt_tokens[idx],
            output_tokens=self.output_tokens[idx],
            request_id=self.request_id[idx],
            prompt_type=None if self.prompt_type is None else self.prompt_type[idx],
            hash_offsets=off,
            hash_ids=ids,
        )

    def prefix_hashes(self, i: int) -> np.ndarray:
        """Prefix block ids of request row ``i`` (empty when the source has none)."""
        if self.hash_offsets is None:
            return np.empty(0, dtype=np.int64)
        return self.hash_ids[self.hash_offsets[i] : self.hash_offsets[i + 1]]

    def records(self) -> list[tuple[int, float, int, int]]:
        """(request_id, arrival_s, prompt_tokens, output_tokens) as Python scalars, in row order.

        For event loops that handle one request at a time (a single vectorized conversion)."""
        return list(zip(self.request_id.tolist(), self.arrival_s.tolist(),
                        self.prompt_tokens.tolist(), self.output_tokens.tolist()))

    # ------------------------------------------------------------------ transformations
    def sorted_by_arrival(self) -> RequestTable:
        """Rows in arrival order (stable, so ties keep file order)."""
        if not self.has_arrivals or np.all(np.diff(self.arrival_s) >= 0):
            return self
        return self[np.argsort(self.arrival_s, kind="stable")]

    def with_arrivals(self, arrival_s: np.ndarray) -> RequestTable:
        """Same requests with new arrival times (seconds; must match the row count)."""
        a = np.asarray(arrival_s, dtype=np.float64)
        if len(a) != len(self):
            raise SpecError("arrival_s", f"length {len(a)}", f"{len(self)} values, one per request")
        return replace(self, arrival_s=a).sorted_by_arrival()

    def truncated(self, duration_s: float) -> RequestTable:
        """Requests arriving in [0, duration_s) (seconds)."""
        if not self.has_arrivals:
            raise SpecError("duration", duration_s, "a trace with timestamps (this one has none)")
        return self[self.arrival_s < duration_s]

    def relabelled(self) -> RequestTable:
        """Same rows with request ids 0..n-1 in row order (after resampling ids repeat)."""
        return replace(self, request_id=np.arange(len(self), dtype=np.int64))

    # ------------------------------------------------------------------ export
    def summary(self) -> dict:
        """Counts and mean/percentile lengths (tokens), span (s) and mean rate (req/s)."""

        def stats(x: np.ndarray) -> dict:
            if not len(x):
                return {"mean": None, "p50": None, "p99": None, "max": None}
            q = np.percentile(x, [50, 99])
            return {"mean": float(x.mean()), "p50": float(q[0]), "p99": float(q[1]), "max": int(x.max())}

        return {
            "source": self.source,
            "requests": len(self),
            "skipped_rows": self.skipped_rows,
            "duration_s": self.duration_s,
            "mean_rate_rps": self.mean_rate,
            "prompt_tokens": stats(self.prompt_tokens),
            "output_tokens": stats(self.output_tokens),
        }

    def to_frame(self):
        """A pandas DataFrame with simfoe csv columns (prompt_type only when present)."""
        import pandas as pd

        cols = {
            "arrival_s": self.arrival_s,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "request_id": self.request_id,
        }
        if self.prompt_type is not None:
            cols["prompt_type"] = self.prompt_type
        return pd.DataFrame(cols)

    def to_csv(self, path: str | Path) -> Path:
        """Write simfoe's csv format (arrival_s to microsecond precision); returns the path."""
        path = Path(path)
        df = self.to_frame()
        df["arrival_s"] = df["arrival_s"].round(6)
        df.to_csv(path, index=False, float_format="%.6f", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        return path
