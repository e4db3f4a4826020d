"""Serving engine driven from outside: rows appended and admitted while it runs, in a given SimPy environment."""
from __future__ import annotations

import numpy as np
import simpy

from simfoe.serving import LinearStep, simulate
from simfoe.serving.engine import Engine, engine_config
from simfoe.workloads.requests import RequestTable

STEP = LinearStep(base_s=5e-3, per_prefill_token_s=2e-5, per_decode_seq_s=1e-4, per_kv_token_s=1e-7)


def _table(n: int = 60, seed: int = 0) -> RequestTable:
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(0.05, n))
    return RequestTable.from_arrays(arr, rng.integers(50, 2000, n), rng.integers(1, 200, n))


def test_rows_appended_while_running_match_a_table_run():
    t = _table()
    ref = simulate(t, STEP, 200_000, replicas=2).records
    env = simpy.Environment()
    none = np.zeros(0, np.int64)
    eng = Engine(np.zeros(0), none, none, none, STEP, 200_000, engine_config(replicas=2), env=env)
    seen = []
    eng.store.on_emit = lambda rows, now: seen.append(len(rows))
    for r in eng.replicas:
        env.process(r.loop())

    def arrive():
        for i in range(len(t)):
            yield env.timeout(float(t.arrival_s[i]) - env.now)
            row = eng.store.append(env.now, int(t.prompt_tokens[i]), int(t.output_tokens[i]), i)
            eng.admit(row, i % 2)  # round-robin, as the table run's router

    env.process(arrive())
    env.run()
    st = eng.store
    st.trim()
    assert st.n == len(st.prompt) == len(t)
    assert np.allclose(st.first - st.arrival, ref["ttft_s"], rtol=1e-9)
    assert np.allclose(st.last - st.arrival, ref["e2e_s"], rtol=1e-9)
    assert sum(seen) == int(t.output_tokens.sum())  # the hook saw every token once
