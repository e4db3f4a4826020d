"""DeepSeek-V3 served as DeepSeek deploys it (issue 24): prefill EP32 on 4 nodes, decode EP144 on 18 nodes,
MTP in decode, against the per-node throughputs DeepSeek published. Every assumption is in README.md.

    python reports/deepseek_disagg/run.py [--batch B] [--prefill-units X] [--out result.json]

Prints and writes one JSON object: the simulated per-node prefill and decode throughputs beside the
published ones, the per-user decode speed, and the run's summary (units: tokens/s, seconds).
"""
from __future__ import annotations

import argparse
import json
import time

#: DeepSeek, "DeepSeek-V3/R1 Inference System Overview" (deepseek-ai/open-infra-index,
#: 202502OpenSourceWeek/day_6_one_more_thing_deepseekV3R1_inference_system_overview.md), 24 h of service
PUBLISHED = {"prefill_input_tokens_per_s_per_node": 73.7e3, "decode_output_tokens_per_s_per_node": 14.8e3,
             "cache_hit_share": 342 / 608, "output_tokens_per_s_per_user": (20, 22),
             "input_tokens": 608e9, "output_tokens": 168e9, "kv_length_per_output_token": 4989}

#: prompt and output lengths from the published totals: P / D = 608 / 168 and P + D / 2 = 4989
OSL = round(PUBLISHED["kv_length_per_output_token"] / (PUBLISHED["input_tokens"] / PUBLISHED["output_tokens"] + 0.5))
ISL = round(PUBLISHED["kv_length_per_output_token"] - OSL / 2)

#: H800 = H100 SXM with NVLink at 400 GB/s (200 GB/s per direction; NVIDIA's H800 SXM5 figure) instead of 900
H800 = ("hardware.node.nvlink_bandwidth=200e9",)


def pools(batch: int, units: int) -> tuple[dict, dict]:
    """The prefill and decode pool specs (README.md: assumptions 3-6)."""
    common = {"arch": "moe", "overlap": "two-batch"}
    prefill = {**common, "nodes": 4, "workers": units, "moe": {"attention": "dp", "ep": 32, "redundant_experts": 32},
               "engine": {"max_batch": 4, "token_budget": 16384}}
    decode = {**common, "nodes": 18, "moe": {"attention": "dp", "ep": 144, "redundant_experts": 32},
              "engine": {"max_batch": batch, "token_budget": 8192, "mtp": 1}}
    return prefill, decode


def main(argv=None) -> dict:
    from simfoe.serving.disagg_api import DisaggRun, simulate_disagg_serving
    from simfoe.workloads.closed_loop import ClosedLoop

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="decode sequences per DP rank (GPU), default 64")
    ap.add_argument("--prefill-units", type=int, default=5, help="4-node prefill units per 18-node decode unit")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    a = ap.parse_args(argv)
    pre, dec = pools(a.batch, a.prefill_units)
    conc = 144 * a.batch
    t = time.perf_counter()
    res = simulate_disagg_serving("deepseek-v3", "h100-sxm", pre, dec,
                                  ClosedLoop(concurrency=conc, isl=ISL, osl=OSL, num_prompts=conc, warmup=conc),
                                  run=DisaggRun(transfer="layerwise", overrides=H800))
    s, rec = res.summary, res.records
    d = s["disagg"]
    # throughput while busy: tokens a pool computed (prefill) or emitted (decode) per busy second, per node
    busy = {k: sum(r.busy_s for r in e.replicas) for k, e in (("prefill", res.engine.pre), ("decode", res.engine.dec))}
    out = {
        "published": PUBLISHED, "isl": ISL, "osl": OSL, "concurrency": conc, "xpyd": s["xpyd"],
        "prefill_computed_tokens_per_s_per_node": float(rec["prompt_tokens"].sum()) / busy["prefill"] / 4,
        "published_prefill_computed_tokens_per_s_per_node": PUBLISHED["prefill_input_tokens_per_s_per_node"]
        * (1 - PUBLISHED["cache_hit_share"]),
        "decode_output_tokens_per_s_per_node_busy": float(rec["generated_tokens"].sum()) / busy["decode"] / 18,
        "decode_output_tokens_per_s_per_node_span": s["throughput"]["output_tokens_per_s"] / 18,
        "output_tokens_per_s_per_user": 1 / s["tpot_s"]["mean"],
        "ttft_s": s["ttft_s"], "tpot_s": s["tpot_s"], "mtp": s.get("mtp"), "disagg": d,
        "wall_s": time.perf_counter() - t,
    }
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return out


if __name__ == "__main__":
    main()
