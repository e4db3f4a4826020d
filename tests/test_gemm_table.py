"""Measured GEMM tables (CPU profiles): interpolation by hand, grid points reproduced, grouped = loop of calls."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.costs import kernels as K
from simfoe.errors import SpecError
from simfoe.specs.hardware import GemmTable
from simfoe.specs.io import load_hardware

CPU = load_hardware("cpu-intel-xeon-amx")
TAB = GemmTable.model_validate({"m": [1, 4, 16], "n0": 1024, "k0": 1024, "n": [1024, 4096], "k": [1024, 4096],
                                "eff_n": [[0.1, 0.2, 0.8], [0.05, 0.1, 0.4]],
                                "eff_k": [[0.1, 0.2, 0.8], [0.1, 0.3, 0.9]]})


def test_table_efficiency_by_hand():
    # grid points
    assert K.table_efficiency(TAB, 4, 1024, 1024) == pytest.approx(0.2)
    assert K.table_efficiency(TAB, 4, 4096, 1024) == pytest.approx(0.1)
    assert K.table_efficiency(TAB, 4, 1024, 4096) == pytest.approx(0.3)
    # m = 8 is half-way between 4 and 16 in log m: (0.2 + 0.8) / 2
    assert K.table_efficiency(TAB, 8, 1024, 1024) == pytest.approx(0.5)
    # n = 2048 is half-way between 1024 and 4096 in log n: (0.2 + 0.1) / 2
    assert K.table_efficiency(TAB, 4, 2048, 1024) == pytest.approx(0.15)
    # n and k off the slices combine multiplicatively around (n0, k0): 0.1 * 0.3 / 0.2
    assert K.table_efficiency(TAB, 4, 4096, 4096) == pytest.approx(0.15)
    # clamped outside the measured ranges
    assert K.table_efficiency(TAB, 64, 1024, 1024) == pytest.approx(0.8)
    assert K.table_efficiency(TAB, 4, 512, 1024) == pytest.approx(0.2)


def test_table_validation_errors():
    with pytest.raises(ValueError):
        GemmTable.model_validate({"m": [4, 1], "n0": 1, "k0": 1, "n": [1], "k": [1], "eff_n": [[1, 1]], "eff_k": [[1, 1]]})
    with pytest.raises(ValueError):
        GemmTable.model_validate({"m": [1, 4], "n0": 2, "k0": 1, "n": [1], "k": [1], "eff_n": [[1, 1]], "eff_k": [[1, 1]]})
    with pytest.raises(ValueError):
        GemmTable.model_validate({"m": [1, 4], "n0": 1, "k0": 1, "n": [1], "k": [1], "eff_n": [[1]], "eff_k": [[1, 1]]})


def test_committed_profile_reproduces_its_measurements():
    """Every GEMM row on the table's slices is priced at its measured time (5 significant digits)."""
    import pandas as pd

    from simfoe.paths import REPO_ROOT

    k = pd.read_csv(REPO_ROOT / "validation" / "data" / "cpu-intel-xeon-amx-2026-11-23" / "kernels.csv")
    tab = CPU.gemm_tables["fp32"]
    rows = k[(k.op == "gemm") & (k.variant == "mm") & (k.threads == 1) & (k.dtype == "fp32") & (k.k == tab.k0)
             & k.n.isin(tab.n)]  # the warm rows: the cold ones (mm_cold) are kept as a bound, not fitted
    assert len(rows) == len(tab.m) * len(tab.n)
    for r in rows.itertuples():
        assert K.gemm(CPU, r.m, r.n, r.k, "fp32").latency_s == pytest.approx(r.cpu_median_s, rel=1e-3)


def test_table_prices_only_its_dtypes():
    assert set(CPU.gemm_tables) == {"fp32", "bf16"}
    with pytest.raises(SpecError):
        K.gemm(CPU, 8, 1024, 1024, "fp8")  # no fp8 peak on a CPU profile
    raw = CPU.model_copy(update={"gemm_tables": {}})
    assert K.gemm(raw, 8, 1024, 1024, "fp32").latency_s != K.gemm(CPU, 8, 1024, 1024, "fp32").latency_s


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=12), st.sampled_from([512, 1536, 2048]),
       st.sampled_from([768, 1024, 4096]))
def test_grouped_is_sum_of_single_calls(loads, n, k):
    g = K.grouped_gemm(CPU, loads, n, k, "fp32")
    loop = sum(K.gemm(CPU, t, n, k, "fp32").latency_s for t in loads if t > 0)
    assert g.latency_s == pytest.approx(loop, rel=1e-12)
    assert g.flops == 2.0 * sum(loads) * n * k


@settings(max_examples=100, deadline=None)
@given(st.floats(1, 4096), st.floats(64, 16384), st.floats(64, 16384))
def test_never_faster_than_peak_flops(m, n, k):
    c = K.gemm(CPU, m, n, k, "fp32")
    assert c.latency_s >= c.flops / CPU.peak("fp32") * (1 - 1e-9)
    assert math.isfinite(c.latency_s)
