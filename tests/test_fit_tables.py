"""Kernel tables as a calibration source (simfoe.calibration.fit_tables, `simfoe calibrate --from-tables`)."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from simfoe.calibration import fit_tables as FT
from simfoe.costs import kernels as K
from simfoe.specs.io import load_hardware


def test_balanced_loads_hand_computed():
    # 32 tokens x top-8 over 256 experts on one GPU: one row each
    assert FT.balanced_loads(32, 8, 256, 1) == ";".join(["1"] * 256)
    # 10 tokens x top-2 over 8 experts, EP 2: 4 local experts share 10 rows -> 3, 3, 2, 2
    assert FT.balanced_loads(10, 2, 8, 2) == "3;3;2;2"
    # 1 token x top-8 over 256 experts, EP 8: 32 local experts, share 1 row
    loads = [int(x) for x in FT.balanced_loads(1, 8, 256, 8).split(";")]
    assert len(loads) == 32 and sum(loads) == 1


def test_grouped_loads_hand_computed():
    """DeepSeek-V3's group-limited routing of the collector's tied balanced logits (8 groups of 32, 4 kept,
    ties to the lower index): one token selects experts 0, 32, ..., 224 (one per group); groups 0-3 are kept,
    so it takes 0, 32, 64, 96 and then the lowest-numbered others, 1, 2, 3, 4."""
    rows = [int(x) for x in FT.grouped_loads(1, 8, 256, 1, 8, 4).split(";")]
    assert [e for e, r in enumerate(rows) if r] == [0, 1, 2, 3, 4, 32, 64, 96]
    # 64 tokens: experts 0-3 take every token, and every row is still one of the 64 x 8 slots
    many = [int(x) for x in FT.grouped_loads(64, 8, 256, 1, 8, 4).split(";")]
    assert many[:4] == [64] * 4 and sum(many) == 64 * 8 and not any(many[128:])
    # EP 64: rank 0 holds experts 0-3 only
    assert FT.grouped_loads(64, 8, 256, 64, 8, 4) == "64;64;64;64"


@given(st.lists(st.tuples(st.integers(1, 65536), st.integers(1, 65536)), min_size=1, max_size=50))
def test_hold_out_is_a_function_of_the_shape(shapes):
    keys = [FT.shape_key_hash(n, k) for n, k in shapes]
    held = FT.held_out(keys)
    again = FT.held_out([FT.shape_key_hash(n, k) for n, k in shapes])
    assert (held == again).all()
    by_shape = {}
    for s, h in zip(shapes, held):
        assert by_shape.setdefault(s, h) == h


def test_mla_flag_prices_with_the_mla_family_when_fitted():
    hw = load_hardware("h100-sxm")
    base = K.attention_prefill(hw, 4, 8192, 8192, 16, 16, 192, mla=True).latency_s
    assert base == K.attention_prefill(hw, 4, 8192, 8192, 16, 16, 192).latency_s  # no MLA family: the plain one
    fam = {**hw.kernels["attention_prefill"], "eff_max": hw.kernels["attention_prefill"]["eff_max"] / 2}
    hw2 = hw.model_copy(update={"kernels": {**hw.kernels, "attention_prefill_mla": fam}})
    slow = K.attention_prefill(hw2, 4, 8192, 8192, 16, 16, 192, mla=True).latency_s
    assert slow > 1.8 * base  # compute-bound: half the efficiency, about twice the time
    assert K.attention_prefill(hw2, 4, 8192, 8192, 16, 16, 192).latency_s == base


def _tables(shared_data, system: str):
    root = shared_data / "aiconfigurator" / system
    if not (root / "gemm").is_dir():
        pytest.skip(f"{root} has no kernel tables")
    return FT.find_tables(root, "sglang")


@pytest.fixture(scope="module")
def h100_tables(shared_data):
    return _tables(shared_data, "h100_sxm")


def test_mla_context_fit_holds_out_within_bound(h100_tables):
    """Issue 25's bound for MLA (held-out MAPE <= 10%), on shapes the fit never saw."""
    parts = [p for p in FT.table_parts(h100_tables) if p.family == "attention_prefill_mla"]
    hw0 = load_hardware("h100-sxm")
    kern = FT.fit_parts(hw0, dict(hw0.kernels), parts)
    errs = FT.part_errors(hw0.model_copy(update={"kernels": kern}), parts)["mla context bf16"]
    assert errs["held_out"]["rows"] > 100 and errs["fitted"]["rows"] > 3 * errs["held_out"]["rows"] / 2
    assert errs["held_out"]["mape_pct"] <= 10.0
    assert 0.9 < errs["held_out"]["median_ratio"] < 1.1


def test_stored_h100_tables_profile_holds_gemm_bound(h100_tables):
    """Issue 25's GEMM bound (held-out MAPE <= 8%) with the committed profile (form + correction grid)."""
    parts = [p for p in FT.table_parts(h100_tables) if p.label == "gemm bf16"]
    errs = FT.part_errors(load_hardware("h100-sxm-tables"), parts)["gemm bf16"]
    assert errs["held_out"]["mape_pct"] <= 8.0
    assert 0.95 < errs["held_out"]["median_ratio"] < 1.05


def test_gemm_correction_grid_fit_recovers_a_known_factor(h100_tables):
    """Rows measured exactly 1.5x the smooth form: the fitted grid scales every shape by about 1.5."""
    import numpy as np

    hw = load_hardware("h100-sxm")
    rows = [p for p in FT.table_parts(h100_tables) if p.label == "gemm bf16"][0].rows.iloc[::40].copy()
    rows["t_s"] = 1.5 * FT.predict_rows(hw, rows)
    g = FT.fit_gemm_correction(hw, rows)
    from simfoe.specs.hardware import GemmCorrection

    hw2 = hw.model_copy(update={"gemm_corrections": {"bf16": GemmCorrection.model_validate(g)}})
    ratio = FT.predict_rows(hw2, rows) / rows.t_s.to_numpy()
    assert np.median(np.abs(ratio - 1.0)) < 0.02


def test_gemm_correction_l1_rounds_follow_the_majority():
    """Every m, n, k at one grid node: 9 rows measured 1.2x the smooth form and one 3x. Least squares takes the mean
    log ratio (damped); the reweighted rounds (CORRECTION_L1) take the median, 1.2x."""
    import math

    import numpy as np
    import pandas as pd

    from simfoe.specs.hardware import GemmCorrection

    hw = load_hardware("h100-sxm")
    rows = pd.DataFrame({"op": "gemm", "variant": "dense", "dtype": "bf16", "m": 1024, "n": 2048, "k": 2048},
                        index=range(10))
    rows["t_s"] = FT.predict_rows(hw, rows) * np.array([1.2] * 9 + [3.0])

    def node(g):  # the grid's factor at m = 1024, n = k = 2048 (log2 10, 11, 11: grid nodes)
        hw2 = hw.model_copy(update={"gemm_corrections": {"bf16": GemmCorrection.model_validate(g)}})
        return K.gemm_correction(hw2, "bf16", 1024, 2048, 2048)

    ls, l1 = node(FT.fit_gemm_correction(hw, rows)), node(FT.fit_gemm_correction(hw, rows, 8))
    mean = math.exp(np.mean(np.log([1.2] * 9 + [3.0])))  # 1.318
    assert ls == pytest.approx(mean, rel=0.01)
    assert l1 == pytest.approx(1.2, rel=0.01)


def test_gemm_correction_interpolates_in_log2():
    import math

    from simfoe.specs.hardware import GemmCorrection

    hw = load_hardware("h100-sxm")
    # ln ratio 0 at m = 1 (log2 0) and ln 2 at m = 4 (log2 2), flat in n and k: m = 2 sits halfway -> sqrt(2)
    g = GemmCorrection(log2_m=[0, 2], log2_n=[5, 15], log2_k=[5, 15], log_ratio=[0.0] * 4 + [math.log(2)] * 4)
    hw2 = hw.model_copy(update={"gemm_corrections": {"bf16": g}})
    assert K.gemm_correction(hw2, "bf16", 2, 4096, 4096) == pytest.approx(math.sqrt(2))
    assert K.gemm_correction(hw2, "bf16", 64, 4096, 4096) == pytest.approx(2.0)  # clamped past the grid
    assert K.gemm_correction(hw2, "fp8", 2, 4096, 4096) == 1.0  # no grid for fp8
    base = K.gemm(hw, 2, 4096, 4096).latency_s
    assert K.gemm(hw2, 2, 4096, 4096).latency_s == pytest.approx(math.sqrt(2) * base)


def test_cli_from_tables_bad_input(refused, tmp_path, shared_data):
    refused(["calibrate", "--from-tables", tmp_path / "nope", "--base", "h100-sxm"], "--from-tables", "nope", "existing folder")
    refused(["calibrate", "--from-tables", tmp_path, "--base", "h100-sxm"], "--from-tables", "gemm/sglang")
    refused(["calibrate", "--from-tables", tmp_path], "--base", "published profile")
    refused(["calibrate", "--from-tables", tmp_path, "--base", "h100-sxm", "--device", "cpu"], "--device", "not with --from-tables")
    refused(["calibrate", "--from", tmp_path, "--framework", "vllm"], "--framework", "only with --from-tables")
    root = shared_data / "aiconfigurator" / "h100_sxm"
    if root.is_dir():
        refused(["calibrate", "--from-tables", root, "--base", "b300-nvl", "--json"], "--base", "b300-nvl", "h100-sxm")


def test_cli_fits_a_synthetic_table_end_to_end(tmp_path, capsys):
    """A gemm-only table in AIConfigurator's layout (latency in ms, made from h100-sxm's own predictions):
    the CLI writes a loadable profile whose fitted and held-out GEMM errors are small, and the parts the
    folder lacks (moe, attention, mla) are simply absent."""
    import itertools
    import json

    import pandas as pd

    from simfoe.cli import main

    hw = load_hardware("h100-sxm")
    rows = []
    for dt, name in (("bf16", "bfloat16"), ("fp8", "fp8")):
        for m, n, k in itertools.product((1, 16, 128, 1024, 8192), (256, 1024, 4096, 16384), (512, 2048, 8192)):
            rows.append({"gemm_dtype": name, "m": m, "n": n, "k": k, "kernel_source": "x",
                         "latency": K.gemm(hw, m, n, k, dt).latency_s * 1e3})
    d = tmp_path / "tables" / "gemm" / "sglang" / "9.9"
    d.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(d / "gemm_perf.parquet")
    out = tmp_path / "synthetic-tables.yaml"
    assert main(["calibrate", "--from-tables", str(tmp_path / "tables"), "--base", "h100-sxm", "--out", str(out),
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["parts"]) == {"gemm bf16", "gemm fp8 (per-tensor)"}
    for part in r["parts"].values():
        assert part["fitted"]["mape_pct"] < 3.0 and part["held_out"]["rows"] > 0
        assert part["held_out"]["mape_pct"] < 5.0
    prof = load_hardware(str(out))
    assert set(prof.gemm_corrections) == {"bf16", "fp8"}
    assert "gemm_perf.parquet" in prof.provenance["kernels.gemm"] and "9.9" in prof.provenance["kernels.gemm"]


def test_decode_per_sequence_head_term_adds_its_seconds():
    hw = load_hardware("h100-sxm")
    base = K.attention_decode(hw, 4, 1024, 16, 2, 128).latency_s
    fam = {**hw.kernels["attention_decode"], "per_seq_head_s": 1e-6}
    hw2 = hw.model_copy(update={"kernels": {**hw.kernels, "attention_decode": fam}})
    assert K.attention_decode(hw2, 4, 1024, 16, 2, 128).latency_s == pytest.approx(base + 4 * 2 * 1e-6)


def test_forward_prices_mla_models_with_the_mla_families():
    """DeepSeek-V3 decode on h100-sxm-tables: its attention follows attention_decode_mla (a GQA model would not)."""
    from simfoe.api import forward

    kw = dict(model="deepseek-v3", hardware="h100-sxm-tables", nodes=1, arch="moe", phase="decode", batch=64,
              seq_len=4096, routing="uniform")
    def attention(*overrides):
        return forward(overrides=list(overrides), **kw)["breakdown_s"]["attention"]

    base = attention()
    assert attention("hardware.kernels.attention_decode_mla.per_seq_head_s=1e-5") > base + 1e-5 * 64  # >= 1 layer
    assert attention("hardware.kernels.attention_decode.per_seq_head_s=1e-5") == base  # the GQA family: unused


def test_fp4_families_price_fp4_math_only():
    """gemm_fp4 / grouped_gemm_fp4 over gemm / grouped_gemm: nvfp4 x nvfp4 runs at the fp4 peak with them;
    bf16 and weight-only fp4 (bf16 math) ignore them."""
    hw0 = load_hardware("b200-sxm-datasheet")
    hw, hw2 = (hw0.model_copy(update={"kernels": {"gemm_fp4": f, "grouped_gemm_fp4": f}})
               for f in ({"eff_max": 1.0, "launch_s": 0.0}, {"eff_max": 0.5, "launch_s": 0.0}))
    big = (8192, 8192, 8192)  # compute-bound: half the efficiency, twice the time
    assert K.gemm(hw2, *big, "nvfp4").latency_s == pytest.approx(2 * K.gemm(hw, *big, "nvfp4").latency_s, rel=0.02)
    assert K.gemm(hw2, *big, "bf16").latency_s == K.gemm(hw, *big, "bf16").latency_s
    assert K.gemm(hw2, *big, "bf16", "nvfp4").latency_s == K.gemm(hw, *big, "bf16", "nvfp4").latency_s
    loads = [4096] * 8
    slow, fast = (K.grouped_gemm(h, loads, 4096, 7168, "nvfp4").latency_s for h in (hw2, hw))
    assert slow == pytest.approx(2 * fast, rel=0.02)


@pytest.fixture(scope="module")
def b200_tables(shared_data):
    return _tables(shared_data, "b200_sxm")


def test_blackwell_tables_fit_fp4_parts_on_sm100_kernels(b200_tables):
    assert b200_tables.blackwell
    parts = {p.label: p for p in FT.table_parts(b200_tables)}
    assert {"gemm nvfp4", "fused moe nvfp4", "attention context bf16", "mla generation bf16"} <= set(parts)
    assert parts["gemm nvfp4"].family == "gemm_fp4" and parts["fused moe nvfp4"].family == "grouped_gemm_fp4"
    # one kernel per part: FlashInfer's TRT-LLM fused MoE (the Triton kernel's rows dropped), TRT-LLM attention
    assert len(parts["fused moe bf16"].rows) < len(parts["fused moe nvfp4"].rows) * 1.5


def test_training_draw_spans_the_token_sweep(b200_tables):
    """The fit's FIT_ROWS rows cover the swept token counts (every j-th row once drew a single one: j = 27 =
    the counts swept on B200's nvfp4 fused-MoE table)."""
    p = [p for p in FT.table_parts(b200_tables) if p.label == "fused moe nvfp4"][0]
    tr = FT._train(p.rows)
    rows = {sum(int(x) for x in s.split(";")) for s in tr.tokens_per_expert}
    assert len(tr) == FT.FIT_ROWS and len(rows) > 20
    assert not tr.held.any()


def test_every_blackwell_table_source_has_a_tolerance():
    """simfoe validate judges the B200 and GB200 tables (issue 25.5): each source table_sources yields for them
    has a bound in validation/tolerances.yaml, and each is judged with a profile that exists."""
    from simfoe.calibration import regression as R
    from simfoe.specs.io import list_presets

    tol = R.load_tolerances()["sources"]
    parts = ("gemm:bf16", "gemm:fp8", "gemm:fp8_block", "gemm:nvfp4", "moe:bf16", "moe:fp8_block", "moe:nvfp4",
             "attention:context", "attention:generation", "mla:context", "mla:generation")
    for system in ("b200_sxm", "gb200"):
        assert set(R.TABLE_SYSTEMS[system]) <= set(list_presets("hardware"))
        for p in parts:
            for split in ("fitted", "held_out"):
                assert f"kernels:{system}:{p}:{split}" in tol
        for op in ("all_reduce", "all_gather", "reduce_scatter", "alltoall"):
            assert {f"nccl:{system}:{op}", f"nccl:{system}:{op}:small", f"nccl:{system}:{op}:2gpu"} <= set(tol)


def test_fused_moe_rows_pay_for_every_routed_slot(b200_tables):
    """A fused-MoE table row hands all T x top-k slots to the kernel whatever the EP: at EP = E (one local
    expert) its price is the local experts' GEMMs plus moe_slots of the T x top-k slots, not of the local rows."""
    from simfoe.calibration.fit_profile import predict_kernel_row

    hw = load_hardware("b200-sxm")
    assert hw.kernels["grouped_gemm"].get("slot_bytes", 0.0) > 0.0
    p = [p for p in FT.table_parts(b200_tables) if p.label == "fused moe bf16"][0]
    one = p.rows[p.rows.tokens_per_expert.str.count(";") == 0].iloc[[-1]]  # one local expert
    r = next(one.itertuples(index=False))
    local = float(r.tokens_per_expert)
    assert r.slots > local
    walked = predict_kernel_row(hw, r)
    # without the column: the local rows, as a serving GPU that received only its own tokens
    alone = predict_kernel_row(hw, next(one.drop(columns="slots").itertuples(index=False)))
    extra = K.moe_slots(hw, r.slots, int(r.k), int(r.n)).latency_s - K.moe_slots(hw, local, int(r.k), int(r.n)).latency_s
    assert walked - alone == pytest.approx(extra) and extra > 0.0


@pytest.mark.parametrize("system, profile", [("b200_sxm", "b200-sxm"), ("gb200", "gb200-nvl72")])
def test_stored_blackwell_profiles_hold_attention_bounds(shared_data, system, profile):
    """Issue 25's attention and MLA bound (held-out MAPE <= 10%) with the committed Blackwell profiles, on the four
    attention parts; MLA decode at 32 query heads (TRT-LLM's two 16-head groups, kernels.MLA_DECODE_HEAD_TILES) is
    no longer priced fast on median."""
    import numpy as np

    ts = _tables(shared_data, system)
    hw = load_hardware(profile)
    parts = [p for p in FT.table_parts(ts) if p.family.startswith("attention")]
    errs = FT.part_errors(hw, parts)
    assert len(errs) == 4
    for label, e in errs.items():
        assert e["held_out"]["mape_pct"] <= 10.0, label
    dec = [p for p in parts if p.family == "attention_decode_mla"][0].rows
    h32 = dec[dec.heads == 32]
    assert 0.9 < float(np.median(FT.predict_rows(hw, h32) / h32.t_s.to_numpy())) < 1.1


def test_non_gated_rows_price_one_up_projection(b200_tables):
    """Nemotron-3's experts are relu^2, two matrices (fit_tables.NON_GATED): its rows carry gated = 0 and are priced
    with an up projection of n = inter / TP columns, not 2n; the other shapes keep the gate (gated = 1)."""
    from simfoe.calibration.fit_profile import predict_kernel_row

    rows = [p for p in FT.table_parts(b200_tables) if p.label == "fused moe bf16"][0].rows
    shape = list(zip(rows.k, rows.n))
    assert set(rows.gated[[s == (8192, 5120) for s in shape]]) == {0}  # Nemotron-3 Ultra at TP 1
    assert set(rows.gated[[s == (4096, 1536) for s in shape]]) == {1}  # Qwen3-235B-A22B at TP 1
    hw = load_hardware("b200-sxm")
    r = next(rows[rows.gated == 0].iloc[[0]].itertuples(index=False))
    loads = [float(x) for x in r.tokens_per_expert.split(";")]
    k, n = int(r.k), int(r.n)
    gated = next(rows[rows.gated == 0].iloc[[0]].assign(gated=1).itertuples(index=False))
    up_gap = K.grouped_gemm(hw, loads, 2 * n, k).latency_s - K.grouped_gemm(hw, loads, n, k).latency_s
    assert predict_kernel_row(hw, gated) - predict_kernel_row(hw, r) == pytest.approx(up_gap) and up_gap > 0.0
