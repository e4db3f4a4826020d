"""Real serving benchmarks (AIConfigurator's ``silicon/<system>.csv``) replayed through ``simfoe serve``.

Data: ai-dynamo/aiconfigurator (Apache-2.0), copied to ``../shared/data/aiconfigurator/silicon/``; its
README ("What a silicon row means", "Known problems") defines the columns read here.

* :func:`load_rows` reads the CSV into :class:`SiliconRow` s and drops the same measurement listed
  twice (:data:`DEDUP_RULES`).
* :func:`scenario` maps one row to a :class:`Scenario` (hardware profile, model preset, ``--set``
  overrides for the layout and quantization, engine knobs, closed-loop workload) or a
  :class:`NotCovered` reason.
* :func:`replay` runs the scenarios (one forward model and iteration-cost table per deployment, shared
  by its rows); :func:`report` summarises predicted vs measured TTFT and TPOT (APE in %).

Units: milliseconds for TTFT and TPOT (as the CSV), tokens, requests. Nothing here is fitted to
these rows: the prediction is the raw model (profiles and presets as committed).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from simfoe.errors import SpecError

#: The H100 file, relative to the shared data folder.
H100_FILE = "aiconfigurator/silicon/h100_sxm.csv"

#: AIConfigurator ``system`` -> simfoe hardware profile (b200_sxm, gb200: fitted from their kernel tables, issue 25).
SYSTEM_PROFILES = {"h100_sxm": "h100-sxm", "h200_sxm": "h200-sxm", "b200_sxm": "b200-sxm", "gb200": "gb200-nvl72"}

#: Hugging Face ``model_path`` -> simfoe model preset (DeepSeek-R1 has DeepSeek-V3's architecture:
#: deepseek-ai/DeepSeek-R1 config.json is DeepseekV3ForCausalLM with the same dimensions).
MODEL_PRESETS = {
    "Qwen/Qwen3-32B": "qwen3-32b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "meta-llama/Llama-3.1-70B": "llama-3.1-70b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "Qwen/Qwen3-235B-A22B": "qwen3-235b-a22b",
    "Qwen/Qwen3-235B-A22B-FP8": "qwen3-235b-a22b",
    "openai/gpt-oss-120b": "gpt-oss-120b",
    "MiniMaxAI/MiniMax-M2.5": "minimax-m2.5",
    "deepseek-ai/DeepSeek-V3": "deepseek-v3",
    "deepseek-ai/DeepSeek-R1": "deepseek-v3",
}

#: gemm/moe quant mode -> simfoe ``model.dtype`` shorthand (fp8: fp8-block GEMMs, bf16 attention and KV
#: cache, simfoe.specs.precision; per-tensor fp8 is priced as fp8-block, whose scales are 4 bytes per 16384).
QUANT_DTYPES = {"": "bf16", "fp8": "fp8", "fp8_block": "fp8"}

#: 4-bit quant modes: the rows' label for a checkpoint whose routed experts ship in 4 bits. Mapped to the
#: checkpoint's own formats (the preset's ``model.precision.expert_weights``, everything else bf16), never to
#: a format the engine would have to re-quantize to: the gpt-oss-120b rows say nvfp4 (InferenceX's "fp4",
#: ids ``..._fp4_...``) but serve openai/gpt-oss-120b, whose experts are MXFP4 (config.json
#: ``quantization_config.quant_method: mxfp4``; attention, router, embeddings, LM head bf16). On H100 (no fp4
#: tensor cores) vLLM runs them as MXFP4 weights x bf16 activations (vllm/model_executor/layers/quantization/
#: mxfp4.py on SM90: triton_kernels matmul_ogs, mxfp4_w4a16), which the preset's formats price: weight-only,
#: at the bf16 peak (simfoe.costs.kernels.math_dtype). A preset without fp4 experts is not covered.
FP4_QUANTS = ("nvfp4", "mxfp4")

#: Engine knobs of every replayed deployment: tokens per iteration 8192, the engines' defaults
#: (vLLM V1 max_num_batched_tokens for the OpenAI server on H100-class GPUs, vllm/engine/arg_utils.py;
#: TensorRT-LLM max_num_tokens, tensorrt_llm/llmapi BuildConfig; SGLang chunked_prefill_size on 80 GB
#: GPUs, sglang/srt/server_args.py). max_batch is the row's own concurrency per rank (the benchmark
#: never has more in flight), so it never binds.
TOKEN_BUDGET = 8192

#: A row's ``backend`` -> the engine profile it is replayed with (simfoe/specs/engines/*.yaml: the engine's
#: scheduling order, budgets and fitted overheads, which replace TOKEN_BUDGET); other backends: none.
BACKEND_ENGINES = {"vllm": "vllm", "sglang": "sglang", "trtllm": "trtllm"}

#: The InferenceX-style runs' ``--random-range-ratio`` (data README); other rows' tool is unrecorded
#: and they are replayed with fixed lengths.
INFERENCEX_RANGE_RATIO = 0.8

#: How InferenceX's client spreads lengths with that ratio: uniform integers in [int(L r), L]
#: (SemiAnalysisAI/InferenceX utils/bench_serving/benchmark_serving.py ``sample_random_requests``: lower =
#: int(seq_len * range_ratio), upper = seq_len; its earlier fork kimbochen/bench_serving draws the same), not
#: vLLM's [L (1 - r), L (1 + r)] (:data:`simfoe.workloads.closed_loop.RANGE_STYLES`).
INFERENCEX_RANGE_STYLE = "below"

#: The dated InferenceX exports (``source_file=2026-04-06.csv``): every row of one export comes from its
#: benchmark runs, also where a row's source omits the image (the 45 Llama-3.1-70B vLLM rows and five
#: gpt-oss-120b rows of 2026-04-06.csv, whose other rows name vllm/vllm-openai images). Replayed with fixed
#: lengths, their 8 clients of 1024-token prompts stayed in lockstep (TTFT 534 ms vs 155 ms measured).
INFERENCEX_EXPORT = re.compile(r"source_file=\d{4}-\d{2}-\d{2}\.csv")

#: AIConfigurator's gap-analysis runs: a row whose source names this folder was deployed from AIConfigurator's
#: generated launch (its 4000 x 1000 rows name nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.8.0, Dynamo on vLLM 0.12.0)
#: and measured with aiperf (fixed lengths, ignore_eos, 10 x concurrency requests after 2 x concurrency warm-ups:
#: aiconfigurator src/aiconfigurator/eval/benchmarks/genai_perf_runner.py).
AIC_GAP_ANALYSIS = "aic-auto-gap-analysis"


@dataclass(frozen=True)
class GeneratorBudget:
    """The token budget per iteration AIConfigurator's generator launches an aggregated worker with:
    max_batch_size + ISL + ``margin`` tokens (rule_plugin/<backend>.rule ``agg max_num_tokens``)."""

    margin: int
    source: str

    def tokens(self, batch_size: int, isl: int) -> int:
        return batch_size + isl + self.margin


#: Backend -> the budget its gap-analysis rows ran with (other backends: the engine profile's). vLLM: the
#: generator's ``agg max_num_tokens = max_batch_size + isl + 1500`` becomes ``--max-num-batched-tokens``
#: (cli_args.j2 passes it since aiconfigurator 2cecd6596, 2026-01-08). With it the wave of 8 clients x 1024
#: tokens no longer fits one iteration, as the measured rows say (TPOT grows as OSL shrinks: prompts
#: interleave with decodes; docs/calibration.md). TensorRT-LLM: the same rule, as max_num_tokens.
GENERATOR_BUDGETS = {
    "vllm": GeneratorBudget(1500, "aiconfigurator generator/rule_plugin/vllm.rule agg max_num_tokens "
                                  "(max_batch_size + isl + 1500) -> vllm --max-num-batched-tokens"),
    "trtllm": GeneratorBudget(1500, "aiconfigurator src/aiconfigurator/cli/backends/trtllm.py (2025-08-22, the "
                                    "1.0.0rc3 runs' era): agg max_num_tokens = bs + isl + 1500 -> the worker's "
                                    "max_num_tokens; generator/rule_plugin/trtllm.rule keeps it since"),
}

#: Backends whose expert parallelism gathers the tokens instead of dispatching them (placement.moe.token_exchange
#: gather): TensorRT-LLM's fused MoE (tensorrt_llm/_torch/modules/fused_moe) all-to-alls only with attention DP on
#: multi-node NVLink (enable_alltoall: MnnvlMemory.supports_mnnvl(), which H100 lacks); otherwise every rank runs
#: its experts on all tokens (all-reduced after TP attention, all-gathered across attention DP ranks) and the
#: outputs are reduced (reducescatter_or_allreduce).
GATHERING_BACKENDS = ("trtllm",)

#: Backend -> the first version that schedules asynchronously by default (vLLM: vllm-project/vllm#27614, part of
#: the async-scheduling plan #27679; SchedulerConfig.async_scheduling "helps to avoid gaps in GPU utilization"): the
#: host work of iteration n + 1 (scheduling, input preparation, the outputs of iteration n) runs while iteration n
#: is on the GPU, so a row of such a version runs without the profile's per-iteration host time (step_s,
#: step_per_seq_s). The profile describes the synchronous version (vllm.yaml: 0.12.0); a row without a version
#: runs as the profile (the Llama-3.1-70B export rows, measured 2025-10-29, before #27614).
ASYNC_SCHEDULING_SINCE = {"vllm": (0, 14)}


def version_tuple(v: str) -> tuple[int, ...] | None:
    """The leading numbers of a version string ("0.18.0" -> (0, 18, 0), "1.3.0rc1" -> (1, 3, 0)); None: none."""
    m = re.match(r"\d+(?:\.\d+)*", v.strip())
    return tuple(int(x) for x in m.group(0).split(".")) if m else None


DEDUP_RULES = {
    "exact duplicate": "every column but id and silicon_data_source equals an earlier row's (data README: "
                       "exact duplicates)",
    "same measurement under another name": "same architecture (DeepSeek-R1 = DeepSeek-V3), backend, ISL/OSL "
                                           "and identical TTFT and TPOT as a row with more fields filled (data "
                                           "README: listed under both DeepSeek-R1 and DeepSeek-V3)",
}

_POOL_COLS = ("tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size", "num_workers", "batch_size")
_INT_COLS = ("isl", "osl", "batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size",
             *(f"{side}_{c}" for side in ("prefill", "decode") for c in _POOL_COLS))


@dataclass(frozen=True)
class PoolColumns:
    """One side of a disaggregated row (data README): one worker's ``tp``, ``pp``, ``adp`` (attention DP),
    ``moe_tp``, ``moe_ep``, the ``workers`` and the ``batch_size`` per attention-DP rank; None where empty."""

    tp: int | None
    pp: int | None
    adp: int | None
    moe_tp: int | None
    moe_ep: int | None
    workers: int | None
    batch_size: int | None


@dataclass(frozen=True)
class SiliconRow:
    """One benchmark result. Parallelism per the data README; ``None`` where the CSV is empty
    (attention_dp_size and pp_size empty read as 1). TTFT and TPOT in ms."""

    id: str
    system: str
    model_path: str
    backend: str
    backend_version: str
    mode: str
    isl: int
    osl: int
    gemm_quant: str
    moe_quant: str
    batch_size: int | None
    tp: int | None
    pp: int
    adp: int
    moe_tp: int | None
    moe_ep: int | None
    ttft_ms: float
    tpot_ms: float
    source: str = ""
    disagg_concurrency: int | None = None
    prefill: PoolColumns | None = None  # disagg rows: the prefill and decode workers
    decode: PoolColumns | None = None

    @property
    def concurrency(self) -> int | None:
        """Client concurrency: batch_size x pp x attention_dp (agg); decode batch x adp x workers (disagg)."""
        if self.mode == "disagg":
            return self.disagg_concurrency
        return None if self.batch_size is None else self.batch_size * self.pp * self.adp

    @property
    def group(self) -> str:
        """``<system>/<model>/<backend>/<mode>``, the key of a report's ``by_group``."""
        return f"{self.system}/{self.model_path}/{self.backend}/{self.mode}"

    @property
    def launch_budget(self) -> int | None:
        """Tokens per iteration the run's launch set (:data:`GENERATOR_BUDGETS`, for AIConfigurator's gap-analysis
        rows of those backends); None: the engine profile's default."""
        gen = GENERATOR_BUDGETS.get(self.backend)
        if gen is None or AIC_GAP_ANALYSIS not in self.source or self.batch_size is None:
            return None
        return gen.tokens(self.batch_size, self.isl)

    @property
    def range_style(self) -> str:
        """How the run's client spread lengths around ISL / OSL: InferenceX's (:data:`INFERENCEX_RANGE_STYLE`),
        else "symmetric" (moot: those rows are replayed with fixed lengths)."""
        return INFERENCEX_RANGE_STYLE if self.inferencex else "symmetric"

    @property
    def async_host(self) -> bool:
        """The row's engine version overlaps its per-iteration host time with the GPU (:data:`ASYNC_SCHEDULING_SINCE`)."""
        since = ASYNC_SCHEDULING_SINCE.get(self.backend)
        v = version_tuple(self.backend_version)
        return since is not None and v is not None and v >= since

    @property
    def inferencex(self) -> bool:
        """A run whose source names an image and a workflow run (benchmark_serving.py, range ratio 0.8), or a
        row of one of the InferenceX exports (:data:`INFERENCEX_EXPORT`) whose source omits them. AIConfigurator's
        gap-analysis rows are not, though some name an nvcr.io image: aiperf measured them with fixed lengths
        (:data:`AIC_GAP_ANALYSIS`)."""
        s = self.source
        if AIC_GAP_ANALYSIS in s:
            return False
        return "image=" in s or "nvcr.io" in s or "workflow_run_id" in s or INFERENCEX_EXPORT.search(s) is not None


@dataclass(frozen=True)
class SiliconSet:
    """Rows kept and the rows dropped as duplicates: ``dropped`` maps row id -> DEDUP_RULES key."""

    path: str
    rows: tuple[SiliconRow, ...]
    dropped: dict = field(default_factory=dict)


def _int(v) -> int | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)


def _str(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _row(r: dict) -> SiliconRow:
    g = {c: _int(r.get(c)) for c in _INT_COLS}
    dc = None
    if all(g[c] for c in ("decode_batch_size", "decode_attention_dp_size", "decode_num_workers")):
        dc = g["decode_batch_size"] * g["decode_attention_dp_size"] * g["decode_num_workers"]
    return SiliconRow(
        id=_str(r["id"]), system=_str(r["system"]), model_path=_str(r["model_path"]), backend=_str(r["backend"]),
        backend_version=_str(r.get("backend_version")), mode=_str(r["mode"]), isl=g["isl"], osl=g["osl"],
        gemm_quant=_str(r.get("gemm_quant_mode")), moe_quant=_str(r.get("moe_quant_mode")),
        batch_size=g["batch_size"], tp=g["tp_size"], pp=g["pp_size"] or 1, adp=g["attention_dp_size"] or 1,
        moe_tp=g["moe_tp_size"], moe_ep=g["moe_ep_size"], ttft_ms=float(r["silicon_ttft_ms"]),
        tpot_ms=float(r["silicon_tpot_ms"]), source=_str(r.get("silicon_data_source")), disagg_concurrency=dc,
        **{side: PoolColumns(*(g[f"{side}_{c}"] for c in _POOL_COLS)) for side in ("prefill", "decode")
           if _str(r["mode"]) == "disagg"})


def _filled(r: dict) -> int:
    return sum(1 for v in r.values() if not (v is None or (isinstance(v, float) and math.isnan(v))))


def load_rows(path: str | Path, field_name: str = "--silicon") -> SiliconSet:
    """Read a silicon CSV; drop duplicates by :data:`DEDUP_RULES` (first / most complete row kept)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise SpecError(field_name, str(path), "an AIConfigurator silicon CSV (e.g. ../shared/data/" + H100_FILE + ")")
    try:
        df = pd.read_csv(p)
    except (ValueError, UnicodeDecodeError) as e:
        raise SpecError(field_name, str(path), f"a CSV file ({type(e).__name__})") from None
    need = {"id", "system", "model_path", "backend", "mode", "isl", "osl", "silicon_ttft_ms", "silicon_tpot_ms"}
    if not need <= set(df.columns):
        raise SpecError(field_name, str(path), "a silicon CSV with columns " + ", ".join(sorted(need)))
    recs = df.to_dict("records")
    kept, dropped, seen, same = [], {}, set(), {}
    for i in sorted(range(len(recs)), key=lambda i: (-_filled(recs[i]), i)):  # most complete first
        r = recs[i]
        exact = tuple(_str(v) for k, v in r.items() if k not in ("id", "silicon_data_source"))
        meas = (MODEL_PRESETS.get(r["model_path"], r["model_path"]), _str(r["backend"]), _str(r["mode"]),
                r["isl"], r["osl"], r["silicon_ttft_ms"], r["silicon_tpot_ms"])
        if exact in seen:
            dropped[_str(r["id"])] = "exact duplicate"
        elif meas in same and same[meas] != r["model_path"]:
            dropped[_str(r["id"])] = "same measurement under another name"
        else:
            same.setdefault(meas, r["model_path"])
            kept.append(i)
        seen.add(exact)
    return SiliconSet(str(p), tuple(_row(recs[i]) for i in sorted(kept)), dropped)


# ---- row -> serving scenario -------------------------------------------------------------------
@dataclass(frozen=True)
class NotCovered:
    """Why a row is not predicted (a key of a report's ``not_covered``)."""

    reason: str


@dataclass(frozen=True)
class Scenario:
    """One row as a ``simfoe serve`` run: presets, ``--set`` overrides (layout, quantization), the
    engine's ``max_batch`` (sequences per rank) and ``token_budget`` (tokens per iteration), and
    the closed-loop workload's numbers. Rows of one deployment share ``deployment``."""

    hardware: str
    model: str
    overrides: tuple[str, ...]
    max_batch: int
    token_budget: int
    concurrency: int
    isl: int
    osl: int
    range_ratio: float
    range_style: str = "symmetric"  # how range_ratio spreads lengths (closed_loop.RANGE_STYLES)
    engine: str | None = None  # the engine profile (BACKEND_ENGINES); None: the engine's defaults
    launch_budget: int | None = None  # tokens per iteration the run's launch set, replacing the profile's (None: its own)
    async_host: bool = False  # the engine overlaps its per-iteration host time with the GPU (no step overheads)

    @property
    def deployment(self) -> tuple:
        return (self.hardware, self.model, self.overrides)

    def workload(self):
        """The benchmark's closed loop: 10 x concurrency prompts after 2 x concurrency warm-ups."""
        from simfoe.workloads.closed_loop import ClosedLoop

        return ClosedLoop(concurrency=self.concurrency, isl=self.isl, osl=self.osl,
                          random_range_ratio=self.range_ratio, range_style=self.range_style,
                          num_prompts=10 * self.concurrency, warmup=2 * self.concurrency)


def _id_parallelism(row: SiliconRow) -> str | None:
    """The data README's known encoding problem: the id names ``tp{T}_ep{E}`` but the columns give a
    different expert-parallel size (a 4-GPU tp4/ep4 run written as tp4 x adp4 with moe_ep 16)."""
    import re

    m = re.search(r"_tp(\d+)_ep(\d+)_", row.id)
    if m and row.moe_ep and int(m.group(2)) != row.moe_ep:
        return (f"suspect encoding: id names tp{m.group(1)}_ep{m.group(2)} but columns say attention_dp "
                f"{row.adp}, moe_ep {row.moe_ep} (data README, known problems)")
    return None


def _dtype(row: SiliconRow, is_moe: bool, preset: str) -> str | NotCovered:
    """The ``model.dtype`` of ``row``'s quant modes (QUANT_DTYPES; FP4_QUANTS: the checkpoint's formats)."""
    quants = {row.gemm_quant} | ({row.moe_quant} if is_moe else set())
    bad = sorted(q for q in quants if q not in QUANT_DTYPES and q not in FP4_QUANTS)
    if bad:
        return NotCovered(f"quant {bad[0]}: not mapped yet (mapped: fp8, fp8_block, nvfp4, mxfp4, none)")
    fp4 = sorted(quants & set(FP4_QUANTS))
    if fp4 and _fp4_experts(preset) is None:
        return NotCovered(f"quant {fp4[0]}: the model preset has no fp4 checkpoint (4-bit expert weights)")
    return "fp8" if "fp8" in {QUANT_DTYPES.get(q) for q in quants} else "bf16"


@lru_cache(maxsize=None)
def _fp4_experts(preset: str) -> str | None:
    """The 4-bit format ``preset``'s routed experts ship in (gpt-oss-120b: mxfp4), else None."""
    from simfoe.specs.io import load_model
    from simfoe.specs.precision import FORMATS

    f = load_model(preset).formats.expert_weights
    return f if FORMATS[f].math == "fp4" else None


def _layout(row: SiliconRow, is_moe: bool, gpus_per_node: int) -> tuple[str, ...] | NotCovered:
    if row.pp > 1:
        return NotCovered("pp_size > 1: pipeline parallelism not modelled")
    if not row.tp or not row.batch_size:
        return NotCovered("tp_size or batch_size missing")
    gpus = row.tp * row.adp
    if gpus > gpus_per_node:
        return NotCovered("instance larger than one node: not mapped yet")
    ov = [f"hardware.node.gpus_per_node={gpus}", "placement.moe.attention=tp", f"placement.moe.attention_tp={row.tp}"]
    if is_moe:
        etp, ep = row.moe_tp or 1, row.moe_ep or 1
        if etp * ep != gpus:
            return NotCovered("moe_tp x moe_ep != tp x attention_dp: inconsistent parallelism")
        ov.append(f"placement.moe.ep={ep}")
        if etp > 1:  # experts sliced over moe_tp GPUs (vLLM without EP: moe_tp = tp; TRT-LLM moe_tp_size)
            ov.append(f"placement.moe.expert_tp={etp}")
        elif ep > 1 and row.backend in GATHERING_BACKENDS:
            ov.append("placement.moe.token_exchange=gather")
    return tuple(ov)


@lru_cache(maxsize=None)
def _preset_facts(hardware: str, model: str) -> tuple[int, bool] | NotCovered:
    """(GPUs per node of ``hardware``, whether ``model`` has experts), or why a preset is missing."""
    from simfoe.specs.io import list_presets, load_hardware, load_model

    if hardware not in list_presets("hardware"):
        return NotCovered(f"hardware profile {hardware} missing")
    if model not in list_presets("model"):
        return NotCovered("model preset missing")
    return load_hardware(hardware).node.gpus_per_node, load_model(model).moe is not None


def scenario(row: SiliconRow) -> Scenario | NotCovered:
    """The serving scenario of ``row``, or why it has none (never an error)."""
    if row.mode not in ("agg", "disagg"):
        return NotCovered(f"mode {row.mode}: unknown")
    hw = SYSTEM_PROFILES.get(row.system)
    if hw is None:
        return NotCovered(f"system {row.system}: no hardware profile")
    preset = MODEL_PRESETS.get(row.model_path)
    if preset is None:
        return NotCovered("model preset missing")
    facts = _preset_facts(hw, preset)
    if isinstance(facts, NotCovered):
        return facts
    suspect = _id_parallelism(row)
    if suspect:
        return NotCovered(suspect)
    gpus_per_node, is_moe = facts
    dtype = _dtype(row, is_moe, preset)
    if isinstance(dtype, NotCovered):
        return dtype
    if row.mode == "disagg":
        from simfoe.calibration.silicon_disagg import disagg_scenario

        return disagg_scenario(row, hw, preset, is_moe, dtype, gpus_per_node)
    layout = _layout(row, is_moe, gpus_per_node)
    if isinstance(layout, NotCovered):
        return layout
    return Scenario(hw, preset, layout + (f"model.dtype={dtype}",), max_batch=row.batch_size,
                    token_budget=TOKEN_BUDGET, concurrency=row.concurrency, isl=row.isl, osl=row.osl,
                    range_ratio=INFERENCEX_RANGE_RATIO if row.inferencex else 0.0,
                    range_style=row.range_style,
                    engine=BACKEND_ENGINES.get(row.backend), launch_budget=row.launch_budget,
                    async_host=row.async_host)


# ---- replay and report -------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """Predicted mean TTFT and TPOT (ms) of a row, or the reason it has none."""

    row: SiliconRow
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    reason: str | None = None


class _Deployments:
    """One forward model's iteration-cost table and KV capacity per deployment, built on first use."""

    def __init__(self):
        self.built: dict[tuple, tuple] = {}

    def get(self, sc: Scenario):
        if sc.deployment not in self.built:
            from simfoe.serving.api import build_forward
            from simfoe.serving.step_models import make_cost

            fm = build_forward(sc.model, sc.hardware, 1, "moe", overrides=sc.overrides)[0]
            self.built[sc.deployment] = (make_cost(fm, "interp"), fm.kv_capacity_tokens())
        return self.built[sc.deployment]


def run_config(sc: Scenario, cfg):
    """The engine configuration ``cfg`` (a profile's :class:`simfoe.serving.engine.EngineConfig`) as ``sc``'s run had it:
    its launch's token budget, and no per-iteration host time when the engine overlaps it (``sc.async_host``)."""
    if sc.launch_budget is not None:
        cfg = replace(cfg, token_budget=sc.launch_budget)
    return replace(cfg, step_overhead_s=0.0, step_overhead_per_seq_s=0.0) if sc.async_host else cfg


def serve_row(row: SiliconRow, deployments: _Deployments | None = None, seed: int = 0, engines: dict | None = None,
              **kw):
    """The :class:`simfoe.serving.api.ServingResult` of one row, or why it has none (:class:`NotCovered`).
    ``engines``: profile name -> :class:`simfoe.serving.engine.EngineConfig` replacing that profile (default:
    the profiles as committed); ``kw`` go to :func:`simfoe.serving.api.simulate_serving`."""
    from simfoe.serving.api import simulate_serving
    from simfoe.serving.engine import profile_config

    sc = scenario(row)
    if isinstance(sc, NotCovered):
        return sc
    deployments = deployments or _Deployments()
    if row.mode == "disagg":
        from simfoe.calibration.silicon_disagg import serve_disagg_row

        return serve_disagg_row(sc, deployments, seed, engines)
    try:
        workload = sc.workload()
    except ImportError:  # a checkout without the closed-loop serving workloads
        return NotCovered("closed-loop workloads not available in this checkout")
    if sc.engine is None:
        knobs = {"token_budget": sc.token_budget}
    else:
        knobs = {"engine": run_config(sc, (engines or {}).get(sc.engine) or profile_config(sc.engine))}
    try:
        cost, kv = deployments.get(sc)
        return simulate_serving(sc.model, sc.hardware, 1, "moe", workload, step_model=cost, kv_capacity_tokens=kv,
                                max_batch=sc.max_batch, seed=seed, **knobs, **kw)
    except SpecError as e:
        return NotCovered(f"simulator refused: {e.field}")


def predict_row(row: SiliconRow, deployments: _Deployments | None = None, seed: int = 0,
                engines: dict | None = None) -> Prediction:
    """Replay one row (a not-covered reason when it maps to no scenario or the simulator refuses it);
    ``engines`` as for :func:`serve_row`."""
    res = serve_row(row, deployments, seed, engines)
    if isinstance(res, NotCovered):
        return Prediction(row, reason=res.reason)
    s = res.summary
    if s["ttft_s"]["mean"] is None or s["tpot_s"]["mean"] is None:
        return Prediction(row, reason="no request completed")
    return Prediction(row, s["ttft_s"]["mean"] * 1e3, s["tpot_s"]["mean"] * 1e3)


def _predict_rows(rows: tuple[SiliconRow, ...], seed: int = 0, predict=None) -> list:
    """Predictions of ``rows`` sharing one set of deployments (a worker's task)."""
    deployments = _Deployments()
    return [(predict or predict_row)(r, deployments, seed) for r in rows]


def _by_deployment(rows) -> list[list[int]]:
    """Indices of ``rows`` grouped by deployment (rows without a scenario together), costliest group
    first: a row runs about 12 x OSL engine iterations (10 x concurrency prompts + 2 x concurrency warm-ups)."""
    groups: dict = {}
    for i, r in enumerate(rows):
        sc = scenario(r)
        groups.setdefault(None if isinstance(sc, NotCovered) else sc.deployment, []).append(i)
    return [g for k, g in sorted(groups.items(), key=lambda kv: -sum(rows[i].osl for i in kv[1]) if kv[0] else 0)]


def replay(rows, progress=None, seed: int = 0, workers: int = 1, predict=None) -> list[Prediction]:
    """Predict every row; results in the order of ``rows``. ``progress(i, n, row)`` is called before
    each row (``workers`` = 1) or after each finished deployment (``workers`` > 1: that many
    processes, each taking whole deployments so that rows share a deployment's cost table).
    ``predict(row, deployments, seed)``: what each row gives (default :func:`predict_row`; a
    picklable callable with ``workers`` > 1)."""
    predict = predict or predict_row
    rows = tuple(rows)
    if not (isinstance(workers, int) and workers >= 1):
        raise SpecError("workers", workers, "an integer >= 1 (processes)")
    if workers == 1:
        deployments = _Deployments()
        out = []
        for i, row in enumerate(rows):
            if progress is not None:
                progress(i, len(rows), row)
            out.append(predict(row, deployments, seed))
        return out
    from concurrent.futures import ProcessPoolExecutor, as_completed

    got: dict[int, Prediction] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futs = {pool.submit(_predict_rows, tuple(rows[i] for i in g), seed, predict): g for g in _by_deployment(rows)}
        for f in as_completed(futs):
            got.update(zip(futs[f], f.result()))
            if progress is not None:
                progress(len(got) - 1, len(rows), rows[futs[f][-1]])
    return [got[i] for i in range(len(rows))]


def _errors(pred: list[Prediction], what: str) -> dict:
    """:func:`ape_stats` of ``what`` (ttft or tpot) over the predictions ``pred``."""
    return ape_stats([getattr(x, f"{what}_ms") for x in pred], [getattr(x.row, f"{what}_ms") for x in pred], what)


def ape_stats(predicted, measured, what: str) -> dict:
    """``{what}_mape``, ``_mdape`` (%) and ``_within_25pct`` (share) of ``predicted`` against ``measured``
    (APE = |predicted - measured| / measured, in %; None when there is no pair)."""
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if not len(p):
        return {f"{what}_mape": None, f"{what}_mdape": None, f"{what}_within_25pct": None}
    ape = np.abs(p - m) / m * 100.0
    return {f"{what}_mape": float(ape.mean()), f"{what}_mdape": float(np.median(ape)),
            f"{what}_within_25pct": float((ape <= 25.0).mean())}


def summarize_group(preds: list[Prediction]) -> dict:
    """Rows, covered rows, coverage and the TTFT and TPOT :func:`ape_stats` of the covered ones among ``preds``."""
    ok = [p for p in preds if p.reason is None]
    return {"rows": len(preds), "covered": len(ok), "coverage": len(ok) / len(preds) if preds else None,
            **_errors(ok, "ttft"), **_errors(ok, "tpot")}


def report(preds: list[Prediction], dropped: dict | None = None) -> dict:
    """``{"rows", "covered", "coverage", "ttft_mape", "tpot_mape", "ttft_mdape", "tpot_mdape",
    "ttft_within_25pct", "tpot_within_25pct", "by_mode": {mode: same}, "by_group": {group: same},
    "not_covered": {reason: n}, "duplicates": {rule: n}}`` (APE in %, shares in [0, 1]; rows after
    dropping duplicates). The top-level figures are the aggregated rows' (the disaggregated ones, a
    different experiment, are in ``by_mode["disagg"]`` and their groups, beside them; the complete
    disaggregated rows' (simfoe.calibration.silicon_disagg.complete) as ``disagg_complete_<key>``)."""
    groups: dict[str, list] = {}
    modes: dict[str, list] = {}
    for p in preds:
        groups.setdefault(p.row.group, []).append(p)
        modes.setdefault(p.row.mode, []).append(p)
    nc: dict[str, int] = {}
    for p in preds:
        if p.reason is not None:
            nc[p.reason] = nc.get(p.reason, 0) + 1
    dup: dict[str, int] = {}
    for why in (dropped or {}).values():
        dup[why] = dup.get(why, 0) + 1
    from simfoe.calibration.silicon_disagg import complete_summary

    return {**summarize_group([p for p in preds if p.row.mode != "disagg"]), **complete_summary(preds),
            "by_mode": {m: summarize_group(v) for m, v in sorted(modes.items())},
            "by_group": {g: summarize_group(v) for g, v in sorted(groups.items())},
            "not_covered": dict(sorted(nc.items(), key=lambda kv: -kv[1])), "duplicates": dup}


CASE_COLUMNS = ("id", "group", "concurrency", "isl", "osl", "predicted_ttft_ms", "predicted_tpot_ms",
                "silicon_ttft_ms", "silicon_tpot_ms", "not_covered")


def cases(preds: list[Prediction]) -> list[dict]:
    """One dict per row (:data:`CASE_COLUMNS`; predictions None for rows not covered)."""
    return [{"id": p.row.id, "group": p.row.group, "concurrency": p.row.concurrency, "isl": p.row.isl,
             "osl": p.row.osl, "predicted_ttft_ms": p.ttft_ms, "predicted_tpot_ms": p.tpot_ms,
             "silicon_ttft_ms": p.row.ttft_ms, "silicon_tpot_ms": p.row.tpot_ms, "not_covered": p.reason or ""}
            for p in preds]


def default_path() -> Path | None:
    """The H100 file in the shared data folder, or None when that folder is absent."""
    from simfoe.paths import shared_data_dir

    d = shared_data_dir()
    return None if d is None else d / H100_FILE


def tolerance_source(path: str | Path) -> str:
    """The key of a silicon file's bounds in validation/tolerances.yaml ``sources``: ``silicon:<file stem>``."""
    return "silicon:" + Path(path).stem


def judge(rep: dict, path: str | Path, tolerances: dict) -> dict:
    """``rep`` (:func:`report`) with ``source`` (:func:`tolerance_source`), ``tolerance`` (its bounds, None
    when the file has none) and ``ok`` added; bounds as simfoe.calibration.regression.judge reads them."""
    from simfoe.calibration.regression import judge as meets

    src = tolerance_source(path)
    bounds, ok = meets(rep, (tolerances.get("sources") or {}).get(src))
    return {**rep, "source": src, "tolerance": bounds, "ok": ok}


def validate_silicon(path: str | Path, progress=None, workers: int = 1,
                     tolerances: dict | None = None) -> tuple[dict, list[dict]]:
    """(report judged against ``tolerances`` (default: validation/tolerances.yaml), cases) of the silicon
    file at ``path``."""
    from simfoe.calibration.regression import load_tolerances

    s = load_rows(path)
    preds = replay(s.rows, progress, workers=workers)
    tol = load_tolerances() if tolerances is None else tolerances
    return judge(report(preds, s.dropped), path, tol), cases(preds)
