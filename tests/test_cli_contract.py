"""The CLI's public contract under bad input (DESIGN.md, "Public contract"): exit 2 with ONE line
`error: FIELD: VALUE is not allowed; ALLOWED` on stderr and no traceback; output paths are checked
before a run; outputs are written atomically (all files or none, no temporary file left behind,
ordinary permissions). Every CLI call here is small (a decode pass of batch 2, a fake serving cost
model, a 5 s pipeline)."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

import simfoe.serving.api as serving_api
from simfoe.cli import main
from simfoe.errors import SpecError
from simfoe.outputs import AtomicFiles, check_dir, check_file, file_mode, json_text, write_text

FWD = ["forward", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--batch", "2", "--seq-len", "64",
       "--phase", "decode"]
SERVE = ["serve", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--arch", "moe", "--trace", "longbench",
         "--rate", "2", "--duration", "10"]
PIPE = """name: tiny
stages:
  - name: a
    instances: 1
    service_s: {dist: exponential, mean: 0.05}
"""


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line_error(code, out, err, *words):
    assert code == 2, err
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def leftovers(d):
    """Temporary files AtomicFiles or the old mkstemp writers would leave behind."""
    return [p.name for p in d.rglob("*") if ".tmp" in p.name or p.name.startswith(".simfoe-probe")]


@pytest.fixture
def binfile(tmp_path):
    def make(name):
        p = tmp_path / name
        p.write_bytes(b"\xff\xfe\x00\x01binary\x00\x9c")
        return p
    return make


# ---------------------------------------------------------------- simfoe.outputs

def test_json_text_is_strict_json_with_one_newline(tmp_path):
    """Every JSON file and --json line goes through json_text: NaN/inf become null (strict JSON that
    jq and browsers read), numpy scalars plain numbers, paths strings, one trailing newline."""
    t = json_text({"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(3), float("inf")], 4: tmp_path})
    assert t.endswith("}\n") and not t.endswith("\n\n")
    assert json.loads(t, parse_constant=lambda c: pytest.fail(f"non-strict constant {c}")) == {
        "a": None, "b": 1.5, "c": [3, None], "4": str(tmp_path)}
    assert "\n" not in json_text([1, 2], indent=None)[:-1]


def test_atomic_files_all_or_nothing(tmp_path):
    (tmp_path / "b.json").mkdir()  # a folder where the second file goes
    with pytest.raises(SpecError, match="--out"):
        with AtomicFiles("--out") as w:
            w.path(tmp_path / "a.json").write_text("new")
            w.path(tmp_path / "b.json").write_text("new")
    assert not (tmp_path / "a.json").exists()
    assert leftovers(tmp_path) == []


def test_atomic_files_error_inside_block_cleans_up(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with AtomicFiles() as w:
            w.path(tmp_path / "a.txt").write_text("half")
            raise RuntimeError("boom")
    assert (tmp_path / "a.txt").read_text() == "old" and leftovers(tmp_path) == []


def test_written_files_respect_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert file_mode() == 0o640
        p = write_text(tmp_path / "sub" / "x.txt", "hi")
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_check_paths(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SpecError, match="is a folder|this is a folder"):
        check_file("--out", tmp_path)
    with pytest.raises(SpecError, match="not a folder"):
        check_file("--out", f / "x.json")
    with pytest.raises(SpecError, match="not a folder"):
        check_dir("--out", f)
    with pytest.raises(SpecError, match=r"summary\.json is a folder"):
        (tmp_path / "d" / "summary.json").mkdir(parents=True)
        check_dir("--out", tmp_path / "d", files=("summary.json",))
    check_file("--out", tmp_path / "new" / "deeper" / "x.json")  # missing folders can be created
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []


def test_spec_error_shows_plain_values():
    assert "np." not in str(SpecError("x", np.int64(-1), "y")) and "-1" in str(SpecError("x", np.int64(-1), "y"))
    assert str(SpecError("x", np.float64("nan"), "y")) == "x: nan is not allowed; y"


# ---------------------------------------------------------------- A1/A2/B10: output paths

def test_forward_timeline_bad_paths_exit_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    one_line_error(*cli(capsys, *FWD, "--timeline", tmp_path, "--json"), "--timeline", "folder")
    one_line_error(*cli(capsys, *FWD, "--timeline", tmp_path / "afile" / "t.json", "--json"), "--timeline",
                   "not a folder")
    assert leftovers(tmp_path) == []


def test_forward_timeline_written_with_normal_mode(tmp_path, capsys):
    t = tmp_path / "t.json"
    code, out, err = cli(capsys, *FWD, "--timeline", t, "--json")
    assert code == 0, err
    assert json.loads(t.read_text())["traceEvents"]
    assert stat.S_IMODE(t.stat().st_mode) == file_mode()
    assert leftovers(tmp_path) == []


def test_serve_out_checked_before_the_run(fake_forward, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "half" / "summary.json").mkdir(parents=True)
    ran = []
    monkeypatch.setattr(serving_api, "simulate", lambda *a, **k: ran.append(1))
    one_line_error(*cli(capsys, *SERVE, "--out", tmp_path / "afile", "--json"), "--out", "not a folder")
    one_line_error(*cli(capsys, *SERVE, "--out", tmp_path / "half", "--json"), "--out", "summary.json")
    one_line_error(*cli(capsys, *SERVE, "--timeline", tmp_path, "--json"), "--timeline")
    assert ran == [] and not (tmp_path / "half" / "requests.parquet").exists()


def test_serve_writes_out_and_timeline_together(fake_forward, tmp_path, capsys):
    out, t = tmp_path / "o", tmp_path / "tl" / "t.json"
    code, stdout, err = cli(capsys, *SERVE, "--out", out, "--timeline", t, "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["files"] == {"records": str(out / "requests.parquet"), "summary": str(out / "summary.json")}
    assert (out / "requests.parquet").is_file() and json.loads((out / "summary.json").read_text())["requests"]
    assert json.loads(t.read_text())["traceEvents"]
    for p in (out / "requests.parquet", out / "summary.json", t):
        assert stat.S_IMODE(p.stat().st_mode) == file_mode()
    assert leftovers(tmp_path) == []


def test_pipeline_compare_out(tmp_path, capsys):
    spec = tmp_path / "p.yaml"
    spec.write_text(PIPE)
    base = ["pipeline", "--spec", spec, "--duration", "5", "--compare", "stream,batch", "--rates", "1", "--jobs", "1"]
    (tmp_path / "afile").write_text("x")
    one_line_error(*cli(capsys, *base, "--out", tmp_path / "afile", "--json"), "--out")
    (tmp_path / "half" / "curves.png").mkdir(parents=True)
    one_line_error(*cli(capsys, *base, "--out", tmp_path / "half", "--json"), "--out", "curves.png")
    assert not (tmp_path / "half" / "points.json").exists()
    code, out, err = cli(capsys, *base, "--out", tmp_path / "ok", "--json")
    assert code == 0, err
    assert json.loads(out)["files"] == [str(tmp_path / "ok" / "points.json"), str(tmp_path / "ok" / "curves.png")]
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["curves.png", "points.json"]


def test_pipeline_out_without_compare_is_an_error(tmp_path, capsys):
    spec = tmp_path / "p.yaml"
    spec.write_text(PIPE)
    one_line_error(*cli(capsys, "pipeline", "--spec", spec, "--duration", "5", "--out", tmp_path / "x", "--json"),
                   "--out", "--compare")


def test_recommend_out_checked_before_the_search(tmp_path, capsys):
    base = ["recommend", "--model", "olmoe-1b-7b", "--hardware", "h100-sxm", "--slo-ttft-p90", "2"]
    one_line_error(*cli(capsys, *base, "--out", tmp_path, "--json"), "--out", "folder")
    (tmp_path / "r.json").mkdir()
    one_line_error(*cli(capsys, *base, "--out", tmp_path / "r.html", "--json"), "--out", "r.json")


def test_recommend_report_files_both_or_neither(tmp_path, monkeypatch):
    import simfoe.planner.report as report

    monkeypatch.setattr(report, "render_html", lambda r: "<html></html>")
    monkeypatch.setattr(report, "caveats", lambda r: [])
    (tmp_path / "r.json").mkdir()
    with pytest.raises(SpecError, match="--out"):
        report.write_report({"model": "m"}, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists() and leftovers(tmp_path) == []
    files = report.write_report({"model": "m"}, tmp_path / "ok" / "r.html")
    assert json.loads((tmp_path / "ok" / "r.json").read_text())["files"] == files
    assert (tmp_path / "ok" / "r.html").read_text() == "<html></html>"


def test_sweep_out_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    one_line_error(*cli(capsys, "sweep", "--out", tmp_path / "afile", "--json"), "--out", "not a folder")
    (tmp_path / "o" / "plots").parent.mkdir()
    (tmp_path / "o" / "plots").write_text("x")
    one_line_error(*cli(capsys, "sweep", "--out", tmp_path / "o", "--json"), "--out", "plots")


def test_validate_and_testbed_outputs_checked_first(tmp_path, capsys):
    one_line_error(*cli(capsys, "validate", "--no-testbed", "--cases-out", tmp_path, "--json"), "--cases-out")
    (tmp_path / "afile").write_text("x")
    one_line_error(*cli(capsys, "testbed", "--quick", "--out", tmp_path / "afile" / "t.json", "--json"), "--out")


def test_calibrate_out_checked_before_the_fit(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    one_line_error(*cli(capsys, "calibrate", "--from", "validation/data/h100-sxm-2026-11-24",
                        "--out", tmp_path / "afile" / "p.yaml", "--json"), "--out")
    one_line_error(*cli(capsys, "calibrate", "--device", "cpu", "--out", tmp_path / "afile", "--json"), "--out")


def test_profile_update_keeps_ordinary_mode(tmp_path):
    from simfoe.paths import hwprofiles_dir
    from simfoe.specs.profile_io import update_profile

    p = tmp_path / "hw.yaml"
    p.write_text((hwprofiles_dir() / "h100-sxm.yaml").read_text())
    update_profile(p, "description", "changed")
    assert stat.S_IMODE(p.stat().st_mode) == file_mode() and leftovers(tmp_path) == []


# ---------------------------------------------------------------- A3: --seed

@pytest.mark.parametrize("argv", [
    FWD,
    SERVE,
    ["pipeline", "--spec", "factool", "--rate", "1", "--duration", "5"],
    ["recommend", "--model", "olmoe-1b-7b", "--hardware", "h100-sxm", "--slo-ttft-p90", "2"],
])
def test_negative_seed(argv, capsys):
    one_line_error(*cli(capsys, *argv, "--seed", "-1", "--json"), "--seed: -1", ">= 0")


def test_negative_seed_in_a_sweep(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text("kind: forward\nbase: {model: mixtral-8x7b, hardware: h100-sxm, phase: decode, seq_len: 64}\n"
                 "grid: {seed: [0, -1]}\n")
    one_line_error(*cli(capsys, "sweep", f, "--out", tmp_path / "o", "--json"), "seed", "-1")


# ---------------------------------------------------------------- A6/A8: non-finite and absurd values

@pytest.mark.parametrize("argv, words", [
    (["--rate", "inf"], ["--rate", "inf"]),
    (["--duration", "inf"], ["--duration"]),
    (["--compare", "stream,batch", "--rates", "1,inf"], ["--rates"]),
    (["--compare", "stream,batch", "--rates", "1:1e9:1"], ["--rates", "at most"]),
    (["--compare", "stream", "--target", "0"], ["--target"]),
    (["--compare", "stream", "--jobs", "0"], ["--jobs"]),
])
def test_pipeline_non_finite_values(argv, words, capsys):
    one_line_error(*cli(capsys, "pipeline", "--spec", "factool", *argv, "--json"), *words)


def test_forward_inf_and_overflowing_values(capsys):
    one_line_error(*cli(capsys, *FWD, "--set", "hardware.network.nic_bandwidth=inf", "--json"), "--set", "finite")
    one_line_error(*cli(capsys, *FWD, "--set", "hardware.gpu.peak_flops.bf16=1e-300", "--json"), "--set", "finite")
    code, out, err = cli(capsys, "forward", "--model", "mixtral-8x7b", "--hardware", "h100-sxm",
                         "--batch", "1000000000", "--seq-len", "100000000", "--json")
    one_line_error(code, out, err, "--batch", "--seq-len")


def test_recommend_bad_routing_is_an_input_error(capsys):
    one_line_error(*cli(capsys, "recommend", "--model", "olmoe-1b-7b", "--hardware", "h100-sxm",
                        "--slo-ttft-p90", "2", "--routing", "zipf:-1", "--json"), "--routing", "zipf:-1")


def test_serve_sweep_with_a_missing_trace_fails_up_front(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text("kind: serve\nbase: {model: olmoe-1b-7b, hardware: h100-sxm, arch: moe, nodes: 1, "
                 f"trace: {tmp_path / 'missing.csv'}, duration: 3}}\ngrid: {{rate: [1, 2]}}\n")
    one_line_error(*cli(capsys, "sweep", f, "--out", tmp_path / "o", "--workers", "1", "--json"), "trace")
    assert not (tmp_path / "o").exists()


def test_sweep_exits_1_when_every_scenario_fails(tmp_path, capsys):
    r = tmp_path / "r.csv"
    r.write_text("1,2,3\n")  # 3 experts for an 8-expert model: every scenario fails when it runs
    f = tmp_path / "s.yaml"
    f.write_text("kind: forward\nbase: {model: mixtral-8x7b, hardware: h100-sxm, arch: moe, nodes: 1, "
                 f"phase: decode, seq_len: 64, routing: 'trace:{r}'}}\ngrid: {{batch: [1, 2]}}\n")
    code, out, err = cli(capsys, "sweep", f, "--out", tmp_path / "o", "--workers", "1", "--no-plots", "--json")
    assert code == 1 and json.loads(out)["failed"] == 2 and json.loads(out)["ok"] == 0
    assert err == ""  # stderr is not a terminal: no progress bar


# ---------------------------------------------------------------- A4/A5/A7: malformed input files

def test_binary_input_files(tmp_path, capsys, binfile):
    b = binfile("bin.yaml")
    one_line_error(*cli(capsys, "forward", "--model", b, "--hardware", "h100-sxm", "--json"), "--model", "UTF-8")
    one_line_error(*cli(capsys, "kernel", "--hardware", b, "--op", "gemm", "--m", "1", "--n", "1", "--k", "1",
                        "--json"), "--hardware", "UTF-8")
    one_line_error(*cli(capsys, "pipeline", "--spec", b, "--json"), "--spec", "UTF-8")
    one_line_error(*cli(capsys, "sweep", b, "--out", tmp_path / "o", "--json"), "spec", "UTF-8")
    one_line_error(*cli(capsys, "validate", "--tolerances", b, "--no-testbed", "--json"), "--tolerances", "UTF-8")
    one_line_error(*cli(capsys, "kernel", "--hardware", "h100-sxm", "--shapes", binfile("s.csv"), "--json"),
                   "--shapes", "UTF-8")
    one_line_error(*cli(capsys, *SERVE[:-6], "--trace", binfile("t.csv"), "--json"), "--trace", "UTF-8")
    one_line_error(*cli(capsys, "recommend", "--model", "olmoe-1b-7b", "--hardware", "h100-sxm", "--slo-ttft-p90",
                        "2", "--trace", binfile("t2.csv"), "--json"), "--trace", "UTF-8")


def test_folder_given_as_an_input_file(tmp_path, capsys):
    one_line_error(*cli(capsys, "forward", "--model", tmp_path, "--hardware", "h100-sxm", "--json"),
                   "--model", "folder")


@pytest.mark.parametrize("name, content", [
    ("letters.csv", "a,b,c,d,e,f,g,h\n"),
    ("nan.csv", "nan,2,3,4,5,6,7,8\n"),
    ("inf.csv", "inf,2,3,4,5,6,7,8\n"),
    ("empty.csv", ""),
    ("ragged.csv", "1,2,3,4,5,6,7,8\n1,2\n"),
    ("short.csv", "1,2,3\n"),
    ("garbage.npy", b"\x93NUMPY garbage"),
    ("binary.csv", b"\xff\xfe\x00\x01"),
])
def test_malformed_routing_trace(tmp_path, capsys, name, content):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    err = one_line_error(*cli(capsys, *FWD, "--routing", f"trace:{p}", "--json"), "routing", name)
    assert "Warning" not in err


def test_object_npy_routing_trace(tmp_path, capsys):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    one_line_error(*cli(capsys, *FWD, "--routing", f"trace:{p}", "--json"), "routing", "numeric .npy")
    ok = tmp_path / "ok.npy"
    np.save(ok, np.arange(1, 9, dtype=float)[None, :])
    code, out, err = cli(capsys, *FWD, "--routing", f"trace:{ok}", "--json")
    assert code == 0 and err == ""


def test_calibrate_bad_measurement_set(tmp_path, capsys):
    s = tmp_path / "set"
    s.mkdir()
    (s / "kernels.csv").write_text("garbage\n1,2\n")
    (s / "env.json").write_text("{}")
    one_line_error(*cli(capsys, "calibrate", "--from", s, "--json"), "--from", "kernels.csv", "op")
    (s / "kernels.csv").write_bytes(b"\xff\xfe\x00")
    one_line_error(*cli(capsys, "calibrate", "--from", s, "--json"), "--from", "UTF-8")


def test_plot_corrupt_parquet(tmp_path, capsys):
    (tmp_path / "results.parquet").write_text("not parquet")
    one_line_error(*cli(capsys, "plot", tmp_path, "--json"), "out", "parquet")


@pytest.mark.parametrize("content, word", [("", "empty"), ("foo: bar\n", "foo"), ("a: [\n", "YAML")])
def test_validate_bad_tolerance_files(tmp_path, capsys, content, word):
    p = tmp_path / "tol.yaml"
    p.write_text(content)
    one_line_error(*cli(capsys, "validate", "--tolerances", p, "--no-testbed", "--json"), "--tolerances", word)


def test_trace_row_errors_show_plain_values(tmp_path, capsys):
    p = tmp_path / "t.csv"
    p.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,10\n-1,10,10\n")
    err = one_line_error(*cli(capsys, *SERVE[:-6], "--trace", p, "--json"), "--trace", "line 3", "has -1")
    assert "np." not in err


# ---------------------------------------------------------------- B1/B3: flag names, allowed lists

@pytest.mark.parametrize("argv, flag", [
    (["--horizon", "-1"], "--horizon"),
    (["--arrival", "gamma:0"], "--arrival: 'gamma:0'"),
    (["--max-batch", "0"], "--max-batch"),
    (["--block-size", "0"], "--block-size"),
    (["--slo-tbt", "0"], "--slo-tbt"),
])
def test_serve_errors_name_the_flag(fake_forward, capsys, argv, flag):
    one_line_error(*cli(capsys, *SERVE, *argv, "--json"), flag)


def test_serve_arrival_trace_without_timestamps(fake_forward, capsys):
    one_line_error(*cli(capsys, *SERVE, "--arrival", "trace", "--json"), "--arrival", "timestamps")


def test_kernel_errors_name_the_flag_and_list_accepted_dtypes(capsys):
    base = ["kernel", "--hardware", "h100-sxm"]
    attn = ["--op", "attention_prefill", "--batch", "1", "--q-len", "10", "--kv-len", "10", "--head-dim", "128"]
    one_line_error(*cli(capsys, *base, *attn, "--heads", "8", "--kv-heads", "3", "--json"), "--kv-heads: 3")
    one_line_error(*cli(capsys, *base, *attn, "--heads", "0", "--kv-heads", "1", "--json"), "--heads: 0")
    err = one_line_error(*cli(capsys, *base, "--op", "gemm", "--m", "1", "--n", "1", "--k", "1", "--dtype", "fp32",
                              "--json"), "--dtype")
    allowed = err.split("h100-sxm: ")[1].strip().split(", ")
    for d in allowed:  # every dtype the message lists is accepted
        code, _, e = cli(capsys, *base, "--op", "gemm", "--m", "1", "--n", "1", "--k", "1", "--dtype", d, "--json")
        assert code == 0, e
    assert "fp16" in allowed and "fp32" not in allowed
    one_line_error(*cli(capsys, *base, "--op", "grouped_gemm", "--tokens", "", "--n", "1", "--k", "1", "--json"),
                   "--tokens: empty; --tokens is required for --op grouped_gemm")


# ---------------------------------------------------------------- A9: conflicting inputs

@pytest.mark.parametrize("argv", [
    ["--nodes", "1", "--set", "placement.nodes=2"],
    ["--arch", "moe", "--set", "placement.arch=foe"],
])
def test_forward_explicit_flag_conflicts_with_set(capsys, argv):
    one_line_error(*cli(capsys, *FWD, *argv, "--json"), "--set", "placement.")


def test_forward_set_placement_alone_still_applies(capsys):
    code, out, err = cli(capsys, *FWD, "--set", "placement.nodes=2", "--json")
    assert code == 0, err
    assert json.loads(out)["gpus"] == 16


def test_serve_explicit_arch_conflicts_with_set(fake_forward, capsys):
    one_line_error(*cli(capsys, *SERVE, "--set", "placement.arch=foe", "--json"), "--set", "--arch moe")


@pytest.mark.parametrize("item", ["model.hidden=1", "placement.foo=1"])
def test_kernel_set_takes_hardware_only(capsys, item):
    one_line_error(*cli(capsys, "kernel", "--hardware", "h100-sxm", "--op", "gemm", "--m", "1", "--n", "1", "--k",
                        "1", "--set", item, "--json"), "--set", "hardware.*")


def test_calibrate_quick_with_from_is_an_error(capsys):
    one_line_error(*cli(capsys, "calibrate", "--from", "validation/data/h100-sxm-2026-11-24", "--quick", "--json"),
                   "--quick", "--device")
    one_line_error(*cli(capsys, "calibrate", "--device", "cpu", "--from", "x", "--json"), "--device/--from",
                   "both are given")


# ---------------------------------------------------------------- B4: --help

def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["forward", "--help"])
    h = " ".join(capsys.readouterr().out.split())
    for text in ("(default: 2048)", "(default: prefill)", "(default: uniform)", "(default: 0)", "default moe",
                 "default 1"):
        assert text in h, text
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    h = " ".join(capsys.readouterr().out.split())
    assert "(default: the whole trace)" in h and "(default: round-robin)" in h
    with pytest.raises(SystemExit):
        main(["recommend", "--help"])
    assert "at least one of the two SLO flags is required" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    assert "only hardware.* paths" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    h = " ".join(capsys.readouterr().out.split())
    assert "1 when every scenario that ran failed" in h and "(default: True)" not in h


def test_forward_warns_on_stderr_when_the_pass_does_not_fit(capsys):
    assert main(["forward", "--model", "deepseek-v3", "--hardware", "h100-sxm", "--nodes", "1", "--phase", "decode",
                 "--batch", "8", "--seq-len", "128", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["memory"]["fits"] is False
    assert err.count("\n") == 1 and err.startswith("warning:") and "does not fit" in err
