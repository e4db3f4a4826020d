"""Shared pytest fixtures: location of ../shared/data (tests skip with a reason when absent)."""
from __future__ import annotations

import pytest

from simfoe.paths import shared_data_dir


@pytest.fixture
def refused(capsys):
    """``refused(argv, *words)``: run the CLI and check the contract for bad input (exit 2, nothing on
    stdout, one ``error:`` line on stderr, no traceback) and that the line has every word; returns it."""
    from simfoe.cli import main

    def check(argv, *words) -> str:
        code = main([str(a) for a in argv])
        cap = capsys.readouterr()
        assert code == 2, cap.err
        assert cap.out == ""
        assert cap.err.startswith("error: ") and cap.err.count("\n") == 1 and "Traceback" not in cap.err, cap.err
        for w in words:
            assert w in cap.err, (w, cap.err)
        return cap.err
    return check


@pytest.fixture(scope="session")
def shared_data():
    d = shared_data_dir()
    if d is None:
        pytest.skip("../shared/data is absent (public reference data is read in place, not shipped)")
    return d


class _FakeForward:
    """Stands in for ForwardModel in fast serve CLI tests (analytic iteration time, 8 GPUs, 400k KV tokens)."""

    gpus = 8
    dp_ranks = 1  # TP attention on one node: one data-parallel attention rank
    rank_compute_s = None

    def __init__(self):
        from types import SimpleNamespace

        from simfoe.specs.placement import MoELayout

        # the layout serve reports (mixtral-8x7b's default on one 8-GPU node)
        self.layout = MoELayout(gpus=8, gpus_per_node=8, attention="tp", attention_tp=8, ep=8, n_experts=8,
                                top_k=2, expert_ffn=14336, dedup=True, all_to_all="direct")
        self.placement = SimpleNamespace(nodes=1)
        from simfoe.serving import LinearStep

        self._lin = LinearStep(base_s=8e-3, per_prefill_token_s=2e-5, per_attn_pair_s=1e-9, per_decode_seq_s=1e-4,
                               per_kv_token_s=1e-7)

    def kv_capacity_tokens(self):
        return 400_000

    def iteration(self, *a):
        return self._lin.iteration(*a)


@pytest.fixture
def fake_forward(monkeypatch):
    """serve runs on _FakeForward instead of the forward simulator."""
    from simfoe.serving import api

    monkeypatch.setattr(api, "build_forward", lambda *a, **k: (_FakeForward(), None, None))
