"""What a run simulated, so that two runs can be compared and one reproduced.

* :class:`LayoutInfo` - the resolved layout of one model instance (MoE: EP size, attention TP and
  DP ranks; FoE: clusters x GPUs per cluster; nodes and GPUs), built by :func:`layout_info` from the
  layout that :mod:`simfoe.specs.placement` resolves (``ForwardModel.layout``). ``forward`` and
  ``serve`` results carry it as ``layout``.
* :class:`RunRecord` - the provenance record: simfoe version, the command line, model and hardware
  names, ``--set`` overrides, seed, routing, the command's options and the resolved specs. The CLI
  adds it to ``forward``, ``serve``, ``pipeline``, ``recommend``, ``validate`` and ``kernel`` output as
  ``run``; :func:`run_record`, :func:`pipeline_record` and :func:`command_record` build it.

This module sits beside the specs: it imports nothing above them.
"""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from typing import Sequence

from simfoe.specs.hardware import HardwareSpec
from simfoe.specs.model import ModelSpec
from simfoe.specs.placement import FoELayout, MoELayout, PlacementSpec

#: Keys of a hardware spec left out of a run record: the per-number source map (it stays in the
#: profile file, named by the hardware name) and the free-text description. Neither changes a result.
HARDWARE_OMITTED = ("provenance", "description")


@dataclass(frozen=True)
class LayoutInfo:
    """Resolved layout of one model instance. Counts are GPUs or ranks; None: not this arch's concept."""

    arch: str  # "moe" | "foe"
    nodes: int
    gpus: int
    gpus_per_node: int
    ep: int | None = None  # MoE: expert-parallel group size (None for a dense model)
    attention: str | None = None  # MoE: "tp" (TP inside a node, DP across) | "dp" (DP everywhere)
    attention_tp: int | None = None  # MoE: attention tensor-parallel degree
    attention_dp: int | None = None  # MoE: data-parallel attention ranks = GPUs / attention TP
    redundant_experts: int | None = None  # MoE: extra expert replicas per EP group
    expert_tp: int | None = None  # MoE: GPUs each expert is sliced over (set only when > 1)
    token_exchange: str | None = None  # MoE: "gather" when expert groups gather tokens with whole experts (else unset)
    clusters: int | None = None  # FoE: expert clusters
    gpus_per_cluster: int | None = None  # FoE: GPUs per cluster, inside one node
    clusters_per_gpu: int | None = None  # FoE: clusters sharing one GPU (1 unless clusters > GPUs)

    def label(self) -> str:
        """One line, e.g. ``MoE: EP 16, attention TP 8 x DP 2; 2 nodes x 8 GPUs``."""
        where = f"{self.nodes} node{'s' if self.nodes != 1 else ''} x {self.gpus_per_node} GPUs"
        if self.arch == "foe":
            per = (f"{self.clusters_per_gpu} per GPU" if (self.clusters_per_gpu or 1) > 1
                   else f"{self.gpus_per_cluster} GPU{'s' if self.gpus_per_cluster != 1 else ''} per cluster")
            return f"FoE: {self.clusters} clusters x {per}; {where}"
        head = f"MoE: EP {self.ep}," if self.ep is not None else "dense:"
        if self.expert_tp:
            head = f"MoE: EP {self.ep} x expert TP {self.expert_tp},"
        elif self.token_exchange:
            head = f"MoE: EP {self.ep} (tokens gathered, no all-to-all),"
        extra = f", +{self.redundant_experts} redundant experts" if self.redundant_experts else ""
        return f"{head} attention TP {self.attention_tp} x DP {self.attention_dp}{extra}; {where}"

    def to_dict(self) -> dict:
        """The set fields plus ``label``."""
        return {**{k: v for k, v in asdict(self).items() if v is not None}, "label": self.label()}


def layout_info(layout: MoELayout | FoELayout, nodes: int) -> LayoutInfo:
    """:class:`LayoutInfo` of a resolved layout of an instance on ``nodes`` nodes."""
    base = dict(nodes=int(nodes), gpus=layout.gpus, gpus_per_node=layout.gpus_per_node)
    if isinstance(layout, FoELayout):
        return LayoutInfo("foe", **base, clusters=layout.clusters, gpus_per_cluster=layout.gpus_per_cluster,
                          clusters_per_gpu=layout.clusters_per_gpu)
    dense = layout.n_experts <= 1
    return LayoutInfo("moe", **base, ep=None if dense else layout.ep, attention=layout.attention,
                      attention_tp=layout.attention_tp, attention_dp=layout.attention_dp,
                      redundant_experts=None if dense else layout.redundant,
                      expert_tp=layout.expert_tp if layout.expert_tp > 1 and not dense else None,
                      token_exchange="gather" if layout.gather and layout.expert_tp == 1 and not dense else None)


@dataclass(frozen=True)
class RunRecord:
    """Provenance of one run: enough to reproduce it and to tell two runs apart."""

    simfoe_version: str
    command: str | None  # the command line as typed (shell-quoted); None from the Python API
    model: str | None  # model spec name (None for a pipeline)
    hardware: str | None  # hardware spec name (None for a pipeline)
    overrides: tuple[str, ...]  # the --set list, in order
    seed: int | None
    routing: str | None
    options: dict = field(default_factory=dict)  # the command's options (flags) as given
    # resolved specs: {"model", "hardware", "placement"} (one run), {"pipeline"}, or from command_record
    # {"model"?, "hardware": {name: spec}?} (recommend, kernel; empty for validate)
    specs: dict = field(default_factory=dict)
    pipeline: str | None = None  # pipeline spec name (pipeline runs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["overrides"] = list(self.overrides)
        return d


def command_line(argv: Sequence[str] | None) -> str | None:
    """``["simfoe", "forward", ...]`` as one shell-quoted line (None stays None)."""
    return None if argv is None else shlex.join(str(a) for a in argv)


def run_record(model: ModelSpec, hw: HardwareSpec, placement: PlacementSpec, *, overrides: Sequence[str] = (),
               seed: int | None = None, routing: str | None = None, options: dict | None = None,
               argv: Sequence[str] | None = None) -> RunRecord:
    """The :class:`RunRecord` of a run of ``model`` on ``hw`` laid out as ``placement`` (resolved specs,
    overrides already applied); ``argv`` is the command line that started it, when there was one."""
    from simfoe import __version__

    specs = {"model": model.model_dump(mode="json"), "hardware": _hardware_dump(hw),
             "placement": placement.model_dump(mode="json")}
    return RunRecord(__version__, command_line(argv), model.name, hw.name, tuple(str(o) for o in overrides),
                     seed, routing, dict(options or {}), specs)


def pipeline_record(spec, *, overrides: Sequence[str] = (), seed: int | None = None, routing: str | None = None,
                    options: dict | None = None, argv: Sequence[str] | None = None) -> RunRecord:
    """The :class:`RunRecord` of a pipeline run: ``spec`` is the resolved pipeline spec (pydantic,
    overrides applied), recorded whole under ``specs["pipeline"]``."""
    from simfoe import __version__

    return RunRecord(__version__, command_line(argv), None, None, tuple(str(o) for o in overrides), seed, routing,
                     dict(options or {}), {"pipeline": spec.model_dump(mode="json")}, spec.name)


def command_record(*, model: ModelSpec | None = None, hardware: Sequence[HardwareSpec] = (),
                   overrides: Sequence[str] = (), seed: int | None = None, routing: str | None = None,
                   options: dict | None = None, argv: Sequence[str] | None = None) -> RunRecord:
    """The :class:`RunRecord` of a command that runs no single placement (``recommend``, ``validate``,
    ``kernel``): the resolved ``model``, if any, under ``specs["model"]`` and each resolved ``hardware``
    spec under ``specs["hardware"][name]`` (overrides applied; none given: key absent)."""
    from simfoe import __version__

    specs: dict = {}
    if model is not None:
        specs["model"] = model.model_dump(mode="json")
    if hardware:
        specs["hardware"] = {hw.name: _hardware_dump(hw) for hw in hardware}
    return RunRecord(__version__, command_line(argv), None if model is None else model.name,
                     ",".join(hw.name for hw in hardware) or None, tuple(str(o) for o in overrides), seed, routing,
                     dict(options or {}), specs)


def _hardware_dump(hw: HardwareSpec) -> dict:
    """``hw`` as recorded: its JSON dump without :data:`HARDWARE_OMITTED`."""
    return {k: v for k, v in hw.model_dump(mode="json").items() if k not in HARDWARE_OMITTED}
