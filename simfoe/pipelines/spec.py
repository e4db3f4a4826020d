"""Pipeline spec: YAML -> validated pydantic specs (no graph logic here; see graph.py).

Stage keys (all but ``name`` optional; defaults in brackets):

- ``instances`` [1]: replicas of the stage, each with its own queue.
- ``concurrency`` [1]: requests an instance serves at once (slots sharing one queue; an LM
  engine batching requests has many, a retrieval server one). ``instances: 1, concurrency: c``
  is an M/G/c queue.
- ``service_s`` [required unless ``engine``]: seconds per emitted unit (per part when ``parts`` is given, else per
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
- ``engine``: ``{model, hardware, nodes, arch, set, routing, profile, max_batch, token_budget, ...}``
  (:class:`EngineSpec`): each instance is a serving-engine replica instead of slots; then
  ``prompt_tokens`` (per input) and ``output_tokens`` (per emitted unit) are required distributions
  of tokens and ``service_s`` is not given (docs/pipelines.md, simfoe/pipelines/lm_engine.py).
  ``stream_into`` [new]: ``new`` makes each arriving unit a request; ``request`` feeds the units of one
  upstream job (items sharing their parent level) into ONE request whose context grows as they arrive
  and which decodes after the last (appended context; needs an upstream fan-out). ``context_tokens``
  [none]: tokens each request opens with (instructions) before its input's ``prompt_tokens``.

Pipeline keys: ``name``, ``stages``, ``routing`` [aggregation-aware], ``hardware`` (a hardware
profile, e.g. ``a100-sxm``, or a YAML path: the cluster the instances are placed on; its calibrated
NVLink and NIC rates and latencies become the network defaults, and ``nodes`` [largest node used + 1]
bounds the placement), ``network``
(``intra_node_bandwidth``, ``inter_node_bandwidth`` in bytes/s, ``intra_node_latency``,
``inter_node_latency`` in s; explicit keys override the hardware profile's), ``prompts`` (``{weights: [...]}``,
prompt-type mix of requests),
``spill_queue`` [4] (prompt-aware: queue length above which a request leaves its home instance).

Specs are pydantic models on :class:`simfoe.specs.base.Spec` (frozen here; unknown keys refused) and
errors name the field by stage name (``stages.bm25.instances``). ``--set PATH=VALUE`` overrides go
through :func:`simfoe.specs.io.set_path`, the same machinery as hardware/model/placement ``--set``,
with paths starting at the pipeline's own keys: ``stages.NAME.KEY[.SUB]``, ``routing``, ``network.KEY``.
Derived per stage (in one place, here): ``level`` [stage name when ``outputs``/``parts`` given],
``parts.level`` [``NAME_part``], ``kind``, and :attr:`StageSpec.nodes` (one node per instance).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationInfo, field_validator,
                      model_validator)

from simfoe.errors import SpecError
from simfoe.limits import PIPELINE_ENGINE_REQUESTS, PIPELINE_REQUESTS
from simfoe.pipelines.routing import POLICIES
from simfoe.specs.base import Spec, validate_spec
from simfoe.specs.distributions import DistSpec, parse_dist
from simfoe.specs.io import set_path, split_assignment

PRESET_DIR = Path(__file__).resolve().parent / "presets"

# Network defaults, from ../shared/reference/hardware.md (A100 node; ALTO ran on one 8x A100 node).
NVLINK3_BW = 300e9  # A100 NVLink gen3, 300 GB/s per direction [D]
HDR_NIC_BW = 24e9  # ConnectX-6 HDR 200 Gb/s, ~24 GB/s achieved per NIC [M] NVIDIA/nccl#1048
INTER_NODE_LATENCY = 5e-6  # ~2 us RDMA round trip through one switch (weak) + ~3 us A100 P2P hop [M] YanBC/nvmlc
# Intra-node forwarding is taken as free by default: ALTO forwards through a local runtime over
# UNIX sockets and Table 1's per-output times were measured with it in place (chosen: avoids
# counting that cost twice).
INTRA_NODE_LATENCY = 0.0


def _dist(value: Any, info: ValidationInfo) -> DistSpec:
    """A YAML distribution (mapping or bare number) -> DistSpec; errors name the field's sub-keys."""
    return value if isinstance(value, DistSpec) else parse_dist(value, info.field_name)


#: a distribution field: ``{dist: NAME, mean: M, std: S}`` or a bare number (constant); dumped as written
Dist = Annotated[DistSpec, BeforeValidator(_dist), PlainSerializer(DistSpec.to_dict)]


class PipelineModel(Spec):
    """Pipeline spec models are frozen: a run never changes its spec."""

    model_config = ConfigDict(frozen=True)


def _given(d: dict) -> dict:
    """A copy of a raw mapping without its null keys (YAML ``key:`` with no value means the default)."""
    return {k: v for k, v in d.items() if v is not None}


class EdgeSpec(PipelineModel):
    """A downstream stage; ``unit``: the level of this stage's output forwarded on the edge (None: finest)."""

    stage: str
    unit: str | None = None


class PrefixCacheSpec(PipelineModel):
    reduction: float = Field(0.0, ge=0.0, le=0.95)  # fraction of service time saved on a hit, 0..0.95
    capacity: int = Field(1, ge=1)  # prompt types an instance keeps cached (LRU)


class PartsSpec(PipelineModel):
    count: Dist  # parts per output (rounded, >= 1)
    level: str = Field(min_length=1)  # key level of a part [STAGE_part]


class StagePlacementSpec(PipelineModel):
    node: int = Field(0, ge=0)  # node of every instance
    nodes: tuple[Annotated[int, Field(ge=0)], ...] | None = None  # one node per instance (wins over node)


class EngineSpec(PipelineModel):
    """The served model behind an LM stage (simfoe/pipelines/lm_engine.py): each instance of the stage is
    one replica of the serving engine, ``nodes`` nodes of ``hardware`` holding ``model`` laid out as ``arch``.
    The engine knobs left out (None) take the profile's values, else the serving engine's defaults (``simfoe serve``)."""

    model: str = Field(min_length=1)  # model preset or YAML path
    hardware: str = Field(min_length=1)  # hardware profile or YAML path
    nodes: int = Field(1, ge=1)  # nodes per instance
    arch: Literal["moe", "foe"] = "moe"
    set: tuple[str, ...] = ()  # overrides of the model, hardware and placement specs (``simfoe serve --set``)
    routing: str = "uniform"  # expert routing (``simfoe serve --routing``)
    profile: str | None = None  # engine profile (``simfoe serve --engine``: vllm, sglang, trtllm or a YAML path)
    max_batch: int | None = Field(None, ge=1)  # sequences per iteration and DP attention rank
    token_budget: int | None = Field(None, ge=1)  # tokens per iteration and rank
    scheduler: str | None = None  # chunked | whole-prompt
    budget_scope: Literal["rank", "instance"] | None = None


class StageSpec(PipelineModel):
    name: str = Field(min_length=1)
    service_s: Dist | None = None  # seconds per emitted unit (required unless the stage has an engine)
    instances: int = Field(1, ge=1)
    concurrency: int = Field(1, ge=1)
    outputs: Dist = DistSpec.constant(1)
    level: str | None = Field(None, min_length=1)  # key level this stage's fan-out creates (None: no fan-out level)
    parts: PartsSpec | None = None
    to: tuple[EdgeSpec, ...] = ()
    stateful: bool = False
    key: str | None = None
    service_per: Literal["item", "aggregate"] = "item"
    kind: Literal["lm", "compute"] = "compute"
    prefix_cache: PrefixCacheSpec | None = None
    item_bytes: float = Field(0.0, ge=0.0)  # bytes per emitted item
    placement: StagePlacementSpec = StagePlacementSpec()
    note: str | None = None
    engine: EngineSpec | None = None  # served by the serving engine instead of slots (kind lm)
    prompt_tokens: Dist | None = None  # engine: prompt tokens per input
    output_tokens: Dist | None = None  # engine: output tokens per emitted unit (part, else output)
    context_tokens: Dist | None = Field(None, description=(
        "engine stages: tokens each request opens with before its input (e.g. instructions): added to prompt_tokens "
        "(stream_into new), or the prompt the first unit's tokens are appended to (stream_into request). "
        "Default: none."))
    stream_into: Literal["new", "request"] = Field("new", description=(
        "engine stages: how arriving units enter the engine. new: each unit is a new request (its prompt_tokens). "
        "request: the units of one upstream job (items sharing their parent key) feed ONE request: the first opens "
        "it, each appends its prompt_tokens to its context (chunk-prefilled as they arrive), and it decodes once "
        "the last has arrived and been prefilled (batch hand-over: the whole prompt at once)."))

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, d: Any) -> Any:
        """Defaults that depend on other keys: level, parts.level, kind; ``to`` names as edges."""
        if not isinstance(d, dict):
            return d  # pydantic refuses it: a stage is a mapping
        derive_level = "level" not in d  # a dumped spec's level: null stays null
        d = _given(d)
        name = d.get("name")
        fans = "outputs" in d or "parts" in d
        if isinstance(name, str) and fans and derive_level:
            d["level"] = name
        if isinstance(d.get("parts"), dict) and "level" not in d["parts"]:
            d["parts"] = {**d["parts"], "level": f"{name}_part"}
        d.setdefault("kind", "lm" if (fans or "engine" in d) and not d.get("stateful") else "compute")
        to = d.get("to", [])
        to = [to] if isinstance(to, str) else to
        if isinstance(to, list):
            d["to"] = [{"stage": e} if isinstance(e, str) else e for e in to]
        return d

    @model_validator(mode="after")
    def _check(self) -> "StageSpec":
        if self.key is not None and not self.stateful:
            raise SpecError("key", self.key, "only on a stateful stage (set stateful: true)")
        if self.level is None and (self.parts is not None or self.outputs != DistSpec.constant(1)):
            raise SpecError("level", None, "a level name where outputs or parts are given (leave it out: the stage name)")
        if self.service_per == "aggregate" and not self.stateful:
            raise SpecError("service_per", self.service_per, "item or aggregate (aggregate only on a stateful stage)")
        nodes = self.placement.nodes
        if nodes is not None and len(nodes) != self.instances:
            raise SpecError("placement.nodes", list(nodes), f"a list of {self.instances} node indices")
        self._check_engine()
        return self

    def _check_engine(self) -> None:
        """An engine stage is a stateless LM stage with token lengths and no slot-model keys; a slot stage has service_s."""
        if self.engine is None:
            if self.stream_into != "new":
                raise SpecError("stream_into", self.stream_into, "new (request only on a stage with an engine)")
            if self.service_s is None:
                raise SpecError("service_s", None, "a distribution of seconds per unit (required unless the stage has an engine)")
            for k in ("prompt_tokens", "output_tokens", "context_tokens"):
                if getattr(self, k) is not None:
                    raise SpecError(k, getattr(self, k).mean, "only on a stage with an engine (engine: {model, hardware, ...})")
            return
        if self.kind != "lm" or self.stateful:
            raise SpecError("engine", self.engine.model, "only on a stateless LM stage (kind: lm, not stateful)")
        for k in ("prompt_tokens", "output_tokens"):
            if getattr(self, k) is None:
                raise SpecError(k, None, "a distribution of tokens (required on a stage with an engine)")
        for k, given in (("service_s", self.service_s is not None), ("prefix_cache", self.prefix_cache is not None),
                         ("concurrency", self.concurrency != 1)):
            if given:
                raise SpecError(k, getattr(self, k), "omitted on a stage with an engine (the engine batches and times it)")

    @property
    def nodes(self) -> tuple[int, ...]:
        """Node index of each instance."""
        p = self.placement
        return p.nodes if p.nodes is not None else (p.node,) * self.instances

    @property
    def parts_level(self) -> str | None:
        return self.parts.level if self.parts is not None else None


class NetworkSpec(PipelineModel):
    """Hand-over costs between instances: bandwidth in bytes/s, one-way latency in s."""

    intra_node_bandwidth: float = Field(NVLINK3_BW, gt=0.0)
    inter_node_bandwidth: float = Field(HDR_NIC_BW, gt=0.0)
    intra_node_latency: float = Field(INTRA_NODE_LATENCY, ge=0.0)
    inter_node_latency: float = Field(INTER_NODE_LATENCY, ge=0.0)


class PromptsSpec(PipelineModel):
    weights: tuple[float, ...] = (1.0,)  # prompt-type mix of requests (normalized)

    @field_validator("weights")
    @classmethod
    def _mix(cls, w: tuple[float, ...]) -> tuple[float, ...]:
        if not w or any(x < 0 for x in w) or sum(w) <= 0:
            raise SpecError("weights", list(w), "a non-empty list of weights >= 0 with a positive sum")
        return w


class PipelineSpec(PipelineModel):
    name: str = "pipeline"
    stages: tuple[StageSpec, ...] = Field(min_length=1)
    routing: str = "aggregation-aware"
    network: NetworkSpec = NetworkSpec()
    prompts: PromptsSpec = PromptsSpec()
    spill_queue: int = Field(4, ge=0)  # prompt-aware: queue length above which a request leaves its home
    hardware: str | None = None  # profile whose NVLink/NIC rates and latencies are the network defaults
    nodes: int | None = Field(None, ge=1)  # bound on placement node indices
    note: str | None = None
    notes: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _network_defaults(cls, d: Any) -> Any:
        """``hardware`` fills the network keys the spec does not give."""
        if not isinstance(d, dict):
            raise SpecError("spec", type(d).__name__, "a mapping with name and stages")
        d = _given(d)
        if "hardware" in d and isinstance(d.get("network", {}), dict):
            d["network"] = {**_network_from_hardware(d["hardware"]), **d.get("network", {})}
        return d

    @field_validator("routing")
    @classmethod
    def _routing(cls, v: str) -> str:
        if v not in POLICIES:
            raise SpecError("routing", v, f"one of {', '.join(POLICIES)}")
        return v

    @model_validator(mode="after")
    def _placed(self) -> "PipelineSpec":
        for st in self.stages if self.nodes is not None else ():
            bad = [n for n in st.nodes if n >= self.nodes]
            if bad:
                raise SpecError(f"stages.{st.name}.placement", bad[0], f"a node index below nodes={self.nodes}")
        return self

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise SpecError("stage", name, f"one of {', '.join(s.name for s in self.stages)}")

    def with_routing(self, routing: str) -> "PipelineSpec":
        return self.model_copy(update={"routing": routing})

    @property
    def request_limit(self):
        """The run-size bound of this pipeline (:mod:`simfoe.limits`): engine-backed LM stages cost more per request."""
        return PIPELINE_ENGINE_REQUESTS if any(st.engine is not None for st in self.stages) else PIPELINE_REQUESTS


def parse_pipeline(d: Any) -> PipelineSpec:
    """Dict (from YAML) -> PipelineSpec, then graph validation (cycles, unknown stages, keys)."""
    from simfoe.pipelines.graph import build_graph

    spec = validate_spec(PipelineSpec, d, "")
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


def load_pipeline(spec: str | Path | dict, overrides: list[str] | None = None) -> PipelineSpec:
    """A preset name (``factool``), a YAML path, or a dict -> validated PipelineSpec.

    ``overrides`` are ``dotted.path=value`` strings (value parsed as YAML), e.g.
    ``stages.bm25.service_s.mean=0.003``.
    """
    if isinstance(spec, dict):
        d = spec
    elif not isinstance(spec, (str, Path)):
        raise SpecError("spec", type(spec).__name__, "a preset name, a YAML path or a mapping")
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
    d = copy.deepcopy(d)
    for o in overrides or []:
        path, value = split_assignment(o, "stages.bm25.service_s.mean=0.003")
        set_path(d, path, value, "", PipelineSpec)
    return parse_pipeline(d)


def list_presets() -> list[str]:
    return sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
