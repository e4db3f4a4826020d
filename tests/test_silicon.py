"""Real serving benchmarks (AIConfigurator silicon rows) -> serving scenarios -> `simfoe validate --silicon`."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from simfoe.calibration import silicon as si

COLS = ["id", "silicon_data_source", "backend", "backend_version", "model_path", "system", "precision", "mode", "isl",
        "osl", "gemm_quant_mode", "moe_quant_mode", "batch_size", "tp_size", "pp_size", "attention_dp_size",
        "moe_tp_size", "moe_ep_size", "decode_batch_size", "decode_num_workers", "decode_attention_dp_size",
        "silicon_ttft_ms", "silicon_tpot_ms"]


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in COLS})
    return path


def _agg(id_, **kw):
    base = dict(id=id_, silicon_data_source="src", backend="trtllm", backend_version="1.0", mode="agg",
                model_path="meta-llama/Llama-3.1-8B-Instruct", system="h100_sxm", isl=64, osl=4, batch_size=2,
                tp_size=1, pp_size=1, moe_tp_size=1, moe_ep_size=1, silicon_ttft_ms=20.0, silicon_tpot_ms=5.0)
    return {**base, **kw}


def _row(**kw) -> si.SiliconRow:
    base = dict(id="r", system="h100_sxm", model_path="Qwen/Qwen3-32B", backend="vllm", backend_version="0.12",
                mode="agg", isl=1024, osl=128, gemm_quant="", moe_quant="", batch_size=16, tp=2, pp=1, adp=1,
                moe_tp=1, moe_ep=1, ttft_ms=100.0, tpot_ms=10.0)
    return si.SiliconRow(**{**base, **kw})


# ---- loader -------------------------------------------------------------------------------------
def test_exact_duplicates_are_dropped_once(tmp_path):
    a = _agg("a")
    rows = [a, {**a, "id": "a-again", "silicon_data_source": "other file"}, _agg("b", isl=128)]
    s = si.load_rows(_write(tmp_path / "s.csv", rows))
    assert [r.id for r in s.rows] == ["a", "b"]
    assert s.dropped == {"a-again": "exact duplicate"}


def test_r1_and_v3_listing_of_one_measurement_keeps_the_fuller_row(tmp_path):
    v3 = dict(id="v3", backend="trtllm", mode="disagg", model_path="deepseek-ai/DeepSeek-V3", system="h100_sxm",
              isl=8192, osl=1024, decode_batch_size=2, decode_num_workers=3, decode_attention_dp_size=1,
              silicon_ttft_ms=13693.25, silicon_tpot_ms=14.65)
    r1 = {**v3, "id": "r1", "model_path": "deepseek-ai/DeepSeek-R1", "decode_batch_size": "", "decode_num_workers": ""}
    other = {**r1, "id": "r1-other", "silicon_tpot_ms": 15.0}  # another measurement: kept
    s = si.load_rows(_write(tmp_path / "s.csv", [r1, v3, other]))
    assert [r.id for r in s.rows] == ["v3", "r1-other"]
    assert s.dropped == {"r1": "same measurement under another name"}
    assert s.rows[0].concurrency == 2 * 1 * 3  # decode batch x decode adp x decode workers


def test_empty_attention_dp_and_pp_read_as_one(tmp_path):
    s = si.load_rows(_write(tmp_path / "s.csv", [_agg("a", batch_size=24)]))
    r = s.rows[0]
    assert (r.pp, r.adp, r.concurrency) == (1, 1, 24)


def test_missing_file_is_a_spec_error(tmp_path):
    from simfoe.errors import SpecError

    with pytest.raises(SpecError, match="--silicon"):
        si.load_rows(tmp_path / "nope.csv")


# ---- mapping ------------------------------------------------------------------------------------
def test_concurrency_is_batch_per_attention_dp_rank_times_pp_and_adp():
    assert _row(batch_size=8, adp=4).concurrency == 32
    assert _row(batch_size=16, pp=2, adp=2).concurrency == 64
    assert _row(batch_size=5).concurrency == 5


def test_dense_row_maps_to_a_tp_instance_on_its_own_gpus():
    sc = si.scenario(_row(tp=4, batch_size=16, gemm_quant="fp8", isl=2048, osl=256))
    assert (sc.hardware, sc.model) == ("h100-sxm", "qwen3-32b")
    assert sc.overrides == ("hardware.node.gpus_per_node=4", "placement.moe.attention=tp",
                            "placement.moe.attention_tp=4", "model.dtype=fp8")
    assert (sc.concurrency, sc.max_batch, sc.isl, sc.osl, sc.range_ratio) == (16, 16, 2048, 256, 0.0)
    wl = sc.workload()
    assert (wl.num_prompts, wl.warmup) == (160, 32)


def test_moe_row_sets_its_expert_parallel_group_and_inferencex_lengths():
    row = _row(model_path="Qwen/Qwen3-235B-A22B-FP8", backend="trtllm", tp=8, moe_tp=1, moe_ep=8, batch_size=64,
               gemm_quant="fp8_block", moe_quant="fp8_block", source="x; image=vllm/vllm-openai:v0.18.0")
    sc = si.scenario(row)
    assert sc.model == "qwen3-235b-a22b"
    assert "placement.moe.ep=8" in sc.overrides and "model.dtype=fp8" in sc.overrides
    assert "hardware.node.gpus_per_node=8" in sc.overrides
    assert sc.range_ratio == si.INFERENCEX_RANGE_RATIO


@pytest.mark.parametrize("source, inferencex", [
    ("source_file=2026-04-06.csv; model=Llama-3.1-70B; silicon_concurrency=8; wip=False", True),  # an export's row
    ("x; image=vllm/vllm-openai:v0.18.0", True),
    ("source_file=/Users/x/aic-auto-gap-analysis/data/h100_sxm/vllm/0.12.0/Qwen_Qwen3-32B.csv", False),
    ("source_file=/data/2026-04-06.csv.bak", False),
    # an AIConfigurator gap-analysis row naming its Dynamo image: aiperf, fixed lengths
    ("source_file=/Users/x/aic-auto-gap-analysis/data/h100_sxm/vllm/q.csv; image=nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.8.0",
     False),
])
def test_rows_of_an_inferencex_export_draw_their_lengths(source, inferencex):
    """issue 23: a row of a dated InferenceX export is replayed with the export's range ratio, image named or not,
    drawn as InferenceX's client draws them: uniform in [int(0.8 L), L] (benchmark_serving.sample_random_requests)."""
    sc = si.scenario(_row(source=source, isl=1024, osl=128))
    assert sc.range_ratio == (si.INFERENCEX_RANGE_RATIO if inferencex else 0.0)
    bounds = ((819, 1024), (102, 128)) if inferencex else ((1024, 1024), (128, 128))
    assert sc.workload().bounds() == bounds


GAP = "source_file=/Users/x/aic-auto-gap-analysis/data/h100_sxm/vllm/0.12.0/Qwen_Qwen3-32B.csv; silicon_concurrency=8"


@pytest.mark.parametrize("backend, source, budget", [
    ("vllm", GAP, 8 + 1024 + 1500),  # AIConfigurator's generator: max_batch_size + ISL + 1500
    ("vllm", "source_file=2026-04-06.csv; model=Llama-3.1-70B; silicon_concurrency=8", None),  # InferenceX: default
    ("sglang", GAP.replace("vllm", "sglang"), None),  # no generator budget for that backend
    ("trtllm", GAP.replace("vllm/0.12.0", "trtllm/1.0.0rc3"), 8 + 1024 + 1500),  # max_num_tokens, the same rule
])
def test_gap_analysis_rows_run_the_generators_token_budget(backend, source, budget):
    """issue 23: a vLLM (TensorRT-LLM) row of AIConfigurator's gap analysis runs --max-num-batched-tokens
    (max_num_tokens) = batch + ISL + 1500."""
    sc = si.scenario(_row(backend=backend, source=source, batch_size=8, isl=1024))
    assert sc.launch_budget == budget


def test_the_launch_budget_replaces_the_profiles_in_the_replay():
    row = _row(model_path="meta-llama/Llama-3.1-8B-Instruct", tp=1, batch_size=2, isl=64, osl=4, source=GAP)
    s = si.serve_row(row).summary
    assert (s["engine"], s["token_budget"]) == ("vllm", 2 + 64 + 1500)
    assert si.serve_row(replace(row, source="src")).summary["token_budget"] == 8192  # the profile's own


@pytest.mark.parametrize("backend, version, overlapped", [
    ("vllm", "0.18.0", True),  # async scheduling by default since 0.14
    ("vllm", "0.14.0rc1", True),
    ("vllm", "0.12.0", False),
    ("vllm", "", False),  # unrecorded: runs as the profile
    ("sglang", "0.5.8.post1", False),
])
def test_async_scheduling_versions_run_without_per_iteration_host_time(backend, version, overlapped):
    from simfoe.serving.engine import EngineConfig

    sc = si.scenario(_row(backend=backend, backend_version=version))
    assert sc.async_host is overlapped
    cfg = si.run_config(sc, EngineConfig(request_overhead_s=0.02, step_overhead_s=0.001, step_overhead_per_seq_s=3e-5))
    assert (cfg.request_overhead_s, cfg.step_overhead_s, cfg.step_overhead_per_seq_s) == (
        (0.02, 0.0, 0.0) if overlapped else (0.02, 0.001, 3e-5))


def test_version_tuple_by_hand():
    assert si.version_tuple("0.18.0") == (0, 18, 0) and si.version_tuple("1.3.0rc1") == (1, 3, 0)
    assert si.version_tuple("") is None and si.version_tuple("main") is None


def test_blackwell_rows_map_to_the_blackwell_profiles():
    """issue 25: b200_sxm and gb200 rows are replayed on b200-sxm and gb200-nvl72 (one-tray instances on GB200)."""
    assert si.scenario(replace(_row(), system="b200_sxm")).hardware == "b200-sxm"
    assert si.scenario(replace(_row(), system="gb200")).hardware == "gb200-nvl72"


@pytest.mark.parametrize("change, reason", [
    (dict(mode="disagg"), "disagg: prefill columns missing"),
    (dict(model_path="someone/unknown-model"), "model preset missing"),
    (dict(system="mi300x"), "system mi300x: no hardware profile"),
    (dict(pp=2), "pp_size > 1: pipeline parallelism not modelled"),
    (dict(gemm_quant="w4a8_awq"), "quant w4a8_awq: not mapped yet (mapped: fp8, fp8_block, nvfp4, mxfp4, none)"),
    (dict(gemm_quant="nvfp4"), "quant nvfp4: the model preset has no fp4 checkpoint (4-bit expert weights)"),
    (dict(model_path="openai/gpt-oss-120b", tp=4, moe_tp=2, moe_ep=1),
     "moe_tp x moe_ep != tp x attention_dp: inconsistent parallelism"),
    (dict(tp=8, adp=2), "instance larger than one node: not mapped yet"),
    (dict(id="x_c32_tp4_ep4_1322", model_path="MiniMaxAI/MiniMax-M2.5", tp=4, adp=4, moe_ep=16),
     "suspect encoding: id names tp4_ep4 but columns say attention_dp 4, moe_ep 16 (data README, known problems)"),
])
def test_rows_without_a_scenario_say_why(change, reason):
    got = si.scenario(replace(_row(), **change))
    assert got == si.NotCovered(reason)
    assert si.predict_row(replace(_row(), **change)).reason == reason


def test_hand_picked_h100_rows(shared_data):
    s = si.load_rows(shared_data / si.H100_FILE)
    by_id = {r.id: r for r in s.rows}
    # MiniMax-M2.5 at 32 clients, written as 8 per attention-DP rank x 4 ranks (silicon_concurrency=32)
    r = by_id["2026_04_06_minimax_m2_5_h100_sxm_vllm_fp8_agg_8192x1024_c32_tp4_ep4_1322"]
    assert (r.batch_size, r.pp, r.adp, r.concurrency) == (8, 1, 4, 32)
    assert isinstance(si.scenario(r), si.NotCovered)
    r = by_id["2026_03_25_minimax_m2_5_h100_sxm_vllm_fp8_agg_1024x8192_c64_tp4_0_ep4_0_217"]
    sc = si.scenario(r)
    assert (sc.concurrency, sc.model, sc.isl, sc.osl) == (64, "minimax-m2.5", 1024, 8192)
    assert "placement.moe.ep=4" in sc.overrides and "hardware.node.gpus_per_node=4" in sc.overrides
    assert sc.range_ratio == 0.8  # an InferenceX-style run (its source names the image)
    assert len(s.rows) + len(s.dropped) == 917


# ---- report and CLI -----------------------------------------------------------------------------
def test_report_errors_by_hand():
    rows = [_row(id="a", ttft_ms=100.0, tpot_ms=10.0), _row(id="b", ttft_ms=200.0, tpot_ms=20.0), _row(id="c")]
    preds = [si.Prediction(rows[0], 110.0, 10.0), si.Prediction(rows[1], 100.0, 30.0),
             si.Prediction(rows[2], reason="model preset missing")]
    r = si.report(preds, {"z": "exact duplicate"})
    assert (r["rows"], r["covered"]) == (3, 2) and r["coverage"] == pytest.approx(2 / 3)
    assert r["ttft_mape"] == pytest.approx(30.0) and r["ttft_mdape"] == pytest.approx(30.0)  # 10% and 50%
    assert r["tpot_mape"] == pytest.approx(25.0)  # 0% and 50%
    assert r["ttft_within_25pct"] == 0.5 and r["tpot_within_25pct"] == 0.5
    assert r["not_covered"] == {"model preset missing": 1} and r["duplicates"] == {"exact duplicate": 1}
    assert set(r["by_group"]) == {"h100_sxm/Qwen/Qwen3-32B/vllm/agg"}


def test_validate_silicon_json_and_cases(tmp_path, capsys):
    from simfoe.cli import main

    path = _write(tmp_path / "s.csv", [_agg("a"), _agg("b", batch_size=1, osl=3),
                                       _agg("c", model_path="someone/unknown-model")])
    out = tmp_path / "cases.csv"
    assert main(["validate", "--silicon", str(path), "--cases-out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert list(r) == ["silicon", "run"]  # the result and its run record (tests/test_provenance.py)
    assert r["run"]["command"].startswith("simfoe validate --silicon ") and r["run"]["options"]["silicon"] == str(path)
    s = r["silicon"]
    for k in ("rows", "covered", "coverage", "ttft_mape", "tpot_mape", "ttft_mdape", "tpot_mdape", "by_group",
              "not_covered"):
        assert k in s
    assert (s["rows"], s["covered"], s["not_covered"]) == (3, 2, {"model preset missing": 1})
    assert set(s["by_group"]) == {"h100_sxm/meta-llama/Llama-3.1-8B-Instruct/trtllm/agg",
                                  "h100_sxm/someone/unknown-model/trtllm/agg"}
    with open(out) as f:
        got = list(csv.DictReader(f))
    assert [g["id"] for g in got] == ["a", "b", "c"]
    for c in ("id", "predicted_ttft_ms", "predicted_tpot_ms", "silicon_ttft_ms", "silicon_tpot_ms"):
        assert c in got[0]
    assert float(got[0]["predicted_tpot_ms"]) > 0 and got[2]["predicted_ttft_ms"] == ""


def test_tolerance_bounds_from_above_and_below_by_hand():
    from simfoe.calibration.regression import judge

    s = {"ttft_mdape": 40.0, "coverage": 0.8, "tpot_mape": None}
    assert judge(s, None) == (None, True)
    assert judge(s, {"ttft_mdape": 40.0, "coverage_min": 0.8, "reason": "x"}) == (
        {"ttft_mdape": 40.0, "coverage_min": 0.8}, True)  # bounds are inclusive; the reason is no bound
    assert not judge(s, {"ttft_mdape": 39.9})[1]
    assert not judge(s, {"coverage_min": 0.81})[1]
    assert not judge(s, {"tpot_mape": 100.0})[1]  # a metric without a value fails its bound
    assert not judge(s, {"tpot_mdape": 100.0})[1]  # so does one the summary lacks


def test_committed_h100_bounds_name_summary_metrics():
    """A misspelt bound in validation/tolerances.yaml would fail every CI run; say so without the data."""
    from simfoe.calibration.regression import load_tolerances

    bounds = load_tolerances()["sources"][si.tolerance_source(si.H100_FILE)]
    summary = si.report([si.Prediction(_row(), 100.0, 10.0)])
    assert {k for k in bounds if k != "reason"} and bounds["reason"]
    for k in bounds:
        assert k == "reason" or (k[:-4] if k.endswith("_min") else k) in summary, k


@pytest.mark.parametrize("bounds, code", [({"ttft_mape": 1e9, "coverage_min": 0.5}, 0),
                                          ({"ttft_mape": 1e9, "coverage_min": 0.9}, 1),
                                          ({"tpot_mdape": 1e-6}, 1)])
def test_validate_silicon_judges_its_tolerance(tmp_path, capsys, bounds, code):
    import yaml

    from simfoe.cli import main

    path = _write(tmp_path / "mini.csv", [_agg("a"), _agg("b", batch_size=1, osl=3),
                                          _agg("c", model_path="someone/unknown-model")])  # coverage 2/3
    tol = tmp_path / "tol.yaml"
    tol.write_text(yaml.safe_dump({"sources": {"silicon:mini": {**bounds, "reason": "test"}}}))
    assert main(["validate", "--silicon", str(path), "--tolerances", str(tol), "--jobs", "1", "--json"]) == code
    s = json.loads(capsys.readouterr().out)["silicon"]
    assert (s["source"], s["tolerance"], s["ok"]) == ("silicon:mini", bounds, code == 0)


def test_validate_silicon_bad_input(refused, tmp_path):
    refused(["validate", "--silicon", tmp_path / "missing.csv", "--json"], "--silicon", "silicon CSV")
    refused(["validate", "--silicon", "--set", "hardware.network.nic_bandwidth=1e9"], "--set", "omitted with --silicon")
    refused(["validate", "--silicon", _write(tmp_path / "s.csv", [_agg("a")]), "--jobs", "0"], "--jobs", ">= 1")
    refused(["validate", "--jobs", "2", "--json"], "--jobs", "omitted without --silicon")


def test_workers_give_the_same_predictions_in_row_order(tmp_path):
    rows = si.load_rows(_write(tmp_path / "s.csv", [
        _agg("a"), _agg("b", model_path="Qwen/Qwen3-32B", tp_size=2, batch_size=1, osl=3),
        _agg("c", mode="disagg"), _agg("d", batch_size=3, isl=32)])).rows
    one = si.replay(rows)
    assert [p.row.id for p in one] == ["a", "b", "c", "d"]
    assert si.replay(rows, workers=2) == one


def test_default_path_absent_is_refused(refused, monkeypatch):
    monkeypatch.setattr(si, "default_path", lambda: None)
    refused(["validate", "--silicon", "--json"], "--silicon", "is absent")
