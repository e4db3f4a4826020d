"""Precision per component (issue 22.3): number formats, the ``model.precision`` spec and its resolution.

A *format* is how one tensor is stored: bytes per element plus its scale bytes. Sources:

- ``bf16``, ``fp16`` 2 bytes, ``fp32`` 4 bytes: no scales.
- ``fp8``: e4m3 with one per-tensor fp32 scale (torch ``_scaled_mm`` as validation/bench_kernels.py times it;
  vLLM's fp8 KV cache, docs/features/quantization/quantized_kvcache.md): 1 byte, scales negligible (not counted).
- ``fp8-block``: e4m3 with one fp32 scale per 128 x 128 weight block and per 1 x 128 activation tile
  (DeepSeek-V3 config.json ``quantization_config``: ``fmt: e4m3``, ``weight_block_size: [128, 128]``,
  ``activation_scheme: dynamic``; DeepSeek-V3 inference/kernel.py ``act_quant`` block_size 128).
- ``mxfp4``: OCP Microscaling (MX) v1.0: e2m1 elements (half a byte) in 32-element blocks along K, one e8m0
  (1-byte) scale per block: 4.25 bits per element (gpt-oss-120b ships its expert weights so:
  config.json ``quantization_config.quant_method: mxfp4``, ``modules_to_not_convert``: attention, router,
  embeddings, LM head).
- ``nvfp4``: e2m1 in 16-element blocks with one fp8 e4m3 scale each plus one fp32 per-tensor scale
  (NVIDIA, Blackwell): 4.5 bits per element.

``math`` is the tensor-core class a format computes in; a GEMM runs at the peak of the wider of its two
operands' classes (simfoe.costs.kernels.math_dtype): fp4 weights with bf16 activations are dequantized and
run at the bf16 peak (weight-only quantization), fp4 x fp4 runs at an fp4 peak where the hardware has one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from simfoe.errors import SpecError
from simfoe.specs.base import Spec


@dataclass(frozen=True)
class NumberFormat:
    """A storage format: ``elem_bytes`` per element; one ``scale_bytes`` scale per ``block_k`` elements along the
    reduction dimension (x ``block_rows`` weight rows; activations scale each row), plus ``tensor_bytes`` per tensor."""

    name: str
    elem_bytes: float
    math: str  # tensor-core class: fp4 | fp8 | bf16 | fp16 | fp32
    block_k: int = 0  # 0: no block scales
    block_rows: int = 1
    scale_bytes: int = 0
    tensor_bytes: int = 0
    out_bytes: float = 0.0  # bytes per element of a GEMM's output with inputs in this format; 0: elem_bytes

    def weight_bytes(self, k: float, n: float) -> float:
        """Bytes of a (k x n) weight matrix, scales included (blocks of block_k x block_rows, ceil)."""
        return self.elem_bytes * k * n + self._scales(k, n, self.block_rows)

    def act_bytes(self, m: float, k: float) -> float:
        """Bytes of an (m x k) activation (GEMM input), one scale per row and block_k elements (ceil)."""
        return self.elem_bytes * m * k + self._scales(k, m, 1)

    def _scales(self, k: float, rows: float, block_rows: int) -> float:
        if not self.block_k:
            return 0.0
        return math.ceil(k / self.block_k) * math.ceil(rows / block_rows) * self.scale_bytes + self.tensor_bytes

    @property
    def bytes_per_param(self) -> float:
        """Mean bytes per weight element, scales amortized (exact when the dimensions fill whole blocks)."""
        s = self.scale_bytes / (self.block_k * self.block_rows) if self.block_k else 0.0
        return self.elem_bytes + s

    @property
    def output_bytes(self) -> float:
        return self.out_bytes or self.elem_bytes


# fp8-block, mxfp4, nvfp4 GEMMs write bf16 (DeepGEMM gemm_fp8_fp8_bf16_nt; the MX/NVFP4 grouped GEMMs of
# vLLM/FlashInfer likewise output bf16)
FORMATS: dict[str, NumberFormat] = {f.name: f for f in (
    NumberFormat("bf16", 2, "bf16"),
    NumberFormat("fp16", 2, "fp16"),
    NumberFormat("fp32", 4, "fp32"),
    NumberFormat("fp8", 1, "fp8"),
    NumberFormat("fp8-block", 1, "fp8", block_k=128, block_rows=128, scale_bytes=4, out_bytes=2),
    NumberFormat("mxfp4", 0.5, "fp4", block_k=32, scale_bytes=1, out_bytes=2),
    NumberFormat("nvfp4", 0.5, "fp4", block_k=16, scale_bytes=1, tensor_bytes=4, out_bytes=2),
)}

GemmFormat = Literal["bf16", "fp16", "fp32", "fp8", "fp8-block", "mxfp4", "nvfp4"]
PlainFormat = Literal["bf16", "fp16", "fp32", "fp8"]
WideFormat = Literal["bf16", "fp16", "fp32"]


def number_format(name: str, field: str = "dtype") -> NumberFormat:
    """The format called ``name``; an unknown name is a SpecError on ``field``."""
    try:
        return FORMATS[name]
    except KeyError:
        raise SpecError(field, name, "allowed: " + ", ".join(FORMATS)) from None


@dataclass(frozen=True)
class Precision:
    """Resolved format of every component (names in FORMATS); what the cost layer reads."""

    gemm_weights: str
    gemm_activations: str
    expert_weights: str
    attention: str
    kv_cache: str
    dispatch: str
    combine: str
    residual: str  # norms, residual adds, all-reduces; embedding, router and LM head weights
    shorthand: str = "bf16"  # the model.dtype the formats not given came from

    def bytes_of(self, component: str) -> float:
        """Bytes per element of ``component``'s format (scales excluded)."""
        return FORMATS[getattr(self, component)].elem_bytes


def shorthand(dtype: str) -> dict[str, str]:
    """What ``model.dtype`` expands to. fp8: fp8-block GEMM weights, activations and expert weights, fp8
    dispatch; attention, KV cache, combine and the residual stream stay bf16, as DeepSeek-V3 runs: its
    inference/model.py keeps the MLA latent cache and the attention einsums in the default dtype, bf16
    (generate.py ``torch.set_default_dtype(torch.bfloat16)``); DeepEP dispatches fp8 and combines bf16; vLLM's
    ``--kv-cache-dtype auto`` keeps the model's bf16. Any other dtype: every component in it."""
    if dtype == "fp8":
        return {"gemm_weights": "fp8-block", "gemm_activations": "fp8-block", "expert_weights": "fp8-block",
                "attention": "bf16", "kv_cache": "bf16", "dispatch": "fp8", "combine": "bf16", "residual": "bf16"}
    return {k: dtype for k in Precision.__dataclass_fields__ if k != "shorthand"}


class PrecisionSpec(Spec):
    """Per-component formats; a field left out follows the ``model.dtype`` shorthand (:func:`shorthand`)."""

    gemm_weights: GemmFormat | None = Field(
        None, description="weights of the dense GEMMs (attention projections, dense FFN, shared experts); "
        "default: from model.dtype")
    gemm_activations: GemmFormat | None = Field(
        None, description="GEMM inputs; with the weights' format it sets the math peak (the wider of the two): "
        "fp4 weights with bf16/fp8 activations run dequantized at the bf16/fp8 peak; default: from model.dtype")
    expert_weights: GemmFormat | None = Field(
        None, description="routed experts' weights (gpt-oss-120b ships mxfp4); default: gemm_weights' format")
    attention: PlainFormat | None = Field(
        None, description="attention kernel math (QK^T, PV); default: bf16 under model.dtype=fp8, else model.dtype")
    kv_cache: PlainFormat | None = Field(
        None, description="KV-cache elements (fp8 halves KV bytes); default: bf16 under model.dtype=fp8, else model.dtype")
    dispatch: PlainFormat | None = Field(
        None, description="dispatched tokens (fp8: + one fp32 scale per 128 values, DeepEP); default: from model.dtype")
    combine: WideFormat | None = Field(
        None, description="combined expert outputs; default: bf16 under model.dtype=fp8, else model.dtype")

    def resolve(self, dtype: str) -> Precision:
        """The formats: fields given here, the rest from the ``dtype`` shorthand; expert weights default to
        the GEMM weights' format when only that is given."""
        out = shorthand(dtype)
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        if "gemm_weights" in given and "expert_weights" not in given:
            given["expert_weights"] = given["gemm_weights"]
        return Precision(**{**out, **given}, shorthand=dtype)
