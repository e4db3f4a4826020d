"""LongBench synthetic workload and the make_workload entry point."""
from __future__ import annotations

import numpy as np
import pytest

from simfoe.errors import SpecError
from simfoe.paths import REPO_ROOT
from simfoe.workloads import RequestTable, load_trace, longbench_requests, longbench_suite, make_workload
from simfoe.workloads.__main__ import main as workloads_main
from simfoe.workloads.longbench import BY_NAME, DATASETS, TOKENS_PER_WORD

EXAMPLE = REPO_ROOT / "traces" / "example_small.csv"
EXAMPLE_CMD = ["longbench", "--rate", "1", "--duration", "120", "--seed", "0"]  # as in traces/README.md


# ------------------------------------------------------------------ LongBench
def test_longbench_published_numbers():
    # LongBench task.md / dataset2maxlen.json (see simfoe/workloads/longbench.py)
    assert len(DATASETS) == 16 and sum(d.samples for d in DATASETS) == 3750
    assert BY_NAME["narrativeqa"].avg_words == 18409 and BY_NAME["narrativeqa"].max_new_tokens == 128
    assert BY_NAME["gov_report"].max_new_tokens == 512 and BY_NAME["hotpotqa"].max_new_tokens == 32


def test_longbench_suite_is_one_pass():
    t = longbench_suite(np.random.default_rng(0))
    assert len(t) == 3750 and not t.has_arrivals
    names, counts = np.unique(t.prompt_type, return_counts=True)
    assert dict(zip(names, counts)) == {d.name: d.samples for d in DATASETS}
    i = np.flatnonzero(t.prompt_type == "qasper")[0]
    assert t.prompt_tokens[i] == round(3619 * TOKENS_PER_WORD) and t.output_tokens[i] == 128


def test_longbench_mixture_and_cv():
    r = np.random.default_rng(1)
    t = longbench_requests(50_000, r, datasets="lcc,hotpotqa", length_cv=0.5)
    share = np.mean(t.prompt_type == "lcc")
    assert share == pytest.approx(500 / 700, abs=0.01)  # weights = sample counts 500 : 200
    lcc = t.prompt_tokens[t.prompt_type == "lcc"]
    assert lcc.mean() == pytest.approx(1235 * TOKENS_PER_WORD, rel=0.02)
    assert lcc.std() / lcc.mean() == pytest.approx(0.5, rel=0.05)
    capped = longbench_requests(100, r, datasets=["narrativeqa"], max_prompt_tokens=4096)
    assert capped.prompt_tokens.max() == 4096


def test_longbench_rejects_unknown_dataset():
    with pytest.raises(SpecError, match="dureader|nope"):
        longbench_requests(3, np.random.default_rng(0), datasets="nope")
    with pytest.raises(SpecError, match="longbench dataset"):
        make_workload("longbench:nope", rate=1.0, duration=10.0)


# ------------------------------------------------------------------ make_workload
def timed(n=200, seed=0):
    r = np.random.default_rng(seed)
    return RequestTable.from_arrays(np.sort(r.uniform(0, 100, n)), r.integers(1, 5000, n), r.integers(1, 500, n))


def test_longbench_poisson(tmp_path):
    a = make_workload("longbench", rate=4.0, duration=300.0, seed=3)
    b = make_workload("longbench", rate=4.0, duration=300.0, seed=3)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert a.arrival_s[0] == 0 and a.arrival_s.max() < 300 and abs(len(a) - 1200) < 6 * np.sqrt(1200)
    assert "poisson" in a.source
    with pytest.raises(SpecError, match="no timestamps"):
        make_workload("longbench")


def test_trace_timestamps_rescale_truncate(tmp_path):
    p = timed().to_csv(tmp_path / "t.csv")
    own = make_workload(str(p))
    np.testing.assert_allclose(own.arrival_s, load_trace(p).arrival_s)
    fast = make_workload(str(p), rate=10.0, arrival="trace")
    assert fast.mean_rate == pytest.approx(10.0)
    np.testing.assert_array_equal(fast.prompt_tokens, own.prompt_tokens)
    cut = make_workload(str(p), duration=50.0)
    assert len(cut) == np.sum(own.arrival_s < 50.0)


def test_rate_switches_to_poisson_and_keeps_lengths(tmp_path):
    p = timed().to_csv(tmp_path / "t.csv")
    own = make_workload(str(p))
    w = make_workload(str(p), rate=2.0, seed=1)
    np.testing.assert_array_equal(np.sort(w.prompt_tokens), np.sort(own.prompt_tokens))  # same requests
    assert not np.allclose(w.arrival_s, own.arrival_s)
    g = make_workload(str(p), rate=2.0, duration=2000.0, arrival="gamma:3", seed=1)
    assert set(g.prompt_tokens) <= set(own.prompt_tokens) and "gamma cv=3" in g.source
    # no rate: the process runs at the trace's own mean rate
    same_rate = make_workload(str(p), arrival="poisson", duration=5000.0, seed=2)
    assert same_rate.mean_rate == pytest.approx(own.mean_rate, rel=0.15)


def test_lognormal_lengths(tmp_path):
    p = timed(2000).to_csv(tmp_path / "t.csv")
    w = make_workload(str(p), rate=5.0, duration=100.0, lengths="lognormal", seed=0)
    assert w.prompt_tokens.min() >= 1 and w.prompt_tokens.max() <= 5000
    with pytest.raises(SpecError, match="lengths"):
        make_workload(str(p), rate=5.0, lengths="weird")


@pytest.mark.parametrize("kw, field", [({"rate": -1.0}, "rate"), ({"duration": 0.0}, "duration"),
                                       ({"arrival": "uniform"}, "arrival")])
def test_bad_arguments(tmp_path, kw, field):
    p = timed().to_csv(tmp_path / "t.csv")
    with pytest.raises(SpecError, match=field):
        make_workload(str(p), **kw)


def test_unknown_trace_name():
    with pytest.raises(SpecError, match="built-in|existing"):
        make_workload("no-such-trace")


def test_skip_bad_rows_reported_through_make_workload(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,x,1\n2,3,3\n")
    with pytest.raises(SpecError, match="line 3"):
        make_workload(str(p))
    w = make_workload(str(p), skip_bad_rows=True)
    assert len(w) == 2 and w.skipped_rows == 1


def test_example_trace_is_current(tmp_path):
    """traces/example_small.csv is exactly what its documented command writes."""
    out = tmp_path / "ex.csv"
    assert workloads_main([*EXAMPLE_CMD, "--out", str(out)]) == 0
    assert out.read_text() == EXAMPLE.read_text()


@pytest.mark.shared
def test_builtin_shared_names(shared_data):
    conv = make_workload("azure-conv")
    assert len(conv) == 19366
    s = make_workload("sharegpt", rate=10.0, duration=60.0, seed=0)
    assert 400 < len(s) < 800 and s.has_arrivals
    m = make_workload("mooncake-conv", rate=1.0, duration=100.0, seed=0)
    assert m.hash_offsets is not None and m.hash_block_tokens == 512
