"""Closed-loop clients: arrivals driven by completions (see simfoe.workloads.closed_loop).

The engine tells :class:`Clients` how many requests finished; the clients issue the next rows of the
request table at that instant, so no SimPy process or event is added per request and an open-loop
run (no clients) is untouched.
"""
from __future__ import annotations

from simfoe.serving.scheduler import drop_if_unfit


class Clients:
    """``concurrency`` clients issuing an engine's request rows in order, each its next the instant
    its last one finishes (or is refused: one that can never fit a rank's KV cache is dropped at
    once, as a failed request returns at once to a benchmark client). The first ``warmup`` rows run
    first, to the last of them; then the engine's measurement starts and the other rows follow."""

    def __init__(self, engine, concurrency: int, warmup: int):
        self.engine = engine
        self.concurrency = int(concurrency)
        self.warmup = int(warmup)
        self.next = 0  # next row to issue
        self.in_flight = 0
        self.end = self.warmup if self.warmup else engine.store.n  # rows of the current phase end here

    def start(self) -> None:
        """Issue the first requests at time 0."""
        self._issue(0.0)

    def finished(self, k: int, now: float) -> None:
        """``k`` requests finished at ``now`` (s): their clients send their next ones."""
        self.in_flight -= k
        self._issue(now)

    def _issue(self, now: float) -> None:
        eng = self.engine
        st = eng.store
        kv = eng.replicas[0].ranks[0].kv  # every rank's pool has the same size
        while True:
            while self.in_flight < self.concurrency and self.next < self.end:
                i = self.next
                self.next += 1
                st.arrival[i] = now
                if drop_if_unfit(kv, st, i):  # the scheduler's own rule
                    continue
                self.in_flight += 1
                eng.arrive(i)
            if self.in_flight or self.end == st.n:
                return
            # every warm-up is done: the measured run starts on an idle engine
            eng.begin_measurement()
            self.end = st.n
