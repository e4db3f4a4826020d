"""Collective algorithms as SimPy processes on a :class:`~simfoe.fabric.flows.FlowNetwork`.

Use as ``yield env.process(all_reduce(net, gpus, nbytes))``; ``gpus`` are global ranks. Every algorithm
becomes one or more batches of point-to-point flows that share links max-min fairly with whatever else
is on the fabric. Latency follows NCCL's own tuning model: a base latency per collective plus a per-step
hardware latency for each algorithm step (NVLink steps inside nodes, network steps between them), for
one of two protocols: Simple (``alpha_s``, ``hop_s``, full calibrated bandwidth) and LL (``ll_alpha_s``,
``ll_hop_s``, ``ll_bandwidth_fraction`` of it). Each collective takes the protocol whose estimated time
alone is smaller, as NCCL's tuner does. The base latency is the ``network`` path's when the group spans
nodes, else ``nvlink``'s; ``nvls`` for in-switch reduction (Simple only, as in NCCL).

Algorithms (S = bytes per GPU, n = group size, k = GPUs of the group per node, m = nodes spanned):

- ring all-reduce: pipelined; each GPU streams 2(n-1)/n*S to its ring successor; 2(n-1) steps.
  When the group spans nodes the data is split over ``c = min(k, nics_per_node)`` channels (rings), ring c
  starting at local GPU c of each node, so that every node-to-node hop of some channel leaves through a
  different NIC (as NCCL's multiple rings do).
- tree all-reduce: NCCL's double binary tree, pipelined: two complementary binary trees (heap order over
  the group, and over the group reversed) each carry S/2 up (reduce) and down (broadcast) concurrently;
  2*(local chain + ceil(log2 nodes)) steps.
- nvls all-reduce: in-switch reduction (NVSwitch gen3, ``hw.node.nvswitch_reduction``), one node only.
  Each GPU sends S into the switch and receives S; modeled as S from each GPU to its neighbour through the
  NVSwitch, on wire at ``nvlink.efficiency / nvls.efficiency`` x the bytes (so the achieved rate is
  ``nvls.efficiency`` x NVLink line rate); latency ``nvls.alpha_s``.
- hierarchical all-reduce (multi-node): intra-node ring reduce-scatter (k-1 NVLink steps), inter-node
  ring all-reduce of the S/k shard among same-local-index GPUs (rails; 2(m-1) network steps), intra-node
  ring all-gather (k-1 NVLink steps); one base latency for the whole. Phases run one after the other. Needs the same local indices on
  every node spanned.
- auto all-reduce (NCCL-like): one node -> the faster (estimated alone) of nvls, when the node has
  in-switch reduction and n > 2, and the ring (for 2 GPUs a ring moves the same S per GPU as NVLS;
  Vidur's 2-GPU H100 all_reduce follows the ring, see docs/calibration-collectives.md);
  several nodes -> hierarchical when the group is the same shape on every node, else ring.
- all-gather / reduce-scatter: ring (multi-channel across nodes as above); (n-1) steps.
- all-to-all direct: all pairs at once, one step. Hierarchical (PXN-like, rail-aligned): phase 1, every
  GPU (a, i) sends over NVLink all data for GPU (b, j) to its own node's GPU (a, j) (data for its own node
  goes straight to the destination); phase 2, GPU (a, j) sends the aggregate for (b, j) over rail j to
  (b, j). The data then already sits on its destination, so the third (intra-node distribution) phase of a
  generic hierarchical scheme is empty. Relayed bytes are counted again in phase 2 (they leave a GPU twice).

``predict(hw, collective, n_gpus, nbytes)`` runs one collective alone on a fresh cluster (validation).
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

ALL_REDUCE_ALGORITHMS = ("auto", "ring", "tree", "nvls", "hierarchical")
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


def _spans_nodes(net: FlowNetwork, g: np.ndarray) -> bool:
    nodes = g // net.cluster.gpus_per_node
    return bool(nodes.min() != nodes.max())


def _path(net: FlowNetwork, g: np.ndarray):
    c = net.cluster.hw.collectives
    return c.network if _spans_nodes(net, g) else c.nvlink


def _n_nodes(net: FlowNetwork, g: np.ndarray) -> int:
    return int(np.unique(g // net.cluster.gpus_per_node).size)


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


def protocols(net: FlowNetwork, g: np.ndarray) -> list[Proto]:
    """Simple, plus LL where the group's path has an LL calibration."""
    c = net.cluster.hw.collectives
    p = _path(net, g)
    out = [Proto("simple", p.alpha_s, c.nvlink.hop_s, c.network.hop_s, 1.0)]
    if p.ll_alpha_s is not None:
        out.append(Proto("ll", p.ll_alpha_s, c.nvlink.ll_hop_s, c.network.ll_hop_s, p.ll_bandwidth_fraction))
    return out


def _steps_latency(p: Proto, steps: int, inter_steps: int) -> float:
    """NCCL tuning model: base + (steps - inter) NVLink hops + inter network hops."""
    return p.alpha_s + (steps - inter_steps) * p.hop_nvlink_s + inter_steps * p.hop_network_s


def _gpu_rate(net: FlowNetwork, g: np.ndarray) -> float:
    """Achievable per-GPU rate of the group's slowest path class (bytes/s), for choosing a protocol."""
    hw = net.cluster.hw
    nv = hw.node.nvlink_bandwidth * hw.collectives.nvlink.efficiency
    if not _spans_nodes(net, g):
        return nv
    return min(nv, hw.network.nic_bandwidth * hw.collectives.network.efficiency)


def _choose(net: FlowNetwork, g: np.ndarray, steps: int, inter_steps: int, per_gpu_bytes: float) -> tuple[Proto, float]:
    """The protocol with the smallest estimated time for the collective alone, and its latency."""
    rate = _gpu_rate(net, g)
    best = None
    for p in protocols(net, g):
        lat = _steps_latency(p, steps, inter_steps)
        t = lat + per_gpu_bytes / (rate * p.bw_fraction)
        if best is None or t < best[2]:
            best = (p, lat, t)
    return best[0], best[1]


def _one_step(cal, hop_simple: float, hop_ll: float, rate: float, nbytes: float) -> tuple[float, float]:
    """(latency, wire factor) of a one-step transfer on path calibration ``cal``, faster protocol."""
    best = (cal.alpha_s + hop_simple, 1.0)
    t_best = best[0] + nbytes / rate
    if cal.ll_alpha_s is not None:
        lat = cal.ll_alpha_s + hop_ll
        if lat + nbytes / (rate * cal.ll_bandwidth_fraction) < t_best:
            best = (lat, 1.0 / cal.ll_bandwidth_fraction)
    return best


def _check_algo(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise SpecError(name, value, "one of " + ", ".join(allowed))


def _uniform_shape(net: FlowNetwork, g: np.ndarray):
    """(nodes, locals) matrix of the group when every node spanned holds the same local indices, else None."""
    gpn = net.cluster.gpus_per_node
    nodes = np.unique(g // gpn)
    locs = [np.sort(g[g // gpn == nd] % gpn) for nd in nodes]
    if any(lc.size != locs[0].size or (lc != locs[0]).any() for lc in locs):
        return None
    return nodes[:, None] * gpn + locs[0][None, :]


def _ring_orders(net: FlowNetwork, g: np.ndarray) -> list[np.ndarray]:
    """Ring orders (one per channel). Across nodes: nodes in order, channel c rotates each node's locals by c."""
    if not _spans_nodes(net, g):
        return [g]
    gpn = net.cluster.gpus_per_node
    nodes = np.unique(g // gpn)
    per_node = [np.sort(g[g // gpn == nd]) for nd in nodes]
    k = min(len(p) for p in per_node)
    channels = max(1, min(k, net.cluster.hw.network.nics_per_node))
    return [np.concatenate([np.roll(p, -c) for p in per_node]) for c in range(channels)]


def _ring_stream(net, g, per_gpu_bytes, tag, alpha_total, wire_factor=1.0):
    """Every GPU streams ``per_gpu_bytes`` to its ring successor(s), split over the channels."""
    orders = _ring_orders(net, g)
    src = np.concatenate(orders)
    dst = np.concatenate([np.roll(o, -1) for o in orders])
    nb = per_gpu_bytes / len(orders)
    return net.transfer_many(src, dst, nb, tag, alpha_total, wire_factor)


# ---------------------------------------------------------------------------------------- collectives
def all_reduce(net: FlowNetwork, gpus, nbytes: float, algorithm: str = "auto", tag: str = "all_reduce"):
    """All-reduce of ``nbytes`` bytes held by every GPU of ``gpus`` (SimPy process generator)."""
    _check_algo("algorithm", algorithm, ALL_REDUCE_ALGORITHMS)
    g = _group(net, gpus)
    S = _nbytes("nbytes", nbytes)
    n = g.size
    if n == 1 or S == 0:
        return
    hw = net.cluster.hw
    spans = _spans_nodes(net, g)
    m = _n_nodes(net, g)
    ring_p, ring_lat = _choose(net, g, 2 * (n - 1), 2 * (m - 1), 2 * (n - 1) / n * S)
    if algorithm == "auto":
        if not spans:
            algorithm = "ring"
            c = hw.collectives
            if hw.node.nvswitch_reduction and c.nvls is not None and n > 2:
                # NCCL's tuner: the faster of NVLS (Simple only) and the ring's best protocol
                t_nvls = c.nvls.alpha_s + S / (hw.node.nvlink_bandwidth * c.nvls.efficiency)
                t_ring = ring_lat + 2 * (n - 1) / n * S / (_gpu_rate(net, g) * ring_p.bw_fraction)
                algorithm = "nvls" if t_nvls <= t_ring else "ring"
        else:
            algorithm = "hierarchical" if _uniform_shape(net, g) is not None else "ring"
    if algorithm == "ring":
        yield _ring_stream(net, g, 2 * (n - 1) / n * S, tag, ring_lat, ring_p.wire_factor)
    elif algorithm == "tree":
        src, dst = [], []
        for order in (g, g[::-1]):
            child = np.arange(1, n)
            parent = (child - 1) // 2
            src += [order[child], order[parent]]
            dst += [order[parent], order[child]]
        p, lat = _tree_latency(net, g, S)
        yield net.transfer_many(np.concatenate(src), np.concatenate(dst), S / 2, tag, lat, p.wire_factor)
    elif algorithm == "nvls":
        if spans or not hw.node.nvswitch_reduction or hw.collectives.nvls is None:
            raise SpecError("algorithm", "nvls", "only inside one node whose NVSwitch reduces (node.nvswitch_reduction "
                            "and collectives.nvls set); use ring, tree or hierarchical")
        c = hw.collectives
        yield net.transfer_many(g, np.roll(g, -1), S, tag, c.nvls.alpha_s, c.nvlink.efficiency / c.nvls.efficiency)
    else:  # hierarchical
        shape = _uniform_shape(net, g)
        if shape is None:
            raise SpecError("gpus", g.tolist(), "for hierarchical all-reduce, the same local GPUs on every node")
        m, k = shape.shape
        if m == 1:
            yield from all_reduce(net, g, S, "auto", tag)
            return
        p = _choose_hierarchical(net, g, m, k, S)
        # one base latency for the whole collective, then per-step hops on each path (NCCL model)
        if k > 1:
            yield _rows_ring(net, shape, (k - 1) / k * S, tag, p.alpha_s + (k - 1) * p.hop_nvlink_s, p.wire_factor)
        shard = S / k
        yield _rows_ring(net, shape.T, 2 * (m - 1) / m * shard, tag,
                         (0.0 if k > 1 else p.alpha_s) + 2 * (m - 1) * p.hop_network_s, p.wire_factor)
        if k > 1:
            yield _rows_ring(net, shape, (k - 1) / k * S, tag, (k - 1) * p.hop_nvlink_s, p.wire_factor)


def _choose_hierarchical(net: FlowNetwork, g: np.ndarray, m: int, k: int, S: float) -> Proto:
    """Protocol of a hierarchical all-reduce: the faster estimate over its intra and inter phases."""
    hw = net.cluster.hw
    nv = hw.node.nvlink_bandwidth * hw.collectives.nvlink.efficiency
    nw = hw.network.nic_bandwidth * hw.collectives.network.efficiency
    best = None
    for p in protocols(net, g):
        lat = p.alpha_s + 2 * (k - 1) * p.hop_nvlink_s + 2 * (m - 1) * p.hop_network_s
        t = lat + (2 * (k - 1) / k * S / nv + 2 * (m - 1) / m * S / k / nw) / p.bw_fraction
        if best is None or t < best[1]:
            best = (p, t)
    return best[0]


def _tree_latency(net: FlowNetwork, g: np.ndarray, S: float) -> tuple[Proto, float]:
    """Double binary tree: up and down; NVLink hops for the local chain, log2(nodes) network levels."""
    n = g.size
    m = _n_nodes(net, g)
    local = max(n // max(m, 1) - 1, 0)
    levels = math.ceil(math.log2(m)) if m > 1 else 0
    if m == 1:
        levels, local = 0, math.ceil(math.log2(n))
    steps, inter = 2 * (local + levels), 2 * levels
    return _choose(net, g, steps, inter, S)


def _rows_ring(net, rows: np.ndarray, per_gpu_bytes, tag, alpha_total, wire_factor=1.0):
    """Independent rings, one per row of ``rows``, all at once (one batch)."""
    src = rows.ravel()
    dst = np.roll(rows, -1, axis=1).ravel()
    return net.transfer_many(src, dst, per_gpu_bytes, tag, alpha_total, wire_factor)


def all_gather(net: FlowNetwork, gpus, nbytes_per_rank: float, algorithm: str = "auto", tag: str = "all_gather"):
    """All-gather: every GPU contributes ``nbytes_per_rank`` bytes and ends with all n pieces (ring)."""
    _check_algo("algorithm", algorithm, RING_ALGORITHMS)
    g = _group(net, gpus)
    s = _nbytes("nbytes_per_rank", nbytes_per_rank)
    n = g.size
    if n == 1 or s == 0:
        return
    m = _n_nodes(net, g)
    p, lat = _choose(net, g, n - 1, m - 1, (n - 1) * s)
    yield _ring_stream(net, g, (n - 1) * s, tag, lat, p.wire_factor)


def reduce_scatter(net: FlowNetwork, gpus, nbytes: float, algorithm: str = "auto", tag: str = "reduce_scatter"):
    """Reduce-scatter of ``nbytes`` bytes per GPU; each ends with a reduced 1/n shard (ring)."""
    _check_algo("algorithm", algorithm, RING_ALGORITHMS)
    g = _group(net, gpus)
    S = _nbytes("nbytes", nbytes)
    n = g.size
    if n == 1 or S == 0:
        return
    m = _n_nodes(net, g)
    p, lat = _choose(net, g, n - 1, m - 1, (n - 1) / n * S)
    yield _ring_stream(net, g, (n - 1) / n * S, tag, lat, p.wire_factor)


def send_recv(net: FlowNetwork, src: int, dst: int, nbytes: float, tag: str = "send_recv"):
    """Point-to-point transfer of ``nbytes`` bytes from ``src`` to ``dst`` (one alpha of its path)."""
    g = _group(net, [src, dst]) if src != dst else _group(net, [src])
    S = _nbytes("nbytes", nbytes)
    if src == dst or S == 0:
        return
    p, lat = _choose(net, g, 1, 1 if _spans_nodes(net, g) else 0, S)
    yield net.transfer_many([int(src)], [int(dst)], [S], tag, lat, p.wire_factor)


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
    gpn = net.cluster.gpus_per_node
    if algorithm == "direct" or not _spans_nodes(net, g):
        i, j = np.nonzero(T)
        if i.size:
            # one step; the busiest sender's bytes decide the protocol
            p, lat = _choose(net, g, 1, 1 if _spans_nodes(net, g) else 0, float(T.sum(axis=1).max()))
            yield net.transfer_many(g[i], g[j], T[i, j], tag, lat, p.wire_factor)
        return
    shape = _uniform_shape(net, g)
    if shape is None:
        raise SpecError("gpus", g.tolist(), "for hierarchical all-to-all, the same local GPUs on every node")
    node = g // gpn
    local = g % gpn
    # relay for (i -> j): GPU on i's node with j's local index
    pos = {int(x): p for p, x in enumerate(g)}
    relay = np.array([[pos[int(node[a] * gpn + local[b])] for b in range(n)] for a in range(n)])
    hw = net.cluster.hw
    # phase 1: to relays on own node (intra-node); aggregate by (src, relay)
    P1 = np.zeros((n, n))
    np.add.at(P1, (np.repeat(np.arange(n), n), relay.ravel()), T.ravel())
    i, j = np.nonzero(P1)
    if i.size:
        c = hw.collectives
        lat, wf = _one_step(c.nvlink, c.nvlink.hop_s, c.nvlink.ll_hop_s,
                            hw.node.nvlink_bandwidth * c.nvlink.efficiency, float(P1.sum(axis=1).max()))
        yield net.transfer_many(g[i], g[j], P1[i, j], tag, lat, wf)
    # phase 2: relay -> destination across nodes (same rail); only off-node data
    off = node[:, None] != node[None, :]
    P2 = np.zeros((n, n))
    np.add.at(P2, (relay[off], np.nonzero(off)[1]), T[off])
    i, j = np.nonzero(P2)
    if i.size:
        c = hw.collectives
        lat, wf = _one_step(c.network, c.network.hop_s, c.network.ll_hop_s,
                            hw.network.nic_bandwidth * c.network.efficiency, float(P2.sum(axis=1).max()))
        yield net.transfer_many(g[i], g[j], P2[i, j], tag, lat, wf)


# ---------------------------------------------------------------------------------------- prediction
def predict(hw: HardwareSpec, collective: str, n_gpus: int, nbytes: float, algorithm: str = "auto", nodes: int | None = None) -> float:
    """Seconds for one ``collective`` of ``nbytes`` over ``n_gpus`` GPUs alone on a fresh cluster.

    GPUs are packed ``n_gpus / nodes`` per node (ranks 0.. of each node); ``nodes`` defaults to the fewest
    nodes that hold ``n_gpus``. nbytes: all_reduce / reduce_scatter = bytes per GPU; all_gather = bytes per
    rank; all_to_all = bytes each GPU sends to each other GPU; send_recv = bytes (n_gpus must be 2).
    """
    _check_algo("collective", collective, COLLECTIVES)
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
