"""`simfoe recommend --disagg` (issue 24.4): aggregated against prefill-decode disaggregated deployments at one
concurrency, ranked by output tokens/s per GPU, with the Pareto front of tokens/s per GPU against tokens/s per user."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.cli import main
from simfoe.planner import recommend
from simfoe.planner.disagg import expected_tokens_per_step, pareto_front
from simfoe.workloads import ClosedLoop

BASE = ["recommend", "--model", "olmoe-1b-7b", "--hardware", "h100-sxm", "--slo-ttft-p90", "2", "--slo-tbt-p99", "0.1"]
LOOP = ClosedLoop(8, 256, 32, num_prompts=24)


def _dominates(a, b) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and a != b


points = st.lists(st.tuples(st.integers(0, 20).map(float), st.integers(0, 20).map(float)), max_size=30)


@given(points)
@settings(max_examples=200, deadline=None)
def test_the_pareto_front_is_exactly_the_points_no_other_point_dominates(pts):
    front = pareto_front(pts)
    assert len(set(front)) == len(front)
    for i in range(len(pts)):
        dominated = any(_dominates(q, pts[i]) for q in pts)
        assert (i in front) == (not dominated)
    assert [pts[i][0] for i in front] == sorted((pts[i][0] for i in front), reverse=True)


def test_expected_tokens_per_step_is_one_plus_the_chained_acceptances():
    assert expected_tokens_per_step(1) == pytest.approx(1.85)  # DeepSeek-V3's published 85% for draft 1
    assert expected_tokens_per_step(2, (0.8, 0.5)) == pytest.approx(1 + 0.8 + 0.8 * 0.5)
    assert expected_tokens_per_step(3, 0.0) == 1.0


@pytest.fixture(scope="module")
def searched():
    """olmoe-1b-7b on up to 2 H100 nodes, 8 clients (256 -> 32 tokens), with and without --disagg; the model
    given a one-layer MTP module so that the decode pools are searched with MTP on and off."""
    kw = dict(trace=LOOP, slo_ttft_p90=2.0, slo_tbt_p99=0.1, sensitivity=False, overrides=("model.mtp_layers=1",))
    return recommend("olmoe-1b-7b", "h100-sxm", 2, **kw), recommend("olmoe-1b-7b", "h100-sxm", 2, disagg=True, **kw)


def test_without_disagg_the_aggregated_search_is_unchanged(searched):
    off, on = searched
    assert "disagg" not in off
    key = [(x["label"], x["output_tokens_per_s"], x["at_max_rate"]["ttft_p90_s"]) for x in off["layouts"]]
    assert key == [(x["label"], x["output_tokens_per_s"], x["at_max_rate"]["ttft_p90_s"]) for x in on["layouts"]]
    assert off["recommended"]["label"] == on["recommended"]["label"]


def test_two_nodes_pair_one_node_workers_one_to_one_and_every_probe_runs_the_whole_loop(searched):
    d = searched[1]["disagg"]
    pre = [p for p in d["pools"]["prefill"] if p["status"] == "screened"]
    dec = [p for p in d["pools"]["decode"] if p["status"] == "screened"]
    assert {p["mtp"] for p in d["pools"]["decode"]} == {0, 1} and d["mtp"] == [0, 1]
    # by hand: 2 nodes hold one 1-node prefill worker and one 1-node decode worker, nothing else (1P1D), of one
    # architecture (one model: an MoE model's KV cannot be decoded by an FoE model)
    n1 = sum(sum(1 for p in pre if (p["nodes"], p["arch"]) == (1, a)) * sum(1 for p in dec if (p["nodes"], p["arch"]) == (1, a))
             for a in ("moe", "foe"))
    assert d["search"]["candidates"] == n1 == d["search"]["simulated"] + d["search"]["pruned"]
    for x in d["layouts"] + d["rejected"]:
        assert (x["xpyd"], x["nodes"], x["total_gpus"]) == ("1:1", 2, 16)
        assert x["prefill"]["arch"] == x["decode"]["arch"] == x["arch"]
        (p,) = x["probes"]
        assert (p["concurrency"], p["requests"]) == (8, 24)
        # MTP on: sequences emit 1 + accepted drafts per decode step (85% accepted: about 1.85); off: no MTP block
        assert (p["mtp_tokens_per_step"] is None) if x["mtp"] == 0 else (1.5 < p["mtp_tokens_per_step"] <= 2)
    assert any(x["mtp"] == 1 for x in d["layouts"] + d["rejected"])
    # aggregated layouts are probed with MTP too, and those that pass are ranked with the rest
    agg = d["aggregated_mtp"]
    assert agg and all(1.5 < x["probe"]["mtp_tokens_per_step"] <= 2 for x in agg)
    ranked = {e["label"] for e in d["deployments"]}
    assert {x["label"] for x in agg if x["status"] == "feasible"} <= ranked
    assert all(lab.endswith(", MTP 1") for lab in ranked if "MTP" in lab)
    # the best-bound deployment of each architecture is simulated, so both are compared
    assert {x["arch"] for x in d["layouts"] + d["rejected"]} == {"moe", "foe"} == set(d["best_by_arch"])
    for x in d["layouts"]:
        assert x["probes"][0]["ok"] and x["probes"][0]["completed"] == 24
        assert x["output_tokens_per_s_per_gpu"] == pytest.approx(x["output_tokens_per_s"] / 16)
        assert x["output_tokens_per_s_per_gpu"] <= x["bound_output_tokens_per_s_per_gpu"]
        assert x["tokens_per_s_per_user"] <= x["bound_tokens_per_s_per_user"]


def test_both_modes_are_ranked_by_tokens_per_gpu_and_the_front_is_not_dominated(searched):
    agg, d = searched[1], searched[1]["disagg"]
    deps = d["deployments"]
    assert {e["mode"] for e in deps} == {"aggregated", "disagg"}
    mtp_ok = [x for x in d["aggregated_mtp"] if x["status"] == "feasible"]
    assert len([e for e in deps if e["mode"] == "aggregated"]) == len(agg["layouts"]) + len(mtp_ok)
    per_gpu = [e["output_tokens_per_s_per_gpu"] for e in deps]
    assert per_gpu == sorted(per_gpu, reverse=True) and d["recommended"] == deps[0]
    pts = {e["label"]: (e["output_tokens_per_s_per_gpu"], e["tokens_per_s_per_user"]) for e in deps}
    assert d["pareto"] and set(d["pareto"]) == {e["label"] for e in deps if e["pareto"]}
    for lab in d["pareto"]:
        assert not any(_dominates(q, pts[lab]) for q in pts.values())
    for e in deps:
        if not e["pareto"]:
            assert any(_dominates(pts[lab], pts[e["label"]]) for lab in d["pareto"])


def test_cli_disagg_prints_one_json_object_and_the_report_shows_the_front(tmp_path, capsys):
    html = tmp_path / "r.html"
    loop = ["--concurrency", "8", "--isl", "256", "--osl", "32", "--num-prompts", "16"]
    assert main(BASE + ["--max-nodes", "2", "--disagg", "--no-sensitivity", "--out", str(html), "--json"] + loop) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    r = json.loads(out[0])
    assert r["disagg"]["recommended"]["label"] == r["disagg"]["deployments"][0]["label"]
    page = html.read_text()
    assert "Aggregated or disaggregated" in page and 'alt="Pareto front"' in page
    assert json.loads(html.with_suffix(".json").read_text())["disagg"]["pareto"] == r["disagg"]["pareto"]


@pytest.mark.parametrize("extra, field, words", [
    ([], "--disagg", "--concurrency"),
    (["--trace", "longbench"], "--disagg", "--concurrency"),
    (["--max-nodes", "1", "--concurrency", "8", "--isl", "256", "--osl", "32"], "--max-nodes", ">= 2 with --disagg"),
])
def test_disagg_it_cannot_honour_exits_2_with_one_line(capsys, extra, field, words):
    assert main(BASE + ["--disagg", "--json"] + extra) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert cap.out == "" and len(err) == 1 and err[0].startswith(f"error: {field}") and words in err[0]
