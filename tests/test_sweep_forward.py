"""Sweeps of the real forward kind: SIGKILL midway + --resume equals an uninterrupted run;
local pool and Ray give identical tables; plots and summary are written."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

pytest.importorskip("simfoe.api")

from simfoe.sweep.runner import run_sweep  # noqa: E402
from simfoe.sweep.spec import load_sweep_spec  # noqa: E402
from simfoe.sweep.store import VOLATILE, ResultStore  # noqa: E402
from simfoe.paths import REPO_ROOT as REPO  # noqa: E402

# Fast corner of the forward model: one node, decode, small batches (tens of ms per scenario).
SPEC = """\
kind: forward
name: kill_resume
base: {model: mixtral-8x7b, hardware: h100-sxm, nodes: 1, phase: decode, routing: "zipf:1.1", seed: 3}
grid:
  arch: [moe, foe]
  batch: [1, 2, 4, 8, 16, 32]
  seq_len: [256, 1024, 4096]
metrics: [latency_s, breakdown_s, comm_bytes, local_activation_rate]
"""


def stable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in VOLATILE if c in df]).sort_values("index").reset_index(drop=True)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("spec") / "kill.yaml"
    f.write_text(SPEC)
    return f


@pytest.fixture(scope="module")
def reference(spec_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    r = run_sweep(load_sweep_spec(spec_file), out, workers=1, progress=False, plots=False)
    assert r["failed"] == 0 and r["rows"] == 36
    return stable(pd.read_parquet(out / "results.parquet"))


@pytest.mark.slow
def test_sigkill_midway_then_resume_equals_uninterrupted(spec_file, reference, tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "simfoe", "sweep", str(spec_file), "--out", str(out), "--workers", "1",
           "--chunk-size", "1", "--no-plots", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = ResultStore(out)
    deadline = time.monotonic() + 120
    try:
        while len(store.part_files()) < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stored = len(store.read())
    assert 0 < stored < 36, "the kill was not midway"
    assert not store.results.is_file()

    resumed = subprocess.run(cmd + ["--resume", "--json"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 36 and df["run_id"].is_unique and (df["status"] == "ok").all()
    pd.testing.assert_frame_equal(stable(df), reference)
    assert not store.part_files()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_and_local_pool_give_identical_tables(spec_file, reference, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        r = run_sweep(load_sweep_spec(spec_file), tmp_path / "ray", executor="ray", workers=2, chunk_size=4,
                      progress=False, plots=False)
    finally:
        ray.shutdown()
    assert r["ok"] == 36
    local = run_sweep(load_sweep_spec(spec_file), tmp_path / "pool", workers=2, chunk_size=5,
                      progress=False, plots=False)
    assert local["ok"] == 36
    ray_df = stable(pd.read_parquet(tmp_path / "ray" / "results.parquet"))
    pd.testing.assert_frame_equal(ray_df, reference)
    pd.testing.assert_frame_equal(stable(pd.read_parquet(tmp_path / "pool" / "results.parquet")), reference)


def test_plots_and_summary_from_stored_results(spec_file, reference, tmp_path):
    from simfoe.cli import main

    store = ResultStore(tmp_path)
    one = reference[reference["seq_len"] == 1024]
    store.append(one.assign(wall_s=0.0, worker="w", finished_at=0.0).to_dict("records"))
    assert main(["plot", str(tmp_path), "--json"]) == 0
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert any(n.startswith("latency_vs_batch") for n in pngs)
    assert any(n.startswith("speedup_heatmap") for n in pngs)
    assert any(n.startswith("comm_share") for n in pngs)
    assert len(list((tmp_path / "plots").glob("*.svg"))) == len(pngs)
    text = (tmp_path / "summary.md").read_text()
    assert "MoE vs FoE" in text and "12 ok" in text


def test_summary_names_every_varying_input(tmp_path):
    """With hardware varying too, the headline win names it and the phase tables say what they pool."""
    from simfoe.sweep.summary import write_summary

    rows = [{"kind": "forward", "status": "ok", "phase": "decode", "nodes": 1, "batch": 8, "seq_len": 2048,
             "hardware": hw, "arch": arch, "latency_s": lat}
            for hw, moe, foe in (("h100-sxm", 2.0, 1.0), ("h100-sxm-measured", 1.2, 1.0))
            for arch, lat in (("moe", moe), ("foe", foe))]
    text = write_summary(pd.DataFrame(rows), tmp_path).read_text()
    assert "Largest FoE win: 2.00x at phase=decode, nodes=1, batch=8, seq_len=2048, hardware=h100-sxm " in text
    assert "Largest FoE loss: 1.20x at" in text and "hardware=h100-sxm-measured" in text
    assert "median over hardware;" in text and "| 1 | 1.60x |" in text


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_specs_load_and_expand(path):
    """Every example the docs point at parses, names known presets and expands to scenarios."""
    spec = load_sweep_spec(path)
    scen = spec.scenarios()
    assert scen and len({s.run_id for s in scen}) == len(scen)


def test_summary_leaves_scenarios_that_do_not_fit_out_of_the_comparison(tmp_path):
    import pandas as pd

    from simfoe.sweep.summary import write_summary

    rows = [{"status": "ok", "kind": "forward", "model": "m", "phase": "decode", "nodes": 1, "batch": b,
             "arch": a, "latency_s": lat, "memory.fits": fits}
            for b, a, lat, fits in [(8, "moe", 2.0, True), (8, "foe", 1.0, True),
                                    (64, "moe", 3.0, True), (64, "foe", 0.5, False)]]
    text = write_summary(pd.DataFrame(rows), tmp_path).read_text()
    assert "1 of 4 scenarios need more HBM" in text
    assert "FoE is faster in **1 of 1** matched scenarios" in text and "6.00x" not in text
