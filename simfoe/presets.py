"""What can be named by a short name: models, hardware profiles, pipeline presets and example sweep
specs, one line each (``simfoe presets``). Reads the existing registries: :func:`simfoe.specs.io.list_presets`,
:func:`simfoe.pipelines.spec.list_presets`, the embedded default sweep and ``examples/*.yaml`` of a checkout.

Units in the facts: parameters as counts, bandwidth in bytes/s, memory in bytes, FLOP/s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from simfoe.paths import REPO_ROOT


@dataclass(frozen=True)
class Preset:
    """One named preset: ``line`` is its one-line description, ``facts`` the numbers behind it."""

    name: str
    line: str
    facts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "line": self.line, **self.facts}


def model_preset(name: str) -> Preset:
    """A model preset: total and active parameters, experts and top-k, layers, attention kind."""
    from simfoe.specs.io import load_model

    m = load_model(name)
    total, active = m.total_params(), m.active_params()
    a = m.attention
    attn = "MLA" if a.kind == "mla" else f"{a.kind.upper()} {a.n_kv_heads} KV heads"
    if m.moe is None:
        experts, facts = "dense", {}
    else:
        shared = f" + {m.moe.n_shared_experts} shared" if m.moe.n_shared_experts else ""
        experts = f"{m.moe.n_experts} experts top-{m.moe.top_k}{shared}"
        facts = {"experts": m.moe.n_experts, "top_k": m.moe.top_k, "shared_experts": m.moe.n_shared_experts}
    f = m.formats
    weights = f"{f.gemm_weights} weights" + ("" if f.expert_weights == f.gemm_weights else f" ({f.expert_weights} experts)")
    line = f"{total / 1e9:.1f}B params ({active / 1e9:.1f}B active), {experts}, {m.n_layers} layers, {attn}, {weights}"
    precision = {k: getattr(f, k) for k in ("gemm_weights", "gemm_activations", "expert_weights", "attention",
                                            "kv_cache", "dispatch", "combine")}
    return Preset(name, line, {"params": total, "active_params": active, **facts, "layers": m.n_layers,
                               "kv_heads": a.n_kv_heads, "dtype": m.dtype, "precision": precision})


def hardware_preset(name: str) -> Preset:
    """A hardware profile: GPU, GPUs per node, NIC line rate, HBM and bf16 peak."""
    from simfoe.specs.io import load_hardware

    h = load_hardware(name)
    g, net = h.gpu, h.network
    bf16 = g.peak_flops.get("bf16")
    line = (f"{g.name}, {h.node.gpus_per_node} per node, {net.nics_per_node} NICs x {_si(net.nic_bandwidth * 8, 'b/s')}, "
            f"{_si(g.hbm_bytes, 'B')} at {_si(g.hbm_bandwidth, 'B/s')}" + (f", {_si(bf16, 'FLOP/s')} bf16" if bf16 else ""))
    return Preset(name, line, {"gpu": g.name, "gpus_per_node": h.node.gpus_per_node,
                               "nics_per_node": net.nics_per_node, "nic_bandwidth": net.nic_bandwidth,
                               "hbm_bytes": g.hbm_bytes, "hbm_bandwidth": g.hbm_bandwidth, "peak_flops_bf16": bf16})


def pipeline_preset(name: str) -> Preset:
    """A pipeline preset: its stages (instances each) and routing policy."""
    from simfoe.pipelines.spec import load_pipeline

    p = load_pipeline(name)
    stages = ", ".join(f"{s.name} x{s.instances}" for s in p.stages)
    return Preset(name, f"{len(p.stages)} stages ({stages}); routing {p.routing}",
                  {"stages": [s.name for s in p.stages], "routing": p.routing})


def _first_sentence(text: str) -> str:
    """The first sentence of a YAML file's leading comment (up to a command line such as ``#   simfoe ...``)."""
    words = []
    for ln in text.splitlines():
        body = ln.lstrip("#").strip()
        if not ln.startswith("#") or body.startswith("simfoe "):
            break
        words.append(body)
    joined = " ".join(words)
    end = joined.find(". ")
    return joined if end < 0 else joined[:end + 1]


def _si(x: float, unit: str) -> str:
    """``x`` with an SI prefix: 3.35e12, "B/s" -> "3.35 TB/s"."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def sweep_preset(path: Path | None) -> Preset:
    """A sweep spec (None: the embedded default of ``simfoe sweep``): its first comment line, kind
    and scenario count. Named by its path (``default`` for the embedded one)."""
    from simfoe.sweep.spec import default_spec_path, load_sweep_spec

    spec = load_sweep_spec(path)
    text = (default_spec_path() if path is None else Path(path)).read_text()
    name = "default" if path is None else str(path)
    return Preset(name, f"{spec.kind}, {spec.count()} scenarios: {_first_sentence(text)}",
                  {"kind": spec.kind, "scenarios": spec.count(), "spec_name": spec.name})


def example_sweeps() -> list[Path | None]:
    """The embedded default (None) and the ``examples/*.yaml`` of a checkout, as paths relative to
    the working folder when they lie under it."""
    d = REPO_ROOT / "examples"
    found = sorted(d.glob("*.yaml")) if d.is_dir() else []
    cwd = Path.cwd()
    return [None] + [p.relative_to(cwd) if p.is_relative_to(cwd) else p for p in found]


def list_all() -> dict[str, list[Preset]]:
    """Every preset by group: models, hardware, pipelines, sweeps."""
    from simfoe.pipelines.spec import list_presets as pipelines
    from simfoe.specs.io import list_presets

    return {"models": [model_preset(n) for n in list_presets("model")],
            "hardware": [hardware_preset(n) for n in list_presets("hardware")],
            "pipelines": [pipeline_preset(n) for n in pipelines()],
            "sweeps": [sweep_preset(p) for p in example_sweeps()]}
