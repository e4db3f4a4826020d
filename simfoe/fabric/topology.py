"""Cluster topology: GPUs, NVSwitch domains, NICs, leaf and spine switches as a directed link graph.

An NVLink domain is one node unless the profile joins several (``node.gpus_per_nvlink_domain``: GB200 NVL72
has 18 trays of 4 GPUs on one NVSwitch domain of 72); GPU g belongs to domain g // gpus_per_domain and one
NVSwitch per domain joins them.

Every physical link is one directed edge with a capacity (bytes/s, per direction, already scaled by
the calibrated path efficiency ``hw.collectives.{nvlink,network}.efficiency``) and a latency (s).
Links are numbered densely so that the flow model can work on numpy arrays:

====================  ==========================  =========================================
links                 indices                     capacity / latency
====================  ==========================  =========================================
GPU g -> NVSwitch     ``g``                       nvlink_bw * eff_nvlink, nvlink_latency/2
NVSwitch -> GPU g     ``G + g``                   same
GPU g -> its NIC      ``2G + g``                  nic_bw * eff_network, 0
NIC -> GPU g          ``3G + g``                  same
NIC k -> its leaf     ``4G + k``                  nic_bw * eff_network, nic_latency/2
leaf -> NIC k         ``4G + K + k``              same
leaf l -> spine       ``4G + 2K + l``             (sum of the leaf's NIC capacity) / oversubscription,
                                                  nic_latency/2
spine -> leaf l       ``4G + 2K + Lf + l``        same
====================  ==========================  =========================================

G = GPUs, K = NICs (``nodes * nics_per_node``), Lf = leaves. GPU local index i uses NIC
``i * nics_per_node // gpus_per_node`` of its node. Index ``n_links`` is a padding link with infinite
capacity and zero latency (paths are padded with it to a fixed width).

Routing (deterministic, single path):
- same NVLink domain (same node by default): GPU -> NVSwitch -> GPU (2 links), never a NIC;
- other domain, same leaf: GPU -> NIC -> leaf -> NIC -> GPU (4 links);
- other node, other leaf: GPU -> NIC -> leaf -> spine -> leaf -> NIC -> GPU (6 links).
  Rail-optimized: leaf i holds NIC i of every node, so a cross-rail transfer (source NIC index !=
  destination NIC index) climbs to the spine. NCCL's PXN (hop over NVLink to the rail peer first) is not
  applied here; the hierarchical all-to-all in :mod:`simfoe.costs.collectives` models it explicitly.
  Fat-tree: one leaf per node, so every inter-node transfer crosses the spine.
``nic_latency_s`` is the NIC-to-NIC latency through one switch; each NIC<->leaf link carries half of it and
each leaf<->spine hop adds another half per direction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import networkx as nx
import numpy as np

from simfoe.errors import SpecError
from simfoe.specs.hardware import HardwareSpec

MAX_PATH = 6  # links on the longest path (cross-leaf inter-node)


@dataclass(eq=False)
class Cluster:
    """A built cluster. Arrays have one extra trailing padding link (index ``n_links``)."""

    hw: HardwareSpec
    nodes: int
    gpus_per_node: int
    n_gpus: int
    gpus_per_domain: int  # GPUs per NVLink domain (hw.node.gpus_per_domain; a node by default)
    graph: nx.DiGraph
    link_capacity: np.ndarray  # bytes/s, shape (n_links + 1,)
    link_latency: np.ndarray  # s, shape (n_links + 1,)
    link_is_network: np.ndarray  # bool, shape (n_links + 1,)
    link_names: list[str]
    nic_of_gpu: np.ndarray  # global NIC index of every GPU
    leaf_of_nic: np.ndarray  # leaf index of every NIC
    _path_cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_links(self) -> int:
        """Number of real links (the padding link is index ``n_links``)."""
        return len(self.link_names)

    def node_of(self, gpu):
        """Node index of a global GPU rank (int or integer array)."""
        return np.asarray(gpu) // self.gpus_per_node if not isinstance(gpu, (int, np.integer)) else int(gpu) // self.gpus_per_node

    def _check(self, g: np.ndarray) -> None:
        if g.size and (g.min() < 0 or g.max() >= self.n_gpus):
            bad = int(g[(g < 0) | (g >= self.n_gpus)][0])
            raise SpecError("gpu", bad, f"global ranks 0..{self.n_gpus - 1}")

    def paths(self, src, dst) -> np.ndarray:
        """Padded link indices, shape (F, MAX_PATH), for flows src[f] -> dst[f] (vectorized).

        Unused slots hold the padding index ``n_links``. src == dst gives an all-padding row.
        """
        src = np.asarray(src, dtype=np.int64).ravel()
        dst = np.asarray(dst, dtype=np.int64).ravel()
        self._check(src)
        self._check(dst)
        G, K = self.n_gpus, len(self.leaf_of_nic)
        Lf = int(self.leaf_of_nic.max()) + 1
        pad = self.n_links
        out = np.full((src.size, MAX_PATH), pad, dtype=np.int64)
        dom = self.gpus_per_domain
        same_domain = (src // dom) == (dst // dom)
        intra = same_domain & (src != dst)
        out[intra, 0] = src[intra]
        out[intra, 1] = G + dst[intra]
        inter = ~same_domain
        if inter.any():
            s, d = src[inter], dst[inter]
            ns, nd = self.nic_of_gpu[s], self.nic_of_gpu[d]
            ls, ld = self.leaf_of_nic[ns], self.leaf_of_nic[nd]
            rows = np.full((s.size, MAX_PATH), pad, dtype=np.int64)
            rows[:, 0] = 2 * G + s
            rows[:, 1] = 4 * G + ns
            same_leaf = ls == ld
            # same leaf: leaf -> NIC -> GPU
            rows[same_leaf, 2] = 4 * G + K + nd[same_leaf]
            rows[same_leaf, 3] = 3 * G + d[same_leaf]
            x = ~same_leaf
            rows[x, 2] = 4 * G + 2 * K + ls[x]
            rows[x, 3] = 4 * G + 2 * K + Lf + ld[x]
            rows[x, 4] = 4 * G + K + nd[x]
            rows[x, 5] = 3 * G + d[x]
            out[inter] = rows
        return out

    def path(self, src_gpu: int, dst_gpu: int) -> np.ndarray:
        """Link indices (no padding) from ``src_gpu`` to ``dst_gpu``; empty for src == dst. Cached."""
        key = (int(src_gpu), int(dst_gpu))
        p = self._path_cache.get(key)
        if p is None:
            row = self.paths([key[0]], [key[1]])[0]
            p = row[row != self.n_links]
            p.setflags(write=False)
            self._path_cache[key] = p
        return p

    def path_latency(self, src, dst) -> np.ndarray:
        """Sum of link latencies (s) along each src -> dst path."""
        return self.link_latency[self.paths(src, dst)].sum(axis=1)


def build_cluster(hw: HardwareSpec, nodes: int) -> Cluster:
    """Build (memoized on the hardware JSON and node count) the link graph of ``nodes`` nodes of ``hw``."""
    if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or nodes < 1:
        raise SpecError("nodes", nodes, "a positive integer")
    return _build(hw.model_dump_json(), int(nodes))


@lru_cache(maxsize=64)
def _build(hw_json: str, nodes: int) -> Cluster:
    hw = HardwareSpec.model_validate_json(hw_json)
    gpn = hw.node.gpus_per_node
    G = nodes * gpn
    ln = _links(hw, nodes)
    graph = nx.DiGraph()
    for i, (a, b) in enumerate(ln.ends):
        graph.add_edge(a, b, index=i, capacity=ln.cap[i], latency=ln.lat[i], network=ln.net[i])
    for g in range(G):
        graph.nodes[f"gpu{g}"].update(kind="gpu", node=g // gpn, local=g % gpn)

    cluster = Cluster(
        hw=hw,
        nodes=nodes,
        gpus_per_node=gpn,
        n_gpus=G,
        gpus_per_domain=hw.node.gpus_per_domain,
        graph=graph,
        link_capacity=np.array(ln.cap + [np.inf]),
        link_latency=np.array(ln.lat + [0.0]),
        link_is_network=np.array(ln.net + [False]),
        link_names=ln.names,
        nic_of_gpu=ln.nic_of_gpu,
        leaf_of_nic=ln.leaf_of_nic,
    )
    for arr in (cluster.link_capacity, cluster.link_latency, cluster.link_is_network):
        arr.setflags(write=False)
    return cluster


@dataclass(frozen=True)
class _Links:
    """The directed links of a cluster, in link-index order: name ``a->b``, capacity (bytes/s), latency (s),
    whether on the network, and ends; with each GPU's NIC and each NIC's leaf switch."""

    names: list[str]
    cap: list[float]
    lat: list[float]
    net: list[bool]
    ends: list[tuple]
    nic_of_gpu: np.ndarray
    leaf_of_nic: np.ndarray


def _links(hw: HardwareSpec, nodes: int) -> _Links:
    """Links of ``nodes`` nodes of ``hw``: GPU <-> NVSwitch (one per NVLink domain), GPU <-> NIC, NIC <-> leaf
    (rail-optimized: leaf = rail), leaf <-> spine (oversubscribed); each direction's links together."""
    gpn = hw.node.gpus_per_node
    npn = hw.network.nics_per_node
    G = nodes * gpn
    K = nodes * npn
    rail = hw.network.topology == "rail-optimized"
    Lf = npn if rail else nodes
    nv_cap = hw.nvlink_rate
    nic_cap = hw.nic_rate
    nv_lat = hw.node.nvlink_latency_s / 2
    nic_lat = hw.network.nic_latency_s / 2

    gpu = np.arange(G)
    local = gpu % gpn
    nic_of_gpu = (gpu // gpn) * npn + (local * npn) // gpn
    nic = np.arange(K)
    leaf_of_nic = (nic % npn) if rail else (nic // npn)
    nics_per_leaf = np.bincount(leaf_of_nic, minlength=Lf)
    up_cap = nics_per_leaf * nic_cap / hw.network.oversubscription

    ln = _Links([], [], [], [], [], nic_of_gpu, leaf_of_nic)

    def add(a, b, c, latency, is_net):
        ln.names.append(f"{a}->{b}")
        ln.cap.append(c)
        ln.lat.append(latency)
        ln.net.append(is_net)
        ln.ends.append((a, b))

    gname = [f"gpu{g}" for g in range(G)]
    dom = hw.node.gpus_per_domain
    sw = [f"nvswitch{g // dom}" for g in range(G)]
    nicname = [f"nic{k}" for k in range(K)]
    leafname = [f"leaf{i}" for i in range(Lf)]
    for g in range(G):
        add(gname[g], sw[g], nv_cap, nv_lat, False)
    for g in range(G):
        add(sw[g], gname[g], nv_cap, nv_lat, False)
    for g in range(G):
        add(gname[g], nicname[nic_of_gpu[g]], nic_cap, 0.0, True)
    for g in range(G):
        add(nicname[nic_of_gpu[g]], gname[g], nic_cap, 0.0, True)
    for k in range(K):
        add(nicname[k], leafname[leaf_of_nic[k]], nic_cap, nic_lat, True)
    for k in range(K):
        add(leafname[leaf_of_nic[k]], nicname[k], nic_cap, nic_lat, True)
    for i in range(Lf):
        add(leafname[i], "spine", float(up_cap[i]), nic_lat, True)
    for i in range(Lf):
        add("spine", leafname[i], float(up_cap[i]), nic_lat, True)
    return ln
