"""`simfoe presets` lists what short names exist; `simfoe compare` says which spec fields differ between
two outputs and how much each metric moved (single runs and sweep folders)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simfoe.cli import main
from simfoe.compare import change, compare, spec_differences
from simfoe.specs.io import list_presets
from simfoe.sweep.store import ResultStore

FWD = ["forward", "--model", "olmoe-1b-7b", "--hardware", "h100-sxm", "--phase", "decode", "--batch", "64",
       "--seq-len", "64", "--nodes", "2", "--set", "placement.moe.attention=dp", "--json"]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line_error(code, out, err, *words):
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, (code, err)
    for w in words:
        assert w in err, (w, err)


# ---- presets --------------------------------------------------------------------------------

def test_presets_json_lists_every_group(capsys):
    code, out, _ = cli(capsys, "presets", "--json")
    assert code == 0 and out.count("\n") == 1
    r = json.loads(out)
    assert set(r) == {"models", "hardware", "pipelines", "sweeps"}
    assert [m["name"] for m in r["models"]] == list_presets("model")
    assert [h["name"] for h in r["hardware"]] == list_presets("hardware")
    assert "factool" in [p["name"] for p in r["pipelines"]]
    assert r["sweeps"][0]["name"] == "default" and r["sweeps"][0]["kind"] == "forward"
    assert all(p["line"] for g in r.values() for p in g)


def test_presets_lines_hand_checked(capsys):
    code, out, _ = cli(capsys, "presets", "models", "--json")
    mixtral = {m["name"]: m for m in json.loads(out)["models"]}["mixtral-8x7b"]
    # Mistral's figures: 46.7B parameters, 12.9B active per token; 8 experts, top-2
    assert mixtral["line"].startswith("46.7B params (12.9B active), 8 experts top-2, 32 layers")
    code, out, _ = cli(capsys, "presets", "hardware")
    h100 = next(ln for ln in out.splitlines() if ln.split()[0] == "h100-sxm")
    assert "8 per node, 8 NICs x 400 Gb/s, 80 GB at 3.35 TB/s, 989 TFLOP/s bf16" in h100  # DGX H100: NDR 400 Gb/s


def test_presets_bad_group(capsys):
    one_line_error(*cli(capsys, "presets", "gpus"), "group", "gpus", "models")


# ---- compare: single runs --------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_forwards(tmp_path_factory):
    """Two forward --json outputs that differ in the NIC rate (EP over 2 nodes: the dispatch crosses
    the network, 34 MB of it)."""
    d = tmp_path_factory.mktemp("fwd")
    paths = []
    for i, bw in enumerate(("50e9", "5e9")):
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main([*FWD, "--set", f"hardware.network.nic_bandwidth={bw}"]) == 0
        paths.append(d / f"{i}.json")
        paths[-1].write_text(buf.getvalue())
    return paths


def test_compare_forward_names_the_change_and_each_metric(two_forwards):
    a, b = two_forwards
    r = compare(a, b)
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    fields = {d["field"]: d for d in r["specs"]}
    bw = fields["run.specs.hardware.network.nic_bandwidth"]
    assert (bw["a"], bw["b"], bw["change"]) == (50e9, 5e9, -0.9)
    assert "run.overrides" in fields and not any(f.startswith("layout.") for f in fields)
    lat = next(m for m in r["metrics"] if m["metric"] == "latency_s")
    assert lat["change"] == pytest.approx((rb["latency_s"] - ra["latency_s"]) / ra["latency_s"])
    assert lat["change"] > 0  # a slower network, a slower pass
    assert r["a"]["command"] == ra["run"]["command"] and r["specs_known"]


def test_compare_identical_runs_moves_nothing(two_forwards, capsys):
    code, out, _ = cli(capsys, "compare", two_forwards[0], two_forwards[0], "--json")
    r = json.loads(out)
    assert code == 0 and r["specs"] == [] and all(m["change"] == 0 for m in r["metrics"])
    code, out, _ = cli(capsys, "compare", two_forwards[0], two_forwards[1])
    assert "spec fields that differ: 2" in out and "latency_s" in out


def test_compare_serve_folders(fake_forward, tmp_path, capsys):
    for name, rate in (("a", 2), ("b", 4)):
        code, _, err = cli(capsys, "serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe",
                           "--trace", "longbench", "--rate", rate, "--duration", 20, "--out", tmp_path / name, "--json")
        assert code == 0, err
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r["kind"] == "serve"
    fields = {d["field"]: d for d in r["specs"]}
    assert (fields["run.options.rate"]["a"], fields["run.options.rate"]["b"]) == (2, 4)
    names = {m["metric"] for m in r["metrics"]}
    assert {"ttft_s.p90", "throughput.requests_per_s"} <= names
    assert not any(n.startswith(("sim.", "layout.")) for n in names)


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "missing.json", ["RUN_B", "no such file"]),
    (lambda d: (d / "x.txt").write_text("not json") and d / "x.txt", ["RUN_B", "not JSON"]),
    (lambda d: (d / "x.json").write_text('{"a": 1}') and d / "x.json", ["RUN_B", "neither latency_s nor ttft_s"]),
    (lambda d: d, ["RUN_B", "holds neither"]),
])
def test_compare_bad_input(two_forwards, tmp_path, capsys, make, words):
    one_line_error(*cli(capsys, "compare", two_forwards[0], make(tmp_path)), *words)


def test_compare_kinds_must_match(two_forwards, tmp_path, capsys):
    (tmp_path / "s.json").write_text(json.dumps({"ttft_s": {}, "requests": {}}))
    one_line_error(*cli(capsys, "compare", two_forwards[0], tmp_path / "s.json"), "RUN_B", "same kind", "forward")


# ---- compare: sweep folders ------------------------------------------------------------------

def _sweep(d, nodes: int, latencies: list[float], version="0.1.0"):
    rows = [{"run_id": f"{nodes}{i}", "index": i, "kind": "forward", "status": "ok", "error": None,
             "model": "olmoe-1b-7b", "arch": arch, "batch": batch, "nodes": nodes, "latency_s": lat,
             "simfoe_version": version, "wall_s": 0.1, "worker": "w", "finished_at": 0.0}
            for i, ((arch, batch), lat) in enumerate(zip([("moe", 1), ("moe", 8), ("foe", 1), ("foe", 8)], latencies))]
    ResultStore(d).append(rows)
    (d / "sweep.json").write_text(json.dumps({"kind": "forward", "simfoe_version": version, "command": "simfoe sweep"}))
    (d / "sweep.yaml").write_text(f"kind: forward\nbase: {{nodes: {nodes}}}\ngrid: {{arch: [moe, foe], batch: [1, 8]}}\n")
    return d


def test_compare_sweeps_matches_rows_on_shared_inputs(tmp_path):
    a = _sweep(tmp_path / "a", 1, [1.0, 2.0, 4.0, 8.0])
    b = _sweep(tmp_path / "b", 2, [1.5, 2.0, 2.0, 8.0], version="0.2.0")
    r = compare(a, b)
    # nodes takes no common value: it is the change, not a match key
    assert r["match"]["matched_on"] == ["model", "arch", "batch"]
    assert r["match"]["inputs_that_differ"] == {"nodes": [["1"], ["2"]]}
    assert r["match"]["matched_rows"] == 4
    lat = next(m for m in r["metrics"] if m["metric"] == "latency_s")
    # per-row changes +50%, 0, -50%, 0 -> median 0, min -0.5, max +0.5; medians of A and B by hand
    assert (lat["change"], lat["change_min"], lat["change_max"]) == (0.0, -0.5, 0.5)
    assert (lat["a"], lat["b"]) == (3.0, 2.0)
    fields = {d["field"]: (d["a"], d["b"]) for d in r["specs"]}
    assert fields["spec.base.nodes"] == (1, 2)
    assert (r["a"]["simfoe_version"], r["b"]["simfoe_version"]) == ("0.1.0", "0.2.0")


def test_compare_sweep_with_single_run_is_refused(two_forwards, tmp_path, capsys):
    _sweep(tmp_path / "a", 1, [1.0, 2.0, 4.0, 8.0])
    one_line_error(*cli(capsys, "compare", tmp_path / "a", two_forwards[0]), "RUN_B", "same kind", "sweep")


# ---- properties ------------------------------------------------------------------------------

@given(st.floats(1e-3, 1e3), st.floats(1e-3, 1e3))
def test_change_round_trips(a, b):
    # B is A x (1 + change(A, B)), so going there and back multiplies by 1
    assert (1 + change(a, b)) * (1 + change(b, a)) == pytest.approx(1.0, rel=1e-9)
    assert (change(a, b) > 0) == (b > a)


@given(st.dictionaries(st.sampled_from("abcde"), st.integers(0, 3)),
       st.dictionaries(st.sampled_from("abcde"), st.integers(0, 3)))
def test_spec_differences_are_symmetric(a, b):
    ab, ba = spec_differences(a, b), spec_differences(b, a)
    assert {d["field"] for d in ab} == {d["field"] for d in ba} == {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
