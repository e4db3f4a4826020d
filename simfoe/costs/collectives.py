"""Collective algorithms as SimPy processes on a :class:`~simfoe.fabric.flows.FlowNetwork`.

Use as ``yield env.process(all_reduce(net, gpus, nbytes))``; ``gpus`` are global ranks. Every algorithm
becomes one or more batches of point-to-point flows; each batch pays one software latency ``alpha``
(times the number of algorithm steps it stands for) plus path latency, then shares links max-min fairly
with whatever else is on the fabric. alpha comes from ``hw.collectives``: ``network`` when the group spans
nodes, else ``nvlink``; ``nvls`` for in-switch reduction.

Algorithms (S = bytes per GPU, n = group size, k = GPUs of the group per node, m = nodes spanned):

- ring all-reduce: pipelined; each GPU streams 2(n-1)/n*S to its ring successor, 2(n-1) alphas.
  When the group spans nodes the data is split over ``c = min(k, nics_per_node)`` channels (rings), ring c
  starting at local GPU c of each node, so that every node-to-node hop of some channel leaves through a
  different NIC (as NCCL's multiple rings do).
- tree all-reduce: NCCL's double binary tree, pipelined: two complementary binary trees (heap order over
  the group, and over the group reversed) each carry S/2 up (reduce) and down (broadcast) concurrently;
  2*ceil(log2 n) alphas.
- nvls all-reduce: in-switch reduction (NVSwitch gen3, ``hw.node.nvswitch_reduction``), one node only.
  Each GPU sends S into the switch and receives S; modeled as S from each GPU to its neighbour through the
  NVSwitch, on wire at ``nvlink.efficiency / nvls.efficiency`` x the bytes (so the achieved rate is
  ``nvls.efficiency`` x NVLink line rate); 2 alphas of ``nvls``.
- hierarchical all-reduce (multi-node): intra-node ring reduce-scatter (k-1 nvlink alphas), inter-node
  ring all-reduce of the S/k shard among same-local-index GPUs (rails; 2(m-1) network alphas), intra-node
  ring all-gather (k-1 nvlink alphas). Phases run one after the other. Needs the same local indices on
  every node spanned.
- auto all-reduce (NCCL-like): one node -> nvls when the node has in-switch reduction and n > 2, else
  ring (for 2 GPUs a ring moves the same S per GPU as NVLS; Vidur's 2-GPU H100 all_reduce follows the
  ring at NVLink efficiency, not the slower NVLS rate, see docs/calibration-collectives.md);
  several nodes -> hierarchical when the group is the same shape on every node, else ring.
- all-gather / reduce-scatter: ring (multi-channel across nodes as above); (n-1) steps.
- all-to-all direct: all pairs at once, one alpha. Hierarchical (PXN-like, rail-aligned): phase 1, every
  GPU (a, i) sends over NVLink all data for GPU (b, j) to its own node's GPU (a, j) (data for its own node
  goes straight to the destination); phase 2, GPU (a, j) sends the aggregate for (b, j) over rail j to
  (b, j). The data then already sits on its destination, so the third (intra-node distribution) phase of a
  generic hierarchical scheme is empty. Relayed bytes are counted again in phase 2 (they leave a GPU twice).

``predict(hw, collective, n_gpus, nbytes)`` runs one collective alone on a fresh cluster (validation).
"""
from __future__ import annotations

import math

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


def _alpha(net: FlowNetwork, g: np.ndarray) -> float:
    c = net.cluster.hw.collectives
    return c.network.alpha_s if _spans_nodes(net, g) else c.nvlink.alpha_s


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
    if algorithm == "auto":
        if not spans:
            nvls_ok = hw.node.nvswitch_reduction and hw.collectives.nvls is not None
            algorithm = "nvls" if (nvls_ok and n > 2) else "ring"
        else:
            algorithm = "hierarchical" if _uniform_shape(net, g) is not None else "ring"
    if algorithm == "ring":
        yield _ring_stream(net, g, 2 * (n - 1) / n * S, tag, 2 * (n - 1) * _alpha(net, g))
    elif algorithm == "tree":
        steps = 2 * math.ceil(math.log2(n))
        src, dst = [], []
        for order in (g, g[::-1]):
            child = np.arange(1, n)
            parent = (child - 1) // 2
            src += [order[child], order[parent]]
            dst += [order[parent], order[child]]
        yield net.transfer_many(np.concatenate(src), np.concatenate(dst), S / 2, tag, steps * _alpha(net, g))
    elif algorithm == "nvls":
        if spans or not hw.node.nvswitch_reduction or hw.collectives.nvls is None:
            raise SpecError("algorithm", "nvls", "only inside one node whose NVSwitch reduces (node.nvswitch_reduction "
                            "and collectives.nvls set); use ring, tree or hierarchical")
        c = hw.collectives
        yield net.transfer_many(g, np.roll(g, -1), S, tag, 2 * c.nvls.alpha_s, c.nvlink.efficiency / c.nvls.efficiency)
    else:  # hierarchical
        shape = _uniform_shape(net, g)
        if shape is None:
            raise SpecError("gpus", g.tolist(), "for hierarchical all-reduce, the same local GPUs on every node")
        m, k = shape.shape
        if m == 1:
            yield from all_reduce(net, g, S, "auto", tag)
            return
        nv_a, nw_a = hw.collectives.nvlink.alpha_s, hw.collectives.network.alpha_s
        if k > 1:
            yield _rows_ring(net, shape, (k - 1) / k * S, tag, (k - 1) * nv_a)
        shard = S / k
        yield _rows_ring(net, shape.T, 2 * (m - 1) / m * shard, tag, 2 * (m - 1) * nw_a)
        if k > 1:
            yield _rows_ring(net, shape, (k - 1) / k * S, tag, (k - 1) * nv_a)


def _rows_ring(net, rows: np.ndarray, per_gpu_bytes, tag, alpha_total):
    """Independent rings, one per row of ``rows``, all at once (one batch)."""
    src = rows.ravel()
    dst = np.roll(rows, -1, axis=1).ravel()
    return net.transfer_many(src, dst, per_gpu_bytes, tag, alpha_total)


def all_gather(net: FlowNetwork, gpus, nbytes_per_rank: float, algorithm: str = "auto", tag: str = "all_gather"):
    """All-gather: every GPU contributes ``nbytes_per_rank`` bytes and ends with all n pieces (ring)."""
    _check_algo("algorithm", algorithm, RING_ALGORITHMS)
    g = _group(net, gpus)
    s = _nbytes("nbytes_per_rank", nbytes_per_rank)
    n = g.size
    if n == 1 or s == 0:
        return
    yield _ring_stream(net, g, (n - 1) * s, tag, (n - 1) * _alpha(net, g))


def reduce_scatter(net: FlowNetwork, gpus, nbytes: float, algorithm: str = "auto", tag: str = "reduce_scatter"):
    """Reduce-scatter of ``nbytes`` bytes per GPU; each ends with a reduced 1/n shard (ring)."""
    _check_algo("algorithm", algorithm, RING_ALGORITHMS)
    g = _group(net, gpus)
    S = _nbytes("nbytes", nbytes)
    n = g.size
    if n == 1 or S == 0:
        return
    yield _ring_stream(net, g, (n - 1) / n * S, tag, (n - 1) * _alpha(net, g))


def send_recv(net: FlowNetwork, src: int, dst: int, nbytes: float, tag: str = "send_recv"):
    """Point-to-point transfer of ``nbytes`` bytes from ``src`` to ``dst`` (one alpha of its path)."""
    g = _group(net, [src, dst]) if src != dst else _group(net, [src])
    S = _nbytes("nbytes", nbytes)
    if src == dst or S == 0:
        return
    yield net.transfer(int(src), int(dst), S, tag, _alpha(net, g))


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
            yield net.transfer_many(g[i], g[j], T[i, j], tag, _alpha(net, g))
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
        yield net.transfer_many(g[i], g[j], P1[i, j], tag, hw.collectives.nvlink.alpha_s)
    # phase 2: relay -> destination across nodes (same rail); only off-node data
    off = node[:, None] != node[None, :]
    P2 = np.zeros((n, n))
    np.add.at(P2, (relay[off], np.nonzero(off)[1]), T[off])
    i, j = np.nonzero(P2)
    if i.size:
        yield net.transfer_many(g[i], g[j], P2[i, j], tag, hw.collectives.network.alpha_s)


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
