"""A sweep's folder and processes after things go wrong: a damaged part file is named (exit 2) with
how to rerun it; options the run would ignore are refused; pool workers die with a killed sweep."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simfoe.cli import main
from simfoe.errors import SpecError
from simfoe.sweep.runner import run_sweep
from simfoe.sweep.scenarios import ScenarioKind, register
from simfoe.sweep.spec import parse_sweep_spec
from simfoe.sweep.store import ResultStore


def double(a: int, seed: int = 0, overrides=()):
    """Tiny test kind: y = 2a."""
    return {"y": 2 * a}


register(ScenarioKind("double", double, override_roots=("hardware",)))
SPEC = parse_sweep_spec({"kind": "double", "grid": {"a": list(range(8))}})
PIPELINE = "kind: pipeline\nbase: {spec: factool, mode: stream, rate: 10, duration: 2000}\ngrid: {seed: [0, 1, 2, 3]}\n"


def tree(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")}


def stored_with_a_damaged_part(out: Path) -> Path:
    """Two chunks' part files, the second cut short as by a full disk; returns the damaged one."""
    r = run_sweep(SPEC, out, workers=1, chunk_size=4, progress=False, plots=False)
    assert r["ok"] == 8
    store = ResultStore(out)
    df = store.read()
    store.clear()
    store.append(df.iloc[:4].to_dict("records"))
    bad = store.append(df.iloc[4:].to_dict("records"))
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return bad


# ---- item 5: a damaged part file -------------------------------------------------------------------

def test_resume_names_a_damaged_part_and_how_to_rerun_it(tmp_path, refused):
    out = tmp_path / "o"
    bad = stored_with_a_damaged_part(out)
    spec = tmp_path / "s.yaml"
    spec.write_text("kind: double\ngrid: {a: [0, 1, 2, 3, 4, 5, 6, 7]}\n")
    before = tree(out)
    for extra in ([], ["--dry-run"]):
        refused(["sweep", spec, "--out", out, "--resume", "--no-progress", "--json", *extra],
                "--out", bad.name, "damaged", "delete it and rerun with --resume")
    assert tree(out) == before  # nothing written, nothing removed
    refused(["plot", out], bad.name, "damaged")
    # doing what the message says reruns that part's four scenarios only
    bad.unlink()
    r = run_sweep(SPEC, out, workers=1, resume=True, progress=False, plots=False)
    assert (r["ran"], r["rows"]) == (4, 8)
    assert sorted(ResultStore(out).read()["y"]) == [2 * a for a in range(8)]


def test_a_damaged_compacted_table_is_named_too(tmp_path):
    out = tmp_path / "o"
    run_sweep(SPEC, out, workers=1, progress=False, plots=False)
    res = out / "results.parquet"
    res.write_bytes(res.read_bytes()[:100])
    with pytest.raises(SpecError) as e:
        run_sweep(SPEC, out, workers=1, resume=True, progress=False, plots=False)
    assert e.value.field == "--out" and e.value.value == str(res) and "delete it" in str(e.value)


# ---- item 8: options that would be ignored --------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--retry-failed"], ["--retry-failed: only with --resume"]),
    (["--probes", "2"], ["--probes: 2 given without --dry-run"]),
    (["--dry-run", "--probes", "-1"], ["--probes: -1", ">= 0"]),
    (["--address", "auto"], ["--address: 'auto'", "only with --executor ray"]),
    (["--address", "auto", "--executor", "local", "--dry-run"], ["--address: 'auto'"]),
    (["--max-retries", "5"], ["--max-retries: 5 given without --executor ray", "at most twice"]),
    (["--max-retries", "3", "--executor", "local", "--dry-run"], ["--max-retries: 3 given without --executor ray"]),
    (["--max-retries", "-1", "--executor", "ray", "--dry-run"], ["--max-retries: -1", "an integer >= 0"]),
])
def test_ignored_options_are_refused(tmp_path, refused, argv, words):
    out = tmp_path / "o"
    refused(["sweep", "--out", out, "--no-progress", "--json", *argv], *words)
    assert not out.exists()


def test_sweep_ray_without_ray_writes_nothing(monkeypatch, tmp_path, refused):
    """Ray absent (import blocked): refused before anything is written, dry run or not."""
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "o"
    for extra in ([], ["--dry-run", "--probes", "0"]):
        refused(["sweep", "--executor", "ray", "--out", out, "--no-progress", "--json", *extra],
                "--executor: 'ray' needs the ray extra; pip install -e .[ray] (ray is not installed)")
        assert not out.exists()


def test_dry_run_on_stored_results_says_what_the_run_needs(tmp_path, refused, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("kind: double\ngrid: {a: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}\n")
    out = tmp_path / "o"
    run_sweep(SPEC, out, workers=1, progress=False, plots=False)
    before = tree(out)
    refused(["sweep", spec, "--out", out, "--dry-run", "--json"], "already holds sweep results", "--resume")
    assert main(["sweep", str(spec), "--out", str(out), "--dry-run", "--resume", "--probes", "0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["scenarios"], r["already_done"], r["to_run"]) == (10, 8, 2)
    assert tree(out) == before


# ---- item 6: pool workers die with their sweep ----------------------------------------------------

def children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:  # it ended meanwhile
        return b""


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc to find the workers")
def test_workers_exit_when_the_sweep_is_killed(tmp_path):
    """SIGKILL only the sweep process: its pool workers (each in a multi-second pipeline scenario) exit
    within a few seconds instead of running on."""
    spec = tmp_path / "slow.yaml"
    spec.write_text(PIPELINE)
    p = subprocess.Popen([sys.executable, "-m", "simfoe", "sweep", str(spec), "--out", str(tmp_path / "o"),
                          "--workers", "2", "--no-plots", "--no-progress"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.2)
            workers = [c for c in children(p.pid) if b"spawn_main" in cmdline(c)]
        assert len(workers) == 2, "the sweep did not start its two pool workers"
        time.sleep(2.0)  # the workers are now in their scenarios
        others = children(p.pid)  # workers and multiprocessing's resource tracker
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 10
        while any(alive(c) for c in others) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [c for c in others if alive(c)], "processes left running after the sweep was killed"
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the test's own leftovers, if it failed
        except ProcessLookupError:
            pass
