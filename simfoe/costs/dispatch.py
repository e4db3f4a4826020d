"""MoE dispatch and combine: where one is priced (one place), for every algorithm deployed systems run.

A dispatch sends each token's hidden state from the GPU that holds it to the GPUs of its experts; the
combine sends the expert outputs back (the same flows reversed). :func:`exchange` is the SimPy process
(its flows share the fabric max-min fairly with everything else in flight); :func:`alone_seconds` is
the same price in closed form for one exchange alone on symmetric traffic (the fit uses it;
tests/test_dispatch.py checks the two agree). Algorithms (``placement.moe.all_to_all``):

- ``deepep-normal`` (DeepEP high-throughput kernels, SGLang/vLLM prefill): a token goes once over RDMA
  to each destination *node* its experts live on, to the GPU with the source's local index (same rail);
  that GPU forwards it over NVLink to the destination GPUs of its node. Tokens for the source's own
  node go straight over NVLink. The RDMA and NVLink phases are pipelined in chunks: both run at once.
  The kernel holds ``deepep.sms`` SMs; its NVLink forwarding is bounded by ``nvlink_sm_rate`` bytes/s
  per SM. Inside one node it is DeepEP's intranode kernel (NVLink only, ``alpha_s``).
- ``deepep-ll`` (DeepEP low-latency kernels, decode): one message per expert *choice*, straight to the
  destination GPU (NVLink inside a node, its own NIC to the peer's NIC across nodes), plus
  ``message_s`` per message sent; no SMs are held while waiting (hook mode).
- ``nccl`` (torch ``all_to_all_single`` with splits): one copy per destination GPU, direct, after the
  split exchange (a small all-to-all of per-peer row counts; NCCL path calibration).
- ``direct``: as ``nccl`` without the split exchange (fixed-capacity buffers) - the old default.
- ``hierarchical``: per-destination-GPU copies relayed through the same-rail GPU of the destination
  node (rail-aligned, one copy per GPU on the NIC), both phases pipelined; NCCL path calibration.
- ``auto``: as SGLang's ``--deepep-mode auto`` deploys DeepEP (``DeepEPMode.resolve`` in sglang
  python/sglang/srt/layers/moe/utils.py: normal when any rank's batch has extend/prefill tokens - the flag is
  OR-reduced over the DP ranks - else low_latency; checked against SGLang's source 2026-12-07) and vLLM likewise (its DeepEP
  "high-throughput" all2all backend for prefill, "low-latency" for decode): ``deepep-normal`` when the
  pass has prefill tokens, else ``deepep-ll``.

Kernel parameters (latency, efficiencies, SM rate, per-message cost) come from
``hw.collectives.deepep`` (fitted by :mod:`simfoe.costs.fit_dispatch`); without it the DeepEP
algorithms use the NCCL path calibration (``collectives.nvlink`` / ``network``) and no SM bound.

Traffic is a :class:`DispatchTraffic` (expected token copies per destination GPU, node and expert
choice), so pricing does not depend on how routing was sampled: :func:`traffic_from_gpu_copies`
builds one from a routing sample, :func:`deepep_test_traffic` from DeepEP's test routing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from simfoe.costs import collectives as coll
from simfoe.errors import SpecError
from simfoe.fabric.flows import FlowNetwork
from simfoe.fabric.topology import build_cluster
from simfoe.specs.hardware import DispatchKernel, HardwareSpec
from simfoe.specs.precision import FORMATS

ALGORITHMS = ("auto", "deepep-normal", "deepep-ll", "nccl", "direct", "hierarchical")
OPS = ("dispatch", "combine")
#: bytes of one int64 row count per peer in the split exchange (torch all_to_all_single with splits)
SPLIT_COUNT_BYTES = 8.0


@dataclass(frozen=True)
class DispatchTraffic:
    """Expected token copies one dispatch moves inside a group of n GPUs spanning m nodes (tokens, not bytes).
    A "node" here is an NVLink domain (one node unless the profile joins several, GB200 NVL72): tokens for
    GPUs of the same domain go over NVLink, as DeepEP and NCCL run on multi-node NVLink.

    gpu[i, j]: copies from GPU i to GPU j, one per destination GPU (diagonal: stays local);
    node[i, b]: copies from GPU i to node b, one per destination node (column of i's own node: the
    tokens some expert on its own node needs); choice[i, j]: one copy per expert choice.
    nodes_of: (n,) node index (0..m-1) of each GPU; local_of: (n,) local index of each GPU in its node;
    tokens: (n,) tokens each GPU holds.
    """

    gpu: np.ndarray
    node: np.ndarray
    choice: np.ndarray
    nodes_of: np.ndarray
    local_of: np.ndarray
    tokens: np.ndarray


def resolve(algorithm: str, prefill: bool) -> str:
    """The algorithm a pass runs: ``auto`` -> deepep-normal with prefill tokens, else deepep-ll."""
    if algorithm not in ALGORITHMS:
        raise SpecError("placement.moe.all_to_all", algorithm, "one of " + ", ".join(ALGORITHMS))
    if algorithm == "auto":
        return "deepep-normal" if prefill else "deepep-ll"
    return algorithm


def copy_bytes(hidden: int, dtype_bytes: float, algorithm: str, op: str) -> float:
    """Bytes of one token copy: ``hidden`` x ``dtype_bytes``; an fp8 (1-byte) dispatch is an fp8-block
    activation row, one fp32 scale per 128 values (DeepEP per_token_cast_to_fp8; simfoe.specs.precision), and
    deepep-ll adds 16 bytes of metadata per message (DeepEP tests/test_low_latency.py counts
    hidden + hidden / 128 * 4 + 16)."""
    if op == "dispatch" and dtype_bytes == 1:
        return FORMATS["fp8-block"].act_bytes(1, hidden) + (16.0 if algorithm == "deepep-ll" else 0.0)
    return float(hidden * dtype_bytes)


def sm_share(hw: HardwareSpec, algorithm: str) -> float:
    """Share of a GPU's SMs the algorithm's kernels hold while in flight: deepep-normal runs on
    ``deepep.sms`` of ``gpu.sms`` (DeepEP Buffer.num_sms = 20 of an H100's 132); deepep-ll in hook mode
    holds none while waiting; NCCL kernels are not modelled (0)."""
    d, n = hw.collectives.deepep, hw.gpu.sms
    return d.sms / n if (algorithm == "deepep-normal" and d is not None and n) else 0.0


def traffic_from_gpu_copies(gpu: np.ndarray, choice: np.ndarray, tokens: np.ndarray, gpus: np.ndarray,
                            gpus_per_node: int, node_visits: float = 0.0) -> DispatchTraffic:
    """Traffic of a routing sample: ``gpu`` per-destination-GPU copies, ``choice`` per-choice copies,
    ``tokens`` (n,) tokens per source GPU, ``gpus`` (n,) the group's global ranks.

    Per-destination-node copies follow from the per-GPU ones assuming a token's hits on the GPUs of one
    node are independent: P(node b) = 1 - prod_{j in b} (1 - gpu[i, j] / tokens[i]). Group-limited routing
    correlates them (hits cluster on few nodes: over-counted) and drawing k distinct experts slightly
    anti-correlates them (under-counted: 0.984 instead of 0.996 other-node copies per token on DeepEP's
    2-node test routing); ``node_visits`` (the sample's distinct (token, node) pairs, 0: unknown) scales the
    total to the sampled one.
    """
    g = np.asarray(gpus, dtype=np.int64)
    _, nid = np.unique(g // gpus_per_node, return_inverse=True)
    tok = np.asarray(tokens, dtype=float)
    t = np.maximum(tok, 1e-300)[:, None]
    logmiss = np.log(np.maximum(1.0 - np.clip(gpu / t, 0.0, 1.0), 1e-300))
    per_node = np.zeros((nid.max() + 1, g.size))
    np.add.at(per_node, nid, logmiss.T)
    node = np.minimum((1.0 - np.exp(per_node.T)) * t, tok[:, None])
    if node_visits > 0 and node.sum() > 0:
        node = np.minimum(node * (node_visits / node.sum()), tok[:, None])
    return DispatchTraffic(np.asarray(gpu, float), node, np.asarray(choice, float), nid, g % gpus_per_node, tok)


def deepep_test_traffic(nodes: int, gpus_per_node: int, tokens_per_gpu: float, experts: int, topk: int,
                 node_groups: int | None = None, samples: int = 4096, seed: int = 0) -> DispatchTraffic:
    """Expected traffic of DeepEP's test routing on ``nodes`` x ``gpus_per_node`` GPUs, ``tokens_per_gpu``
    tokens on every GPU: scores |N(0,1)| + 1 per expert, the top ``node_groups`` nodes by their best
    expert's score (DeepEP tests/test_internode.py: min(nodes, 4); None: no limit), then the top-``topk``
    experts among those nodes' (experts numbered node by node). Averaged over ``samples`` sampled tokens
    per source GPU position (routing does not depend on the source, so one sample serves all)."""
    G = nodes * gpus_per_node
    if experts % G:
        raise SpecError("--experts", experts, f"a multiple of the {G} GPUs")
    if not 1 <= topk <= experts:
        raise SpecError("--topk", topk, f"1..{experts} (the experts)")
    groups = nodes if node_groups is None else int(node_groups)
    if not 1 <= groups <= nodes:
        raise SpecError("--node-groups", node_groups, f"1..{nodes} (the nodes)")
    if groups * experts // nodes < topk:
        raise SpecError("--node-groups", node_groups, f"enough nodes to hold {topk} experts")
    rng = np.random.default_rng(seed)
    s = np.abs(rng.standard_normal((samples, experts))) + 1.0
    if groups < nodes:
        best = s.reshape(samples, nodes, -1).max(axis=2)
        keep = np.zeros((samples, nodes), dtype=bool)
        np.put_along_axis(keep, np.argpartition(-best, groups - 1, axis=1)[:, :groups], True, axis=1)
        s = np.where(np.repeat(keep, experts // nodes, axis=1), s, -np.inf)
    top = np.argpartition(-s, topk - 1, axis=1)[:, :topk]
    dest = top // (experts // G)  # destination GPU of every choice
    hit = np.zeros((samples, G), dtype=bool)
    np.put_along_axis(hit, dest, True, axis=1)
    p_gpu = hit.mean(axis=0)  # (G,) share of tokens that reach each GPU
    p_node = hit.reshape(samples, nodes, gpus_per_node).any(axis=2).mean(axis=0)
    p_choice = np.bincount(dest.ravel(), minlength=G) / samples
    T = float(tokens_per_gpu)
    # every source GPU sees the same destination shares (the routing ignores the source)
    gpu = np.tile(p_gpu * T, (G, 1))
    node = np.tile(p_node * T, (G, 1))
    choice = np.tile(p_choice * T, (G, 1))
    ranks = np.arange(G)
    return DispatchTraffic(gpu, node, choice, ranks // gpus_per_node, ranks % gpus_per_node, np.full(G, T))


# ------------------------------------------------------------------------------------------- flows
@dataclass(frozen=True)
class FlowSet:
    """Point-to-point flows of one path class, in group positions: ``src``/``dst`` (f,), ``nbytes`` (f,);
    ``network``: they cross nodes (RDMA), else NVLink."""

    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray
    network: bool


def kernel(hw: HardwareSpec, algorithm: str, op: str) -> DispatchKernel:
    """The fitted kernel terms of ``algorithm``'s ``op``; the NCCL path calibration where none is fitted."""
    d = hw.collectives.deepep
    if d is not None and algorithm in ("deepep-normal", "deepep-ll"):
        return getattr(d, ("normal_" if algorithm == "deepep-normal" else "ll_") + op)
    c = hw.collectives
    return DispatchKernel(alpha_s=c.nvlink.alpha_s, alpha_internode_s=c.network.alpha_s,
                          nvlink_efficiency=c.nvlink.efficiency, rdma_efficiency=c.network.efficiency)


def flows(traffic: DispatchTraffic, token_bytes: float, algorithm: str, op: str) -> list[FlowSet]:
    """The flows one exchange puts on the fabric (combine: the dispatch's, reversed)."""
    nid, loc = traffic.nodes_of, traffic.local_of
    n = nid.size
    if algorithm == "deepep-ll":
        sets = _split(np.repeat(np.arange(n), n), np.tile(np.arange(n), n), traffic.choice.ravel() * token_bytes, nid)
    elif algorithm in ("deepep-normal", "hierarchical"):
        per_node = traffic.node
        if algorithm == "hierarchical":  # no per-node dedup: one copy per destination GPU on the NIC
            per_node = np.zeros_like(traffic.node)
            np.add.at(per_node.T, nid, traffic.gpu.T)
        sets = _relayed(traffic.gpu * token_bytes, per_node * token_bytes, nid, loc)
    else:
        sets = _split(np.repeat(np.arange(n), n), np.tile(np.arange(n), n), traffic.gpu.ravel() * token_bytes, nid)
    if op == "combine":
        sets = [FlowSet(s.dst, s.src, s.nbytes, s.network) for s in sets]
    return sets


def _split(src, dst, nbytes, nid) -> list[FlowSet]:
    """Flows (self and empty ones dropped) split into NVLink and network sets."""
    keep = (src != dst) & (nbytes > 0)
    src, dst, nbytes = src[keep], dst[keep], nbytes[keep]
    inter = nid[src] != nid[dst]
    return [FlowSet(src[m], dst[m], nbytes[m], net) for m, net in ((~inter, False), (inter, True)) if m.any()]


def _relayed(gpu_bytes: np.ndarray, node_bytes: np.ndarray, nid: np.ndarray, loc: np.ndarray) -> list[FlowSet]:
    """RDMA once per destination node to the same-rail GPU there (``node_bytes``), then NVLink from that
    GPU to each destination GPU of the node (``gpu_bytes``); own-node tokens straight over NVLink."""
    n, m = node_bytes.shape
    pos = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(nid, loc))}
    first = {int(b): int(np.flatnonzero(nid == b)[0]) for b in range(m)}
    # relay[i, b]: the GPU of node b with i's local index (the first GPU of b if the group has none there)
    relay = np.array([[pos.get((b, int(loc[i])), first[b]) for b in range(m)] for i in range(n)])
    src_r = np.repeat(np.arange(n), m)
    dst_r = relay.ravel()
    rdma = node_bytes.ravel() * (nid[src_r] != np.tile(np.arange(m), n))
    hop = relay[:, nid]  # (n, n): where i's tokens for GPU j enter j's node
    nv = np.zeros((n, n))
    np.add.at(nv, (hop.ravel(), np.tile(np.arange(n), n)), gpu_bytes.ravel())
    i, j = np.nonzero(nv)
    return _split(src_r, dst_r, rdma, nid) + _split(i, j, nv[i, j], nid)


# ------------------------------------------------------------------------------------------- price
@dataclass(frozen=True)
class Shape:
    """Load of one exchange on its busiest GPU: bytes it sends or receives over NVLink and over the
    network, the longest path latency of each (s), and the messages (token copies) it sends."""

    nvlink_bytes: float
    nvlink_latency_s: float
    network_bytes: float
    network_latency_s: float
    messages: float
    spans: bool

    def scaled(self, f: float) -> "Shape":
        """The same exchange with ``f`` times the tokens."""
        return Shape(self.nvlink_bytes * f, self.nvlink_latency_s, self.network_bytes * f,
                     self.network_latency_s, self.messages * f, self.spans)


def shape(hw: HardwareSpec, traffic: DispatchTraffic, token_bytes: float, algorithm: str, op: str, nodes: int) -> Shape:
    """The :class:`Shape` of one exchange with the traffic's GPUs on a cluster of ``nodes`` nodes."""
    cl = build_cluster(hw, nodes)
    n = traffic.nodes_of.size
    g = traffic.nodes_of * cl.gpus_per_domain + traffic.local_of
    by = {False: (0.0, 0.0), True: (0.0, 0.0)}
    sets = flows(traffic, token_bytes, algorithm, op)
    for s in sets:
        by[s.network] = (max(by[s.network][0], _busiest(s, n)),
                         max(by[s.network][1], float(cl.path_latency(g[s.src], g[s.dst]).max())))
    return Shape(*by[False], *by[True], _messages(sets, n, token_bytes), bool(np.unique(traffic.nodes_of).size > 1))


def _messages(sets: list[FlowSet], n: int, token_bytes: float) -> float:
    """Token copies the busiest of ``n`` GPUs sends, over NVLink and the network together."""
    sent = sum((np.bincount(s.src, s.nbytes, n) for s in sets), np.zeros(n))
    return float(sent.max()) / token_bytes


def notify_seconds(hw: HardwareSpec, algorithm: str, op: str, nodes: int, tokens_per_gpu: float) -> float:
    """The notify step DeepEP's normal kernels run first across nodes (notify_dispatch / cached_notify:
    per-rank token counts), s; 0 for other algorithms and inside one node."""
    if algorithm != "deepep-normal" or nodes < 2:
        return 0.0
    k = kernel(hw, algorithm, op)
    return k.notify_s + k.notify_per_node_s * nodes + k.notify_per_token_s * tokens_per_gpu


def _latency(k: DispatchKernel, s: Shape) -> float:
    """Kernel latency (s): its base latency inside or across nodes plus the per-message cost."""
    return (k.alpha_internode_s if s.spans else k.alpha_s) + k.message_s * s.messages


def _sm_rate(hw: HardwareSpec, algorithm: str, k: DispatchKernel) -> float:
    """NVLink bytes/s the kernel's SMs sustain (deepep-normal across nodes), 0 when unbounded."""
    d = hw.collectives.deepep
    return k.nvlink_sm_rate * d.sms if (algorithm == "deepep-normal" and d is not None) else 0.0


def seconds(hw: HardwareSpec, k: DispatchKernel, sms_rate: float, s: Shape) -> float:
    """Closed-form seconds of one exchange of shape ``s`` alone: latency + the slowest of its NVLink
    bytes at ``k.nvlink_efficiency`` x line rate (+ path latency), its network bytes at
    ``k.rdma_efficiency`` x NIC rate (+ path latency) and, across nodes, its NVLink bytes at ``sms_rate``."""
    t = 0.0
    if s.nvlink_bytes:
        t = s.nvlink_latency_s + s.nvlink_bytes / (hw.node.nvlink_bandwidth * k.nvlink_efficiency)
        if sms_rate and s.spans:
            t = max(t, s.nvlink_bytes / sms_rate)
    if s.network_bytes:
        t = max(t, s.network_latency_s + s.network_bytes / (hw.network.nic_bandwidth * k.rdma_efficiency))
    return _latency(k, s) + t


def _busiest(s: FlowSet, n: int) -> float:
    """Bytes of the busiest GPU of a flow set, sending or receiving."""
    return float(max(np.bincount(s.src, s.nbytes, n).max(), np.bincount(s.dst, s.nbytes, n).max()))


def exchange(net: FlowNetwork, gpus, traffic: DispatchTraffic, token_bytes: float, algorithm: str, op: str,
             tag: str = "all_to_all"):
    """One dispatch or combine of ``traffic`` (``token_bytes`` per token copy) among ``gpus`` (SimPy process).

    Its flows run on the fabric at the kernel's efficiency (bytes on the wire scaled by the path's
    calibrated link efficiency / the kernel's), all phases at once (pipelined); across nodes the
    deepep-normal kernel also lasts at least its busiest GPU's NVLink bytes at the SM-bound rate."""
    if op not in OPS:
        raise SpecError("op", op, "dispatch or combine")
    g = np.asarray(gpus, dtype=np.int64)
    if g.size < 2 or token_bytes <= 0:
        return
    if algorithm == "nccl":  # the split exchange of per-peer row counts first
        counts = np.full((g.size, g.size), SPLIT_COUNT_BYTES) * (1 - np.eye(g.size))
        yield from coll.all_to_all(net, g, counts, "direct", tag)
    notify = notify_seconds(net.cluster.hw, algorithm, op, int(np.unique(traffic.nodes_of).size),
                            float(traffic.tokens.max()))
    if notify:
        yield net.env.timeout(notify)
    sets = flows(traffic, token_bytes, algorithm, op)
    if not sets:
        return
    hw = net.cluster.hw
    k = kernel(hw, algorithm, op)
    spans = bool(np.unique(traffic.nodes_of).size > 1)
    msgs = _messages(sets, g.size, token_bytes) if k.message_s else 0.0
    lat = _latency(k, Shape(0.0, 0.0, 0.0, 0.0, msgs, spans))
    c = hw.collectives
    wire = {False: c.nvlink.efficiency / k.nvlink_efficiency, True: c.network.efficiency / k.rdma_efficiency}
    events = [net.transfer_many(g[s.src], g[s.dst], s.nbytes, tag, lat, wire[s.network]) for s in sets]
    sm = _sm_rate(hw, algorithm, k)
    nv = [s for s in sets if not s.network]
    if sm and nv and spans:
        events.append(net.env.timeout(lat + max(_busiest(s, g.size) for s in nv) / sm))
    yield simpy.AllOf(net.env, events)


def alone_seconds(hw: HardwareSpec, traffic: DispatchTraffic, token_bytes: float, algorithm: str, op: str,
                  nodes: int) -> float:
    """Closed form of :func:`exchange` alone on ``nodes`` nodes for symmetric traffic (:func:`seconds`)."""
    k = kernel(hw, algorithm, op)
    t = seconds(hw, k, _sm_rate(hw, algorithm, k), shape(hw, traffic, token_bytes, algorithm, op, nodes))
    if algorithm == "nccl":  # the split exchange runs first
        t += coll.predict(hw, "all_to_all", traffic.nodes_of.size, SPLIT_COUNT_BYTES, "direct", nodes)
    return t + notify_seconds(hw, algorithm, op, int(np.unique(traffic.nodes_of).size), float(traffic.tokens.max()))


def run_alone(hw: HardwareSpec, traffic: DispatchTraffic, token_bytes: float, algorithm: str, op: str,
              nodes: int) -> tuple[float, dict]:
    """One dispatch or combine alone on a fresh cluster of ``nodes`` nodes (simulated with :func:`exchange`;
    the traffic's GPUs sit at node ``nodes_of``, local index ``local_of``): (seconds, bytes that left a GPU
    for another, {"intra_node", "inter_node"}, summed over GPUs)."""
    env = simpy.Environment()
    cl = build_cluster(hw, nodes)
    net = FlowNetwork(env, cl)
    g = traffic.nodes_of * cl.gpus_per_domain + traffic.local_of
    proc = env.process(exchange(net, g, traffic, token_bytes, algorithm, op, "x"))
    env.run(proc)
    return float(env.now), dict(net.bytes_by_tag.get("x", {"intra_node": 0.0, "inter_node": 0.0}))


def predict(hw: HardwareSpec, traffic: DispatchTraffic, token_bytes: float, algorithm: str, op: str,
            nodes: int) -> float:
    """Seconds of one dispatch or combine alone on a fresh cluster of ``nodes`` nodes (:func:`run_alone`)."""
    return run_alone(hw, traffic, token_bytes, algorithm, op, nodes)[0]


#: ``simfoe kernel --a2a`` names: DeepEP's modes, or any algorithm of :data:`ALGORITHMS` but auto
A2A_NAMES = {"normal": "deepep-normal", "ll": "deepep-ll", **{a: a for a in ALGORITHMS if a != "auto"}}


def exchange_cost(hw: HardwareSpec, op: str, a2a: str, nodes: int, tokens_per_gpu: int, hidden: int, topk: int,
                  experts: int, node_groups: int | None = None, dtype: str = "bf16") -> dict:
    """One dispatch or combine on ``nodes`` nodes of ``hw``, every GPU holding ``tokens_per_gpu`` tokens of
    ``hidden`` values routed by DeepEP's test routing (top-``topk`` of ``experts``, over at most
    ``node_groups`` nodes): {"latency_s", "algorithm", "comm_bytes": {"intra_node", "inter_node"}}."""
    if op not in OPS:
        raise SpecError("--op", op, "dispatch or combine")
    if a2a not in A2A_NAMES:
        raise SpecError("--a2a", a2a, "one of " + ", ".join(A2A_NAMES))
    if dtype not in ("bf16", "fp8") or (op == "combine" and dtype == "fp8"):
        raise SpecError("--dtype", dtype, "bf16 or fp8 for a dispatch; bf16 for a combine (expert outputs "
                        "return in bf16)")
    algorithm = A2A_NAMES[a2a]
    per = min(hw.node.gpus_per_domain, nodes * hw.node.gpus_per_node)  # GPUs of one NVLink domain in use
    if nodes * hw.node.gpus_per_node % per:
        raise SpecError("--nodes", nodes, f"whole NVLink domains of {per} GPUs ({per // hw.node.gpus_per_node} nodes)")
    tr = deepep_test_traffic(nodes * hw.node.gpus_per_node // per, per, tokens_per_gpu, experts, topk, node_groups)
    t, nbytes = run_alone(hw, tr, copy_bytes(hidden, 1 if dtype == "fp8" else 2, algorithm, op), algorithm, op, nodes)
    return {"latency_s": t, "algorithm": algorithm, "comm_bytes": nbytes}
