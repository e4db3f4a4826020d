"""A layer's program as plain data, and the one dispatcher that prices its collective steps.

A program is a list of steps every GPU walks in order (``simfoe.forward.plan`` builds them,
``simfoe.forward.simulate`` runs them):

* :class:`Compute`: GPU-local work of one breakdown category, seconds per GPU;
* :class:`Collective`: one collective (kind, groups of global ranks, what each group moves, algorithm).

:func:`run_step` is the only place a collective step becomes flows on the fabric: it hands the step
to its algorithm (``simfoe.costs.collectives`` for NCCL collectives, which owns protocol choice,
per-step latency and the effective rates derived once from the hardware spec in
:func:`simfoe.costs.collectives.rates`; ``simfoe.costs.dispatch`` for MoE dispatch and combine,
which owns DeepEP/NCCL kernel terms). Bytes are accounted under ``all_to_all`` for all-to-all,
dispatch and combine, else under ``all_reduce`` (reduce-scatter + all-gather move one all-reduce's bytes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simfoe.costs import collectives as coll
from simfoe.costs import dispatch as D
from simfoe.errors import SpecError
from simfoe.fabric.flows import FlowNetwork

#: collective kinds a program may hold; what ``Collective.sizes`` holds per group for each
KINDS = {
    "all_reduce": "bytes per GPU",
    "reduce_scatter": "bytes per GPU (each keeps 1/n)",
    "all_gather": "bytes per rank",
    "all_to_all": "(n, n) bytes matrix",
    "dispatch": "DispatchTraffic (token copies)",
    "combine": "DispatchTraffic (token copies, the dispatch's)",
    "delay": "seconds (a collective of known duration, no flows)",
}


@dataclass(frozen=True, eq=False)
class Compute:
    """GPU-local work: ``seconds[g]`` on GPU g (s), counted under breakdown ``category``. ``independent``:
    it needs none of the collectives launched before it (shared experts beside the dispatch), so with two
    micro-batches it runs while they are in flight; one batch runs every step in order."""

    category: str
    seconds: np.ndarray  # (G,)
    independent: bool = False


@dataclass(frozen=True, eq=False)
class Collective:
    """One collective: each group of ``groups`` (arrays of global ranks) runs it once all its members
    have arrived, moving ``sizes[i]`` (see :data:`KINDS`) with ``algorithm``; dispatch and combine copies
    are ``token_bytes`` each. ``sm_share``: share of each member GPU's SMs its kernels hold while in flight."""

    kind: str
    category: str
    groups: tuple
    sizes: tuple
    algorithm: str = "auto"
    token_bytes: float = 0.0
    sm_share: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SpecError("collective kind", self.kind, "one of " + ", ".join(KINDS))
        if len(self.sizes) != len(self.groups):
            raise SpecError("collective sizes", len(self.sizes), f"one per group ({len(self.groups)})")

    @property
    def tag(self) -> str:
        """Byte-accounting tag: ``all_to_all`` (all-to-all, dispatch, combine) or ``all_reduce``."""
        return "all_to_all" if self.kind in ("all_to_all", "dispatch", "combine") else "all_reduce"


def run_step(net: FlowNetwork, step: Collective, gi: int):
    """SimPy process body: group ``gi`` of ``step`` runs its collective on ``net``."""
    group, size, tag = step.groups[gi], step.sizes[gi], step.tag
    if step.kind == "all_reduce":
        yield from coll.all_reduce(net, group, size, step.algorithm, tag)
    elif step.kind == "reduce_scatter":
        yield from coll.reduce_scatter(net, group, size, step.algorithm, tag)
    elif step.kind == "all_gather":
        yield from coll.all_gather(net, group, size, step.algorithm, tag)
    elif step.kind == "all_to_all":
        yield from coll.all_to_all(net, group, size, step.algorithm, tag)
    elif step.kind == "delay":
        yield net.env.timeout(size)
    else:
        yield from D.exchange(net, group, size, step.token_bytes, step.algorithm, step.kind, tag)
