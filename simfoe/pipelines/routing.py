"""Routing policies: which instance of a stage gets an item.

A policy answers two questions: ``pick(stage, request)`` for an item at a stateless stage, and
``pick_agg(stage, agg)`` for the *first* item of an aggregate at a stateful stage. The engine pins
every later item of that aggregate to the same instance, so aggregation is correct under every
policy; policies differ in how they spread load.

- ``round-robin``: next instance in turn (aggregates: placed in turn, then pinned).
- ``hash-all``: hash(request_id) % n on every stage (ALTO's prototype, paper section 2/4.2).
- ``aggregation-aware``: hash of the aggregation key on stateful stages, round-robin elsewhere
  (the per-stage constraint routing ALTO section 3.1 argues for).
- ``least-loaded``: the instance with the fewest items queued or in service.
- ``prompt-aware``: on LM stages a request sticks to its prompt type's home instance (prefix-cache
  locality) unless that instance's queue holds more than ``spill_queue`` items, then least-loaded;
  least-loaded on other stateless stages; key hashing on stateful stages (ALTO section 6.2, not built there).
"""
from __future__ import annotations

from typing import Protocol

from simfoe.errors import SpecError
from simfoe.registry import registrar

#: routing policies by name (the house registry: :func:`simfoe.registry.registrar`)
POLICIES: dict[str, type] = {}
register_policy = registrar(POLICIES)

_MASK = (1 << 64) - 1


def mix(x: int) -> int:
    """64-bit integer hash (splitmix64 finaliser); deterministic across runs, unlike str hashes."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class _Inst(Protocol):
    queue: object
    busy: int


def least_loaded(insts: list, start: int = 0):
    """Instance with the fewest items queued + in service; ties go to the first from ``start``."""
    n = len(insts)
    best = insts[start % n]
    best_load = len(best.queue) + best.busy
    for k in range(1, n):
        inst = insts[(start + k) % n]
        load = len(inst.queue) + inst.busy
        if load < best_load:
            best, best_load = inst, load
    return best


class Policy:
    name = ""

    def __init__(self, spill_queue: int = 4):
        self.spill_queue = spill_queue

    def pick(self, st, req):  # stateless stage
        raise NotImplementedError

    def pick_agg(self, st, agg):  # first item of an aggregate on a stateful stage
        raise NotImplementedError


def _rr(st):
    i = st.rr
    st.rr = i + 1
    return st.instances[i % len(st.instances)]


@register_policy("round-robin")
class RoundRobin(Policy):

    def pick(self, st, req):
        return _rr(st)

    def pick_agg(self, st, agg):
        return _rr(st)


@register_policy("hash-all")
class HashAll(Policy):

    def pick(self, st, req):
        return st.instances[req.h % len(st.instances)]

    def pick_agg(self, st, agg):
        return st.instances[agg.req.h % len(st.instances)]


@register_policy("aggregation-aware")
class AggregationAware(Policy):

    def pick(self, st, req):
        return _rr(st)

    def pick_agg(self, st, agg):
        return st.instances[mix(hash(agg.key)) % len(st.instances)]


@register_policy("least-loaded")
class LeastLoaded(Policy):

    def pick(self, st, req):
        st.rr += 1
        return least_loaded(st.instances, st.rr)

    def pick_agg(self, st, agg):
        st.rr += 1
        return least_loaded(st.instances, st.rr)


@register_policy("prompt-aware")
class PromptAware(Policy):

    def pick(self, st, req):
        if st.spec.kind == "lm":
            home = st.instances[req.ptype % len(st.instances)]
            if len(home.queue) <= self.spill_queue:
                return home
        st.rr += 1
        return least_loaded(st.instances, st.rr)

    def pick_agg(self, st, agg):
        return st.instances[mix(hash(agg.key)) % len(st.instances)]


def make_policy(name: str, spill_queue: int = 4, field: str = "routing") -> Policy:
    """Policy ``name``; an unknown name is a SpecError naming ``field``."""
    if name not in POLICIES:
        raise SpecError(field, name, f"one of {', '.join(POLICIES)}")
    return POLICIES[name](spill_queue)
