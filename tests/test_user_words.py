"""What users read: error lines that say what is wrong and what is allowed, the recommend report's
wording (pruned counts, sections, FoE layout labels, the "why" line) and sweep plot titles (issue 26)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfoe.cli import main
from simfoe.errors import SpecError
from simfoe.paths import REPO_ROOT
from simfoe.planner.layouts import Candidate
from simfoe.planner.report import explain, pruned_words, render_html
from simfoe.specs.io import build_placement, load_model
from simfoe.specs.placement import resolve_foe


def _error_line(capsys, *argv) -> str:
    """Run the CLI, check exit 2 and one `error: ...` line, return the line."""
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert code == 2, cap.err
    assert cap.out == "" and cap.err.startswith("error: ") and cap.err.count("\n") == 1, cap.err
    assert "None is not allowed" not in cap.err and "True is not allowed" not in cap.err, cap.err
    return cap.err.strip()


def test_flag_without_value_is_worded_as_a_conflict(capsys, tmp_path):
    err = _error_line(capsys, "sweep", "--resume", "--overwrite", "--out", tmp_path / "o", "--json")
    assert err.startswith("error: --overwrite: cannot be combined with --resume;"), err
    assert not (tmp_path / "o").exists()


def test_missing_kernel_operand_names_the_op(capsys):
    err = _error_line(capsys, "kernel", "--hardware", "h100-sxm", "--op", "gemm", "--n", "8", "--k", "8", "--json")
    assert err == "error: --m: not given; --m is required for --op gemm (an integer >= 0)"


def test_neither_of_two_options(capsys):
    err = _error_line(capsys, "calibrate", "--json")
    assert err == "error: --device/--from: neither is given; give exactly one: --device (measure) or --from (fit)"
    err = _error_line(capsys, "recommend", "--model", "olmoe-1b-7b", "--hardware", "h100-sxm", "--json")
    assert "--slo-ttft-p90/--slo-tbt-p99: neither is given; give at least one of" in err


def test_a_field_not_given_says_so(capsys):
    assert str(SpecError("--x", None, "an integer >= 1")) == "--x: not given; an integer >= 1"
    assert str(SpecError("--x", None, "b", problem="c")) == "--x: c; b"
    err = _error_line(capsys, "kernel", "--hardware", "h100-sxm", "--json")
    assert err.startswith("error: --op: not given; one of gemm"), err
    err = _error_line(capsys, "forward", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--set", "model.name.x=1",
                      "--phase", "decode", "--batch", "1", "--seq-len", "8", "--json")
    assert err == "error: model.name: holds 'mixtral-8x7b', not a mapping of fields; set model.name=VALUE itself"


def test_foe_on_nodes_it_cannot_split_blames_nodes(capsys):
    err = _error_line(capsys, "forward", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--nodes", "3",
                      "--arch", "foe", "--phase", "decode", "--batch", "8", "--seq-len", "128", "--json")
    # mixtral: 8 KV heads -> 8 clusters; 24 GPUs -> 3 per cluster, which does not divide a node's 8
    assert err.startswith("error: --nodes: 3 is not allowed with arch foe: 8 clusters"), err
    assert "3 GPUs per cluster" in err and "allowed: nodes 1, 2, 4 for 8 clusters" in err and "arch moe" in err
    assert "gpus_per_cluster" not in err  # the user never set it


def _listed(text: str, after: str) -> list[int]:
    m = re.search(re.escape(after) + r"([\d, ]+)", text)
    return [int(x) for x in m.group(1).replace(" ", "").split(",") if x] if m else []


@pytest.mark.parametrize("model", ["mixtral-8x7b", "qwen3-235b-a22b", "olmoe-1b-7b", "gpt-oss-120b"])
def test_foe_misfit_suggestions_work(model):
    """Every node count and cluster count the error suggests resolves; the error comes only when the
    user's own node count does not."""
    m = load_model(model)
    for nodes in range(1, 13):
        try:
            resolve_foe(m, 8, build_placement("foe", nodes, []))
            continue
        except SpecError as e:
            err = e
        assert err.field == "nodes" and err.value == nodes, str(err)
        ok_nodes = _listed(err.allowed, "allowed: nodes ")
        assert ok_nodes and nodes not in ok_nodes
        for n in ok_nodes:
            resolve_foe(m, 8, build_placement("foe", n, []))
        for c in _listed(err.allowed, "placement.foe.clusters="):
            resolve_foe(m, 8, build_placement("foe", nodes, [f"placement.foe.clusters={c}"]))


# ---- recommend report ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def example():
    """The committed example recommendation (README): a real result dict."""
    return json.loads((REPO_ROOT / "reports" / "qwen3-235b.json").read_text())


def test_no_sensitivity_section_without_sensitivity_runs(example):
    assert "<h2>Sensitivity</h2>" in render_html(example)
    r = copy.deepcopy(example)
    for a in r["analysis"].values():
        a.pop("sensitivity", None)
    assert "Sensitivity" not in render_html(r)


def test_pruned_words():
    assert pruned_words({"pruned": 0, "pruned_by_reason": {}}) == "none pruned"
    assert pruned_words({"pruned": 3, "pruned_by_reason": {"memory: weights do not fit": 2, "latency bound: TTFT": 1}}) \
        == "3 pruned (2 memory: weights do not fit, 1 latency bound: TTFT)"


def test_foe_label_matches_the_gpus():
    one_node = dict(hardware="h100-sxm", nodes=1, arch="foe", replicas=1, gpus_per_node=8)
    c16 = Candidate(settings=(("placement.foe.clusters", 16), ("placement.foe.gpus_per_cluster", 1)), **one_node)
    c4 = Candidate(settings=(("placement.foe.clusters", 4), ("placement.foe.gpus_per_cluster", 2)), **one_node)
    assert c16.label.startswith("FoE C=16, 2 per GPU |")  # 16 clusters on 8 GPUs: two per GPU
    assert c4.label.startswith("FoE C=4 x 2 GPU |")


def _result(busy_w: dict, busy_o: dict, rate_w: float, rate_o: float) -> dict:
    lay = [{"label": "W", "goodput_rps_per_gpu": rate_w}, {"label": "O", "goodput_rps_per_gpu": rate_o}]
    return {"recommended": lay[0], "runner_up": lay[1], "layouts": lay, "rank_by": "goodput per GPU",
            "workload": {"bisect_steps": 4},
            "analysis": {"W": {"breakdown": busy_w}, "O": {"breakdown": busy_o}}}


def test_why_with_a_tie_does_not_say_wins():
    b = {"compute_s": 0.02, "all_to_all_s": 0.0, "all_reduce_s": 0.004}
    why = explain(_result(b, {**b, "all_to_all_s": 0.003}, 6.56, 6.47))  # 1.4% apart, resolution 4.4%
    assert "wins" not in why and "are tied: 6.56 vs 6.47 req/s per GPU" in why
    assert "the other layout's largest excess is all-to-all (+0.003 s)" in why
    assert " wins;" in explain(_result(b, b, 7.0, 6.0))


_secs = st.floats(0, 1, allow_nan=False).map(lambda x: round(x, 4))
_busy = st.fixed_dictionaries({"compute_s": _secs, "all_to_all_s": _secs, "all_reduce_s": _secs})


@settings(max_examples=200, deadline=None)
@given(_busy, _busy)
def test_why_agrees_with_the_numbers_it_quotes(w, o):
    why = explain(_result(w, o, 7.0, 6.0))
    a, b = (float(x) for x in re.search(r"O: (\S+) s vs (\S+) s of busy GPU time", why).groups())
    if a < b:
        k, d = re.search(r"largest excess is (\S+) \(\+(\S+) s\)", why).groups()
        assert float(d) > 0
    else:
        assert "largest excess" not in why and "not slower per request" in why


# ---- sweep plot titles ---------------------------------------------------------------------------

def test_heatmap_title_clear_and_bandwidth_in_gb_s(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    from simfoe.sweep import plots

    rows = [dict(model="m", hardware="h", arch=a, nodes=n, batch=b, phase=ph, latency_s=0.01 * b * (1.2 if a == "moe" else 1),
                 **{"hardware.network.nic_bandwidth": bw})
            for bw in (25e9, 50e9) for a in ("moe", "foe") for n in (1, 2) for b in (1, 8) for ph in ("decode", "prefill")]
    seen = []
    save = plots._save

    def check(fig, d, name, formats):
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        sup = fig.get_suptitle()
        seen.append((name, sup, [fig._suptitle.get_window_extent(r).overlaps(ax.title.get_window_extent(r))
                                 for ax in fig.axes if ax.get_title()]))
        return save(fig, d, name, formats)

    monkeypatch.setattr(plots, "_save", check)
    plots.plot_forward(pd.DataFrame(rows), Path(tmp_path), ["png"])
    heat = [s for s in seen if s[0].startswith("speedup_heatmap")]
    assert heat
    for name, sup, overlaps in seen:
        assert re.search(r"nic_bandwidth=(25|50) GB/s", sup) and "e+10" not in sup and "000000000" not in sup, sup
        assert overlaps and not any(overlaps), name
