"""Outputs say what was simulated: the resolved layout (``layout``) and the provenance record (``run``:
version, command line, specs, overrides, seed, routing) of forward and serve, by hand-computed cases
and properties of the layout arithmetic; the same record in pipeline, recommend (JSON and the HTML
report's "What ran"), validate and kernel output; a sweep's sweep.json and summary.md name version,
command, models, hardware and layouts; results.csv beside results.parquet; running the same sweep again."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import simfoe
from simfoe.cli import main
from simfoe.errors import SpecError
from simfoe.provenance import layout_info
from simfoe.specs.io import build_placement, load_model
from simfoe.specs.placement import resolve_foe, resolve_moe
from simfoe.sweep.runner import run_sweep
from simfoe.sweep.scenarios import ScenarioKind, register
from simfoe.sweep.spec import parse_sweep_spec
from simfoe.sweep.store import ResultStore, load_results

FWD = ["forward", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--phase", "decode", "--batch", "2",
       "--seq-len", "64"]


def cli_json(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr().out
    assert code == 0 and out.count("\n") == 1
    return json.loads(out)


def layout(model: str, arch: str, nodes: int, *overrides: str, gpn: int = 8):
    m = load_model(model, list(overrides))
    p = build_placement(arch, nodes, list(overrides))
    return layout_info((resolve_foe if arch == "foe" else resolve_moe)(m, gpn, p), nodes)


def test_hand_computed_layouts():
    # mixtral-8x7b has 8 KV heads -> 8 FoE clusters; 16 GPUs -> 2 GPUs per cluster
    foe = layout("mixtral-8x7b", "foe", 2)
    assert (foe.clusters, foe.gpus_per_cluster, foe.gpus) == (8, 2, 16)
    assert foe.label() == "FoE: 8 clusters x 2 GPUs per cluster; 2 nodes x 8 GPUs"
    # deepseek-v3: 256 experts over 16 GPUs; attention TP inside the node (8), DP across the 2 nodes
    moe = layout("deepseek-v3", "moe", 2)
    assert (moe.ep, moe.attention_tp, moe.attention_dp) == (16, 8, 2)
    assert moe.label() == "MoE: EP 16, attention TP 8 x DP 2; 2 nodes x 8 GPUs"
    dp = layout("deepseek-v3", "moe", 4, "placement.moe.attention=dp", "placement.moe.redundant_experts=32")
    assert (dp.ep, dp.attention_tp, dp.attention_dp, dp.redundant_experts) == (32, 1, 32, 32)
    assert "+32 redundant experts" in dp.label()
    dense = layout("llama-3-70b", "moe", 1)
    assert dense.ep is None and dense.label().startswith("dense: attention TP 8 x DP 1")
    assert "ep" not in dense.to_dict()


@settings(max_examples=40, deadline=None)
@given(model=st.sampled_from(["mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3", "olmoe-1b-7b", "gpt-oss-120b"]),
       arch=st.sampled_from(["moe", "foe"]), nodes=st.integers(1, 4), attention=st.sampled_from(["tp", "dp"]),
       gpn=st.sampled_from([4, 8]))
def test_layout_counts_add_up(model, arch, nodes, attention, gpn):
    try:
        info = layout(model, arch, nodes, f"placement.moe.attention={attention}", gpn=gpn)
    except SpecError:
        return  # a layout the placement refuses is not reported
    assert info.gpus == nodes * gpn == info.gpus_per_node * info.nodes
    if arch == "moe":
        assert info.attention_tp * info.attention_dp == info.gpus
        assert info.gpus % info.ep == 0
    else:
        assert info.clusters * info.gpus_per_cluster == info.gpus * info.clusters_per_gpu
        assert info.gpus_per_cluster <= gpn  # a cluster never straddles nodes


def test_forward_json_carries_layout_and_run(capsys):
    argv = [*FWD, "--nodes", "2", "--arch", "foe", "--set", "hardware.network.nic_bandwidth=100e9", "--seed", "3",
            "--json"]
    r = cli_json(capsys, *argv)
    # the contract's keys are still there; layout and run are added
    assert {"latency_s", "gpus", "breakdown_s", "comm_bytes", "local_activation_rate"} <= set(r)
    assert r["layout"]["label"] == "FoE: 8 clusters x 2 GPUs per cluster; 2 nodes x 8 GPUs"
    run = r["run"]
    assert run["simfoe_version"] == simfoe.__version__
    assert run["command"] == "simfoe " + " ".join(argv)
    assert (run["model"], run["hardware"], run["seed"], run["routing"]) == ("mixtral-8x7b", "h100-sxm", 3, "uniform")
    assert run["overrides"] == ["hardware.network.nic_bandwidth=100e9"]
    assert run["options"]["batch"] == 2 and run["options"]["phase"] == "decode"
    # the specs as resolved: the override applied, the placement as it ran
    assert run["specs"]["hardware"]["network"]["nic_bandwidth"] == 100e9
    assert run["specs"]["placement"]["arch"] == "foe" and run["specs"]["placement"]["nodes"] == 2
    assert "provenance" not in run["specs"]["hardware"]


def test_forward_layout_follows_set_placement(capsys):
    r = cli_json(capsys, *FWD, "--set", "placement.nodes=2", "--set", "placement.moe.attention=dp", "--json")
    assert (r["layout"]["nodes"], r["layout"]["attention_dp"], r["gpus"]) == (2, 16, 16)
    assert r["run"]["options"]["nodes"] is None  # as given; the resolved value is in specs and layout
    assert r["run"]["specs"]["placement"]["nodes"] == 2


def test_forward_text_names_layout_and_run(capsys):
    assert main([*FWD, "--set", "model.dtype=fp8"]) == 0
    out = capsys.readouterr().out
    assert "\nlayout: MoE: EP 8, attention TP 8 x DP 1; 1 node x 8 GPUs\n" in out
    assert f"run: mixtral-8x7b on h100-sxm, routing uniform, seed 0; --set model.dtype=fp8; simfoe {simfoe.__version__}" in out


def test_serve_summary_and_files_carry_layout_and_run(fake_forward, capsys, tmp_path):
    argv = ["serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe", "--trace", "longbench",
            "--rate", "2", "--duration", "10", "--out", tmp_path / "o", "--json"]
    r = cli_json(capsys, *argv)
    assert r["layout"]["label"] == "MoE: EP 8, attention TP 8 x DP 1; 1 node x 8 GPUs"
    assert r["run"]["command"].startswith("simfoe serve --model mixtral-8x7b") and r["run"]["seed"] == 0
    assert r["run"]["options"]["rate"] == 2
    stored = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert stored["run"] == r["run"] and stored["layout"] == r["layout"]
    main(argv[:-3])  # the text summary
    assert "\nlayout: MoE: EP 8" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["moe", "foe"])
def test_api_forward_layout_matches_gpus(arch):
    from simfoe.api import forward

    r = forward("olmoe-1b-7b", "h100-sxm", nodes=1, arch=arch, phase="decode", batch=4, seq_len=64)
    assert r["layout"]["gpus"] == r["gpus"] and r["layout"]["arch"] == arch


# ---- sweeps: what ran, CSV, running the same sweep again ----------------------------------------

def _triple(a: int, seed: int = 0, overrides=()):
    """Tiny sweep kind for these tests: y = 3a."""
    return {"y": 3 * a}


register(ScenarioKind("prov_triple", _triple))
TRIPLE = {"kind": "prov_triple", "grid": {"a": [0, 1, 2, 3]}}


def _run(spec: dict, out, **kw):
    return run_sweep(parse_sweep_spec(spec), out, workers=1, progress=False, plots=False, **kw)


def test_forward_sweep_records_version_command_and_layouts(tmp_path):
    spec = {"kind": "forward", "name": "tiny", "metrics": ["latency_s"],
            "base": {"model": "olmoe-1b-7b", "hardware": "h100-sxm", "phase": "decode", "batch": 2, "seq_len": 64},
            "grid": {"arch": ["moe", "foe"]}}
    r = run_sweep(parse_sweep_spec(spec), tmp_path, workers=1, progress=False, argv=["simfoe", "sweep", "s.yaml"])
    meta = json.loads((tmp_path / "sweep.json").read_text())
    assert (meta["simfoe_version"], meta["command"]) == (simfoe.__version__, "simfoe sweep s.yaml")
    assert r["command"] == "simfoe sweep s.yaml"
    df = load_results(tmp_path)
    # layout columns are kept whatever the metrics filter says: they describe the scenario
    assert set(df["layout.label"]) == {"MoE: EP 8, attention TP 8 x DP 1; 1 node x 8 GPUs",
                                       "FoE: 16 clusters x 2 per GPU; 1 node x 8 GPUs"}
    md = (tmp_path / "summary.md").read_text()
    what = md[md.index("## What ran"):]
    for text in ("- model: `olmoe-1b-7b`", "- hardware: `h100-sxm`", "`FoE: 16 clusters x 2 per GPU; 1 node x 8 GPUs` (1 scenarios)",
                 f"- simfoe {simfoe.__version__}", "- command: `simfoe sweep s.yaml`"):
        assert text in what, text


def test_same_sweep_again_is_up_to_date_and_writes_nothing(tmp_path, capsys):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("kind: prov_triple\ngrid: {a: [0, 1, 2, 3]}\n")
    out = tmp_path / "o"
    argv = ["sweep", str(spec_file), "--out", str(out), "--workers", "1", "--no-progress", "--no-plots"]
    assert main(argv) == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(argv) == 0
    assert "up to date: 4 of 4 scenarios already stored" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["up_to_date"], r["ran"], r["rows"], r["already_done"]) == (True, 0, 4, 4)


def test_same_sweep_again_continues_a_partial_folder(tmp_path):
    _run(TRIPLE, tmp_path)
    store = ResultStore(tmp_path)
    kept = store.read().iloc[:2]
    store.clear()
    store.append(kept.to_dict("records"))  # as if the first run had been killed after two scenarios
    r = _run(TRIPLE, tmp_path)
    assert (r["ran"], r["already_done"], r["rows"], r["up_to_date"]) == (2, 2, 4, False)
    assert sorted(load_results(tmp_path)["y"]) == [0, 3, 6, 9]


def test_another_spec_into_the_same_folder_is_refused(tmp_path):
    _run(TRIPLE, tmp_path)
    with pytest.raises(SpecError) as e:
        _run({"kind": "prov_triple", "grid": {"a": [0, 1, 2, 3, 4]}}, tmp_path)
    assert e.value.field == "--out" and "--resume" in str(e.value)


def test_csv_beside_parquet_kept_in_step(tmp_path, capsys):
    r = _run(TRIPLE, tmp_path, csv=True)
    csv = tmp_path / "results.csv"
    assert r["csv"] == str(csv)
    pd.testing.assert_frame_equal(pd.read_csv(csv)[["run_id", "a", "y"]],
                                  pd.read_parquet(tmp_path / "results.parquet")[["run_id", "a", "y"]])
    # a later run into the folder (no --csv) rewrites it with the table
    r = _run({"kind": "prov_triple", "grid": {"a": [0, 1, 2, 3, 4, 5]}}, tmp_path, resume=True)
    assert r["ran"] == 2 and len(pd.read_csv(csv)) == 6
    # --overwrite without --csv starts over without it
    _run(TRIPLE, tmp_path, overwrite=True)
    assert not csv.exists()


def test_pipeline_json_carries_run(capsys):
    argv = ["pipeline", "--spec", "factool", "--mode", "stream", "--rate", "5", "--duration", "5",
            "--set", "stages.bm25.instances=2", "--json"]
    r = cli_json(capsys, *argv)
    run = r["run"]
    assert run["command"] == "simfoe " + " ".join(argv) and run["simfoe_version"] == simfoe.__version__
    assert (run["pipeline"], run["model"], run["overrides"]) == ("factool", None, ["stages.bm25.instances=2"])
    assert run["routing"] == "hash-all"  # the preset's routing, as it ran (--routing not given)
    bm25 = next(s for s in run["specs"]["pipeline"]["stages"] if s["name"] == "bm25")
    assert bm25["instances"] == 2  # the override applied


# ---- recommend, validate, kernel: the same run record -------------------------------------------

def test_recommend_json_summary_and_report_carry_run(capsys, tmp_path):
    html = tmp_path / "r.html"
    argv = ["recommend", "--model", "olmoe-1b-7b", "--hardware", "h100-sxm", "--trace", "longbench:lcc",
            "--slo-ttft-p90", "0.5", "--requests", "40", "--bisect-steps", "1", "--no-sensitivity",
            "--set", "hardware.network.nic_bandwidth=100e9", "--out", html, "--json"]
    r = cli_json(capsys, *argv)
    run = r["run"]
    assert run["command"] == "simfoe " + " ".join(map(str, argv)) and run["simfoe_version"] == simfoe.__version__
    assert (run["model"], run["hardware"], run["seed"], run["routing"]) == ("olmoe-1b-7b", "h100-sxm", 0, "uniform")
    assert run["overrides"] == ["hardware.network.nic_bandwidth=100e9"] and run["options"]["requests"] == 40
    # each searched GPU type's spec as resolved, the override applied; the model spec
    assert run["specs"]["hardware"]["h100-sxm"]["network"]["nic_bandwidth"] == 100e9
    assert run["specs"]["model"]["name"] == "olmoe-1b-7b"
    assert json.loads(html.with_suffix(".json").read_text())["run"] == run
    page = html.read_text()
    block = page[page.index("<h2>What ran</h2>"):page.index("<h2>Caveats</h2>")]
    assert f"simfoe {simfoe.__version__}" in block and "simfoe recommend --model olmoe-1b-7b" in block


def test_validate_json_carries_run(monkeypatch, tmp_path, capsys):
    import simfoe.paths

    monkeypatch.setattr(simfoe.paths, "shared_data_dir", lambda: None)  # the stored sets only: quick
    monkeypatch.setenv("SIMFOE_SHARED_DATA", str(tmp_path / "nowhere"))
    argv = ["validate", "--no-testbed", "--set", "hardware.network.nic_bandwidth=100e9", "--json"]
    assert main(argv) in (0, 1)
    r = json.loads(capsys.readouterr().out)
    assert {"cases", "mape", "by_source", "failed", "missing"} <= set(r)  # the contract's keys stay
    run = r["run"]
    assert run["command"] == "simfoe " + " ".join(argv) and run["simfoe_version"] == simfoe.__version__
    assert run["overrides"] == ["hardware.network.nic_bandwidth=100e9"] and run["options"]["no_testbed"] is True
    assert run["specs"] == {} and run["model"] is None  # the profiles judged are named per source


@pytest.mark.parametrize("extra", [
    ["--op", "gemm", "--m", "1", "--n", "8192", "--k", "8192"],
    ["--op", "all_reduce", "--gpus", "8", "--bytes", "1e6"],
])
def test_kernel_json_carries_run(capsys, extra):
    argv = ["kernel", "--hardware", "h100-sxm", *extra, "--set", "hardware.gpu.peak_flops.bf16=500e12", "--json"]
    r = cli_json(capsys, *argv)
    assert r["latency_s"] > 0
    run = r["run"]
    assert run["command"] == "simfoe " + " ".join(argv) and run["simfoe_version"] == simfoe.__version__
    assert (run["hardware"], run["model"], run["options"]["op"]) == ("h100-sxm", None, extra[1])
    assert run["specs"]["hardware"]["h100-sxm"]["gpu"]["peak_flops"]["bf16"] == 500e12  # as resolved


def test_kernel_shapes_json_carries_run(capsys, tmp_path):
    shapes = tmp_path / "s.csv"
    shapes.write_text("op,m,n,k\ngemm,16,4096,4096\n")
    r = cli_json(capsys, "kernel", "--hardware", "a100-sxm", "--shapes", shapes, "--json")
    assert len(r["results"]) == 1 and r["run"]["options"]["shapes"] == str(shapes)
    assert list(r["run"]["specs"]["hardware"]) == ["a100-sxm"]
