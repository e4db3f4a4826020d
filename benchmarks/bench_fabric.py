"""Benchmark the flow network: wall time per 32-GPU all-to-all (992 flows) and flows simulated per second.

Run: ``python benchmarks/bench_fabric.py``. Prints one JSON object. Not a test (no timing asserts).
"""
from __future__ import annotations

import json

import numpy as np
import simpy

from simfoe.costs.collectives import all_reduce, all_to_all
from simfoe.fabric import FlowNetwork, build_cluster
from simfoe.specs.io import load_hardware

from timing import best_of  # benchmarks/timing.py (the script's folder is on sys.path)


def main() -> dict:
    hw = load_hardware("h100-sxm")
    c32 = build_cluster(hw, 4)
    c8 = build_cluster(hw, 1)
    rng = np.random.default_rng(0)
    uniform = np.full((32, 32), 1e6)
    np.fill_diagonal(uniform, 0)
    skewed = rng.gamma(0.5, 1e6, (32, 32))
    np.fill_diagonal(skewed, 0)

    def a2a(T, c=c32, alg="direct"):
        env = simpy.Environment()
        net = FlowNetwork(env, c)
        env.run(env.process(all_to_all(net, range(T.shape[0]), T, alg)))
        return net

    def mixtral_layer():  # 8 GPUs: attention all-reduce + dispatch/combine all-to-all, as a forward step does
        env = simpy.Environment()
        net = FlowNetwork(env, c8)
        T = rng.gamma(2.0, 2e5, (8, 8))

        def step():
            yield env.process(all_reduce(net, range(8), 4096 * 4096 * 2))
            yield env.process(all_to_all(net, range(8), T))
            yield env.process(all_to_all(net, range(8), T.T))
        env.run(env.process(step()))

    reps = 20
    t_uni = best_of(lambda: a2a(uniform), reps)
    t_skew = best_of(lambda: a2a(skewed), reps)
    t_hier = best_of(lambda: a2a(uniform, alg="hierarchical"), reps)
    t_mix = best_of(mixtral_layer, 50)
    net = a2a(skewed)
    out = {
        "a2a_32gpu_uniform_ms": round(t_uni * 1e3, 3),
        "a2a_32gpu_skewed_ms": round(t_skew * 1e3, 3),
        "a2a_32gpu_hierarchical_ms": round(t_hier * 1e3, 3),
        "flows_per_s_skewed": round(992 / t_skew),
        "completion_events_skewed": net.flows_completed,
        "mixtral_layer_8gpu_ms": round(t_mix * 1e3, 3),
        "mixtral_layers_per_min": round(60 / t_mix),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
