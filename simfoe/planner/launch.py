"""The recommended layout's launch command for one engine (``recommend --engine``).

A layout's JSON (label, arch, settings, gpus_per_replica, token_budget) becomes a
:class:`simfoe.specs.launch.LaunchPlan` and the engine profile's template fills it
(:func:`simfoe.specs.launch.launch_commands`). The engine only shapes the command: the planner's
probes keep their own scheduler (PlanConfig), not the profile's. FoE layouts get no command: no engine
serves a Federation-of-Experts model. Units: GPUs, tokens, sequences.
"""
from __future__ import annotations

from simfoe.specs.launch import LaunchPlan, launch_commands

#: Said instead of a command for an FoE layout.
FOE_NOTE = ("not runnable: no serving engine runs a Federation-of-Experts model today; an FoE deployment is a "
            "different, retrained model (C clusters, each with its own experts and attention). C independent "
            "replicas of the original model on the clusters' GPUs would not be FoE, so no command is given")


def layout_plan(entry: dict, model, gpus_per_node: int, max_batch: int, token_budget: int,
                role: str | None = None) -> LaunchPlan:
    """The LaunchPlan of one MoE (or dense) layout's JSON entry (a recommended layout or a disaggregated pool);
    ``token_budget``: the engine's, unless the entry names its own (tokens per iteration)."""
    s = entry["settings"]
    gpus = int(entry.get("gpus_per_replica") or entry["gpus_per_worker"])
    if s.get("placement.moe.attention") == "dp":
        att_tp = 1
    elif entry.get("dp_ranks"):
        att_tp = gpus // int(entry["dp_ranks"])
    else:
        att_tp = int(s.get("placement.moe.attention_tp") or min(gpus_per_node, gpus))
    ep = s.get("placement.moe.ep") if model.moe is not None else None
    return LaunchPlan(model=model.hf_id or model.name, gpus=gpus, gpus_per_node=gpus_per_node, attention_tp=att_tp,
                      token_budget=int(entry.get("token_budget") or 0) or token_budget, max_batch=max_batch,
                      ep=None if ep is None else int(ep), deepep=bool(s.get("placement.moe.dedup_dispatch")),
                      role=role)


def entry_launch(entry: dict, model, gpus_per_node: int, profile, max_batch: int, role: str | None = None) -> dict:
    """``{engine, version, commands, notes}`` for one layout entry; FoE: no commands, the reason in notes."""
    if entry["arch"] == "foe":
        return {"engine": profile.name, "version": profile.version, "commands": [], "notes": [FOE_NOTE]}
    plan = layout_plan(entry, model, gpus_per_node, max_batch, profile.token_budget, role)
    out = launch_commands(profile, plan).to_dict()
    if not model.hf_id:
        out["notes"].append(f"the model preset names no Hugging Face id: replace {model.name} by the checkpoint path")
    if plan.nnodes > 1:
        out["notes"].append(f"one command per node of the instance ({plan.nnodes} nodes); $HEAD_IP: the first "
                            "node's address")
    return out


def add_launches(result: dict, model, hardware: dict, profile, max_batch: int) -> None:
    """Set ``result['launch']`` (the recommended layout's) and each feasible disaggregated deployment's ``launch``
    (``{prefill, decode}``, the pools' commands); None where there is no recommendation."""
    rec = result.get("recommended")
    if rec:
        out = entry_launch(rec, model, hardware[rec["hardware"]].node.gpus_per_node, profile, max_batch)
        if rec.get("replicas", 1) > 1 and out["commands"]:
            out["notes"].append(f"{rec['replicas']} replicas: run the commands once per replica on its own nodes, "
                                "with a load balancer in front")
        result["launch"] = out
    for d in (result.get("disagg") or {}).get("layouts", []):  # the feasible disaggregated deployments
        gpn = hardware[d["prefill"]["hardware"]].node.gpus_per_node
        d["launch"] = {role: entry_launch(d[role], model, gpn, profile, max_batch, role) for role in ("prefill", "decode")}
        if d.get("mtp"):
            d["launch"]["decode"]["notes"].append(f"MTP with {d['mtp']} draft token(s) per step: add the engine's "
                                                  "speculative-decoding flags (not templated)")
