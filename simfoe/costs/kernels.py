"""Kernel cost model: roofline with calibrated efficiency (DESIGN.md "Kernels").

Every function is pure and cheap (plain floats, ``math``) because the simulator calls it in its
hot path. Units: seconds, FLOP, bytes.

Model, per kernel::

    t_compute = flops / (peak(dtype) * eff_c(shape))
    t_memory  = bytes / (hbm_bandwidth * eff_m(bytes))
    latency   = smax_p(t_compute, t_memory) + launch

``smax_p(a, b) = (a**p + b**p)**(1/p)`` is a smoothed max (p = inf is the plain max); it is never
below ``max(a, b)``, so latency >= flops/peak and >= bytes/hbm_bandwidth always holds.

Fitted parameters live in ``hw.kernels`` (see docs/calibration-kernels.md), one mapping per family:

``gemm``  (also used by ``grouped_gemm`` when a profile has no ``grouped_gemm`` family)
    ``eff_max`` (peak fraction reached by large GEMMs), ``m_pad``, ``n_pad``, ``k_pad`` (elements):
    eff_c = eff_max * m/(m+m_pad) * n/(n+n_pad) * k/(k+k_pad), i.e. the kernel behaves as if each
    dimension were padded by a fixed amount (tile and wave under-fill); ``mem_eff`` and
    ``mem_floor_bytes``: eff_m = mem_eff * B/(B+mem_floor_bytes); ``launch_s``; ``smooth_p``; optional ``m_tile``
    (rows; :func:`gemm_rows`): the compute term's m rounded up to whole row tiles (kernel-table fits of fp8 / fp4).
Precision (simfoe.specs.precision): a GEMM's ``dtype`` is its activations' format and ``weights`` its weights'
(default: the same); bytes count each operand in its format with its scales, the output in the activations'
output format (bf16 for fp8-block/mxfp4/nvfp4). The math runs at the peak of the wider operand class
(:func:`math_dtype`): fp4 weights with bf16 activations are weight-only quantization, dequantized and
computed at the bf16 peak (H100 has no fp4 tensor cores); fp4 x fp4 needs an ``fp4`` entry in
``gpu.peak_flops`` (Blackwell). Attention reads Q and O in its ``dtype`` and K, V in ``kv_dtype``.

``gemm_fp8`` / ``gemm_fp4`` (optional; profiles fitted from measured fp8 / NVFP4 GEMMs)
    the ``gemm`` keys for fp8 (fp4 x fp4) GEMMs (a key it lacks takes ``gemm``'s value), priced against the
    fp8 (fp4) peak; block-scale reads and quantization overheads the measured kernel pays are in the fitted
    values. Without it they use ``gemm``'s bf16-fitted efficiencies with their peak.
``grouped_gemm`` (optional; profiles fitted from measured grouped kernels)
    the ``gemm`` keys for the grouped launch (a key it lacks takes ``gemm``'s value) plus the row tile:
    ``m_tile`` (rows): each active expert's rows are padded up to a multiple of it (a grouped kernel
    tiles every expert's rows separately, so skewed loads leave more partial tiles than uniform ones);
    optional ``m_tile_small`` used instead when the mean rows per expert are at most ``small_rows``
    (kernels that pick a smaller tile for small groups). Without ``m_tile``: ``m_pad`` as for ``gemm``.
    Optional ``slot_bytes`` and ``slot_inter_bytes`` (bytes per element): the fused MoE kernel's work per
    routed token slot, priced as slots x (hidden x ``slot_bytes`` + inter x ``slot_inter_bytes``) bytes at the
    family's ``mem_eff`` of HBM (:func:`moe_slots`); absent, 0.
``elementwise`` (and optional ``elementwise_norm``, ``elementwise_act``, ``elementwise_add``)
    ``mem_eff``, ``mem_floor_bytes``, ``launch_s``.
``attention_prefill``
    ``eff_max`` (achieved FlashAttention FLOP/s / peak), ``mem_eff``, ``launch_s``, ``smooth_p``; optional
    (kernel-table fits, :func:`_prefill_compute`; absent: exact pairs, no waves): ``head_dim_pad`` (the softmax's
    cost per score in head-dim elements), ``rescale_elems`` (the O accumulator's rescale per kv tile, d^2 / E per
    score, :func:`_score_cost`), ``tile`` (tokens: q and kv tile; with ``hw.gpu.sms``, whole blocks, CTA waves and
    the longest CTA), ``per_wave_s`` (fixed seconds per wave of CTAs) and ``min_wave_s`` (no wave shorter).
``attention_decode``
    ``mem_eff``, ``mem_floor_bytes``, ``launch_s``, ``eff_max`` (for the small FLOP term); optional
    ``smooth_p`` (default plain max) and ``per_seq_head_s``: fixed seconds per (sequence x KV head), the
    work items a FlashAttention decode kernel schedules (fitted on kernel tables; default 0); ``kv_tile``
    (tokens: each sequence's KV read in whole tiles) and ``max_splits`` / ``split_tokens`` (split-KV: the
    SMs a small batch keeps streaming, :func:`_split_fill`; with ``hw.gpu.sms``). MLA only (``mla=True``):
    ``head_groups`` (TRT-LLM's query-head CTA groups, :func:`_head_groups`: each group streams the KV latent, the
    2nd and later at ``reread`` of its bytes, default 1, and is a work item of ``per_seq_head_s``) and
    ``per_seq_qhead_s`` (fixed seconds per (sequence x query head)).
``attention_prefill_mla`` / ``attention_decode_mla`` / ``grouped_gemm_fp8`` / ``grouped_gemm_fp4`` (optional;
    profiles fitted from kernel tables, simfoe.calibration.fit_tables) the same keys for MLA attention
    (``mla=True``) and for fp8 / fp4 grouped experts; absent, the plain family prices them.

``routing_glue`` (CPU profiles; absent elsewhere, then 0)
    the small framework ops of an eager MoE layer beside its GEMMs (validation/eager_moe.py):
    ``per_active_expert_s``, ``per_idle_expert_s``, ``per_rank_s``, ``dispatch_s``, ``per_row_s``,
    ``per_token_rank_s``, ``per_call_s`` (:func:`routing_glue`; ``GLUE_PARAMS``).

``hw.gemm_corrections[dtype]`` (GPU profiles fitted from kernel tables)
    ln(measured / smooth-form) on a coarse log2 (m, n, k) grid, fitted by least squares to the training
    shapes (simfoe.calibration.fit_tables); a GEMM's smooth-form latency is multiplied by its
    interpolated exp (:func:`gemm_correction`): the cuBLAS/CUTLASS kernel choices no smooth form follows.

``hw.gemm_tables[dtype]`` (CPU profiles)
    measured efficiency of single GEMM calls over m and two (n, k) slices (simfoe.specs.hardware.GemmTable);
    when present for a dtype it prices that dtype's GEMMs (:func:`table_efficiency`), and a grouped
    GEMM is the sum of its experts' single GEMMs (a loop of calls: eager torch on a CPU has no grouped
    kernel). A BLAS that switches kernels with m (MKL fp32 on Intel Xeon runs m = 128 at a third of
    the m = 256 rate) has no smooth padded form; the table reproduces its measured grid.

Uncalibrated hardware (``hw.kernels`` empty, or a family missing): pure roofline, every efficiency
1, no floor, plain max, plus ``hw.gpu.launch_overhead_s``. Such numbers are lower bounds, not
predictions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from simfoe.errors import SpecError
from simfoe.specs.precision import NumberFormat, number_format

DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp8": 1, "fp32": 4}
BOUNDS = ("compute", "memory", "launch")
TILE_KEYS = ("tile", "per_wave_s", "min_wave_s", "rescale_elems", "kv_tile", "max_splits", "split_tokens",
             "head_groups", "reread", "per_seq_qhead_s")
"""Attention family keys of the kernels' tiling and SM waves (module doc); all optional."""
ELEMENTWISE_KINDS = ("norm", "act", "add")


@dataclass(frozen=True, slots=True)
class KernelCost:
    """Cost of one kernel launch: latency (s), work (FLOP), traffic (bytes), what bounds it."""

    latency_s: float
    flops: float
    bytes: float
    bound: str

    def as_dict(self) -> dict[str, Any]:
        return {"latency_s": self.latency_s, "flops": self.flops, "bytes": self.bytes, "bound": self.bound}


# ----------------------------------------------------------------------------- helpers

def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype``."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise SpecError("dtype", dtype, "allowed: " + ", ".join(DTYPE_BYTES)) from None


#: narrow to wide tensor-core classes; a GEMM computes in the wider of its operands' classes
MATH_RANK = {"fp4": 0, "fp8": 1, "bf16": 2, "fp16": 2, "fp32": 3}


def operands(dtype: str, weights: str | None = None) -> tuple[NumberFormat, NumberFormat, str]:
    """(activation format, weight format, math dtype) of a GEMM with ``dtype`` activations and ``weights``
    (None: ``dtype``) weights; see :func:`math_dtype`."""
    a = number_format(dtype)
    w = a if weights is None else number_format(weights, "weights")
    return a, w, math_dtype(a, w)


def math_dtype(a: NumberFormat, w: NumberFormat) -> str:
    """The peak a GEMM of activations ``a`` and weights ``w`` runs at: the wider operand's class. Narrower
    weights are dequantized in the kernel (weight-only quantization: fewer bytes, same math)."""
    return a.math if MATH_RANK[a.math] >= MATH_RANK[w.math] else w.math


def smooth_max(a: float, b: float, p: float) -> float:
    """(a^p + b^p)^(1/p) for a, b >= 0; p = inf gives max(a, b). Never below max(a, b)."""
    hi = a if a > b else b
    if hi <= 0.0 or math.isinf(p):
        return hi
    lo = b if a > b else a
    return hi * (1.0 + (lo / hi) ** p) ** (1.0 / p)


def _family(hw, name: str) -> dict[str, float]:
    return hw.kernels.get(name) or {}


def _launch(hw, fam: dict[str, float]) -> float:
    return float(fam.get("launch_s", hw.gpu.launch_overhead_s))


def _pos(field: str, value, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SpecError(field, value, "a number") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise SpecError(field, value, ">= 0" if allow_zero else "> 0")
    return v


def _cost(t_c: float, t_m: float, p: float, launch: float, flops: float, nbytes: float) -> KernelCost:
    body = smooth_max(t_c, t_m, p)
    if launch >= body:
        bound = "launch"
    else:
        bound = "compute" if t_c >= t_m else "memory"
    return KernelCost(body + launch, float(flops), float(nbytes), bound)


NARROW_MATH = ("fp8", "fp4")
"""Math classes with families of their own over the bf16 ones (``gemm_fp8``, ``grouped_gemm_fp4``, ...)."""
GEMM_KEYS = ("eff_max", "m_pad", "n_pad", "k_pad", "mem_eff", "mem_floor_bytes", "launch_s", "smooth_p")


def gemm_params(hw, dtype: str = "bf16") -> tuple[float, float, float, float, float, float, float, float]:
    """(eff_max, m_pad, n_pad, k_pad, mem_eff, mem_floor_bytes, launch_s, smooth_p) of ``hw`` for
    ``dtype`` (fp8 / fp4: ``kernels.gemm_fp8`` / ``kernels.gemm_fp4`` over ``kernels.gemm``, see module doc)."""
    g = _family(hw, "gemm")
    if dtype in NARROW_MATH:
        g = {**g, **_family(hw, f"gemm_{dtype}")}
    return (
        float(g.get("eff_max", 1.0)), float(g.get("m_pad", 0.0)), float(g.get("n_pad", 0.0)),
        float(g.get("k_pad", 0.0)), float(g.get("mem_eff", 1.0)), float(g.get("mem_floor_bytes", 0.0)),
        _launch(hw, g), float(g.get("smooth_p", math.inf)),
    )


def gemm_rows(hw, dtype: str, m: float) -> float:
    """Rows a GEMM of ``m`` rows computes: ``m`` rounded up to whole ``m_tile`` rows of its family (``gemm``, or
    ``gemm_fp8`` / ``gemm_fp4`` over it; absent: ``m``); m = 1 stays 1 (matrix-vector kernel)."""
    g = _family(hw, f"gemm_{dtype}") if dtype in NARROW_MATH else {}
    tile = float(g.get("m_tile", _family(hw, "gemm").get("m_tile", 0.0)))
    return m if tile <= 0.0 or m <= 1.0 else math.ceil(m / tile) * tile


def gemm_time_array(peak: float, bw: float, params: Sequence[float], m, n, k, elem_bytes: float = 2.0):
    """Vectorized GEMM latency (s) for numpy arrays m, n, k; same formula as :func:`gemm` (without ``m_tile``).

    Used by the fitter; ``params`` as returned by :func:`gemm_params`.
    """
    import numpy as np

    eff_max, m_pad, n_pad, k_pad, mem_eff, floor_b, launch, p = params
    m = np.asarray(m, dtype=float)
    m_pad = np.where(m == 1, 0.0, m_pad)  # m = 1: matrix-vector kernel, no row tile (see gemm)
    t_c = 2.0 * (m + m_pad) * (n + n_pad) * (k + k_pad) / (peak * eff_max)
    nbytes = elem_bytes * (m * k + k * n + m * n)
    t_m = (nbytes + floor_b) / (bw * mem_eff)
    hi = np.maximum(t_c, t_m)
    if math.isinf(p):
        return hi + launch
    lo = np.minimum(t_c, t_m)
    return hi * (1.0 + (lo / hi) ** p) ** (1.0 / p) + launch


def _interp_log(x: float, xs, ys) -> float:
    """ys interpolated linearly in log(x) over increasing ``xs``; clamped outside [xs[0], xs[-1]]."""
    if x <= xs[0]:
        return float(ys[0])
    if x >= xs[-1]:
        return float(ys[-1])
    j = 1
    while xs[j] < x:
        j += 1
    f = math.log(x / xs[j - 1]) / math.log(xs[j] / xs[j - 1])
    return float(ys[j - 1] + f * (ys[j] - ys[j - 1]))


def table_efficiency(tab, m: float, n: float, k: float) -> float:
    """Efficiency (FLOP/s / peak) of an (m x k) @ (k x n) call from a GemmTable.

    e(m, n, k) = e_n(m, n) * e_k(m, k) / e(m, n0, k0): each slice is interpolated in log m, then in
    log n (log k); the k-slice enters as a ratio to its (n0, k0) point. Capped at 1: the product of two
    slices near the peak can pass it, and the peak is the fastest call measured.
    """
    en = [_interp_log(m, tab.m, row) for row in tab.eff_n]
    ek = [_interp_log(m, tab.m, row) for row in tab.eff_k]
    return min(1.0, _interp_log(n, tab.n, en) * _interp_log(k, tab.k, ek) / ek[tab.k.index(tab.k0)])


def _table(hw, dtype: str):
    tabs = hw.gemm_tables
    return tabs.get(dtype) if tabs else None


# ----------------------------------------------------------------------------- kernels

def gemm(hw, m: int, n: int, k: int, dtype: str = "bf16", weights: str | None = None) -> KernelCost:
    """(m x k) @ (k x n), A in ``dtype``, B in ``weights`` (default ``dtype``): 2mnk FLOP; reads A and B with
    their scales, writes C once (bytes; formats and math peak: module doc).

    Compute time uses the padded-dimension efficiency of ``hw.kernels['gemm']``; memory time the
    fitted streaming efficiency with a size floor. A dtype with a measured table
    (``hw.gemm_tables``) is priced from it instead: flops / (peak * table efficiency). One token (m = 1) is a matrix-vector product: BLAS
    libraries (MKL, cuBLAS) dispatch it to a GEMV kernel that streams the weights without a row
    tile, so the m padding does not apply there. Uncalibrated: roofline + launch.
    """
    m = _pos("m", m, allow_zero=True)
    n = _pos("n", n)
    k = _pos("k", k)
    if m == 0:
        return KernelCost(0.0, 0.0, 0.0, "launch")
    a, w, mdt = operands(dtype, weights)
    flops = 2.0 * m * n * k
    nbytes = a.act_bytes(m, k) + w.weight_bytes(k, n) + a.output_bytes * m * n
    tab = _table(hw, mdt)
    if tab is not None:
        peak = hw.peak(mdt)
        bound = "compute" if flops / peak >= nbytes / hw.gpu.hbm_bandwidth else "memory"
        return KernelCost(flops / (peak * table_efficiency(tab, m, n, k)), flops, nbytes, bound)
    eff_max, m_pad, n_pad, k_pad, mem_eff, floor_b, launch, p = gemm_params(hw, mdt)
    if m == 1:
        m_pad = 0.0  # matrix-vector kernel (see docstring)
    t_c = 2.0 * (gemm_rows(hw, mdt, m) + m_pad) * (n + n_pad) * (k + k_pad) / (hw.peak(mdt) * eff_max)
    t_m = (nbytes + floor_b) / (hw.gpu.hbm_bandwidth * mem_eff)
    c = _cost(t_c, t_m, p, launch, flops, nbytes)
    f = gemm_correction(hw, mdt, m, n, k)
    return c if f == 1.0 else KernelCost(c.latency_s * f, c.flops, c.bytes, c.bound)


def _grid_pos(x: float, xs) -> tuple[int, float]:
    """(left index, fraction) of ``x`` on the increasing grid ``xs``, clamped to its ends."""
    if x <= xs[0]:
        return 0, 0.0
    if x >= xs[-1]:
        return len(xs) - 2, 1.0
    j = 1
    while xs[j] < x:
        j += 1
    return j - 1, (x - xs[j - 1]) / (xs[j] - xs[j - 1])


def gemm_correction(hw, dtype: str, m: float, n: float, k: float) -> float:
    """Factor on a GEMM's smooth-form latency: exp of ``hw.gemm_corrections[dtype]`` interpolated
    trilinearly in log2 m, n, k (simfoe.specs.hardware.GemmCorrection); 1 without one."""
    g = (hw.gemm_corrections or {}).get(dtype)
    if g is None:
        return 1.0
    (i, fi), (j, fj), (q, fq) = (_grid_pos(math.log2(v), xs) for v, xs in ((m, g.log2_m), (n, g.log2_n), (k, g.log2_k)))
    nn, nk, v = len(g.log2_n), len(g.log2_k), g.log_ratio
    acc = 0.0
    for a, wa in ((i, 1.0 - fi), (i + 1, fi)):
        for b, wb in ((j, 1.0 - fj), (j + 1, fj)):
            for c, wc in ((q, 1.0 - fq), (q + 1, fq)):
                w = wa * wb * wc
                if w:
                    acc += w * v[(a * nn + b) * nk + c]
    return math.exp(acc)


def grouped_params(hw, dtype: str = "bf16") -> dict[str, float]:
    """The grouped launch's parameters: ``kernels.grouped_gemm`` over ``kernels.gemm`` (see module doc);
    for fp8 (fp4), ``kernels.grouped_gemm_fp8`` (``_fp4``) over ``grouped_gemm`` over ``gemm_fp8`` (``_fp4``) over ``gemm``."""
    out = dict(zip(GEMM_KEYS, gemm_params(hw, dtype)))
    out.update({key: float(v) for key, v in _family(hw, "grouped_gemm").items()})
    if dtype in NARROW_MATH:
        out.update({key: float(v) for key, v in _family(hw, f"grouped_gemm_{dtype}").items()})
    return out


def _tiled_rows(t, g: dict[str, float]) -> float:
    """Rows the grouped kernel computes for the active experts' loads ``t`` (all > 0)."""
    import numpy as np

    tile = g.get("m_tile", 0.0)
    if tile <= 0.0:
        return float(t.sum() + g["m_pad"] * t.size)
    return float((np.ceil(t / tile) * tile).sum())


def grouped_gemm(hw, tokens_per_expert, n: int, k: int, dtype: str = "bf16",
                 weights: str | None = None) -> KernelCost:
    """One grouped launch: for each expert e, (t_e x k) @ (k x n); activations in ``dtype``, expert weights in
    ``weights`` (default ``dtype``; formats and math peak: module doc).

    Experts with t_e = 0 cost nothing (their weights are not read); each active expert's weights
    (k x n) are read once. Compute time prices the rows the kernel computes: with a ``grouped_gemm``
    family that has ``m_tile``, each active expert's t_e rounded up to whole tiles (the tile chosen by
    the mean rows over all ``len(tokens_per_expert)`` experts, see module doc); otherwise
    sum t_e + m_pad * active (the dense fit's padding). Then 2 rows (n + n_pad)(k + k_pad) /
    (peak * eff_max), one launch. With a measured table for ``dtype`` (CPU profiles), the sum of the
    active experts' single GEMMs.
    """
    import numpy as np

    t = np.asarray(tokens_per_expert, dtype=float).ravel()
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise SpecError("tokens_per_expert", tokens_per_expert, "a non-empty array of counts >= 0")
    n = _pos("n", n)
    k = _pos("k", k)
    total = float(t.sum())
    active = float(np.count_nonzero(t))
    if active == 0:
        return KernelCost(0.0, 0.0, 0.0, "launch")
    a, w, mdt = operands(dtype, weights)
    flops = 2.0 * total * n * k
    nbytes = active * w.weight_bytes(k, n) + a.act_bytes(total, k) + a.output_bytes * total * n
    if _table(hw, mdt) is not None:
        # a loop of single GEMM calls, one per active expert
        sizes, reps = np.unique(t[t > 0], return_counts=True)
        costs = [gemm(hw, float(te), n, k, dtype, weights) for te in sizes]
        lat = float(sum(r * c.latency_s for r, c in zip(reps, costs)))
        return KernelCost(lat, flops, nbytes, costs[-1].bound)
    g = grouped_params(hw, mdt)
    if "m_tile_small" in g and total / t.size <= g.get("small_rows", 0.0):
        g["m_tile"] = g["m_tile_small"]
    rows = _tiled_rows(t[t > 0], g)
    t_c = 2.0 * rows * (n + g["n_pad"]) * (k + g["k_pad"]) / (hw.peak(mdt) * g["eff_max"])
    t_m = (nbytes + g["mem_floor_bytes"]) / (hw.gpu.hbm_bandwidth * g["mem_eff"])
    return _cost(t_c, t_m, g["smooth_p"], g["launch_s"], flops, nbytes)


def moe_slots_fitted(hw, dtype: str = "bf16", weights: str | None = None) -> bool:
    """Whether the grouped family of these operands carries the per-slot term :func:`moe_slots` prices
    (``slot_bytes`` or ``slot_inter_bytes``); without it every :func:`moe_slots` call is zero."""
    g = grouped_params(hw, operands(dtype, weights)[2])
    return bool(g.get("slot_bytes", 0.0) or g.get("slot_inter_bytes", 0.0))


def moe_slots(hw, slots: float, hidden: int, inter: int, dtype: str = "bf16", weights: str | None = None) -> KernelCost:
    """Per-slot work of a fused MoE kernel (permute, quantization, activation hand-off and finalize of every
    routed token x expert slot it walks, whatever the experts' owner): ``slots`` x (``hidden`` x
    ``slot_bytes`` + ``inter`` x ``slot_inter_bytes``) bytes of the grouped family (``inter``: the expert's
    intermediate width on this GPU), at ``hbm_bandwidth * mem_eff`` (s). Zero without those keys (the
    routing is then in the fitted efficiencies, as before). No launch: part of the fused launch."""
    s = _pos("slots", slots, allow_zero=True)
    h, f = _pos("hidden", hidden), _pos("inter", inter)
    g = grouped_params(hw, operands(dtype, weights)[2])
    nbytes = s * (h * g.get("slot_bytes", 0.0) + f * g.get("slot_inter_bytes", 0.0))
    if nbytes <= 0.0:
        return KernelCost(0.0, 0.0, 0.0, "launch")
    return KernelCost(nbytes / (hw.gpu.hbm_bandwidth * g["mem_eff"]), 0.0, nbytes, "memory")


def _check_heads(n_heads, n_kv_heads, head_dim) -> tuple[float, float, float]:
    h = _pos("n_heads", n_heads)
    hkv = _pos("n_kv_heads", n_kv_heads)
    d = _pos("head_dim", head_dim)
    if hkv > h or h % hkv:
        raise SpecError("n_kv_heads", n_kv_heads, f"a divisor of n_heads={n_heads}")
    return h, hkv, d


def attention_prefill(hw, batch: int, q_len: int, kv_len: int, n_heads: int, n_kv_heads: int,
                      head_dim: int, dtype: str = "bf16", causal: bool = True, kv_dtype: str | None = None,
                      mla: bool = False) -> KernelCost:
    """FlashAttention-like prefill: Q (q_len new tokens) against kv_len keys per sequence.

    FLOP = 4 * batch * n_heads * head_dim * pairs, pairs = q_len*kv_len, or with ``causal``
    q_len*kv_len - q_len^2/2 (exactly half when q_len == kv_len; the new tokens are the last
    q_len of kv_len). Bytes: Q, O in ``dtype`` and K, V in ``kv_dtype`` (default ``dtype``), each once.
    Efficiency ``hw.kernels['attention_prefill']``
    (published FlashAttention figures); with ``mla`` (DeepSeek multi-head latent attention, priced with
    the caller's per-head dims) ``hw.kernels['attention_prefill_mla']`` where fitted. Uncalibrated: roofline + launch.
    """
    b = _pos("batch", batch, allow_zero=True)
    q = _pos("q_len", q_len, allow_zero=True)
    kv = _pos("kv_len", kv_len, allow_zero=True)
    h, hkv, d = _check_heads(n_heads, n_kv_heads, head_dim)
    if q > kv:
        raise SpecError("q_len", q_len, f"<= kv_len={kv_len} (new tokens attend to the context and themselves)")
    if b == 0 or q == 0:
        return KernelCost(0.0, 0.0, 0.0, "launch")
    eb, kvb = dtype_bytes(dtype), dtype_bytes(kv_dtype or dtype)
    pairs = q * kv - (q * q / 2.0 if causal else 0.0)
    flops = 4.0 * b * h * d * pairs
    nbytes = b * d * (eb * 2.0 * q * h + kvb * 2.0 * kv * hkv)
    f = (_family(hw, "attention_prefill_mla") if mla else None) or _family(hw, "attention_prefill")
    rate = hw.peak(dtype) * float(f.get("eff_max", 1.0))
    t_c, waves = _prefill_compute(f, hw.gpu.sms, rate, b * h, q, kv, d, causal)
    t_m = nbytes / (hw.gpu.hbm_bandwidth * float(f.get("mem_eff", 1.0)))
    launch = _launch(hw, f) + float(f.get("per_wave_s", 0.0)) * waves
    return _cost(t_c, t_m, float(f.get("smooth_p", math.inf)), launch, flops, nbytes)


def _prefill_compute(f: dict, sms: int | None, rate: float, seq_heads: float, q: float, kv: float, d: float,
                     causal: bool) -> tuple[float, float]:
    """(compute seconds, CTA waves) of a prefill at ``rate`` FLOP/s for ``seq_heads`` = batch x heads.

    Each score costs 4 (d + ``head_dim_pad``) FLOP (the pad: the softmax's exponentials and rescaling, in
    MMA-FLOP equivalents). With a ``tile`` (tokens) and ``sms``, the kernel's tiling: one CTA per (sequence,
    head, q tile) computes whole tile x tile blocks (causal: the blocks on or below the diagonal); CTAs run
    in ceil(CTAs / sms) waves, a partial last wave idles SMs, and no wave is shorter than its longest CTA
    (the last q tile, all kv tiles, on one SM). Without them: the exact pairs, no waves (0).
    """
    dp = _score_cost(f, d)
    tile = float(f.get("tile", 0.0))
    if tile <= 0.0 or not sms:
        pairs = q * kv - (q * q / 2.0 if causal else 0.0)
        return 4.0 * seq_heads * dp * pairs / rate, 0.0
    qt, kt = math.ceil(q / tile), math.ceil(kv / tile)
    blocks = qt * kt - (qt * (qt - 1) / 2.0 if causal else 0.0)
    ctas = seq_heads * qt
    waves = math.ceil(ctas / sms)
    block_s = 4.0 * dp * tile * tile / rate  # one block with every SM on it
    floor = float(f.get("min_wave_s", 0.0)) * waves  # no wave shorter than a CTA's fixed prologue and epilogue
    return max(blocks * seq_heads * block_s * waves * sms / ctas, kt * block_s * sms, floor), float(waves)


def _score_cost(f: dict, d: float) -> float:
    """Cost of one attention score in head-dim elements (x 4 FLOP at the family's rate): d + ``head_dim_pad`` (the
    softmax's exponentials in MMA-FLOP equivalents), plus with ``rescale_elems`` E d^2 / E: the O accumulator (q tile x
    d) is rescaled once per kv tile, and a kv tile of a fixed shared-memory stage holds E / d tokens, so per score the
    rescale costs d / (E / d). E also folds in one O element's rescale cost relative to 4 MMA FLOP, so it is a fitted
    choice (simfoe.calibration.fit_tables.TILE_GRID), not the kernel's stage size."""
    dp = d + float(f.get("head_dim_pad", 0.0))
    e = float(f.get("rescale_elems", 0.0))
    return dp + d * d / e if e > 0.0 else dp


def attention_decode(hw, batch: int, kv_len, n_heads: int, n_kv_heads: int, head_dim: int,
                     dtype: str = "bf16", kv_dtype: str | None = None, mla: bool = False) -> KernelCost:
    """Decode attention: one new query token per sequence reads its whole KV cache (K, V in ``kv_dtype``,
    default ``dtype``; Q, O and the math in ``dtype``).

    ``kv_len``: context length per sequence (int, same for all ``batch`` sequences) or an
    array-like of per-sequence lengths (its sum is the total KV tokens read; its length must be
    ``batch``). FLOP = 4 * n_heads * head_dim * total_kv; bytes = K and V of total_kv tokens plus
    Q and O. Memory-bound: uses the fitted HBM streaming efficiency ``hw.kernels['attention_decode']``
    (with ``mla``, the weight-absorbed latent read, ``hw.kernels['attention_decode_mla']`` where fitted).
    """
    b = _pos("batch", batch, allow_zero=True)
    h, hkv, d = _check_heads(n_heads, n_kv_heads, head_dim)
    if isinstance(kv_len, (int, float)) and not isinstance(kv_len, bool):
        lens = _pos("kv_len", kv_len, allow_zero=True)
        total = lens * b
    else:
        import numpy as np

        lens = np.asarray(kv_len, dtype=float).ravel()
        if lens.size != b or not np.all(np.isfinite(lens)) or np.any(lens < 0):
            raise SpecError("kv_len", kv_len, f"an int or {int(b)} per-sequence lengths >= 0")
        total = float(lens.sum())
    if b == 0:
        return KernelCost(0.0, 0.0, 0.0, "launch")
    eb, kvb = dtype_bytes(dtype), dtype_bytes(kv_dtype or dtype)
    flops = 4.0 * h * d * total
    nbytes = d * (kvb * 2.0 * hkv * total + eb * 2.0 * b * h)
    f = (_family(hw, "attention_decode_mla") if mla else None) or _family(hw, "attention_decode")
    read = _decode_tokens(f, lens, b, total)
    t_c = 4.0 * h * d * read / (hw.peak(dtype) * float(f.get("eff_max", 1.0)))
    g = _head_groups(f, hw.gpu.sms, b, h / hkv, total / b) if mla else 1.0
    reads = 1.0 + float(f.get("reread", 1.0)) * (g - 1.0)  # the KV latent, once per head group
    kv_read = d * kvb * 2.0 * hkv * read * reads / _split_fill(f, hw.gpu.sms, b * hkv * g, total / b)
    streamed = kv_read + d * eb * 2.0 * b * h + float(f.get("mem_floor_bytes", 0.0))
    t_m = streamed / (hw.gpu.hbm_bandwidth * float(f.get("mem_eff", 1.0)))
    launch = (_launch(hw, f) + float(f.get("per_seq_head_s", 0.0)) * b * hkv * g
              + float(f.get("per_seq_qhead_s", 0.0)) * b * h)
    return _cost(t_c, t_m, float(f.get("smooth_p", math.inf)), launch, flops, nbytes)


MLA_DECODE_HEAD_TILES = {"low_latency": (8, 16), "wide_above": 32, "split_step": 256, "split_most_tokens": 1024}
"""TensorRT-LLM's MLA decode kernel choice (trtllm-gen, cpp/tensorrt_llm/kernels/trtllmGenKernels/fmha/fmhaKernels.h:
hashFromRunnerParams, useSwapsMmaAbMlaGenKernel), which SGLang's ``trtllm_mla`` backend runs through FlashInfer: the
low-latency kernel (SwapsMmaAb) puts 8 (heads <= 8) or 16 query heads in one CTA; it runs when heads <= 32, or when
batch x ceil(heads / 16) CTAs fit the SMs and each split-KV CTA (one per 256 tokens at most, SMs / CTAs of them)
reads <= 1024 tokens; otherwise the high-throughput kernel (KeepsMmaAb) holds 64 heads per CTA (128: a 2-CTA pair,
each half of V's columns), one group."""


def _head_groups(f: dict, sms: int | None, b: float, heads: float, kv: float) -> float:
    """CTA groups of query heads an MLA decode kernel runs per sequence, each streaming the KV latent
    (:data:`MLA_DECODE_HEAD_TILES`); 1 without the family's ``head_groups`` or ``sms``. ``kv``: mean tokens."""
    if not f.get("head_groups") or not sms:
        return 1.0
    t = MLA_DECODE_HEAD_TILES
    small, large = t["low_latency"]
    low = math.ceil(heads / (small if heads <= small else large))
    ctas = b * math.ceil(heads / large)
    splits = min(max(1, math.ceil(kv / t["split_step"])), max(1, sms // ctas))
    if heads <= t["wide_above"] or (ctas <= sms and math.ceil(kv / splits) <= t["split_most_tokens"]):
        return float(low)
    return 1.0


def _decode_tokens(f: dict, lens, b: float, total: float) -> float:
    """KV tokens a decode kernel reads: ``total``, or with a ``kv_tile`` (tokens, the kernel's KV tile / page)
    each sequence's length (``lens``: one float for all ``b``, or a checked float array) rounded up to whole
    tiles."""
    tile = float(f.get("kv_tile", 0.0))
    if tile <= 0.0:
        return total
    if isinstance(lens, float):
        return b * math.ceil(lens / tile) * tile
    import numpy as np

    return float((np.ceil(lens / tile) * tile).sum())


def _split_fill(f: dict, sms: int | None, seq_heads: float, mean_kv: float) -> float:
    """Share of the SMs a split-KV decode keeps streaming its KV (flash-decoding): each (sequence, KV head) is
    split into at most ``max_splits`` CTAs, and with ``split_tokens`` into no more than ceil(kv / split_tokens)
    (mean length; the fit tries 0 and ``kv_tile``, which keep the KV time monotone in kv); fill = min(1, CTAs /
    sms). 1 without ``max_splits`` or ``sms``."""
    most = float(f.get("max_splits", 0.0))
    if most <= 0.0 or not sms:
        return 1.0
    per = float(f.get("split_tokens", 0.0))
    splits = min(most, max(1.0, math.ceil(mean_kv / per))) if per > 0.0 else most
    return min(1.0, seq_heads * splits / sms)

def elementwise(hw, nbytes: float, flops: float = 0.0, kind: str | None = None) -> KernelCost:
    """Memory-bound elementwise kernel (norm, activation, residual add) moving ``nbytes``.

    ``kind`` in {"norm", "act", "add"} picks ``hw.kernels['elementwise_<kind>']`` when fitted, else
    ``hw.kernels['elementwise']``. ``flops`` (CUDA-core work) counts only when the profile gives a
    ``fp32`` peak; otherwise these kernels are treated as memory-bound (true for norms, activations
    and adds). Uncalibrated: bytes / hbm_bandwidth + launch.
    """
    nb = _pos("nbytes", nbytes, allow_zero=True)
    fl = _pos("flops", flops, allow_zero=True)
    if kind is not None and kind not in ELEMENTWISE_KINDS:
        raise SpecError("kind", kind, "allowed: " + ", ".join(ELEMENTWISE_KINDS) + " or None")
    if nb == 0 and fl == 0:
        return KernelCost(0.0, 0.0, 0.0, "launch")
    f = (_family(hw, f"elementwise_{kind}") if kind else None) or _family(hw, "elementwise")
    t_m = (nb + float(f.get("mem_floor_bytes", 0.0))) / (hw.gpu.hbm_bandwidth * float(f.get("mem_eff", 1.0)))
    fp32 = hw.gpu.peak_flops.get("fp32")
    t_c = fl / fp32 if (fp32 and fl) else 0.0
    return _cost(t_c, t_m, math.inf, _launch(hw, f), fl, nb)


GLUE_PARAMS = ("per_active_expert_s", "per_idle_expert_s", "per_rank_s", "dispatch_s", "per_row_s", "per_token_rank_s",
               "per_call_s")


def routing_glue(hw, active_experts: float, idle_experts: float, ranks: int, rows: float, tokens: float) -> float:
    """Seconds of eager-framework routing ops on one device for one MoE layer (0 without a fitted
    ``kernels.routing_glue``, e.g. GPU profiles, whose fused routing kernels are not priced here).

    ``active_experts`` / ``idle_experts``: local experts with / without rows (each active one costs a
    row selection, gather, activation, gate and scatter-add; an idle one only its selection);
    ``ranks``: destination ranks of the dispatch (0 when experts are local and nothing is dispatched);
    ``rows``: token-expert pairs processed locally; ``tokens``: tokens this device routes. Linear:
    ``a*active + b*idle + r*ranks + d*[ranks > 0] + w*rows + u*tokens*ranks + c``, fitted to the
    ``routing_glue`` microbenchmark (simfoe.calibration.fit_profile); ``c`` (``per_call_s``) is what a
    layer's routing pays for finding its code and metadata out of cache, as it does inside a forward
    pass (absent, i.e. 0, in profiles fitted to warm rows).
    """
    f = _family(hw, "routing_glue")
    if not f:
        return 0.0
    terms = glue_terms(active_experts, idle_experts, ranks, rows, tokens)
    return sum(float(f.get(k, 0.0)) * t for k, t in zip(GLUE_PARAMS, terms))


def glue_terms(active_experts: float, idle_experts: float, ranks: int, rows: float, tokens: float) -> tuple:
    """The regressors of :func:`routing_glue`, in ``GLUE_PARAMS`` order (the fit uses the same ones)."""
    return (active_experts, idle_experts, ranks, 1.0 if ranks > 0 else 0.0, rows, tokens * ranks, 1.0)


OPS = ("gemm", "grouped_gemm", "attention_prefill", "attention_decode", "elementwise")
