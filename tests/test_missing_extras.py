"""Commands that need torch (the validation extra) refuse cleanly when it is absent:
exit 2, one line naming the option and the pip extra, nothing written. Absence is simulated by
blocking the import in-process (``sys.modules[name] = None`` makes ``import name`` raise ImportError)."""
from __future__ import annotations

import sys

import pytest


EXTRA = "needs the validation extra; pip install -e .[validation] (torch is not installed)"


@pytest.fixture
def no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_calibrate_device_without_torch(no_torch, tmp_path, refused, json_flag):
    out = tmp_path / "set"
    refused(["calibrate", "--device", "cpu", "--out", out, "--quick", *json_flag], "--device: 'cpu' " + EXTRA)
    assert not out.exists()


def test_calibrate_cuda_without_torch(no_torch, tmp_path, refused):
    refused(["calibrate", "--device", "cuda", "--out", tmp_path / "set"], "--device: 'cuda' " + EXTRA)


def test_testbed_without_torch(no_torch, tmp_path, refused):
    out = tmp_path / "tb.json"
    refused(["testbed", "--quick", "--json", "--out", out], "testbed: " + EXTRA)
    assert not out.exists()

