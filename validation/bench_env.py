"""Environment description stored with every measurement set (env.json).

Everything is best effort: a field that cannot be read is recorded as null, never guessed.
"""
from __future__ import annotations

import datetime
import os
import platform
import shutil
import socket
import subprocess
from typing import Any

import torch

from validation.bench_common import available_cpus


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _run(cmd: list[str], cwd: str | None = None, timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_info() -> dict[str, Any]:
    """CPU model, family/model numbers, current MHz per core, caches and memory from /proc and /sys."""
    info: dict[str, Any] = {"model_name": None, "vendor": None, "family": None, "model": None,
                            "mhz": [], "flags_avx512": None, "caches": {}, "mem_total_bytes": None}
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, val = (s.strip() for s in line.split(":", 1))
        if key == "model name" and info["model_name"] is None:
            info["model_name"] = val
        elif key == "vendor_id" and info["vendor"] is None:
            info["vendor"] = val
        elif key == "cpu family" and info["family"] is None:
            info["family"] = int(val)
        elif key == "model" and info["model"] is None:
            info["model"] = int(val)
        elif key == "cpu MHz":
            info["mhz"].append(float(val))
        elif key == "flags" and info["flags_avx512"] is None:
            info["flags_avx512"] = sorted(f for f in val.split() if f.startswith("avx512") or f in ("avx2", "fma", "amx_bf16"))
    base = "/sys/devices/system/cpu/cpu0/cache"
    if os.path.isdir(base):
        for idx in sorted(os.listdir(base)):
            level = _read(f"{base}/{idx}/level")
            kind = _read(f"{base}/{idx}/type")
            size = _read(f"{base}/{idx}/size")
            if level and kind and size:
                info["caches"][f"L{level}{'' if kind == 'Unified' else kind[0].lower()}"] = {
                    "size": size, "shared_cpu_list": _read(f"{base}/{idx}/shared_cpu_list")}
    freq = "/sys/devices/system/cpu/cpu0/cpufreq"
    info["cpufreq"] = {k: _read(f"{freq}/{k}") for k in ("scaling_governor", "scaling_cur_freq",
                                                          "cpuinfo_max_freq", "cpuinfo_min_freq")} \
        if os.path.isdir(freq) else None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            info["mem_total_bytes"] = int(line.split()[1]) * 1024
    info["hypervisor"] = "hypervisor" in text
    return info


def last_level_cache_bytes(device: torch.device) -> int:
    """Bytes of the last-level cache (CPU L3 or GPU L2), used to size buffer rotation.

    Falls back to 64 MiB when the size cannot be read (larger than common L3/L2 sizes, so rotation
    errs on the side of cold caches).
    """
    fallback = 64 * 1024 * 1024
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0) or fallback)
    base = "/sys/devices/system/cpu/cpu0/cache"
    best = 0
    if os.path.isdir(base):
        for idx in os.listdir(base):
            size = _read(f"{base}/{idx}/size")
            if size:
                mult = {"K": 1024, "M": 1024 ** 2}.get(size[-1], 1)
                digits = size[:-1] if size[-1] in "KM" else size
                if digits.isdigit():
                    best = max(best, int(digits) * mult)
    return best or fallback


def gpu_info() -> list[dict[str, Any]] | None:
    """Per-GPU properties from torch.cuda plus clocks/driver from nvidia-smi when present."""
    if not torch.cuda.is_available():
        return None
    gpus: list[dict[str, Any]] = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({
            "index": i, "name": p.name, "total_memory_bytes": int(p.total_memory),
            "multi_processor_count": int(p.multi_processor_count),
            "capability": f"{p.major}.{p.minor}",
            "l2_cache_bytes": int(getattr(p, "L2_cache_size", 0)) or None,
        })
    if shutil.which("nvidia-smi"):
        fields = ["index", "name", "driver_version", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem",
                  "power.limit", "persistence_mode", "pcie.link.gen.current", "pcie.link.width.current",
                  "temperature.gpu"]
        out = _run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
        if out:
            for line in out.splitlines():
                vals = [v.strip() for v in line.split(",")]
                if len(vals) == len(fields) and vals[0].isdigit() and int(vals[0]) < len(gpus):
                    gpus[int(vals[0])]["nvidia_smi"] = dict(zip(fields[1:], vals[1:]))
        topo = _run(["nvidia-smi", "topo", "-m"])
        if topo and gpus:
            gpus[0]["topology_matrix"] = topo
    return gpus


def git_commit(path: str) -> dict[str, Any] | None:
    """Commit of the repository holding ``path`` and whether the tree had local changes."""
    head = _run(["git", "rev-parse", "HEAD"], cwd=path)
    if head is None:
        return None
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path)
    return {"commit": head, "dirty": bool(dirty)}


def collect_env(device: torch.device, threads: int) -> dict[str, Any]:
    """The environment record written to env.json (device, software versions, threads, CPU/GPU, host, date)."""
    here = os.path.dirname(os.path.abspath(__file__))
    cudnn = None
    if torch.backends.cudnn.is_available():
        cudnn = torch.backends.cudnn.version()
    env: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device": device.type,
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else (cpu_info()["model_name"])),
        "cpu": cpu_info(),
        "cpus_available": available_cpus(),
        "os_cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "cpu_capability": _safe(lambda: torch.backends.cpu.get_cpu_capability()),
        "mkldnn_available": _safe(lambda: torch.backends.mkldnn.is_available()),
        "mkl_available": _safe(lambda: torch.backends.mkl.is_available()),
        "gpus": gpu_info(),
        "allow_tf32_matmul": _safe(lambda: torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else None,
        "git": git_commit(here),
        "loadavg_start": _safe(lambda: list(os.getloadavg())),
    }
    return env


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - environment probing is best effort
        return None
