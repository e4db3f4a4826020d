"""The validation harness runs end to end (--quick, tiny subset) and writes the documented format."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # validation/ is a top-level folder, not part of the installed package
    sys.path.insert(0, str(REPO))

from validation.bench_collectives import COLLECTIVE_COLUMNS, bus_factor  # noqa: E402
from validation.bench_common import percentile  # noqa: E402
from validation.bench_kernels import KERNEL_COLUMNS, attention_flops, route_tokens  # noqa: E402

pytestmark = pytest.mark.torch


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _harness(out: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "validation.harness", "--device", "cpu", "--quick",
                           "--out", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_quick_kernels_format(tmp_path: Path) -> None:
    summary = _harness(tmp_path, "--ops", "gemm,grouped_ffn,attention,memcopy,routing_glue", "--dtypes", "fp32",
                       "--budget-s", "0.005")
    cols, rows = _rows(tmp_path / "kernels.csv")
    assert cols == list(KERNEL_COLUMNS)
    assert summary["kernels"] == len(rows) > 0
    assert {r["op"] for r in rows} == {"gemm", "grouped_ffn", "attention", "memcopy", "routing_glue"}
    glue = [r for r in rows if r["op"] == "routing_glue"]
    assert {(r["experts"], r["ranks"], r["variant"]) for r in glue} == {
        (e, rk, v) for (e, rk) in (("4", "0"), ("4", "2")) for v in ("eager", "eager_cold")}
    for r in rows:  # cold rows: one call per sample, each after a 16 MiB read (the --quick default)
        cold = r["variant"].endswith("_cold")
        assert r["flush_bytes"] == (str(16 * 2 ** 20) if cold else "") and (r["inner"] == "1" or not cold)
    assert {r["variant"] for r in rows if r["op"] in ("gemm", "grouped_ffn")} == {"mm", "mm_cold", "loop_swiglu",
                                                                                  "loop_swiglu_cold"}
    for r in glue:  # dispatch time only: no FLOPs or bytes counted; active experts within the local ones
        assert int(r["flops"]) == int(r["bytes"]) == 0 and float(r["cpu_median_s"]) > 0
        assert 1 <= int(r["experts_active"]) <= int(r["experts"])
    for r in (r for r in rows if r["op"] != "routing_glue"):
        med, p10, p90 = float(r["median_s"]), float(r["p10_s"]), float(r["p90_s"])
        assert 0 < p10 <= med <= p90
        assert int(r["repeats"]) >= 3 and int(r["bytes"]) > 0
        assert r["threads"] == "1" and float(r["cpu_median_s"]) > 0
        assert r["timing"] == "host_clock"
        if r["op"] == "gemm":
            m, n, k = int(r["m"]), int(r["n"]), int(r["k"])
            assert int(r["flops"]) == 2 * m * n * k
            assert int(r["bytes"]) == (m * k + k * n + m * n) * 4
        if r["op"] == "grouped_ffn":
            counts = [int(c) for c in r["tokens_per_expert"].split(";")]
            assert sum(counts) == int(r["tokens_total"]) and len(counts) == int(r["experts"])
    env = json.loads((tmp_path / "env.json").read_text())
    for key in ("torch", "device", "device_name", "torch_threads", "cpu", "date_utc", "hostname", "timing_policy"):
        assert key in env
    assert env["cuda_graphs"] is False  # a CPU run has no graphs to replay
    _, coll = _rows(tmp_path / "collectives.csv")
    assert coll == []


@pytest.mark.slow
def test_quick_collectives_format(tmp_path: Path) -> None:
    _harness(tmp_path, "--ops", "collectives", "--world-sizes", "2", "--collective-sizes", "4096", "--budget-s", "0.005")
    cols, rows = _rows(tmp_path / "collectives.csv")
    assert cols == list(COLLECTIVE_COLUMNS)
    assert {r["collective"] for r in rows} == {"all_reduce", "all_gather", "all_to_all"}
    for r in rows:
        assert r["backend"] == "gloo" and r["world_size"] == "2" and r["bytes"] == "4096"
        algbw = int(r["bytes"]) / float(r["median_s"])
        assert float(r["algbw_Bps"]) == pytest.approx(algbw, rel=1e-3)
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["collectives"]["world_sizes"] == [2]


def test_bad_ops_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "validation.harness", "--out", str(tmp_path), "--ops", "conv"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --ops")


def test_bad_flush_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "set"
    proc = subprocess.run([sys.executable, "-m", "validation.harness", "--out", str(out), "--flush-mb", "-1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --flush-mb") and not out.exists()


@pytest.mark.parametrize("flag,value", [("--gemm-threads", "a,b"), ("--gemm-threads", "0"),
                                        ("--world-sizes", "2,x"), ("--collective-sizes", "0"),
                                        pytest.param("--backend", "nccl", marks=pytest.mark.skipif(
                                            _cuda(), reason="a CUDA GPU is here: --backend nccl is allowed"))])
def test_bad_integer_lists_and_backend_exit_2_before_anything_is_written(tmp_path: Path, flag, value) -> None:
    # checked with the other flags, before a measurement starts (they used to exit 1, the lists mid-run)
    out = tmp_path / "set"
    proc = subprocess.run([sys.executable, "-m", "validation.harness", "--out", str(out), "--ops", "collectives",
                           flag, value], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {flag}") and not out.exists()
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_gemm_draws_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "set"
    proc = subprocess.run([sys.executable, "-m", "validation.harness", "--out", str(out), "--gemm-draws", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --gemm-draws") and not out.exists()


def test_gemm_draws_keep_median_row(tmp_path: Path) -> None:
    """Each GEMM point is the median of fresh process draws: the draws and their spread are recorded."""
    summary = _harness(tmp_path, "--ops", "gemm", "--dtypes", "fp32", "--budget-s", "0.005", "--gemm-draws", "2",
                       "--flush-mb", "0")
    _, rows = _rows(tmp_path / "kernels.csv")
    assert summary["kernels"] == len(rows) == 3  # the quick grid once, not once per draw
    for r in rows:
        assert r["draws"] == "2" and float(r["draw_spread"]) >= 0
    assert json.loads((tmp_path / "env.json").read_text())["gemm_draws"] == 2


def test_fp8_gemm_rows_and_gemm_only(tmp_path: Path) -> None:
    """fp8 is timed for GEMMs only (torch._scaled_mm; emulated on a CPU, so only the plumbing is checked
    here): its rows sit beside the other dtype's, the other ops take that dtype, and fp8 alone is refused
    unless only GEMMs are asked for."""
    _harness(tmp_path, "--ops", "gemm,memcopy", "--dtypes", "fp32,fp8", "--budget-s", "0.005", "--flush-mb", "0",
             "--gemm-draws", "1")
    _, rows = _rows(tmp_path / "kernels.csv")
    f8 = [r for r in rows if r["dtype"] == "fp8"]
    assert f8 and all(r["op"] == "gemm" and r["variant"] == "scaled_mm" for r in f8)
    assert len(f8) == len([r for r in rows if r["op"] == "gemm" and r["dtype"] == "fp32"])
    for r in f8:  # bytes: fp8 inputs, bf16 output
        m, n, k = int(r["m"]), int(r["n"]), int(r["k"])
        assert int(r["bytes"]) == m * k + k * n + 2 * m * n and float(r["median_s"]) > 0
    assert {r["dtype"] for r in rows if r["op"] == "memcopy"} == {"u8"}
    out = tmp_path / "only8"
    proc = subprocess.run([sys.executable, "-m", "validation.harness", "--out", str(out), "--dtypes", "fp8"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --dtypes") and not out.exists()


def test_median_draw() -> None:
    from validation.harness import median_draw

    def row(t: float, m: int = 1) -> dict:
        return {"op": "gemm", "m": m, "median_s": t + 1, "cpu_median_s": t, "repeats": 5}

    out = median_draw([[row(3.0), row(1.0, 2)], [row(1.0), row(2.0, 2)], [row(2.0), row(4.0, 2)]])
    assert [(r["m"], r["cpu_median_s"], r["median_s"], r["draws"]) for r in out] == [(1, 2.0, 3.0, 3), (2, 2.0, 3.0, 3)]
    assert out[0]["draw_spread"] == pytest.approx(2.0) and out[1]["draw_spread"] == pytest.approx(3.0)
    two = median_draw([[row(1.0)], [row(5.0)]])  # even count: the slower middle
    assert two[0]["cpu_median_s"] == 5.0 and two[0]["draw_spread"] == pytest.approx(4.0)


def test_definitions() -> None:
    assert route_tokens(10, 4, "uniform") == [3, 3, 2, 2]
    z = route_tokens(100, 8, "zipf1.2")
    assert sum(z) == 100 and z == sorted(z, reverse=True)
    assert route_tokens(5, 3, "hot") == [5, 0, 0]
    assert attention_flops(1, 2, 8, 8, 4, causal=True) == 4 * 2 * 8 * 8 * 4 // 2
    assert attention_flops(1, 2, 1, 8, 4, causal=False) == 4 * 2 * 8 * 4
    assert bus_factor("all_reduce", 4) == pytest.approx(1.5)
    assert bus_factor("all_to_all", 4) == pytest.approx(0.75)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 10) == pytest.approx(1.0)


def test_rotation_exceeds_cache_for_small_inputs() -> None:
    """The rotation is sized by the cache and the memory cap, not by a small copy count: 16 copies of a
    4 MiB GEMV weight sat in the Intel VM's cache and ran 1.7x faster than from DRAM."""
    from validation.bench_common import rotation_count
    from validation.bench_kernels import KernelContext

    mib = 1024 ** 2
    n = rotation_count(4 * mib, 480 * mib, KernelContext.max_buffers, 512 * mib)
    assert n == 128  # 512 MiB of rotation (the cap), not 16 x 4 MiB
    assert rotation_count(4 * mib, 16 * mib, KernelContext.max_buffers, 512 * mib) == 8  # 2 x LLC suffices
    assert rotation_count(600 * mib, 480 * mib, KernelContext.max_buffers, 512 * mib) == 1


def test_input_pool_slices_disjoint_aligned() -> None:
    import torch

    from validation.bench_common import rotation_count
    from validation.bench_kernels import InputPool

    cap = 8 * 1024 ** 2
    pool = InputPool(torch.device("cpu"), cap)
    ws = (3 * 1000 + 5 * 1000) * 4  # two fp32 inputs per set; outputs are not pooled
    nb = rotation_count(ws, 64 * 1024 ** 2, 4096, cap)
    for _ in range(3):  # three rotations: the ring wraps, each rotation stays disjoint
        spans = []
        for _ in range(nb):
            for shape in ((3, 1000), (1000, 5)):
                t = pool.take(shape, torch.float32)
                assert tuple(t.shape) == shape and t.is_contiguous() and t.dtype == torch.float32
                assert t.data_ptr() % 64 == 0 and torch.isfinite(t).all()
                spans.append((t.data_ptr(), t.data_ptr() + t.numel() * 4))
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert pool.take((4,), torch.uint8).tolist() == [1, 1, 1, 1]
    big = pool.take((cap,), torch.float32)  # 4 x cap bytes: larger than the pool, a fresh tensor
    assert big.numel() == cap


def test_set_larger_than_pool_does_not_alias() -> None:
    """Two inputs that together exceed the pool (K and V of a large decode) must not share addresses:
    wrapped onto one slice, the second read came from cache."""
    import torch

    from validation.bench_common import QUICK_POLICY
    from validation.bench_kernels import KernelContext, _buffers

    cap = 4 * 1024 ** 2
    ctx = KernelContext(device=torch.device("cpu"), policy=QUICK_POLICY, cache_bytes=1024, rotate_mem_cap_bytes=cap)
    half = ctx.inputs.size * 3 // 4 // 4  # fp32 elements: each input 3/4 of the pool, the pair 1.5x it
    (k, v), = _buffers(ctx, 2 * half * 4, lambda: (ctx.inputs.take((half,), torch.float32),
                                                  ctx.inputs.take((half,), torch.float32)))
    ks, vs = k.data_ptr(), v.data_ptr()
    assert ks + half * 4 <= vs or vs + half * 4 <= ks
    small = _buffers(ctx, 8 * 1024, lambda: (ctx.inputs.take((1024,), torch.float32),))
    base = ctx.inputs._base[torch.float32]  # sets that fit come from the pool again
    assert all(base.data_ptr() <= t.data_ptr() < base.data_ptr() + ctx.inputs.size for (t,) in small)
