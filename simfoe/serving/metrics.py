"""Per-request state and records with bounded memory, and the summary statistics.

One numpy slot per request holds its progress and aggregates (seconds, tokens): arrival, first
scheduled, first token, last token, token count, sum/max/min of inter-token gaps, preemptions.
All inter-token gaps also go into one log-spaced histogram (:class:`GapHistogram`) for TBT
percentiles; per-token times are kept only when asked (``token_times=True``: one preallocated
float64 buffer of sum(output_tokens) entries).
"""
from __future__ import annotations

import numpy as np

#: Drop reasons (code -> text); code 0 = not dropped.
DROP_REASONS = {
    1: "kv_capacity: prompt + output tokens exceed the KV cache of one instance (of one DP attention rank)",
    2: "unfinished: still queued or running at the simulation horizon",
}

#: held: prefilled and admitted, keeping its KV, waiting for more prompt tokens before it may decode
#: (streamed input, :mod:`simfoe.serving.streamed`)
STATUS_PENDING, STATUS_WAITING, STATUS_RUNNING, STATUS_DONE, STATUS_DROPPED, STATUS_HELD = range(6)


class GapHistogram:
    """Log-spaced histogram of inter-token gaps (seconds): 1 us .. 1e4 s, ``per_decade`` bins.

    Percentiles interpolate geometrically inside a bin (relative error < 10**(1/per_decade) - 1,
    about 1.2% at 200 per decade) and are clamped to the exact min and max; the mean is exact.
    Gaps are buffered and binned ``BUFFER`` at a time: one numpy pass per batch of iterations
    instead of one per iteration (the counts are the same; read them through the methods).
    """

    LO, HI = 1e-6, 1e4
    BUFFER = 1 << 16

    def __init__(self, per_decade: int = 200):
        self.per_decade = per_decade
        self.nbins = int(round(np.log10(self.HI / self.LO) * per_decade))
        self._counts = np.zeros(self.nbins + 2, dtype=np.int64)  # [under, bins..., over]
        self._scale = per_decade / np.log(10.0)
        self._buf = np.empty(self.BUFFER)
        self._fill = 0
        self._n = 0
        self._total = 0.0
        self._min = np.inf
        self._max = -np.inf

    def add(self, gaps: np.ndarray) -> None:
        k = len(gaps)
        f = self._fill
        if f + k > self.BUFFER:
            self._flush()
            f = 0
            if k > self.BUFFER:
                self._bin(np.asarray(gaps, dtype=np.float64))
                return
        self._buf[f:f + k] = gaps
        self._fill = f + k

    def add_repeated(self, values: np.ndarray, n: int) -> None:
        """The same as ``add(np.full(n, v))`` for each ``v`` of ``values`` in turn (iterations whose ``n``
        decodes share one gap), one buffer write per buffer's worth."""
        if n > self.BUFFER:
            for v in values:
                self.add(np.full(n, v))
            return
        i = 0
        while i < len(values):
            if self._fill + n > self.BUFFER:
                self._flush()
            m = min(len(values) - i, (self.BUFFER - self._fill) // n)
            self._buf[self._fill:self._fill + m * n] = np.repeat(values[i:i + m], n)
            self._fill += m * n
            i += m

    def _flush(self) -> None:
        if self._fill:
            self._bin(self._buf[:self._fill])
            self._fill = 0

    def _bin(self, gaps: np.ndarray) -> None:
        if not len(gaps):
            return
        idx = np.floor(np.log(np.maximum(gaps, 1e-300) / self.LO) * self._scale).astype(np.int64) + 1
        np.clip(idx, 0, self.nbins + 1, out=idx)
        self._counts += np.bincount(idx, minlength=self.nbins + 2)
        self._n += len(gaps)
        self._total += float(gaps.sum())
        self._min = min(self._min, float(gaps.min()))
        self._max = max(self._max, float(gaps.max()))

    @property
    def counts(self) -> np.ndarray:
        """Gaps per bin: [below LO, bins..., above HI]."""
        self._flush()
        return self._counts

    @property
    def n(self) -> int:
        self._flush()
        return self._n

    def quantile(self, q: float) -> float:
        if self.n == 0:
            return float("nan")
        counts = self._counts
        target = q * self._n
        cum = np.cumsum(counts)
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, len(cum) - 1)
        before = cum[i - 1] if i > 0 else 0
        frac = (target - before) / max(counts[i], 1)
        if i == 0:
            v = self.LO
        elif i == self.nbins + 1:
            v = self.HI
        else:
            v = self.LO * 10 ** ((i - 1 + min(max(frac, 0.0), 1.0)) / self.per_decade)
        return float(min(max(v, self._min), self._max))

    def stats(self) -> dict:
        if self.n == 0:
            return {"mean": None, "p50": None, "p90": None, "p99": None, "count": 0}
        return {"mean": self._total / self._n, "p50": self.quantile(0.5), "p90": self.quantile(0.9),
                "p99": self.quantile(0.99), "count": self._n, "max": self._max}


class RequestStore:
    """Columnar state of every request (index = row of the request table)."""

    def __init__(self, arrival_s, prompt_tokens, output_tokens, request_id, token_times: bool = False):
        n = len(prompt_tokens)
        self.n = n
        self.request_id = np.asarray(request_id, dtype=np.int64)
        self.arrival = np.asarray(arrival_s, dtype=np.float64)
        self.prompt = np.asarray(prompt_tokens, dtype=np.int64)
        self.target = np.asarray(output_tokens, dtype=np.int64)
        # progress
        self.ctx = np.zeros(n, np.int64)  # tokens whose KV is in cache
        self.gen = np.zeros(n, np.int64)  # output tokens produced
        self.pf_left = self.prompt.copy()  # tokens still to prefill (recompute after preemption adds)
        self.blocks = np.zeros(n, np.int64)  # KV blocks held
        self.status = np.zeros(n, np.int8)
        self.replica = np.full(n, -1, np.int32)
        self.rank = np.full(n, -1, np.int32)  # DP attention rank of its replica the request is pinned to
        # aggregates (seconds)
        self.scheduled = np.full(n, np.nan)
        self.first = np.full(n, np.nan)
        self.last = np.full(n, np.nan)
        self.sum_gap = np.zeros(n)
        self.max_gap = np.zeros(n)
        self.min_gap = np.full(n, np.inf)
        self.preempted = np.zeros(n, np.int32)
        self.dropped = np.zeros(n, np.int8)
        self.gaps = GapHistogram()
        #: prefix caching only (simfoe.serving.prefix_cache; None when off): leading prefix blocks each
        #: request pins, and the prompt tokens its first prefill found cached
        self.shared = self.hit = None
        #: streamed input only (None: no request holds; simfoe.serving.streamed): True while a request awaits
        #: more prompt tokens and must not decode; ``on_hold(rows)`` takes held rows whose prefill completed
        self.held = None
        self.on_hold = None
        #: called as ``on_emit(rows, now)`` after every :meth:`emit` (rows: int array); None: no call
        self.on_emit = None
        self.token_offsets = None
        self.token_buf = None
        if token_times:
            self.token_offsets = np.zeros(n + 1, np.int64)
            np.cumsum(self.target, out=self.token_offsets[1:])
            self.token_buf = np.full(int(self.token_offsets[-1]), np.nan)

    # ---------------------------------------------------------------- token bookkeeping
    def emit_run(self, idx: np.ndarray, times: np.ndarray) -> None:
        """Record one token per request of ``idx`` at each of ``times`` (s, ascending), as ``len(times)`` calls
        of :meth:`emit` would (the serving fast-forward's decode-only run). The requests have had their first
        token and none is held (a store with an emit hook is never fast-forwarded)."""
        m = len(times)
        if self.token_buf is not None:
            self.token_buf[(self.token_offsets[idx] + self.gen[idx])[:, None] + np.arange(m)] = times
        self.gen[idx] += m
        g0 = times[0] - self.last[idx]
        rest = np.diff(times)
        self.sum_gap[idx] = _sum_rows(self.sum_gap[idx] + g0, rest)
        hi, lo = np.maximum(self.max_gap[idx], g0), np.minimum(self.min_gap[idx], g0)
        if len(rest):
            hi, lo = np.maximum(hi, rest.max()), np.minimum(lo, rest.min())
        self.max_gap[idx], self.min_gap[idx] = hi, lo
        self.gaps.add(g0)
        self.gaps.add_repeated(rest, len(idx))
        self.last[idx] = times[-1]

    def emit(self, idx: np.ndarray, now: float, count: np.ndarray | None = None) -> None:
        """Record one new output token at time ``now`` for each request in ``idx`` (int array), or ``count``
        tokens each (int array; multi-token prediction): tokens that arrive together make one gap. A held row
        (streamed input, :attr:`held`) whose prefill completed takes no token: it goes to :attr:`on_hold`."""
        if self.held is not None and len(idx):
            h = self.held[idx]
            if h.any():
                self.on_hold(idx[h])
                idx = idx[~h]
                count = None if count is None else count[~h]
        if not len(idx):
            return
        if self.token_buf is not None:
            if count is None:
                self.token_buf[self.token_offsets[idx] + self.gen[idx]] = now
            else:  # the k-th token of a request lands at its offset + gen + k
                k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
                self.token_buf[np.repeat(self.token_offsets[idx] + self.gen[idx], count) + k] = now
        self.gen[idx] += 1 if count is None else count
        every = idx
        last = self.last[idx]
        newf = np.isnan(last)
        if newf.any():
            self.first[idx[newf]] = now
            idx = idx[~newf]
            last = last[~newf]
        if len(idx):
            gap = now - last
            self.sum_gap[idx] += gap
            self.max_gap[idx] = np.maximum(self.max_gap[idx], gap)
            self.min_gap[idx] = np.minimum(self.min_gap[idx], gap)
            self.gaps.add(gap)
        self.last[every] = now
        if self.on_emit is not None:
            self.on_emit(every, now)

    def append(self, arrival_s: float, prompt_tokens: int, output_tokens: int, request_id: int) -> int:
        """Add one request row (arriving at ``arrival_s``, s) and return its index: requests issued while
        the simulation runs. Columns grow by doubling, so they may hold spare rows past ``n`` until
        :meth:`trim`; per-token times are not kept for appended rows."""
        if self.token_buf is not None:
            raise ValueError("rows cannot be appended when per-token times are kept")
        i = self.n
        if i == len(self.prompt):
            self._grow(max(16, 2 * i))
        self.arrival[i] = arrival_s
        self.prompt[i] = self.pf_left[i] = prompt_tokens
        self.target[i] = output_tokens
        self.request_id[i] = request_id
        self.n = i + 1
        return i

    def _columns(self) -> list[str]:
        """Names of the per-request columns (numpy arrays of one entry per row)."""
        k = len(self.prompt)
        return [a for a, v in vars(self).items() if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == k]

    def _grow(self, rows: int) -> None:
        """Extend every column to ``rows`` rows, the new ones as a fresh store sets them."""
        k = rows - len(self.prompt)
        fresh = RequestStore(np.full(k, np.nan), np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64))
        for a in self._columns():
            col = getattr(self, a)
            new = getattr(fresh, a)  # a column a fresh store lacks (set later, e.g. held): zeros
            setattr(self, a, np.concatenate([col, new if isinstance(new, np.ndarray) else np.zeros(k, col.dtype)]))

    def trim(self) -> None:
        """Drop the spare rows :meth:`append` left past ``n``."""
        if len(self.prompt) != self.n:
            for a in self._columns():
                setattr(self, a, getattr(self, a)[:self.n])

    def token_times(self, i: int) -> np.ndarray:
        """Times (s) of request row ``i``'s output tokens; needs ``token_times=True``."""
        if self.token_buf is None:
            raise ValueError("per-token times were not kept; run with token_times=True")
        return self.token_buf[self.token_offsets[i]: self.token_offsets[i] + self.gen[i]]

    # ---------------------------------------------------------------- export
    def frame(self):
        """pandas DataFrame, one row per request (seconds, tokens); NaN where not reached."""
        import pandas as pd

        done = self.status == STATUS_DONE
        ntok = self.gen
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_tbt = np.where(ntok > 1, self.sum_gap / np.maximum(ntok - 1, 1), np.nan)
        reason = np.array([""] + [DROP_REASONS[k].split(":")[0] for k in sorted(DROP_REASONS)], dtype=object)
        return pd.DataFrame({
            "request_id": self.request_id,
            "replica": self.replica,
            "rank": self.rank,
            "arrival_s": self.arrival,
            "prompt_tokens": self.prompt,
            "output_tokens": self.target,
            "generated_tokens": ntok,
            "scheduled_s": self.scheduled,
            "first_token_s": self.first,
            "finish_s": np.where(done, self.last, np.nan),
            "queue_s": self.scheduled - self.arrival,
            "ttft_s": self.first - self.arrival,
            "e2e_s": np.where(done, self.last - self.arrival, np.nan),
            "tbt_mean_s": mean_tbt,
            "tbt_max_s": np.where(ntok > 1, self.max_gap, np.nan),
            "tbt_min_s": np.where(ntok > 1, self.min_gap, np.nan),
            "preemptions": self.preempted,
            "completed": done,
            "dropped": reason[self.dropped],
            **({} if self.hit is None else {"cached_tokens": self.hit}),
        })


def dist(x: np.ndarray) -> dict:
    """mean, p50, p90, p99 of the finite values of ``x`` (None when empty)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    q = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2])}


def _sum_rows(start: np.ndarray, xs: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``start[i] + xs[0] + xs[1] + ...`` for every ``i``, left to right (bounded memory)."""
    s = start
    for a in range(0, len(xs), chunk):
        m = np.empty((min(chunk, len(xs) - a) + 1, len(s)))
        m[0] = s
        m[1:] = xs[a:a + chunk, None]
        s = np.add.accumulate(m, axis=0)[-1]
    return s
