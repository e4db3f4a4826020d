"""CPU profile fit from the committed measurement set: reproducible, residuals reported, provenance complete."""
from __future__ import annotations

import math

import pytest

from simfoe.paths import REPO_ROOT
from simfoe.specs.io import load_hardware

SET = REPO_ROOT / "validation" / "data" / "cpu-amd-epyc-zen4-2026-11-23"
PROFILE = "cpu-amd-epyc-zen4"


@pytest.fixture(scope="module")
def fitted():
    from simfoe.calibration.fit_profile import fit_profile

    return fit_profile(SET, PROFILE)


def _leaves(d, prefix=""):
    for k, v in d.items():
        p = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _leaves(v, p + ".")
        else:
            yield p


def test_committed_profile_matches_refit(fitted):
    profile, _, report = fitted
    hw = load_hardware(PROFILE)
    # peaks, DRAM bandwidth and kernel parameters come from deterministic reductions / fits of stored
    # data: a refit must reproduce them to the 5 significant digits they are stored with
    assert hw.gpu.peak_flops == profile["gpu"]["peak_flops"]
    assert hw.gpu.hbm_bandwidth == profile["gpu"]["hbm_bandwidth"]
    for fam, params in profile["kernels"].items():
        for k, v in params.items():
            assert math.isclose(hw.kernels[fam][k], v, rel_tol=1e-3), (fam, k)
    assert {dt: t.model_dump() for dt, t in hw.gemm_tables.items()} == profile["gemm_tables"]
    assert report["kernels"]["gemm table (fp32, 1 thread)"]["mape_pct"] < 2  # the table reproduces its rows (0.48%)
    assert report["held_out"]["grouped_ffn (loop_swiglu)"]["mape_pct"] < 10  # never fitted: 7.35%


def test_every_number_has_provenance():
    import yaml

    data = yaml.safe_load((REPO_ROOT / "hwprofiles" / f"{PROFILE}.yaml").read_text())
    prov = data["provenance"]
    for sec in ("gpu", "node", "network", "collectives", "kernels", "gemm_tables"):
        for leaf in _leaves(data[sec], sec + "."):
            parts = leaf.split(".")
            assert any(".".join(parts[:i]) in prov for i in range(1, len(parts) + 1)), leaf
    assert "validation/data/cpu-amd-epyc-zen4-2026-11-23" in prov["kernels.gemm"]


def test_fit_fields_are_physical(fitted):
    profile, _, report = fitted
    g = profile["gpu"]
    assert g["peak_flops"]["bf16"] > g["peak_flops"]["fp32"] > 1e9
    assert 1e9 < g["hbm_bandwidth"] < 1e12
    assert profile["node"]["gpus_per_node"] == 2
    assert profile["network"]["nic_bandwidth"] == profile["node"]["nvlink_bandwidth"]
    assert set(report["collectives"]["residuals"]) >= {"all", "all_reduce", "all_to_all"}


def test_calibrate_cli_fit_writes_profile(tmp_path, capsys):
    import json

    from simfoe.cli import main

    out = tmp_path / "cpu-test.yaml"
    assert main(["calibrate", "--from", str(SET), "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["written"] == str(out)
    hw = load_hardware(str(out))
    assert hw.name == "cpu-test" and hw.kernels["gemm"]


def test_calibrate_cli_errors(capsys):
    from simfoe.cli import main

    assert main(["calibrate", "--json"]) == 2
    assert main(["calibrate", "--from", "/nonexistent", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2


def test_calibrate_device_cpu_measures_with_two_processes(tmp_path, capsys, monkeypatch):
    """`calibrate --device cpu` runs the harness as the committed CPU sets were measured (--concurrent 2)."""
    import json
    import subprocess

    from simfoe.cli import main

    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout='{"rows": 1}\n')

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert main(["calibrate", "--device", "cpu", "--out", str(tmp_path), "--quick", "--json"]) == 0
    assert seen[0][seen[0].index("--concurrent") + 1] == "2" and "--quick" in seen[0]
    assert main(["calibrate", "--device", "cpu", "--out", str(tmp_path), "--concurrent", "1", "--json"]) == 0
    assert seen[1][seen[1].index("--concurrent") + 1] == "1"
    assert json.loads(capsys.readouterr().out.splitlines()[0])["measured"] == {"rows": 1}
    assert main(["calibrate", "--device", "cuda", "--out", str(tmp_path), "--concurrent", "2"]) == 2
    assert "--concurrent" in capsys.readouterr().err and len(seen) == 2


def test_collective_fit_recovers_alpha_hop_and_bandwidth():
    """Rows generated from known alpha, per-step hop and bandwidth are fitted back to them: the step
    count (all_reduce 2 at 2 ranks, all_gather / all_to_all 1) is what separates alpha from hop."""
    import pandas as pd

    from simfoe.calibration.fit_profile import _fit_collectives, gloo_path, predict_collective_row

    hw = load_hardware(PROFILE)
    truth = {"alpha_s": 1.2e-4, "hop_s": 2.0e-4, "bandwidth": 8.0e8}
    path = gloo_path(truth["alpha_s"], truth["hop_s"])
    true_hw = hw.model_copy(update={
        "node": hw.node.model_copy(update={"nvlink_bandwidth": truth["bandwidth"], "nvlink_latency_s": 0.0}),
        "collectives": type(hw.collectives).model_validate({"nvlink": path, "network": path})})
    rows = pd.DataFrame([{"collective": c, "world_size": 2, "oversubscribed": 0, "bytes": b}
                         for c in ("all_reduce", "all_gather", "all_to_all") for b in (1024, 65536, 1 << 20, 1 << 24)])
    rows["median_s"] = [predict_collective_row(true_hw, r) for r in rows.itertuples(index=False)]
    # hand check of one row: a 1 KiB all_reduce at 2 ranks is alpha + 2 hops + 2 * (1/2) * 1 KiB / bandwidth
    assert rows.median_s[0] == pytest.approx(1.2e-4 + 2 * 2.0e-4 + 1024 / 8.0e8, rel=1e-6)
    fit, resid = _fit_collectives(hw, rows)
    for k, v in truth.items():
        assert fit[k] == pytest.approx(v, rel=0.02), k
    assert resid["all"]["mape_pct"] < 0.5
