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


@register_router("cache-aware")
class CacheAware:
    """SGLang's cache-aware routing (its model gateway's ``cache_aware`` policy) on targets with
    ``prefix_match(i)``, the share of request ``i``'s prefix blocks their prefix cache holds: while the
    loads (waiting + running requests) are imbalanced, the least loaded target; else the target with
    the longest match when that exceeds ``CACHE_THRESHOLD``, otherwise the least loaded (SGLang: the
    target with the smallest cache tree). Ties: the lower load, then the lower index."""

    #: defaults of SGLang's model gateway (lightseekorg/smg, docs/getting-started/load-balancing.md):
    #: --cache-threshold 0.3, --balance-abs-threshold 64, --balance-rel-threshold 1.5
    CACHE_THRESHOLD = 0.3
    BALANCE_ABS = 64
    BALANCE_REL = 1.5

    def __init__(self, n: int):
        self.n = n

    def pick(self, targets, i: int) -> int:
        loads = [t.outstanding(1) for t in targets]
        lo, hi = min(loads), max(loads)
        least = loads.index(lo)
        if hi - lo > self.BALANCE_ABS and hi > lo * self.BALANCE_REL:
            return least
        rates = [t.prefix_match(i) for t in targets]
        best = min(range(len(targets)), key=lambda k: (-rates[k], loads[k], k))
        return best if rates[best] > self.CACHE_THRESHOLD else least


def make_router(name: str, n: int, field: str = "router"):
    """Router ``name`` over ``n`` targets; an unknown name is a SpecError naming ``field``."""
    cls = ROUTERS.get(name)
    if cls is None:
        raise SpecError(field, name, "allowed: " + ", ".join(ROUTERS))
    return cls(n)
