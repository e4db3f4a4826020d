"""Two-batch overlap (placement.overlap=two-batch): micro-batch split, hand-timed programs, forward passes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from simfoe.api import forward
from simfoe.forward.plan import Collective, Compute
from simfoe.forward.simulate import run_programs
from simfoe.forward.work import Work
from simfoe.specs.io import build_placement, load_hardware

HW = load_hardware("h100-sxm")
G = HW.node.gpus_per_node


def _program(comm_s: float, a_s: float = 1.0, b_s: float = 1.0):
    """Attention ``a_s``, a dispatch of known duration ``comm_s``, experts ``b_s`` (s) on every GPU of one node."""
    return [Compute("attention", np.full(G, a_s)), Collective("delay", "dispatch", (np.arange(G),), (comm_s,)),
            Compute("experts", np.full(G, b_s))]


def test_one_program_runs_in_order():
    lat, bd, _ = run_programs(HW, 1, [_program(0.5)])
    assert lat == pytest.approx(2.5)
    assert bd["attention"] == pytest.approx(1.0) and bd["dispatch"] == pytest.approx(0.5)
    assert bd["experts"] == pytest.approx(1.0)


def test_two_programs_hide_a_short_collective():
    # mb0 A 0-1, mb1 A 1-2 (mb0's collective 1-1.5 hidden), mb0 B 2-3, mb1 B 3-4 (its collective 2-2.5)
    lat, bd, _ = run_programs(HW, 1, [_program(0.5), _program(0.5)])
    assert lat == pytest.approx(4.0)
    assert bd["attention"] == pytest.approx(2.0) and bd["experts"] == pytest.approx(2.0)
    assert bd["dispatch"] == pytest.approx(0.0, abs=1e-12)


def test_two_programs_expose_a_long_collective():
    # mb0 A 0-1, collective 1-2.5; mb1 A 1-2, collective 2-3.5; mb0 B 2.5-3.5; mb1 B 3.5-4.5
    lat, bd, _ = run_programs(HW, 1, [_program(1.5), _program(1.5)])
    assert lat == pytest.approx(4.5)
    assert bd["dispatch"] == pytest.approx(0.5)  # the exposed part
    assert sum(bd.values()) == pytest.approx(lat)
    # back to back the same two micro-batches take 2 x 3.5 s
    assert lat < 2 * run_programs(HW, 1, [_program(1.5)])[0]


def test_later_layers_of_a_chain_repeat_the_first_layers_collectives():
    # two layers, collective 0.5 s in layer 0 and 1.5 s in layer 1; stages A | B A' | B'. Repeating layer 0's:
    # mb0 A 0-1 (coll 1-1.5), mb1 A 1-2 (coll 2-2.5), mb0 B 2-3 A' 3-4 (coll 4-4.5), mb1 B 4-5 A' 5-6 (coll 6-6.5),
    # mb0 B' 6-7, mb1 B' 7-8. With layer 1's own 1.5 s: mb0's coll 4-5.5, mb1's 6-7.5, so mb1 B' 7.5-8.5
    chain = _program(0.5) + _program(1.5)
    assert run_programs(HW, 1, [chain, chain], layer_steps=3)[0] == pytest.approx(8.0)
    assert run_programs(HW, 1, [chain, chain])[0] == pytest.approx(8.5)
    # one program: 1 + 0.5 + 1, twice
    assert run_programs(HW, 1, [chain], layer_steps=3)[0] == pytest.approx(5.0)


def test_repeated_collectives_put_no_bytes_on_the_fabric():
    """A later layer's all-reduce lasts what the first one took and moves nothing; the pass's bytes are the
    first layer's (the caller scales them to all layers)."""
    g = (np.arange(G),)
    layer = [Compute("attention", np.full(G, 1e-3)), Collective("all_reduce", "all_reduce", g, (64e6,)),
             Compute("dense_ffn", np.full(G, 1e-3))]
    lat1, _, bytes1 = run_programs(HW, 1, [layer])
    lat2, _, bytes2 = run_programs(HW, 1, [layer + layer], layer_steps=3)
    assert lat2 == pytest.approx(2 * lat1, rel=1e-12)
    assert bytes2 == bytes1 and bytes1["all_reduce"]["intra_node"] > 0


@settings(max_examples=60, deadline=None)
@given(pf=hs.integers(0, 64), plen=hs.integers(1, 4096), past=hs.integers(0, 4096),
       ds=hs.integers(0, 300), ctx=hs.integers(1, 8192))
def test_halves_conserve_the_work(pf, plen, past, ds, ctx):
    n = pf * plen
    pairs = pf * plen * (past + (plen + 1) / 2.0)
    w = Work(n, pairs, pf, ds, ds * ctx)
    a, b = w.halves()
    assert a.prefill_tokens + b.prefill_tokens == n
    assert a.prefill_pairs + b.prefill_pairs == pytest.approx(pairs, rel=1e-9, abs=1e-6)
    assert a.decode_seqs + b.decode_seqs == ds and abs(a.decode_seqs - b.decode_seqs) <= 1
    assert a.decode_kv_tokens + b.decode_kv_tokens == ds * ctx
    assert abs(a.prefill_tokens - b.prefill_tokens) <= max(plen, 1)
    if pf == 1 and plen > 1:  # one prompt split by tokens: the second half attends to the first
        assert b.prefill_pairs > a.prefill_pairs


@settings(max_examples=60, deadline=None)
@given(pf=hs.integers(0, 64), tok=hs.integers(0, 10**6), ds=hs.integers(0, 300), kv=hs.integers(0, 10**7),
       parts=hs.integers(1, 64))
def test_split_over_groups_conserves_tokens_exactly(pf, tok, ds, kv, parts):
    """Uneven token counts (not whole prompts) still sum exactly: no group gains or loses a token
    to rounding, and whole sequences differ by at most one between groups."""
    w = Work(tok if pf or tok else 0, 3.0 * tok, pf, ds, kv if ds else 0)
    g = w.split(parts)
    assert len(g) == parts
    assert sum(x.prefill_tokens for x in g) == w.prefill_tokens
    assert sum(x.decode_kv_tokens for x in g) == w.decode_kv_tokens
    assert sum(x.prefill_seqs for x in g) == pf and sum(x.decode_seqs for x in g) == ds
    assert sum(x.prefill_pairs for x in g) == pytest.approx(w.prefill_pairs, rel=1e-9, abs=1e-6)
    assert max(x.decode_seqs for x in g) - min(x.decode_seqs for x in g) <= 1
    assert all(x.prefill_tokens >= 0 and x.decode_kv_tokens >= 0 for x in g)


def test_lone_prompt_halves_match_chunked_prefill():
    a, b = Work.from_phase("prefill", 1, 1000).halves()
    assert a.prefill_pairs == pytest.approx(500 * 501 / 2)
    assert b.prefill_pairs == pytest.approx(500 * (500 + 501 / 2))


def _fwd(overlap, **kw):
    args = dict(model="mixtral-8x7b", hardware="h100-sxm", nodes=2, arch="foe", phase="prefill", batch=4, seq_len=4096)
    args.update(kw)
    return forward(overrides=[f"placement.overlap={overlap}"], **args)


def test_prefill_overlap_hides_the_all_reduce():
    one, two = _fwd("none"), _fwd("two-batch")
    assert one["micro_batches"] == 1 and two["micro_batches"] == 2
    assert two["latency_s"] < one["latency_s"]
    assert two["breakdown_s"]["all_reduce"] < one["breakdown_s"]["all_reduce"]
    assert sum(two["breakdown_s"].values()) == pytest.approx(two["latency_s"], rel=1e-9)
    # FoE's residual all-reduce moves the same bytes however the tokens are split
    for where in ("intra_node", "inter_node"):
        assert two["comm_bytes"]["all_reduce"][where] == pytest.approx(one["comm_bytes"]["all_reduce"][where], rel=1e-9)
    # compute is not hidden: the pass takes at least the compute of both micro-batches
    compute = sum(two["breakdown_s"][k] for k in ("attention", "experts", "dense_ffn", "embed_lm_head"))
    assert two["latency_s"] >= compute


def test_moe_micro_batches_split_each_data_parallel_group():
    # 4 prompts over 4 DP groups (attention TP inside each node): each group splits its own prompt by
    # tokens; a global split (2 + 2 prompts) would leave half the groups idle in each micro-batch
    kw = dict(model="deepseek-v3", nodes=4, arch="moe", batch=4)
    one, two = _fwd("none", **kw), _fwd("two-batch", **kw)
    assert two["micro_batches"] == 2
    assert two["breakdown_s"]["attention"] < 1.2 * one["breakdown_s"]["attention"]
    assert two["latency_s"] < one["latency_s"]


def test_too_little_work_runs_as_one_batch():
    kw = dict(phase="decode", batch=1)
    one, two = _fwd("none", **kw), _fwd("two-batch", **kw)
    assert two["micro_batches"] == 1
    assert two["latency_s"] == one["latency_s"]


def test_decode_overlap_reads_weights_twice():
    # small-batch decode is weight-read bound: each micro-batch streams the expert weights again
    kw = dict(phase="decode", batch=64, seq_len=2048, nodes=1, arch="moe")
    one, two = _fwd("none", **kw), _fwd("two-batch", **kw)
    assert two["breakdown_s"]["experts"] > 1.5 * one["breakdown_s"]["experts"]


@pytest.mark.parametrize("model,nodes,arch,phase,batch", [
    ("qwen3-30b-a3b", 2, "moe", "prefill", 4),
    # FoE, one GPU per cluster: a layer is one stage per micro-batch, so a turn measured from layer 0 lacks
    # the other micro-batch's experts (27% short on one node) or sees both all-reduces at once (19% long on 2)
    ("olmoe-1b-7b", 1, "foe", "decode", 64), ("olmoe-1b-7b", 2, "foe", "prefill", 4),
    # decode across nodes: low-latency dispatch and combine, which the chain's later layers repeat
    ("qwen3-30b-a3b", 2, "moe", "decode", 256)])
def test_per_layer_chain_matches_the_steady_state_extrapolation(model, nodes, arch, phase, batch):
    kw = dict(model=model, nodes=nodes, arch=arch, routing="uniform", phase=phase, batch=batch,
              seq_len=1024 if phase == "decode" else 2048, hardware="h100-sxm")
    chained = forward(overrides=["placement.overlap=two-batch"], per_layer=True, **kw)
    scaled = forward(overrides=["placement.overlap=two-batch"], **kw)
    # a chain of OVERLAP_CHAIN layers (own routing samples; the later layers' collectives repeat the first
    # layer's seconds) extrapolated at its steady rate vs all layers chained, every collective on the fabric
    assert chained["latency_s"] == pytest.approx(scaled["latency_s"], rel=0.01)
    assert chained["micro_batches"] == scaled["micro_batches"] == 2


def test_overlap_setting_parses_none_and_rejects_others():
    assert build_placement("moe", 1, ["placement.overlap=none"]).overlap == "none"
    assert build_placement("moe", 1, ["placement.overlap=two-batch"]).overlap == "two-batch"
    from simfoe.errors import SpecError

    with pytest.raises(SpecError, match="placement.overlap"):
        build_placement("moe", 1, ["placement.overlap=three"])


@pytest.mark.parametrize("phase,batch", [("prefill", 4), ("decode", 64)])
def test_auto_picks_the_faster_pass(phase, batch):
    # olmoe on 2 nodes: two-batch is 24% faster in this prefill and 19% slower in this decode
    kw = dict(model="olmoe-1b-7b", phase=phase, batch=batch, seq_len=2048, nodes=2, arch="moe")
    one, two, auto = _fwd("none", **kw), _fwd("two-batch", **kw), _fwd("auto", **kw)
    assert auto["micro_batches"] == (2 if phase == "prefill" else 1)
    assert auto["latency_s"] == min(one["latency_s"], two["latency_s"])
    assert auto["micro_batches"] == (2 if two["latency_s"] < one["latency_s"] else 1)
    assert auto["breakdown_s"] == (two if auto["micro_batches"] == 2 else one)["breakdown_s"]


def test_communication_kernels_slow_the_compute_beside_them():
    # share 0.5: mb0 A 0-1, its collective 1-2.5; mb1 A from 1 at half speed while it is in flight
    # (0.75 done by 2.5), then full speed: ends 2.75; mb1's collective 2.75-4.25; mb0 B from 2.75 at
    # half speed until 4.25 (0.75 done), ends 4.5; mb1 B 4.5-5.5
    lat, bd, _ = run_programs(HW, 1, [_program(1.5), _program(1.5)], comm_sm_share=0.5)
    assert lat == pytest.approx(5.5)
    # the stream is never idle: compute slowed by communication counts as compute (1 + 1.75 + 1.75 + 1)
    assert bd["attention"] == pytest.approx(2.75) and bd["experts"] == pytest.approx(2.75)
    assert bd["dispatch"] == pytest.approx(0.0, abs=1e-12)
    # one batch: nothing runs beside a collective, the share changes nothing
    assert run_programs(HW, 1, [_program(1.5)], comm_sm_share=0.5)[0] == pytest.approx(3.5)


@settings(max_examples=25, deadline=None)
@given(share=hs.floats(0.0, 0.9), comm=hs.floats(0.0, 3.0))
def test_sm_share_is_monotone_and_bounded(share, comm):
    """More SMs held by communication never speeds a pass up, and never beyond no overlap at full share."""
    progs = [_program(comm), _program(comm)]
    free = run_programs(HW, 1, progs)[0]
    held = run_programs(HW, 1, progs, comm_sm_share=share)[0]
    assert held >= free - 1e-9
    # every compute second runs at >= (1 - share) speed
    assert held <= free + (4.0 / (1 - share) - 4.0) + 1e-9


@pytest.mark.parametrize("model,nodes,arch,phase,batch", [
    ("olmoe-1b-7b", 2, "moe", "decode", 64), ("olmoe-1b-7b", 2, "foe", "prefill", 4),
    ("qwen3-30b-a3b", 2, "moe", "prefill", 2), ("mixtral-8x7b", 1, "moe", "decode", 256),
    ("deepseek-v3", 4, "moe", "decode", 256)])
def test_compute_floor_is_below_the_simulated_two_batch_pass(model, nodes, arch, phase, batch):
    """auto skips the two-batch simulation on this floor: it must not exceed what that simulation gives."""
    from simfoe.api import forward_model

    fm = forward_model(model, "h100-sxm", nodes, arch, overrides=["placement.overlap=two-batch"])
    w = Work.from_phase(phase, batch, 2048)
    parts = fm._micro_batches(w)
    assert len(parts) == 2
    floor = fm._compute_floor(w, parts)
    two = fm.simulate(w).latency_s
    assert floor <= two * (1 + fm.AUTO_MARGIN)
    assert floor > 0.5 * two  # and it is a useful floor, not a trivial one


@settings(max_examples=12, deadline=None)
@given(model=hs.sampled_from(["olmoe-1b-7b", "qwen3-30b-a3b", "mixtral-8x7b"]), nodes=hs.integers(1, 2),
       layout=hs.sampled_from(["tp", "dp", "foe"]), phase=hs.sampled_from(["prefill", "decode"]),
       batch=hs.integers(1, 64), seq_len=hs.integers(64, 2048))
def test_overlap_costs_at_most_what_the_second_micro_batch_adds_to_compute(model, nodes, layout, phase, batch, seq_len):
    """Two micro-batches never take longer than one batch by more than the compute they add on the path
    (weights read twice, half-size kernels): the communication they expose is never more than one batch's."""
    from simfoe.api import forward_model

    arch = "foe" if layout == "foe" else "moe"
    extra = [] if layout == "foe" else [f"placement.moe.attention={layout}"]
    batch = min(batch, 8) if phase == "prefill" else batch
    one = forward_model(model, "h100-sxm", nodes, arch, overrides=extra)
    two = forward_model(model, "h100-sxm", nodes, arch, overrides=extra + ["placement.overlap=two-batch"])
    w = Work.from_phase(phase, batch, seq_len)
    added = two.serial_compute_s(w, True) - one.serial_compute_s(w, False)
    assert two.simulate(w).latency_s <= one.simulate(w).latency_s + added + 1e-12


def test_timeline_shows_a_dispatch_under_the_other_micro_batchs_attention():
    """SGLang's two-batch overlap: micro-batch 0 launches its dispatch as soon as its attention and router are
    done, so it is on the fabric while micro-batch 1 computes its attention (the old alternation of single
    compute steps ran micro-batch 1's attention first). The timeline names each micro-batch and stage."""
    from simfoe.api import forward_model

    fm = forward_model("qwen3-30b-a3b", "h100-sxm", 2, "moe",
                       overrides=["placement.moe.attention=dp", "placement.overlap=two-batch"])
    events: list = []
    fm.simulate(Work.from_phase("decode", 256, 2048), timeline=events)
    compute = [e for e in events if e["cat"] == "compute"]
    assert {e["name"] for e in compute} >= {"attention mb0", "attention mb1", "experts mb0", "experts mb1"}
    assert all("stage" in e["args"] for e in compute)
    first_a2a = min(e["ts"] for e in events if e["name"] == "all_to_all")
    # the chain's later layers show their collectives too, as repeats of the first layer's
    assert any(e["args"].get("repeats") for e in events if e["name"] == "all_to_all")
    attn1 = min((e for e in compute if e["name"] == "attention mb1"), key=lambda e: e["ts"])
    assert first_a2a < attn1["ts"] + attn1["dur"]
