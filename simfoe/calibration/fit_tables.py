"""Fit a GPU profile's kernel families from per-op measurement tables in AIConfigurator's layout
(``DIR/<op>/<framework>/<version>/*.parquet`` with ``collection_meta.yaml``; ../shared/data/aiconfigurator/
README.md), on top of a published profile (datasheet peaks, HBM, fabric: kept with their provenance).

Each table row becomes the measurement record the torch harness writes (simfoe.calibration.fit_profile:
``op``, ``variant``, ``dtype``, shape columns, ``t_s`` in seconds; table latencies are milliseconds) and
the same families are fitted through the same functions (simfoe/costs/kernels.py, soft-L1 on log ratio):

* ``gemm`` on the bf16 GEMMs, ``gemm_fp8`` on the per-tensor fp8 GEMMs (the fp8 simfoe prices); the
  block-scaled fp8 GEMMs (DeepGEMM) are judged against ``gemm_fp8``, never fitted;
* ``grouped_gemm`` / ``grouped_gemm_fp8`` / ``grouped_gemm_fp4`` on the fused MoE kernel (bf16 / fp8
  block-scaled / nvfp4, balanced routing: every local expert gets T x top-k / E rows; DeepSeek-V3's group-limited
  shape: the rows its routing of the collector's tied logits gives, :func:`grouped_loads`), priced as
  simfoe.forward.plan prices experts, plus the kernel's walk over all T x top-k routed slots (``slot_bytes``,
  ``slot_inter_bytes``, simfoe.costs.kernels.moe_slots: the tables hand every token to the kernel whatever the EP);
* ``attention_prefill`` / ``attention_decode`` on the full-attention (no window) bf16 rows of the
  engine's Hopper kernel (FlashAttention-3), ``attention_prefill_mla`` / ``attention_decode_mla`` on the
  MLA rows with DeepSeek-V3's dimensions, as simfoe.forward.plan prices MLA.

Hold-out by shape, decided in code (:func:`held_out`): a row is held out when the CRC-32 of its shape key
(GEMM: n, k; MoE: hidden, inter, experts, top-k, TP, EP; attention: heads, KV heads, head dim; MLA: heads,
batch) is divisible by :data:`HOLD_OUT_EVERY`. Fits see only the other rows (at most :data:`FIT_ROWS`
of them, a seeded draw, so the fit runs in seconds); errors are reported on all train and held-out rows.
"""
from __future__ import annotations

import datetime as _dt
import functools
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simfoe.errors import SpecError
from simfoe.paths import repo_relative
from simfoe.specs.precision import number_format

FRAMEWORKS = ("sglang", "vllm", "trtllm")
HOLD_OUT_EVERY = 4
"""A shape is held out when crc32(shape key) % HOLD_OUT_EVERY == 0 (about a quarter of the shapes)."""
FIT_ROWS = 300
"""Most training rows one family's fit evaluates (a seeded draw of its training rows, see _train)."""
FIT_SEED = 0
GROUPED_EFF_MIN = 0.005
"""Lowest grouped (fused MoE) efficiency a fit may reach (see _spec_for)."""
MS = 1e-3
"""Table latencies are milliseconds (AIConfigurator's collectors; README.md of the data)."""
MLA_DIMS = {"qk_nope": 128, "qk_rope": 64, "kv_lora_rank": 512}
"""DeepSeek-V3's MLA dimensions (its config.json), the model the MLA tables were collected for."""
GEMM_DTYPES = {"bfloat16": "bf16", "fp8": "fp8", "fp8_block": "fp8", "nvfp4": "nvfp4"}
MOE_DTYPES = {"bfloat16": "bf16", "fp8_block": "fp8", "nvfp4": "nvfp4"}
"""Table dtype -> the activation (= weight) format a record is priced in (simfoe.specs.precision.FORMATS);
nvfp4 is fp4 x fp4 (w4a4: FlashInfer's CuTe-DSL GEMM and TRT-LLM fused MoE quantize the activations)."""
KERNEL_SOURCES = {
    "sglang": {"moe": ("sglang_fused_moe_triton",), "attention": ("fa3",)},
    "vllm": {"gemm": ("torch.nn.functional.linear", "CutlassFP8ScaledMMLinearKernel", "DeepGemmFp8BlockScaledMMKernel"),
             "moe": ("vllm_unquantizedfusedmoe_triton_tritonexperts", "vllm_fp8moe_triton_tritonexperts"),
             "attention": ("vllm_flash_attn_fa3",)},
    "trtllm": {"moe": ("moe_torch_flow_cutlass",)}}
"""Per framework and op, the kernels fitted where a table holds several for one dtype (the engine's default
on Hopper: Triton fused MoE, FlashAttention-3, DeepGEMM block-scaled fp8); rows of other kernels are dropped."""
BLACKWELL_KERNEL_SOURCES = {
    "sglang": {"moe": ("sglang_flashinfer_trtllm_moe",), "attention": ("trtllm_mha",)}}
"""As KERNEL_SOURCES for Blackwell tables (``device`` B200 / GB200): FA3 is Hopper-only; SGLang's SM100 kernels are
TRT-LLM's attention (``--attention-backend trtllm_mha``) and FlashInfer's TRT-LLM fused MoE, the one MoE kernel the
tables measure at bf16, fp8 block-scaled and nvfp4 alike (the Triton kernel has no fp4)."""
BLACKWELL_DEVICES = ("B200", "GB200")


@dataclass(frozen=True)
class TableSet:
    """One system's tables for one framework: root folder, framework, its version per op (folder name)."""

    root: Path
    framework: str
    versions: dict
    blackwell: bool = False

    def path(self, op: str) -> Path:
        return self.root / op / self.framework / self.versions[op]

    def source(self, op: str, table: str) -> str:
        return repo_relative(self.path(op) / table, beside=True)


def find_tables(root: str | Path, framework: str) -> TableSet:
    """The tables under ``root`` for ``framework`` (latest version folder per op); exit-2 errors name the flag."""
    root = Path(root)
    if framework not in FRAMEWORKS:
        raise SpecError("--framework", framework, "one of " + ", ".join(FRAMEWORKS))
    if not root.is_dir():
        raise SpecError("--from-tables", str(root), "an existing folder of per-op tables (gemm/, moe/, attention/, mla/)")
    versions = {}
    for op in ("gemm", "moe", "attention", "mla"):
        d = root / op / framework
        vs = sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
        if vs:
            versions[op] = vs[-1]
    if "gemm" not in versions:
        raise SpecError("--from-tables", str(root), f"a folder with gemm/{framework}/<version>/gemm_perf.parquet "
                        "(AIConfigurator's layout, e.g. ../shared/data/aiconfigurator/h100_sxm)")
    return TableSet(root, framework, versions, _is_blackwell(root / "gemm" / framework / versions["gemm"]))


def _is_blackwell(gemm_dir: Path) -> bool:
    """Whether the GEMM table's ``device`` names a Blackwell GPU (B200, GB200); a table without one: no."""
    import pandas as pd
    import pyarrow.parquet as pq

    path = gemm_dir / "gemm_perf.parquet"
    if not path.is_file() or "device" not in pq.read_schema(path).names:
        return False
    dev = pd.read_parquet(path, columns=["device"]).device.iloc[0]
    return any(d in str(dev).split() for d in BLACKWELL_DEVICES)


def shape_key_hash(*parts) -> int:
    """CRC-32 of a shape key (stable across runs and machines, unlike Python's hash)."""
    return zlib.crc32(":".join(str(int(p)) for p in parts).encode())


def held_out(keys) -> np.ndarray:
    """Boolean mask: rows whose shape-key hash is divisible by HOLD_OUT_EVERY."""
    return np.array([h % HOLD_OUT_EVERY == 0 for h in keys], dtype=bool)


def _read(ts: TableSet, op: str, table: str):
    import pandas as pd

    if op not in ts.versions:
        return None
    p = ts.path(op) / table
    return pd.read_parquet(p) if p.is_file() else None


def _kernels(ts: TableSet, op: str, d):
    """``d`` without the rows of kernels :data:`KERNEL_SOURCES` leaves out for this framework and op."""
    table = BLACKWELL_KERNEL_SOURCES if ts.blackwell else KERNEL_SOURCES
    keep = table.get(ts.framework, {}).get(op)
    return d if keep is None else d[d.kernel_source.isin(list(keep))]


def _records(rows: dict, n: int, t_ms, keys, table: str):
    """A harness-style record frame: shape columns ``rows`` (scalars broadcast), ``t_s``, ``table``, ``held``."""
    import pandas as pd

    df = pd.DataFrame({k: (v if np.ndim(v) else [v] * n) for k, v in rows.items()})
    df["t_s"] = np.asarray(t_ms, float) * MS
    df["table"] = table
    df["held"] = held_out(keys)
    return df


def gemm_records(ts: TableSet):
    """GEMM rows: op gemm, dtype bf16 / fp8 (variant ``per_tensor`` or ``block``) / nvfp4."""
    g = _kernels(ts, "gemm", _read(ts, "gemm", "gemm_perf.parquet"))
    g = g[g.gemm_dtype.isin(list(GEMM_DTYPES))]
    keys = [shape_key_hash(n, k) for n, k in zip(g.n, g.k)]
    var = np.select([g.gemm_dtype == "fp8_block", g.gemm_dtype == "fp8", g.gemm_dtype == "nvfp4"],
                    ["block", "per_tensor", "nvfp4"], "dense")
    return _records({"op": "gemm", "variant": var, "dtype": g.gemm_dtype.map(GEMM_DTYPES).to_numpy(),
                     "m": g.m.to_numpy(), "n": g.n.to_numpy(), "k": g.k.to_numpy()}, len(g), g.latency, keys,
                    ts.source("gemm", "gemm_perf.parquet"))


def balanced_loads(tokens: int, topk: int, experts: int, ep: int) -> str:
    """Per-local-expert rows of a balanced routing (``;``-joined, as the harness's ``tokens_per_expert``):
    T x top-k rows spread evenly over all experts; this GPU holds experts / EP of them and gets its share of
    the rows (rounded, at least one), as whole rows: the first (rows mod local experts) take one more."""
    local = experts // ep
    rows = max(1, round(tokens * topk * local / experts))
    base, extra = divmod(rows, local)
    return ";".join(str(base + (i < extra)) for i in range(local))


GROUPED_ROUTING = {(7168, 2048, 256, 8): (8, 4)}
"""(hidden, inter, experts, top-k) of the table shapes whose model routes group-limited -> (groups, groups kept):
DeepSeek-V3 / R1 (config.json n_group 8, topk_group 4). Their rows are priced with :func:`grouped_loads`."""


def grouped_loads(tokens: int, topk: int, experts: int, ep: int, groups: int, keep: int) -> str:
    """Rank 0's per-local-expert rows (``;``-joined) when the collector's balanced logits (token i selects experts
    i + j * ceil(E / top-k) mod E, AIConfigurator collector/helper.py ``balanced_logits``) go through group-limited
    top-k: a group scores the sum of its top-2 experts, the ``keep`` best groups are kept, then the top-k experts in
    them. The logits tie (every group holds one selected expert), and ties go to the lower index: each token takes
    its selected experts in groups 0..keep-1 plus the lowest-numbered others, so experts 0-3 get every token (B200
    fp8 at EP 64, experts 0-3 local: 5x the balanced price at 16384 tokens, as measured)."""
    rows = _grouped_rows(tokens, topk, experts, groups, keep)[: experts // ep]
    return ";".join(str(int(x)) for x in rows)


@functools.lru_cache(maxsize=64)
def _grouped_rows(tokens: int, topk: int, experts: int, groups: int, keep: int) -> tuple:
    """Rows per expert of :func:`grouped_loads` over all experts (cached: one table repeats it per TP and EP)."""
    t, j = np.arange(tokens)[:, None], np.arange(topk)[None, :]
    stride = math.ceil(experts / topk)
    sel = (t + j * stride) % experts if tokens >= stride else np.floor(t * stride / tokens + j * stride).astype(int) % experts
    score = np.zeros((tokens, experts))
    np.add.at(score, (np.repeat(np.arange(tokens), topk), sel.ravel()), 1.0)
    per = experts // groups
    top2 = np.sort(score.reshape(tokens, groups, per), axis=2)[:, :, -2:].sum(axis=2)
    best = np.argsort(-(top2 * experts - np.arange(groups)), axis=1, kind="stable")[:, :keep]
    kept = np.zeros((tokens, groups), bool)
    np.put_along_axis(kept, best, True, axis=1)
    score = np.where(np.repeat(kept, per, axis=1), score, -1.0)
    top = np.argsort(-(score * experts * 2 - np.arange(experts)), axis=1, kind="stable")[:, :topk]
    return tuple(np.bincount(top.ravel(), minlength=experts))


NON_GATED = frozenset({(2688, 1856, 128, 6), (4096, 2688, 512, 22), (8192, 5120, 512, 22), (1024, 2688, 512, 22),
                       (2048, 5120, 512, 22)})
"""(hidden, inter, experts, top-k) of the table shapes whose experts are not gated (two matrices, relu^2): Nemotron-3
Nano, Super and Ultra (AIConfigurator collector/cases/models/NemotronHForCausalLM_cases.yaml; its collect_moe.py runs
``_NON_GATED_MOE_MODEL_PATTERNS`` with the Relu2 activation) and Super's and Ultra's latent-MoE shapes (hidden = the
latent width, 1024 / 2048, same 512 experts, top-22). Measured: with one weight read per call (EP 1, 32-160 tokens:
every expert hit) these rows run 1/1.45 of the gated price on B200, the 3/2 weight bytes a third matrix would add."""


def _loads(tokens, topk, experts, ep, hidden, inter) -> str:
    g = GROUPED_ROUTING.get((int(hidden), int(inter), int(experts), int(topk)))
    return balanced_loads(tokens, topk, experts, ep) if g is None else grouped_loads(tokens, topk, experts, ep, *g)


def moe_records(ts: TableSet):
    """Fused MoE rows (balanced routing, the framework's fused kernel): op grouped_ffn, n = inter / TP, k = hidden."""
    d = _read(ts, "moe", "moe_perf.parquet")
    if d is None:
        return None
    d = _kernels(ts, "moe", d)
    d = d[(d.distribution == "balanced") & d.moe_dtype.isin(list(MOE_DTYPES))]
    d = d[(d.num_experts % d.moe_ep_size == 0) & (d.inter_size % d.moe_tp_size == 0)]
    cols = (d.num_tokens, d.topk, d.num_experts, d.moe_ep_size, d.hidden_size, d.inter_size)
    keys = [shape_key_hash(*t) for t in zip(d.hidden_size, d.inter_size, d.num_experts, d.topk, d.moe_tp_size,
                                             d.moe_ep_size)]
    return _records({"op": "grouped_ffn", "variant": "fused_moe", "dtype": d.moe_dtype.map(MOE_DTYPES).to_numpy(),
                     "n": (d.inter_size // d.moe_tp_size).to_numpy(), "k": d.hidden_size.to_numpy(),
                     "tokens_per_expert": [_loads(*t) for t in zip(*cols)],
                     "slots": (d.num_tokens * d.topk).to_numpy(),
                     "gated": [int(s not in NON_GATED) for s in zip(d.hidden_size, d.inter_size, d.num_experts, d.topk)]},
                    len(d), d.latency, keys,
                    ts.source("moe", "moe_perf.parquet"))


def attention_records(ts: TableSet):
    """Full-attention bf16 rows of the engine's kernel: context (causal, q = kv = isl) and generation
    (one token per sequence reading isl + step cached tokens)."""
    import pandas as pd

    out = []
    src = "fa3" if ts.framework != "trtllm" else "trtllm"  # the variant label; rows filtered by _kernels
    for table, phase in (("context_attention_perf.parquet", "prefill"), ("generation_attention_perf.parquet", "decode")):
        d = _read(ts, "attention", table)
        if d is None:
            continue
        d = _kernels(ts, "attention", d)
        d = d[(d.window_size == 0) & (d.kv_cache_dtype == "bfloat16") & (d.attn_dtype == "bfloat16")]
        ctx = d.isl if phase == "prefill" else d.isl + d.step
        keys = [shape_key_hash(*t) for t in zip(d.num_heads, d.num_key_value_heads, d.head_dim)]
        out.append(_records({"op": "attention", "variant": f"{phase}:{src}", "dtype": "bf16",
                             "batch": d.batch_size.to_numpy(), "seq_len": (d.isl if phase == "prefill" else 1 + 0 * d.isl).to_numpy(),
                             "context_len": ctx.to_numpy(), "heads": d.num_heads.to_numpy(),
                             "kv_heads": d.num_key_value_heads.to_numpy(), "head_dim": d.head_dim.to_numpy(),
                             "causal": 1}, len(d), d.latency, keys, ts.source("attention", table)))
    return pd.concat(out, ignore_index=True) if out else None


def mla_records(ts: TableSet):
    """MLA rows (bf16 KV cache) with DeepSeek-V3's dimensions, as simfoe.forward.plan prices MLA: context as
    causal attention with per-head dim nope + rope and as many KV heads as query heads; generation as the
    weight-absorbed latent read (one KV head, dim (kv_lora_rank + rope) / 2 for the K and V halves)."""
    import pandas as pd

    out = []
    d_pre = MLA_DIMS["qk_nope"] + MLA_DIMS["qk_rope"]
    d_dec = (MLA_DIMS["kv_lora_rank"] + MLA_DIMS["qk_rope"]) // 2
    for table, phase in (("context_mla_perf.parquet", "prefill"), ("generation_mla_perf.parquet", "decode")):
        d = _read(ts, "mla", table)
        if d is None:
            continue
        d = d[(d.kv_cache_dtype == "bfloat16") & (d.mla_dtype == "bfloat16")]
        pre = phase == "prefill"
        keys = [shape_key_hash(*t) for t in zip(d.num_heads, d.batch_size)]
        out.append(_records({"op": "attention", "variant": f"{phase}:mla", "dtype": "bf16",
                             "batch": d.batch_size.to_numpy(), "seq_len": (d.isl if pre else 1 + 0 * d.isl).to_numpy(),
                             "context_len": (d.isl if pre else d.isl + d.step).to_numpy(),
                             "heads": d.num_heads.to_numpy(), "kv_heads": d.num_heads.to_numpy() if pre else 1,
                             "head_dim": d_pre if pre else d_dec, "causal": 1}, len(d), d.latency, keys,
                            ts.source("mla", table)))
    return pd.concat(out, ignore_index=True) if out else None


def _attn_spec(family: str, tiled: bool = False) -> dict:
    """Fit spec of an attention ``family`` (start, low, high, log scale), as fit_profile.fit_copy_attention; ``tiled``
    (a part with a :data:`TILE_GRID`): the prefill's softmax pad and per-wave cost too (attention, not MLA: the shortest
    wave), and MLA decode's re-read share of another head group's KV and cost per (sequence x query head)."""
    if family.startswith("attention_prefill"):
        spec = {"eff_max": (0.5, 0.01, 1.0, False), "mem_eff": (0.8, 0.01, 1.0, False),
                "launch_s": (5e-6, 1e-8, 1e-3, True), "smooth_p": (4.0, 1.0, 50.0, False)}
        if tiled:
            spec.update({"head_dim_pad": (16.0, 0.01, 1e3, True), "per_wave_s": (1e-6, 1e-10, 1e-4, True)})
        if tiled and not family.endswith("_mla"):  # MLA context: no gain held out (docs/calibration-kernels.md)
            spec["min_wave_s"] = (2e-6, 1e-8, 1e-4, True)
        return spec
    spec = {"mem_eff": (0.8, 0.01, 1.0, False), "mem_floor_bytes": (1e4, 1.0, 1e9, True),
            "launch_s": (5e-6, 1e-8, 1e-3, True), "eff_max": (0.5, 0.01, 1.0, False),
            "smooth_p": (4.0, 1.0, 50.0, False), "per_seq_head_s": (1e-9, 1e-13, 1e-5, True)}
    if tiled and family.endswith("_mla"):
        spec.update({"reread": (0.5, 0.0, 1.0, False), "per_seq_qhead_s": (1e-10, 1e-14, 1e-6, True)})
    return spec


def _decode_grid(mla: bool = False) -> tuple:
    """Decode kernel shapes tried: KV tile x split-KV limit x split granularity (none, or one KV tile per split); MLA:
    with the kernel's query-head groups (simfoe.costs.kernels.MLA_DECODE_HEAD_TILES)."""
    extra = {"head_groups": 1} if mla else {}
    return tuple({"kv_tile": t, "max_splits": m, "split_tokens": st, **extra}
                 for t in (64, 128) for m in (16, 32, 64) for st in (0, t))


def _prefill_grid() -> tuple:
    """Context kernel shapes tried: tile x the O rescale's shared-memory stage (elements, simfoe.costs.kernels._score_cost;
    0: no rescale term)."""
    return tuple({"tile": t, "rescale_elems": e} for t in (64, 128) for e in (0, 512, 1024, 2048, 4096))


TILE_GRID = {"prefill": _prefill_grid(), "prefill_mla": tuple({"tile": t} for t in (64, 128)),
             "decode": _decode_grid(), "decode_mla": _decode_grid(mla=True), "gemm_narrow": ({"m_tile": 128},)}
"""The kernel shapes a Blackwell attention fit tries (simfoe/costs/kernels.py, attention families): the TRT-LLM kernels'
tiles are powers of two and their code paths switches, so each is a choice, not a continuous fit; the one with the
lowest training MAPE is kept (the report's ``kernels_fit`` and the profile show it). MLA context has one head dim, so
the head-dim term (``rescale_elems``) is not identifiable there and not tried. The fp8 and nvfp4 GEMMs compute whole
128-row tiles (``m_tile``: SM100's tcgen05 MMA is 128 rows per CTA; held out, m = 2^j + 1 ran up to 27% over m = 2^j at
fp8, where the smooth form priced them alike); bf16 is left smooth (B200 held out 8.79 -> 8.98% with it)."""


@dataclass(frozen=True)
class Part:
    """One fitted family and the records it is fitted on (``fit``) or only judged on (``fit=False``); ``grid``:
    the discrete kernel shapes to try (:data:`TILE_GRID`), () for none."""

    label: str
    key: str
    family: str
    rows: object
    fit: bool = True
    grid: tuple = ()


def _train(rows):
    """The training rows one fit evaluates: at most FIT_ROWS of the rows not held out, drawn without replacement
    by a generator seeded with FIT_SEED (every j-th row aliased with the tables' sweep order: on B200's nvfp4
    fused-MoE table j = 27 = the token counts swept, so every row drawn had one token count)."""
    tr = _train_all(rows)
    if len(tr) <= FIT_ROWS:
        return tr
    pick = np.random.default_rng(FIT_SEED).choice(len(tr), FIT_ROWS, replace=False)
    return tr.iloc[np.sort(pick)]


def _train_all(rows):
    """Every training row (not held out) of a part."""
    return rows[~rows.held.to_numpy()]


def _spec_for(family: str, kern: dict, tiled: bool = False) -> dict:
    """The fit spec of ``family``: GEMM and grouped forms from ``kern``'s fitted start; attention families'
    tiled form with ``tiled`` (a TILE_GRID fit)."""
    from simfoe.calibration.fit_profile import _gemm_spec

    if family in ("gemm", "gemm_fp8", "gemm_fp4"):
        return _gemm_spec(kern.get("gemm", {}))
    if family.startswith("grouped_gemm"):
        spec = _gemm_spec(kern.get("grouped_gemm") or kern.get("gemm", {}), pad_start=1.0)
        # fused MoE kernels reach a few % of a Blackwell fp8/fp4 peak (B200 fp8 block-scaled, 7168 x 2048 experts,
        # 16k tokens: 1.4 TFLOP in 8.0 ms = 4% of 4.5 PFLOP/s): the dense floor of 0.05 would cut the fit off
        spec["eff_max"] = (spec["eff_max"][0], GROUPED_EFF_MIN, *spec["eff_max"][2:])
        # the fused kernel walks every token x top-k slot whatever the EP (permute, quantize, finalize): on B200
        # the bf16 kernel at 1 local expert of 128 (EP 128) still costs ~0.3 ps per slot x hidden element (~2 bytes
        # at HBM speed); fp8 block-scaled adds a cost per slot x intermediate column (TP 2 halves it)
        spec["slot_bytes"] = (2.0, 1e-3, 1e3, True)
        spec["slot_inter_bytes"] = (1.0, 1e-3, 1e3, True)
        return spec
    return _attn_spec(family, tiled)


def fit_parts(hw0, kern: dict, parts: list[Part]) -> dict:
    """Fit each fitted part's family in order (in place in ``kern``)."""
    from simfoe.calibration.fit_profile import _fit_family

    for p in parts:
        if not p.fit or p.rows is None or p.rows.empty:
            continue
        tr = _train(p.rows)
        if p.grid:
            kern[p.family] = _fit_grid(hw0, kern, p, tr)
            continue
        kern[p.family] = _fit_family(hw0, kern, p.family, _spec_for(p.family, kern), tr, tr.t_s.to_numpy(float))
    return kern


def _fit_grid(hw0, kern: dict, part: Part, tr) -> dict:
    """The family fitted at each of ``part.grid``'s kernel shapes (held fixed); the one with the lowest MAPE on
    the training draw ``tr``."""
    from simfoe.calibration.fit_profile import _fit_family, _with_kernels

    spec = _spec_for(part.family, kern, tiled=True)
    best, best_err = None, math.inf
    for shape in part.grid:
        trial = {**kern, part.family: {**kern.get(part.family, {}), **shape}}
        fam = {**shape, **_fit_family(hw0, trial, part.family, spec, tr, tr.t_s.to_numpy(float))}
        err = float(np.mean(np.abs(predict_rows(_with_kernels(hw0, {**kern, part.family: fam}), tr) / tr.t_s - 1.0)))
        if err < best_err:
            best, best_err = fam, err
    return best


def predict_rows(hw, rows) -> np.ndarray:
    """``hw``'s predictions (s) for table records, through simfoe.calibration.fit_profile.predict_kernel_row."""
    from simfoe.calibration.fit_profile import predict_kernel_row

    return np.array([predict_kernel_row(hw, r) for r in rows.itertuples(index=False)], float)


def split_rows(part: Part):
    """(("fitted", training rows), ("held_out", held-out rows)) of a part."""
    held = part.rows.held.to_numpy()
    return (("fitted", part.rows[~held]), ("held_out", part.rows[held]))


CORRECTION_AXES = {"log2_m": (0.0, 15.0, 1.0), "log2_n": (5.0, 17.0, 2.0), "log2_k": (5.0, 17.0, 2.0)}
"""GEMM correction grid (simfoe.specs.hardware.GemmCorrection): (first, last, step) in log2 of m, n, k: every
octave of m (the tables' m runs 1..32768), every other octave of n and k (32..65536): 16 x 7 x 7 values.
Finer n, k steps (1.5 octaves) changed the held-out MAPE by under 0.2 points."""
CORRECTION_DAMP = 0.05
"""Ridge weight pulling grid values towards 0 (no correction) where few training rows constrain them."""
CORRECTION_L1 = (8, 0.01)
"""(rounds, residual floor) of the Blackwell grids' reweighted fit: each round refits with rows weighted by
1 / max(|ln ratio|, floor), so the grid approaches least absolute log error (a median fit, as MAPE judges) instead of
least squares, which outlying rows pull: B200 held out bf16 / fp8 / nvfp4 8.79 / 8.33 / 9.03 -> 8.39 / 7.24 / 8.05%.
h100-sxm-tables keeps its least-squares grid (0 rounds)."""


def _trilinear(axes: list, pts: np.ndarray):
    """Sparse matrix (rows x grid values) of trilinear weights of ``pts`` (rows x 3, log2) on ``axes``, clamped."""
    from scipy.sparse import coo_matrix

    shape = [len(a) for a in axes]
    i0, fr = [], []
    for d, a in enumerate(axes):
        x = np.clip((pts[:, d] - a[0]) / (a[1] - a[0]), 0.0, len(a) - 1 - 1e-9)
        i0.append(np.floor(x).astype(int))
        fr.append(x - np.floor(x))
    rows, cols, vals = [], [], []
    idx = np.arange(len(pts))
    for corner in np.ndindex(2, 2, 2):
        w = np.prod([fr[d] if c else 1.0 - fr[d] for d, c in enumerate(corner)], axis=0)
        flat = ((i0[0] + corner[0]) * shape[1] + (i0[1] + corner[1])) * shape[2] + (i0[2] + corner[2])
        rows.append(idx)
        cols.append(flat)
        vals.append(w)
    n = int(np.prod(shape))
    return coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(pts), n)).tocsr()


def fit_gemm_correction(hw, rows, l1_rounds: int = 0) -> dict:
    """GemmCorrection dict: ln(measured / ``hw``'s smooth-form prediction) of the training GEMM ``rows`` fitted
    by damped least squares under trilinear interpolation on :data:`CORRECTION_AXES`, then ``l1_rounds`` rounds
    reweighted towards least absolute error (:data:`CORRECTION_L1`)."""
    from scipy.sparse.linalg import lsqr

    from simfoe.calibration.fit_profile import _round

    axes = [np.arange(lo, hi + step / 2, step) for lo, hi, step in CORRECTION_AXES.values()]
    pts = np.log2(rows[["m", "n", "k"]].to_numpy(float))
    y = np.log(rows.t_s.to_numpy(float) / predict_rows(hw, rows))
    a = _trilinear(axes, pts)
    sol = lsqr(a, y, damp=CORRECTION_DAMP)[0]
    for _ in range(l1_rounds):
        w = 1.0 / np.sqrt(np.maximum(np.abs(y - a @ sol), CORRECTION_L1[1]))  # squared: 1 / |residual|
        sol = lsqr(a.multiply(w[:, None]).tocsr(), y * w, damp=CORRECTION_DAMP)[0]
    return {**{key: [float(v) for v in a] for key, a in zip(CORRECTION_AXES, axes)},
            "log_ratio": [_round(float(v)) for v in sol]}


def _errs(hw, rows) -> dict:
    """{"rows", "mape_pct", "median_ape_pct", "within_25_pct", "p90_ape_pct", "max_ape_pct", "median_ratio"}
    (ratio = predicted / measured; within_25_pct: the share of rows, %, whose APE is at most 25%)."""
    if rows.empty:
        return {"rows": 0}
    ratio = predict_rows(hw, rows) / rows.t_s.to_numpy(float)
    ape = np.abs(ratio - 1.0) * 100.0
    return {"rows": int(ape.size), "mape_pct": round(float(ape.mean()), 2),
            "median_ape_pct": round(float(np.median(ape)), 2),
            "within_25_pct": round(float(np.mean(ape <= 25.0)) * 100.0, 1), "p90_ape_pct": round(float(np.percentile(ape, 90)), 2),
            "max_ape_pct": round(float(ape.max()), 2), "median_ratio": round(float(np.median(ratio)), 3)}


def part_errors(hw, parts: list[Part]) -> dict:
    """Per part: errors on its training rows (``fitted``) and on its held-out shapes (``held_out``)."""
    out = {}
    for p in parts:
        if p.rows is None or p.rows.empty:
            continue
        out[p.label] = {"key": p.key, "family": p.family, "fitted_here": p.fit, "table": str(p.rows.table.iloc[0]),
                        **{split: _errs(hw, rows) for split, rows in split_rows(p)}}
    return out


def table_parts(ts: TableSet) -> list[Part]:
    """The parts of a table set, in fit order (each family's start may come from the one before)."""
    g, m, a, mla = gemm_records(ts), moe_records(ts), attention_records(ts), mla_records(ts)

    def sel(df, **eq):
        if df is None:
            return None
        mask = np.ones(len(df), bool)
        for col, v in eq.items():
            mask &= df[col].astype(str).to_numpy() == v
        return df[mask]

    def phase(df, ph):
        return None if df is None else df[df.variant.astype(str).str.startswith(ph)]

    # the tiled attention forms on Blackwell tables only: h100-sxm-tables keeps the smooth form it was published with
    grid = TILE_GRID if ts.blackwell else {k: () for k in TILE_GRID}
    parts = [Part("gemm bf16", "gemm:bf16", "gemm", sel(g, variant="dense")),
            Part("gemm fp8 (per-tensor)", "gemm:fp8", "gemm_fp8", sel(g, variant="per_tensor"), grid=grid["gemm_narrow"]),
            Part("gemm fp8 block-scaled (judged on gemm_fp8)", "gemm:fp8_block", "gemm_fp8", sel(g, variant="block"),
                 fit=False),
            Part("gemm nvfp4", "gemm:nvfp4", "gemm_fp4", sel(g, variant="nvfp4"), grid=grid["gemm_narrow"]),
            Part("fused moe bf16", "moe:bf16", "grouped_gemm", sel(m, dtype="bf16")),
            Part("fused moe fp8 block-scaled", "moe:fp8_block", "grouped_gemm_fp8", sel(m, dtype="fp8")),
            Part("fused moe nvfp4", "moe:nvfp4", "grouped_gemm_fp4", sel(m, dtype="nvfp4")),
            Part("attention context bf16", "attention:context", "attention_prefill", phase(a, "prefill"), grid=grid["prefill"]),
            Part("attention generation bf16", "attention:generation", "attention_decode", phase(a, "decode"), grid=grid["decode"]),
            Part("mla context bf16", "mla:context", "attention_prefill_mla", phase(mla, "prefill"), grid=grid["prefill_mla"]),
            Part("mla generation bf16", "mla:generation", "attention_decode_mla", phase(mla, "decode"), grid=grid["decode_mla"])]
    return [p for p in parts if p.rows is not None and not p.rows.empty]  # tables or kernels this engine lacks


def _meta(ts: TableSet, op: str) -> dict:
    """(framework, version) from an op's collection_meta.yaml (its folder names where the file lacks them)."""
    import yaml

    p = ts.path(op) / "collection_meta.yaml"
    rt = (yaml.safe_load(p.read_text()) or {}).get("runtime", {}) if p.is_file() else {}
    return {"framework": str(rt.get("framework", ts.framework)), "version": str(rt.get("version", ts.versions[op]))}


def _provenance(ts: TableSet, base: str, prov_base: dict, report: dict) -> dict:
    """Provenance of the refitted families: table, framework, version, hold-out rule, errors; the rest the base's."""
    today = _dt.date.today().isoformat()
    prov = dict(prov_base)
    prov["kernels"] = (f"families listed below fitted to kernel tables under {report['tables']} by "
                       f"simfoe.calibration.fit_tables on {today} (functional forms of simfoe/costs/kernels.py, "
                       f"docs/calibration-kernels.md); the others are the base's ({base})")
    for label, e in report["parts"].items():
        if not e["fitted_here"]:
            continue
        op = Path(e["table"]).parent.parent.parent.name
        meta = _meta(ts, op)
        prov[f"kernels.{e['family']}"] = (
            f"fit to {e['table']} ({meta['framework']} {meta['version']}, AIConfigurator-layout table; {label}) by "
            f"simfoe.calibration.fit_tables on {today}: {e['fitted']['rows']} rows, shapes with crc32 % "
            f"{HOLD_OUT_EVERY} == 0 held out ({e['held_out']['rows']} rows); MAPE fitted {e['fitted']['mape_pct']}%, "
            f"held out {e['held_out']['mape_pct']}% (median {e['held_out']['median_ape_pct']}%)")
    return prov


def fit_tables_profile(root: str | Path, base: str, framework: str = "sglang",
                       name: str | None = None) -> tuple[dict, dict, dict]:
    """(profile dict, provenance, report) of the kernel tables under ``root`` fitted on top of ``base``."""
    import yaml

    from simfoe.specs.hardware import HardwareSpec
    from simfoe.specs.io import list_presets, load_hardware
    from simfoe.specs.profile_io import profile_path

    ts = find_tables(root, framework)
    if not base or not profile_path(base).is_file():
        raise SpecError("--base", base, "a published profile: " + ", ".join(list_presets("hardware")))
    raw = yaml.safe_load(profile_path(base).read_text())
    prov_base = dict(raw.pop("provenance", {}) or {})
    hw0 = load_hardware(base)
    parts = table_parts(ts)
    kern = fit_parts(hw0, {f: dict(v) for f, v in (raw.get("kernels") or {}).items()}, parts)
    profile = {key: v for key, v in raw.items() if key not in ("kernels", "gemm_corrections")}
    profile["name"] = name or f"{base}-tables"
    profile["description"] = f"{raw.get('description', base)}; kernels fitted from {framework} kernel tables"
    profile["kernels"] = kern
    smooth = HardwareSpec.model_validate(profile)
    rounds = CORRECTION_L1[0] if ts.blackwell else 0
    profile["gemm_corrections"] = {number_format(p.rows.dtype.iloc[0]).math: fit_gemm_correction(smooth, _train_all(p.rows), rounds)
                                   for p in parts if p.fit and p.key.startswith("gemm:")}
    hw = HardwareSpec.model_validate(profile)
    report = {"tables": repo_relative(ts.root, beside=True), "framework": framework, "versions": dict(ts.versions), "base": base,
              "profile": profile["name"], "hold_out": f"shapes with crc32(shape key) % {HOLD_OUT_EVERY} == 0",
              "parts": part_errors(hw, parts),
              "kernels_fit": {p.family: kern[p.family] for p in parts if p.fit and p.family in kern}}
    report["smooth_form_only"] = {k: {s: v[s] for s in ("fitted", "held_out")}
                                  for k, v in part_errors(smooth, [p for p in parts if p.key.startswith("gemm:")]).items()}
    prov = _provenance(ts, base, prov_base, report)
    prov.update({"name": "profile name", "description": f"{base} with kernels fitted from {report['tables']} ({framework})",
                 "gemm_corrections": (
                     f"fit by simfoe.calibration.fit_tables on {_dt.date.today().isoformat()}: ln(measured / smooth "
                     "form) of every training GEMM row (bf16: the bf16 table rows, fp8: the per-tensor fp8 rows, "
                     "fp4: the nvfp4 rows, where the tables have them) by "
                     f"damped least squares (damp {CORRECTION_DAMP}) under trilinear interpolation on the grid given"
                     f"{f', reweighted {rounds} rounds towards least absolute error' if rounds else ''}; "
                     "errors with and without it in the report and docs/calibration-kernels.md")})
    return profile, prov, report


TABLES_HEADER = ("# GPU profile: the published {base} profile with its kernel families fitted from per-op kernel\n"
                 "# tables (AIConfigurator layout). Regenerate: simfoe calibrate --from-tables {src} --base {base} --out {out}\n")


def run_fit_tables(root: str | Path, base: str, out: str | Path | None = None, framework: str = "sglang") -> dict:
    """Fit the tables under ``root`` on ``base``; write the profile to ``out`` when given. Returns the report."""
    from simfoe.calibration.fit_profile import write_profile

    name = Path(str(out)).name.removesuffix(".yaml").removesuffix(".yml") if out is not None else None
    profile, prov, report = fit_tables_profile(root, base, framework, name)
    header = TABLES_HEADER.replace("{src}", repo_relative(root, beside=True))  # ../shared/... rather than an absolute path
    report["written"] = (str(write_profile(profile, prov, out, root, header, base)) if out is not None else None)
    return report
