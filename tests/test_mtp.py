"""Multi-token prediction in the serving engine (simfoe.serving.mtp): tokens per step, pricing, KV, CLI."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from simfoe.errors import SpecError
from simfoe.serving import ConstantStep, LinearStep, StepModelBase, simulate
from simfoe.workloads import RequestTable


def one_request(prompt, output):
    return RequestTable.from_arrays([0.0], [prompt], [output])


def random_table(seed, n):
    rng = np.random.default_rng(seed)
    return RequestTable.from_arrays(np.sort(rng.uniform(0, 5, n)), rng.integers(1, 400, n), rng.integers(1, 60, n))


@settings(max_examples=30, deadline=None)
@given(k=hs.integers(1, 4), prompt=hs.integers(1, 300), output=hs.integers(1, 80))
def test_acceptance_one_emits_k_plus_one_tokens_per_step(k, prompt, output):
    """Alone, with every draft accepted: the prefill's step emits the first token, each later step k + 1
    (the last one what is left), so the request takes 1 + ceil((output - 1) / (k + 1)) steps of 10 ms
    plus 1 ms per draft pass (k per decode step, one with the prefill)."""
    r = simulate(one_request(prompt, output), ConstantStep(0.01), 10**5, mtp=k, mtp_acceptance=1.0,
                 draft_model=ConstantStep(0.001), token_times=True)
    steps = -(-(output - 1) // (k + 1))
    assert r.summary["sim"]["iterations"] == 1 + steps
    rec = r.records.iloc[0]
    assert rec.generated_tokens == output
    assert rec.finish_s == pytest.approx(0.011 + steps * (0.01 + k * 0.001))
    tt = r.token_times(0)
    groups = np.unique(tt, return_counts=True)[1]  # tokens per arrival time
    assert groups.tolist() == [1] + [k + 1] * ((output - 1) // (k + 1)) + ([(output - 1) % (k + 1)]
                                                                           if (output - 1) % (k + 1) else [])
    if output > 1:
        assert r.summary["mtp"]["tokens_per_step"] == pytest.approx((output - 1) / steps)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 10_000), n=hs.integers(1, 40), max_batch=hs.integers(1, 16))
def test_acceptance_zero_is_no_mtp_plus_the_draft_cost(seed, n, max_batch):
    """One draft that is never accepted: every request sees the same iterations as without MTP, each
    longer by the draft pass (a step model whose decodes cost nothing per token, so verifying two query
    tokens costs what decoding one does; a token budget and KV cache that never bind)."""
    t = random_table(seed, n)
    main = LinearStep(base_s=5e-3, per_prefill_token_s=2e-5, per_attn_pair_s=1e-9)
    kw = dict(max_batch=max_batch, token_budget=10**6)
    a = simulate(t, main, 10**6, mtp=1, mtp_acceptance=0.0, draft_model=ConstantStep(2e-3), **kw).records
    b = simulate(t, LinearStep(base_s=7e-3, per_prefill_token_s=2e-5, per_attn_pair_s=1e-9), 10**6, **kw).records
    for col in ("first_token_s", "finish_s", "generated_tokens", "scheduled_s"):
        assert np.allclose(a[col], b[col], rtol=1e-12, atol=1e-12), col


class Recorder(StepModelBase):
    """A constant 10 ms step that records what it is asked (iteration arguments)."""

    def __init__(self):
        self.calls = []

    def iteration(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_kv_tokens):
        self.calls.append((prefill_tokens, decode_seqs, decode_kv_tokens))
        return 0.01


def test_verification_prices_k_plus_one_query_tokens_per_sequence():
    """Two 10-token prompts prefilled together, then decoded with k = 2: the first decode step verifies
    3 query tokens per sequence, attending 11, 12 and 13 tokens: 6 query tokens, 2 x 36 KV tokens.
    The draft module is asked for the prefill (20 tokens, pass 1 of the prefill step) and per decode
    step for the 2 sequences (pass 1) and again (pass 2)."""
    main, draft = Recorder(), Recorder()
    t = RequestTable.from_arrays([0.0, 0.0], [10, 10], [4, 4])
    simulate(t, main, 10**4, mtp=2, mtp_acceptance=1.0, draft_model=draft, cost="memo", bucket_bits=20)
    assert main.calls[:2] == [(20, 0, 0), (0, 6, 72)]
    assert draft.calls[:2] == [(20, 0, 0), (0, 2, 22)]  # memo: pass 2 of a step repeats pass 1's key


def test_kv_blocks_cover_the_drafts_and_are_all_returned():
    """k + 1 tokens a step need their blocks: with 16-token blocks a 15-token prompt's first decode step
    (k = 3) writes tokens 16..19 and takes a second block; every block comes back at the end."""
    t = RequestTable.from_arrays(np.zeros(30), np.full(30, 15), np.full(30, 40))
    r = simulate(t, ConstantStep(0.01), 16 * 60, mtp=3, mtp_acceptance=(0.9, 0.8, 0.7), max_batch=30)
    assert r.summary["requests"]["completed"] == 30
    assert r.summary["kv_cache"]["preemptions"] > 0  # 60 blocks for 30 requests of up to 4 blocks
    assert all(q.kv.free == q.kv.total for rep in r.engine.replicas for q in rep.ranks)


def test_tokens_per_step_follows_the_acceptance_rates_and_the_seed():
    """Sampled: mean tokens per step near 1 + a1 + a1 a2 over many steps, the same for the same seed."""
    t = RequestTable.from_arrays(np.zeros(50), np.full(50, 8), np.full(50, 400))
    runs = [simulate(t, ConstantStep(0.01), 10**6, mtp=2, mtp_acceptance=(0.8, 0.5), seed=s).summary["mtp"]
            for s in (0, 0, 1)]
    assert runs[0]["tokens_per_step"] == pytest.approx(1 + 0.8 + 0.4, abs=0.03)
    assert runs[0] == runs[1] and runs[0]["tokens_per_step"] != runs[2]["tokens_per_step"]
    assert runs[0]["draft_priced"] is False and runs[0]["draft_busy_fraction"] == 0.0


@pytest.mark.parametrize("knobs, field", [
    ({"mtp": 2}, "mtp_acceptance"),  # the published figure covers position 1 only
    ({"mtp": 2, "mtp_acceptance": (0.9, 0.8, 0.7)}, "mtp_acceptance"),
    ({"mtp": 1, "mtp_acceptance": 1.5}, "mtp_acceptance"),
    ({"mtp": -1}, "mtp"),
    ({"mtp_acceptance": 0.9}, "mtp_acceptance"),
])
def test_bad_mtp_settings_name_the_field(knobs, field):
    with pytest.raises(SpecError) as e:
        simulate(one_request(10, 5), ConstantStep(0.01), 10**4, **knobs)
    assert e.value.field == field


def test_mtp_off_has_a_null_summary_block():
    assert simulate(one_request(10, 5), ConstantStep(0.01), 10**4).summary["mtp"] is None


def test_deepseek_v3_mtp_module_is_one_moe_layer_and_takes_memory():
    from simfoe.serving import build_forward

    fm, m, _ = build_forward("deepseek-v3", "h100-sxm", 4, "moe", overrides=["placement.moe.attention=dp"])
    assert m.mtp_layers == 1
    mod = fm.mtp_module()
    assert (mod.model.n_layers, mod.model.n_moe_layers) == (1, 1)
    main, draft = fm.iteration(0, 0, 256, 256 * 2048).latency_s, mod.iteration(0, 0, 256, 256 * 2048).latency_s
    assert 0 < draft < main / 10
    # one more MoE layer's weights and KV per token: fewer KV tokens, by more than the 1/62 of KV alone
    assert fm.kv_capacity_tokens(mtp=True) < fm.kv_capacity_tokens() * 61 / 62


def test_serve_mtp_flags(capsys, refused):
    import json

    from simfoe.cli import main

    argv = ["serve", "--model", "deepseek-v3", "--hardware", "h100-sxm", "--nodes", "4", "--arch", "moe",
            "--concurrency", "8", "--isl", "256", "--osl", "64", "--num-prompts", "16", "--json"]
    assert main(argv + ["--mtp", "1"]) == 0
    on = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["mtp"] is None and on["mtp"]["acceptance"] == [0.85]
    assert on["tpot_s"]["mean"] < off["tpot_s"]["mean"]
    assert on["kv_cache"]["capacity_tokens"] < off["kv_cache"]["capacity_tokens"]
    refused(argv + ["--mtp", "2"], "--mtp-acceptance", "position")
    refused(argv + ["--mtp", "1", "--mtp-acceptance", "0.9,x"], "--mtp-acceptance", "0.9,x")
    refused(["serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe", "--concurrency", "1",
             "--isl", "16", "--osl", "4", "--mtp", "1"], "model.mtp_layers", "mixtral-8x7b")


def test_a_serve_sweep_varies_mtp_and_prefix_caching():
    """Both are serve-scenario keys of a sweep (validated without running)."""
    from simfoe.sweep.spec import parse_sweep_spec

    spec = parse_sweep_spec({"kind": "serve", "base": {"model": "deepseek-v3", "hardware": "h100-sxm", "nodes": 4,
                                                       "arch": "moe", "trace": "multi-turn", "mtp_acceptance": [0.9]},
                             "grid": {"mtp": [0, 1], "prefix_cache": [False, True]}})
    assert spec.count() == 4
