"""Fit the kernel families of a GPU profile from a single-GPU measurement set (``python -m validation.harness
--device cuda``), on top of the published profile of the same GPU.

A single-GPU set measures kernels only (GEMM, grouped FFN, SDPA attention, copies; one GPU has no NCCL
peers), so everything else (peak FLOP/s, HBM, NVLink, network, collectives) comes from the base profile
(``hwprofiles/<base>.yaml``, datasheet and Vidur fits) and keeps its provenance. Fitted here, each from
the set's graph-replayed rows (device time, :func:`simfoe.calibration.fit_profile.in_pass_rows`):

* ``kernels.gemm``: the padded-dimension form on the bf16 GEMM rows; ``kernels.gemm_fp8`` the same form
  on the fp8 rows (``torch._scaled_mm``) where the set has them;
* ``kernels.elementwise``: streaming efficiency and launch from the device-to-device copies (the norm /
  activation / add sub-kinds keep the base's Vidur fits: the harness does not time them);
* ``kernels.attention_prefill`` / ``attention_decode``: the GQA SDPA rows (the kernels torch picks).

* ``kernels.grouped_gemm``: the ``torch._grouped_mm`` expert rows (``grouped_mm_swiglu``), priced as
  simfoe.forward.plan prices experts, with the kernel's row tiles read from its source
  (:data:`GROUPED_TILES`) and its efficiencies fitted. Checked across routings: fitted on the uniform
  rows and judged on the Zipf rows, and the reverse (the report's ``held_out``).

Held out (never fitted): the per-expert loop rows (``loop_swiglu``), a reference eager MoE layer.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from simfoe.calibration.fit_profile import (ATTENTION_VARIANT, _fit_family, _gemm_spec, fit_copy_attention,
                                           load_set, row_errors)
from simfoe.errors import SpecError
from simfoe.paths import repo_relative

BASE_BY_NAME: tuple[tuple[str, str], ...] = (("H200", "h200-sxm"), ("H100", "h100-sxm"), ("A100", "a100-sxm"))
"""env.json device_name substring -> published profile a set is fitted on top of (first match wins)."""

GROUPED_VARIANT = "grouped_mm_swiglu"
"""The grouped FFN rows that match simfoe's expert cost (one grouped GEMM launch per projection); the
per-expert loop rows (``loop_swiglu``) are a reference eager MoE layer and are reported beside them."""


GROUPED_TILES: dict[str, float] = {"m_tile": 256.0, "m_tile_small": 128.0, "small_rows": 128.0}
"""Row tiles of ``torch._grouped_mm`` (bf16, sm90; pytorch aten/src/ATen/native/cuda/GroupMM.cu): a CTA
tile of 64 rows when the mean rows per group are at most 128, else 128, in a 2 x 1 cluster along the
rows, so each group's rows are computed in multiples of 128 or 256. Fitting the two H100/H200 sets with
the CTA tiles alone (64/128) scored 3.7-4.0% against 2.3-2.8% with the cluster's (128/256)."""


def base_profile_for(env: dict) -> str:
    """The published profile for the GPU named in a set's env.json."""
    name = str(env.get("device_name") or "")
    for key, prof in BASE_BY_NAME:
        if key in name.upper():
            return prof
    raise SpecError("--base", None, f"a published profile for {name!r} (known: "
                    + ", ".join(f"{k} -> {p}" for k, p in BASE_BY_NAME) + "); pass --base NAME")


def _fit_grouped(hw0, kern: dict, rows) -> dict:
    """``kernels.grouped_gemm`` fitted to grouped FFN ``rows``: the tiles fixed (:data:`GROUPED_TILES`),
    the GEMM form's other keys (no m padding: the tiles replace it) started from the refitted GEMM."""
    fam = {**GROUPED_TILES}
    spec = {key: v for key, v in _gemm_spec(kern["gemm"], pad_start=1.0).items() if key != "m_pad"}
    fitted = _fit_family(hw0, {**kern, "grouped_gemm": fam}, "grouped_gemm", spec, rows, rows.t_s.to_numpy(float))
    return {**fam, **fitted}


def fit_gpu_profile(set_dir: str | Path, name: str | None = None, base: str | None = None,
                    env: dict | None = None) -> tuple[dict, dict, dict]:
    """(profile dict, provenance, report) of a CUDA measurement set fitted on top of ``base``
    (``env``: the set's env.json when the caller has loaded it)."""
    from simfoe.specs.hardware import HardwareSpec
    from simfoe.specs.io import load_hardware
    from simfoe.specs.profile_io import profile_path

    import yaml

    set_dir = Path(set_dir)
    k, _, env = load_set(set_dir, env)
    if env.get("device") != "cuda":
        raise SpecError("measurement set", str(set_dir), "a CUDA set (device cuda)")
    base = base or base_profile_for(env)
    if not profile_path(base).is_file():
        from simfoe.specs.io import list_presets

        raise SpecError("--base", base, "a published profile: " + ", ".join(list_presets("hardware")))
    raw = yaml.safe_load(profile_path(base).read_text())
    prov_base = dict(raw.pop("provenance", {}) or {})
    hw0 = load_hardware(base)
    src = repo_relative(set_dir)
    name = name or f"{base}-{set_dir.name}"
    g8 = k[(k.op == "gemm") & (k.dtype.astype(str) == "fp8")]  # torch._scaled_mm rows (harness on sm_89+)
    k = k[(k.dtype.astype(str) == "bf16") | (k.op == "memcopy")]  # the dtype a GPU set measures (copies: u8)
    gm = k[k.op == "gemm"]
    if gm.empty or not ((k.op == "memcopy") & (k.variant == "copy")).any():
        raise SpecError("measurement set", str(set_dir), "GEMM and copy rows (python -m validation.harness --device cuda)")
    base_k = {fam: dict(v) for fam, v in (raw.get("kernels") or {}).items()}
    kern: dict[str, dict] = dict(base_k)
    # starts: the base's Vidur fit; bounds keep efficiencies in (0, 1] and launches between 10 ns and 1 ms
    kern["gemm"] = _fit_family(hw0, kern, "gemm", _gemm_spec(base_k.get("gemm", {})), gm, gm.t_s.to_numpy(float))
    if not g8.empty:  # fp8 GEMMs: the same form against the fp8 peak, started from the bf16 fit
        kern["gemm_fp8"] = _fit_family(hw0, kern, "gemm_fp8", _gemm_spec(kern["gemm"]), g8, g8.t_s.to_numpy(float))
    grouped = k[(k.op == "grouped_ffn") & (k.variant == GROUPED_VARIANT)]
    cross: dict[str, dict] = {}
    if not grouped.empty:
        kern["grouped_gemm"] = _fit_grouped(hw0, kern, grouped)
        cross = _grouped_cross_checks(hw0, kern, grouped)
    # copies and attention: starts near HBM streaming and a few-microsecond launch
    cp, pre, dec = fit_copy_attention(hw0, kern, k, copy_start=(0.8, 3e-6), attn_start=(0.8, 5e-6), launch_max=1e-3)
    profile = {key: v for key, v in raw.items() if key not in ("kernels",)}
    profile["name"] = name
    profile["description"] = f"{raw.get('description', base)}; kernels fitted from {src}"
    profile["kernels"] = kern
    hw = HardwareSpec.model_validate(profile)

    rows = _GpuRows(k, gm, g8, cp, pre, dec, grouped)
    report = _gpu_report(hw, hw0, rows, cross, kern, {"set": src, "profile": name, "base": base,
                                                       "device_name": env.get("device_name")})
    return profile, _gpu_provenance(prov_base, src, base, rows), report


@dataclass(frozen=True)
class _GpuRows:
    """The rows of a CUDA set by use: ``k`` (bf16 and copies), bf16 and fp8 GEMMs, copies, prefill and decode
    attention, and the grouped-GEMM variant's rows."""

    k: object
    gm: object
    g8: object
    cp: object
    pre: object
    dec: object
    grouped: object


def _grouped_cross_checks(hw0, kern: dict, grouped) -> dict[str, dict]:
    """Held-out checks of the grouped-GEMM fit: fitted on one routing's rows, judged on the others'."""
    cross: dict[str, dict] = {}
    for fit_on in sorted(set(grouped.routing.astype(str))):
        on = grouped[grouped.routing.astype(str) == fit_on]
        judged = grouped[grouped.routing.astype(str) != fit_on]
        if judged.empty:
            continue
        part = {**kern, "grouped_gemm": _fit_grouped(hw0, kern, on)}
        label = f"grouped_gemm fit on {fit_on}, judged on " + ", ".join(sorted(set(judged.routing.astype(str))))
        cross[label] = row_errors(hw0.model_copy(update={"kernels": part}), judged)
    return cross


def _gpu_report(hw, hw0, rows: _GpuRows, cross: dict, kern: dict, head: dict) -> dict:
    """The fit report: residuals (APE %) of the refit ``hw`` and of the base ``hw0`` on the rows each family was
    fitted to and on the held-out rows; ``head``: set, profile, base and device names."""
    k, gm, g8, cp, pre, dec, grouped = rows.k, rows.gm, rows.g8, rows.cp, rows.pre, rows.dec, rows.grouped
    report: dict = {**head, "kernels": {}, "held_out": {}, "base_on_set": {}}
    parts = {"gemm (bf16)": gm, "elementwise (copy)": cp}
    if not g8.empty:
        parts["gemm (fp8)"] = g8
    if not pre.empty:
        parts[f"attention_prefill ({ATTENTION_VARIANT})"] = pre
    if not dec.empty:
        parts[f"attention_decode ({ATTENTION_VARIANT})"] = dec
    g = k[k.op == "grouped_ffn"]
    if not grouped.empty:
        parts[f"grouped_gemm ({GROUPED_VARIANT})"] = grouped
    held = {f"grouped_ffn ({v})": g[g.variant == v] for v in sorted(set(g.variant)) if v != GROUPED_VARIANT}
    for label, part in parts.items():
        report["kernels"][label] = row_errors(hw, part)
        report["base_on_set"][label] = row_errors(hw0, part)
    for label, part in held.items():
        report["held_out"][label] = row_errors(hw, part)
        report["base_on_set"][label] = row_errors(hw0, part)
    report["held_out"].update(cross)
    report["kernels_fit"] = {f: kern[f] for f in ("gemm", "gemm_fp8", "grouped_gemm", "elementwise",
                                                  "attention_prefill", "attention_decode") if f in kern}
    return report


def _gpu_provenance(prov_base: dict, src: str, base: str, rows: _GpuRows) -> dict:
    """The base profile's sources, with the refitted kernel families' replaced by the fit's."""
    gm, g8, cp, pre, dec, grouped = rows.gm, rows.g8, rows.cp, rows.pre, rows.dec, rows.grouped
    today = _dt.date.today().isoformat()
    fitted = f"fit to {src} by simfoe.calibration.fit_gpu on {today} (CUDA-graph replay, bf16)"
    prov = dict(prov_base)  # what is not refitted keeps the base's source; the refitted families are replaced below
    prov.update({
        "name": "profile name",
        "description": f"{base} with kernels fitted from {src}",
        "kernels": f"{fitted}; functional forms of simfoe/costs/kernels.py (docs/calibration.md); "
                   f"families not listed below are the base's ({base}: Vidur fits)",
        "kernels.gemm": f"{fitted}: {len(gm)} GEMM rows (m 1..16384 on 5 (n, k) pairs and 3 squares)",
        "kernels.elementwise": f"{fitted}: {len(cp)} device-to-device copies, 64 KiB..1 GiB (bytes = 2 x size); "
                               "norm/act/add sub-kinds keep the base's Vidur fits",
    })
    if not g8.empty:
        prov["kernels.gemm_fp8"] = (f"{fitted}: {len(g8)} fp8 GEMM rows (torch._scaled_mm, e4m3 inputs, per-tensor "
                                    "scales, bf16 output) against the fp8 peak")
    if not grouped.empty:
        prov["kernels.grouped_gemm"] = (
            f"{fitted}: {len(grouped)} {GROUPED_VARIANT} rows (torch._grouped_mm SwiGLU experts, uniform and "
            "Zipf loads); m_tile/m_tile_small/small_rows from the kernel's source (pytorch "
            "aten/src/ATen/native/cuda/GroupMM.cu: 64- or 128-row CTA tiles in a 2-wide cluster), the rest fitted")
    if not pre.empty:
        prov["kernels.attention_prefill"] = f"{fitted}: {len(pre)} prefill:{ATTENTION_VARIANT} rows (causal torch SDPA)"
    if not dec.empty:
        prov["kernels.attention_decode"] = (f"{fitted}: {len(dec)} decode:{ATTENTION_VARIANT} rows; eff_max from "
                                            "attention_prefill")
    return prov
