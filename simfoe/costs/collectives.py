"""Collective algorithms as SimPy processes on a :class:`~simfoe.fabric.flows.FlowNetwork`.

Use as ``yield env.process(all_reduce(net, gpus, nbytes))``; ``gpus`` are global ranks. Every algorithm
becomes one or more batches of point-to-point flows that share links max-min fairly with whatever else
is on the fabric. Latency follows NCCL's own tuning model (src/graph/tuning.cc): a base latency per
collective plus a per-step hardware latency for each algorithm step (NVLink steps inside nodes, network
steps between them), for one of three protocols: Simple (``alpha_s``, ``hop_s``, full calibrated
bandwidth), LL and LL128 (their own base and per-step latencies, ``*_bandwidth_fraction`` of the rate).
Each collective takes the protocol whose estimated time alone is smallest; profiles with
``nvlink.nccl_protocol_choice`` run a one-domain ring (all-reduce ring, all-gather, reduce-scatter) on the protocol
NCCL's own tuner picks from its published constants (:func:`nccl_ring_protocol`), which can be the slower one, with a
per-step time floor for LL128 / Simple (:func:`_nccl_pick`). The base
latency is the ``network`` path's when the group spans nodes, else ``nvlink``'s; ``nvls`` for in-switch
reduction (Simple only, as in NCCL). Effective rates are derived once from the spec (:func:`rates`): the
links run at the ring's calibrated efficiency; NVLS, tree and all-to-all flows put ``link rate / own rate``
x their bytes on the wire.

A "node" below is an NVLink domain: one node unless the profile joins several (``node.gpus_per_nvlink_domain``,
GB200 NVL72), where NCCL's multi-node NVLink (MNNVL) runs its intra-node algorithms, NVLS included, across
the whole domain; a domain's NICs are those of its nodes.

Algorithms (S = bytes per GPU, n = group size, k = GPUs of the group per node, m = nodes spanned):

- ring all-reduce: pipelined; each GPU streams 2(n-1)/n*S to its ring successor; 2(n-1) steps.
  When the group spans nodes the data is split over ``c = min(k, nics_per_node)`` channels (rings), ring c
  starting at local GPU c of each node, so that every node-to-node hop of some channel leaves through a
  different NIC (as NCCL's multiple rings do).
- tree all-reduce: NCCL's tree: a chain inside each node and a double binary tree over the nodes (two
  complementary trees, chains and node order reversed, S/2 each, reduce up and broadcast down at once;
  across nodes split over channels like the ring); 0.92 x the ring's bus rate (NCCL); 2*(k-1 + ceil(log2 m))
  steps, 2*ceil(log2 m) of them network steps.
- nvls all-reduce: in-switch reduction (NVSwitch gen3, ``hw.node.nvswitch_reduction``), one node only.
  Each GPU sends S into the switch and receives S; modelled as S from each GPU to its neighbour at
  ``nvls.efficiency`` x NVLink line rate; latency ``nvls.alpha_s``.
- nvls_tree all-reduce (several nodes, same local GPUs on each): NVLS inside every node while, per rail j,
  a double binary tree over the nodes carries the S/k shard; latency ``nvls.alpha_s`` + 2 ceil(log2 m) x
  20.9 us (NCCL's NVLS-tree network latency); everything at once (pipelined).
- hierarchical all-reduce (several nodes, same local GPUs on each), pipelined: intra-node ring
  reduce-scatter and all-gather (2(k-1)/k*S per GPU on NVLink) at the same time as a ring all-reduce of
  each S/k shard over the rails (2(m-1)/m*S/k per GPU); one base latency plus 2(k-1) NVLink and 2(m-1)
  network steps.
- auto all-reduce (NCCL's tuner): every algorithm above that applies to the group
  (:func:`all_reduce_algorithms`) is timed alone on a fresh copy of the cluster (memoized) and the fastest
  is run, so ``auto`` is never slower alone than an algorithm simfoe models.
- all-gather / reduce-scatter: ring (multi-channel across nodes as above); (n-1) steps.
- ring copy step (profiles with ``nvlink.ring_copy_step`` = c, inside one NVLink domain): a ring of s link steps
  moves its bytes in (s + c) / s of the link time (:func:`_ring_copy_factor`: NCCL's receive-only last step of
  each chunk loop), so fewer GPUs reach a lower bus bandwidth.
- all-to-all direct: all pairs at once, one step; NVLink flows at ``all_to_all_nvlink_efficiency``. Inside
  one node, profiles that set ``all_to_all_alpha_s`` price NCCL's point-to-point kernel instead of the ring's
  protocols: LL when no peer gets more than 16 KiB, else Simple at that latency; ``all_to_all_channel_pool``
  splits the NVLink rate over the n peers, the GPU itself included ((n-1)/n of it), as NCCL splits its p2p
  channels (src/enqueue.cc).
  Hierarchical (PXN-like, rail-aligned): phase 1, every GPU (a, i) sends over NVLink all data for GPU
  (b, j) to its own node's GPU (a, j) (data for its own node goes straight to the destination); phase 2,
  GPU (a, j) sends the aggregate for (b, j) over rail j to (b, j). The data then already sits on its
  destination, so the third (intra-node distribution) phase of a generic hierarchical scheme is empty.
  Relayed bytes are counted again in phase 2 (they leave a GPU twice).

``predict(hw, collective, n_gpus, nbytes, algorithm, nodes)`` runs one collective alone on a fresh cluster
(validation); :func:`algorithms` lists the names it accepts per collective.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import simpy

from simfoe.errors import SpecError
from simfoe.fabric.flows import FlowNetwork
from simfoe.fabric.topology import build_cluster
from simfoe.specs.hardware import HardwareSpec

ALL_REDUCE_ALGORITHMS = ("auto", "ring", "tree", "nvls", "nvls_tree", "hierarchical")
ALL_TO_ALL_ALGORITHMS = ("direct", "hierarchical")
RING_ALGORITHMS = ("auto", "ring")
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")


# ---------------------------------------------------------------------------------------- helpers
def _group(net: FlowNetwork, gpus) -> np.ndarray:
    g = np.asarray(gpus, dtype=np.int64).ravel()
    if g.size == 0:
        raise SpecError("gpus", list(g), "a non-empty list of global GPU ranks")
    if np.unique(g).size != g.size:
        raise SpecError("gpus", g.tolist(), "distinct global GPU ranks")
    if g.min() < 0 or g.max() >= net.cluster.n_gpus:
        raise SpecError("gpus", g.tolist(), f"global ranks 0..{net.cluster.n_gpus - 1}")
    return g


def _nbytes(name: str, v) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise SpecError(name, v, "a number of bytes >= 0") from None
    if not math.isfinite(x) or x < 0:
        raise SpecError(name, v, "a number of bytes >= 0")
    return x


def _nics_per_domain(net: FlowNetwork) -> int:
    """NICs of one NVLink domain (nics_per_node x the nodes it joins)."""
    c = net.cluster
    return c.hw.network.nics_per_node * (c.gpus_per_domain // c.gpus_per_node)


def _spans_nodes(net: FlowNetwork, g: np.ndarray) -> bool:
    """Whether group ``g`` spans NVLink domains (nodes unless the profile joins several into one domain)."""
    nodes = g // net.cluster.gpus_per_domain
    return bool(nodes.min() != nodes.max())


def _path(net: FlowNetwork, g: np.ndarray):
    c = net.cluster.hw.collectives
    return c.network if _spans_nodes(net, g) else c.nvlink


def _n_nodes(net: FlowNetwork, g: np.ndarray) -> int:
    return int(np.unique(g // net.cluster.gpus_per_domain).size)


#: NCCL tuning-model constants (NVIDIA/nccl src/graph/tuning.cc, NCCL 2.29, read 2026-12-07): tree
#: all-reduce bus bandwidth = 0.92 x the ring's (``busBw * .92``); NVLS-tree latency per inter-node tree level
#: ``hwLat[NET][NVLS_TREE][Simple]`` = 20.9 us. The tree's per-step latencies are the profile's ring ones
#: (NCCL's differ by at most 0.65 us: NVLink Simple 4.0 vs 3.4, LL128 1.25 vs 1.9) so that profiles not
#: fitted to NCCL (gloo on CPUs) keep their own.
TREE_BW_FRACTION = 0.92
NVLS_TREE_NET_HOP_S = 20.9e-6


@dataclass(frozen=True)
class Rates:
    """Effective per-GPU rates (bytes/s per direction) of one hardware spec, derived once here.

    ``nvlink`` and ``network`` are the fabric's link capacities (line rate x the path's calibrated bus
    efficiency, the ring's); the other algorithms run their flows at their own rate on those links by
    putting ``link rate / own rate`` x their bytes on the wire (:meth:`wire`).
    """

    nvlink: float
    network: float
    nvls: float | None
    all_to_all_nvlink: float
    tree_nvlink: float

    def wire(self, own: float | None) -> float:
        """Wire factor of NVLink flows that achieve ``own`` bytes/s on links of rate ``nvlink``."""
        return self.nvlink / own if own else 1.0


def rates(hw: HardwareSpec) -> Rates:
    """The effective rates of ``hw`` (see :class:`Rates`)."""
    c = hw.collectives
    nv = hw.node.nvlink_bandwidth
    a2a = c.all_to_all_nvlink_efficiency or c.nvlink.efficiency
    return Rates(nvlink=hw.nvlink_rate, network=hw.nic_rate,
                 nvls=nv * c.nvls.efficiency if c.nvls is not None else None,
                 all_to_all_nvlink=nv * a2a, tree_nvlink=hw.nvlink_rate * TREE_BW_FRACTION)


@dataclass(frozen=True)
class Proto:
    """One NCCL protocol's latency terms and bandwidth share (see PathCalibration)."""

    name: str
    alpha_s: float
    hop_nvlink_s: float
    hop_network_s: float
    bw_fraction: float

    @property
    def wire_factor(self) -> float:
        return 1.0 / self.bw_fraction


def _path_protos(p, hop_nvlink: dict, hop_network: dict) -> list[Proto]:
    """Simple, LL and LL128 of path calibration ``p`` (those it calibrates), with the given per-step hops."""
    out = [Proto("simple", p.alpha_s, hop_nvlink["simple"], hop_network["simple"], 1.0)]
    if p.ll_alpha_s is not None:
        out.append(Proto("ll", p.ll_alpha_s, hop_nvlink["ll"], hop_network["ll"], p.ll_bandwidth_fraction))
    if p.ll128_alpha_s is not None:
        out.append(Proto("ll128", p.ll128_alpha_s, hop_nvlink["ll128"], hop_network["ll128"], p.ll128_bandwidth_fraction))
    return out


def _hops(cal) -> dict:
    return {"simple": cal.hop_s, "ll": cal.ll_hop_s, "ll128": cal.ll128_hop_s}


def protocols(net: FlowNetwork, g: np.ndarray) -> list[Proto]:
    """Simple, plus LL and LL128 where the group's path calibrates them (ring per-step latencies)."""
    c = net.cluster.hw.collectives
    return _path_protos(_path(net, g), _hops(c.nvlink), _hops(c.network))


def _steps_latency(p: Proto, steps: int, inter_steps: int) -> float:
    """NCCL tuning model: base + (steps - inter) NVLink hops + inter network hops."""
    return p.alpha_s + (steps - inter_steps) * p.hop_nvlink_s + inter_steps * p.hop_network_s


def _gpu_rate(net: FlowNetwork, g: np.ndarray, nvlink: float | None = None) -> float:
    """Achievable per-GPU rate of the group's slowest path class (bytes/s), for choosing a protocol;
    ``nvlink`` overrides the NVLink rate (an algorithm with its own efficiency)."""
    r = rates(net.cluster.hw)
    nv = r.nvlink if nvlink is None else nvlink
    return min(nv, r.network) if _spans_nodes(net, g) else nv


def _choose(net: FlowNetwork, g: np.ndarray, steps: int, inter_steps: int, per_gpu_bytes: float,
            rate: float | None = None, protos: list[Proto] | None = None) -> tuple[Proto, float]:
    """The protocol with the smallest estimated time for the collective alone, and its latency.

    ``rate``: per-GPU bytes/s (default: the group's ring rate); ``protos``: candidates (default: ring's).
    """
    rate = _gpu_rate(net, g) if rate is None else rate
    best = None
    for p in protocols(net, g) if protos is None else protos:
        lat = _steps_latency(p, steps, inter_steps)
        t = lat + per_gpu_bytes / (rate * p.bw_fraction)
        if best is None or t < best[2]:
            best = (p, lat, t)
    return best[0], best[1]


def _one_step(cal, rate: float, nbytes: float) -> tuple[float, float]:
    """(latency, wire factor) of a one-step transfer on path calibration ``cal``, fastest protocol."""
    hops = _hops(cal)
    best = min(_path_protos(cal, hops, hops), key=lambda p: p.alpha_s + p.hop_nvlink_s + nbytes / (rate * p.bw_fraction))
    return best.alpha_s + best.hop_nvlink_s, best.wire_factor


def _check_algo(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise SpecError(name, value, "one of " + ", ".join(allowed))


def _uniform_shape(net: FlowNetwork, g: np.ndarray):
    """(nodes, locals) matrix of the group when every node spanned holds the same local indices, else None."""
    dom = net.cluster.gpus_per_domain
    nodes = np.unique(g // dom)
    locs = [np.sort(g[g // dom == nd] % dom) for nd in nodes]
    if any(lc.size != locs[0].size or (lc != locs[0]).any() for lc in locs):
        return None
    return nodes[:, None] * dom + locs[0][None, :]


def _ring_orders(net: FlowNetwork, g: np.ndarray) -> list[np.ndarray]:
    """Ring orders (one per channel). Across nodes: nodes in order, channel c rotates each node's locals by c."""
    if not _spans_nodes(net, g):
        return [g]
    dom = net.cluster.gpus_per_domain
    nodes = np.unique(g // dom)
    per_node = [np.sort(g[g // dom == nd]) for nd in nodes]
    k = min(len(p) for p in per_node)
    channels = max(1, min(k, _nics_per_domain(net)))
    return [np.concatenate([np.roll(p, -c) for p in per_node]) for c in range(channels)]


@dataclass(frozen=True, eq=False)
class Flows:
    """One batch of point-to-point flows started together: global ranks, bytes (per flow or one for
    all), the batch's latency (s) and the wire factor of its bytes."""

    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray | float
    alpha_s: float
    wire_factor: float = 1.0


@dataclass(frozen=True, eq=False)
class Phase:
    """Batches that run concurrently; a collective's phases run one after the other."""

    batches: tuple[Flows, ...]


def _run_plan(net: FlowNetwork, plan: tuple[Phase, ...], tag: str):
    """SimPy process body: the plan's phases in order, each phase's batches together."""
    for phase in plan:
        evs = [net.transfer_many(b.src, b.dst, b.nbytes, tag, b.alpha_s, b.wire_factor) for b in phase.batches]
        yield evs[0] if len(evs) == 1 else simpy.AllOf(net.env, evs)


_ALONE: dict = {}  # seconds a plan takes alone (auto's choice)
_PLANS: dict = {}  # all-reduce and ring plans: a layer's collectives repeat across layers and micro-batches
_MEMO_MAX = 8192  # entries per memo; each pins its cluster, so keep it bounded


def _memo(store: dict, net: FlowNetwork, key: tuple, make):
    """``make()``, memoized in ``store`` on ``net``'s cluster and ``key``."""
    k = (id(net.cluster),) + key
    hit = store.get(k)
    if hit is None or hit[0] is not net.cluster:
        value = make()
        if len(store) >= _MEMO_MAX:
            store.clear()
        hit = store[k] = (net.cluster, value)
    return hit[1]


def _alone_s(net: FlowNetwork, key: tuple, plan: tuple[Phase, ...]) -> float:
    """Seconds the plan takes alone on a fresh copy of ``net``'s cluster (memoized on ``key``)."""
    def run() -> float:
        env = simpy.Environment()
        env.run(env.process(_run_plan(FlowNetwork(env, net.cluster), plan, "alone")))
        return float(env.now)

    return _memo(_ALONE, net, key, run)


def _ring_flows(net, g, per_gpu_bytes, alpha_total, wire_factor=1.0) -> Flows:
    """Every GPU streams ``per_gpu_bytes`` to its ring successor(s), split over the channels."""
    orders = _ring_orders(net, g)
    src = np.concatenate(orders)
    dst = np.concatenate([np.roll(o, -1) for o in orders])
    return Flows(src, dst, per_gpu_bytes / len(orders), alpha_total, wire_factor)


def _rows_ring(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) of independent rings, one per row of ``rows``."""
    return rows.ravel(), np.roll(rows, -1, axis=1).ravel()


def _ring_copy_factor(net: FlowNetwork, g: np.ndarray, steps: int) -> float:
    """(steps + c) / steps, c = ``nvlink.ring_copy_step``, for a ring of ``steps`` link steps inside one NVLink
    domain (else 1). NCCL's ring kernels (src/device/all_gather.h, reduce_scatter.h, all_reduce.h ``runRing``) run
    each chunk loop's steps in order on the channel's CTA: s steps send the chunk over NVLink, the last one
    (``directRecv`` / ``recvReduceCopy``) only copies it into the user buffer, so a loop takes s link steps plus
    that copy, whatever the chunk's size: a bandwidth term that weighs 1/s, more on fewer GPUs."""
    c = net.cluster.hw.collectives.nvlink.ring_copy_step
    return 1.0 if not c or _spans_nodes(net, g) else (steps + c) / steps


@dataclass(frozen=True)
class TunerProtocol:
    """One protocol in NCCL's ring tuning model: base latency (s), NVLink latency per ring step (s), share of the
    ring's bus bandwidth."""

    base_s: float
    nvlink_step_s: float
    bw_fraction: float


#: NCCL src/graph/tuning.cc (NCCL 2.29): ring baseLat LL / LL128 / Simple 6.6 / 14.0 / 8.4 us, hwLat[NVLINK][RING]
#: 0.6 / 1.9 / 3.4 us per step, bus bandwidth LL 0.5 x the ring's (capped at llMaxBw), LL128 0.92 x, Simple 1 x.
NCCL_RING_TUNER = {"ll": TunerProtocol(6.6e-6, 0.6e-6, 0.5), "ll128": TunerProtocol(14.0e-6, 1.9e-6, 0.92),
                   "simple": TunerProtocol(8.4e-6, 3.4e-6, 1.0)}


def nccl_ring_protocol(choice, steps: int, per_gpu_bytes: float) -> str:
    """The protocol NCCL's tuner picks for a one-domain ring of ``steps`` steps in which each GPU streams
    ``per_gpu_bytes`` (``choice``: a NcclProtocolChoice). Its estimate: base + steps x per-step latency + the op's
    bytes at the algorithm bandwidth, bus bandwidth x n / steps, i.e. ``per_gpu_bytes`` at the bus bandwidth."""
    def estimate(name: str) -> float:
        t = NCCL_RING_TUNER[name]
        bw = choice.tuner_bus_bandwidth * t.bw_fraction
        bw = min(bw, choice.tuner_ll_max_bandwidth) if name == "ll" else bw
        return t.base_s + steps * t.nvlink_step_s + per_gpu_bytes / bw

    return min(NCCL_RING_TUNER, key=estimate)


def _nccl_pick(net: FlowNetwork, g: np.ndarray, steps: int, per_gpu_bytes: float, copy: float) -> tuple[Proto, float]:
    """(protocol, latency s) of a one-domain ring under ``nvlink.nccl_protocol_choice``: NCCL's pick at the path's
    own terms; LL128 / Simple then take at least floor_alpha_s + steps x floor_step_s, max'ed with the byte stream
    alone (``copy`` x ``per_gpu_bytes`` at the protocol's rate): latency = max(own, floor - stream)."""
    hw = net.cluster.hw
    choice = hw.collectives.nvlink.nccl_protocol_choice
    p = {q.name: q for q in protocols(net, g)}[nccl_ring_protocol(choice, steps, per_gpu_bytes)]
    lat = _steps_latency(p, steps, 0)
    if p.name == "ll":
        return p, lat
    stream = copy * per_gpu_bytes * p.wire_factor / rates(hw).nvlink
    return p, max(lat, choice.floor_alpha_s + steps * choice.floor_step_s - stream)


def _ring_step_plan(net: FlowNetwork, g: np.ndarray, steps: int, per_gpu_bytes: float) -> tuple[Phase, ...]:
    """A ring of ``steps`` link steps (the fastest protocol, :func:`_choose`, or inside one NVLink domain under
    ``nvlink.nccl_protocol_choice`` NCCL's pick, :func:`_nccl_pick`; the copy step where the profile has it) in which
    each GPU streams ``per_gpu_bytes``."""
    f = _ring_copy_factor(net, g, steps)
    if net.cluster.hw.collectives.nvlink.nccl_protocol_choice is not None and not _spans_nodes(net, g):
        p, lat = _nccl_pick(net, g, steps, per_gpu_bytes, f)
    else:
        p, lat = _choose(net, g, steps, (steps // (g.size - 1)) * (_n_nodes(net, g) - 1), f * per_gpu_bytes)
    return (Phase((_ring_flows(net, g, per_gpu_bytes, lat, p.wire_factor * f),)),)


# ---------------------------------------------------------------------------------------- all-reduce plans
def _ar_ring(net: FlowNetwork, g: np.ndarray, S: float) -> tuple[Phase, ...]:
    n = g.size
    return _ring_step_plan(net, g, 2 * (n - 1), 2 * (n - 1) / n * S)


def _binary_tree(order: np.ndarray) -> tuple[list, list]:
    """Up (child -> parent) and down flows of a binary tree in heap order over ``order``."""
    child = np.arange(1, order.size)
    parent = (child - 1) // 2
    return [order[child], order[parent]], [order[parent], order[child]]


def _ar_tree(net: FlowNetwork, g: np.ndarray, S: float) -> tuple[Phase, ...]:
    """NCCL's tree: a chain inside each node, a double binary tree over the nodes' chain heads; two
    complementary trees (chains reversed, nodes reversed) carry half each, up and down at once. Across
    nodes the data is split over ``min(k, nics_per_node)`` channels whose chains start at successive
    local GPUs, so that the heads leave through different NICs (as NCCL's channels do)."""
    dom = net.cluster.gpus_per_domain
    members = [np.sort(g[g // dom == nd]) for nd in np.unique(g // dom)]
    m, k = len(members), max(len(x) for x in members)
    channels = max(1, min(min(len(x) for x in members), _nics_per_domain(net))) if m > 1 else 1
    src, dst = [], []
    for c in range(channels):
        for rev in (False, True):
            chains = [np.roll(x, -c)[::-1] if rev else np.roll(x, -c) for x in members]
            for ch in chains:
                src += [ch[1:], ch[:-1]]
                dst += [ch[:-1], ch[1:]]
            heads = np.array([ch[0] for ch in chains])
            s, d = _binary_tree(heads[::-1] if rev else heads)
            src += s
            dst += d
    levels = math.ceil(math.log2(m)) if m > 1 else 0
    r = rates(net.cluster.hw)
    p, lat = _choose(net, g, 2 * (k - 1 + levels), 2 * levels, 2 * S, _gpu_rate(net, g, r.tree_nvlink))
    return (Phase((Flows(np.concatenate(src), np.concatenate(dst), S / 2 / channels, lat,
                         p.wire_factor * r.wire(r.tree_nvlink)),)),)


def _ar_nvls(net: FlowNetwork, g: np.ndarray, S: float) -> tuple[Phase, ...]:
    """In-switch reduction inside one node: each GPU sends S into the NVSwitch and receives S (Simple)."""
    c, r = net.cluster.hw.collectives, rates(net.cluster.hw)
    return (Phase((Flows(g, np.roll(g, -1), S, c.nvls.alpha_s, r.wire(r.nvls)),)),)


def _ar_nvls_tree(net: FlowNetwork, shape: np.ndarray, S: float) -> tuple[Phase, ...]:
    """NVLS inside each node while, per rail j, a double binary tree over the nodes moves shard S/k."""
    m, k = shape.shape
    c, r = net.cluster.hw.collectives, rates(net.cluster.hw)
    lat = c.nvls.alpha_s + 2 * math.ceil(math.log2(m)) * NVLS_TREE_NET_HOP_S
    src, dst = [], []
    for j in range(k):
        for order in (shape[:, j], shape[::-1, j]):
            s, d = _binary_tree(order)
            src += s
            dst += d
    batches = [Flows(np.concatenate(src), np.concatenate(dst), S / k / 2, lat)]
    if k > 1:
        s, d = _rows_ring(shape)
        batches.append(Flows(s, d, S, lat, r.wire(r.nvls)))
    return (Phase(tuple(batches)),)


def _ar_hierarchical(net: FlowNetwork, g: np.ndarray, shape: np.ndarray, S: float) -> tuple[Phase, ...]:
    """Pipelined: intra-node ring reduce-scatter and all-gather (2(k-1)/k S per GPU on NVLink) while the
    rails run a ring all-reduce of each S/k shard across nodes; one base latency, all hops."""
    m, k = shape.shape
    r = rates(net.cluster.hw)
    best = None
    for p in protocols(net, g):
        lat = p.alpha_s + 2 * (k - 1) * p.hop_nvlink_s + 2 * (m - 1) * p.hop_network_s
        t = lat + max(2 * (k - 1) / k * S / r.nvlink, 2 * (m - 1) / m * S / k / r.network) / p.bw_fraction
        if best is None or t < best[2]:
            best = (p, lat, t)
    p, lat, _ = best
    s1, d1 = _rows_ring(shape.T)
    parts = [(s1, d1, np.full(s1.size, 2 * (m - 1) / m * S / k))]
    if k > 1:
        s2, d2 = _rows_ring(shape)
        parts.append((s2, d2, np.full(s2.size, 2 * (k - 1) / k * S)))
    src, dst, nb = (np.concatenate(x) for x in zip(*parts))
    return (Phase((Flows(src, dst, nb, lat, p.wire_factor),)),)


def all_reduce_algorithms(net: FlowNetwork, gpus) -> list[str]:
    """The all-reduce algorithms simfoe models for this group (``auto`` picks the fastest of them)."""
    g = _group(net, gpus)
    hw = net.cluster.hw
    nvls = hw.node.nvswitch_reduction and hw.collectives.nvls is not None
    if not _spans_nodes(net, g):
        return ["ring", "tree"] + (["nvls"] if nvls and g.size > 1 else [])
    uniform = _uniform_shape(net, g) is not None
    return ["ring", "tree"] + (["hierarchical"] if uniform else []) + (["nvls_tree"] if uniform and nvls else [])


def _ar_plan(net: FlowNetwork, g: np.ndarray, S: float, algorithm: str) -> tuple[Phase, ...]:
    """The flows of one all-reduce (memoized: plans are plain data, never changed by running them)."""
    return _memo(_PLANS, net, (g.tobytes(), S, algorithm), lambda: _ar_plan_of(net, g, S, algorithm))


def _ar_plan_of(net: FlowNetwork, g: np.ndarray, S: float, algorithm: str) -> tuple[Phase, ...]:
    """The flows of one all-reduce; ``auto``: the algorithm fastest alone (NCCL's tuner, exact here)."""
    avail = all_reduce_algorithms(net, g)
    if algorithm == "auto":
        plans = {a: _ar_plan(net, g, S, a) for a in avail}
        return plans[min(avail, key=lambda a: _alone_s(net, ("all_reduce", a, g.tobytes(), S), plans[a]))]
    if algorithm in ("hierarchical", "nvls_tree") and not _spans_nodes(net, g):
        # one node: the hierarchy is empty; NVLS-tree is NVLS (auto where the switch cannot reduce)
        return _ar_plan(net, g, S, "nvls" if algorithm == "nvls_tree" and "nvls" in avail else "auto")
    if algorithm not in avail:
        if algorithm == "nvls":
            raise SpecError("algorithm", "nvls", "only inside one node whose NVSwitch reduces (node.nvswitch_reduction "
                            "and collectives.nvls set); use " + ", ".join(avail))
        raise SpecError("algorithm", algorithm, f"for this group one of auto, {', '.join(avail)} (hierarchical and "
                        "nvls_tree need the same local GPUs on every node, nvls_tree an NVSwitch that reduces)")
    if algorithm == "ring":
        return _ar_ring(net, g, S)
    if algorithm == "tree":
        return _ar_tree(net, g, S)
    if algorithm == "nvls":
        return _ar_nvls(net, g, S)
    shape = _uniform_shape(net, g)
    return _ar_nvls_tree(net, shape, S) if algorithm == "nvls_tree" else _ar_hierarchical(net, g, shape, S)


def _ring_plan(net: FlowNetwork, g: np.ndarray, per_gpu_bytes: float) -> tuple[Phase, ...]:
    """All-gather or reduce-scatter: n - 1 ring steps, each GPU streams ``per_gpu_bytes`` to its successor
    (memoized as :func:`_ar_plan`: a layer's TP collectives repeat across layers and micro-batches)."""
    return _memo(_PLANS, net, ("ring", g.tobytes(), per_gpu_bytes),
                 lambda: _ring_step_plan(net, g, g.size - 1, per_gpu_bytes))


# ---------------------------------------------------------------------------------------- collectives
def all_reduce(net: FlowNetwork, gpus, nbytes: float, algorithm: str = "auto", tag: str = "all_reduce"):
    """All-reduce of ``nbytes`` bytes held by every GPU of ``gpus`` (SimPy process generator)."""
    _check_algo("algorithm", algorithm, ALL_REDUCE_ALGORITHMS)
    g = _group(net, gpus)
    S = _nbytes("nbytes", nbytes)
    if g.size == 1 or S == 0:
        return
    yield from _run_plan(net, _ar_plan(net, g, S, algorithm), tag)


def all_gather(net: FlowNetwork, gpus, nbytes_per_rank: float, algorithm: str = "auto", tag: str = "all_gather"):
    """All-gather: every GPU contributes ``nbytes_per_rank`` bytes and ends with all n pieces (ring)."""
    yield from _ring_collective(net, gpus, algorithm, tag, "nbytes_per_rank", nbytes_per_rank, lambda n, s: (n - 1) * s)


def reduce_scatter(net: FlowNetwork, gpus, nbytes: float, algorithm: str = "auto", tag: str = "reduce_scatter"):
    """Reduce-scatter of ``nbytes`` bytes per GPU; each ends with a reduced 1/n shard (ring)."""
    yield from _ring_collective(net, gpus, algorithm, tag, "nbytes", nbytes, lambda n, S: (n - 1) / n * S)


def _ring_collective(net: FlowNetwork, gpus, algorithm: str, tag: str, field: str, nbytes: float, per_gpu):
    """All-gather or reduce-scatter of ``nbytes`` (argument ``field``, bytes) over ``gpus``: a ring plan in which
    each GPU streams ``per_gpu(n, nbytes)`` bytes in all (SimPy process generator)."""
    _check_algo("algorithm", algorithm, RING_ALGORITHMS)
    g = _group(net, gpus)
    s = _nbytes(field, nbytes)
    if g.size == 1 or s == 0:
        return
    yield from _run_plan(net, _ring_plan(net, g, per_gpu(g.size, s)), tag)


def send_recv(net: FlowNetwork, src: int, dst: int, nbytes: float, tag: str = "send_recv"):
    """Point-to-point transfer of ``nbytes`` bytes from ``src`` to ``dst`` (one alpha of its path)."""
    g = _group(net, [src, dst]) if src != dst else _group(net, [src])
    S = _nbytes("nbytes", nbytes)
    if src == dst or S == 0:
        return
    p, lat = _choose(net, g, 1, 1 if _spans_nodes(net, g) else 0, S)
    yield net.transfer_many([int(src)], [int(dst)], [S], tag, lat, p.wire_factor)


#: NCCL src/enqueue.cc addP2pToPlan (NCCL 2.29): a send/recv runs LL when its bytes <= nChannels x
#: NCCL_P2P_LL_THRESHOLD (16384); inside one node a peer's first channel takes up to 64 KiB (p2pChunkSize / 8),
#: so LL exactly when a peer gets <= 16 KiB, Simple above.
P2P_LL_THRESHOLD = 16384


def _a2a_direct_terms(net: FlowNetwork, g: np.ndarray, T: np.ndarray) -> tuple[float, float, float]:
    """(latency s, protocol wire factor, NVLink wire factor) of a one-step direct all-to-all of ``T`` bytes.

    Default: the protocol of the group's path whose estimate for the busiest sender is smallest, NVLink
    flows at the all-to-all rate. Inside one node with ``all_to_all_alpha_s`` set, NCCL's p2p kernel:
    LL (nvlink.ll_*) when no peer gets more than P2P_LL_THRESHOLD bytes, else Simple at that latency; with
    ``all_to_all_channel_pool`` the n peers (self included) share the channels, (n-1)/n of the rate.
    """
    hw = net.cluster.hw
    c, r = hw.collectives, rates(hw)
    nv_wire = r.wire(r.all_to_all_nvlink)
    spans = _spans_nodes(net, g)
    if c.all_to_all_alpha_s is None or spans:
        p, lat = _choose(net, g, 1, 1 if spans else 0, float(T.sum(axis=1).max()), _gpu_rate(net, g, r.all_to_all_nvlink))
        return lat, p.wire_factor, nv_wire
    if c.all_to_all_channel_pool:
        nv_wire *= g.size / (g.size - 1)
    ll = c.nvlink
    if ll.ll_alpha_s is not None and float(T.max()) <= P2P_LL_THRESHOLD:
        return ll.ll_alpha_s + ll.ll_hop_s, 1.0 / ll.ll_bandwidth_fraction, nv_wire
    return c.all_to_all_alpha_s, 1.0, nv_wire


def all_to_all(net: FlowNetwork, gpus, traffic, algorithm: str = "direct", tag: str = "all_to_all"):
    """All-to-all; ``traffic[i, j]`` = bytes from ``gpus[i]`` to ``gpus[j]`` (diagonal stays local)."""
    _check_algo("algorithm", algorithm, ALL_TO_ALL_ALGORITHMS)
    g = _group(net, gpus)
    T = np.asarray(traffic, dtype=float)
    n = g.size
    if T.shape != (n, n):
        raise SpecError("traffic", f"shape {T.shape}", f"a {n} x {n} matrix of bytes")
    if not np.isfinite(T).all() or (T < 0).any():
        raise SpecError("traffic", "negative or non-finite entries", "bytes >= 0")
    if n == 1:
        return
    dom = net.cluster.gpus_per_domain
    if algorithm == "direct" or not _spans_nodes(net, g):
        i, j = np.nonzero(T)
        if i.size:
            lat, wf, nv_wire = _a2a_direct_terms(net, g, T)
            intra = (g[i] // dom) == (g[j] // dom)
            yield from _run_plan(net, (Phase(tuple(
                Flows(g[i[s]], g[j[s]], T[i[s], j[s]], lat, wf * w)
                for s, w in ((intra, nv_wire), (~intra, 1.0)) if s.any())),), tag)
        return
    shape = _uniform_shape(net, g)
    if shape is None:
        raise SpecError("gpus", g.tolist(), "for hierarchical all-to-all, the same local GPUs on every node")
    node = g // dom
    local = g % dom
    # relay for (i -> j): GPU on i's node with j's local index
    pos = {int(x): p for p, x in enumerate(g)}
    relay = np.array([[pos[int(node[a] * dom + local[b])] for b in range(n)] for a in range(n)])
    hw = net.cluster.hw
    # phase 1: to relays on own node (intra-node); aggregate by (src, relay)
    P1 = np.zeros((n, n))
    np.add.at(P1, (np.repeat(np.arange(n), n), relay.ravel()), T.ravel())
    i, j = np.nonzero(P1)
    if i.size:
        c, r = hw.collectives, rates(hw)
        lat, wf = _one_step(c.nvlink, r.all_to_all_nvlink, float(P1.sum(axis=1).max()))
        yield net.transfer_many(g[i], g[j], P1[i, j], tag, lat, wf * r.wire(r.all_to_all_nvlink))
    # phase 2: relay -> destination across nodes (same rail); only off-node data
    off = node[:, None] != node[None, :]
    P2 = np.zeros((n, n))
    np.add.at(P2, (relay[off], np.nonzero(off)[1]), T[off])
    i, j = np.nonzero(P2)
    if i.size:
        lat, wf = _one_step(hw.collectives.network, rates(hw).network, float(P2.sum(axis=1).max()))
        yield net.transfer_many(g[i], g[j], P2[i, j], tag, lat, wf)


# ---------------------------------------------------------------------------------------- prediction
def algorithms(collective: str) -> tuple[str, ...]:
    """Algorithm names ``predict`` accepts for ``collective`` (``auto``: NCCL-like choice)."""
    _check_algo("collective", collective, COLLECTIVES)
    return {"all_reduce": ALL_REDUCE_ALGORITHMS, "all_gather": RING_ALGORITHMS, "reduce_scatter": RING_ALGORITHMS,
            "all_to_all": ("auto",) + ALL_TO_ALL_ALGORITHMS, "send_recv": ("auto",)}[collective]


def predict(hw: HardwareSpec, collective: str, n_gpus: int, nbytes: float, algorithm: str = "auto", nodes: int | None = None) -> float:
    """Seconds for one ``collective`` of ``nbytes`` over ``n_gpus`` GPUs alone on a fresh cluster.

    GPUs are packed ``n_gpus / nodes`` per node (ranks 0.. of each node); ``nodes`` defaults to the fewest
    nodes that hold ``n_gpus``. nbytes: all_reduce / reduce_scatter = bytes per GPU; all_gather = bytes per
    rank; all_to_all = bytes each GPU sends to each other GPU; send_recv = bytes (n_gpus must be 2).
    ``algorithm``: one of :func:`algorithms` (``collective``).
    """
    _check_algo("collective", collective, COLLECTIVES)
    _check_algo("algorithm", algorithm, algorithms(collective))
    if isinstance(n_gpus, bool) or int(n_gpus) != n_gpus or n_gpus < 1:
        raise SpecError("n_gpus", n_gpus, "a positive integer")
    n_gpus = int(n_gpus)
    gpn = hw.node.gpus_per_node
    if nodes is None:
        nodes = -(-n_gpus // gpn)
    if isinstance(nodes, bool) or int(nodes) != nodes or nodes < 1 or n_gpus % nodes or n_gpus // nodes > gpn:
        raise SpecError("nodes", nodes, f"a divisor of n_gpus={n_gpus} with at most {gpn} GPUs per node")
    nodes = int(nodes)
    per = n_gpus // nodes
    gpus = (np.arange(nodes)[:, None] * gpn + np.arange(per)[None, :]).ravel()
    env = simpy.Environment()
    net = FlowNetwork(env, build_cluster(hw, nodes))
    if collective == "all_reduce":
        proc = all_reduce(net, gpus, nbytes, algorithm)
    elif collective == "all_gather":
        proc = all_gather(net, gpus, nbytes, algorithm)
    elif collective == "reduce_scatter":
        proc = reduce_scatter(net, gpus, nbytes, algorithm)
    elif collective == "all_to_all":
        T = np.full((n_gpus, n_gpus), _nbytes("nbytes", nbytes))
        np.fill_diagonal(T, 0.0)
        proc = all_to_all(net, gpus, T, "direct" if algorithm == "auto" else algorithm)
    else:
        if n_gpus != 2:
            raise SpecError("n_gpus", n_gpus, "2 for send_recv")
        proc = send_recv(net, int(gpus[0]), int(gpus[1]), nbytes)
    p = env.process(proc)
    env.run(p)
    return float(env.now)
