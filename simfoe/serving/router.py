"""Routers: which data-parallel replica, or which DP attention rank of an instance, receives an
arriving request (registry by name). A router picks among objects with ``outstanding(w)``: the
requests they hold running plus ``w`` x those waiting."""
from __future__ import annotations

from simfoe.errors import SpecError
from simfoe.registry import registrar

ROUTERS: dict[str, type] = {}


register_router = registrar(ROUTERS)


@register_router("round-robin")
class RoundRobin:
    """Target ``k mod R`` for the k-th arrival (SGLang's default DP attention balancing)."""

    def __init__(self, n: int):
        self.n = n
        self.k = -1

    def pick(self, replicas, i: int) -> int:
        self.k = (self.k + 1) % self.n
        return self.k


@register_router("least-outstanding")
class LeastOutstanding:
    """Target with the fewest requests waiting or running (lowest index on ties)."""

    waiting_weight = 1

    def __init__(self, n: int):
        self.n = n

    def pick(self, targets, i: int) -> int:
        best, load = 0, None
        w = self.waiting_weight
        for k, r in enumerate(targets):
            o = r.outstanding(w)
            if load is None or o < load:
                best, load = k, o
        return best


@register_router("vllm-lb")
class VllmLoadBalance(LeastOutstanding):
    """Target with the lowest ``4 x waiting + running`` (lowest index on ties): the score of vLLM v1's
    data-parallel load balancer (DPLBAsyncMPClient), on live counts (vLLM's are refreshed every 100 ms)."""

    waiting_weight = 4


def make_router(name: str, n: int, field: str = "router"):
    """Router ``name`` over ``n`` targets; an unknown name is a SpecError naming ``field``."""
    cls = ROUTERS.get(name)
    if cls is None:
        raise SpecError(field, name, "allowed: " + ", ".join(ROUTERS))
    return cls(n)
