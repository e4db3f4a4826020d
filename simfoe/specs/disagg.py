"""Pool spec of a disaggregated deployment (issue 24.1): one worker's layout (a placement spec), how
many workers, how many GPUs one worker takes when it is smaller than a node, and its engine knobs.

YAML (a placement spec with three more keys, all optional)::

    arch: moe
    nodes: 2
    moe: {attention: dp, ep: 16}
    workers: 1
    gpus: null            # GPUs per worker when fewer than a node (default: nodes x GPUs per node)
    engine: {max_batch: 64, token_budget: 8192}
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, NonNegativeInt, PositiveInt

from simfoe.specs.base import Spec, validate_spec
from simfoe.specs.placement import PlacementSpec


class PoolEngine(Spec):
    """The serving engine's knobs of every worker of a pool (simfoe.serving.engine.EngineConfig's names)."""

    max_batch: PositiveInt = Field(256, description="running sequences per DP attention rank (budget_scope rank)")
    token_budget: PositiveInt = Field(8192, description="tokens per iteration and DP attention rank")
    budget_scope: str = Field("rank", description="rank | instance (see simfoe serve --budget-scope)")
    rank_router: str = Field("vllm-lb", description="which DP attention rank a request is pinned to")
    router: str = Field("round-robin", description="which worker of the pool receives a request")
    scheduler: str = Field("chunked", description="batching policy: chunked | whole-prompt")
    block_size: PositiveInt = Field(16, description="KV-cache block size, tokens")
    mtp: NonNegativeInt = Field(0, description="multi-token prediction: draft tokens per decode step (a decode "
                                "pool; the model's MTP module prices them and shares the KV memory)")


class PoolSpec(PlacementSpec):
    """A pool of identical workers: the placement of one (``arch``, ``nodes``, ``moe``/``foe`` ...),
    ``workers``, ``gpus`` per worker when it is part of one node, and ``engine`` knobs."""

    workers: PositiveInt = Field(1, description="workers in the pool (the x or y of xPyD)")
    gpus: PositiveInt | None = Field(None, description="GPUs of one worker when fewer than one node (the worker's "
                                     "node is then modelled with this many GPUs); default: nodes x GPUs per node")
    engine: PoolEngine = Field(default_factory=PoolEngine)

    def placement(self) -> PlacementSpec:
        """The placement of one worker."""
        return PlacementSpec.model_validate(self.model_dump(exclude={"workers", "gpus", "engine"}))


def load_pool(spec, field: str) -> PoolSpec:
    """A :class:`PoolSpec` from itself, a mapping or a YAML path; errors name ``field`` (e.g. ``--prefill``)."""
    if isinstance(spec, PoolSpec):
        return spec
    if isinstance(spec, (str, Path)):
        from simfoe.specs.io import read_yaml

        spec = read_yaml(spec, field)
    return validate_spec(PoolSpec, spec, field)
