"""Prefill-decode disaggregation (issue 24.1): KV conservation, causality, the decode side's KV bound,
and the hand-checked equivalence with an aggregated run whose prefill and decode never share an iteration."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from simfoe.errors import SpecError
from simfoe.serving import EngineConfig, LinearStep, simulate
from simfoe.serving.disagg import DisaggConfig, Pool, place_workers, simulate_disagg
from simfoe.specs.io import load_hardware
from simfoe.workloads import RequestTable
from simfoe.workloads.closed_loop import ClosedLoop

LIN = LinearStep(base_s=0.01, per_prefill_token_s=1e-4, per_decode_seq_s=1e-3)
HW = load_hardware("h100-sxm")


def test_one_worker_each_free_transfer_reproduces_aggregated_hand_checked():
    # two requests far apart: the aggregated run prefills each alone, then decodes it alone
    # prefill 0.01 + 100 x 1e-4 = 0.02 s (TTFT); 4 decode steps of 0.01 + 1e-3 = 0.011 s: e2e 0.064 s
    # second: 0.01 + 200 x 1e-4 = 0.03 s; 2 decode steps: e2e 0.052 s
    t = RequestTable.from_arrays(np.array([0.0, 10.0]), np.array([100, 200]), np.array([5, 3]))
    agg = simulate(t, LIN, 100_000).records
    dis = simulate_disagg(t, Pool(LIN, 100_000), Pool(LIN, 100_000), DisaggConfig(transfer="instant")).records
    assert agg["ttft_s"].tolist() == pytest.approx([0.02, 0.03])
    assert agg["e2e_s"].tolist() == pytest.approx([0.064, 0.052])
    for col in ("ttft_s", "e2e_s", "tbt_mean_s", "queue_s", "generated_tokens"):
        assert dis[col].tolist() == pytest.approx(agg[col].tolist()), col
    assert (dis["kv_arrived_s"] == dis["prefill_end_s"]).all()


def test_layerwise_hides_all_but_the_last_layer_after_hides_nothing():
    # one 8-GPU worker per pool on separate nodes: 1000 tokens x 1e5 B x 8 GPUs = 800 MB over 8 NICs
    t = RequestTable.from_arrays(np.array([0.0]), np.array([1000]), np.array([2]))
    pools = [Pool(LIN, 100_000, gpus=8, kv_bytes_per_token_per_gpu=1e5, layers=50) for _ in range(2)]
    exp = {m: simulate_disagg(t, *pools, DisaggConfig(m, hardware=HW)).summary["disagg"]["transfer"]["exposed_s"]["mean"]
           for m in ("after", "layerwise")}
    nic = HW.nic_rate
    assert exp["after"] >= 1e8 / nic  # each NIC carries 100 MB
    # prefill takes 0.11 s, long enough to stream 49/50 of the bytes: only the last layer's share shows
    assert 1e8 / 50 / nic <= exp["layerwise"] < 1.5 * 1e8 / 50 / nic + 1e-4


def _table(seed, n):
    rng = np.random.default_rng(seed)
    return RequestTable.from_arrays(np.sort(rng.uniform(0, 2, n)), rng.integers(2, 3000, n), rng.integers(1, 40, n))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 10_000), n=hs.integers(1, 40), xp=hs.integers(1, 3), yd=hs.integers(1, 3),
       gpus=hs.sampled_from([(1, 1), (2, 4), (8, 8), (16, 8)]), kv=hs.integers(3000, 20_000),
       mode=hs.sampled_from(["after", "layerwise", "prefill-first"]), first=hs.sampled_from(["prefill", "decode"]),
       max_batch=hs.integers(1, 8))
def test_kv_conserved_causal_and_bounded(seed, n, xp, yd, gpus, kv, mode, first, max_batch):
    """Both orders (mode prefill-first: the KV sent after prefill, once the decode rank has room)."""
    t = _table(seed, n)
    per = 2e4
    pre = Pool(LIN, 50_000, workers=xp, gpus=gpus[0], kv_bytes_per_token_per_gpu=per, layers=30)
    dec = Pool(LIN, kv, workers=yd, gpus=gpus[1], kv_bytes_per_token_per_gpu=per, layers=30,
               engine=EngineConfig(max_batch=max_batch))
    order = "prefill-first" if mode == "prefill-first" else "decode-first"
    r = simulate_disagg(t, pre, dec, DisaggConfig("after" if order == "prefill-first" else mode, first, HW,
                                                  order=order))
    rec, de = r.records, r.engine
    done = rec["completed"].to_numpy()
    too_big = np.ceil((t.prompt_tokens + t.output_tokens - 1) / 16) > kv // 16
    assert (~done).tolist() == too_big.tolist()
    moved = rec["kv_arrived_s"].notna().to_numpy()
    assert (moved == done).all()  # every completed request's KV arrived, a dropped one's never left
    # conservation: each KV byte of the prompt is sent once (decode: all but the recomputed last token)
    sent = t.prompt_tokens - (first == "decode")
    assert rec.loc[done, "kv_bytes"].to_numpy() == pytest.approx(sent[done] * per * gpus[1])
    net = de.net.bytes_by_tag.get("kv", {"intra_node": 0.0, "inter_node": 0.0})  # none when every request is dropped
    assert net["intra_node"] + net["inter_node"] == pytest.approx(rec["kv_bytes"].sum())
    d = rec[done]
    assert (d["first_token_s"] >= d["kv_arrived_s"]).all()  # no token before the KV is there
    assert (d["kv_arrived_s"] >= d["prefill_end_s"]).all()
    assert (d["prefill_end_s"] > d["prefill_start_s"]).all() and (d["prefill_start_s"] >= d["arrival_s"]).all()
    # TTFT >= prefill + exposed transfer
    assert (d["ttft_s"] >= (d["prefill_end_s"] - d["prefill_start_s"]) + (d["kv_arrived_s"] - d["prefill_end_s"])
            - 1e-12).all()
    # every KV block returned on both sides
    for eng in (de.pre, de.dec):
        assert all(q.kv.free == q.kv.total for rep in eng.replicas for q in rep.ranks)


def test_decode_room_bounds_transfers_in_flight():
    # the decode worker holds one 1000-token prompt (+ its output) at a time: transfers queue for room
    t = RequestTable.from_arrays(np.zeros(4), np.full(4, 1000), np.full(4, 10))
    dec = Pool(LIN, 1100, kv_bytes_per_token_per_gpu=1e3, gpus=8)
    r = simulate_disagg(t, Pool(LIN, 100_000, workers=4, gpus=8, kv_bytes_per_token_per_gpu=1e3), dec,
                        DisaggConfig("after", hardware=HW))
    rec = r.records.sort_values("kv_reserved_s")
    assert rec["completed"].all()
    # each reservation waits for the previous request to finish decoding
    assert (rec["kv_reserved_s"].to_numpy()[1:] >= rec["finish_s"].to_numpy()[:-1]).all()
    assert r.summary["disagg"]["transfer"]["wait_for_room_s"]["p99"] > 0


def test_prefill_first_hides_the_prefill_behind_the_wait_for_decode_room_hand_checked():
    """One decode slot, two 100-token prompts at t = 0, prefilled one at a time (0.01 + 100 x 1e-4 = 0.02 s
    each), 3 output tokens (the prefill's, then 2 decode steps of 0.01 + 1e-3 s), KV free and instant.
    decode-first: B takes the slot when A ends (0.02 + 2 x 0.011 = 0.042 s), then is prefilled: TTFT 0.062 s.
    prefill-first: B is prefilled 0.02-0.04 s while A decodes and takes the slot at 0.042 s: TTFT 0.042 s."""
    t = RequestTable.from_arrays(np.zeros(2), np.array([100, 100]), np.array([3, 3]))
    pre = Pool(LIN, 100_000, engine=EngineConfig(max_batch=1))
    dec = Pool(LIN, 100_000, engine=EngineConfig(max_batch=1))
    ttft = {o: simulate_disagg(t, pre, dec, DisaggConfig("instant", order=o)).records["ttft_s"].tolist()
            for o in ("decode-first", "prefill-first")}
    assert ttft["decode-first"] == pytest.approx([0.02, 0.062])
    assert ttft["prefill-first"] == pytest.approx([0.02, 0.042])
    with pytest.raises(SpecError, match="kv_transfer"):  # layerwise streams while prefill runs: needs the room
        DisaggConfig("layerwise", hardware=HW, order="prefill-first")
    with pytest.raises(SpecError, match="disagg_order"):
        DisaggConfig("instant", order="sideways")


def test_closed_loop_completes_every_prompt():
    r = simulate_disagg(ClosedLoop(concurrency=4, isl=500, osl=20, num_prompts=12, warmup=4),
                        Pool(LIN, 100_000, gpus=8, kv_bytes_per_token_per_gpu=1e4),
                        Pool(LIN, 100_000, workers=2, gpus=8, kv_bytes_per_token_per_gpu=1e4),
                        DisaggConfig("layerwise", hardware=HW))
    assert r.summary["requests"]["completed"] == 12 and len(r.records) == 12
    assert r.summary["disagg"]["gpus"] == 24


def test_place_workers_packs_inside_nodes_and_starts_each_pool_on_a_fresh_node():
    (pre, dec), nodes = place_workers(((3, 3), (2, 16)), 8)
    assert [g.tolist() for g in pre] == [[0, 1, 2], [3, 4, 5], [8, 9, 10]]  # the third would straddle node 0
    assert [g[0] for g in dec] == [16, 32] and nodes == 6


def test_bad_names_are_refused():
    with pytest.raises(SpecError, match="kv_transfer"):
        DisaggConfig("sideways", hardware=HW)
    with pytest.raises(SpecError, match="first_token"):
        DisaggConfig("instant", "middle")
    with pytest.raises(SpecError, match="hardware"):
        DisaggConfig("after")


def test_presets_pools_from_specs_and_xpyd():
    from simfoe.serving.disagg_api import DisaggRun, parse_xpyd, simulate_disagg_serving

    pre = {"arch": "moe", "gpus": 2, "moe": {"attention": "tp", "attention_tp": 2}, "engine": {"token_budget": 4096}}
    dec = {"arch": "moe", "gpus": 1, "workers": 3}
    r = simulate_disagg_serving("qwen3-32b", "h100-sxm", pre, dec, ClosedLoop(concurrency=3, isl=300, osl=4),
                                run=DisaggRun(xpyd=parse_xpyd("2:1"), overrides=("model.dtype=fp8",)))
    s = r.summary
    assert s["xpyd"] == "2:1" and s["requests"]["completed"] == 30
    assert s["disagg"]["prefill"]["gpus_per_worker"] == 2 and s["disagg"]["decode"]["workers"] == 1
    assert s["disagg"]["gpus"] == 5 and s["disagg"]["prefill"]["token_budget"] == 4096
    # one 2-GPU prefill worker's KV (TP 2: each GPU holds half the heads) lands on the 1-GPU decode worker
    assert s["disagg"]["transfer"]["bytes"]["inter_node"] == pytest.approx(r.records["kv_bytes"].sum())
    with pytest.raises(SpecError, match="xpyd"):
        parse_xpyd("2x1")
    with pytest.raises(SpecError, match="--set"):
        simulate_disagg_serving("qwen3-32b", "h100-sxm", pre, dec, ClosedLoop(concurrency=1, isl=10, osl=2),
                                run=DisaggRun(overrides=("placement.nodes=2",)))


def _pool_files(tmp_path):
    (tmp_path / "p.yaml").write_text("arch: moe\ngpus: 2\nmoe: {attention: tp, attention_tp: 2}\nworkers: 2\n")
    (tmp_path / "d.yaml").write_text("arch: moe\ngpus: 1\nengine: {max_batch: 8}\n")
    return ["serve", "--disagg", "--model", "qwen3-32b", "--hardware", "h100-sxm", "--prefill", tmp_path / "p.yaml",
            "--decode", tmp_path / "d.yaml", "--concurrency", 4, "--isl", 500, "--osl", 8]


def test_cli_serve_disagg_prints_one_json_object(tmp_path, capsys):
    import json

    from simfoe.cli import main

    assert main([str(a) for a in _pool_files(tmp_path) + ["--xpyd", "1:2", "--kv-transfer", "after", "--json"]]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["mode"] == "disagg" and s["xpyd"] == "1:2" and s["requests"]["completed"] == 40
    assert s["disagg"]["kv_transfer"] == "after" and s["disagg"]["gpus"] == 4
    assert s["disagg"]["decode"]["max_batch"] == 8 and s["ttft_s"]["mean"] > 0


@pytest.mark.parametrize("extra, words", [
    (["--xpyd", "2"], ["--xpyd", "PREFILL:DECODE"]),
    (["--kv-transfer", "sideways"], ["--kv-transfer", "layerwise, after, instant"]),
    (["--first-token", "third"], ["--first-token", "prefill, decode"]),
    (["--arch", "moe"], ["--arch", "omitted with --disagg"]),
    (["--replicas", "2"], ["--replicas", "--xpyd"]),
    (["--max-batch", "8"], ["--max-batch", "pool spec's engine"]),
    (["--mtp", "1"], ["--mtp", "pool spec's engine"]),
    (["--set", "placement.nodes=2"], ["--set", "hardware.* or model.*"]),
])
def test_cli_serve_disagg_refuses_bad_input(tmp_path, refused, extra, words):
    refused(_pool_files(tmp_path) + extra, *words)


def test_cli_serve_disagg_refuses_a_bad_pool_spec(tmp_path, refused):
    (tmp_path / "bad.yaml").write_text("arch: moe\nwrkers: 2\n")
    argv = _pool_files(tmp_path)
    argv[argv.index("--prefill") + 1] = tmp_path / "bad.yaml"
    refused(argv, "--prefill.wrkers", "workers")
    refused(["serve", "--model", "qwen3-32b", "--hardware", "h100-sxm", "--concurrency", 1, "--isl", 5, "--osl", 2],
            "--arch", "required unless --disagg")


# ---- disaggregated silicon rows (issue 24.5): mapped from hand-built rows, no shared data needed
def _disagg_row(prefill, decode, **kw):
    import simfoe.calibration.silicon as si

    base = dict(id="d", system="h100_sxm", model_path="Qwen/Qwen3-32B", backend="vllm", backend_version="0.12.0",
                mode="disagg", isl=4000, osl=1000, gemm_quant="fp8", moe_quant="fp8", batch_size=None, tp=None, pp=1,
                adp=1, moe_tp=None, moe_ep=None, ttft_ms=368.0, tpot_ms=8.7, source="image=x",
                prefill=si.PoolColumns(*prefill), decode=si.PoolColumns(*decode))
    base["disagg_concurrency"] = decode[6] * decode[2] * decode[5] if all(decode[i] for i in (2, 5, 6)) else None
    return si.SiliconRow(**{**base, **kw})


def test_complete_disagg_row_maps_to_two_pools():
    import json

    import simfoe.calibration.silicon as si

    # Qwen3-32B vLLM row 678: 8 prefill workers of tp1 (batch 1), 2 decode workers of tp4 (batch 224)
    sc = si.scenario(_disagg_row((1, 1, 1, 0, 0, 8, 1), (4, 1, 1, 0, 0, 2, 224)))
    pre, dec = json.loads(sc.prefill), json.loads(sc.decode)
    assert pre == {"arch": "moe", "nodes": 1, "gpus": 1, "workers": 8, "moe": {"attention": "tp", "attention_tp": 1},
                   "engine": {"max_batch": 1}}
    assert dec["gpus"] == 4 and dec["moe"]["attention_tp"] == 4 and dec["workers"] == 2
    assert sc.concurrency == 448 and sc.max_batch == 224 and "model.dtype=fp8" in sc.overrides
    # DeepSeek-V3 TRT-LLM (cfg494): prefill attention DP 16 x EP 16 on two nodes; decode attention TP 16 x EP 16,
    # one TP group over two nodes, 3 workers of batch 2 (6 clients)
    v3 = dict(model_path="deepseek-ai/DeepSeek-V3", backend="trtllm")
    sc = si.scenario(_disagg_row((1, 1, 16, 1, 16, 1, 1), (16, 1, 1, 1, 16, 3, 2), **v3))
    pre, dec = json.loads(sc.prefill), json.loads(sc.decode)
    assert pre == {"arch": "moe", "nodes": 2, "workers": 1, "moe": {"attention": "tp", "attention_tp": 1, "ep": 16},
                   "engine": {"max_batch": 1}}
    assert dec == {"arch": "moe", "nodes": 2, "workers": 3, "moe": {"attention": "tp", "attention_tp": 16, "ep": 16},
                   "engine": {"max_batch": 2}}
    assert sc.concurrency == 6
    # a worker of 12 GPUs is not whole nodes
    assert si.scenario(_disagg_row((1, 1, 16, 1, 16, 1, 1), (12, 1, 1, 1, 12, 3, 2), **v3)).reason == (
        "disagg: decode worker of 12 GPUs (attention TP 12) is not whole nodes")


def test_a_row_of_a_published_recipe_runs_the_recipes_engine_settings():
    """InferenceX's dsr1-fp8-h100-dynamo-trt at 6 clients, 1024 x 1024: srt-slurm recipe ctx1_gen3_tep16_batch1 (3
    decode workers of max_batch_size 1, prefill ranks of 2, KV fp8), not the columns' batch 2 (= 6 clients / 3
    workers); sa-bench lengths; Dynamo's frontend prefills first. Another image or layout keeps the columns."""
    import json

    import simfoe.calibration.silicon as si
    from simfoe.calibration.silicon_disagg import RECIPE_IMAGE, recipe

    v3 = dict(model_path="deepseek-ai/DeepSeek-V3", backend="trtllm", isl=1024, osl=1024,
              source=f"config_id=494; silicon_concurrency=6; {RECIPE_IMAGE}")
    row = _disagg_row((1, 1, 16, 1, 16, 1, 1), (16, 1, 1, 1, 16, 3, 2), **v3)
    sc = si.scenario(row)
    assert recipe(row).path.endswith("ctx1_gen3_tep16_batch1_eplb0_mtp0.yaml")
    assert json.loads(sc.decode)["engine"] == {"max_batch": 1} and sc.max_batch == 1
    assert json.loads(sc.prefill)["engine"] == {"max_batch": 2}
    assert "model.precision.kv_cache=fp8" in sc.overrides and sc.order == "prefill-first"
    w = sc.workload()
    assert (w.range_style, w.bounds()) == ("below", ((819, 1024), (819, 1024)))
    for other in (replace(row, source="image=x"), replace(row, decode=replace(row.decode, workers=2))):
        assert recipe(other) is None
    assert si.scenario(replace(row, source="image=x")).max_batch == 2


def test_vllm_row_without_expert_columns_slices_experts_over_the_worker():
    """vLLM without --enable-expert-parallel: moe tp = dp x tp (FusedMoEParallelConfig.make), by hand."""
    import json

    import simfoe.calibration.silicon as si

    # Qwen3-235B vLLM row 675: prefill 1 worker of tp1 x DP 4, decode 3 workers of tp4; moe_tp = moe_ep = 0
    sc = si.scenario(_disagg_row((1, 1, 4, 0, 0, 1, 1), (4, 1, 1, 0, 0, 3, 24), model_path="Qwen/Qwen3-235B-A22B-FP8"))
    pre, dec = json.loads(sc.prefill), json.loads(sc.decode)
    assert pre["moe"] == {"attention": "tp", "attention_tp": 1, "ep": 1, "expert_tp": 4} and pre["gpus"] == 4
    assert dec["moe"] == {"attention": "tp", "attention_tp": 4, "ep": 1, "expert_tp": 4} and dec["workers"] == 3
    assert sc.concurrency == 72


@pytest.mark.parametrize("prefill, decode, reason", [
    ((16, 1, 1, 16, 1, None, None), (16, 1, 1, 16, 1, None, None), "disagg: prefill_num_workers missing"),
    ((1, 1, 4, 0, 0, 1, 1), (4, 1, 1, 0, 0, 3, 24), "disagg: prefill_moe_ep_size missing"),  # SGLang: no default
    ((1, 1, 4, 1, 4, 1, 1), (4, 1, 1, 1, 2, 3, 24), "moe_tp x moe_ep != tp x attention_dp"),
])
def test_incomplete_disagg_rows_are_not_covered_with_the_column(prefill, decode, reason):
    import simfoe.calibration.silicon as si

    row = _disagg_row(prefill, decode, model_path="Qwen/Qwen3-235B-A22B-FP8", backend="sglang")
    assert si.scenario(row).reason.startswith(reason)


def test_disagg_row_replayed_and_reported_beside_the_aggregated_ones():
    import simfoe.calibration.silicon as si

    row = _disagg_row((1, 1, 1, 0, 0, 1, 1), (1, 1, 1, 0, 0, 1, 2), isl=64, osl=4, source="")
    p = si.predict_row(row)
    assert p.reason is None and p.ttft_ms > 0 and p.tpot_ms > 0
    agg = si.Prediction(_disagg_row((1, 1, 1, 0, 0, 1, 1), (1, 1, 1, 0, 0, 1, 2), mode="agg", id="a"), 100.0, 10.0)
    r = si.report([p, agg])
    assert r["rows"] == 1 and r["by_mode"]["disagg"]["covered"] == 1  # top level: the aggregated rows
    assert set(r["by_group"]) == {"h100_sxm/Qwen/Qwen3-32B/vllm/disagg", "h100_sxm/Qwen/Qwen3-32B/vllm/agg"}
    assert r["disagg_complete_rows"] == 0  # its run records no concurrency (source "", id "d")
    done = si.report([si.Prediction(replace(row, id="x_c2_y"), 100.0, 10.0)])
    assert (done["disagg_complete_rows"], done["disagg_complete_covered"]) == (1, 1)
    assert done["disagg_complete_tpot_mdape"] == pytest.approx(abs(10.0 - 8.7) / 8.7 * 100)


def test_a_complete_disagg_row_records_the_concurrency_its_columns_give():
    from simfoe.calibration.silicon_disagg import complete, recorded_concurrency

    row = _disagg_row((1, 1, 16, 1, 16, 1, 1), (16, 1, 1, 1, 16, 3, 2), model_path="deepseek-ai/DeepSeek-V3")
    src = "db-dump; config_id=494; silicon_concurrency=6; workflow_run_id=269"
    assert recorded_concurrency(replace(row, source=src)) == 6 and complete(replace(row, source=src))
    assert recorded_concurrency(replace(row, id="dsr1_fp8_disagg_1024x1024_c6_cfg494")) == 6
    assert recorded_concurrency(replace(row, id="qwen3_32b_disagg_4000x1000_c_tpnone_epnone_1")) is None
    assert not complete(row)  # nothing recorded (the gap-analysis rows)
    assert not complete(replace(row, source=src.replace("=6", "=9")))  # recorded, but not the columns' 2 x 1 x 3
    assert not complete(replace(row, source=src, decode=replace(row.decode, workers=None)))


def test_h100_disagg_rows_complete_ones_are_mapped(shared_data):
    import simfoe.calibration.silicon as si
    from simfoe.calibration.silicon_disagg import complete, recipe

    rows = [r for r in si.load_rows(shared_data / si.H100_FILE).rows if r.mode == "disagg"]
    why = [getattr(si.scenario(r), "reason", None) for r in rows]
    # every row with both sides' columns: Qwen3-32B 4 SGLang + 1 vLLM, Qwen3-235B 2 vLLM, DeepSeek-V3 8 TRT-LLM
    assert len(rows) == 75 and why.count(None) == 15
    assert sum(str(w).startswith("disagg: prefill_num_workers missing") for w in why) == 60
    done = [r for r in rows if complete(r)]
    assert len(done) == 8 and {r.backend for r in done} == {"trtllm"}  # the gap-analysis rows record no concurrency
    assert all(recipe(r) is not None for r in done)  # each names its srt-slurm recipe


def test_sweep_over_the_xpyd_ratio(tmp_path):
    from simfoe.sweep.runner import run_sweep
    from simfoe.sweep.spec import parse_sweep_spec

    spec = parse_sweep_spec({"kind": "serve-disagg", "base": {
        "model": "qwen3-32b", "hardware": "h100-sxm", "prefill": {"arch": "moe", "gpus": 1},
        "decode": {"arch": "moe", "gpus": 1}, "concurrency": 2, "isl": 200, "osl": 4, "kv_transfer": "after"},
        "grid": {"xpyd": ["1:1", "2:1"]}})
    run_sweep(spec, tmp_path / "out", progress=False)
    import pandas as pd

    got = pd.concat(pd.read_parquet(p) for p in (tmp_path / "out").rglob("*.parquet"))
    assert sorted(got["xpyd"].astype(str).tolist()) == ["1:1", "2:1"]


def test_requests_accepted_but_not_arrived_count_on_their_decode_rank():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class FourRanks(LinearStep):
        dp_ranks = 4

    four = FourRanks(base_s=0.01, per_prefill_token_s=1e-4, per_decode_seq_s=1e-3)
    t = RequestTable.from_arrays(np.zeros(8), np.full(8, 100), np.full(8, 3))
    r = simulate_disagg(t, Pool(LIN, 100_000), Pool(four, 100_000, gpus=4), DisaggConfig("instant"))
    assert sorted(r.records["rank"].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]  # not all on rank 0


def test_request_overhead_of_the_engine_profile_delays_every_request():
    from dataclasses import replace

    t = RequestTable.from_arrays(np.array([0.0]), np.array([100]), np.array([5]))
    slow = Pool(LIN, 100_000, engine=replace(EngineConfig(), request_overhead_s=0.5))
    fast = simulate_disagg(t, Pool(LIN, 100_000), Pool(LIN, 100_000)).records
    late = simulate_disagg(t, slow, Pool(LIN, 100_000)).records
    assert late["ttft_s"][0] == pytest.approx(fast["ttft_s"][0] + 0.5)


def test_mtp_in_the_decode_pool_emits_more_than_one_token_per_step():
    t = RequestTable.from_arrays(np.zeros(4), np.full(4, 100), np.full(4, 40))
    plain = simulate_disagg(t, Pool(LIN, 100_000), Pool(LIN, 100_000)).summary
    mtp = simulate_disagg(t, Pool(LIN, 100_000), Pool(LIN, 100_000, engine=EngineConfig(mtp=1))).summary
    assert mtp["requests"]["completed"] == 4 and mtp["mtp"]["tokens_per_step"] > 1
    assert mtp["tpot_s"]["mean"] < plain["tpot_s"]["mean"]


def test_attention_tp_group_of_whole_nodes_spans_them():
    """TensorRT-LLM's decode workers run attention TP 16 on two 8-GPU nodes: one TP group whose all-reduce
    crosses the network (TP 8 on the same GPUs keeps it inside each node); TP groups that are not whole
    nodes, or do not divide the GPUs, are refused."""
    from simfoe.api import forward
    from simfoe.specs.io import load_model
    from simfoe.specs.placement import PlacementSpec, resolve_moe

    base = dict(model="qwen3-30b-a3b", hardware="h100-sxm", nodes=2, arch="moe", phase="decode", batch=8, seq_len=256)
    tp16 = forward(**base, overrides=["placement.moe.attention_tp=16", "placement.moe.ep=16"])
    tp8 = forward(**base, overrides=["placement.moe.attention_tp=8", "placement.moe.ep=16"])
    assert (tp16["layout"]["attention_tp"], tp16["layout"]["attention_dp"]) == (16, 1)
    assert tp16["comm_bytes"]["all_reduce"]["inter_node"] > 0 == tp8["comm_bytes"]["all_reduce"]["inter_node"]
    m = load_model("qwen3-30b-a3b")
    for nodes, tp in ((2, 12), (3, 16)):
        with pytest.raises(SpecError) as e:
            resolve_moe(m, 8, PlacementSpec(nodes=nodes, moe={"attention_tp": tp}))
        assert e.value.field == "placement.moe.attention_tp"


def test_validate_silicon_prints_the_complete_disagg_rows(tmp_path, capsys):
    """A disaggregated row whose run records its concurrency (id ``_c2_``: 2 = batch 2 x 1 worker) is judged
    on its own line; one without (the gap-analysis ids ``_c_``) only in the disagg rows."""
    import csv

    from simfoe.cli import main

    cols = ["id", "silicon_data_source", "backend", "backend_version", "model_path", "system", "mode", "isl", "osl",
            "gemm_quant_mode", "silicon_ttft_ms", "silicon_tpot_ms"] + [
        f"{side}_{c}" for side in ("prefill", "decode")
        for c in ("batch_size", "num_workers", "tp_size", "pp_size", "attention_dp_size")]
    row = dict(silicon_data_source="src", backend="vllm", backend_version="0.12.0", model_path="Qwen/Qwen3-32B",
               system="h100_sxm", mode="disagg", isl=64, osl=4, gemm_quant_mode="fp8", silicon_ttft_ms=50.0,
               silicon_tpot_ms=10.0, prefill_batch_size=1, prefill_num_workers=1, prefill_tp_size=1, prefill_pp_size=1,
               prefill_attention_dp_size=1, decode_batch_size=2, decode_num_workers=1, decode_tp_size=1,
               decode_pp_size=1, decode_attention_dp_size=1)
    path = tmp_path / "mini.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows([{**row, "id": "q_disagg_64x4_c2_1"}, {**row, "id": "q_disagg_64x4_c_2", "silicon_ttft_ms": 60.0}])
    (tmp_path / "t.yaml").write_text("sources: {}\n")
    assert main(["validate", "--silicon", str(path), "--jobs", "1", "--tolerances", str(tmp_path / "t.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    done = [x for x in lines if x.startswith("complete disagg rows (concurrency recorded)")]
    assert len(done) == 1 and done[0].split()[5:7] == ["1", "1"]  # rows, covered
    assert [x.split()[3:5] for x in lines if x.startswith("all disagg rows")] == [["2", "2"]]
