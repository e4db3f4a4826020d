"""`simfoe validate`: passes today; a 20% error in a cost model makes it exit 1; bad input exits 2."""
from __future__ import annotations

import json

from simfoe.cli import main


def test_validate_passes(capsys):
    code = main(["validate", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0, r["failed"]
    assert set(r) >= {"cases", "mape", "max_ape", "by_source"}
    assert any(s.startswith("cpu-amd-epyc-zen4") for s in r["by_source"])
    for c in r["cases"]:
        assert set(c) >= {"source", "n", "mape", "max_ape"}


def test_gemm_20pct_error_fails(monkeypatch, capsys):
    import simfoe.costs.kernels as K

    orig = K.gemm

    def slow(*a, **k):
        c = orig(*a, **k)
        return K.KernelCost(1.2 * c.latency_s, c.flops, c.bytes, c.bound)

    monkeypatch.setattr(K, "gemm", slow)
    code = main(["validate", "--json", "--no-testbed"])
    r = json.loads(capsys.readouterr().out)
    assert code == 1
    assert "cpu-amd-epyc-zen4-2026-11-23:gemm" in r["failed"]


def test_collective_20pct_error_fails(monkeypatch, capsys):
    import simfoe.costs.collectives as C

    orig = C.predict
    monkeypatch.setattr(C, "predict", lambda *a, **k: 0.8 * orig(*a, **k))
    code = main(["validate", "--json", "--no-testbed"])
    r = json.loads(capsys.readouterr().out)
    assert code == 1, r["by_source"]


def test_routing_glue_20pct_error_fails(monkeypatch, capsys):
    import simfoe.costs.kernels as K

    orig = K.routing_glue
    monkeypatch.setattr(K, "routing_glue", lambda *a, **k: 1.2 * orig(*a, **k))
    code = main(["validate", "--json", "--no-testbed"])
    r = json.loads(capsys.readouterr().out)
    assert code == 1
    assert "cpu-intel-xeon-amx-2026-11-23:routing_glue" in r["failed"]


def test_validate_bad_input(capsys):
    assert main(["validate", "--set", "model.hidden=3", "--json"]) == 2
    assert main(["validate", "--vidur", "/nonexistent", "--json"]) == 2
    assert capsys.readouterr().err.count("error:") == 2
