"""nccl-tests on one H100 node (AIConfigurator's table) against the committed h100-sxm collectives."""
from __future__ import annotations

import pytest

from simfoe.costs import fit_nccl_tests as fn
from simfoe.specs.io import load_hardware


@pytest.fixture(scope="module")
def table(shared_data):
    path = shared_data / fn.TABLE
    if not path.is_file():
        pytest.skip(f"{path} is absent (AIConfigurator's nccl-tests table is read in place)")
    return fn.load_nccl_tests(path)


@pytest.fixture(scope="module")
def errors(table):
    return fn.errors(load_hardware("h100-sxm"), table)


def test_message_size_counts_elements(table):
    """message_size x 2 bytes is nccl-tests' whole buffer: the 8-GPU 512 MiB all_gather then receives
    7/8 of it per GPU under NVLink's 450 GB/s; read as bytes per rank it would need 2.7 TB/s."""
    r = table[(table.op == "all_gather") & (table.n_gpus == 8)].iloc[-1]
    assert r.bytes == 512 * 2**20
    assert 7 / 8 * r.bytes / r.time_s < 450e9 < 7 * r.bytes / r.time_s


def test_split_holds_out_odd_sizes_and_other_gpu_counts(table):
    fit = table[~table.held_out]
    assert set(fit.n_gpus) == {fn.FIT_GPUS} and (fit.size_rank % 2 == 0).all()
    assert len(fit) == 4 * 11 and len(table) == 4 * 3 * 21
    held8 = table[table.held_out & (table.n_gpus == 8)]
    assert (held8.size_rank % 2 == 1).all() and len(held8) == 4 * 10


@pytest.mark.parametrize("op", sorted(fn.OPS))
def test_eight_gpus_one_mib_and_up_within_10_percent(errors, op):
    e = errors[f"{op} 8 GPUs >=1MiB"]
    assert e["mape"] <= 10, e
    assert e["mape_held_out"] <= 10, e


def test_profile_names_the_table(table):
    prov = load_hardware("h100-sxm").provenance
    for p in fn.PARAMS:
        assert fn.TABLE_NAME in prov[f"collectives.{p}"], p


def test_nvls_reaches_measured_bus_bandwidth(table):
    """The issue: NVLS all-reduce peaked at 359 GB/s bus bandwidth on 8 H100; nccl-tests measures 445 at
    512 MiB. busbw = 2 (n-1)/n x size / time."""
    from simfoe.costs.collectives import predict

    S = 512 * 2**20
    meas = table[(table.op == "all_reduce") & (table.n_gpus == 8) & (table.bytes == S)].time_s.iloc[0]
    pred = predict(load_hardware("h100-sxm"), "all_reduce", 8, S, "auto", 1)
    assert pred == pytest.approx(meas, rel=0.05)
    assert 2 * 7 / 8 * S / pred / 1e9 > 420


def test_fit_nccl_cli_refuses_other_hardware(capsys):
    from simfoe.cli import main

    assert main(["fit", "nccl", "--hardware", "a100-sxm", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --hardware: 'a100-sxm'") and "h100-sxm" in err


@pytest.mark.slow
def test_refit_reproduces_the_committed_profile(shared_data, table):
    """`simfoe fit nccl` from the committed profile gives its values back and the same fitted-rows error.
    The loss is flat near the optimum (a refit moves the LL128 base latency and the all-to-all efficiency
    by ~2% for < 0.01 points of MAPE), hence 3%."""
    got = fn.run_fit(shared_data, write=False)
    hw = load_hardware("h100-sxm")
    for p, v in zip(fn.PARAMS, fn.current_params(hw)):
        assert got["params"][p] == pytest.approx(v, rel=0.03), p
    assert got["fit_mape"] <= 8.4
    assert got["errors"]["all_reduce 8 GPUs >=1MiB"]["mape"] <= 10


@pytest.mark.parametrize("profile, fit_gpus", [("b200-sxm", {8, 2}), ("gb200-nvl72", {4})])
def test_blackwell_tables_fit_their_split(shared_data, profile, fit_gpus):
    """B200 and GB200 (issue 25.1): each system's table is its own (table_of); the rows fitted are even size
    positions of the largest GPU count (GB200: one tray of 4) and, on B200, whose floor's base and per-step terms one
    count cannot separate, of the smallest (2) too, for the ring collectives; 4 B200 GPUs are held out whole. The
    committed profile holds the issue's 10% on every op of the largest count, 1 MiB and up."""
    path = shared_data / fn.table_of(profile)
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    t = fn.load_table(shared_data, profile)
    fit = t[~t.held_out]
    assert set(fit.n_gpus) == fit_gpus and (fit.size_rank % 2 == 0).all()
    assert set(fit[fit.op == "alltoall"].n_gpus) == {max(fit_gpus)}  # no floor to separate: the largest count only
    assert set(t[t.size_rank % 2 == 1].held_out) == {True} and set(t.n_gpus) - fit_gpus <= set(t[t.held_out].n_gpus)
    hw = load_hardware(profile)
    assert hw.collectives.all_to_all_alpha_s is not None and hw.collectives.all_to_all_channel_pool
    most = max(fit_gpus)
    for op in fn.OPS:
        rows = t[(t.op == op) & (t.n_gpus == most) & (t.bytes >= fn.MIN_BYTES)]
        ape = abs(fn.predict_rows(hw, rows) / rows.time_s.to_numpy() - 1)
        assert ape.mean() <= 0.10, op


def _perturbed_presets(tmp_path, monkeypatch, profile: str, factor: float) -> None:
    """hwprofiles/ copied to ``tmp_path`` with every fitted collective of ``profile`` scaled by ``factor``."""
    import shutil

    import yaml

    from simfoe import paths
    from simfoe.specs import io

    src = paths.hwprofiles_dir()
    for f in src.iterdir():
        if f.name.endswith(".yaml"):
            shutil.copyfile(f, tmp_path / f.name)
    raw = yaml.safe_load((tmp_path / f"{profile}.yaml").read_text())
    for name in fn.params_of(profile):
        *path, leaf = name.split(".")
        node = raw["collectives"]
        for k in path:
            node = node[k]
        if node.get(leaf) is not None:
            node[leaf] = min(1.0, node[leaf] * factor) if "efficiency" in leaf or "fraction" in leaf else node[leaf] * factor
    (tmp_path / f"{profile}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setattr(io, "hwprofiles_dir", lambda: tmp_path)


@pytest.mark.parametrize("profile", ["b200-sxm", "gb200-nvl72"])
def test_blackwell_fit_start_ignores_the_profiles_collectives(tmp_path, monkeypatch, profile):
    """The B200 / GB200 fit starts from the ``-datasheet`` profile, so a profile whose collectives were moved
    (by an earlier `fit nccl --write`) starts, and so ends, where a fresh `calibrate` does."""
    names = fn.params_of(profile)
    before = fn.start_params(profile, names)
    assert before == fn.current_params(load_hardware(f"{profile}-datasheet"), names)
    _perturbed_presets(tmp_path, monkeypatch, profile, 0.7)
    assert load_hardware(profile).collectives.nvlink.alpha_s != pytest.approx(before[1])
    assert fn.start_params(profile, names) == before


def test_h100_fit_still_starts_from_its_profile(tmp_path, monkeypatch):
    """h100-sxm keeps its historical start (the profile's values), so its fit and quoted numbers do not move."""
    before = fn.start_params("h100-sxm")
    assert before == fn.current_params(load_hardware("h100-sxm"))
    _perturbed_presets(tmp_path, monkeypatch, "h100-sxm", 0.7)
    assert fn.start_params("h100-sxm") == pytest.approx([v * 0.7 for v in before])


@pytest.mark.slow
def test_gb200_fit_reproduces_the_committed_profile(shared_data):
    """One `simfoe fit nccl --hardware gb200-nvl72` gives the committed values back (the profile is that
    command's output, docs/calibration-kernels.md "Blackwell"); about 1 CPU minute (B200's, several, is left to
    the documented commands). 2% allows a pricing change that moves the optimum within rounding."""
    path = shared_data / fn.table_of("gb200-nvl72")
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    names = fn.params_of("gb200-nvl72")
    got = fn.run_fit(shared_data, write=False, base="gb200-nvl72")
    for p, v in zip(names, fn.current_params(load_hardware("gb200-nvl72"), names)):
        assert got["params"][p] == pytest.approx(v, rel=0.02), p


def test_gb200_held_out_rows_within_10_percent(shared_data):
    """Issue 25's bound on GB200's held-out rows, 1 MiB and up: every op on 2 GPUs (never fitted; the ring's copy
    step carries the 4-GPU fit to them: all_gather 11.7 -> 5.8%, reduce_scatter 13.1 -> 9.5%) and the 4-GPU odd
    sizes."""
    path = shared_data / fn.table_of("gb200-nvl72")
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    e = fn.errors(load_hardware("gb200-nvl72"), fn.load_nccl_tests(path))
    for op in fn.OPS:
        assert e[f"{op} 2 GPUs >=1MiB"]["mape_held_out"] <= 10, op
        assert e[f"{op} 4 GPUs >=1MiB"]["mape_held_out"] <= 10, op


@pytest.mark.parametrize("profile", ["b200-sxm", "gb200-nvl72"])
def test_fewer_gpus_reach_a_lower_ring_bus_bandwidth(shared_data, profile):
    """The ring's copy step, fitted on the largest count only, predicts how much lower the 512 MiB all_gather's bus
    bandwidth is on 2 GPUs than on the fitted count (B200 measured 438 vs 617 GB/s: 0.71; predicted 0.77), where
    a plain ring efficiency predicts 1.0."""
    path = shared_data / fn.table_of(profile)
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    t = fn.load_nccl_tests(path)
    ag = t[(t.op == "all_gather") & (t.bytes == 512 * 2**20)]
    n = ag.n_gpus.to_numpy()
    bus_meas = (n - 1) / n * 512 * 2**20 / ag.time_s.to_numpy()
    bus_pred = (n - 1) / n * 512 * 2**20 / fn.predict_rows(load_hardware(profile), ag)
    meas, pred = bus_meas[n == 2][0] / bus_meas[n == n.max()][0], bus_pred[n == 2][0] / bus_pred[n == n.max()][0]
    assert meas < 0.85 and pred == pytest.approx(meas, rel=0.10)


def test_b200_takes_nccls_protocol_choice_and_stays_monotone():
    """b200-sxm carries nvlink.nccl_protocol_choice (NCCL's pick, a per-step floor for LL128 / Simple). NCCL's pick
    can make a price drop where the next protocol is faster at the path's terms; with the fitted B200 terms every
    switch steps up (the tables' 19 -> 37 us kind), so the ring collectives stay monotone in bytes from 256 KiB to
    512 MiB on 2, 4 and 8 GPUs (a grid of 8 points per doubling)."""
    import numpy as np

    from simfoe.costs.collectives import predict

    hw = load_hardware("b200-sxm")
    assert hw.collectives.nvlink.nccl_protocol_choice is not None
    for op in ("all_gather", "reduce_scatter", "all_reduce"):
        for n in (2, 4, 8):
            sizes = np.geomspace(2**18, 2**29, 89)
            t = [predict(hw, op, n, s / n if op == "all_gather" else s, "ring" if op == "all_reduce" else "auto")
                 for s in sizes]
            assert all(b >= a * (1 - 1e-9) for a, b in zip(t, t[1:])), (op, n)


def test_b200_held_out_rows_within_10_percent(shared_data):
    """Issue 25's bound on B200's held-out rows, 1 MiB and up, with NCCL's protocol choice: every ring collective
    on 8 and 2 GPUs (odd sizes) and 4 GPUs (never fitted; before the choice 9.8-14.2%), the alltoall on 4 and 8. The
    2-GPU alltoall (12.0%, predicted slow) is the one row set that misses it (docs/calibration-collectives.md)."""
    path = shared_data / fn.table_of("b200-sxm")
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    e = fn.errors(load_hardware("b200-sxm"), fn.load_table(shared_data, "b200-sxm"))
    for op in ("all_gather", "reduce_scatter", "all_reduce"):
        for n in (2, 4, 8):
            assert e[f"{op} {n} GPUs >=1MiB"]["mape_held_out"] <= 10, (op, n)
    for n in (4, 8):
        assert e[f"alltoall {n} GPUs >=1MiB"]["mape_held_out"] <= 10, n
