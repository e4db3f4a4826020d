"""Batch formation for one iteration (vLLM-like continuous batching), as a registry of policies.

A policy's ``schedule(queue, store, now)`` returns ``(decode_idx, chunks)``: the int array of
decoding requests (one token each) and a list of ``(request, prefill_tokens)``; or ``None`` when
there is nothing to run. ``queue`` is one scheduling unit (:class:`simfoe.serving.engine.Rank`: a
``waiting`` deque, a ``running`` list, a ``kv`` pool and a ``preemptions`` count): a whole instance,
or one of its data-parallel attention ranks, each scheduled on its own as in vLLM and SGLang (one
scheduler per DP rank). It allocates KV blocks for what it schedules and preempts when the cache
is full (recompute: the victim frees its blocks and later re-prefills prompt + generated tokens).

Policies:

* ``chunked`` (default; vLLM v1 / Sarathi-style): running requests first in admission order
  (decodes take one token of the budget, partial prefills the rest), then waiting requests FCFS
  while the token budget, ``max_batch`` and free KV blocks allow; prompts are split into chunks.
* ``whole-prompt``: as ``chunked``, but a prompt's prefill is scheduled only whole (one prompt may
  exceed the budget when it is the first prefill of the batch).
* ``prefill-first`` (SGLang without mixed chunks): an iteration runs prompt chunks alone whenever
  any can run (decodes wait), else every running request decodes.
"""
from __future__ import annotations

import numpy as np

from simfoe.errors import SpecError
from simfoe.registry import registrar
from simfoe.serving.metrics import STATUS_DROPPED, STATUS_RUNNING, STATUS_WAITING

SCHEDULERS: dict[str, type] = {}


register_scheduler = registrar(SCHEDULERS)


def drop_if_unfit(kv, st, i: int) -> bool:
    """Drop request ``i`` (status dropped, reason 1: too long for the KV cache) when its prompt plus output
    can never fit ``kv``; True when dropped. The one rule the scheduler and the closed-loop clients share."""
    if kv.fits(st.prompt[i] + st.target[i] - 1):
        return False
    st.status[i] = STATUS_DROPPED
    st.dropped[i] = 1
    return True


@register_scheduler("chunked")
class ChunkedFCFS:
    """FCFS continuous batching with chunked prefill; see module docstring."""

    chunked = True
    #: KV tokens a decode writes per step: 1, or 1 + the drafts under multi-token prediction (simfoe.serving.mtp)
    step_tokens = 1

    def __init__(self, max_batch: int = 256, token_budget: int = 8192):
        if not (isinstance(max_batch, (int, np.integer)) and max_batch >= 1):
            raise SpecError("max_batch", max_batch, "an integer >= 1 (sequences per iteration and rank)")
        if not (isinstance(token_budget, (int, np.integer)) and token_budget >= max_batch):
            raise SpecError("token_budget", token_budget,
                            f"an integer >= max_batch ({max_batch}): tokens per iteration and rank")
        self.max_batch = int(max_batch)
        self.token_budget = int(token_budget)

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def preempt_last(q, st) -> None:
        """Preempt the most recently admitted running request (recompute)."""
        i = q.running.pop()
        if q.kv.cache is not None:  # prefix caching: its own blocks freed, its cached prefix unpinned
            q.kv.cache.release(i, st)
        else:
            q.kv.free += int(st.blocks[i])
        st.blocks[i] = 0
        st.ctx[i] = 0
        st.pf_left[i] = st.prompt[i] + st.gen[i]
        st.status[i] = STATUS_WAITING
        st.preempted[i] += 1
        q.preemptions += 1
        q.waiting.appendleft(i)

    def _chunk(self, i: int, budget: int, alone: bool, st, kv) -> int:
        """Prefill tokens of request ``i`` to run now (0: none); allocates their KV blocks."""
        if kv.cache is not None and not st.blocks[i] and kv.cache.lookup(i, st):
            # a prefix-cache hit: its context starts after the cached blocks it now holds
            c = self._chunk(i, budget, alone, st, kv)
            if not c:
                kv.cache.undo(i, st)
            return c
        left = int(st.pf_left[i])
        if self.chunked:
            c = min(left, budget)
        else:
            c = left if (left <= budget or alone) else 0
        if c <= 0:
            return 0
        ctx = int(st.ctx[i])
        have = int(st.blocks[i])
        fit = (have + kv.free) * kv.block_size - ctx
        if c > fit:
            if not self.chunked or fit <= 0:
                return 0
            c = fit
        nb = -(-(ctx + c) // kv.block_size)
        kv.free -= nb - have
        st.blocks[i] = nb
        return c

    def _admit(self, q, st, now: float, budget: int, chunks: list) -> int:
        """Admit waiting requests of ``q`` FCFS, their first chunks appended to ``chunks``, while ``budget``
        tokens, ``max_batch`` and free KV blocks allow; returns the budget left."""
        kv, run, waiting = q.kv, q.running, q.waiting
        while waiting and budget > 0 and len(run) < self.max_batch:
            i = waiting[0]
            if drop_if_unfit(kv, st, i):
                waiting.popleft()
                continue
            c = self._chunk(i, budget, not chunks, st, kv)
            if not c:
                break
            waiting.popleft()
            run.append(i)
            st.status[i] = STATUS_RUNNING
            if st.scheduled[i] != st.scheduled[i]:  # NaN: first time scheduled
                st.scheduled[i] = now
            chunks.append((i, c))
            budget -= c
        return budget

    # ---------------------------------------------------------------- one iteration
    @staticmethod
    def decode_all(queues, st, step_tokens: int = 1):
        """Fast path for an instance of several ranks (``queues``) that all just decode: when no queue
        has a waiting request or a partial prefill and every queue has the KV blocks its decodes need
        (``step_tokens`` each, see :attr:`step_tokens`), allocate those blocks and return ``(decoding
        requests in queue order, decodes per queue)``; otherwise ``None`` with nothing changed. The same
        batches :meth:`schedule` forms queue by queue, with a few array operations for the whole instance."""
        run = []
        for q in queues:
            if q.waiting:
                return None
            run += q.running
        if not run:
            return None
        r = np.fromiter(run, np.int64, len(run))
        if st.pf_left[r].any():
            return None
        if step_tokens > 1:
            return _decode_all_steps(queues, st, r, step_tokens)
        grow = r[(st.ctx[r] % queues[0].kv.block_size) == 0]
        if len(grow):
            need = np.bincount(st.rank[grow], minlength=len(queues)).tolist()
            if any(n > q.kv.free for n, q in zip(need, queues)):
                return None
            st.blocks[grow] += 1
            for n, q in zip(need, queues):
                q.kv.free -= n
        return r, [len(q.running) for q in queues]

    def schedule(self, q, st, now: float):
        kv = q.kv
        bs = kv.block_size
        while True:
            run = q.running
            if run:
                r = np.fromiter(run, np.int64, len(run))
                dmask = st.pf_left[r] == 0
                dec = r[dmask]
                if self.step_tokens == 1:
                    grow = (st.ctx[dec] % bs) == 0
                    need = int(np.count_nonzero(grow))
                else:
                    grow = step_blocks(st, dec, bs, self.step_tokens)
                    need = int(grow.sum())
                if need > kv.free:
                    self.preempt_last(q, st)
                    continue
            else:
                r = dec = np.empty(0, np.int64)
                dmask = np.empty(0, bool)
                grow = dec
                need = 0
            if need:
                if self.step_tokens == 1:
                    st.blocks[dec[grow]] += 1
                else:
                    st.blocks[dec] += grow
                kv.free -= need
            budget = self.token_budget - len(dec) * self.step_tokens
            chunks = []
            if len(dec) < len(r):
                for i in r[~dmask].tolist():
                    if budget <= 0:
                        break
                    c = self._chunk(i, budget, not chunks, st, kv)
                    if c:
                        chunks.append((i, c))
                        budget -= c
            self._admit(q, st, now, budget, chunks)
            if len(dec) or chunks:
                return dec, chunks
            if run:  # only stalled prefills holding the cache: free some and retry
                self.preempt_last(q, st)
                continue
            return None


def _decode_all_steps(queues, st, r: np.ndarray, step_tokens: int):
    """:meth:`ChunkedFCFS.decode_all` for decodes ``r`` that write ``step_tokens`` tokens each."""
    grow = step_blocks(st, r, queues[0].kv.block_size, step_tokens)
    if grow.any():
        need = np.bincount(st.rank[r], weights=grow, minlength=len(queues)).astype(np.int64).tolist()
        if any(n > q.kv.free for n, q in zip(need, queues)):
            return None
        st.blocks[r] += grow
        for n, q in zip(need, queues):
            q.kv.free -= n
    return r, [len(q.running) for q in queues]


@register_scheduler("whole-prompt")
class WholePrompt(ChunkedFCFS):
    """Continuous batching without chunking prompts; see module docstring."""

    chunked = False


@register_scheduler("prefill-first")
class PrefillFirst(ChunkedFCFS):
    """SGLang's order (no mixed chunks): whenever prompt chunks can run, an iteration runs only them
    (unfinished prompts first, then waiting ones FCFS, up to the token budget) and the decodes wait;
    otherwise the running requests decode as under ``chunked``."""

    #: the same batches as ``chunked`` when every rank just decodes (it returns None when any prompt waits)
    decode_all = staticmethod(ChunkedFCFS.decode_all)

    def schedule(self, q, st, now: float):
        chunks = self._prefill(q, st, now)
        return (np.empty(0, np.int64), chunks) if chunks else super().schedule(q, st, now)

    def _prefill(self, q, st, now: float) -> list:
        """The ``(request, tokens)`` chunks of a prefill-only batch of ``q`` (empty: none can run)."""
        run = q.running
        if run:
            r = np.fromiter(run, np.int64, len(run))
            partial = r[st.pf_left[r] > 0].tolist()
        else:
            partial = []
        if not (q.waiting or partial):
            return []
        budget, chunks = self.token_budget, []
        for i in partial:
            c = self._chunk(i, budget, not chunks, st, q.kv) if budget > 0 else 0
            if c:
                chunks.append((i, c))
                budget -= c
        self._admit(q, st, now, budget, chunks)
        return chunks


def step_blocks(st, dec: np.ndarray, bs: int, step_tokens: int) -> np.ndarray:
    """KV blocks each decode in ``dec`` must add to write this step's ``step_tokens`` tokens (no more than
    it has left to generate), ``bs`` tokens per block (int array)."""
    new = np.minimum(step_tokens, st.target[dec] - st.gen[dec])
    return np.maximum(0, -(-(st.ctx[dec] + new) // bs) - st.blocks[dec])


def fast_decode(policy):
    """``policy.decode_all`` when it forms the same batches as the policy's ``schedule``, i.e. it is
    defined where ``schedule`` is or below (a subclass overriding only ``schedule`` gets None: its
    queues are scheduled one by one)."""
    mro = type(policy).__mro__

    def owner(name):
        return next((c for c in mro if name in c.__dict__), None)

    d, sch = owner("decode_all"), owner("schedule")
    return policy.decode_all if d is not None and sch is not None and issubclass(d, sch) else None


def make_scheduler(name: str, max_batch: int, token_budget: int):
    cls = SCHEDULERS.get(name)
    if cls is None:
        raise SpecError("scheduler", name, "allowed: " + ", ".join(SCHEDULERS))
    return cls(max_batch=max_batch, token_budget=token_budget)
