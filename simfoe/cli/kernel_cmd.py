"""`simfoe kernel`: predicted latency of one kernel, or of every row of a shapes CSV.

One op:   simfoe kernel --hardware h100-sxm --op gemm --m 4096 --n 8192 --k 8192 --json
Batch:    simfoe kernel --hardware h100-sxm --shapes shapes.csv --json   (columns op,m,n,k[,dtype])

Fields per op (flags, or CSV columns of the same name without dashes and with _ for -):
  gemm               m, n, k [, weights]
  grouped_gemm       tokens (per-expert counts: "a,b,c" on the command line, "a;b;c" in a CSV), n, k [, weights]
  attention_prefill  batch, q_len, kv_len, heads, kv_heads, head_dim [, causal, kv_dtype]
  attention_decode   batch, kv_len, heads, kv_heads, head_dim [, kv_dtype]
  elementwise        bytes [, flops, kind = norm|act|add]

Communication (one op, not in a CSV):
  dispatch|combine   --a2a normal|ll --nodes N --tokens-per-gpu T --hidden H --topk K --experts E
                     [--node-groups G] [--dtype fp8|bf16]  (DeepEP test routing; simfoe.costs.dispatch)
  all_reduce|all_gather|reduce_scatter|all_to_all  --gpus N [--nodes M] --bytes B [--algorithm NAME]
                     (B as nccl-tests counts its size; simfoe.costs.collectives.predict)
"""
from __future__ import annotations

from simfoe.cli.common import add_json_flag, add_set_flag, command_run, renamed_fields, table
from simfoe.outputs import fmt_bytes, fmt_time
from simfoe.paths import hardware_presets

OPS = ("gemm", "grouped_gemm", "attention_prefill", "attention_decode", "elementwise")
REQUIRED = {
    "gemm": ("m", "n", "k"),
    "grouped_gemm": ("tokens", "n", "k"),
    "attention_prefill": ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim"),
    "attention_decode": ("batch", "kv_len", "heads", "kv_heads", "head_dim"),
    "elementwise": ("bytes",),
}
INT_FIELDS = ("m", "n", "k", "batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim")
FLOAT_FIELDS = ("bytes", "flops")
FIELDS = INT_FIELDS + FLOAT_FIELDS + ("tokens", "dtype", "causal", "kind", "weights", "kv_dtype")
#: format fields (simfoe.specs.precision) and the ops that take them
FORMAT_FIELDS = {"weights": ("gemm", "grouped_gemm"), "kv_dtype": ("attention_prefill", "attention_decode")}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "kernel",
        help="predicted latency, FLOP and bytes of one GPU kernel (or a CSV of shapes)",
        description="Kernel cost from the hardware profile's roofline and fitted efficiencies. "
        "Latency in seconds, work in FLOP, traffic in bytes.",
    )
    p.add_argument("--hardware", required=True, help="hardware profile: " + ", ".join(hardware_presets()) + ", or a YAML path")
    p.add_argument("--op", default=None, help=" | ".join(OPS) + " | communication: " + " | ".join(COMM_OPS))
    p.add_argument("--shapes", default=None, help="CSV with columns op,m,n,k[,dtype] (other fields as extra columns)")
    p.add_argument("--m", type=str, default=None, help="GEMM rows (tokens)")
    p.add_argument("--n", type=str, default=None, help="GEMM output columns")
    p.add_argument("--k", type=str, default=None, help="GEMM reduction dimension")
    p.add_argument("--tokens", default=None, help="grouped_gemm: per-expert token counts, comma-separated")
    p.add_argument("--batch", type=str, default=None, help="attention: sequences")
    p.add_argument("--q-len", dest="q_len", type=str, default=None, help="attention_prefill: new tokens per sequence")
    p.add_argument("--kv-len", dest="kv_len", type=str, default=None, help="attention: context tokens per sequence")
    p.add_argument("--heads", type=str, default=None, help="attention: query heads")
    p.add_argument("--kv-heads", dest="kv_heads", type=str, default=None, help="attention: KV heads")
    p.add_argument("--head-dim", dest="head_dim", type=str, default=None, help="attention: head dimension")
    p.add_argument("--no-causal", dest="causal", action="store_const", const="false", default=None,
                   help="attention_prefill: full (non-causal) attention")
    p.add_argument("--bytes", type=str, default=None, help="elementwise: bytes moved")
    p.add_argument("--flops", type=str, default=None, help="elementwise: FLOP (counted only with an fp32 peak)")
    p.add_argument("--kind", default=None, help="elementwise: norm | act | add (picks the fitted curve)")
    p.add_argument("--dtype", default=None,
                   help="element type of gemm, grouped_gemm and attention: bf16 (default), fp16 (costed as bf16), "
                   "or another dtype the profile lists a peak for in gpu.peak_flops (e.g. fp8; fp32 on CPU profiles); "
                   "gemm and grouped_gemm also take the activation formats fp8-block, mxfp4, nvfp4 where the profile "
                   "has their math peak (docs/forward.md, Precision per component)")
    p.add_argument("--weights", default=None, help="gemm, grouped_gemm: weight format (default --dtype): bf16, fp16, "
                   "fp32, fp8, fp8-block, mxfp4, nvfp4; the math runs at the wider of --dtype's and its peak "
                   "(mxfp4 weights with bf16 activations: weight-only, bf16 peak)")
    p.add_argument("--kv-dtype", dest="kv_dtype", default=None,
                   help="attention: K and V element type (default --dtype), e.g. fp8 for an fp8 KV cache")
    p.add_argument("--a2a", default=None, help="dispatch/combine: normal | ll (DeepEP modes) or nccl | direct | hierarchical")
    for flag, what in (("--nodes", "dispatch/combine and collectives: nodes (collectives: default the fewest that hold --gpus)"),
                       ("--tokens-per-gpu", "dispatch/combine: tokens each GPU holds"),
                       ("--hidden", "dispatch/combine: hidden size"), ("--topk", "dispatch/combine: experts per token"),
                       ("--experts", "dispatch/combine: routed experts"),
                       ("--node-groups", "dispatch/combine: nodes a token may reach (DeepEP test routing; default all)"),
                       ("--gpus", "collectives: GPUs in the group")):
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), type=str, default=None, help=what)
    p.add_argument("--algorithm", default=None, help="collectives: algorithm (default auto)")
    add_set_flag(p, help="override a hardware profile field by dotted path, e.g. hardware.gpu.peak_flops.bf16=900e12 "
                 "(repeatable; only hardware.* paths)")
    add_json_flag(p)
    p.set_defaults(func=run, render=render)


def _int(field: str, text) -> int:
    from simfoe.errors import SpecError

    try:
        v = float(str(text).strip())
    except ValueError:
        raise SpecError(field, text, "an integer >= 0") from None
    if not v.is_integer() or v < 0:
        raise SpecError(field, text, "an integer >= 0")
    return int(v)


def _float(field: str, text) -> float:
    import math

    from simfoe.errors import SpecError

    try:
        v = float(str(text).strip())
    except ValueError:
        raise SpecError(field, text, "a number >= 0") from None
    if not math.isfinite(v) or v < 0:
        raise SpecError(field, text, "a number >= 0")
    return v


def evaluate(hw, fields: dict, prefix: str = "--") -> dict:
    """Cost of one op described by string ``fields`` (op, m, n, k, ...); errors name ``prefix+field``."""
    from simfoe.costs import kernels as K
    from simfoe.errors import SpecError

    def name(f):
        return prefix + (f.replace("_", "-") if prefix == "--" else f)

    op = (fields.get("op") or "").strip()
    if op not in OPS:
        raise SpecError(name("op"), fields.get("op"), "allowed: " + ", ".join(OPS))
    for f in REQUIRED[op]:
        if fields.get(f) in (None, ""):
            kind = ("an integer >= 0" if f in INT_FIELDS else "a number >= 0" if f in FLOAT_FIELDS
                    else "per-expert token counts, e.g. 12,0,7")
            raise SpecError(name(f), None, f"{name(f).strip()} is required for {'--op' if prefix == '--' else 'op'} "
                            f"{op} ({kind})", problem="empty" if fields.get(f) == "" else "not given")
    v: dict = {}
    for f in INT_FIELDS:
        if fields.get(f) not in (None, ""):
            v[f] = _int(name(f), fields[f])
    for f in FLOAT_FIELDS:
        if fields.get(f) not in (None, ""):
            v[f] = _float(name(f), fields[f])
    dtype, fmt = _formats(hw, op, fields, name)
    try:
        if op == "gemm":
            c = K.gemm(hw, v["m"], v["n"], v["k"], dtype, **fmt)
        elif op == "grouped_gemm":
            sep = ";" if ";" in fields["tokens"] else ","
            toks = [_int(name("tokens"), t) for t in str(fields["tokens"]).split(sep) if t.strip()]
            if not toks:
                raise SpecError(name("tokens"), fields["tokens"], "per-expert token counts")
            c = K.grouped_gemm(hw, toks, v["n"], v["k"], dtype, **fmt)
        elif op == "attention_prefill":
            causal_s = str(fields.get("causal") or "true").strip().lower()
            if causal_s not in ("true", "false", "1", "0"):
                raise SpecError(name("causal"), fields.get("causal"), "true or false")
            c = K.attention_prefill(hw, v["batch"], v["q_len"], v["kv_len"], v["heads"], v["kv_heads"],
                                    v["head_dim"], dtype, causal=causal_s in ("true", "1"), **fmt)
        elif op == "attention_decode":
            c = K.attention_decode(hw, v["batch"], v["kv_len"], v["heads"], v["kv_heads"], v["head_dim"], dtype, **fmt)
        else:
            kind = (fields.get("kind") or "").strip() or None
            c = K.elementwise(hw, v["bytes"], v.get("flops", 0.0), kind=kind)
    except SpecError as e:
        if e.field.startswith(prefix):
            raise
        raise SpecError(name(COST_FIELDS.get(e.field, e.field)), e.value,
                        e.allowed.replace("n_heads=", "heads=")) from None
    return c.as_dict()


#: argument names of simfoe.costs.kernels -> the kernel command's fields (flags / CSV columns)
COST_FIELDS = {"n_heads": "heads", "n_kv_heads": "kv_heads", "tokens_per_expert": "tokens"}


def _formats(hw, op: str, fields: dict, name) -> tuple[str, dict]:
    """``op``'s element type and its format keywords (``weights``, ``kv_dtype``) from string ``fields``,
    checked against what ``hw`` has a peak for; errors name ``name(field)``."""
    from simfoe.costs import kernels as K
    from simfoe.errors import SpecError
    from simfoe.specs.precision import FORMATS

    where = " on " + str(getattr(hw, "name", "this hardware")) + ": "
    dtype = (fields.get("dtype") or "bf16").strip()
    gemm = op in FORMAT_FIELDS["weights"]
    allowed = list(K.DTYPE_BYTES) if op == "elementwise" else (hw_formats(hw) if gemm else hw_dtypes(hw))
    if dtype not in allowed:
        raise SpecError(name("dtype"), dtype, "allowed" + where + ", ".join(allowed))
    fmt = {}
    for f, ops in FORMAT_FIELDS.items():
        v = (fields.get(f) or "").strip()
        if not v:
            continue
        choices = list(FORMATS) if f == "weights" else list(K.DTYPE_BYTES)
        if op not in ops or v not in choices:
            raise SpecError(name(f), v, f"one of {', '.join(choices)}, for op " + " or ".join(ops))
        fmt[f] = v
    if "weights" in fmt and not _has_peak(hw, K.operands(dtype, fmt["weights"])[2]):
        raise SpecError(name("weights"), fmt["weights"], f"a format that with --dtype {dtype} computes at a peak"
                        + where + ", ".join(sorted(hw.gpu.peak_flops)))
    return dtype, fmt


def hw_formats(hw) -> list[str]:
    """GEMM activation formats ``hw`` can compute (simfoe.specs.precision): those whose math class has a peak."""
    from simfoe.specs.precision import FORMATS

    return [n for n, f in FORMATS.items() if _has_peak(hw, f.math)]


def _has_peak(hw, math_dtype: str) -> bool:
    """Whether ``hw`` lists a peak for a math class (fp16 runs at the bf16 peak)."""
    peaks = hw.gpu.peak_flops
    return math_dtype in peaks or (math_dtype == "fp16" and "bf16" in peaks)


def hw_dtypes(hw) -> list[str]:
    """The dtypes a GEMM or attention kernel accepts on ``hw``: those with a peak in gpu.peak_flops,
    plus fp16 (costed as bf16) where bf16 has one."""
    from simfoe.costs import kernels as K

    return [d for d in K.DTYPE_BYTES if _has_peak(hw, d)]


def _read_shapes(path: str) -> list[tuple[int, dict]]:
    import csv
    from pathlib import Path

    from simfoe.errors import SpecError

    p = Path(path)
    if not p.is_file():
        raise SpecError("--shapes", path, "an existing CSV file")
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "op" not in cols:
            raise SpecError("--shapes", path, "a CSV with a header row op,m,n,k[,dtype]")
        unknown = [c for c in cols if c and c != "op" and c not in FIELDS]
        if unknown:
            raise SpecError(f"{p.name} line 1", unknown[0], "known columns: op, " + ", ".join(FIELDS))
        rows = []
        for row in reader:
            rows.append((reader.line_num, {(k or "").strip(): (val.strip() if isinstance(val, str) else val)
                                           for k, val in row.items()}))
    return rows


def run(args) -> dict:
    from pathlib import Path

    from simfoe.errors import SpecError
    from simfoe.specs.io import check_override_roots, load_hardware

    from simfoe.inputs import check_text_file

    check_override_roots(args.overrides)
    bad = [o for o in args.overrides if not o.strip().startswith("hardware.")]
    if bad:
        raise SpecError("--set", bad[0], "hardware.* paths only (a kernel has no model or placement)")
    check_text_file("--hardware", args.hardware)
    if args.shapes is not None:
        check_text_file("--shapes", args.shapes)
    hw = load_hardware(args.hardware, args.overrides)
    flag_fields = {f: getattr(args, f, None) for f in FIELDS}
    if args.shapes is not None:
        if args.op is not None:
            raise SpecError("--op", args.op, "not allowed with --shapes (the CSV names each row's op)")
        name = Path(args.shapes).name
        results = []
        for line, row in _read_shapes(args.shapes):
            for f in ("dtype", *FORMAT_FIELDS):
                if not row.get(f) and getattr(args, f):
                    row[f] = getattr(args, f)
            r = evaluate(hw, row, prefix=f"{name} line {line}: ")
            results.append({"op": row["op"], **r})
        return {"hardware": hw.name, "results": results, "run": command_run(args, hardware=[hw])}
    if args.op is None:
        raise SpecError("--op", None, "one of " + ", ".join(OPS + COMM_OPS) + " (or --shapes CSV)")
    if args.op in COMM_OPS:
        args.render = render_comm
        return {**evaluate_comm(hw, args), "run": command_run(args, hardware=[hw])}
    out = evaluate(hw, {"op": args.op, **flag_fields})
    op = args.op
    args.render = lambda result: render(result, op)  # the single-op JSON: the 4 cost keys and the run record
    return {**out, "run": command_run(args, hardware=[hw])}


COMM_OPS = ("dispatch", "combine", "all_reduce", "all_gather", "reduce_scatter", "all_to_all")
COMM_FLAGS = ("a2a", "nodes", "tokens_per_gpu", "hidden", "topk", "experts", "node_groups", "gpus", "algorithm")
#: nccl-tests' size (bytes) -> the per-GPU bytes simfoe.costs.collectives.predict takes, for n GPUs
NCCL_TESTS_SIZE = {"all_reduce": lambda b, n: b, "reduce_scatter": lambda b, n: b, "all_gather": lambda b, n: b / n,
                   "all_to_all": lambda b, n: b / n}


def evaluate_comm(hw, args) -> dict:
    """One dispatch/combine (simfoe.costs.dispatch.exchange_cost) or collective (simfoe.costs.collectives.predict)."""
    from simfoe.costs import collectives as coll
    from simfoe.costs import dispatch as D
    from simfoe.errors import SpecError

    def need(f, kind=_int):
        v = getattr(args, f, None)
        if v in (None, ""):
            raise SpecError("--" + f.replace("_", "-"), None, f"--{f.replace('_', '-')} is required for --op {args.op}",
                            problem="not given")
        return kind("--" + f.replace("_", "-"), v)

    dispatch = args.op in D.OPS
    allowed = ("a2a", "nodes", "tokens_per_gpu", "hidden", "topk", "experts", "node_groups") if dispatch \
        else ("gpus", "nodes", "algorithm")
    for f in COMM_FLAGS + ("bytes",) + INT_FIELDS + ("tokens", "kind", "flops", "causal", *FORMAT_FIELDS):
        if getattr(args, f, None) is not None and f not in allowed and not (f == "bytes" and not dispatch):
            raise SpecError("--" + f.replace("_", "-"), getattr(args, f), f"not used by --op {args.op}; it takes "
                            + ", ".join("--" + a.replace("_", "-") for a in allowed + (() if dispatch else ("bytes",))))
    if dispatch:
        groups = None if args.node_groups is None else need("node_groups")
        return D.exchange_cost(hw, args.op, args.a2a or "", _pos("--nodes", need("nodes")), need("tokens_per_gpu"),
                               _pos("--hidden", need("hidden")), _pos("--topk", need("topk")),
                               _pos("--experts", need("experts")), groups, (args.dtype or "bf16").strip())
    if args.dtype is not None:
        raise SpecError("--dtype", args.dtype, f"not used by --op {args.op} (--bytes counts bytes)")
    n = _pos("--gpus", need("gpus"))
    nodes = None if args.nodes is None else _pos("--nodes", need("nodes"))
    algo = (args.algorithm or "auto").strip()
    size = need("bytes", _float)
    # name the command's flags, not the function's arguments
    with renamed_fields({"algorithm": "--algorithm", "n_gpus": "--gpus", "nodes": "--nodes", "nbytes": "--bytes"}):
        t = coll.predict(hw, args.op, n, NCCL_TESTS_SIZE[args.op](size, n), algo, nodes)
    return {"latency_s": t, "algorithm": algo, "algbw_bytes_per_s": (size / t) if t else None}


def _pos(field: str, v: int) -> int:
    from simfoe.errors import SpecError

    if v < 1:
        raise SpecError(field, v, "an integer >= 1")
    return v


def render_comm(result: dict) -> str:
    row = [fmt_time(result["latency_s"]), result["algorithm"]]
    if "comm_bytes" in result:
        row += [fmt_bytes(result["comm_bytes"]["intra_node"]), fmt_bytes(result["comm_bytes"]["inter_node"])]
        return table([row], ["latency", "algorithm", "NVLink bytes", "network bytes"])
    bw = result["algbw_bytes_per_s"]
    return table([row + ["-" if bw is None else f"{bw / 1e9:.1f}"]], ["latency", "algorithm", "algbw GB/s"])


def render(result: dict, op: str = "-") -> str:
    rows = result.get("results")
    if rows is None:
        rows = [{"op": op, **result}]
    out = []
    for r in rows:
        lat = r["latency_s"]
        tflops = f"{r['flops'] / lat / 1e12:.1f}" if lat else "-"
        gbs = f"{r['bytes'] / lat / 1e9:.0f}" if lat else "-"
        out.append([r["op"], fmt_time(lat), f"{r['flops']:.3g}", fmt_bytes(r["bytes"]), tflops, gbs, r["bound"]])
    return table(out, ["op", "latency", "FLOP", "bytes", "TFLOP/s", "GB/s", "bound"])
