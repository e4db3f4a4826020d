"""Sweep machinery with a tiny deterministic scenario kind: expansion, validation, run ids,
store (append/compact/dedup/resume), local executors, CLI errors and dry-run."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from simfoe.cli import main
from simfoe.errors import SpecError
from simfoe.paths import REPO_ROOT
from simfoe.sweep.runner import run_sweep
from simfoe.sweep.scenarios import ScenarioKind, register
from simfoe.sweep.spec import format_override, parse_sweep_spec, run_id
from simfoe.sweep.store import VOLATILE, ResultStore


def toy(a: int, b: float = 1.0, name: str = "x", seed: int = 0, overrides=()):
    """Deterministic test kind: fails for a < 0; echoes overrides."""
    if a < 0:
        raise ValueError("a must be >= 0")
    return {"y": a * b + seed, "nested": {"sq": a * a, "deep": {"name": name}}, "n_over": len(overrides)}


register(ScenarioKind("toy", toy, override_roots=("hardware", "model", "placement")))


def spec(**kw):
    d = {"kind": "toy", "base": {"b": 2.0}, "grid": {"a": [0, 1, 2], "name": ["p", "q"]}}
    d.update(kw)
    return parse_sweep_spec(d)


def stable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in VOLATILE if c in df]).sort_values("index").reset_index(drop=True)


# ---- expansion and validation -----------------------------------------------------------------

def test_grid_zip_samples_expand_to_product():
    s = spec(zip={"seed": [0, 1, 2], "hardware.x": [1, 2, 3]},
             samples={"n": 4, "seed": 7, "space": {"b": {"uniform": [0.5, 1.5]}}})
    sc = s.scenarios()
    assert s.count() == 3 * 2 * 3 * 4 == len(sc)
    assert len({x.run_id for x in sc}) == len(sc)
    assert all(0.5 <= x.options["b"] <= 1.5 for x in sc)
    assert all(set(x.overrides) == {"hardware.x"} for x in sc)
    # defaults of the scenario function are part of the inputs
    assert parse_sweep_spec({"kind": "toy", "grid": {"a": [1]}}).scenarios()[0].options == \
        {"a": 1, "b": 1.0, "name": "x", "seed": 0}


def test_samples_are_seeded():
    def draw(seed):
        return [x.options["a"] for x in parse_sweep_spec(
            {"kind": "toy", "samples": {"n": 5, "seed": seed, "space": {"a": {"loguniform": [1, 1000], "int": True}}}}
        ).scenarios()]
    assert draw(3) == draw(3)
    assert all(isinstance(v, int) and 1 <= v <= 1000 for v in draw(3))


@pytest.mark.parametrize("bad, field, word", [
    ({"kind": "toy", "grid": {"a": [1]}, "gird": {}}, "sweep spec", "gird"),
    ({"kind": "nope", "grid": {"a": [1]}}, "kind", "nope"),
    ({"kind": "toy", "grid": {}}, "grid", "non-empty"),
    ({"kind": "toy", "grid": {"a": []}}, "grid.a", "non-empty"),
    ({"kind": "toy", "grid": {"a": 3}}, "grid.a", "list"),
    ({"kind": "toy", "grid": {"aa": [1]}}, "grid", "aa"),
    ({"kind": "toy", "grid": {"a": [1]}, "zip": {"b": [1, 2], "seed": [1]}}, "zip", "equal length"),
    ({"kind": "toy", "grid": {"a": [1]}, "zip": {"a": [1]}}, "zip", "already varied"),
    ({"kind": "toy", "grid": {"a": [1], "foo.bar": [1]}}, "grid", "foo.bar"),
    ({"kind": "toy", "samples": {"n": 0, "space": {"a": [1]}}}, "samples.n", "positive"),
    ({"kind": "toy", "samples": {"n": 2, "space": {"b": {"uniform": [2, 1]}}}}, "samples.space.b", "lo < hi"),
    ({"kind": "toy", "grid": {"b": [1]}}, "base", "a"),  # required option missing
    ({"kind": "toy", "grid": {"a": [1.0, float("inf")]}}, "grid.a", "finite"),
    ({"kind": "toy", "base": {"b": float("nan")}, "grid": {"a": [1]}}, "base.b", "finite"),
    ({"kind": "toy", "samples": {"n": 2, "space": {"a": {"choice": [1.0, float("inf")]}}}}, "samples.space.a", "finite"),
    ({"kind": "toy", "samples": {"n": 2, "space": {"b": {"uniform": [1.0, float("inf")]}}}}, "samples.space.b", "finite"),
])
def test_bad_specs_name_the_key(bad, field, word):
    with pytest.raises(SpecError) as e:
        parse_sweep_spec(bad).scenarios()
    assert e.value.field == field
    assert word in str(e.value)


# ---- run ids and overrides ------------------------------------------------------------------------

values = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                   st.booleans(), st.text(alphabet="abcxyz_", min_size=1, max_size=5))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "name", "seed"]), values, min_size=1),
       st.dictionaries(st.sampled_from(["hardware.p", "model.q"]), values))
def test_run_id_ignores_key_order(opts, over):
    rev = dict(reversed(list(opts.items())))
    assert run_id("toy", opts, over) == run_id("toy", rev, dict(reversed(list(over.items()))))
    assert len(run_id("toy", opts, over)) == 16


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=False, allow_infinity=False), st.booleans()))
def test_override_text_round_trips(v):
    from simfoe.specs.io import parse_value

    text = format_override("hardware.x", v).split("=", 1)[1]
    back = parse_value(text)
    assert back == v and type(back) is type(v) or (isinstance(v, float) and back == v)


# ---- store ----------------------------------------------------------------------------------------

def test_store_dedups_and_compacts(tmp_path):
    st_ = ResultStore(tmp_path)
    st_.append([{"run_id": "r1", "index": 0, "kind": "toy", "status": "error", "error": "boom", "finished_at": 1.0}])
    st_.append([{"run_id": "r1", "index": 0, "kind": "toy", "status": "ok", "error": None, "y": 1.0, "finished_at": 2.0},
                {"run_id": "r2", "index": 1, "kind": "toy", "status": "ok", "error": None, "y": 2.0, "finished_at": 2.0}])
    assert st_.finished() == {"r1": "ok", "r2": "ok"}
    df = st_.compact()
    assert list(df["run_id"]) == ["r1", "r2"] and list(df["status"]) == ["ok", "ok"]
    assert not st_.part_files() and st_.results.is_file()
    # a kill between writing results.parquet and deleting parts: readers still see one row per run_id
    st_.append([{"run_id": "r2", "index": 1, "kind": "toy", "status": "ok", "error": None, "y": 2.0, "finished_at": 3.0}])
    assert len(st_.read()) == 2
    assert not list(tmp_path.glob("parts/.*tmp"))


def test_mixed_type_columns_are_written(tmp_path):
    st_ = ResultStore(tmp_path)
    st_.append([{"run_id": "a", "index": 0, "kind": "t", "status": "ok", "error": None, "v": 1},
                {"run_id": "b", "index": 1, "kind": "t", "status": "ok", "error": None, "v": "auto"}])
    assert list(st_.compact()["v"]) == ["1", "auto"]


# ---- running --------------------------------------------------------------------------------------

def test_run_records_failures_and_resume_skips(tmp_path):
    s = spec(grid={"a": [-1, 0, 1, 2], "name": ["p", "q"]}, base={"b": 2.0, "set": ["model.z=3"]})
    r = run_sweep(s, tmp_path / "o", workers=1, progress=False)
    assert (r["ok"], r["failed"], r["rows"]) == (6, 2, 8)
    df = pd.read_parquet(tmp_path / "o" / "results.parquet")
    bad = df[df["status"] == "error"]
    assert len(bad) == 2 and bad["error"].str.contains("a must be >= 0").all()
    ok = df[df["status"] == "ok"]
    assert (ok["y"] == ok["a"] * 2.0).all() and (ok["nested.deep.name"] == ok["name"]).all()
    assert (ok["n_over"] == 1).all() and (df["model.z"] == 3).all()
    assert df["simfoe_version"].notna().all() and df["wall_s"].notna().all()
    # resume: nothing to run, no duplicates; without --resume the same spec is up to date (the failures
    # stay stored) and another spec's folder is refused
    r2 = run_sweep(s, tmp_path / "o", workers=1, resume=True, progress=False)
    assert r2["ran"] == 0 and r2["rows"] == 8
    again = run_sweep(s, tmp_path / "o", workers=1, progress=False)
    assert again["up_to_date"] and (again["ran"], again["rows"], again["stored_failed"]) == (0, 8, 2)
    with pytest.raises(SpecError) as e:
        run_sweep(spec(grid={"a": [5]}), tmp_path / "o", workers=1, progress=False)
    assert e.value.field == "--out"
    # retry failed: reruns only the two failures, still one row per scenario
    r3 = run_sweep(s, tmp_path / "o", workers=1, resume=True, retry_failed=True, progress=False)
    assert r3["ran"] == 2 and r3["rows"] == 8


def test_pool_matches_in_process(tmp_path):
    s = spec(grid={"a": list(range(12)), "seed": [0, 5]})
    a = run_sweep(s, tmp_path / "a", workers=1, progress=False, plots=False)
    b = run_sweep(s, tmp_path / "b", workers=2, chunk_size=3, progress=False, plots=False)
    assert a["ok"] == b["ok"] == 24
    pd.testing.assert_frame_equal(stable(pd.read_parquet(tmp_path / "a" / "results.parquet")),
                                  stable(pd.read_parquet(tmp_path / "b" / "results.parquet")))


def test_metrics_filter(tmp_path):
    s = spec(metrics=["nested.sq"])
    run_sweep(s, tmp_path, workers=1, progress=False, plots=False)
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert "nested.sq" in df and "y" not in df and "nested.deep.name" not in df


# ---- CLI ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, word", [
    ("kind: forward\nbase: {model: mixtral-8x7b}\ngrid: {batchh: [1, 2]}\n", "batchh"),
    ("kind: forward\ngrid: {}\n", "grid"),
    ("kind: forward\nbase: {model: mixtral-8x7b, hardware: h100-sxm, phase: decode, seq_len: 128}\n"
     "grid: {arch: [moe, xoe], batch: [1]}\n", "xoe"),
    ("kind: forward\nbase: {model: no-such-model, hardware: h100-sxm, phase: decode, seq_len: 128}\n"
     "grid: {arch: [moe], batch: [1]}\n", "no-such-model"),
    ("kind: forward\nbase: {model: mixtral-8x7b, hardware: h100-sxm, phase: decode, seq_len: 128}\n"
     "grid: {arch: [moe], batch: [1], hardware.network.nic_bandwith: [1e9]}\n", "nic_bandwith"),
    ("kind: forward\nbogus: 1\ngrid: {batch: [1]}\n", "bogus"),
])
def test_cli_bad_spec_exit_2_before_running(tmp_path, capsys, text, word):
    pytest.importorskip("simfoe.api")
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    assert main(["sweep", str(f), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and word in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_cli_dry_run_counts_and_estimates(tmp_path, capsys):
    pytest.importorskip("simfoe.api")
    assert main(["sweep", "--dry-run", "--probes", "1", "--json", "--out", str(tmp_path / "o")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["dry_run"] and r["scenarios"] == r["to_run"] > 0
    assert r["estimate_s"] > 0 and math.isfinite(r["estimate_s"])
    assert not (tmp_path / "o").exists()


def test_cli_plot_needs_results(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "results.parquet" in capsys.readouterr().err


EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.name)
def test_example_specs_validate(spec, tmp_path, capsys):
    """Every shipped example passes the sweep's validation (keys, values, --set paths, presets)."""
    assert main(["sweep", str(spec), "--dry-run", "--probes", "0", "--json", "--out", str(tmp_path / "o")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["scenarios"] > 0


@pytest.mark.parametrize("base, field", [
    ({"trace": "no/such/trace.csv"}, "trace"),
    ({"trace": "longbench", "seed": -1}, "seed"),
    ({"trace": "longbench", "routing": "trace:no/such/routing.csv"}, "routing"),
])
def test_api_sweep_checks_scenario_files_before_running(tmp_path, base, field):
    """run_sweep (not only the CLI) rejects a missing serve trace, a negative seed or a bad routing
    trace before any scenario runs, and writes nothing."""
    spec = parse_sweep_spec({"kind": "serve", "base": {"model": "olmoe-1b-7b", "hardware": "h100-sxm",
                                                       "arch": "moe", "rate": 1.0, "duration": 2.0, **base},
                             "grid": {"nodes": [1]}})
    with pytest.raises(SpecError) as e:
        run_sweep(spec, tmp_path / "out", progress=False)
    assert e.value.field == field
    assert not (tmp_path / "out").exists()
