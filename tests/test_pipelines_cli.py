"""`simfoe pipeline` CLI: JSON contract, one-line errors, --compare curves."""
from __future__ import annotations

import json

import pytest

from simfoe.cli import main


def test_json_contract(capsys):
    assert main(["pipeline", "--spec", "factool", "--mode", "stream", "--rate", "5", "--duration", "30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"offered_rps", "achieved_rps", "completed", "latency_s"} <= set(out)
    assert {"mean", "p50", "p99"} <= set(out["latency_s"])
    assert out["offered_rps"] == 5 and out["completed"] > 0


@pytest.mark.parametrize("argv", [
    ["--spec", "nope"],
    ["--spec", "factool", "--mode", "pipelined"],
    ["--spec", "factool", "--routing", "random"],
    ["--spec", "factool", "--rate", "-1"],
    ["--spec", "factool", "--set", "stages.bm25.instances=0"],
])
def test_bad_input_is_one_line_exit_2(argv, capsys):
    assert main(["pipeline", *argv, "--duration", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_compare_writes_curves(tmp_path, capsys):
    rc = main(["pipeline", "--spec", "factool", "--compare", "stream,batch", "--rates", "2,6", "--duration", "20",
               "--jobs", "1", "--out", str(tmp_path), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["summary"]) == {"stream/hash-all", "batch/hash-all"}
    assert len(res["points"]) == 4
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert (tmp_path / "points.json").is_file()


# ------------------------------------------------------------------ --compare UX (issue 27.5)
ONE_STAGE = "name: one\nstages:\n  - name: a\n    service_s: {dist: exponential, mean: 0.1}\n"


def _one_stage(tmp_path):
    f = tmp_path / "one.yaml"
    f.write_text(ONE_STAGE)
    return str(f)


def test_compare_progress_prints_one_line_per_point(tmp_path, capsys):
    rc = main(["pipeline", "--spec", _one_stage(tmp_path), "--compare", "stream,batch", "--rates", "1,2",
               "--duration", "50", "--jobs", "1", "--progress", "--json"])
    assert rc == 0
    cap = capsys.readouterr()
    json.loads(cap.out)  # still exactly one JSON object on stdout
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("pipeline ")]
    assert [ln.split(":")[0] for ln in lines] == [f"pipeline {k}/4" for k in range(1, 5)]
    assert "stream/" in lines[0] and "req/s" in lines[0]


def test_compare_without_progress_is_quiet(tmp_path, capsys):
    assert main(["pipeline", "--spec", _one_stage(tmp_path), "--compare", "stream", "--rates", "1",
                 "--duration", "20", "--jobs", "1", "--no-progress", "--json"]) == 0
    assert capsys.readouterr().err == ""


def test_target_never_crossed_says_not_reached(tmp_path, capsys):
    """At 1-2 req/s an M/M/1 with 0.1 s service stays far under 4 s: no load limit was found."""
    argv = ["pipeline", "--spec", _one_stage(tmp_path), "--compare", "stream", "--rates", "1,2", "--duration", "50",
            "--jobs", "1"]
    assert main([*argv, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["summary"]["stream/aggregation-aware"]
    assert s["max_load_status"] == "not_reached" and s["max_load_at_target_rps"] is None
    assert s["highest_rate_tried_rps"] == 2 and s["meets_target_up_to_rps"] > 0
    assert main(argv) == 0
    assert "not reached up to 2 req/s" in capsys.readouterr().out


def test_dropped_point_is_said_in_text_json_and_plot(tmp_path, capsys):
    """At 20 req/s the 10 req/s server saturates (achieved < 80% of offered): the point is left off the
    curves, and the text, the JSON summary and the plot's legend say so; the limit lies below it."""
    out = tmp_path / "out"
    argv = ["pipeline", "--spec", _one_stage(tmp_path), "--compare", "stream", "--rates", "1,20", "--duration", "50",
            "--jobs", "1", "--out", str(out)]
    assert main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    s = res["summary"]["stream/aggregation-aware"]
    assert s["dropped_rates_rps"] == [20] and s["max_load_status"] == "found"
    assert s["max_load_at_target_rps"] == pytest.approx(res["points"][0]["achieved_rps"])
    assert main([*argv[:-2], "--out", str(tmp_path / "out2")]) == 0
    text = capsys.readouterr().out
    assert "left off the curves" in text and "stream/aggregation-aware at 20 req/s" in text

    from simfoe.pipelines.curves import curve_figure

    fig = curve_figure(res["points"], target_s=4.0)
    legends = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert "stream/aggregation-aware (1 dropped)" in legends
    assert any("20 req/s" in t.get_text() for t in fig.texts)
    assert {ax.get_yscale() for ax in fig.axes} == {"log"}
