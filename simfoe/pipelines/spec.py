"""Pipeline spec: YAML -> typed, validated dataclasses (no graph logic here; see graph.py).

Stage keys (all but ``name`` optional; defaults in brackets):

- ``instances`` [1]: replicas of the stage, each with its own queue.
- ``concurrency`` [1]: requests an instance serves at once (slots sharing one queue; an LM
  engine batching requests has many, a retrieval server one). ``instances: 1, concurrency: c``
  is an M/G/c queue.
- ``service_s`` [required]: seconds per emitted unit (per part when ``parts`` is given, else per
  output; for a stateful stage: per arriving item).
- ``outputs`` [1]: partial outputs per input (per aggregate for a stateful stage), rounded, >= 1.
  Giving it (or ``level``) starts a new key level named ``level`` [stage name].
- ``parts``: ``{count: DIST, level: NAME}``, each output streamed as ``count`` parts (e.g. tokens).
- ``to`` [[]]: downstream stages, as names or ``{stage: NAME, unit: LEVEL}``; ``unit`` picks the
  granularity forwarded on that edge (one of this stage's own levels; default the finest).
- ``stateful`` [false] and ``key`` [the arriving items' parent level]: aggregate items by key
  level (``request`` or a level name); the aggregate completes when every item has arrived.
  ``service_per`` [item]: ``item`` serves each arriving item (e.g. BM25 scoring a query token)
  and emits the outputs when the last is served; ``aggregate`` counts arrivals without service and
  then runs the aggregate's outputs as one job on that instance (e.g. a reranker joining inputs).
- ``kind`` [lm if ``outputs``/``parts`` given, else compute]: informational, and where
  prompt-aware routing applies.
- ``prefix_cache``: ``{reduction: F, capacity: K}``; service time x (1 - F) when the request's
  prompt type is among the K most recent prompt types the instance served.
- ``item_bytes`` [0]: bytes per emitted item (for transfer time between nodes).
- ``placement`` [node 0]: ``{node: N}`` or ``{nodes: [N0, N1, ...]}`` one per instance.

Pipeline keys: ``name``, ``stages``, ``routing`` [aggregation-aware], ``hardware`` (a hardware
profile, e.g. ``a100-sxm``, or a YAML path: the cluster the instances are placed on; its calibrated
NVLink and NIC rates and latencies become the network defaults, and ``nodes`` [largest node used + 1]
bounds the placement), ``network``
(``intra_node_bandwidth``, ``inter_node_bandwidth`` in bytes/s, ``intra_node_latency``,
``inter_node_latency`` in s; explicit keys override the hardware profile's), ``prompts`` (``{weights: [...]}``,
prompt-type mix of requests),
``spill_queue`` [4] (prompt-aware: queue length above which a request leaves its home instance).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from simfoe.errors import SpecError
from simfoe.specs.distributions import DistSpec, as_number, parse_dist

PRESET_DIR = Path(__file__).resolve().parent / "presets"

# Network defaults, from ../shared/reference/hardware.md (A100 node; ALTO ran on one 8x A100 node).
NVLINK3_BW = 300e9  # A100 NVLink gen3, 300 GB/s per direction [D]
HDR_NIC_BW = 24e9  # ConnectX-6 HDR 200 Gb/s, ~24 GB/s achieved per NIC [M] NVIDIA/nccl#1048
INTER_NODE_LATENCY = 5e-6  # ~2 us RDMA round trip through one switch (weak) + ~3 us A100 P2P hop [M] YanBC/nvmlc
# Intra-node forwarding is taken as free by default: ALTO forwards through a local runtime over
# UNIX sockets and Table 1's per-output times were measured with it in place (chosen: avoids
# counting that cost twice).
INTRA_NODE_LATENCY = 0.0

STAGE_KEYS = {
    "name", "instances", "concurrency", "service_s", "outputs", "level", "parts", "to", "stateful",
    "key", "kind", "prefix_cache", "item_bytes", "placement", "note", "service_per",
}
PIPELINE_KEYS = {"name", "stages", "routing", "network", "prompts", "spill_queue", "note", "notes", "hardware", "nodes"}


@dataclass(frozen=True)
class EdgeSpec:
    to: str
    unit: str | None = None


@dataclass(frozen=True)
class PrefixCacheSpec:
    reduction: float  # fraction of service time saved on a prefix-cache hit, 0..1
    capacity: int  # prompt types an instance keeps cached (LRU)


@dataclass(frozen=True)
class StageSpec:
    name: str
    service_s: DistSpec
    instances: int = 1
    concurrency: int = 1
    outputs: DistSpec = field(default_factory=lambda: DistSpec.constant(1))
    level: str | None = None  # key level this stage's fan-out creates (None: no fan-out level)
    parts: DistSpec | None = None
    parts_level: str | None = None
    to: tuple[EdgeSpec, ...] = ()
    stateful: bool = False
    key: str | None = None
    service_per: str = "item"  # stateful: "item" (each arriving item) or "aggregate" (its outputs, on completion)
    kind: str = "compute"
    prefix_cache: PrefixCacheSpec | None = None
    item_bytes: float = 0.0
    nodes: tuple[int, ...] = ()  # node of each instance


@dataclass(frozen=True)
class NetworkSpec:
    intra_node_bandwidth: float = NVLINK3_BW
    inter_node_bandwidth: float = HDR_NIC_BW
    intra_node_latency: float = INTRA_NODE_LATENCY
    inter_node_latency: float = INTER_NODE_LATENCY


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    stages: tuple[StageSpec, ...]
    routing: str = "aggregation-aware"
    network: NetworkSpec = NetworkSpec()
    prompt_weights: tuple[float, ...] = (1.0,)
    spill_queue: int = 4

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise SpecError("stage", name, f"one of {', '.join(s.name for s in self.stages)}")

    def with_routing(self, routing: str) -> "PipelineSpec":
        return replace(self, routing=routing)


def _int(field_: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise SpecError(field_, v, "an integer")
    if v < minimum:
        raise SpecError(field_, v, f"an integer >= {minimum}")
    return int(v)


def _float(field_: str, v: Any, minimum: float = 0.0, maximum: float | None = None, strict: bool = False) -> float:
    v = as_number(field_, v)
    if v < minimum or (strict and v == minimum) or (maximum is not None and v > maximum):
        rng = f"{'>' if strict else '>='} {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise SpecError(field_, v, f"a number {rng}")
    return float(v)


def _parse_stage(d: Any, i: int) -> StageSpec:
    f = f"stages[{i}]"
    if not isinstance(d, dict):
        raise SpecError(f, d, "a mapping with at least name and service_s")
    unknown = set(d) - STAGE_KEYS
    if unknown:
        k = sorted(unknown)[0]
        raise SpecError(f"{f}.{k}", d[k], f"stage keys: {', '.join(sorted(STAGE_KEYS))}")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{f}.name", name, "a non-empty string")
    f = f"stages.{name}"
    if "service_s" not in d:
        raise SpecError(f"{f}.service_s", None, "a distribution of seconds per unit (required)")
    service = parse_dist(d["service_s"], f"{f}.service_s")
    instances = _int(f"{f}.instances", d.get("instances", 1), 1)
    concurrency = _int(f"{f}.concurrency", d.get("concurrency", 1), 1)
    outputs = parse_dist(d.get("outputs", 1), f"{f}.outputs")
    level = d.get("level")
    if level is not None and (not isinstance(level, str) or not level):
        raise SpecError(f"{f}.level", level, "a non-empty string")
    if level is None and "outputs" in d:
        level = name
    parts = parts_level = None
    if "parts" in d:
        p = d["parts"]
        if not isinstance(p, dict) or "count" not in p:
            raise SpecError(f"{f}.parts", p, "a mapping {count: DIST, level: NAME}")
        parts = parse_dist(p["count"], f"{f}.parts.count")
        parts_level = p.get("level", f"{name}_part")
        if not isinstance(parts_level, str) or not parts_level:
            raise SpecError(f"{f}.parts.level", parts_level, "a non-empty string")
        if level is None:
            level = name
    to_raw = d.get("to", []) or []
    if isinstance(to_raw, str):
        to_raw = [to_raw]
    if not isinstance(to_raw, list):
        raise SpecError(f"{f}.to", to_raw, "a list of stage names or {stage, unit} mappings")
    edges = []
    for e in to_raw:
        if isinstance(e, str):
            edges.append(EdgeSpec(e))
        elif isinstance(e, dict) and isinstance(e.get("stage"), str) and set(e) <= {"stage", "unit"}:
            edges.append(EdgeSpec(e["stage"], e.get("unit")))
        else:
            raise SpecError(f"{f}.to", e, "a stage name or {stage: NAME, unit: LEVEL}")
    stateful = d.get("stateful", False)
    if not isinstance(stateful, bool):
        raise SpecError(f"{f}.stateful", stateful, "true or false")
    key = d.get("key")
    if key is not None and not stateful:
        raise SpecError(f"{f}.key", key, "only on a stateful stage (set stateful: true)")
    service_per = d.get("service_per", "item")
    if service_per not in ("item", "aggregate") or (service_per == "aggregate" and not stateful):
        raise SpecError(f"{f}.service_per", service_per, "item or aggregate (aggregate only on a stateful stage)")
    kind = d.get("kind", "lm" if ("outputs" in d or "parts" in d) and not stateful else "compute")
    if kind not in ("lm", "compute"):
        raise SpecError(f"{f}.kind", kind, "lm or compute")
    pc = None
    if d.get("prefix_cache") is not None:
        p = d["prefix_cache"]
        if not isinstance(p, dict):
            raise SpecError(f"{f}.prefix_cache", p, "a mapping {reduction: 0..1, capacity: K}")
        pc = PrefixCacheSpec(
            _float(f"{f}.prefix_cache.reduction", p.get("reduction", 0.0), 0.0, 0.95),
            _int(f"{f}.prefix_cache.capacity", p.get("capacity", 1), 1),
        )
    item_bytes = _float(f"{f}.item_bytes", d.get("item_bytes", 0.0))
    pl = d.get("placement") or {}
    if not isinstance(pl, dict) or not set(pl) <= {"node", "nodes"}:
        raise SpecError(f"{f}.placement", pl, "{node: N} or {nodes: [N, ...]} (one per instance)")
    if "nodes" in pl:
        if not isinstance(pl["nodes"], list) or len(pl["nodes"]) != instances:
            raise SpecError(f"{f}.placement.nodes", pl["nodes"], f"a list of {instances} node indices")
        nodes = tuple(_int(f"{f}.placement.nodes", n, 0) for n in pl["nodes"])
    else:
        nodes = (_int(f"{f}.placement.node", pl.get("node", 0), 0),) * instances
    return StageSpec(
        name=name, service_s=service, instances=instances, concurrency=concurrency, outputs=outputs,
        level=level, parts=parts, parts_level=parts_level, to=tuple(edges), stateful=stateful, key=key,
        service_per=service_per,
        kind=kind, prefix_cache=pc, item_bytes=item_bytes, nodes=nodes,
    )


def parse_pipeline(d: Any) -> PipelineSpec:
    """Dict (from YAML) -> PipelineSpec, then graph validation (cycles, unknown stages, keys)."""
    from simfoe.pipelines.graph import build_graph
    from simfoe.pipelines.routing import POLICIES

    if not isinstance(d, dict):
        raise SpecError("spec", type(d).__name__, "a mapping with name and stages")
    unknown = set(d) - PIPELINE_KEYS
    if unknown:
        k = sorted(unknown)[0]
        raise SpecError(k, d[k], f"pipeline keys: {', '.join(sorted(PIPELINE_KEYS))}")
    stages_raw = d.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise SpecError("stages", stages_raw, "a non-empty list of stages")
    stages = tuple(_parse_stage(s, i) for i, s in enumerate(stages_raw))
    routing = d.get("routing", "aggregation-aware")
    if routing not in POLICIES:
        raise SpecError("routing", routing, f"one of {', '.join(POLICIES)}")
    net = d.get("network") or {}
    if not isinstance(net, dict) or not set(net) <= set(NetworkSpec.__dataclass_fields__):
        raise SpecError("network", net, f"keys {', '.join(NetworkSpec.__dataclass_fields__)}")
    base = _network_from_hardware(d["hardware"]) if d.get("hardware") is not None else {}
    network = NetworkSpec(**{**base, **{
        k: _float(f"network.{k}", v, 0.0, strict=k.endswith("bandwidth")) for k, v in net.items()
    }})
    if d.get("nodes") is not None:
        n_nodes = _int("nodes", d["nodes"], 1)
        for st in stages:
            bad = [n for n in st.nodes if n >= n_nodes]
            if bad:
                raise SpecError(f"stages.{st.name}.placement", bad[0], f"a node index below nodes={n_nodes}")
    prompts = d.get("prompts") or {}
    weights = prompts.get("weights", [1.0]) if isinstance(prompts, dict) else None
    if not isinstance(weights, list) or not weights or any(
        isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights
    ) or sum(weights) <= 0:
        raise SpecError("prompts.weights", weights, "a non-empty list of weights >= 0 with a positive sum")
    spill = _int("spill_queue", d.get("spill_queue", 4), 0)
    spec = PipelineSpec(
        name=str(d.get("name", "pipeline")), stages=stages, routing=routing, network=network,
        prompt_weights=tuple(float(w) for w in weights), spill_queue=spill,
    )
    build_graph(spec)  # validates
    return spec


def _network_from_hardware(name: Any) -> dict:
    """Network defaults from a hardware profile: calibrated NVLink and NIC rates, one-way latencies.

    Inside a node: NVLink line rate x its fitted efficiency, latency ``node.nvlink_latency_s``;
    between nodes: NIC line rate x its efficiency, latency ``network.nic_latency_s`` plus the
    network path's small-message base latency (LL protocol when calibrated, else Simple).
    """
    from simfoe.specs.io import load_hardware

    hw = load_hardware(str(name))
    c = hw.collectives
    base = c.network.ll_alpha_s if c.network.ll_alpha_s is not None else c.network.alpha_s
    return {
        "intra_node_bandwidth": hw.nvlink_rate,
        "inter_node_bandwidth": hw.nic_rate,
        "intra_node_latency": hw.node.nvlink_latency_s,
        "inter_node_latency": hw.network.nic_latency_s + base,
    }


def _set_path(d: dict, path: str, value: Any) -> None:
    """Apply one ``--set`` override: ``stages.NAME.key[.sub]=value`` or a top-level dotted path."""
    parts = path.split(".")
    cur: Any = d
    i = 0
    while i < len(parts) - 1:
        p = parts[i]
        if isinstance(cur, list):
            match = [s for s in cur if isinstance(s, dict) and s.get("name") == p]
            if not match:
                raise SpecError(path, value, f"a path through existing stage names ({', '.join(s.get('name', '?') for s in cur)})")
            cur = match[0]
        else:
            if p not in cur or not isinstance(cur[p], (dict, list)):
                cur[p] = {}
            cur = cur[p]
        i += 1
    if not isinstance(cur, dict):
        raise SpecError(path, value, "a dotted path ending in a mapping key")
    cur[parts[-1]] = value


def load_pipeline(spec: str | Path | dict, overrides: list[str] | None = None) -> PipelineSpec:
    """A preset name (``factool``), a YAML path, or a dict -> validated PipelineSpec.

    ``overrides`` are ``dotted.path=value`` strings (value parsed as YAML), e.g.
    ``stages.bm25.service_s.mean=0.003``.
    """
    if isinstance(spec, dict):
        d = spec
    else:
        p = Path(spec)
        preset = PRESET_DIR / f"{spec}.yaml"
        if isinstance(spec, str) and preset.is_file():
            p = preset
        if not p.is_file():
            presets = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
            raise SpecError("spec", str(spec), f"a preset ({', '.join(presets)}) or an existing YAML file")
        try:
            d = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise SpecError("spec", str(spec), "a UTF-8 text YAML file (this file is binary or in another encoding)") from None
        except yaml.YAMLError as e:
            raise SpecError("spec", str(spec), f"valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(d, dict):
            what = "empty" if d is None else f"a YAML {type(d).__name__}"
            raise SpecError("spec", str(spec), f"a YAML mapping with name and stages (the file is {what})")
    import copy

    d = copy.deepcopy(d)
    for o in overrides or []:
        if "=" not in o:
            raise SpecError("--set", o, "PATH=VALUE, e.g. stages.bm25.service_s.mean=0.003")
        k, v = o.split("=", 1)
        _set_path(d, k.strip(), yaml.safe_load(v))
    return parse_pipeline(d)


def list_presets() -> list[str]:
    return sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
