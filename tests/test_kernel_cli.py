"""`simfoe kernel` and `simfoe fit` CLI: JSON shape, --shapes CSV, one-line errors with exit 2."""
from __future__ import annotations

import json

import pytest

from simfoe.cli import main

KEYS = {"latency_s", "flops", "bytes", "bound"}


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_gemm_json_keys(capsys):
    code, out, err = _run(capsys, ["kernel", "--hardware", "h100-sxm", "--op", "gemm", "--m", "4096",
                                   "--n", "8192", "--k", "8192", "--json"])
    assert code == 0 and err == ""
    d = json.loads(out)
    assert set(d) == KEYS | {"run"}  # the run record: tests/test_provenance.py
    assert d["flops"] == 2 * 4096 * 8192 * 8192 and d["bound"] == "compute"


@pytest.mark.parametrize("argv", [
    ["--op", "grouped_gemm", "--tokens", "0,5,300", "--n", "4096", "--k", "7168"],
    ["--op", "attention_prefill", "--batch", "2", "--q-len", "512", "--kv-len", "1024", "--heads", "32",
     "--kv-heads", "8", "--head-dim", "128"],
    ["--op", "attention_decode", "--batch", "8", "--kv-len", "2048", "--heads", "32", "--kv-heads", "8",
     "--head-dim", "128"],
    ["--op", "elementwise", "--bytes", "1e8", "--kind", "norm"],
])
def test_other_ops_json(capsys, argv):
    code, out, _ = _run(capsys, ["kernel", "--hardware", "a100-sxm", *argv, "--json"])
    assert code == 0
    d = json.loads(out)
    assert set(d) == KEYS | {"run"} and d["latency_s"] > 0


def test_set_override_changes_result(capsys):
    base = ["kernel", "--hardware", "h100-sxm", "--op", "gemm", "--m", "1", "--n", "8192", "--k", "8192", "--json"]
    _, a, _ = _run(capsys, base)
    _, b, _ = _run(capsys, base + ["--set", "hardware.gpu.hbm_bandwidth=6.7e12"])
    assert json.loads(b)["latency_s"] < json.loads(a)["latency_s"]


def test_shapes_csv_in_row_order(tmp_path, capsys):
    f = tmp_path / "shapes.csv"
    f.write_text("op,m,n,k,dtype\ngemm,1,4096,4096,bf16\ngemm,4096,4096,4096,\ngemm,4096,4096,4096,fp8\n")
    code, out, _ = _run(capsys, ["kernel", "--hardware", "h100-sxm", "--shapes", str(f), "--json"])
    assert code == 0
    res = json.loads(out)["results"]
    assert len(res) == 3 and all(KEYS <= set(r) for r in res)
    assert res[0]["bound"] == "memory" and res[1]["bound"] == "compute"
    assert res[2]["latency_s"] < res[1]["latency_s"]
    code, out, _ = _run(capsys, ["kernel", "--hardware", "h100-sxm", "--shapes", str(f)])
    assert code == 0 and out.count("gemm") == 3


@pytest.mark.parametrize("body,needle", [
    ("op,m,n,k\ngemm,1,2,3\ngemm,x,2,3\n", "shapes.csv line 3"),
    ("op,m,n,k\nconv,1,2,3\n", "shapes.csv line 2"),
    ("op,m,n,k\ngemm,1,2,\n", "shapes.csv line 2"),
    ("op,m,n,k,color\ngemm,1,2,3,red\n", "shapes.csv line 1"),
])
def test_shapes_csv_errors_name_the_row(tmp_path, capsys, body, needle):
    f = tmp_path / "shapes.csv"
    f.write_text(body)
    code, out, err = _run(capsys, ["kernel", "--hardware", "h100-sxm", "--shapes", str(f), "--json"])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["kernel", "--hardware", "h100-sxm", "--op", "gemm", "--m", "-3", "--n", "2", "--k", "2"],
    ["kernel", "--hardware", "h100-sxm", "--op", "matmul", "--m", "3", "--n", "2", "--k", "2"],
    ["kernel", "--hardware", "h100-sxm", "--op", "gemm", "--m", "3", "--n", "2"],
    ["kernel", "--hardware", "h100-sxm", "--op", "gemm", "--m", "3", "--n", "2", "--k", "2", "--dtype", "int4"],
    ["kernel", "--hardware", "b300", "--op", "gemm", "--m", "3", "--n", "2", "--k", "2"],
    ["kernel", "--hardware", "h100-sxm"],
    ["kernel", "--hardware", "h100-sxm", "--shapes", "/nonexistent.csv"],
    ["fit", "everything", "--hardware", "h100-sxm"],
])
def test_bad_input_one_line_exit_2(capsys, argv):
    code, out, err = _run(capsys, argv + ["--json"])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1


def test_fit_kernels_cli_json(shared_data, capsys):
    code, out, _ = _run(capsys, ["fit", "kernels", "--hardware", "a100-sxm",
                                 "--vidur", str(shared_data / "vidur"), "--json"])
    assert code == 0
    d = json.loads(out)
    assert d["target"] == "kernels" and d["written"] is None
    assert d["gemm_held_out_mape_pct"] <= 10.0


# ---- communication ops (issue 22): one dispatch/combine or collective without a model -----------------
_DISPATCH = ["--nodes", "2", "--tokens-per-gpu", "1024", "--hidden", "7168", "--topk", "8", "--experts", "256"]


@pytest.mark.parametrize("op,a2a", [("dispatch", "normal"), ("combine", "normal"), ("dispatch", "ll"), ("combine", "ll")])
def test_dispatch_combine_json(capsys, op, a2a):
    code, out, err = _run(capsys, ["kernel", "--hardware", "h100-sxm", "--op", op, "--a2a", a2a, *_DISPATCH, "--json"])
    assert code == 0 and err == ""
    d = json.loads(out)
    assert set(d) == {"latency_s", "algorithm", "comm_bytes", "run"} and d["latency_s"] > 0
    assert d["algorithm"] == "deepep-" + a2a and d["comm_bytes"]["inter_node"] > 0


def test_normal_dispatch_puts_fewer_bytes_on_nics_than_nccl(capsys):
    got = {}
    for a2a in ("normal", "nccl"):
        _, out, _ = _run(capsys, ["kernel", "--hardware", "h100-sxm", "--op", "dispatch", "--a2a", a2a, *_DISPATCH,
                                  "--dtype", "fp8", "--json"])
        got[a2a] = json.loads(out)["comm_bytes"]["inter_node"]
    assert got["normal"] < got["nccl"]


@pytest.mark.parametrize("op,per_gpu", [("all_reduce", 1.0), ("reduce_scatter", 1.0), ("all_gather", 1 / 8),
                                        ("all_to_all", 1 / 8)])
def test_collective_takes_nccl_tests_size(capsys, op, per_gpu):
    from simfoe.costs.collectives import predict
    from simfoe.specs.io import load_hardware

    code, out, _ = _run(capsys, ["kernel", "--hardware", "h100-sxm", "--op", op, "--gpus", "8", "--bytes", "64e6",
                                 "--json"])
    assert code == 0
    d = json.loads(out)
    assert d["latency_s"] == pytest.approx(predict(load_hardware("h100-sxm"), op, 8, 64e6 * per_gpu, "auto"))
    assert d["algbw_bytes_per_s"] == pytest.approx(64e6 / d["latency_s"])


@pytest.mark.parametrize("argv,flag", [
    (["--op", "dispatch", "--a2a", "fast", *_DISPATCH], "--a2a"),
    (["--op", "dispatch", "--a2a", "ll", "--nodes", "2", "--hidden", "7168", "--topk", "8", "--experts", "256"],
     "--tokens-per-gpu"),
    (["--op", "combine", "--a2a", "ll", *_DISPATCH, "--dtype", "fp8"], "--dtype"),
    (["--op", "dispatch", "--a2a", "ll", *_DISPATCH, "--gpus", "8"], "--gpus"),
    (["--op", "dispatch", "--a2a", "normal", *_DISPATCH, "--node-groups", "3"], "--node-groups"),
    (["--op", "all_reduce", "--gpus", "8", "--bytes", "1e6", "--topk", "2"], "--topk"),
    (["--op", "all_reduce", "--gpus", "8", "--bytes", "1e6", "--algorithm", "foo"], "--algorithm"),
    (["--op", "all_reduce", "--gpus", "12", "--nodes", "5", "--bytes", "1e6"], "--nodes"),
    (["--op", "all_gather", "--gpus", "8"], "--bytes"),
])
def test_bad_comm_combination_exits_2_with_one_line(capsys, argv, flag):
    code, out, err = _run(capsys, ["kernel", "--hardware", "h100-sxm", *argv, "--json"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {flag}")


def test_fit_dispatch_refuses_a_profile_without_measured_tables(capsys):
    code, out, err = _run(capsys, ["fit", "dispatch", "--hardware", "a100-sxm", "--json"])
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: --hardware")
