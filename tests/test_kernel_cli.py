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
    assert set(d) == KEYS
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
    assert set(d) == KEYS and d["latency_s"] > 0


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
