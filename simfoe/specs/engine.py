"""Engine profiles: how a serving engine (vLLM, SGLang, TensorRT-LLM) batches and what its CPU side costs.

A profile (``simfoe/specs/engines/<name>.yaml``) names the engine version it describes and gives
the scheduler knobs that version uses by default (token budget per iteration, running requests,
scheduling order) and the host overheads the GPU cost model does not see (per request: the API
server; per iteration: scheduling, sampling, launching). Every value names its source in the
profile's ``provenance`` map (field -> source); the overheads are fitted (``simfoe fit silicon``).
Units: seconds, tokens, sequences.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from simfoe.errors import SpecError
from simfoe.specs.base import Spec, validate_spec

#: Scheduling orders a profile can name (simfoe.serving.scheduler registers the same names).
SCHEDULING = ("chunked", "whole-prompt", "prefill-first")


class Overheads(Spec):
    """Host time the forward model does not price (s); fitted to measured serving runs."""

    request_s: float = Field(0.0, ge=0, description="per request: client send -> schedulable in the engine (HTTP, "
                             "tokenization, hand-over to the engine core; requests overlap in it), s")
    step_s: float = Field(0.0, ge=0, description="per iteration: scheduling, sampling and launch time the GPU "
                          "waits for, s")
    step_per_seq_s: float = Field(0.0, ge=0, description="per iteration and sequence in its batch (input "
                                  "preparation, sampling, detokenization), s")


#: When a launch flag applies (see :mod:`simfoe.specs.launch`): always; the model has experts and they are
#: spread (ep > 1); more than one DP rank; DP attention; DeepEP-style dedup dispatch with ep > 1; more
#: than one node; on the first node / the others of a multi-node instance; a prefill / decode pool.
WHEN = ("always", "ep", "dp", "dp_attention", "deepep", "multi_node", "head", "worker", "prefill", "decode")


class LaunchFlag(Spec):
    """One command-line argument of a launch template, with the condition it applies under."""

    arg: str = Field(description="the argument, a str.format template over the fields of "
                     "simfoe.specs.launch.LaunchPlan (model, tp, dp, ep, token_budget, max_batch, nnodes, "
                     "node_rank, gpus_per_node, dp_local, dp_start_rank, head_addr)")
    when: Literal[WHEN] = Field("always", description="the condition it applies under (WHEN)")
    source: str = Field(description="where the engine documents this flag")


class LaunchTemplate(Spec):
    """How to start one instance of the engine: the command, its flags, one line per node or one."""

    command: str = Field(description="the program and model argument, a template like the flags' arg")
    source: str = Field(description="where the engine documents the command")
    flags: list[LaunchFlag] = Field(default_factory=list, description="in the order they are printed")
    per_node: bool = Field(description="true: one command per node (node rank differs); false: one command "
                           "started on every node by the cluster launcher")
    disaggregation: bool = Field(False, description="the flags with when prefill/decode start a "
                                 "disaggregated pool (false: the engine's disaggregation is not templated)")
    notes: list[str] = Field(default_factory=list, description="what the command assumes, printed with it")


class EngineProfile(Spec):
    """One serving engine at one version: its batching defaults and host overheads."""

    name: str = Field(description="short name, as --engine takes it")
    version: str = Field(description="the engine version the defaults are read from")
    scheduler: Literal[SCHEDULING] = Field(description="chunked: running requests first (decodes, then "
                                           "unfinished prefill chunks), new prompts chunked into the rest of "
                                           "the budget; whole-prompt: the same without splitting prompts; "
                                           "prefill-first: a batch of prompt chunks whenever one is waiting, "
                                           "decodes wait (prefill and decode never mixed)")
    token_budget: PositiveInt = Field(description="tokens per iteration and DP attention rank")
    max_batch: PositiveInt = Field(description="running requests per DP attention rank")
    overlap_scheduler: bool = Field(False, description="true: the batch of the next iteration is formed while "
                                    "this one runs (TensorRT-LLM's overlap scheduler), so a request that arrives "
                                    "during an iteration runs two iterations later (simfoe.serving.engine."
                                    "EngineConfig.overlap_scheduler)")
    overheads: Overheads = Field(default_factory=Overheads)
    provenance: dict[str, str] = Field(default_factory=dict, description="field (dotted) -> its source")
    launch: LaunchTemplate | None = Field(None, description="the launch-command template of this version "
                                          "(each flag names its source)")

    @model_validator(mode="after")
    def _sourced(self):
        given = {"scheduler", "token_budget", "max_batch", *(f"overheads.{k}" for k in Overheads.model_fields),
                 *({"overlap_scheduler"} & self.model_fields_set)}
        missing = sorted(given - set(self.provenance))
        if missing:
            raise ValueError("every value names its source: provenance lacks " + ", ".join(missing))
        return self


def engines_dir():
    """The bundled profiles' folder."""
    return resources.files("simfoe.specs") / "engines"


def engine_presets() -> list[str]:
    """Short names of the bundled engine profiles."""
    return sorted(p.name[:-5] for p in engines_dir().iterdir() if p.name.endswith(".yaml"))


def engine_path(name: str) -> Path:
    """The YAML file of the bundled profile ``name`` (SpecError naming the allowed names)."""
    f = engines_dir() / f"{name}.yaml"
    if not (isinstance(name, str) and f.is_file()):
        raise SpecError("engine", name, "allowed: " + ", ".join(engine_presets()) + ", or a YAML path")
    return Path(str(f))


def load_engine(name_or_path: str | Path, field: str = "engine") -> EngineProfile:
    """A bundled profile by short name, or a profile YAML by path; errors name ``field``."""
    from simfoe.specs.io import read_yaml

    s = str(name_or_path)
    path = Path(s) if s.endswith((".yaml", ".yml")) or "/" in s else None
    if path is None:
        try:
            path = engine_path(s)
        except SpecError as e:
            raise SpecError(field, e.value, e.allowed) from None
    return validate_spec(EngineProfile, read_yaml(path, field), field)
