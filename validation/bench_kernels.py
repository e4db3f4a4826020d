"""Kernel microbenchmarks: GEMM, grouped expert FFN, SDPA attention (prefill/decode), memory copy.

Each benchmark yields one dict per measured point with the columns of ``KERNEL_COLUMNS``. FLOP and
byte counts follow validation/README.md ("Definitions"): FLOPs of the mathematical op (multiply-add
= 2 FLOP), bytes = minimal DRAM/HBM traffic (every input read once, every output written once,
intermediates not counted). Inputs are rotated over several buffer sets so that the last-level
cache does not hold them between calls: the sets are disjoint slices of one random pool per dtype
(:class:`InputPool`), so a rotation of hundreds of small sets costs no allocation. On CPU, GEMM,
grouped FFN and routing glue are also timed cold (variants ``*_cold``): one call per sample after a streaming read of
``flush_bytes``, which also
evicts code, allocator metadata and page-table entries, as the rest of a forward pass does between
two calls of the same layer's op. On CUDA each point is timed twice: replayed from a CUDA graph (the
device time, column ``timing`` = ``cuda_graph``) and as an eager loop (variant suffix ``_eager``,
``timing`` = ``cuda_events``), whose time per call is the host's dispatch rate where that is slower.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from validation.bench_common import (
    DTYPES,
    DeviceTimer,
    TimingPolicy,
    dtype_bytes,
    log,
    measure,
    measure_after_flush,
    measure_graph,
    rotation_count,
)

KERNEL_COLUMNS: tuple[str, ...] = (
    "op", "variant", "device", "dtype", "threads",
    "batch", "m", "n", "k",
    "heads", "kv_heads", "head_dim", "seq_len", "context_len", "causal",
    "experts", "ranks", "routing", "tokens_total", "tokens_max", "experts_active", "tokens_per_expert",
    "size_bytes", "flops", "bytes",
    "median_s", "p10_s", "p90_s", "min_s", "max_s", "cpu_median_s", "cpu_p10_s", "cpu_p90_s",
    "repeats", "inner", "warmup", "buffers", "flush_bytes", "draws", "draw_spread", "timing",
)
"""Columns of kernels.csv, in order. Cells that do not apply to an op are empty."""


@dataclass(frozen=True)
class KernelContext:
    """Where and how kernels run: device, timing policy, last-level cache size (bytes) for rotation,
    a cap (bytes) on the memory spent on rotated copies, and the bytes read before each sample of the
    cold (in-pass) variants of GEMM, grouped FFN and routing glue (``flush_bytes``; 0 skips them, as on
    CUDA: the flush models the host caches and TLBs an eager CPU forward pass leaves cold).

    ``max_buffers`` only bounds the bookkeeping: the rotation is sized by the cache and the memory cap
    (a cap of 16 copies let the 16 x 4 MiB of a small GEMV's weights sit in the Intel VM's cache, which
    ran them 1.5-2.2x faster than from DRAM; docs/calibration.md, "Rotation")."""

    device: torch.device
    policy: TimingPolicy
    cache_bytes: int
    rotate_mem_cap_bytes: int
    max_buffers: int = 4096
    flush_bytes: int = 0
    inputs: "InputPool | None" = None
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.inputs is None:
            object.__setattr__(self, "inputs", InputPool(self.device, self.rotate_mem_cap_bytes))

    @property
    def timer(self) -> DeviceTimer:
        return DeviceTimer(self.device)


# ----------------------------------------------------------------------------------------------
# Shape sets


@dataclass(frozen=True)
class ShapeSet:
    """The grid measured for one device class and mode (full or quick)."""

    gemm_mnk: tuple[tuple[int, int, int], ...]
    ffn: tuple[tuple[int, int, int, int], ...]          # (experts, hidden k, ffn width n, total routed tokens)
    routings: tuple[str, ...]
    prefill: tuple[tuple[int, int, int, int, int], ...]  # (batch, heads, kv_heads, head_dim, seq_len)
    decode: tuple[tuple[int, int, int, int, int], ...]   # (batch, heads, kv_heads, head_dim, context_len)
    copy_bytes: tuple[int, ...]
    glue: tuple[tuple[int, int, int], ...] = ()        # (local experts, destination ranks (0 = local), tokens)
    gemm_cold_nk: frozenset = frozenset()               # (n, k) whose GEMMs also get the cold variant


def _grid(ms: Sequence[int], nks: Sequence[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
    return tuple((m, n, k) for (n, k) in nks for m in ms)


_KIB, _MIB = 1024, 1024 * 1024

#: CPU GEMM slices: n at k = 1024 and k at n = 1024, in half-octave steps. MKL fp32 below m = 192 runs
#: n = 768 or 1536 near peak and n = 1024, 2048 or 4096 at half of it (rows that are a multiple of 4 KiB
#: alias in the caches), so the table needs the points between the powers of two as well.
CPU_GEMM_N = (512, 768, 1024, 1536, 2048, 3072, 4096)
CPU_GEMM_K = (512, 1024, 2048, 4096)

CPU_FULL = ShapeSet(
    gemm_mnk=_grid((1, 2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256, 384, 512, 1024),
                   tuple((n, 1024) for n in CPU_GEMM_N) + tuple((1024, k) for k in CPU_GEMM_K if k != 1024))
    + tuple((s, s, s) for s in (256, 512, 1536)),
    ffn=tuple((e, 1024, 512, t) for e in (8, 32) for t in (8, 64, 512, 2048)),
    routings=("uniform", "zipf1.2"),
    prefill=tuple((1, h, kv, d, s) for (h, kv, d) in ((8, 8, 64), (16, 4, 64), (8, 1, 128)) for s in (128, 512, 2048)),
    decode=tuple((b, h, kv, d, c) for (h, kv, d) in ((8, 8, 64), (16, 4, 64), (8, 1, 128))
                 for b in (1, 8) for c in (512, 4096)),
    copy_bytes=tuple(x * _KIB for x in (16, 256)) + tuple(x * _MIB for x in (1, 4, 16, 64, 256)),
    glue=tuple((e, r, t) for e in (1, 2, 4, 8, 16) for r in (0, 1, 2, 4) for t in (4, 256)),
    # the cold GEMM rows are a bound, not fitted (docs/calibration.md, Cold variants): three slices suffice
    gemm_cold_nk=frozenset({(1024, 1024), (4096, 1024), (1024, 4096), (256, 256), (512, 512), (1536, 1536)}),
)

CPU_QUICK = ShapeSet(
    gemm_mnk=((1, 256, 256), (64, 256, 256), (256, 256, 256)),
    ffn=((8, 256, 128, 64),),
    routings=("uniform", "zipf1.2"),
    prefill=((1, 4, 2, 64, 128),),
    decode=((2, 4, 2, 64, 256),),
    copy_bytes=(256 * _KIB, 4 * _MIB),
    glue=((4, 0, 4), (4, 2, 16)),
)

CUDA_FULL = ShapeSet(
    gemm_mnk=_grid((1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
                   ((4096, 4096), (14336, 4096), (4096, 14336), (2048, 7168), (7168, 2048)))
    + tuple((s, s, s) for s in (1024, 2048, 8192)),
    ffn=tuple((e, 4096, 1408, t) for e in (8, 64) for t in (64, 512, 4096, 16384))
    + tuple((32, 7168, 2048, t) for t in (128, 1024, 8192)),
    routings=("uniform", "zipf1.2"),
    prefill=tuple((b, h, kv, 128, s) for (h, kv) in ((32, 8), (64, 8), (32, 32))
                  for (b, s) in ((8, 512), (2, 2048), (1, 8192), (1, 16384))),
    decode=tuple((b, h, kv, 128, c) for (h, kv) in ((32, 8), (64, 8), (32, 32))
                 for b in (1, 16, 128) for c in (1024, 8192, 32768) if b * c <= 128 * 8192),
    copy_bytes=tuple(x * _KIB for x in (64, 256)) + tuple(x * _MIB for x in (1, 4, 16, 64, 256, 1024)),
)

CUDA_QUICK = ShapeSet(
    gemm_mnk=((1, 4096, 4096), (256, 4096, 4096), (4096, 4096, 4096)),
    ffn=((8, 4096, 1408, 512),),
    routings=("uniform", "zipf1.2"),
    prefill=((1, 32, 8, 128, 2048),),
    decode=((16, 32, 8, 128, 4096),),
    copy_bytes=(1 * _MIB, 256 * _MIB),
)


def shape_set(device_type: str, quick: bool) -> ShapeSet:
    """Grid for ``device_type`` ('cpu' or 'cuda'); ``quick`` picks the seconds-long subset."""
    if device_type == "cuda":
        return CUDA_QUICK if quick else CUDA_FULL
    return CPU_QUICK if quick else CPU_FULL


# ----------------------------------------------------------------------------------------------
# Helpers


def _gen(device: torch.device, seed: int) -> torch.Generator:
    """Seeded generator on ``device`` (inputs are drawn where they live: no multi-GB host staging)."""
    return torch.Generator(device=device).manual_seed(seed)


def _rand(shape: Sequence[int], dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    if dtype.itemsize == 1:  # float8: torch draws no normal values in it; draw bf16 and convert
        return torch.randn(*shape, generator=gen, dtype=torch.bfloat16, device=device).to(dtype)
    return torch.randn(*shape, generator=gen, dtype=dtype, device=device)


class InputPool:
    """Random input tensors for rotated buffer sets: page-aligned, consecutive slices of one random
    tensor per dtype of ``cap_bytes`` + 25% (filled once, on first use), taken round the ring.

    A rotation of several sets totals at most ``cap_bytes`` of inputs (``rotation_count``), so its
    slices never overlap, and each new rotation starts on the slices used longest ago. A single set
    larger than the pool would wrap onto its own slices: the K and V of a 4 GB decode set landed on the
    same addresses, and the kernel, reading both block by block, got V from L2 (an apparent 6 TB/s on
    an H100). So :func:`_buffers` takes such a set under :meth:`fresh` (every input a fresh tensor),
    as it does an input larger than the pool. Contents: standard normal values (ones for integer
    dtypes), shared between shapes (the timed ops do not depend on them)."""

    ALIGN = 4096  # bytes

    def __init__(self, device: torch.device, cap_bytes: int, seed: int = 7) -> None:
        self.device = device
        self.size = int(cap_bytes * 1.25) // self.ALIGN * self.ALIGN
        self.seed = seed
        self._base: dict[torch.dtype, torch.Tensor] = {}
        self._pos: dict[torch.dtype, int] = {}
        self._fresh = False

    @contextlib.contextmanager
    def fresh(self) -> Iterator[None]:
        """Within this block every :meth:`take` returns a fresh tensor (for a set larger than the pool)."""
        self._fresh, before = True, self._fresh
        try:
            yield
        finally:
            self._fresh = before

    def take(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """The next slice of the ``dtype`` pool, viewed as ``shape`` (contiguous)."""
        esize = torch.empty((), dtype=dtype).element_size()
        numel = math.prod(shape)
        nbytes = numel * esize
        if nbytes > self.size or self._fresh:
            return self._fill(shape, dtype)
        base = self._base.get(dtype)
        if base is None:
            base = self._base[dtype] = self._fill((self.size // esize,), dtype)
            self._pos[dtype] = 0
        pos = self._pos[dtype]
        if pos + nbytes > self.size:
            pos = 0
        self._pos[dtype] = -(-(pos + nbytes) // self.ALIGN) * self.ALIGN
        return base[pos // esize: pos // esize + numel].view(*shape)

    def _fill(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        if dtype.is_floating_point:
            return _rand(shape, dtype, self.device, _gen(self.device, self.seed))
        return torch.ones(*shape, dtype=dtype, device=self.device)


def _output(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer of a rotated set, written once here: a fresh ``torch.empty`` has no pages yet,
    and with hundreds of sets the first calls' page faults (4096 per 16 MiB) filled whole samples
    (a 16 MiB copy timed 59 ms instead of 3)."""
    return torch.zeros(*shape, dtype=dtype, device=device)


def _buffers(ctx: KernelContext, working_set: int, make: Callable[[], tuple]) -> list[tuple]:
    """``make()`` once per rotated set (``rotation_count``); a set larger than the input pool is made of
    fresh tensors, so its inputs cannot alias one another (:class:`InputPool`)."""
    n = rotation_count(working_set, ctx.cache_bytes, ctx.max_buffers, ctx.rotate_mem_cap_bytes)
    if working_set > ctx.inputs.size:
        with ctx.inputs.fresh():
            return [make() for _ in range(n)]
    return [make() for _ in range(n)]


EAGER = "_eager"
"""Variant suffix of CUDA rows timed as an eager loop of launches (the graph-replayed row is the plain variant)."""


def _row(ctx: KernelContext, op: str, variant: str, dtype: str, threads: int | None, fn: Callable[[int], object],
         n_buffers: int, flops: int, nbytes: int, flush: Callable[[], object] | None = None, graph: bool = False,
         **cols: object) -> dict:
    timing = "host_clock" if ctx.device.type == "cpu" else "cuda_events"
    with torch.inference_mode():
        if graph:
            try:
                m = measure_graph(fn, ctx.timer, ctx.policy, n_buffers)
                timing = "cuda_graph"
            except RuntimeError as exc:  # an op capture refuses: keep the eager time, say so in the row
                log(f"  {op} {variant}: CUDA graph capture failed ({str(exc).splitlines()[0][:120]}); timed eagerly")
                torch.cuda.synchronize(ctx.device)
                m = measure(fn, ctx.timer, ctx.policy)
        elif flush is None:
            m = measure(fn, ctx.timer, ctx.policy)
        else:
            m = measure_after_flush(fn, flush, ctx.timer, ctx.policy)
    row: dict = dict(op=op, variant=variant, device=ctx.device.type, dtype=dtype, threads=threads, timing=timing,
                     flops=int(flops), bytes=int(nbytes), buffers=n_buffers, inner=m.inner, warmup=m.warmup,
                     median_s=m.stats.median_s, p10_s=m.stats.p10_s, p90_s=m.stats.p90_s,
                     min_s=m.stats.min_s, max_s=m.stats.max_s, repeats=m.stats.repeats)
    if m.cpu_stats is not None:
        row.update(cpu_median_s=m.cpu_stats.median_s, cpu_p10_s=m.cpu_stats.p10_s, cpu_p90_s=m.cpu_stats.p90_s)
    row.update(cols)
    return row


_SINKS: dict[int, torch.Tensor] = {}


def _timed_rows(ctx: KernelContext, op: str, variant: str, *args: object, **cols: object) -> Iterator[dict]:
    """The row(s) of one point: on CUDA with ``ctx.cuda_graphs``, the graph-replayed row (``variant``) and
    the eager row (``variant`` + ``_eager``); otherwise one row timed as the device allows."""
    if ctx.device.type == "cuda" and ctx.cuda_graphs:
        yield _row(ctx, op, variant, *args, graph=True, **cols)
        yield _row(ctx, op, variant + EAGER, *args, **cols)
    else:
        yield _row(ctx, op, variant, *args, **cols)


def _sink(ctx: KernelContext) -> Callable[[], object]:
    """The cache-clearing read of the cold variants: a sum over ``ctx.flush_bytes`` of host memory
    (allocated once per size and kept)."""
    buf = _SINKS.get(ctx.flush_bytes)
    if buf is None:
        buf = _SINKS[ctx.flush_bytes] = torch.ones(max(ctx.flush_bytes // 4, 1))
    return buf.sum


def _threads_cell(ctx: KernelContext) -> int | None:
    return torch.get_num_threads() if ctx.device.type == "cpu" else None


# ----------------------------------------------------------------------------------------------
# GEMM


def _scaled_mm_fn(ctx: KernelContext, m: int, n: int, k: int) -> tuple[Callable[[int], object], int, int] | None:
    """(fn, buffer sets, bytes) timing one fp8 GEMM, or None (logged) where torch cannot run the shape.

    ``torch._scaled_mm``: A[m,k] row-major and B[k,n] column-major in e4m3, one float32 scale each, C in
    bf16 (how serving stacks run fp8 linear layers with per-tensor scales). Bytes m*k + k*n + 2*m*n."""
    f8 = DTYPES["fp8"]
    ws = m * k + k * n + 2 * m * n
    scale = torch.ones((), dtype=torch.float32, device=ctx.device)
    bufs = _buffers(ctx, ws, lambda: (ctx.inputs.take((m, k), f8), ctx.inputs.take((n, k), f8).t(),
                                      _output((m, n), torch.bfloat16, ctx.device)))
    nb = len(bufs)

    def fn(i: int) -> object:
        a, b, c = bufs[i % nb]
        return torch._scaled_mm(a, b, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16, out=c)

    try:
        with torch.inference_mode():
            fn(0)
    except (RuntimeError, TypeError) as exc:
        log(f"  gemm fp8 m={m} n={n} k={k}: torch._scaled_mm refused ({str(exc).splitlines()[0][:120]}); skipped")
        return None
    return fn, nb, ws


def bench_gemm(ctx: KernelContext, shapes: ShapeSet, dtypes: Sequence[str]) -> Iterator[dict]:
    """C[m,n] = A[m,k] @ B[k,n]. FLOPs 2*m*n*k; bytes (m*k + k*n + m*n) * element size.

    dtype ``fp8``: variant ``scaled_mm`` (:func:`_scaled_mm_fn`) on the same shapes, warm rows only."""
    for dt in dtypes:
        if dt == "fp8":
            for (m, n, k) in shapes.gemm_mnk:
                timed = _scaled_mm_fn(ctx, m, n, k)
                if timed is not None:
                    fn8, nb8, ws8 = timed
                    yield from _timed_rows(ctx, "gemm", "scaled_mm", dt, _threads_cell(ctx), fn8, nb8,
                                           2 * m * n * k, ws8, m=m, n=n, k=k)
            continue
        tdt, eb = DTYPES[dt], dtype_bytes(dt)
        for (m, n, k) in shapes.gemm_mnk:
            ws = (m * k + k * n + m * n) * eb
            bufs = _buffers(ctx, ws, lambda: (ctx.inputs.take((m, k), tdt), ctx.inputs.take((k, n), tdt),
                                              _output((m, n), tdt, ctx.device)))
            nb = len(bufs)

            def fn(i: int, bufs: list = bufs, nb: int = nb) -> object:
                a, b, c = bufs[i % nb]
                return torch.mm(a, b, out=c)

            yield from _timed_rows(ctx, "gemm", "mm", dt, _threads_cell(ctx), fn, nb, 2 * m * n * k, ws, m=m, n=n, k=k)
            if ctx.flush_bytes > 0 and (not shapes.gemm_cold_nk or (n, k) in shapes.gemm_cold_nk):
                yield _row(ctx, "gemm", "mm_cold", dt, _threads_cell(ctx), fn, nb, 2 * m * n * k, ws,
                           flush=_sink(ctx), flush_bytes=ctx.flush_bytes, m=m, n=n, k=k)
            del bufs


# ----------------------------------------------------------------------------------------------
# Grouped expert FFN


def route_tokens(total: int, experts: int, routing: str) -> list[int]:
    """Deterministic tokens-per-expert split of ``total`` routed tokens.

    'uniform': as equal as possible. 'zipfS': share of the r-th expert proportional to r**-S,
    rounded by largest remainder so the counts sum to ``total``. 'hot': all on one expert.
    """
    if routing == "uniform":
        weights = [1.0] * experts
    elif routing.startswith("zipf"):
        s = float(routing[4:])
        weights = [(r + 1) ** -s for r in range(experts)]
    elif routing == "hot":
        weights = [1.0] + [0.0] * (experts - 1)
    else:
        raise ValueError(f"routing {routing!r}: allowed uniform, zipf<S>, hot")
    tot_w = sum(weights)
    exact = [total * w / tot_w for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(experts), key=lambda e: (-(exact[e] - counts[e]), e))
    for e in order[: total - sum(counts)]:
        counts[e] += 1
    return counts


class _GroupedMM:
    """``torch._grouped_mm`` (one kernel for all experts' GEMMs, bf16 on sm_90+; a private torch API, torch
    >= 2.8) and the weight layout it accepts here: [E, k, n] row-major, or the transposed view of [E, n, k]."""

    def __init__(self, transposed: bool) -> None:
        self.transposed = transposed

    @classmethod
    def probe(cls, device: torch.device) -> "_GroupedMM | None":
        """The layout that works on ``device``, or None (CPU, no API, or both layouts refused)."""
        if device.type != "cuda" or not hasattr(torch, "_grouped_mm"):
            return None
        x = torch.randn(48, 64, dtype=torch.bfloat16, device=device)
        offs = torch.tensor([16, 16, 48], dtype=torch.int32, device=device)
        for transposed in (False, True):
            w = torch.randn(3, 128, 64, dtype=torch.bfloat16, device=device).transpose(-2, -1) if transposed \
                else torch.randn(3, 64, 128, dtype=torch.bfloat16, device=device)
            try:
                y = torch._grouped_mm(x, w, offs=offs)
                ref = torch.cat([x[:16] @ w[0], x[16:48] @ w[2]])
                torch.cuda.synchronize(device)
                if torch.allclose(torch.cat([y[:16], y[16:48]]).float(), ref.float(), rtol=2e-2, atol=2e-1):
                    return cls(transposed)
            except (RuntimeError, TypeError):
                continue
        log("  grouped_ffn: torch._grouped_mm unavailable or wrong here; grouped_mm_swiglu rows skipped")
        return None

    def weights(self, ctx: KernelContext, experts: int, k: int, n: int, dtype: torch.dtype) -> torch.Tensor:
        if self.transposed:
            return ctx.inputs.take((experts, n, k), dtype).transpose(-2, -1)
        return ctx.inputs.take((experts, k, n), dtype)


def bench_grouped_ffn(ctx: KernelContext, shapes: ShapeSet, dtypes: Sequence[str]) -> Iterator[dict]:
    """SwiGLU expert FFN applied per expert to its tokens (loop over experts, as a reference MoE layer).

    Expert e with t_e tokens: H = X_e[t_e,k] @ Wgu_e[k,2n]; A = silu(H[:, :n]) * H[:, n:];
    Y_e = A[t_e,n] @ Wd_e[n,k]. FLOPs 6*k*n*sum(t_e) (elementwise ignored); bytes
    (3*k*n*experts_active + 2*k*sum(t_e)) * element size (active experts' weights read once,
    X read once, Y written once).

    On CUDA (bf16) also variant ``grouped_mm_swiglu``: the same FFN as two ``torch._grouped_mm`` calls over
    the active experts' stacked weights, the one-kernel grouped GEMM a serving engine runs (where torch
    has it).
    """
    grouped_mm = _GroupedMM.probe(ctx.device)
    for dt in dtypes:
        tdt, eb = DTYPES[dt], dtype_bytes(dt)
        for (experts, k, n, total) in shapes.ffn:
            for routing in shapes.routings:
                counts = route_tokens(total, experts, routing)
                active = [e for e in range(experts) if counts[e] > 0]
                ws = (3 * k * n * len(active) + 2 * k * total) * eb

                def make() -> tuple:
                    wgu = [ctx.inputs.take((k, 2 * n), tdt) for _ in active]
                    wd = [ctx.inputs.take((n, k), tdt) for _ in active]
                    x = ctx.inputs.take((total, k), tdt)
                    y = _output((total, k), tdt, ctx.device)
                    return wgu, wd, x, y

                bufs = _buffers(ctx, ws, make)
                nb = len(bufs)
                offsets: list[tuple[int, int]] = []
                start = 0
                for e in active:
                    offsets.append((start, start + counts[e]))
                    start += counts[e]

                def fn(i: int, bufs: list = bufs, nb: int = nb, offsets: list = offsets, n: int = n) -> object:
                    wgu, wd, x, y = bufs[i % nb]
                    for j, (lo, hi) in enumerate(offsets):
                        h = torch.mm(x[lo:hi], wgu[j])
                        a = F.silu(h[:, :n]) * h[:, n:]
                        torch.mm(a, wd[j], out=y[lo:hi])
                    return y

                cols = dict(n=n, k=k, experts=experts, routing=routing, tokens_total=total, tokens_max=max(counts),
                            experts_active=len(active), tokens_per_expert=";".join(str(c) for c in counts))
                yield from _timed_rows(ctx, "grouped_ffn", "loop_swiglu", dt, _threads_cell(ctx), fn, nb,
                                       6 * k * n * total, ws, **cols)
                if ctx.flush_bytes > 0:
                    yield _row(ctx, "grouped_ffn", "loop_swiglu_cold", dt, _threads_cell(ctx), fn, nb,
                               6 * k * n * total, ws, flush=_sink(ctx), flush_bytes=ctx.flush_bytes, **cols)
                del bufs
                if grouped_mm is not None and dt == "bf16":
                    gbufs = _buffers(ctx, ws, lambda: (grouped_mm.weights(ctx, len(active), k, 2 * n, tdt),
                                                       grouped_mm.weights(ctx, len(active), n, k, tdt),
                                                       ctx.inputs.take((total, k), tdt)))
                    offs = torch.tensor([hi for (_, hi) in offsets], dtype=torch.int32, device=ctx.device)

                    def gfn(i: int, bufs: list = gbufs, nb: int = len(gbufs), offs=offs, n: int = n) -> object:
                        wgu, wd, x = bufs[i % nb]
                        h = torch._grouped_mm(x, wgu, offs=offs)
                        return torch._grouped_mm(F.silu(h[:, :n]) * h[:, n:], wd, offs=offs)

                    yield from _timed_rows(ctx, "grouped_ffn", "grouped_mm_swiglu", dt, _threads_cell(ctx), gfn,
                                           len(gbufs), 6 * k * n * total, ws, **cols)
                    del gbufs


# ----------------------------------------------------------------------------------------------
# Attention (SDPA)


def _sdpa_supports_gqa(device: torch.device) -> bool:
    """Whether SDPA accepts ``enable_gqa`` here (torch >= 2.5); probed with a tiny call because the
    builtin has no inspectable signature."""
    q = torch.zeros(1, 2, 1, 8, device=device)
    kv = torch.zeros(1, 1, 1, 8, device=device)
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
    except (TypeError, RuntimeError):
        return False
    return True


def attention_flops(batch: int, heads: int, seq_len: int, context_len: int, head_dim: int, causal: bool) -> int:
    """4*b*h*s_q*s_kv*d (QK^T and PV), halved for causal prefill."""
    f = 4 * batch * heads * seq_len * context_len * head_dim
    return f // 2 if causal else f


def attention_bytes(batch: int, heads: int, kv_heads: int, seq_len: int, context_len: int, head_dim: int, eb: int) -> int:
    """Q read and O written (b*h*s_q*d each), K and V read (b*kv*s_kv*d each), times element size."""
    return (2 * batch * heads * seq_len * head_dim + 2 * batch * kv_heads * context_len * head_dim) * eb


def bench_attention(ctx: KernelContext, shapes: ShapeSet, dtypes: Sequence[str]) -> Iterator[dict]:
    """torch SDPA, layout [batch, heads, seq, head_dim]; GQA through ``enable_gqa`` when available,
    otherwise K/V are expanded per query head inside the timed call (variant says which)."""
    gqa_native = _sdpa_supports_gqa(ctx.device)
    points = [("prefill", p) for p in shapes.prefill] + [("decode", p) for p in shapes.decode]
    for dt in dtypes:
        tdt, eb = DTYPES[dt], dtype_bytes(dt)
        for phase, (b, h, kv, d, length) in points:
            sq, skv = (length, length) if phase == "prefill" else (1, length)
            causal = phase == "prefill"
            ws = attention_bytes(b, h, kv, sq, skv, d, eb)
            bufs = _buffers(ctx, ws, lambda: (ctx.inputs.take((b, h, sq, d), tdt),
                                              ctx.inputs.take((b, kv, skv, d), tdt),
                                              ctx.inputs.take((b, kv, skv, d), tdt)))
            nb = len(bufs)
            grouped = kv != h
            if grouped and gqa_native:
                variant = "sdpa_gqa"

                def fn(i: int, bufs: list = bufs, nb: int = nb, causal: bool = causal) -> object:
                    q, kk, vv = bufs[i % nb]
                    return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=True)
            elif grouped:
                variant = "sdpa_expand_kv"
                rep = h // kv

                def fn(i: int, bufs: list = bufs, nb: int = nb, causal: bool = causal, rep: int = rep) -> object:
                    q, kk, vv = bufs[i % nb]
                    return F.scaled_dot_product_attention(q, kk.repeat_interleave(rep, 1), vv.repeat_interleave(rep, 1),
                                                          is_causal=causal)
            else:
                variant = "sdpa"

                def fn(i: int, bufs: list = bufs, nb: int = nb, causal: bool = causal) -> object:
                    q, kk, vv = bufs[i % nb]
                    return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal)

            yield from _timed_rows(ctx, "attention", f"{phase}:{variant}", dt, _threads_cell(ctx), fn, nb,
                                   attention_flops(b, h, sq, skv, d, causal), ws,
                                   batch=b, heads=h, kv_heads=kv, head_dim=d, seq_len=sq, context_len=skv, causal=causal)
            del bufs


# ----------------------------------------------------------------------------------------------
# Memory copy


def bench_memcopy(ctx: KernelContext, shapes: ShapeSet, dtypes: Sequence[str]) -> Iterator[dict]:
    """dst.copy_(src) of ``size_bytes``; bytes = 2*size_bytes (read + write). On CUDA also host<->device
    copies from/to pinned host memory (variants h2d, d2h); their link bandwidth is size_bytes/time."""
    del dtypes  # copies are measured on raw bytes (uint8 buffers)
    variants = ["copy"] + (["h2d", "d2h"] if ctx.device.type == "cuda" else [])
    for variant in variants:
        for size in shapes.copy_bytes:
            if variant == "copy":
                bufs = _buffers(ctx, 2 * size, lambda: (ctx.inputs.take((size,), torch.uint8),
                                                        _output((size,), torch.uint8, ctx.device)))
            elif variant == "h2d":
                bufs = [(torch.ones(size, dtype=torch.uint8).pin_memory(), torch.empty(size, dtype=torch.uint8, device=ctx.device))]
            else:
                bufs = [(torch.ones(size, dtype=torch.uint8, device=ctx.device), torch.empty(size, dtype=torch.uint8).pin_memory())]
            nb = len(bufs)
            nonblocking = variant != "copy"

            def fn(i: int, bufs: list = bufs, nb: int = nb, nonblocking: bool = nonblocking) -> object:
                src, dst = bufs[i % nb]
                return dst.copy_(src, non_blocking=nonblocking)

            if variant == "copy":
                yield from _timed_rows(ctx, "memcopy", variant, "u8", _threads_cell(ctx), fn, nb, 0, 2 * size,
                                       size_bytes=size)
            else:  # host<->device copies: bandwidth-bound, timed eagerly
                yield _row(ctx, "memcopy", variant, "u8", _threads_cell(ctx), fn, nb, 0, 2 * size, size_bytes=size)
            del bufs


# ----------------------------------------------------------------------------------------------
# Routing glue of an eager MoE layer

GLUE_HIDDEN, GLUE_FFN = 64, 32
"""Hidden and expert width of the glue benchmark: small, so that what is timed is per-op dispatch."""


def bench_routing_glue(ctx: KernelContext, shapes: ShapeSet, dtypes: Sequence[str]) -> Iterator[dict]:
    """The small ops of an eager MoE layer around its GEMMs (validation/eager_moe.py, the testbed's code):
    top-k and softmax of given router logits; with ``ranks`` > 0 the partition of tokens by destination
    rank, the split-size bookkeeping and the final scatter-add back to tokens (the collectives themselves
    are not run: the sent rows are processed locally); then the loop over ``experts`` local experts
    (row selection, gather, SiLU*mul, gate, index_add) with the GEMMs replaced by a zero-filled output of
    their shape. ``ranks`` = 0 is the FoE form (local experts only, top-1). Hidden 64, width 32: the time is
    framework dispatch, not data. FLOPs and bytes 0; ``experts_active`` = local experts that got rows.

    Two rows per shape: variant ``eager`` times calls back to back (code, allocator and metadata stay in
    cache); variant ``eager_cold`` (when ``ctx.flush_bytes`` > 0) times one call after a streaming read
    of ``flush_bytes``, the state a forward pass leaves between two layers' routing (their weights stream
    through the caches in between). CPU only (on a GPU these are kernel launches, not measured here)."""
    if ctx.device.type != "cpu":
        return
    from validation import eager_moe

    del dtypes  # fp32: the dispatch cost does not depend on the element type
    gen = _gen(ctx.device, 3)
    H, f = GLUE_HIDDEN, GLUE_FFN
    for (E, R, T) in shapes.glue:
        k = 1 if R == 0 else min(2, E * R)
        logits = _rand((T, E * max(R, 1)), torch.float32, ctx.device, gen)
        x = _rand((T, H), torch.float32, ctx.device, gen)
        wgu = [_rand((H, 2 * f), torch.float32, ctx.device, gen) for _ in range(E)]
        wd = [_rand((f, H), torch.float32, ctx.device, gen) for _ in range(E)]
        gi0, gates0 = eager_moe.route(logits, k)
        # rows sent to rank r carry r's local expert ids; processing every sent row here keeps the op count
        ids0 = gi0 if R == 0 else eager_moe.partition(x, gi0, gates0, R, E)[0][:, H:H + k].long()
        active = int((torch.bincount(ids0[ids0 >= 0], minlength=E) > 0).sum())

        def fn(i: int, E=E, R=R, T=T, k=k, logits=logits, x=x, wgu=wgu, wd=wd) -> object:
            gi, gates = eager_moe.route(logits, k)
            if R == 0:
                return eager_moe.experts(x, gi, gates, wgu, wd, mm=eager_moe.gemm_stand_in)
            send, counts, tok_index = eager_moe.partition(x, gi, gates, R, E)
            cin = torch.tensor(counts, dtype=torch.int64)
            recv = torch.empty(int(cin.sum()), send.shape[1])
            recv.copy_(send)
            ids = recv[:, H:H + k].long()
            y = eager_moe.experts(recv[:, :H].contiguous(), ids, recv[:, H + k:], wgu, wd, mm=eager_moe.gemm_stand_in)
            back = torch.empty(send.shape[0], H)
            back.copy_(y)
            return eager_moe.unpermute(T, back, tok_index)

        cols = dict(k=H, n=f, experts=E, ranks=R, tokens_total=T, experts_active=active)
        yield _row(ctx, "routing_glue", "eager", "fp32", _threads_cell(ctx), fn, 1, 0, 0, **cols)
        if ctx.flush_bytes > 0:
            yield _row(ctx, "routing_glue", "eager_cold", "fp32", _threads_cell(ctx), fn, 1, 0, 0,
                       flush=_sink(ctx), flush_bytes=ctx.flush_bytes, **cols)


KERNEL_BENCHES: dict[str, Callable[[KernelContext, ShapeSet, Sequence[str]], Iterator[dict]]] = {
    "gemm": bench_gemm,
    "grouped_ffn": bench_grouped_ffn,
    "attention": bench_attention,
    "memcopy": bench_memcopy,
    "routing_glue": bench_routing_glue,
}


def run_kernels(ctx: KernelContext, op: str, shapes: ShapeSet, dtypes: Sequence[str]) -> list[dict]:
    """Run one kernel benchmark and log a line per point."""
    rows = []
    for row in KERNEL_BENCHES[op](ctx, shapes, dtypes):
        rate = ""
        if row["flops"]:
            rate = f"{row['flops'] / row['median_s'] / 1e9:.1f} GFLOP/s"
        elif row["bytes"]:
            rate = f"{row['bytes'] / row['median_s'] / 1e9:.2f} GB/s"
        log(f"  {op} {row['variant']} {row['dtype']} thr={row['threads']} "
            f"{_shape_label(row)} median={row['median_s'] * 1e6:.1f}us {rate}"
            + (f" cpu_median={row['cpu_median_s'] * 1e6:.1f}us" if row.get("cpu_median_s") else ""))
        rows.append(row)
    return rows


def _shape_label(row: dict) -> str:
    keys = ("m", "n", "k", "batch", "heads", "kv_heads", "head_dim", "seq_len", "context_len",
            "experts", "ranks", "routing", "tokens_total", "size_bytes")
    return " ".join(f"{k}={row[k]}" for k in keys if row.get(k) is not None)
