"""Regenerate reports/foe/: FoE vs MoE forward latency, TTFT and TBT against the FoE paper's headline ratios.

Run from the repository root: ``python reports/foe/make_report.py [--quick]``. Writes README.md,
results.json and PNG plots next to this file. Every assumption is listed in the generated README.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = {"olmoe-1b-7b": "1B-class (OLMoE-1B-7B)", "mixtral-8x7b": "7B-class (Mixtral-8x7B scale)"}
NODES = (1, 2)
#: layouts compared: the two MoE baselines DESIGN.md names, and FoE (label -> (arch, --set overrides));
#: "+tbo": two-batch overlap where it is faster, pass by pass (placement.overlap=auto; docs/forward.md)
LAYOUTS = {
    "moe-tp": ("moe", ()),  # vLLM expert parallel: TP attention in a node, EP over the instance
    "moe-dp": ("moe", ("placement.moe.attention=dp",)),  # DeepSeek/SGLang: DP attention + EP
    "moe-dp+tbo": ("moe", ("placement.moe.attention=dp", "placement.overlap=auto")),  # ... with SGLang's TBO
    "foe": ("foe", ()),
    "foe+tbo": ("foe", ("placement.overlap=auto",)),
}
ARCHS = tuple(LAYOUTS)
#: baseline -> the FoE layout it is compared with (overlap against overlap)
BASELINES = {"moe-tp": "foe", "moe-dp": "foe", "moe-dp+tbo": "foe+tbo"}
BATCHES = (1, 2, 4, 8, 16, 32, 64)
PAPER = {"forward": 5.2, "ttft": 3.62, "tbt": 1.95}


def forward_sweep(seq_len: int) -> list[dict]:
    from simfoe.serving import build_forward

    rows = []
    for model in MODELS:
        for nodes in NODES:
            for arch in ARCHS:
                kind, ov = LAYOUTS[arch]
                fm, _, _ = build_forward(model, "h100-sxm", nodes, kind, overrides=ov)
                for phase in ("prefill", "decode"):
                    for b in BATCHES:
                        r = fm.run(phase, b, seq_len)
                        comm = sum(r.breakdown_s[k] for k in ("all_reduce", "dispatch", "combine"))
                        rows.append({"model": model, "nodes": nodes, "arch": arch, "phase": phase, "batch": b,
                                     "seq_len": seq_len, "latency_s": r.latency_s,
                                     "comm_share": comm / r.latency_s, "breakdown_s": r.breakdown_s})
    return rows


def load_sweep(rates: list[float], duration: float) -> list[dict]:
    from simfoe.serving import simulate_serving

    rows = []
    for model in MODELS:
        for nodes in NODES:
            for arch in ARCHS:
                kind, ov = LAYOUTS[arch]
                for rate in rates:
                    s = simulate_serving(model, "h100-sxm", nodes, kind, "longbench", rate=rate, duration=duration,
                                         overrides=ov, seed=0).summary
                    rows.append({"model": model, "nodes": nodes, "arch": arch, "rate": rate,
                                 "ttft_mean_s": s["ttft_s"]["mean"], "ttft_p50_s": s["ttft_s"]["p50"],
                                 "ttft_p99_s": s["ttft_s"]["p99"], "tbt_mean_s": s["tbt_s"]["mean"],
                                 "tbt_p50_s": s["tbt_s"]["p50"], "tbt_p99_s": s["tbt_s"]["p99"],
                                 "completed": s["requests"]["completed"], "total": s["requests"]["total"],
                                 "throughput_rps": s["throughput"]["requests_per_s"]})
    return rows


def ratios(fwd: list[dict], load: list[dict]) -> list[dict]:
    """Baseline / FoE ratios (> 1: FoE faster) per model, node count and baseline."""
    out = []
    for model in MODELS:
        for nodes in NODES:
            def pick(rows, arch, model=model, nodes=nodes, **kw):
                return [r for r in rows if r["model"] == model and r["nodes"] == nodes and r["arch"] == arch
                        and all(r[k] == v for k, v in kw.items())]
            for base, foe in BASELINES.items():
                row = {"model": model, "nodes": nodes, "baseline": base, "foe": foe}
                for phase in ("prefill", "decode"):
                    fr = [m["latency_s"] / f["latency_s"] for m, f in zip(pick(fwd, base, phase=phase), pick(fwd, foe, phase=phase))]
                    row[f"forward_{phase}_min"], row[f"forward_{phase}_max"] = min(fr), max(fr)
                lm, lf = pick(load, base), pick(load, foe)
                tt = [m["ttft_mean_s"] / f["ttft_mean_s"] for m, f in zip(lm, lf) if m["ttft_mean_s"] and f["ttft_mean_s"]]
                tb = [m["tbt_mean_s"] / f["tbt_mean_s"] for m, f in zip(lm, lf) if m["tbt_mean_s"] and f["tbt_mean_s"]]
                row.update({"ttft_max": max(tt) if tt else None, "ttft_min": min(tt) if tt else None,
                            "tbt_max": max(tb) if tb else None, "tbt_min": min(tb) if tb else None})
                cs = [r["comm_share"] for r in pick(fwd, base)]
                row["baseline_comm_share_max"] = max(cs)
                row["baseline_comm_share_min"] = min(cs)
                out.append(row)
    return out


def plots(fwd, load, rates):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(len(MODELS), 2 * len(NODES), figsize=(16, 7), squeeze=False)
    for i, model in enumerate(MODELS):
        for j, (nodes, phase) in enumerate([(n, p) for n in NODES for p in ("prefill", "decode")]):
            ax = axes[i][j]
            for arch in ARCHS:
                rs = [r for r in fwd if r["model"] == model and r["nodes"] == nodes and r["arch"] == arch
                      and r["phase"] == phase]
                ax.plot([r["batch"] for r in rs], [r["latency_s"] * 1e3 for r in rs], "o-", label=arch.upper())
            ax.set_xscale("log", base=2)
            ax.set_title(f"{model}, {nodes} node(s), {phase}", fontsize=9)
            ax.set_xlabel("batch (sequences)")
            ax.set_ylabel("forward latency (ms)")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "forward_vs_batch.png", dpi=110)
    files.append("forward_vs_batch.png")
    for metric, label in (("ttft_mean_s", "mean TTFT (s)"), ("tbt_mean_s", "mean TBT (ms)")):
        fig, axes = plt.subplots(1, len(MODELS) * len(NODES), figsize=(16, 4), squeeze=False)
        for j, (model, nodes) in enumerate([(m, n) for m in MODELS for n in NODES]):
            ax = axes[0][j]
            for arch in ARCHS:
                rs = [r for r in load if r["model"] == model and r["nodes"] == nodes and r["arch"] == arch]
                scale = 1e3 if metric.startswith("tbt") else 1.0
                ax.plot([r["rate"] for r in rs], [(r[metric] or float("nan")) * scale for r in rs], "o-",
                        label=arch.upper())
            ax.set_title(f"{model}, {nodes} node(s)", fontsize=9)
            ax.set_xlabel("offered load (req/s)")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{metric.split('_')[0]}_vs_load.png"
        fig.savefig(HERE / name, dpi=110)
        files.append(name)
    plt.close("all")
    return files


def differences(rat: list[dict], fwd: list[dict]) -> list[str]:
    """The written comparison with the paper, its figures taken from this run's results."""
    def over(base, key):
        vals = [r[key] for r in rat if r["baseline"] == base and r[key] is not None]
        return (min(vals), max(vals)) if vals else (None, None)

    tp_dec, tp_ttft, tp_tbt = over("moe-tp", "forward_decode_max"), over("moe-tp", "ttft_max"), over("moe-tp", "tbt_max")
    tp_comm = max(r["baseline_comm_share_max"] for r in rat if r["baseline"] == "moe-tp")
    dp_pre, dp_ttft = over("moe-dp", "forward_prefill_max"), over("moe-dp", "ttft_max")
    dp_pre_min = min(r["forward_prefill_min"] for r in rat if r["baseline"] == "moe-dp")
    b1 = [r for r in fwd if r["arch"] == "moe-dp" and r["phase"] == "prefill" and r["batch"] == 1]
    tbo_pre, tbo_dec = over("moe-dp+tbo", "forward_prefill_max"), over("moe-dp+tbo", "forward_decode_max")
    tbo_ttft = over("moe-dp+tbo", "ttft_max")

    def gain(arch, phase):  # best latency cut from overlap over the forward sweep (1 - with / without)
        base = arch.replace("+tbo", "")
        pairs = [(a["latency_s"], b["latency_s"]) for a in fwd for b in fwd if a["arch"] == arch
                 and b["arch"] == base and all(a[k] == b[k] for k in ("model", "nodes", "phase", "batch"))
                 and a["phase"] == phase]
        return max(1 - x / y for x, y in pairs)
    def hideable(arch):  # median over the prefill sweep of min(communication, compute) / latency
        import statistics

        return statistics.median(min(r["comm_share"], 1 - r["comm_share"]) for r in fwd
                                 if r["arch"] == arch and r["phase"] == "prefill")
    c_moe, c_foe = hideable("moe-dp"), hideable("foe")
    dm, dfo = gain("moe-dp+tbo", "decode"), gain("foe+tbo", "decode")
    decode_note = (f"In decode it cuts at most {dm * 100:.0f}% (MoE) and {dfo * 100:.0f}% (FoE)"
                   if max(dm, dfo) > 0.005 else f"In decode (batches up to {max(BATCHES)}) it never helps")
    decode_note += ": every micro-batch reads the weights again, so `auto` mostly keeps one batch."
    return [
        "## Where simfoe's numbers differ from the paper's, and why",
        "",
        f"- **Against the vLLM-style baseline (moe-tp)** FoE's best gains are {tp_dec[1]:.2f}x in forward decode, "
        f"{tp_ttft[1]:.2f}x in mean TTFT and {tp_tbt[1]:.2f}x in mean TBT. TBT is in the paper's range (1.95x); "
        "forward latency and TTFT gain less than the paper's 5.2x and 3.62x. Removing a share c of a pass's "
        "time bounds the speed-up by 1/(1-c), so 5.2x needs communication to be >= 81% of the baseline's latency, "
        "and FoE adds an all-reduce of its own. In simfoe this baseline's communication share reaches "
        f"{tp_comm * 100:.0f}% (the paper's motivation figure is >= 68%), i.e. a bound of {1 / (1 - tp_comm):.1f}x, and it "
        f"is far lower on one node, where the calibrated H100 collectives are cheap ({_collective_facts()}; "
        "docs/calibration-collectives.md). A slower dispatch than "
        "simfoe models (a non-fused all-to-all, token padding to the largest expert load, fp32 activations) "
        "would raise the ratios; simfoe does not assume one.",
        f"- **Against the DP-attention baseline (moe-dp)** the ratios go well past the paper (forward prefill up to "
        f"{dp_pre[1]:.2f}x, mean TTFT up to {dp_ttft[1]:.2f}x), but not for the paper's reason: DP attention gives a lone "
        "prompt a single GPU for attention and every dense layer, while FoE splits its heads over all GPUs. "
        f"That is parallelism, not communication ({len(b1)} batch-1 prefill cases). At large prefill batches the "
        f"same baseline beats FoE (ratio down to {dp_pre_min:.2f}x): FoE's per-layer all-reduce of tokens x hidden "
        "does not shrink with more GPUs and, across nodes, crosses the NICs.",
        "- **With two-batch overlap on both sides** (moe-dp+tbo / foe+tbo) FoE's best forward gains are "
        f"{tbo_pre[1]:.2f}x in prefill and {tbo_dec[1]:.2f}x in decode, and {tbo_ttft[1]:.2f}x in mean TTFT. Overlap "
        f"cuts the DP-attention MoE's prefill by up to {gain('moe-dp+tbo', 'prefill') * 100:.0f}% and FoE's by up to "
        f"{gain('foe+tbo', 'prefill') * 100:.0f}%. Overlap can hide at most the smaller of a pass's communication and "
        f"its compute; in the prefill sweep without overlap that bound is a median {c_moe * 100:.0f}% of the latency "
        f"for the DP-attention MoE (little communication beside much compute, or, for OLMoE on 2 nodes, the "
        f"reverse) and {c_foe * 100:.0f}% for FoE. {decode_note} The communication kernels hold no SMs here "
        "(`placement.comm_sm_share` = 0), so these overlap gains are upper bounds.",
        "- **Mixtral on 2 nodes.** With 8 experts the MoE baselines keep EP inside each node and send nothing over "
        "the network, so FoE's inter-node all-reduce costs it (prefill ratios < 1). The paper's multi-node models "
        "must have had EP spanning nodes; OLMoE (64 experts, EP over 16 GPUs) shows that case.",
        "- **Under load**, TTFT and TBT also include queueing, and chunked prefill mixes prefill and decode in one "
        "iteration, so FoE's per-layer saving is diluted by compute both layouts share.",
        "- **What would change the answer:** the paper's model dimensions and its baseline's layout and dispatch "
        "implementation. simfoe exposes both (`--set placement.moe.*`, model YAML); with them this report can "
        "be re-run.",
        "",
    ]


def _collective_facts() -> str:
    """The h100-sxm profile's fitted NCCL figures the report's argument rests on, read from the profile."""
    from simfoe.specs.io import load_hardware

    c = load_hardware("h100-sxm").collectives
    return (f"NCCL base latencies {c.nvlink.ll_alpha_s * 1e6:.0f} us (LL) to {c.nvlink.alpha_s * 1e6:.0f} us (Simple), "
            f"ring bus bandwidth at {c.nvlink.efficiency:.2f} of NVLink's, all-to-all at "
            f"{c.all_to_all_nvlink_efficiency:.2f}, fitted on nccl-tests")


def fmt(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"


#: hand-written reasons for the model changes since the previous report (read into the README when present)
CHANGES = HERE / "changes.md"
_MOVED_KEYS = (("forward_prefill_max", "forward prefill"), ("forward_decode_max", "forward decode"),
               ("ttft_max", "mean TTFT"), ("tbt_max", "mean TBT"))


def moved(prev: list[dict] | None, rat: list[dict]) -> list[str]:
    """Markdown: how each largest baseline/FoE ratio moved against the previous results.json (before -> after)."""
    if not prev:
        return []
    old = {(r["model"], r["nodes"], r["baseline"]): r for r in prev}
    lines = ["## How the ratios moved since the previous report", "",
             "Largest ratio per row, previous -> this run (> 1: FoE faster).", "",
             "| model | nodes | baseline / FoE | " + " | ".join(label for _, label in _MOVED_KEYS) + " |",
             "|---|---|---|" + "---|" * len(_MOVED_KEYS)]
    for r in rat:
        p = old.get((r["model"], r["nodes"], r["baseline"]), {})
        cells = [f"{fmt(p.get(k))} -> {fmt(r.get(k))}" for k, _ in _MOVED_KEYS]
        lines.append(f"| {MODELS[r['model']]} | {r['nodes']} | {r['baseline']} / {r['foe']} | " + " | ".join(cells) + " |")
    if CHANGES.exists():
        lines += ["", CHANGES.read_text(encoding="utf-8").strip()]
    return lines + [""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer load points and a shorter run")
    ap.add_argument("--seq-len", type=int, default=8192, help="forward sweep prompt/context length, tokens")
    ap.add_argument("--previous", type=Path, help="results.json of the report to compare with (default: the one "
                    "this run replaces)")
    ap.add_argument("--render-only", action="store_true", help="rewrite README.md and the plots from the stored "
                    "results.json without simulating (e.g. after editing changes.md)")
    a = ap.parse_args(argv)
    rates = [0.5, 2.0] if a.quick else [0.25, 0.5, 1.0, 2.0, 4.0]
    duration = 60.0 if a.quick else 150.0
    t = time.time()
    stored = HERE / "results.json"
    prev = json.loads((a.previous or stored).read_text())["ratios"] if (a.previous or stored).exists() else None
    if a.render_only:
        res = json.loads(stored.read_text())
        fwd, load = res["forward"], res["load"]
        rates = sorted({r["rate"] for r in load})
    else:
        fwd = forward_sweep(a.seq_len)
        load = load_sweep(rates, duration)
    rat = ratios(fwd, load)
    files = plots(fwd, load, rates)
    stored.write_text(json.dumps({"forward": fwd, "load": load, "ratios": rat}, indent=1) + "\n")
    lines = [
        "# FoE vs MoE: simulated reproduction of the paper's headline ratios",
        "",
        f"Regenerate: `python reports/foe/make_report.py{' --quick' if a.quick else ''}` "
        f"({'re-rendered from results.json' if a.render_only else f'this run: {time.time() - t:.0f} s'}). "
        "Raw numbers: results.json.",
        "",
        "Paper (FoE, arXiv 2605.06206, abstract): up to **5.2x** lower forward latency, **3.62x** lower TTFT, "
        "**1.95x** lower TBT than an MoE of the same size, LongBench, Poisson arrivals.",
        "",
        "## Ratios baseline / FoE (> 1: FoE faster), min..max over the sweep",
        "",
        "Baselines: `moe-tp` = TP attention inside a node + expert parallelism (vLLM's EP default: an attention "
        "all-reduce (as reduce-scatter + all-gather) and two all-to-alls per layer); `moe-dp` = DP attention + EP "
        "(DeepSeek/SGLang: two all-to-alls, no all-reduce); `moe-dp+tbo` = the same with two-batch overlap wherever "
        "it is faster (`placement.overlap=auto`), compared with FoE given the same overlap (`foe+tbo`). The paper's "
        "baseline layout is not public.",
        "",
        "| model | nodes | baseline / FoE | forward prefill | forward decode (paper: up to 5.2x) | mean TTFT (3.62x) "
        "| mean TBT (1.95x) | baseline comm share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rat:
        lines.append(f"| {MODELS[r['model']]} | {r['nodes']} | {r['baseline']} / {r['foe']} | "
                     f"{fmt(r['forward_prefill_min'])}..{fmt(r['forward_prefill_max'])} | "
                     f"{fmt(r['forward_decode_min'])}..{fmt(r['forward_decode_max'])} | "
                     f"{fmt(r['ttft_min'])}..{fmt(r['ttft_max'])} | {fmt(r['tbt_min'])}..{fmt(r['tbt_max'])} | "
                     f"{r['baseline_comm_share_min'] * 100:.0f}..{r['baseline_comm_share_max'] * 100:.0f}% |")
    best_fwd = max(max(r["forward_prefill_max"], r["forward_decode_max"]) for r in rat)
    best_ttft = max((r["ttft_max"] or 0) for r in rat)
    best_tbt = max((r["tbt_max"] or 0) for r in rat)
    lines += ["", f"Largest simulated FoE gains over all rows: forward {best_fwd:.2f}x (paper 5.2x), "
              f"TTFT {best_ttft:.2f}x (paper 3.62x), TBT {best_tbt:.2f}x (paper 1.95x).", ""]
    lines += moved(prev, rat)
    lines += differences(rat, fwd)
    lines += ["", "## Plots", ""] + [f"![{f}]({f})" for f in files]
    lines += ["", "## Load sweep", "", "| model | nodes | arch | rate | TTFT mean | TTFT p99 | TBT mean | TBT p99 | done |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in load:
        lines.append(f"| {r['model']} | {r['nodes']} | {r['arch']} | {r['rate']:g} | {fmt(r['ttft_mean_s'], 3)} s | "
                     f"{fmt(r['ttft_p99_s'], 3)} s | {fmt((r['tbt_mean_s'] or 0) * 1e3)} ms | "
                     f"{fmt((r['tbt_p99_s'] or 0) * 1e3)} ms | {r['completed']}/{r['total']} |")
    lines += [
        "", "## Assumptions", "",
        "- Models: the simfoe presets `olmoe-1b-7b` (1B active class) and `mixtral-8x7b` (7B class); the paper's exact "
        "dimensions are not public. FoE variants use simfoe's default iso-parameter derivation (C = number of KV heads, "
        "k_c = ceil(k/C), E_c = k_c E / k, f' = f k / (C k_c)). MoE: EP group = the largest divisor of the GPU count "
        "that divides the expert count (OLMoE: 64 experts over 8 or 16 GPUs; Mixtral: 8 experts, so EP stays "
        "inside a node and 2 nodes run attention data-parallel across nodes).",
        "- Hardware: simfoe's `h100-sxm` profile (8 GPUs per node, NVLink/NVSwitch, one 400 Gb/s NIC per GPU); "
        "1 node = one instance of 8 GPUs, 2 nodes = one instance spanning 16 GPUs (no data-parallel replicas).",
        f"- Forward sweep: `ForwardModel.run(phase, batch, {a.seq_len})` (prefill: batch prompts of that length; "
        "decode: batch sequences with that context), uniform expert routing, seed 0.",
        f"- Load sweep: `simfoe serve --trace longbench` (simfoe's synthetic LongBench length mix), Poisson arrivals at "
        f"{', '.join(f'{x:g}' for x in rates)} req/s for {duration:g} s, seed 0; vLLM-like chunked prefill, "
        "token budget 8192 and max batch 256 per data-parallel attention rank as in vLLM and SGLang (moe-dp: one "
        "rank per GPU; moe-tp: one per node; FoE: one), paged KV (16-token blocks) sized by the forward model; "
        "requests run to completion. TBT = pooled inter-token gaps.",
        "- Ratios are MoE/FoE of the same statistic at the same batch (forward) or offered load (serving); the paper's "
        "'up to' numbers are maxima over its own (unknown) sweep, so compare with the max column.",
        "- Everything is simulated; nothing here was measured on GPUs.",
    ]
    (HERE / "README.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(rat, indent=1))


if __name__ == "__main__":
    main()
