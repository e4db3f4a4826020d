"""Testbed: config derivation, comparison math (fast); a short real run judged by the speedup error (slow)."""
from __future__ import annotations

import math

import pytest

from simfoe.calibration import testbed


def _model():
    from simfoe.paths import REPO_ROOT
    from simfoe.specs.io import load_hardware, load_model

    return load_model(str(REPO_ROOT / testbed.DEFAULT_MODEL)), load_hardware(testbed.DEFAULT_HARDWARE)


def test_config_is_iso_parameter_foe():
    cfg = testbed.build_config(*_model(), testbed.QUICK_SHAPES, 3, 1)
    f = cfg["foe"]
    assert (f["clusters"], f["experts_per_cluster"], f["top_k_per_cluster"], f["expert_ffn"]) == (2, 4, 1, 1024)
    # expert parameters equal: C * E_c * f' = E * f; active: C * k_c * f' = k * f
    mm = cfg["model"]
    assert f["clusters"] * f["experts_per_cluster"] * f["expert_ffn"] == mm["n_experts"] * mm["expert_ffn"]
    assert f["clusters"] * f["top_k_per_cluster"] * f["expert_ffn"] == mm["top_k"] * mm["expert_ffn"]
    assert len(cfg["cases"]) == 2 * len(testbed.QUICK_SHAPES)


def test_compare_math():
    meas = {"cases": [
        {"arch": "moe", "phase": "decode", "batch": 4, "seq_len": 8, "cpu_median_s": 2.0, "wall_median_s": 3.0, "wall_min_s": 2.5},
        {"arch": "foe", "phase": "decode", "batch": 4, "seq_len": 8, "cpu_median_s": 1.0, "wall_median_s": 1.5, "wall_min_s": 1.2},
    ]}
    r = testbed.compare(meas, [2.2, 1.0])
    assert r["cases"][0]["ape_pct"] == pytest.approx(10.0)
    assert r["mape"] == pytest.approx(5.0)
    assert r["speedup_error"] == pytest.approx(0.1)  # predicted ratio 2.2 vs measured 2.0


def test_compare_host_speed():
    meas = {"cases": [
        {"arch": a, "phase": "decode", "batch": 4, "seq_len": 8, "cpu_median_s": 1.0, "wall_median_s": 1.0,
         "wall_min_s": 1.0, "probe_cpu_median_s": p} for a, p in (("moe", 0.010), ("foe", 0.0125))]}
    r = testbed.compare(meas, [1.0, 1.0], probe_predicted_s=0.010)
    assert [c["host_speed"] for c in r["cases"]] == pytest.approx([1.0, 0.8])
    assert r["host_speed"] == pytest.approx(0.9)
    assert "host_speed" not in testbed.compare(meas, [1.0, 1.0])


def test_compare_attaches_breakdown_only_when_measured():
    base = {"phase": "decode", "batch": 4, "seq_len": 8, "cpu_median_s": 1.0, "wall_median_s": 1.0, "wall_min_s": 1.0}
    bd = {"attention": 0.4, "experts": 0.6}
    meas = {"cases": [{**base, "arch": "moe", "breakdown_cpu_s": bd, "breakdown_wall_s": bd}, {**base, "arch": "foe"}]}
    pred = [{"attention": 0.5, "experts": 0.5, "all_reduce": 0.0}, {"attention": 1.0}]
    r = testbed.compare(meas, [1.0, 1.0], predicted_breakdowns=pred)
    assert r["cases"][0]["breakdown"] == {"measured_cpu_s": bd, "measured_wall_s": bd,
                                          "predicted_s": {"attention": 0.5, "experts": 0.5}}  # zero categories dropped
    assert "breakdown" not in r["cases"][1]
    assert "breakdown" not in testbed.compare(meas, [1.0, 1.0])["cases"][0]


def test_testbed_times_simfoe_categories():
    """validation/testbed.py may not import simfoe, so it names the categories itself: they must stay
    simfoe's (every one but dense_ffn, which the MoE-only testbed model never runs)."""
    pytest.importorskip("torch")
    from simfoe.forward.simulate import CATEGORIES
    from validation.testbed import BREAKDOWN_CATEGORIES

    assert set(BREAKDOWN_CATEGORIES) == set(CATEGORIES) - {"dense_ffn"}


def test_predicted_breakdown_adds_up_to_the_latency():
    """The per-category seconds the testbed comparison shows are a partition of the predicted pass."""
    m, hw = _model()
    cases = [[a, ph, b, s] for ph, b, s in testbed.DEFAULT_SHAPES for a in ("moe", "foe")]
    for (a, *_), r in zip(cases, testbed.predict_results(m, hw, cases)):
        assert sum(r.breakdown_s.values()) == pytest.approx(r.latency_s, rel=1e-9)
        used = {k for k, v in r.breakdown_s.items() if v > 0}
        assert used == ({"attention", "experts", "dispatch", "combine", "embed_lm_head"} if a == "moe"
                        else {"attention", "experts", "all_reduce", "embed_lm_head"})


def test_predict_with_expert_counts_follows_the_routing():
    """All of a cluster's tokens on one expert cost one big GEMM per layer instead of four quarter-size
    ones; the prediction with those counts equals the hand sum of the plan's expert step for them."""
    m, hw = _model()
    L = m.n_layers
    T = 2 * 128
    skew = [[T, 0, 0, 0]] * (2 * L)          # FoE rows: (layer, cluster), 4 experts per cluster
    even = [[T // 4] * 4] * (2 * L)
    case = [["foe", "prefill", 2, 128]]
    p_skew = testbed.predict_cases(m, hw, case, expert_counts=[skew])[0]
    p_even = testbed.predict_cases(m, hw, case, expert_counts=[even])[0]
    p_none = testbed.predict_cases(m, hw, case)[0]
    assert p_skew != pytest.approx(p_even, rel=1e-3)
    from simfoe.costs.kernels import gemm, routing_glue

    def expert_s(loads):
        return sum(gemm(hw, t, 2 * 1024, m.hidden, "fp32").latency_s + gemm(hw, t, m.hidden, 1024, "fp32").latency_s
                   for t in loads if t)

    # only the expert GEMMs (and the glue on the active-expert count) differ between the two routings
    d_expert = L * (expert_s([T, 0, 0, 0]) - expert_s([T // 4] * 4))
    d_glue = L * (routing_glue(hw, 1, 3, 0, T, T) - routing_glue(hw, 4, 0, 0, T, T))
    d_elementwise = p_skew - p_even - d_expert - d_glue
    assert abs(d_elementwise) < 0.02 * p_even, (p_skew, p_even, d_expert, d_glue)
    assert p_none > 0


@pytest.mark.slow
def test_testbed_cli_speedup(capsys):
    """Real 2-process runs (~20 s each), judged by the MoE/FoE speedup error averaged over the four
    default shapes (the two --quick shapes alone carry twice the noise), which cancels most of the
    host's load (both architectures see it, interleaved repeat by repeat); 0.15 is the issue's bound.

    Today's errors: Intel 0.02-0.06 per run, AMD 0.09 (stored run). One run's measured ratio still moves
    by several percent on a shared 2-core VM, so the verdict is the median of up to three runs: two
    passing runs end it early. A real model error shifts every run the same way and still fails.
    """
    import json
    import statistics

    from simfoe.cli import main

    errors, last = [], None
    for _ in range(3):
        assert main(["testbed", "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert {"cases", "mape", "speedup_error"} <= set(r)
        assert len(r["cases"]) == 2 * len(testbed.DEFAULT_SHAPES)
        for c in r["cases"]:
            assert {"arch", "phase", "batch", "measured_s", "predicted_s"} <= set(c)
            assert c["measured_s"] > 0 and c["predicted_s"] > 0
        errors.append(r["speedup_error"])
        last = r
        if sum(e <= 0.15 for e in errors) >= 2:
            break
    assert statistics.median(errors) <= 0.15, (errors, last["speedups"])


@pytest.mark.slow
def test_testbed_cli_quick_runs(capsys):
    """--quick (the two CI shapes) runs end to end and keeps the JSON contract."""
    import json

    from simfoe.cli import main

    assert main(["testbed", "--quick", "--repeats", "3", "--breakdown", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [(c["arch"], c["phase"], c["batch"]) for c in r["cases"]] == [
        (a, ph, b) for ph, b, _ in testbed.QUICK_SHAPES for a in ("moe", "foe")]
    assert r["hardware_matched"] in (True, False) and r["env"]["interleaved"] is True
    m = r["cases"]
    # routing counts are conserved: MoE rows sum to tokens * top_k, FoE rows to tokens * top_k_c
    for c in m:
        tokens = c["batch"] * (c["seq_len"] if c["phase"] == "prefill" else 1)
        per_row = tokens * (2 if c["arch"] == "moe" else 1)
        rows = c["expert_counts"]
        assert len(rows) == (4 if c["arch"] == "moe" else 8) and all(sum(row) == per_row for row in rows)
        # host_speed is a diagnostic of the host (a busy 2-core CI runner read 0.48), so only its
        # presence and sign are part of the contract, never a band
        assert math.isfinite(c["host_speed"]) and c["host_speed"] > 0
        # the breakdown pass times the same categories the prediction has, and they account for a pass
        bd = c["breakdown"]
        cats = {"attention", "experts", "embed_lm_head"} | ({"dispatch", "combine"} if c["arch"] == "moe" else {"all_reduce"})
        assert set(bd["measured_cpu_s"]) == set(bd["predicted_s"]) == cats
        assert 0.5 < sum(bd["measured_cpu_s"].values()) / c["measured_s"] < 2.0


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--breakdown", "-1"]])
def test_testbed_bad_counts_exit_2(argv, capsys):
    from simfoe.cli import main

    assert main(["testbed", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {argv[0]}")
