"""Routers: which data-parallel replica receives an arriving request (registry by name)."""
from __future__ import annotations

from simfoe.errors import SpecError
from simfoe.registry import registrar

ROUTERS: dict[str, type] = {}


register_router = registrar(ROUTERS)


@register_router("round-robin")
class RoundRobin:
    """Replica ``k mod R`` for the k-th arrival."""

    def __init__(self, n: int):
        self.n = n
        self.k = -1

    def pick(self, replicas, i: int) -> int:
        self.k = (self.k + 1) % self.n
        return self.k


@register_router("least-outstanding")
class LeastOutstanding:
    """Replica with the fewest requests waiting or running (lowest index on ties)."""

    def __init__(self, n: int):
        self.n = n

    def pick(self, replicas, i: int) -> int:
        best, load = 0, None
        for k, r in enumerate(replicas):
            o = len(r.waiting) + len(r.running)
            if load is None or o < load:
                best, load = k, o
        return best


def make_router(name: str, n: int):
    cls = ROUTERS.get(name)
    if cls is None:
        raise SpecError("router", name, "allowed: " + ", ".join(ROUTERS))
    return cls(n)
