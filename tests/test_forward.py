"""Forward-pass simulator: the invariants issue 3 requires, hand-computed volumes and properties."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simfoe.api import forward, forward_model
from simfoe.errors import SpecError
from simfoe.fabric.flows import FlowNetwork
from simfoe.specs.io import load_hardware, load_model
from simfoe.specs.precision import FORMATS

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Flows finish up to FlowNetwork.REL_TOL of their duration early (simfoe/fabric/flows.py), so
#: monotonicity holds up to that numerical tolerance, not to machine precision.
SIM_TOL = FlowNetwork.REL_TOL


def test_foe_one_node_moves_no_all_to_all():
    r = forward("mixtral-8x7b", "h100-sxm", nodes=1, arch="foe", phase="prefill", batch=2, seq_len=1024)
    a2a = r["comm_bytes"]["all_to_all"]
    assert a2a["intra_node"] == 0 and a2a["inter_node"] == 0
    assert r["local_activation_rate"] == 1.0
    assert r["breakdown_s"]["dispatch"] == 0 and r["breakdown_s"]["combine"] == 0


@pytest.mark.parametrize("nodes", [2, 4])
def test_foe_multi_node_confines_all_to_all_to_nvlink(nodes):
    r = forward("mixtral-8x7b", "h100-sxm", nodes=nodes, arch="foe", phase="decode", batch=64, seq_len=1024)
    assert r["comm_bytes"]["all_to_all"]["inter_node"] == 0
    assert r["comm_bytes"]["all_reduce"]["inter_node"] > 0


def test_moe_ep_over_two_nodes_crosses_the_network():
    # gpt-oss-120b: 128 experts over 16 GPUs, one instance on two nodes
    r = forward("gpt-oss-120b", "h100-sxm", nodes=2, arch="moe", phase="decode", batch=64, seq_len=1024)
    assert r["gpus"] == 16
    assert r["comm_bytes"]["all_to_all"]["inter_node"] > 0


def test_json_keys_are_the_contract():
    r = forward("olmoe-1b-7b", "h100-sxm", nodes=1, arch="moe", phase="decode", batch=8, seq_len=512)
    # the DESIGN.md contract's keys, plus memory (weights and KV per GPU, whether they fit) and
    # micro_batches (2 under placement.overlap=two-batch) and layout (the resolved layout; test_provenance.py)
    assert set(r) == {"latency_s", "gpus", "breakdown_s", "comm_bytes", "local_activation_rate", "memory",
                      "micro_batches", "layout", "nodes_per_token"}
    assert r["micro_batches"] == 1
    assert set(r["memory"]) == {"weights_bytes_per_gpu", "kv_cache_bytes_per_gpu", "usable_hbm_bytes_per_gpu", "fits"}
    assert set(r["comm_bytes"]) == {"all_to_all", "all_reduce"}
    for v in r["comm_bytes"].values():
        assert set(v) == {"intra_node", "inter_node"}
    assert abs(sum(r["breakdown_s"].values()) - r["latency_s"]) < 1e-9 * max(1.0, r["latency_s"])


@pytest.mark.parametrize("nodes,batch", [(1, 64), (2, 128)])
def test_dispatch_volume_matches_hand_computation(nodes, batch):
    """DP attention, no dedup, direct (per-GPU copies, no relay), uniform routing:
    bytes = T x k(G-1)/G x hidden x 2 B x 2 x layers."""
    m = load_model("olmoe-1b-7b")
    ov = ["placement.moe.attention=dp", "placement.moe.dedup_dispatch=false", "placement.moe.all_to_all=direct"]
    r = forward("olmoe-1b-7b", "h100-sxm", nodes=nodes, arch="moe", phase="prefill", batch=batch, seq_len=64,
                overrides=ov, seed=3)
    G = 8 * nodes
    T = batch * 64
    expected = T * m.moe.top_k * (G - 1) / G * m.hidden * m.dtype_bytes * 2 * m.n_moe_layers
    got = r["comm_bytes"]["all_to_all"]["intra_node"] + r["comm_bytes"]["all_to_all"]["inter_node"]
    assert got == pytest.approx(expected, rel=0.02)
    if nodes == 2:  # half of the remote destinations live on the other node
        inter = r["comm_bytes"]["all_to_all"]["inter_node"]
        assert inter / got == pytest.approx(8 / 15, rel=0.03)


def test_dedup_sends_fewer_bytes_than_per_choice():
    base = dict(model="olmoe-1b-7b", hardware="h100-sxm", nodes=1, arch="moe", phase="prefill", batch=8, seq_len=256)
    on = forward(**base)["comm_bytes"]["all_to_all"]["intra_node"]
    off = forward(**base, overrides=["placement.moe.dedup_dispatch=false"])["comm_bytes"]["all_to_all"]["intra_node"]
    assert on < off


def test_tp_attention_has_all_reduce_dp_has_none():
    base = dict(model="olmoe-1b-7b", hardware="h100-sxm", nodes=1, arch="moe", phase="decode", batch=64, seq_len=512)
    tp = forward(**base)
    dp = forward(**base, overrides=["placement.moe.attention=dp"])
    assert tp["comm_bytes"]["all_reduce"]["intra_node"] > 0
    assert dp["comm_bytes"]["all_reduce"]["intra_node"] == 0


def test_deterministic_given_seed():
    a = forward("qwen3-30b-a3b", "h100-sxm", nodes=2, arch="moe", phase="decode", batch=32, seq_len=512, seed=7, routing="zipf:1.2")
    b = forward("qwen3-30b-a3b", "h100-sxm", nodes=2, arch="moe", phase="decode", batch=32, seq_len=512, seed=7, routing="zipf:1.2")
    assert a == b


def test_skewed_routing_is_slower_than_uniform():
    base = dict(model="qwen3-30b-a3b", hardware="h100-sxm", nodes=1, arch="moe", phase="prefill", batch=4, seq_len=2048)
    assert forward(**base, routing="zipf:1.5")["breakdown_s"]["experts"] > forward(**base)["breakdown_s"]["experts"]


def test_unfederable_model_names_the_field():
    with pytest.raises(SpecError, match="placement.foe.clusters"):
        forward("deepseek-v3", "h100-sxm", nodes=4, arch="foe", phase="decode", batch=8, seq_len=128)
    with pytest.raises(SpecError, match="model.moe"):
        forward("llama-3-70b", "h100-sxm", nodes=1, arch="foe")


def test_deepseek_foe_with_explicit_clusters_runs():
    r = forward("deepseek-v3", "h100-sxm", nodes=4, arch="foe", phase="decode", batch=64, seq_len=1024,
                overrides=["placement.foe.clusters=8"])
    assert r["comm_bytes"]["all_to_all"]["inter_node"] == 0 and r["latency_s"] > 0


@pytest.mark.parametrize("clusters, nodes", [(8, 4), (64, 1)])
def test_foe_keeps_the_shared_expert_iso_parameter(clusters, nodes):
    """DeepSeek-V3's shared expert is sliced over the clusters (n_s*f_s/C each; g = 4 and cpg = 8 layouts):
    all shared parameters, counted once per cluster, equal the MoE's, and removing it makes FoE faster."""
    over = [f"placement.foe.clusters={clusters}"]
    fm = forward_model("deepseek-v3", "h100-sxm", nodes=nodes, arch="foe", overrides=over)
    m, L = fm.model, fm.layout
    assert L.shared_ffn * L.clusters == m.moe.n_shared_experts * m.moe.shared_ffn
    none = forward_model("deepseek-v3", "h100-sxm", nodes=nodes, arch="foe",
                         overrides=over + ["model.moe.n_shared_experts=0"])
    per_param = FORMATS[m.formats.gemm_weights].bytes_per_param  # the shared expert is a dense GEMM's weights
    slice_bytes = m.n_moe_layers * L.clusters_per_gpu * L.shared_ffn * m.ffn_mats * m.hidden * per_param
    assert fm.weight_bytes_per_gpu() - none.weight_bytes_per_gpu() == pytest.approx(slice_bytes)
    with_s, without = (f.run("decode", 64, 1024).breakdown_s["experts"] for f in (fm, none))
    assert with_s > without


def test_foe_shared_slice_that_does_not_divide_names_the_field():
    with pytest.raises(SpecError, match="placement.foe.shared_ffn"):
        forward("deepseek-v3", "h100-sxm", nodes=4, arch="foe", phase="decode", batch=8, seq_len=128,
                overrides=["placement.foe.clusters=8", "model.moe.shared_ffn=2050"])


@pytest.mark.parametrize("arch", ["moe", "foe"])
def test_fp8_model_dispatches_fp8_but_combines_and_reduces_bf16(arch):
    """fp8 weights halve the dispatch only: combine, residual all-reduces and norms stay in bf16."""
    kw = dict(nodes=2, arch=arch, phase="prefill", batch=2, seq_len=1024)
    bf16 = forward("mixtral-8x7b", "h100-sxm", **kw, overrides=["model.dtype=bf16"])["comm_bytes"]
    fp8 = forward("mixtral-8x7b", "h100-sxm", **kw, overrides=["model.dtype=fp8"])["comm_bytes"]
    for loc in ("intra_node", "inter_node"):
        assert fp8["all_reduce"][loc] == pytest.approx(bf16["all_reduce"][loc])
        assert fp8["all_to_all"][loc] == pytest.approx(0.75 * bf16["all_to_all"][loc], rel=0.02)


def test_memory_reports_weights_and_kv_per_gpu_and_whether_they_fit():
    # Mixtral FoE on 8 GPUs: one KV head per GPU, 2 (K, V) x 128 x 2 B x 32 layers = 16 KiB per token
    r = forward("mixtral-8x7b", "h100-sxm", nodes=1, arch="foe", phase="decode", batch=64, seq_len=4096)
    assert r["memory"]["kv_cache_bytes_per_gpu"] == 64 * 4096 * 16384 and r["memory"]["fits"]
    # DeepSeek-V3 (671 B params, bf16) cannot fit on one 8 x 80 GB node
    big = forward("deepseek-v3", "h100-sxm", nodes=1, arch="moe", phase="decode", batch=8, seq_len=1024,
                  overrides=["model.dtype=bf16"])["memory"]
    assert big["weights_bytes_per_gpu"] > 1.3e12 / 8 and not big["fits"]


def test_dense_model_runs_without_experts():
    r = forward("llama-3-70b", "h100-sxm", nodes=1, arch="moe", phase="decode", batch=8, seq_len=1024)
    assert r["local_activation_rate"] is None
    assert r["breakdown_s"]["dense_ffn"] > 0


# ---------------------------------------------------------------------------------- properties
def _dense_flops(model, tokens):
    """2 x tokens x (active params without embeddings): a lower bound of the pass's FLOPs."""
    active = model.active_params() - 2 * model.vocab * model.hidden
    return 2.0 * tokens * active


@FAST
@given(arch=st.sampled_from(["moe", "foe"]), nodes=st.sampled_from([1, 2]), batch=st.integers(1, 16),
       seq=st.sampled_from([128, 512, 2048]))
def test_prefill_at_least_flops_over_peak(arch, nodes, batch, seq):
    m = load_model("mixtral-8x7b")
    hw = load_hardware("h100-sxm")
    r = forward("mixtral-8x7b", "h100-sxm", nodes=nodes, arch=arch, phase="prefill", batch=batch, seq_len=seq)
    assert r["latency_s"] >= _dense_flops(m, batch * seq) / (r["gpus"] * hw.peak("bf16"))


@FAST
@given(arch=st.sampled_from(["moe", "foe"]), nodes=st.sampled_from([1, 2]), batch=st.integers(1, 256),
       ctx=st.sampled_from([128, 4096]))
def test_decode_at_least_weight_read_time(arch, nodes, batch, ctx):
    fm = forward_model("mixtral-8x7b", "h100-sxm", nodes, arch)
    m, hw = fm.model, fm.hw
    r = fm.run("decode", batch, ctx)
    # every GPU reads at least its share of attention weights in every layer
    attn_per_gpu = m.attn_params() * m.dtype_bytes * m.n_layers / fm.gpus
    assert r.latency_s >= attn_per_gpu / hw.gpu.hbm_bandwidth
    # and the most loaded GPU's expert weights when every expert is hit (large batch)
    if batch >= 64:
        assert r.latency_s >= fm.weight_bytes_per_gpu() * 0.5 / hw.gpu.hbm_bandwidth


@FAST
@given(arch=st.sampled_from(["moe", "foe"]), phase=st.sampled_from(["prefill", "decode"]),
       factor=st.sampled_from([1.5, 2.0, 4.0]), what=st.sampled_from(["nic", "nvlink", "peak", "hbm"]))
def test_more_bandwidth_or_compute_never_slower(arch, phase, factor, what):
    path = {"nic": "hardware.network.nic_bandwidth", "nvlink": "hardware.node.nvlink_bandwidth",
            "peak": "hardware.gpu.peak_flops.bf16", "hbm": "hardware.gpu.hbm_bandwidth"}[what]
    hw = load_hardware("h100-sxm")
    base = {"nic": hw.network.nic_bandwidth, "nvlink": hw.node.nvlink_bandwidth,
            "peak": hw.gpu.peak_flops["bf16"], "hbm": hw.gpu.hbm_bandwidth}[what]
    kw = dict(model="qwen3-30b-a3b", hardware="h100-sxm", nodes=2, arch=arch, phase=phase,
              batch=16 if phase == "prefill" else 128, seq_len=512, seed=1)
    slow = forward(**kw)["latency_s"]
    fast = forward(**kw, overrides=[f"{path}={base * factor}"])["latency_s"]
    assert fast <= slow * (1 + SIM_TOL)


@FAST
@given(arch=st.sampled_from(["moe", "foe"]), phase=st.sampled_from(["prefill", "decode"]),
       batch=st.integers(1, 64))
def test_more_tokens_never_faster(arch, phase, batch):
    kw = dict(model="mixtral-8x7b", hardware="h100-sxm", nodes=2, arch=arch, phase=phase, seq_len=256, seed=2)
    assert forward(**kw, batch=2 * batch)["latency_s"] >= forward(**kw, batch=batch)["latency_s"] * (1 - SIM_TOL)


def test_kv_capacity_positive_and_weights_fit():
    fm = forward_model("mixtral-8x7b", "h100-sxm", 1, "moe")
    assert fm.fits() and fm.kv_capacity_tokens() > 100_000
    big = forward_model("deepseek-v3", "h100-sxm", 1, "moe")
    assert not big.fits() and big.kv_capacity_tokens() == 0


@pytest.mark.parametrize("model,nodes,attn", [("olmoe-1b-7b", 2, "dp"), ("olmoe-1b-7b", 2, "tp"),
                                             ("deepseek-v3", 2, "dp")])
def test_rank_compute_lies_between_the_attention_and_the_whole_pass(model, nodes, attn):
    """One DP attention rank's own compute for its even share of a decode batch covers at least the
    attention the forward simulation puts on the critical path, and at most the whole iteration; it
    grows with the rank's KV tokens. FoE has one rank and no rank compute."""
    fm = forward_model(model, "h100-sxm", nodes, "moe", overrides=[f"placement.moe.attention={attn}"])
    D = fm.dp_ranks
    n, ctx = 32 * D, 1500
    it = fm.iteration(0, 0, n, n * ctx)
    own = fm.rank_compute_s(0, 0, n // D, n // D * ctx)
    assert it.breakdown_s["attention"] <= own < it.latency_s
    assert fm.rank_compute_s(0, 0, n // D, 2 * n // D * ctx) > own
    with pytest.raises(SpecError, match="arch"):
        forward_model(model, "h100-sxm", nodes, "foe", overrides=["placement.foe.clusters=8"]).rank_compute_s(0, 0, 1, 10)


def test_dp_ranks_are_the_dp_attention_ranks():
    assert forward_model("olmoe-1b-7b", "h100-sxm", 2, "moe").dp_ranks == 2  # TP8 inside each node
    assert forward_model("olmoe-1b-7b", "h100-sxm", 2, "moe", overrides=["placement.moe.attention=dp"]).dp_ranks == 16
    assert forward_model("olmoe-1b-7b", "h100-sxm", 2, "foe").dp_ranks == 1
    fm = forward_model("olmoe-1b-7b", "h100-sxm", 2, "moe", overrides=["placement.moe.attention=dp"])
    # four equal chunks on four groups run faster than the same tokens as one chunk on one group
    one = fm.iteration(4096, 4096 * 2048.5, 0, 0).latency_s
    four = fm.iteration(4096, 4 * 1024 * 512.5, 0, 0, prefill_seqs=4).latency_s
    assert four < 0.5 * one


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_api_rejects_non_finite_override_values(value):
    """The Python API (and through it the sweep and the planner) gets the CLI's --set check: an
    infinite bandwidth would otherwise pass the specs' positivity checks."""
    with pytest.raises(SpecError, match="finite"):
        forward_model("olmoe-1b-7b", "h100-sxm", 1, "moe", overrides=(f"hardware.network.nic_bandwidth={value}",))
