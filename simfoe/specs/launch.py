"""Launch commands: an engine profile's ``launch`` template filled with one instance's parallelism.

:func:`launch_commands` turns an :class:`~simfoe.specs.engine.EngineProfile` and a :class:`LaunchPlan`
(one model instance: its GPUs, attention TP group, EP group, per-rank token budget and batch) into the
command lines that start it: one per node where the engine starts each node by hand (vLLM, SGLang), one
for the cluster launcher otherwise (TensorRT-LLM). Every flag and its condition is data in the profile
YAML, each with its source; this module only picks and formats them. Units: GPUs, tokens, sequences.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from simfoe.errors import SpecError

#: What a multi-node command names the head node by (the user substitutes its address).
HEAD_ADDR = "$HEAD_IP"


@dataclass(frozen=True)
class LaunchPlan:
    """One instance to launch. ``token_budget`` and ``max_batch`` are per DP attention rank;
    ``attention_tp``: GPUs of one attention TP group (1: DP attention on every GPU); ``ep``: GPUs
    of one expert-parallel group (None or 1: no EP, e.g. a dense model); ``role``: a
    disaggregated pool's ``prefill`` or ``decode``, None for an aggregated instance."""

    model: str
    gpus: int
    gpus_per_node: int
    attention_tp: int
    token_budget: int
    max_batch: int
    ep: int | None = None
    deepep: bool = False
    role: str | None = None

    @property
    def nnodes(self) -> int:
        return max(1, -(-self.gpus // self.gpus_per_node))

    @property
    def dp(self) -> int:
        """Attention DP ranks of the instance."""
        return self.gpus // self.attention_tp


@dataclass(frozen=True)
class Launch:
    """The command lines (in node-rank order) and what they assume."""

    engine: str
    version: str
    commands: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"engine": self.engine, "version": self.version, "commands": list(self.commands),
                "notes": list(self.notes)}


def _values(p: LaunchPlan, rank: int) -> dict:
    """The template fields for node ``rank``."""
    dp_local = max(1, p.dp // p.nnodes)
    scale = p.dp if p.dp > 1 else 1  # instance-wide values of an engine that divides them over DP ranks
    return {"model": p.model, "tp": p.attention_tp, "tp_all": p.gpus, "dp": p.dp, "ep": p.ep or 1,
            "token_budget": p.token_budget, "max_batch": p.max_batch, "token_budget_all": p.token_budget * scale,
            "max_batch_all": p.max_batch * scale, "nnodes": p.nnodes, "node_rank": rank,
            "gpus_per_node": p.gpus_per_node, "dp_local": dp_local, "dp_start_rank": rank * dp_local,
            "head_addr": HEAD_ADDR}


def _applies(when: str, p: LaunchPlan, rank: int) -> bool:
    ep = (p.ep or 1) > 1
    return {"always": True, "ep": ep, "dp": p.dp > 1, "dp_attention": p.dp > 1, "deepep": p.deepep and ep,
            "multi_node": p.nnodes > 1, "head": p.nnodes > 1 and rank == 0, "worker": rank > 0,
            "prefill": p.role == "prefill", "decode": p.role == "decode"}[when]


def _line(t, p: LaunchPlan, rank: int) -> str:
    v = _values(p, rank)
    return " ".join([t.command.format(**v)] + [f.arg.format(**v) for f in t.flags if _applies(f.when, p, rank)])


def launch_commands(profile, plan: LaunchPlan) -> Launch:
    """The commands that start ``plan`` on ``profile``'s engine (SpecError ``engine`` when the
    profile has no launch template)."""
    t = profile.launch
    if t is None:
        raise SpecError("engine", profile.name, "a profile with a launch template (its YAML has no 'launch')")
    ranks = range(plan.nnodes) if t.per_node else range(1)
    notes = list(t.notes)
    if plan.role is not None and not t.disaggregation:
        notes.insert(0, f"{profile.name} {profile.version}: prefill-decode disaggregation is not templated; "
                     f"the command starts the {plan.role} pool's instance as an ordinary server")
    if plan.ep and 1 < plan.ep < plan.gpus:
        notes.append(f"the layout's EP group ({plan.ep} GPUs) is smaller than the instance ({plan.gpus} GPUs): "
                     "vLLM spreads experts over all GPUs, SGLang and TensorRT-LLM slice each expert over "
                     "tp / ep GPUs; neither replicates EP groups as the simulated layout does")
    return Launch(profile.name, profile.version, tuple(_line(t, plan, r) for r in ranks), tuple(notes))
