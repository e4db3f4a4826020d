"""Pipeline engine speed: the FacTool preset, 12 simulated minutes at 15 requests/s (ALTO Table 1's run).

Targets (issue 27): under 7 s on one core; ``--spec factool-engine`` (LM stages on the serving engine)
at most 60 s. Prints wall time and this process's CPU time (a wall time
well above the CPU time means another process shared the core: pin one, e.g. ``taskset -c 0``),
simulated seconds, requests and served units per wall second.
Usage: python benchmarks/bench_pipeline.py [--mode batch] [--spec factool-engine]
"""
from __future__ import annotations

import argparse
import time

from simfoe.pipelines.engine import simulate
from simfoe.pipelines.metrics import summarize
from simfoe.pipelines.spec import load_pipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="stream")
    ap.add_argument("--spec", default="factool", help="pipeline preset or YAML path")
    ap.add_argument("--rate", type=float, default=15.0)
    ap.add_argument("--duration", type=float, default=720.0)
    ap.add_argument("--routing", default=None)
    a = ap.parse_args()
    spec = load_pipeline(a.spec)
    t0, c0 = time.perf_counter(), time.process_time()
    r = simulate(spec, a.mode, a.rate, a.duration, seed=0, routing=a.routing)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = summarize(r, per_instance=False)
    units = sum(i.served for st in r.stages for i in st.instances)
    print(f"{spec.name} {a.mode}/{r.routing} {a.rate:g} req/s x {a.duration:g} s: wall {wall:.2f} s (cpu {cpu:.2f} s), "
          f"{r.t_end / wall:.0f} simulated s per wall s, {r.sent / wall:.0f} requests/s, "
          f"{units / wall:.0f} served units/s ({units} units); p50 {s['latency_s']['p50']:.3f} s, "
          f"achieved {s['achieved_rps']:.2f} req/s")


if __name__ == "__main__":
    main()
