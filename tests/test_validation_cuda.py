"""The harness on a CUDA GPU: graph-replayed and eager rows, the grouped-GEMM variant, device time below
the eager time. Skips without CUDA (CI has none); run on a GPU machine with
``python -m pytest --noconftest tests/test_validation_cuda.py`` (needs only torch and pytest)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytestmark = [pytest.mark.torch, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")]


def test_measure_graph_times_device_work() -> None:
    from validation.bench_common import QUICK_POLICY, DeviceTimer, measure, measure_graph

    dev = torch.device("cuda", 0)
    n = 64 * 2 ** 20  # 256 MiB of fp32 per buffer: far past L2, one copy ~0.2 ms at HBM speed
    src, dst = torch.randn(n, device=dev), torch.empty(n, device=dev)
    timer = DeviceTimer(dev)
    g = measure_graph(lambda i: dst.copy_(src), timer, QUICK_POLICY, buffers=1)
    e = measure(lambda i: dst.copy_(src), timer, QUICK_POLICY)
    bw = 2 * 4 * n / g.stats.median_s
    assert 0.5e12 < bw < 6e12, bw  # an HBM GPU's copy rate, not a cache's or the host's
    assert abs(g.stats.median_s / e.stats.median_s - 1) < 0.15  # bandwidth-bound: both timings agree
    tiny_a, tiny_b = torch.randn(16, 16, device=dev), torch.randn(16, 16, device=dev)
    tg = measure_graph(lambda i: torch.mm(tiny_a, tiny_b), timer, QUICK_POLICY, buffers=1)
    te = measure(lambda i: torch.mm(tiny_a, tiny_b), timer, QUICK_POLICY)
    assert tg.stats.median_s < te.stats.median_s  # launch-bound: the graph hides the host's dispatch


def test_quick_cuda_run(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "validation.harness", "--device", "cuda", "--quick", "--out",
                           str(tmp_path), "--ops", "gemm,grouped_ffn,attention,memcopy"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "kernels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["cuda_graphs"] is True and env["device"] == "cuda"
    by = {}
    for r in rows:
        by.setdefault((r["op"], r["variant"].removesuffix("_eager"), r["m"], r["tokens_total"], r["routing"],
                       r["seq_len"], r["context_len"], r["size_bytes"]), {})[r["variant"].endswith("_eager")] = r
    pairs = [p for p in by.values() if len(p) == 2]
    assert pairs and all(p[False]["timing"] == "cuda_graph" and p[True]["timing"] == "cuda_events" for p in pairs)
    for p in pairs:  # device time never exceeds the eager loop's by more than noise
        assert float(p[False]["median_s"]) < 1.2 * float(p[True]["median_s"]), p
    assert {r["variant"] for r in rows if r["op"] == "memcopy"} >= {"copy", "copy_eager", "h2d", "d2h"}
    if hasattr(torch, "_grouped_mm") and torch.cuda.get_device_capability()[0] >= 9:
        assert any(r["variant"] == "grouped_mm_swiglu" for r in rows)
    if torch.cuda.get_device_capability() >= (8, 9):  # fp8 tensor cores: fp8 GEMMs by default
        f8 = [r for r in rows if r["dtype"] == "fp8"]
        assert f8 and {(r["op"], r["variant"].removesuffix("_eager")) for r in f8} == {("gemm", "scaled_mm")}
        assert any(r["timing"] == "cuda_graph" for r in f8)
