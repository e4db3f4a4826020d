"""Paged KV cache of one model instance, or of one of its DP attention ranks: fixed-size blocks of
tokens, counted (not addressed).

Capacity in tokens comes from the forward model (HBM minus weights minus reserve, for the
instance's per-GPU layout); the engine only needs how many blocks are free. An instance with
``ranks`` data-parallel attention ranks has one pool per rank, each an equal share of the
instance's capacity: a request's KV lives on the rank that serves it.
"""
from __future__ import annotations

from simfoe.errors import SpecError


class KVBlocks:
    """One rank's pool: ``total`` blocks of ``block_size`` tokens, a ``1/ranks`` share of an
    instance holding ``capacity_tokens``; ``free`` is updated by the scheduler."""

    __slots__ = ("block_size", "total", "free", "cache")

    def __init__(self, capacity_tokens: int, block_size: int = 16, ranks: int = 1):
        if not (isinstance(block_size, int) and block_size >= 1):
            raise SpecError("block_size", block_size, "an integer >= 1 (tokens per KV block)")
        cap = int(capacity_tokens)
        rank_cap = cap // max(1, int(ranks))
        if rank_cap >= 1 and block_size > rank_cap:
            of = "one DP attention rank" if ranks > 1 else "one instance"
            raise SpecError("block_size", block_size, f"at most the KV cache of {of}, {rank_cap} tokens")
        if rank_cap < 1:
            raise SpecError("kv_capacity_tokens", capacity_tokens,
                            f">= one block of {block_size} tokens per rank: weights leave no HBM for the KV cache; "
                            "use more GPUs per instance (--nodes) or a larger GPU")
        self.block_size = block_size
        self.total = rank_cap // block_size
        self.free = self.total
        #: the pool's prefix cache (simfoe.serving.prefix_cache.PrefixCache; None: no prefix caching);
        #: its unpinned cached blocks count as free
        self.cache = None

    @property
    def capacity_tokens(self) -> int:
        """Tokens this pool holds (whole blocks)."""
        return self.total * self.block_size

    def fits(self, tokens: int) -> bool:
        """Whether a request whose KV holds ``tokens`` tokens fits this pool when it is empty."""
        return self.blocks_for(tokens) <= self.total

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold ``tokens`` tokens."""
        return -(-int(tokens) // self.block_size)

    @property
    def used_fraction(self) -> float:
        return (self.total - self.free) / self.total
