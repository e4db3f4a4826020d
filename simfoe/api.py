"""The Python API: plain functions returning the same dicts the CLI prints with ``--json``.

>>> import simfoe.api as sf
>>> r = sf.forward("mixtral-8x7b", "h100-sxm", nodes=1, arch="foe", phase="decode", batch=64, seq_len=2048)
>>> r["latency_s"] > 0
True

Specs are presets (short names) or YAML paths; ``overrides`` are ``--set`` strings
("hardware.network.nic_bandwidth=100e9").
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

from simfoe.errors import SpecError
from simfoe.forward import ForwardModel
from simfoe.limits import check_instance_gpus
from simfoe.provenance import RunRecord, layout_info
from simfoe.provenance import run_record as _run_record
from simfoe.specs.io import build_placement, check_override_roots, load_hardware, load_model


@lru_cache(maxsize=256)
def _specs(model: str, hardware: str, nodes: int, arch: str, overrides: tuple[str, ...]):
    check_override_roots(list(overrides))
    ov = list(overrides)
    return load_model(model, ov), load_hardware(hardware, ov), build_placement(arch, nodes, ov)


def forward_model(model: str, hardware: str, nodes: int = 1, arch: str = "moe", routing: str = "uniform",
                  overrides: Iterable[str] = (), seed: int = 0, max_gpus: int | None = None) -> ForwardModel:
    """A ``ForwardModel`` for presets/paths plus overrides (cached spec loading). An instance of more
    than ``max_gpus`` GPUs (default :data:`simfoe.limits.INSTANCE_GPUS`) is refused before it is built."""
    if arch not in ("moe", "foe"):
        raise SpecError("arch", arch, "allowed: moe, foe")
    if int(nodes) < 1:
        raise SpecError("nodes", nodes, "an integer >= 1")
    m, hw, p = _specs(str(model), str(hardware), int(nodes), arch, tuple(overrides))
    check_instance_gpus(p.nodes, hw.node.gpus_per_node, max_gpus)
    return ForwardModel(m, hw, p, routing, seed)


def forward(model: str, hardware: str, nodes: int = 1, arch: str = "moe", phase: str = "prefill",
            batch: int = 1, seq_len: int = 2048, routing: str = "uniform", overrides: Iterable[str] = (),
            seed: int = 0, per_layer: bool = False, timeline: str | None = None, max_gpus: int | None = None,
            progress=None) -> dict:
    """One forward pass; returns {"latency_s", "gpus", "breakdown_s", "comm_bytes", "local_activation_rate",
    "nodes_per_token", "micro_batches", "memory", "layout"} (``layout``: :meth:`simfoe.provenance.LayoutInfo.to_dict`).

    ``timeline``: path of a Chrome/Perfetto trace JSON to write (per-GPU compute, per-batch transfers).
    ``max_gpus``: the largest instance simulated (see :func:`forward_model`). ``progress``: a callable
    called with 1 after each simulated layer program (with ``per_layer``, one per MoE layer), or None.
    """
    fm = forward_model(model, hardware, nodes, arch, routing, overrides, seed, max_gpus)
    events: list | None = [] if timeline else None
    r = fm.run(phase, int(batch), int(seq_len), per_layer=per_layer, timeline=events, progress=progress)
    if timeline:
        write_timeline(timeline, events)
    return {**r.to_dict(), "layout": layout_info(fm.layout, fm.placement.nodes).to_dict()}


def run_record(model: str, hardware: str, nodes: int = 1, arch: str = "moe", overrides: Iterable[str] = (), *,
               seed: int | None = None, routing: str | None = None, options: dict | None = None,
               argv: Sequence[str] | None = None) -> RunRecord:
    """The provenance record (:class:`simfoe.provenance.RunRecord`) of a run on these specs."""
    m, hw, p = _specs(str(model), str(hardware), int(nodes), arch, tuple(overrides))
    return _run_record(m, hw, p, overrides=tuple(overrides), seed=seed, routing=routing, options=options, argv=argv)


def write_timeline(path: str, events: list) -> None:
    """Write a forward pass's Chrome/Perfetto trace (GPU compute on pid 0, fabric transfers on pid 1)."""
    from simfoe.timeline import write_timeline as _write

    _write(path, events, {0: "GPU compute", 1: "fabric transfers"})
