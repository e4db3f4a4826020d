"""Eager routing glue: the fit recovers a known linear cost, the forward plan charges it only where the
profile fitted it, and the split-size exchange adds one small all-to-all per MoE layer."""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.calibration.fit_profile import _fit_glue, glue_features, glue_rows, in_pass_rows
from simfoe.costs import kernels as K
from simfoe.specs.io import build_placement, load_hardware, load_model

TRUE = dict(zip(K.GLUE_PARAMS, (30e-6, 2e-6, 27e-6, 36e-6, 1e-7, 2e-7, 450e-6)))


def _rows(params: dict) -> pd.DataFrame:
    hw = load_hardware("cpu-intel-xeon-amx").model_copy(update={"kernels": {"routing_glue": params}})
    rows = []
    for E in (1, 2, 4, 8, 16):
        for R in (0, 1, 2, 4):
            for T in (4, 256):
                active = min(E, T)
                r = pd.Series({"experts": E, "ranks": R, "tokens_total": T, "experts_active": active})
                a, b, rr, rows_, tok = glue_features(r)
                rows.append({**r.to_dict(), "t_s": K.routing_glue(hw, a, b, rr, rows_, tok)})
    return pd.DataFrame(rows)


def test_fit_recovers_known_coefficients():
    fit = _fit_glue(_rows(TRUE))
    for k, v in TRUE.items():
        assert fit[k] == pytest.approx(v, rel=1e-3), k


def test_hand_computed_glue():
    hw = load_hardware("cpu-intel-xeon-amx").model_copy(update={"kernels": {"routing_glue": TRUE}})
    # 3 active + 1 idle expert, 2 destination ranks, 6 rows, 4 tokens
    want = 3 * 30e-6 + 1 * 2e-6 + 2 * 27e-6 + 36e-6 + 6 * 1e-7 + 4 * 2 * 2e-7 + 450e-6
    assert K.routing_glue(hw, 3, 1, 2, 6.0, 4.0) == pytest.approx(want)
    # local experts (FoE form): no per-rank or dispatch terms
    assert K.routing_glue(hw, 3, 1, 0, 6.0, 4.0) == pytest.approx(3 * 30e-6 + 2e-6 + 6e-7 + 450e-6)
    # a profile fitted to warm rows before per_call_s existed prices no per-call term
    warm = hw.model_copy(update={"kernels": {"routing_glue": {k: v for k, v in TRUE.items() if k != "per_call_s"}}})
    assert K.routing_glue(warm, 3, 1, 0, 6.0, 4.0) == pytest.approx(3 * 30e-6 + 2e-6 + 6e-7)


def test_in_pass_rows_prefer_cold():
    warm = _rows({**TRUE, "per_call_s": 0.0}).assign(variant="eager", op="routing_glue", threads=1)
    cold = _rows(TRUE).assign(variant="eager_cold", op="routing_glue", threads=1)
    gemm = pd.DataFrame({"op": ["gemm"], "variant": ["mm"], "threads": [1]})
    both = in_pass_rows(pd.concat([warm, cold, gemm], ignore_index=True))
    assert set(zip(both.op, both.variant)) == {("routing_glue", "eager_cold"), ("gemm", "mm")}
    assert _fit_glue(glue_rows(both))["per_call_s"] == pytest.approx(450e-6, rel=1e-3)
    # a set measured before the cold variants existed: its warm rows, and no per-call term
    assert set(in_pass_rows(warm).variant) == {"eager"}
    assert _fit_glue(glue_rows(warm))["per_call_s"] == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 16), st.integers(0, 16), st.integers(0, 8), st.floats(0, 1e4), st.floats(0, 1e4))
def test_glue_is_monotone(active, idle, ranks, rows, tokens):
    hw = load_hardware("cpu-intel-xeon-amx")
    base = K.routing_glue(hw, active, idle, ranks, rows, tokens)
    assert base >= 0
    assert K.routing_glue(hw, active + 1, idle, ranks, rows, tokens) >= base
    assert K.routing_glue(hw, active, idle, ranks + 1, rows, tokens) >= base
    assert K.routing_glue(hw, active, idle, ranks, rows + 1, tokens) >= base


def test_gpu_profiles_have_no_glue():
    assert K.routing_glue(load_hardware("h100-sxm"), 8, 0, 8, 1e4, 1e3) == 0.0


def _latency(hw, arch, overrides, phase="decode", batch=4):
    from simfoe.forward.simulate import ForwardModel

    m = load_model("validation/models/testbed-moe.yaml")
    return ForwardModel(m, hw, build_placement(arch, 1, overrides), seed=0).run(phase, batch, 512)


@pytest.mark.parametrize("arch,overrides", [("moe", ["placement.moe.attention=dp"]), ("foe", [])])
def test_plan_charges_glue_only_where_fitted(arch, overrides):
    hw = load_hardware("cpu-intel-xeon-amx")
    bare = hw.model_copy(update={"kernels": {k: v for k, v in hw.kernels.items() if k != "routing_glue"}})
    with_glue, without = _latency(hw, arch, overrides), _latency(bare, arch, overrides)
    extra = with_glue.breakdown_s["experts"] - without.breakdown_s["experts"]
    # 4 layers; at least every layer's active experts, at most all 4 local experts active
    g = hw.kernels["routing_glue"]
    assert 4 * (g["per_active_expert_s"] + g["per_call_s"]) < extra < 4 * (
        4 * g["per_active_expert_s"] + 2 * g["per_rank_s"] + g["dispatch_s"] + g["per_call_s"] + 1e-4)
    assert with_glue.latency_s - without.latency_s == pytest.approx(extra, rel=1e-6, abs=1e-9)


def test_split_exchange_adds_one_small_all_to_all_per_layer():
    hw = load_hardware("cpu-intel-xeon-amx")
    base = _latency(hw, "moe", ["placement.moe.attention=dp", "placement.moe.all_to_all=direct"])
    ex = _latency(hw, "moe", ["placement.moe.attention=dp", "placement.moe.all_to_all=direct",
                              "placement.moe.split_exchange=true"])
    # one all-to-all at 2 ranks is one algorithm step: alpha + hop
    lat = hw.collectives.nvlink.alpha_s + hw.collectives.nvlink.hop_s
    # 4 layers x one latency-bound all-to-all of 8-byte messages (plus a few ns of bytes)
    assert ex.breakdown_s["dispatch"] - base.breakdown_s["dispatch"] == pytest.approx(4 * lat, rel=0.05)
    assert ex.comm_bytes["all_to_all"]["intra_node"] - base.comm_bytes["all_to_all"]["intra_node"] == pytest.approx(4 * 2 * 8)
