"""Host CPU detection picks the profile calibrated on this CPU kind."""
from __future__ import annotations

from simfoe.calibration import host

AMD = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n\nvendor_id\t: AuthenticAMD\n"
INTEL = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 167\nmodel name\t: Intel(R) Xeon(R) Processor\n"


def test_host_cpu_parses_first_processor(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text(AMD)
    assert host.host_cpu(p) == {"vendor": "AuthenticAMD", "family": 25, "model": 17, "model_name": "AMD EPYC"}
    assert host.host_cpu(tmp_path / "absent") == {}


def test_matching_profiles_by_cpu_kind(tmp_path):
    for text, want in ((AMD, ["cpu-amd-epyc-zen4"]), (INTEL, ["cpu-intel-xeon-amx"])):
        p = tmp_path / "cpuinfo"
        p.write_text(text)
        assert host.matching_profiles(host.host_cpu(p)) == want
    assert host.matching_profiles({"vendor": "GenuineIntel", "family": 6, "model": 143}) == []
    assert host.matching_profiles({}) == []


def test_testbed_auto_falls_back_with_flag(monkeypatch):
    from simfoe.calibration import testbed

    monkeypatch.setattr(host, "matching_profiles", lambda cpu=None: [])
    assert testbed.resolve_hardware("auto") == (testbed.DEFAULT_HARDWARE, False)
    assert testbed.resolve_hardware("h100-sxm") == ("h100-sxm", True)
