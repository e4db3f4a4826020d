"""Launch commands of a recommended layout (simfoe.specs.launch, simfoe.planner.launch, recommend --engine)."""
from __future__ import annotations

import json
from html import escape

import pytest

from simfoe.cli import main
from simfoe.planner.launch import entry_launch
from simfoe.specs.engine import load_engine
from simfoe.specs.io import load_model
from simfoe.specs.launch import LaunchPlan, launch_commands

M = "mistralai/Mixtral-8x7B-v0.1"
TAIL = "--max-num-batched-tokens 8192 --max-num-seqs 256"


def _cmds(engine: str, **kw) -> list[str]:
    plan = LaunchPlan(**{"model": M, "gpus": 8, "gpus_per_node": 8, "attention_tp": 8, "token_budget": 8192,
                         "max_batch": 256, "ep": 8, "deepep": True, **kw})
    return list(launch_commands(load_engine(engine), plan).commands)


def test_tp8_ep8_one_node_per_engine():
    assert _cmds("vllm") == [f"vllm serve {M} --tensor-parallel-size 8 --enable-expert-parallel {TAIL}"]
    assert _cmds("sglang") == [f"python -m sglang.launch_server --model-path {M} --tp 8 --ep-size 8 "
                               "--moe-a2a-backend deepep --chunked-prefill-size 8192 --max-running-requests 256"]
    assert _cmds("trtllm") == [f"trtllm-serve {M} --tp_size 8 --ep_size 8 --max_num_tokens 8192 --max_batch_size 256"]


def test_dp_attention_one_node():
    # SGLang divides chunked-prefill-size and max-running-requests over the DP ranks: 2048 x 8, 256 x 8
    kw = {"attention_tp": 1, "token_budget": 2048}
    assert _cmds("sglang", **kw) == [f"python -m sglang.launch_server --model-path {M} --tp 8 --dp 8 "
                                     "--enable-dp-attention --ep-size 8 --moe-a2a-backend deepep "
                                     "--chunked-prefill-size 16384 --max-running-requests 2048"]
    assert _cmds("vllm", **kw) == [f"vllm serve {M} --tensor-parallel-size 1 --data-parallel-size 8 "
                                   "--enable-expert-parallel --max-num-batched-tokens 2048 --max-num-seqs 256"]
    assert _cmds("trtllm", **kw) == [f"trtllm-serve {M} --tp_size 8 --ep_size 8 --max_num_tokens 2048 "
                                     "--max_batch_size 256 --extra_llm_api_options extra-llm-api.yaml"]


def test_two_nodes_one_line_per_node():
    kw = {"gpus": 16, "ep": 16, "deepep": False}
    dp = "--data-parallel-size 2 --data-parallel-size-local 1"
    addr = "--data-parallel-address $HEAD_IP --data-parallel-rpc-port 13345"
    assert _cmds("vllm", **kw) == [
        f"vllm serve {M} --tensor-parallel-size 8 {dp} {addr} --enable-expert-parallel {TAIL}",
        f"vllm serve {M} --tensor-parallel-size 8 {dp} --data-parallel-start-rank 1 {addr} --headless "
        f"--enable-expert-parallel {TAIL}"]
    sg = [f"python -m sglang.launch_server --model-path {M} --tp 16 --dp 2 --enable-dp-attention --ep-size 16 "
          f"--chunked-prefill-size 16384 --max-running-requests 512 --nnodes 2 --node-rank {r} "
          "--dist-init-addr $HEAD_IP:20000" for r in (0, 1)]
    assert _cmds("sglang", **kw) == sg
    assert len(_cmds("trtllm", **kw)) == 1  # one command under the cluster launcher


def test_disaggregated_pools():
    assert _cmds("sglang", role="prefill")[0].endswith("--disaggregation-mode prefill")
    assert _cmds("sglang", role="decode")[0].endswith("--disaggregation-mode decode")
    plan = LaunchPlan(M, 8, 8, 8, 8192, 256, ep=8, role="decode")
    v = launch_commands(load_engine("vllm"), plan)
    assert "disaggregation" not in v.commands[0] and "not templated" in v.notes[0]


def test_foe_layout_is_not_runnable():
    entry = {"arch": "foe", "settings": {"placement.foe.clusters": 4}, "gpus_per_replica": 8}
    out = entry_launch(entry, load_model("mixtral-8x7b"), 8, load_engine("sglang"), 256)
    assert out["commands"] == [] and out["notes"][0].startswith("not runnable")


def test_moe_entry_uses_hf_id_and_dp_ranks():
    entry = {"arch": "moe", "gpus_per_replica": 8, "dp_ranks": 8, "token_budget": 1024,
             "settings": {"placement.moe.attention": "dp", "placement.moe.ep": 8,
                          "placement.moe.dedup_dispatch": False}}
    out = entry_launch(entry, load_model("mixtral-8x7b"), 8, load_engine("vllm"), 128)
    assert out["commands"] == [f"vllm serve {M} --tensor-parallel-size 1 --data-parallel-size 8 "
                               "--enable-expert-parallel --max-num-batched-tokens 1024 --max-num-seqs 128"]


ARGV = ["recommend", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--concurrency", "16", "--isl", "512",
        "--osl", "64", "--slo-tbt-p99", "0.5", "--no-sensitivity", "--json"]


def _json(argv, capsys) -> dict:
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_cli_launch_null_without_engine_and_filled_with(capsys):
    assert _json(ARGV, capsys)["launch"] is None
    r = _json(ARGV + ["--engine", "sglang"], capsys)
    launch = r["launch"]
    assert launch["engine"] == "sglang" and launch["version"] == load_engine("sglang").version
    if r["recommended"]["arch"] == "foe":
        assert launch["commands"] == [] and "not runnable" in launch["notes"][0]
    else:
        assert launch["commands"][0].startswith("python -m sglang.launch_server --model-path " + M)


@pytest.mark.parametrize("name", ["foo", "tensorrt"])
def test_cli_refuses_unknown_engine(refused, name):
    refused(ARGV + ["--engine", name], "--engine", name, "vllm")


def test_report_shows_launch(tmp_path, capsys):
    out = tmp_path / "r.html"
    r = _json(ARGV + ["--engine", "vllm", "--out", str(out)], capsys)
    html = out.read_text()
    assert "Launch: the recommended layout (vllm" in html
    for c in r["launch"]["commands"] + r["launch"]["notes"][:1]:
        assert escape(c) in html


def test_cli_disagg_pools_launch(capsys):
    argv = ARGV + ["--max-nodes", "2", "--disagg", "--engine", "sglang"]
    d = _json(argv, capsys)["disagg"]
    assert d["layouts"]
    for dep in d["layouts"]:
        for role in ("prefill", "decode"):
            la = dep["launch"][role]
            if dep[role]["arch"] == "foe":
                assert la["commands"] == [] and "not runnable" in la["notes"][0]
            else:
                assert all(c.endswith(f"--disaggregation-mode {role}") for c in la["commands"])
