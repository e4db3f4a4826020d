"""NCCL protocol choice (Simple / LL / LL128) and the point-to-point all-to-all of simfoe.costs.collectives."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.costs.collectives import P2P_LL_THRESHOLD, predict
from simfoe.specs.io import load_hardware

#: hand-set NVLink path: Simple 10 us + 3.4 us/step at 0.8 x line rate; LL 5 us + 0.6 us/step at half of
#: that; LL128 8 us + 1.9 us/step at 0.92 of it
NVLINK = {"alpha_s": 10e-6, "efficiency": 0.8, "hop_s": 3.4e-6, "ll_alpha_s": 5e-6, "ll_hop_s": 0.6e-6,
          "ll_bandwidth_fraction": 0.5, "ll128_alpha_s": 8e-6, "ll128_hop_s": 1.9e-6, "ll128_bandwidth_fraction": 0.92}
PATH_S = 2e-6  # node.nvlink_latency_s set below: every flow's path latency


def _hw(nvlink: dict, **collectives):
    """h100-sxm (450 GB/s NVLink) with the given NVLink path calibration and collective fields."""
    hw = load_hardware("h100-sxm")
    c = hw.collectives
    coll = c.model_copy(update={"nvlink": type(c.nvlink)(**nvlink), **collectives})
    return hw.model_copy(update={"collectives": coll, "node": hw.node.model_copy(update={"nvlink_latency_s": PATH_S})})


def _only(protocol: str) -> dict:
    """NVLINK with the other protocols removed (LL128 / LL absent) or priced out (Simple: 1 s base)."""
    out = dict(NVLINK)
    if protocol != "ll128":
        out["ll128_alpha_s"] = None
    if protocol != "ll":
        out["ll_alpha_s"] = None
    if protocol != "simple":
        out["alpha_s"] = 1.0
    return out


@pytest.mark.parametrize("S, proto, expected_us", [
    # 8-GPU ring all-gather of S bytes: 7 steps, 7/8 S per GPU at 360 GB/s x the protocol's share
    (64 * 1024, "ll", 5 + 7 * 0.6 + 7 / 8 * 65536 / 180e3 + 2),            # 11.5 (Simple 36.0, LL128 23.5)
    (16 * 2**20, "ll128", 8 + 7 * 1.9 + 7 / 8 * 16777216 / (0.92 * 360e3) + 2),  # 67.6 (LL 92.8, Simple 76.6)
    (256 * 2**20, "simple", 10 + 7 * 3.4 + 7 / 8 * 268435456 / 360e3 + 2),  # 688 (LL128 732)
])
def test_protocol_choice_by_hand(S, proto, expected_us):
    """The fastest protocol for the size is the one NCCL's tuning model picks, at its own latency and share."""
    hw = _hw(NVLINK)
    t = predict(hw, "all_gather", 8, S / 8)
    assert t == pytest.approx(expected_us * 1e-6, rel=1e-6)
    assert t == pytest.approx(predict(_hw(_only(proto)), "all_gather", 8, S / 8), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(op=st.sampled_from(["all_reduce", "all_gather", "reduce_scatter"]), n=st.sampled_from([2, 4, 8]),
       log_bytes=st.floats(3.0, 9.0), grow=st.floats(1.0, 4.0), copy=st.sampled_from([None, 0.3, 1.0]))
def test_min_over_protocols_never_above_one_protocol_and_monotone(op, n, log_bytes, grow, copy):
    """The price is the minimum over the protocols: never above any single protocol's, and monotone in bytes
    (with and without the ring's copy step)."""
    S = 10 ** log_bytes
    algo = "ring" if op == "all_reduce" else "auto"
    full = predict(_hw({**NVLINK, "ring_copy_step": copy}), op, n, S, algo)
    for proto in ("simple", "ll", "ll128"):
        single = predict(_hw({**_only(proto), "ring_copy_step": copy}), op, n, S, algo)
        assert full <= single * (1 + 1e-9)
    assert predict(_hw({**NVLINK, "ring_copy_step": copy}), op, n, S * grow, algo) >= full * (1 - 1e-9)


@pytest.mark.parametrize("op, n, steps, per_gpu", [
    ("all_gather", 2, 1, 1 / 2), ("reduce_scatter", 4, 3, 3 / 4), ("all_reduce", 8, 14, 2 * 7 / 8)])
def test_ring_copy_step_by_hand(op, n, steps, per_gpu):
    """ring_copy_step 0.5, Simple only, 64 MiB: s link steps move the bytes in (s + 0.5) / s of the link time
    (2-GPU all_gather: 10 + 3.4 + 1.5 x 32 MiB / 360 GB/s + 2 = 155.2 us, 1.5x the bytes' 93.2 us)."""
    S = 64 * 2**20
    nbytes = S / n if op == "all_gather" else S
    t = predict(_hw({**_only("simple"), "ring_copy_step": 0.5}), op, n, nbytes, "ring" if op == "all_reduce" else "auto")
    expected = 10e-6 + steps * 3.4e-6 + (steps + 0.5) / steps * per_gpu * S / 360e9 + PATH_S
    assert t == pytest.approx(expected, rel=1e-9)


def test_ring_copy_step_lowers_bus_bandwidth_on_fewer_gpus():
    """The copy step weighs 1/s: at 512 MiB the all-gather's bus bandwidth ((n-1)/n x size / time) grows with n as
    (n-1) / (n-1 + c), as the tables measure (B200 438 / 567 / 617 GB/s on 2 / 4 / 8 GPUs); without it, flat."""
    S = 512 * 2**20
    for copy, grows in ((0.5, True), (None, False)):
        hw = _hw({**_only("simple"), "ring_copy_step": copy})
        bus = [(n - 1) / n * S / predict(hw, "all_gather", n, S / n) for n in (2, 4, 8)]
        assert (bus[0] < bus[1] < bus[2]) if grows else bus == pytest.approx([bus[2]] * 3, rel=0.01)


def test_ring_copy_step_only_inside_one_nvlink_domain():
    """Across nodes the ring is network-bound; the copy step (a local copy) is not added there."""
    a = _hw({**_only("simple"), "ring_copy_step": 0.5})
    b = _hw(_only("simple"))
    assert predict(a, "all_reduce", 16, 2**28, "ring", nodes=2) == predict(b, "all_reduce", 16, 2**28, "ring", nodes=2)


def test_p2p_all_to_all_by_hand():
    """With all_to_all_alpha_s set, one node: Simple at that latency when a peer gets more than 16 KiB, LL
    (nvlink.ll_*) up to 16 KiB; with the channel pool the n peers (self included) share the rate."""
    rate = 450e9 * 0.7
    hw = _hw(NVLINK, all_to_all_nvlink_efficiency=0.7, all_to_all_alpha_s=20e-6, all_to_all_channel_pool=True)
    s = 2**20  # per peer, 4 GPUs: 3 peers, the rate shared by 4 slots
    assert predict(hw, "all_to_all", 4, s) == pytest.approx(20e-6 + PATH_S + 3 * s * (4 / 3) / rate, rel=1e-6)
    s = P2P_LL_THRESHOLD  # LL: 5 + 0.6 us, half the rate
    assert predict(hw, "all_to_all", 4, s) == pytest.approx(5.6e-6 + PATH_S + 3 * s * (4 / 3) / (0.5 * rate), rel=1e-6)
    no_pool = hw.model_copy(update={"collectives": hw.collectives.model_copy(update={"all_to_all_channel_pool": False})})
    assert predict(no_pool, "all_to_all", 4, 2**20) == pytest.approx(20e-6 + PATH_S + 3 * 2**20 / rate, rel=1e-6)


@pytest.mark.parametrize("buffer", [2**20, 2**26, 2**29])
def test_channel_pool_prices_the_whole_buffer(buffer):
    """NCCL's p2p channels split over n slots: one GPU's whole send buffer (its own piece included) takes the
    same time on 2, 4 and 8 GPUs, as the Blackwell tables measure (B200 512 MiB: 810 / 825 / 834 us)."""
    hw = _hw(NVLINK, all_to_all_nvlink_efficiency=0.7, all_to_all_alpha_s=20e-6, all_to_all_channel_pool=True)
    times = [predict(hw, "all_to_all", n, buffer / n) for n in (2, 4, 8)]
    assert times == pytest.approx([times[0]] * 3, rel=1e-9)


def test_profiles_without_the_p2p_fields_price_as_before():
    """all_to_all_alpha_s unset: the all-to-all keeps the path's protocols (LL128 too) at one step."""
    hw = _hw(NVLINK, all_to_all_nvlink_efficiency=0.7)
    s = 2**20
    rate = 450e9 * 0.7
    simple = 10e-6 + 3.4e-6 + 7 * s / rate
    ll128 = 8e-6 + 1.9e-6 + 7 * s / (0.92 * rate)
    assert predict(hw, "all_to_all", 8, s) == pytest.approx(min(simple, ll128) + PATH_S, rel=1e-6)


#: NCCL's protocol choice (nvlink.nccl_protocol_choice): the tuner sees a 700 GB/s ring (LL capped at 282 GB/s); LL128
#: and Simple take at least 13 us + 12 us per ring step (the B200 tables' post-switch floors)
CHOICE = {"tuner_bus_bandwidth": 700e9, "tuner_ll_max_bandwidth": 282e9, "floor_alpha_s": 13e-6, "floor_step_s": 12e-6}
RATE = 450e9 * 0.8  # NVLINK's ring rate


def _ring(op: str, n: int, S: float) -> tuple[int, float, float]:
    """(ring steps, bytes each GPU streams, predict's nbytes) of a ring ``op`` on n GPUs of ``S`` (nccl-tests size)."""
    if op == "all_reduce":
        return 2 * (n - 1), 2 * (n - 1) / n * S, S
    return n - 1, (n - 1) / n * S, S / n if op == "all_gather" else S


def _by_hand(proto: str, steps: int, per_gpu: float, copy: float | None) -> float:
    """One protocol's price under the choice: NVLINK's own terms, the byte stream max'ed with the floor
    (LL128 / Simple), plus the path latency."""
    key = {"simple": ("alpha_s", "hop_s", 1.0), "ll": ("ll_alpha_s", "ll_hop_s", NVLINK["ll_bandwidth_fraction"]),
           "ll128": ("ll128_alpha_s", "ll128_hop_s", NVLINK["ll128_bandwidth_fraction"])}[proto]
    own = NVLINK[key[0]] + steps * NVLINK[key[1]] + (steps + (copy or 0)) / steps * per_gpu / (RATE * key[2])
    floor = CHOICE["floor_alpha_s"] + steps * CHOICE["floor_step_s"] if proto != "ll" else 0.0
    return max(own, floor) + PATH_S


def test_nccl_choice_prices_the_switch_by_hand():
    """2-GPU all_reduce (2 steps). NCCL's estimate: 2 MiB LL 15.2 us (Simple 18.2), 4 MiB Simple 21.2 us (LL 22.7,
    LL128 24.3): it leaves LL between them, as the B200 table (19 -> 37 us). Priced at the path's terms, Simple at
    4 MiB is its floor, 13 + 2 x 12 + 2 = 39 us, above the fastest protocol (LL128, 8 + 3.8 + 4 MiB / 331.2 GB/s + 2 =
    26.5 us), which the min-over-protocols price would take; 2 MiB stays LL, 6.2 + 2 MiB / 180 GB/s + 2 = 19.85 us."""
    from simfoe.costs.collectives import nccl_ring_protocol

    hw = _hw({**NVLINK, "nccl_protocol_choice": CHOICE})
    choice = hw.collectives.nvlink.nccl_protocol_choice
    assert [nccl_ring_protocol(choice, 2, s) for s in (2 * 2**20, 4 * 2**20)] == ["ll", "simple"]
    assert predict(hw, "all_reduce", 2, 2 * 2**20, "ring") == pytest.approx(19.851e-6, rel=1e-4)
    assert predict(hw, "all_reduce", 2, 4 * 2**20, "ring") == pytest.approx(39e-6, rel=1e-9)
    assert predict(_hw(NVLINK), "all_reduce", 2, 4 * 2**20, "ring") == pytest.approx(26.464e-6, rel=1e-4)


@settings(max_examples=60, deadline=None)
@given(op=st.sampled_from(["all_reduce", "all_gather", "reduce_scatter"]), n=st.sampled_from([2, 4, 8]),
       log_bytes=st.floats(4.0, 9.0), grow=st.floats(1.0, 4.0), copy=st.sampled_from([None, 0.3, 1.0]))
def test_nccl_choice_is_the_chosen_protocols_price(op, n, log_bytes, grow, copy):
    """With nccl_protocol_choice the price is the chosen protocol's (so between the fastest and the slowest
    protocol's), and monotone in bytes while NCCL's pick stays the same. Not monotone across a switch: NCCL leaves a
    protocol where its own estimate says so, and the next one, at the path's terms, can be faster (a drop) or
    slower (a step up) than the one it leaves."""
    from simfoe.costs.collectives import nccl_ring_protocol

    hw = _hw({**NVLINK, "ring_copy_step": copy, "nccl_protocol_choice": CHOICE})
    choice = hw.collectives.nvlink.nccl_protocol_choice
    algo = "ring" if op == "all_reduce" else "auto"
    prices = {}
    for S in (10 ** log_bytes, 10 ** log_bytes * grow):
        steps, per_gpu, nbytes = _ring(op, n, S)
        picked = nccl_ring_protocol(choice, steps, per_gpu)
        each = [_by_hand(p, steps, per_gpu, copy) for p in ("simple", "ll", "ll128")]
        t = predict(hw, op, n, nbytes, algo)
        assert t == pytest.approx(_by_hand(picked, steps, per_gpu, copy), rel=1e-9)
        assert min(each) * (1 - 1e-9) <= t <= max(each) * (1 + 1e-9)
        prices[picked] = prices.get(picked, []) + [t]
    for ts in prices.values():
        assert ts == sorted(ts) or ts[0] == pytest.approx(ts[-1], rel=1e-9)


def test_nccl_choice_only_inside_one_nvlink_domain():
    """Across nodes the ring keeps the fastest protocol (the tables measure one node)."""
    a = _hw({**NVLINK, "nccl_protocol_choice": CHOICE})
    assert predict(a, "all_reduce", 16, 2**22, "ring", nodes=2) == predict(_hw(NVLINK), "all_reduce", 16, 2**22,
                                                                             "ring", nodes=2)


def test_nccl_choice_needs_every_protocol():
    """NCCL picks among LL, LL128 and Simple: a path without LL128 cannot carry the choice (a one-line spec error)."""
    from simfoe.specs.hardware import PathCalibration

    with pytest.raises(ValueError, match="nccl_protocol_choice needs"):
        PathCalibration(**{**_only("ll"), "alpha_s": 10e-6, "nccl_protocol_choice": CHOICE})
