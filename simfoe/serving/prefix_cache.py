"""Prefix caching in the serving engine: one block cache per KV pool (per instance, or per DP attention
rank where ranks have their own KV), inside that pool's memory, with LRU eviction.

Requests carry prefix block ids (:class:`Prefixes`: a trace's ``hash_ids``, Mooncake's of 512 tokens,
or a synthetic multi-turn workload's). A block id names a whole prefix (the id of block j depends on
blocks 0..j), so the cache is a radix tree of blocks: a request hits the longest run of its leading ids
the cache holds.

* Lookup, when a request is first given a prefill chunk (and again after a preemption): the hit
  blocks are pinned (never evicted while a request uses them), the request's context starts after
  them and its prefill shrinks by the hit tokens, at most its prompt less one (the last position
  is computed for its logits). Attention still counts the cached context: a chunk's causal pairs
  are ``c (context + (c + 1) / 2)``.
* Insertion, when a prompt's prefill completes: its whole blocks join the cache, pinned by it; a
  block that a concurrent request already inserted is shared, and its own copy freed.
* Release, when a request finishes or is preempted: the whole blocks of what it generated join the
  cache too where its row names them (a multi-turn workload's rows do, a Mooncake trace's cover the
  prompt only); its own blocks are freed, its cached blocks unpinned; unpinned blocks stay cached,
  the deepest first in LRU order, so a prefix is evicted leaf first.
* Memory: cached unpinned blocks count as free in the pool (``KVBlocks.free``: what the scheduler
  may allocate); whenever allocations have handed out more than is truly free, the least recently
  used unpinned blocks are evicted, lazily: before every lookup or insertion and in
  :meth:`PrefixCache.usage` (releases add as much to the free blocks as to the cached ones, so the
  same blocks go as had they gone at the allocation). So free + cached + used = capacity, with
  ``used`` the blocks of running requests.

Costs grow with requests and their blocks, not with tokens: a few dict operations per block.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from simfoe.errors import SpecError


@dataclass(frozen=True)
class Prefixes:
    """Prefix block ids of every request row: row ``i``'s are ``ids[offsets[i]:offsets[i + 1]]``, each
    standing for ``block_tokens`` prompt tokens (the last block of a prompt may be partial)."""

    offsets: np.ndarray  # int64, n + 1
    ids: np.ndarray  # int64
    block_tokens: int

    @staticmethod
    def of(requests) -> Prefixes | None:
        """The prefix ids of a request table (None when it has none)."""
        off = getattr(requests, "hash_offsets", None)
        if off is None:
            return None
        return Prefixes(np.asarray(off, np.int64), np.asarray(requests.hash_ids, np.int64),
                        int(requests.hash_block_tokens))

    def row(self, i: int) -> list[int]:
        return self.ids[self.offsets[i]:self.offsets[i + 1]].tolist()


@dataclass(frozen=True)
class KVUsage:
    """Blocks of one pool: truly free, cached (unpinned prefix blocks, evictable), pinned (prefix blocks
    that requests use)."""

    free: int
    cached: int
    pinned: int


class PrefixCache:
    """The prefix cache of one KV pool ``kv`` (a :class:`simfoe.serving.kv_cache.KVBlocks`); see module
    docstring. Request state lives in the engine's store: ``blocks`` (KV blocks its context spans),
    ``shared`` (how many of its leading prefix blocks it pins), ``hit`` (tokens hit at its first prefill)."""

    def __init__(self, kv, prefixes: Prefixes):
        h, bs = prefixes.block_tokens, kv.block_size
        if h % bs:
            raise SpecError("block_size", bs, f"a divisor of the workload's prefix block of {h} tokens "
                            "(prefix caching keeps whole prefix blocks in KV blocks)")
        self.kv = kv
        self.prefixes = prefixes
        self.block_tokens = h
        self.per = h // bs  # KV blocks per prefix block
        self.refs: dict[int, int] = {}  # prefix block id -> requests pinning it
        self.lru: OrderedDict[int, None] = OrderedDict()  # unpinned ids, least recently used first
        self.cached = 0  # KV blocks of unpinned ids (counted in kv.free)
        self.evicted = 0  # KV blocks evicted

    def _settle(self) -> None:
        """Evict least recently used unpinned blocks until what is cached is truly free."""
        kv, lru, refs = self.kv, self.lru, self.refs
        while self.cached > kv.free:
            key, _ = lru.popitem(last=False)
            del refs[key]
            self.cached -= self.per
            self.evicted += self.per

    def match(self, i: int) -> int:
        """Leading prefix blocks of request row ``i`` the cache holds."""
        self._settle()
        refs, m = self.refs, 0
        for key in self.prefixes.row(i):
            if key not in refs:
                break
            m += 1
        return m

    def match_rate(self, i: int) -> float:
        """Share of request row ``i``'s prefix blocks that :meth:`match` finds (0 for a row without any)."""
        n = int(self.prefixes.offsets[i + 1] - self.prefixes.offsets[i])
        return self.match(i) / n if n else 0.0

    def lookup(self, i: int, st) -> bool:
        """Request ``i``, holding no KV, is about to prefill: pin its cached prefix and start its context
        after it (``st.ctx``, ``pf_left``, ``blocks``, ``shared``; ``hit`` at its first prefill). True on a hit."""
        total = int(st.pf_left[i])
        m = min(self.match(i), total // self.block_tokens)  # whole blocks of what it has to prefill
        hit = min(m * self.block_tokens, total - 1)
        if st.scheduled[i] != st.scheduled[i]:  # NaN: its first prefill
            st.hit[i] = hit
        if not m:
            return False
        refs, lru, per = self.refs, self.lru, self.per
        for key in self.prefixes.row(i)[:m]:
            if refs[key] == 0:  # unpinned: from the cached blocks to the used ones
                del lru[key]
                self.cached -= per
                self.kv.free -= per
            refs[key] += 1
        st.shared[i] = m
        st.blocks[i] = m * per
        st.ctx[i] = hit
        st.pf_left[i] = total - hit
        return True

    def undo(self, i: int, st) -> None:
        """Undo :meth:`lookup` for request ``i``, which was not given its chunk after all (it waits)."""
        self.release(i, st)
        st.pf_left[i] += st.ctx[i]
        st.ctx[i] = 0

    def insert(self, i: int, st) -> None:
        """Request ``i``'s context (``st.ctx``) holds more whole prefix blocks than it pins: they join the
        cache, pinned by it (when its prompt is prefilled, and before it releases its blocks; a row's ids
        may go past its prompt into its output, as a multi-turn workload's do)."""
        self._settle()  # an id evicted by earlier allocations is not there to share
        have = int(st.shared[i])
        ids = self.prefixes.row(i)[have:int(st.ctx[i]) // self.block_tokens]
        refs, lru, per, kv = self.refs, self.lru, self.per, self.kv
        for key in ids:
            n = refs.get(key)
            if n is None:  # its own blocks become the cached copy
                refs[key] = 1
                continue
            if n == 0:  # a cached copy exists: it is pinned again, and this request's copy freed
                del lru[key]
                self.cached -= per
                kv.free -= per
            refs[key] = n + 1
            kv.free += per
        st.shared[i] = have + len(ids)

    def release(self, i: int, st) -> None:
        """Request ``i`` finished or is preempted: free its own blocks, unpin its cached ones (deepest
        first into the LRU order)."""
        self.insert(i, st)  # whole blocks of what it generated, where its row names them
        m = int(st.shared[i])
        per, refs, lru = self.per, self.refs, self.lru
        freed = int(st.blocks[i]) - m * per
        for key in reversed(self.prefixes.row(i)[:m]):
            n = refs[key] - 1
            refs[key] = n
            if n == 0:
                lru[key] = None
                self.cached += per
                freed += per
        self.kv.free += freed
        st.blocks[i] = 0
        st.shared[i] = 0

    def usage(self) -> KVUsage:
        """Blocks of the pool now (after evicting what allocations claimed): truly free, cached (unpinned)
        and pinned (prefix blocks requests use; their other blocks are the rest of the pool)."""
        self._settle()
        pinned = sum(1 for n in self.refs.values() if n > 0)
        return KVUsage(self.kv.free - self.cached, self.cached, pinned * self.per)
