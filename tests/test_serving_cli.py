"""`simfoe serve` and the API around it: JSON contract, errors, parquet output, surrogate accuracy."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import simfoe.serving.api as api
from simfoe.cli import main
from simfoe.forward.work import Work
from simfoe.serving import InterpCost, LinearStep


def run_cli(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_serve_json_contract_and_out(fake_forward, capsys, tmp_path):
    code, out, err = run_cli(capsys, "serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--nodes", "2",
                             "--arch", "foe", "--trace", "longbench", "--rate", "2", "--duration", "30",
                             "--slo-ttft", "1", "--slo-tbt", "0.05", "--out", str(tmp_path), "--json")
    assert code == 0, err
    r = json.loads(out)
    assert set(r["requests"]) >= {"total", "completed"}
    for k in ("ttft_s", "tbt_s", "e2e_s", "queue_s"):
        assert set(r[k]) >= {"mean", "p50", "p90", "p99"}
    assert set(r["throughput"]) >= {"requests_per_s", "output_tokens_per_s"}
    assert r["requests"]["completed"] == r["requests"]["total"] > 0
    assert 0 <= r["gpu_utilization"] <= 1 and "kv_cache" in r and "goodput" in r
    rec = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(rec) == r["requests"]["total"]
    assert {"arrival_s", "first_token_s", "finish_s", "ttft_s", "tbt_mean_s"} <= set(rec.columns)
    assert json.loads((tmp_path / "summary.json").read_text())["requests"] == r["requests"]


def test_serve_csv_beside_parquet_same_rows_and_columns(fake_forward, capsys, tmp_path, refused):
    argv = ["serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe", "--trace", "longbench",
            "--rate", "2", "--duration", "20", "--horizon", "5"]
    code, out, err = run_cli(capsys, *argv, "--out", str(tmp_path), "--csv", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["files"]["csv"] == str(tmp_path / "requests.csv")
    pq = pd.read_parquet(tmp_path / "requests.parquet")
    # an empty cell: NaN in a number column (e.g. finish_s of an unfinished request), "" in `dropped`
    numbers = {c: [""] for c in pq.columns if not pd.api.types.is_string_dtype(pq[c])}
    csv = pd.read_csv(tmp_path / "requests.csv", keep_default_na=False, na_values=numbers)
    assert list(csv.columns) == list(pq.columns) and len(csv) == len(pq) == r["requests"]["total"]
    assert r["requests"]["dropped"] > 0  # the horizon leaves some unfinished: NaN times and a drop reason
    pd.testing.assert_frame_equal(csv, pq, check_dtype=False)
    # without --csv no CSV; --csv without --out is refused before anything runs
    code, _, err = run_cli(capsys, *argv, "--out", str(tmp_path / "b"), "--json")
    assert code == 0 and not (tmp_path / "b" / "requests.csv").exists()
    refused([*argv, "--csv", "--json"], "--csv: only with --out")


def test_serve_text_render(fake_forward, capsys):
    code, out, _ = run_cli(capsys, "serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe",
                           "--trace", "longbench", "--rate", "1", "--duration", "20", "--replicas", "2",
                           "--router", "least-outstanding")
    assert code == 0
    assert "TTFT" in out and "throughput" in out


@pytest.mark.parametrize("argv, field", [
    (["--rate", "-1"], "rate"),
    (["--rate", "1", "--router", "random-ish"], "router"),
    (["--rate", "1", "--scheduler", "lifo"], "scheduler"),
    (["--rate", "1", "--slo-ttft", "0"], "--slo-ttft"),
    (["--rate", "1", "--max-batch", "64", "--token-budget", "32"], "--token-budget"),
    (["--rate", "1", "--replicas", "0"], "replicas"),
    ([], "rate"),  # longbench has no timestamps
])
def test_serve_bad_input_one_line_error(fake_forward, capsys, argv, field):
    code, out, err = run_cli(capsys, "serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe",
                             "--trace", "longbench", "--duration", "5", *argv, "--json")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and field in err


def test_missing_trace_file_is_a_spec_error(capsys):
    code, out, err = run_cli(capsys, "serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe",
                             "--trace", "/nonexistent/trace.csv", "--json")
    assert code == 2 and err.startswith("error: --trace")


def test_interp_cost_close_to_direct():
    """The surrogate used for the forward model interpolates a (here analytic) step model closely."""
    # consistent affine model: a decode token costs like a prefill token attending its KV
    lin = LinearStep(base_s=8e-3, per_prefill_token_s=2e-5, per_attn_pair_s=1e-8, per_decode_seq_s=2e-5,
                     per_kv_token_s=1e-8)
    ic = InterpCost(lin, bits=3)
    rng = np.random.default_rng(0)
    for _ in range(300):
        pf = int(rng.choice([0, rng.integers(1, 8192)]))
        ds = int(rng.integers(0 if pf else 1, 256))
        kv = int(ds * rng.integers(1, 4000))
        pairs = pf * (rng.integers(0, 4000) + (pf + 1) / 2) if pf else 0.0
        exact = lin.iteration(pf, pairs, ds, kv)
        assert ic(Work(pf, pairs, 1 if pf else 0, ds, kv)) == pytest.approx(exact, rel=1e-9)  # affine: interpolation is exact
    assert ic.misses < 2000


@pytest.mark.slow
def test_real_forward_model_small_run():
    pytest.importorskip("simfoe.forward")
    r = api.simulate_serving("olmoe-1b-7b", "h100-sxm", 1, "foe", "longbench", rate=1.0, duration=10, seed=3)
    s = r.summary
    assert s["requests"]["completed"] + s["requests"]["dropped"] == s["requests"]["total"]
    assert s["ttft_s"]["mean"] > 0 and s["gpus_per_replica"] >= 1


@pytest.mark.shared
def test_azure_trace_by_path(shared_data, fake_forward):
    p = shared_data / "traces" / "azure_llm_inference_2023_conv.csv"
    r = api.run_serve("qwen3-30b-a3b", "h100-sxm", 1, "moe", str(p), duration=30)
    assert r["requests"]["total"] > 0 and r["requests"]["completed"] == r["requests"]["total"]


def test_serve_timeline_has_one_event_per_iteration(tmp_path):
    """--timeline writes a Chrome trace: one complete event per engine iteration, replica = thread."""
    import json

    from simfoe.cli import main

    out = tmp_path / "serve.json"
    rc = main(["serve", "--model", "olmoe-1b-7b", "--hardware", "h100-sxm", "--nodes", "1", "--arch", "foe",
               "--trace", "longbench", "--rate", "1", "--duration", "10", "--replicas", "2",
               "--timeline", str(out), "--json"])
    assert rc == 0
    ev = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
    assert ev and {e["tid"] for e in ev} <= {0, 1}
    assert all(e["dur"] > 0 and e["args"]["prefill_tokens"] + e["args"]["decode_seqs"] > 0 for e in ev)


def test_forward_timeline(tmp_path):
    import json

    from simfoe.cli import main

    out = tmp_path / "fwd.json"
    assert main(["forward", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--nodes", "2", "--arch", "moe",
                 "--phase", "decode", "--batch", "8", "--seq-len", "256", "--timeline", str(out), "--json"]) == 0
    ev = json.loads(out.read_text())["traceEvents"]
    cats = {e.get("cat") for e in ev if e["ph"] == "X"}
    assert "compute" in cats and "comm" in cats
    assert {e["tid"] for e in ev if e.get("cat") == "compute"} == set(range(16))


def test_serve_budget_scope_flag_reports_ranks(capsys):
    """An MoE layout with DP attention on one node has 8 DP attention ranks, each with its own budget
    by default; --budget-scope instance gives the instance one."""
    base = ("serve", "--model", "olmoe-1b-7b", "--hardware", "h100-sxm", "--arch", "moe", "--set",
            "placement.moe.attention=dp", "--trace", "longbench", "--rate", "2", "--duration", "3", "--json")
    got = {}
    for scope in ("rank", "instance"):
        code, out, err = run_cli(capsys, *base, "--budget-scope", scope)
        assert code == 0, err
        got[scope] = json.loads(out)
    assert got["rank"]["budget_scope"] == "rank" and got["rank"]["ranks_per_replica"] == 8
    assert got["rank"]["rank_router"] == "vllm-lb" and got["rank"]["rank_imbalance_fraction"] >= 0
    assert got["instance"]["ranks_per_replica"] == 1 and got["instance"]["rank_imbalance_fraction"] is None
    kv = got["rank"]["kv_cache"]
    assert kv["capacity_tokens_per_rank"] * 8 <= kv["capacity_tokens"] < (kv["capacity_tokens_per_rank"] + 16) * 8
    code, out, err = run_cli(capsys, *base, "--budget-scope", "node")
    assert code == 2 and "--budget-scope" in err
    code, out, err = run_cli(capsys, *base, "--rank-router", "random")
    assert code == 2 and "--rank-router" in err and "least-outstanding" in err and not out
