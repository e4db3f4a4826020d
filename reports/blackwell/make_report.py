"""MoE vs FoE on 8x H100 nodes, 8x B200 nodes and one GB200 NVL72 rack (issue 25.4): forward passes of
DeepSeek-V3 and Qwen3-235B-A22B at prefill and decode on 64 GPUs of each system (simfoe.api.forward).

Regenerate: ``python reports/blackwell/make_report.py`` (writes results.json and README.md beside this file;
``--render`` re-renders README.md from results.json). Profiles: hwprofiles/h100-sxm.yaml, b200-sxm.yaml,
gb200-nvl72.yaml (kernels fitted to NVIDIA AIConfigurator's tables, Apache-2.0).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: (label, profile, nodes): 64 GPUs each (GB200: 16 trays of 4 = 64 of the rack's 72, one NVLink domain)
SYSTEMS = (("8x H100 (8 nodes)", "h100-sxm", 8), ("8x B200 (8 nodes)", "b200-sxm", 8),
           ("GB200 NVL72 (16 trays, one rack)", "gb200-nvl72", 16))
#: model -> FoE overrides (DeepSeek-V3 is MLA: clusters set, 8 x 8 GPUs; Qwen3-235B: 4 KV heads -> 4 clusters x 16 GPUs)
MODELS = {"deepseek-v3": ["placement.foe.clusters=8"], "qwen3-235b-a22b": []}
#: layout name -> (arch, overrides); MoE as vLLM (TP attention in a node + EP) and as SGLang/DeepSeek (DP attention + EP)
LAYOUTS = {"moe-tp": ("moe", []), "moe-dp": ("moe", ["placement.moe.attention=dp"]), "foe": ("foe", None)}
#: phase -> (sequences per instance, tokens per sequence): prefill 16 x 4096 tokens, decode 512 sequences at 4096
PHASES = {"prefill": (16, 4096), "decode": (512, 4096)}
#: precision -> overrides: the presets' own, and NVFP4 weights and activations in every GEMM and expert (w4a4, the fp4
#: peak; Blackwell only: H100 has no fp4 tensor cores)
PRECISIONS = {"preset": [], "nvfp4": ["model.precision.gemm_weights=nvfp4", "model.precision.gemm_activations=nvfp4"]}


def run_one(model: str, profile: str, nodes: int, layout: str, phase: str, precision: str = "preset") -> dict:
    """One forward pass: latency, breakdown, bytes by path, or the reason the layout does not place."""
    from simfoe.api import forward
    from simfoe.errors import SpecError

    arch, ov = LAYOUTS[layout]
    ov = (MODELS[model] if ov is None else ov) + PRECISIONS[precision]
    batch, seq = PHASES[phase]
    try:
        r = forward(model, profile, nodes=nodes, arch=arch, phase=phase, batch=batch, seq_len=seq, overrides=ov)
    except SpecError as e:
        return {"error": str(e)}
    return {"latency_s": r["latency_s"], "breakdown_s": r["breakdown_s"], "layout": r["layout"]["label"],
            "network_bytes": sum(v["inter_node"] for v in r["comm_bytes"].values()),
            "nvlink_bytes": sum(v["intra_node"] for v in r["comm_bytes"].values())}


def collect() -> list[dict]:
    rows = []
    for label, profile, nodes, model, phase, prec in _cells():
        for layout in LAYOUTS:
            rows.append({"system": label, "hardware": profile, "nodes": nodes, "model": model, "phase": phase,
                         "precision": prec, "arch": layout, **run_one(model, profile, nodes, layout, phase, prec)})
            print(label, model, phase, prec, layout, rows[-1].get("latency_s", rows[-1].get("error")),
                  file=sys.stderr, flush=True)
    return rows


def _cells():
    """(system label, profile, nodes, model, phase, precision) of every table row, in order."""
    for label, profile, nodes in SYSTEMS:
        for prec in PRECISIONS:
            if prec == "nvfp4" and profile.startswith("h100"):
                continue
            for model in MODELS:
                for phase in PHASES:
                    yield label, profile, nodes, model, phase, prec


COMM = ("dispatch", "combine", "all_reduce", "all_gather", "reduce_scatter", "all_to_all")


def _comm_ms(r: dict) -> float:
    return 1e3 * sum(v for k, v in r.get("breakdown_s", {}).items() if k in COMM)


def render(rows: list[dict]) -> str:
    """README.md: one row per system, model and phase: each layout's pass time, the best MoE over FoE."""
    key = {(r["system"], r["model"], r["phase"], r.get("precision", "preset"), r["arch"]): r for r in rows}
    out = ["# MoE vs FoE on H100, B200 and a GB200 NVL72 rack (issue 25.4)", "",
           "Regenerate: `python reports/blackwell/make_report.py` (results.json beside it). One forward pass on 64 GPUs of "
           "each system (simfoe.api.forward, uniform routing, seed 0; precision `preset`: the models' own (DeepSeek-V3 fp8 block, "
           "Qwen3-235B-A22B bf16), `nvfp4`: NVFP4 weights and activations in every GEMM and expert on Blackwell's fp4 "
           "peak); prefill: 16 sequences "
           "x 4096 tokens, decode: 512 sequences at 4096 tokens of context. Profiles `h100-sxm`, `b200-sxm`, `gb200-nvl72` "
           "(Blackwell kernels fitted to NVIDIA AIConfigurator's measured tables, Apache-2.0; errors in "
           "docs/calibration-kernels.md). On the rack every flow is NVLink (one domain of 72: docs/forward.md).", "",
           "| system | model | precision | phase | moe-tp ms | moe-dp ms | foe ms | best MoE / FoE (> 1: FoE faster) | "
           "comm ms: best MoE / FoE | network GB: best MoE / FoE |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for label, _, _, model, phase, prec in _cells():
        r = {a: key[(label, model, phase, prec, a)] for a in LAYOUTS}
        ms = {a: (f"{1e3 * v['latency_s']:.2f}" if "latency_s" in v else "not placed") for a, v in r.items()}
        moes = [v for a, v in r.items() if a != "foe" and "latency_s" in v]
        best = min(moes, key=lambda v: v["latency_s"]) if moes else None
        foe = r["foe"] if "latency_s" in r["foe"] else None
        ratio = f"{best['latency_s'] / foe['latency_s']:.2f}" if best and foe else "-"
        comm = f"{_comm_ms(best):.2f} / {_comm_ms(foe):.2f}" if best and foe else "-"
        net = (f"{best['network_bytes'] / 1e9:.2f} / {foe['network_bytes'] / 1e9:.2f}" if best and foe else "-")
        out.append(f"| {label} | {model} | {prec} | {phase} | {ms['moe-tp']} | {ms['moe-dp']} | {ms['foe']} | {ratio} | "
                   f"{comm} | {net} |")
    errs = sorted({(r["system"], r["model"], r["arch"], r["error"]) for r in rows if "error" in r})
    if errs:
        out += ["", "Layouts that do not place:", ""]
        out += [f"- {s}, {m}, {a}: {e}" for s, m, a, e in errs]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> None:
    res = HERE / "results.json"
    if "--render" in argv:
        rows = json.loads(res.read_text())
    else:
        rows = collect()
        res.write_text(json.dumps(rows, indent=1) + "\n")
    body = render(rows)
    why = HERE / "why.md"
    (HERE / "README.md").write_text(body + ("\n" + why.read_text() if why.is_file() else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
