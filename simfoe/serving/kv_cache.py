"""Paged KV cache of one model instance: fixed-size blocks of tokens, counted (not addressed).

Capacity in tokens comes from the forward model (HBM minus weights minus reserve, for the
instance's per-GPU layout); the engine only needs how many blocks are free.
"""
from __future__ import annotations

from simfoe.errors import SpecError


class KVBlocks:
    """``total`` blocks of ``block_size`` tokens; ``free`` is updated by the scheduler."""

    __slots__ = ("block_size", "total", "free")

    def __init__(self, capacity_tokens: int, block_size: int = 16):
        if not (isinstance(block_size, int) and block_size >= 1):
            raise SpecError("block_size", block_size, "an integer >= 1 (tokens per KV block)")
        total = int(capacity_tokens) // block_size
        if total < 1:
            raise SpecError("kv_capacity_tokens", capacity_tokens,
                            f">= one block of {block_size} tokens: weights leave no HBM for the KV cache; "
                            "use more GPUs per instance (--nodes) or a larger GPU")
        self.block_size = block_size
        self.total = total
        self.free = total

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold ``tokens`` tokens."""
        return -(-int(tokens) // self.block_size)

    @property
    def used_fraction(self) -> float:
        return (self.total - self.free) / self.total
