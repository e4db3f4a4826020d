"""`simfoe serve` on a real terminal: the progress bar is on by default there, and a run whose queue
drains past the last arrival must finish (issue 26: the bar's format crashed once the simulated clock
passed the bar's total)."""
from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")


def run_in_tty(argv: list[str], limit_s: float = 120.0) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a fresh pseudo-terminal; (exit code, all output)."""
    master, slave = os.openpty()
    # a fresh pty is 0 x 0, and tqdm draws nothing on 0 columns: give it a terminal's 24 x 120
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], limit_s)
            if not ready:
                proc.kill()
                raise AssertionError(f"no output for {limit_s} s: {' '.join(argv)}")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    rc = proc.wait(timeout=limit_s)
    return rc, b"".join(chunks).decode("utf-8", "replace")


def test_serve_progress_bar_through_drain():
    # 40 req/s of LongBench prompts for 30 s on one H100 node: the queue drains ~75 s past the last arrival
    rc, out = run_in_tty([sys.executable, "-m", "simfoe", "serve", "--model", "mixtral-8x7b", "--hardware",
                          "h100-sxm", "--nodes", "1", "--arch", "moe", "--trace", "longbench", "--rate", "40",
                          "--duration", "30"])
    assert "Traceback" not in out, out
    assert rc == 0, out
    assert "serve:" in out  # the bar was drawn: a terminal turns it on
    simulated = float(out.split("simulated ")[1].split(" s")[0])
    assert simulated > 30.0  # the run really went on past the last arrival


def test_forward_per_layer_counts_layers_on_a_terminal():
    argv = [sys.executable, "-m", "simfoe", "forward", "--model", "mixtral-8x7b", "--hardware", "h100-sxm",
            "--phase", "decode", "--batch", "8", "--seq-len", "128", "--per-layer"]
    rc, out = run_in_tty(argv)
    assert rc == 0 and "Traceback" not in out, out
    assert "forward:" in out and "layers" in out  # the counter was drawn on the terminal
    rc, out = run_in_tty(argv + ["--json"])
    assert rc == 0 and "forward:" not in out  # --json: exactly one JSON object, no counter
