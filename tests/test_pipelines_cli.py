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
