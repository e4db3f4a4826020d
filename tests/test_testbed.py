"""Testbed: config derivation, comparison math (fast); a short real run judged by the speedup error (slow)."""
from __future__ import annotations

import pytest

from simfoe.calibration import testbed


def test_config_is_iso_parameter_foe():
    from simfoe.specs.io import load_hardware, load_model

    from simfoe.paths import REPO_ROOT

    m = load_model(str(REPO_ROOT / testbed.DEFAULT_MODEL))
    cfg = testbed.build_config(m, load_hardware(testbed.DEFAULT_HARDWARE), testbed.QUICK_SHAPES, 3, 1)
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

    assert main(["testbed", "--quick", "--repeats", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [(c["arch"], c["phase"], c["batch"]) for c in r["cases"]] == [
        (a, ph, b) for ph, b, _ in testbed.QUICK_SHAPES for a in ("moe", "foe")]
    assert r["hardware_matched"] in (True, False) and r["env"]["interleaved"] is True
