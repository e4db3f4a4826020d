"""Redundant experts placed by an expert-parallel load balancer (EPLB), as DeepSeek-V3 serves.

An EP group of ``ep`` GPUs holds ``n_experts + redundant`` expert *slots*, ``(n_experts + redundant) /
ep`` per GPU. The balancer (after DeepSeek's EPLB) works from the expected load of every expert, the
routing distribution's probabilities (EPLB uses recent load statistics; this is the oracle version):

1. replicas: each of the ``redundant`` extra slots goes, one at a time, to the expert whose load
   per replica is highest;
2. packing: replicas, heaviest first, go to the GPU with the least load that still has a free slot.

A token's choice of expert e goes to one of e's replicas at random (each carries 1/c_e of e's load).

Models with expert groups (``n_group`` > 1, DeepSeek-V3) whose EP group spans several whole nodes, with
n_group and the redundant slots each a multiple of that node count, are balanced hierarchically, as
DeepSeek's EPLB does for group-limited routing: whole groups are packed onto nodes first (heaviest
group to the lightest node with room), then each node replicates and packs its own experts over its
GPUs as above. A group's experts and all their replicas then stay on one node, so a token reaches
at most ``topk_group`` nodes. Otherwise the flat balancer above may split a group over nodes.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SlotMap:
    """Where each expert's replicas live. Slots are numbered GPU by GPU: slot s is on GPU s // per_gpu."""

    per_gpu: int
    start: np.ndarray  # (E,) first index into ``slots`` of expert e's replicas
    count: np.ndarray  # (E,) replicas of expert e
    slots: np.ndarray  # (E + redundant,) slot ids, grouped by expert

    def assign(self, choices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Slot of every expert choice (same shape as ``choices``): one of its expert's replicas at random."""
        c = self.count[choices]
        pick = (rng.random(choices.shape) * c).astype(np.int64)
        return self.slots[self.start[choices] + np.minimum(pick, c - 1)]

    @property
    def n_slots(self) -> int:
        return len(self.slots)


def balance(probs: np.ndarray, redundant: int, ep: int, gpus_per_node: int | None = None,
            n_group: int = 1) -> SlotMap:
    """Replicate and pack the experts of one layer (``probs``: (E,) expected shares) over ``ep`` GPUs
    (GPU j of the EP group on its node j // gpus_per_node); hierarchical by node for grouped experts."""
    nodes = ep // gpus_per_node if gpus_per_node and ep > gpus_per_node and ep % gpus_per_node == 0 else 1
    if n_group > 1 and nodes > 1 and n_group % nodes == 0 and int(redundant) % nodes == 0:
        return _balance_by_node(probs, int(redundant), ep, nodes, n_group)
    return _balance_flat(probs, redundant, ep)


def _balance_by_node(probs: np.ndarray, redundant: int, ep: int, nodes: int, n_group: int) -> SlotMap:
    """Groups packed onto nodes (n_group / nodes each), then :func:`_balance_flat` inside every node."""
    E = probs.shape[0]
    m = E // n_group
    mass = probs.reshape(n_group, m).sum(axis=1)
    node_of = np.empty(n_group, dtype=np.int64)
    heap = [(0.0, j) for j in range(nodes)]  # (load, node) of nodes with room for a group
    room = [n_group // nodes] * nodes
    for g in np.lexsort((np.arange(n_group), -mass)).tolist():  # heaviest group first, ties: lower id
        load, j = heapq.heappop(heap)
        node_of[g] = j
        room[j] -= 1
        if room[j]:
            heapq.heappush(heap, (load + float(mass[g]), j))
    per_node = (E + redundant) // nodes  # slots on one node
    owner, slot = [], []
    for j in range(nodes):
        experts = (np.flatnonzero(node_of == j)[:, None] * m + np.arange(m)).ravel()
        sub = _balance_flat(probs[experts], redundant // nodes, ep // nodes)
        owner.append(np.repeat(experts, sub.count))
        slot.append(sub.slots + j * per_node)
    owner, slot = np.concatenate(owner), np.concatenate(slot)
    order = np.argsort(owner, kind="stable")
    count = np.bincount(owner, minlength=E)
    start = np.zeros(E, dtype=np.int64)
    start[1:] = np.cumsum(count)[:-1]
    return SlotMap(per_node * nodes // ep, start, count, slot[order])


def _balance_flat(probs: np.ndarray, redundant: int, ep: int) -> SlotMap:
    """Replicate and pack the experts of one layer over ``ep`` GPUs, regardless of nodes."""
    E = probs.shape[0]
    n = E + int(redundant)
    if n % ep:
        raise ValueError(f"{E} experts + {redundant} redundant slots do not split over {ep} GPUs")
    per_gpu = n // ep
    count = np.ones(E, dtype=np.int64)
    for _ in range(int(redundant)):
        count[int(np.argmax(probs / count))] += 1
    # replicas, heaviest first (ties: lower expert id first, so a uniform layer keeps experts in order)
    owner = np.repeat(np.arange(E), count)
    load = probs[owner] / count[owner]
    order = np.lexsort((owner, -load))
    heap = [(0.0, g) for g in range(ep)]  # (load, gpu) of GPUs with a free slot; ties: lowest GPU
    used = [0] * ep
    slot_of = np.empty(n, dtype=np.int64)  # replica -> slot
    for r in order.tolist():
        g_load, g = heapq.heappop(heap)
        slot_of[r] = g * per_gpu + used[g]
        used[g] += 1
        if used[g] < per_gpu:
            heapq.heappush(heap, (g_load + float(load[r]), g))
    start = np.zeros(E, dtype=np.int64)
    start[1:] = np.cumsum(count)[:-1]
    return SlotMap(per_gpu, start, count, slot_of)
