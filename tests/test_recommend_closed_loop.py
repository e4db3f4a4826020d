"""`simfoe recommend` with a closed-loop workload (--concurrency N --isl L --osl L): one probe per layout at
concurrency N over its replicas, ranked by output tokens/s per GPU; bad flag combinations exit 2."""
from __future__ import annotations

import json

import pytest

from simfoe.cli import main
from simfoe.planner import recommend
from simfoe.planner.report import caveats, render_html
from simfoe.workloads import ClosedLoop

BASE = ["recommend", "--model", "olmoe-1b-7b", "--hardware", "h100-sxm", "--slo-ttft-p90", "2", "--slo-tbt-p99", "0.1"]
CLOSED = ["--concurrency", "8", "--isl", "256", "--osl", "32", "--num-prompts", "32"]


def test_closed_loop_recommend_picks_the_layout_with_most_tokens_per_gpu_and_states_the_workload(capsys):
    assert main(BASE + ["--max-nodes", "1"] + CLOSED + ["--warmup", "4", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    r = json.loads(out[0])
    w = r["workload"]
    assert (w["kind"], w["concurrency"], w["isl"], w["osl"], w["num_prompts"], w["warmup"]) == (
        "closed-loop", 8, 256, 32, 32, 4)
    assert r["trace"] is None and r["rank_by"] == "output tokens/s per GPU"
    lays, rec = r["layouts"], r["recommended"]
    assert lays and rec["label"] == lays[0]["label"] and rec["status"] == "feasible"
    assert rec["output_tokens_per_s_per_gpu"] == max(x["output_tokens_per_s_per_gpu"] for x in lays)
    for x in lays:  # one probe per layout, at concurrency 8, every measured request done within the SLOs
        (p,) = x["probes"]
        assert (p["concurrency"], p["replicas"], p["completed"], p["ok"]) == (8, x["replicas"], 32, True)
        assert p["ttft_p90_s"] <= 2 and p["tbt_p99_s"] <= 0.1
        assert x["output_tokens_per_s_per_gpu"] == pytest.approx(x["output_tokens_per_s"] / x["total_gpus"])
    assert r["search"]["probes"] >= len(lays)
    sens = r["analysis"][rec["label"]]["sensitivity"]
    assert sens["2x load"]["concurrency"] == 16 and sens["2x load"]["requests"] == 64  # 2N clients, 2x prompts
    assert any("closed loop: 8 clients" in c for c in r["caveats"])
    page = render_html(r)
    assert "closed loop: 8 clients" in page and "output tokens/s per GPU" in page
    assert "at each layout's concurrency" in page and "maximum rate" not in page
    # the layouts table names achieved rates, not the open-loop search's maximum rate and bound
    assert "achieved req/s per replica" in page and "bound/replica" not in page and "rate/replica" not in page
    assert r["rank_key"] == "output_tokens_per_s_per_gpu" and r["rank_unit"] == "output tokens/s per GPU"


def test_closed_loop_clients_are_split_over_replicas_and_all_of_them_are_simulated():
    r = recommend("olmoe-1b-7b", "h100-sxm", max_nodes=2, trace=ClosedLoop(8, 256, 32, num_prompts=32),
                  slo_ttft_p90=2.0, slo_tbt_p99=0.1, sensitivity=False)
    two = [x for x in r["layouts"] if x["replicas"] == 2]
    assert two
    for x in two:  # the whole deployment ran: 2 replicas, 8 clients, every one of the 32 prompts
        (p,) = x["probes"]
        assert (p["replicas"], p["concurrency"], p["completed"]) == (2, 8, 32)
        assert x["goodput_rps"] == pytest.approx(2 * p["rate_rps"])  # rate_rps: achieved, per replica
    assert "replica_check" not in r["recommended"]  # nothing to re-check: the probe had every replica


def test_a_layout_missing_the_slos_at_the_concurrency_is_rejected_with_the_numbers():
    r = recommend("olmoe-1b-7b", "h100-sxm", max_nodes=1, trace=ClosedLoop(64, 2048, 8, num_prompts=64),
                  slo_ttft_p90=0.05, sensitivity=False)
    missed = [x for x in r["rejected"] if x["status"] == "infeasible" and x["probes"]]
    assert missed, "64 clients of 2048-token prompts queue past a 50 ms p90 TTFT somewhere"
    for x in missed:
        assert "at concurrency 64" in x["reason"] and x["probes"][0]["ttft_p90_s"] > 0.05
    assert all(x["probes"][0]["ttft_p90_s"] <= 0.05 for x in r["layouts"])


@pytest.mark.parametrize("extra, words", [
    (CLOSED + ["--trace", "longbench"], ["--trace", "concurrency"]),
    (CLOSED + ["--requests", "60"], ["--requests", "--concurrency"]),
    (CLOSED + ["--bisect-steps", "2"], ["--bisect-steps", "--concurrency"]),
    (["--isl", "256"], ["--isl", "only with concurrency"]),
    (["--concurrency", "8", "--isl", "256"], ["--osl", "not given"]),
    (["--concurrency", "0", "--isl", "256", "--osl", "32"], ["--concurrency", "0"]),
    (CLOSED + ["--random-range-ratio", "1"], ["--random-range-ratio", "[0, 1)"]),
    (["--concurrency", "8", "--isl", "256", "--osl", "32", "--num-prompts", "600000"], ["--num-prompts", "--max-requests"]),
])
def test_bad_closed_loop_flag_combinations_exit_2_with_one_line(extra, words, capsys, tmp_path):
    out = tmp_path / "r.html"
    assert main(BASE + extra + ["--out", str(out), "--json"]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and all(w in err[0] for w in words), err
    assert cap.out == "" and not out.exists() and not out.with_suffix(".json").exists()


def test_open_loop_summary_says_so():
    r = {"workload": {"kind": "open-loop", "mean_prompt_tokens": 100, "mean_output_tokens": 10,
                      "requests_per_probe": 240, "seed": 0}, "trace": "longbench", "hardware": []}
    assert any("Workload: longbench" in c and "Poisson" in c for c in caveats(r))


def test_open_loop_search_is_still_a_rate_search_ranked_by_goodput():
    r = recommend("olmoe-1b-7b", "h100-sxm", max_nodes=1, trace="longbench:lcc", slo_ttft_p90=2.0, slo_tbt_p99=0.1,
                  requests=40, bisect_steps=1, sensitivity=False, verify_replicas=False)
    assert (r["trace"], r["workload"]["kind"], r["rank_by"]) == ("longbench:lcc", "open-loop", "goodput per GPU")
    assert r["layouts"]
    for x in r["layouts"]:  # first probe at half the throughput bound; the rate is the highest passing probe's
        p = x["probes"]
        assert len(p) >= 2 and p[0]["rate_rps"] == pytest.approx(x["bound_rps_per_replica"] / 2)
        assert x["max_rate_rps_per_replica"] == max(q["rate_rps"] for q in p if q["ok"])
        assert "concurrency" not in p[0] and "output_tokens_per_s_per_gpu" not in x


def test_closed_loop_with_a_price_ranks_by_output_tokens_per_dollar():
    r = recommend("olmoe-1b-7b", "h100-sxm", max_nodes=1, trace=ClosedLoop(8, 256, 32, num_prompts=32),
                  slo_ttft_p90=2.0, prices={"h100-sxm": 2.5}, sensitivity=False)
    assert r["rank_by"] == "output tokens per dollar"
    for x in r["layouts"]:  # tokens/s x 3600 s/h / (GPUs x $2.5 per GPU-hour)
        assert x["output_tokens_per_dollar"] == pytest.approx(x["output_tokens_per_s"] * 3600 / (x["total_gpus"] * 2.5))
    assert r["recommended"]["output_tokens_per_dollar"] == max(x["output_tokens_per_dollar"] for x in r["layouts"])
