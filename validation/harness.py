"""Measurement harness: ``python -m validation.harness --device cpu --out validation/data/NAME/``.

Writes ``kernels.csv``, ``collectives.csv`` and ``env.json`` into ``--out`` (format in
validation/README.md). Needs only the Python standard library and torch; it does not import simfoe.
Progress goes to stderr; a one-line JSON summary goes to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from validation import FORMAT_VERSION
from validation.bench_collectives import COLLECTIVE_COLUMNS, COLLECTIVES, FULL_SIZES, QUICK_SIZES, run_collectives
from validation.bench_common import (DTYPES, FULL_POLICY, GEMM_ONLY_DTYPES, QUICK_POLICY, TimingPolicy, available_cpus,
                                     log, other_op_dtypes, write_csv)
from validation.bench_env import collect_env, last_level_cache_bytes
from validation.bench_kernels import KERNEL_BENCHES, KERNEL_COLUMNS, KernelContext, run_kernels, shape_set

ALL_OPS = tuple(KERNEL_BENCHES) + ("collectives",)
DEFAULT_DTYPES = {"cpu": ("fp32", "bf16"), "cuda": ("bf16",)}
"""GEMM dtypes by device; the other kernel ops use the first dtype only (override with --dtypes). A GPU
with fp8 tensor cores (compute capability 8.9 and up) adds fp8 GEMMs (:func:`default_dtypes`)."""


def default_dtypes(device: str) -> tuple[str, ...]:
    """:data:`DEFAULT_DTYPES` for ``device``, plus ``fp8`` on a CUDA GPU of compute capability >= 8.9."""
    if device == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(0) >= (8, 9):
        return DEFAULT_DTYPES["cuda"] + ("fp8",)
    return DEFAULT_DTYPES[device]


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str, field: str) -> list[int]:
    try:
        vals = [int(t) for t in _csv_list(text)]
    except ValueError:
        raise _Usage(f"{field}={text!r}: expected comma-separated integers") from None
    if not vals or min(vals) < 1:
        raise _Usage(f"{field}={text!r}: expected positive integers")
    return vals


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m validation.harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", required=True, help="output folder (created); files inside are overwritten")
    p.add_argument("--quick", action="store_true", help="small grid and short timing (~30 s on a CPU)")
    p.add_argument("--ops", default="all", help=f"comma list of {','.join(ALL_OPS)} or 'all'")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for kernels on CPU (default 1)")
    p.add_argument("--gemm-threads", default=None,
                   help="comma list of thread counts for GEMM on CPU (default: --threads); e.g. 1,2")
    p.add_argument("--dtypes", default=None,
                   help="comma list of fp32,bf16,fp16,fp8 (default cpu: fp32,bf16; cuda: bf16, plus fp8 GEMMs on "
                        "compute capability >= 8.9); fp8 times GEMMs only (torch._scaled_mm), the other ops take "
                        "the first other dtype")
    p.add_argument("--world-sizes", default=None,
                   help="comma list of process counts for collectives (default cpu: 2,4; cuda: 2,4,8 up to GPUs)")
    p.add_argument("--backend", choices=("gloo", "nccl"), default=None,
                   help="collective backend (default gloo on cpu, nccl on cuda)")
    p.add_argument("--collective-sizes", default=None, help="comma list of byte sizes (nccl-tests 'size')")
    p.add_argument("--budget-s", type=float, default=None, help="timed seconds per point (overrides the mode)")
    p.add_argument("--concurrent", type=int, default=1,
                   help="CPU only: run the kernel grid in N processes at once (they share DRAM bandwidth and "
                        "the last-level cache, as N workers of one node do) and keep each point's slowest "
                        "process; collectives are unaffected (default 1)")
    p.add_argument("--gemm-draws", type=int, default=None,
                   help="CPU: measure the gemm grid in N fresh sets of processes and keep each point's median "
                        "draw: below m = 192 MKL's time for n = 2048 or 4096 can move 10-60%% between process "
                        "sets and between hours; draws guard against one unlucky set (default 3, --quick 1)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="CUDA: time each kernel point replayed from a CUDA graph (device time, timing=cuda_graph) "
                        "and again as an eager loop (variant suffix _eager, timing=cuda_events: the host's launch "
                        "rate where that is slower); --no-cuda-graphs keeps the eager rows only (default on)")
    p.add_argument("--flush-mb", type=int, default=None,
                   help="CPU: MiB read before each sample of the cold (in-pass) variants of gemm, grouped_ffn and "
                        "routing_glue, the weights a forward pass streams between two calls of a layer's op "
                        "(default 256, --quick 16; 0 skips them)")
    return p.parse_args(argv)


class _Usage(ValueError):
    """Bad command-line input: main prints ``error: <message>`` on stderr and exits 2."""


@dataclass(frozen=True)
class _Checked:
    """The checked selection of a run: ops, dtypes and CPU thread counts for GEMM."""

    ops: list[str]
    dtypes: tuple[str, ...]
    gemm_threads: list[int]


def _check_args(args: argparse.Namespace) -> _Checked:
    """Check the command line (``_Usage`` naming the flag, its value and what is allowed) and fill in the
    derived ``args.flush_bytes`` (bytes) and the default ``args.gemm_draws``."""
    ops = list(ALL_OPS) if args.ops == "all" else _csv_list(args.ops)
    bad = [o for o in ops if o not in ALL_OPS]
    if bad:
        raise _Usage(f"--ops={args.ops!r}: unknown {','.join(bad)}; allowed {','.join(ALL_OPS)} or all")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise _Usage("--device=cuda: torch.cuda.is_available() is False")
    if args.threads < 1:
        raise _Usage(f"--threads={args.threads}: must be >= 1")
    dtypes = tuple(_csv_list(args.dtypes)) if args.dtypes else default_dtypes(args.device)
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        raise _Usage(f"--dtypes={args.dtypes!r}: allowed {','.join(DTYPES)}")
    if not other_op_dtypes(dtypes) and any(op not in ("gemm", "collectives") for op in ops):
        raise _Usage(f"--dtypes={args.dtypes!r}: {','.join(GEMM_ONLY_DTYPES)} times GEMMs only; add fp32, bf16 "
                     "or fp16 for the other ops, or pass --ops gemm")
    if args.device == "cpu" and "fp8" in dtypes:
        log("note: fp8 on a CPU runs torch's emulated _scaled_mm (about 0.1 GFLOP/s here): it checks the "
            "plumbing, it does not measure fp8 hardware")
    gemm_threads = _int_list(args.gemm_threads, "--gemm-threads") if args.gemm_threads else [args.threads]
    for flag, text in (("--world-sizes", args.world_sizes), ("--collective-sizes", args.collective_sizes)):
        if text:  # checked before anything is measured or written; _collectives reads them again
            _int_list(text, flag)
    if args.backend == "nccl" and not torch.cuda.is_available():
        raise _Usage("--backend=nccl: needs CUDA GPUs (torch.cuda.is_available() is False)")
    if args.flush_mb is not None and args.flush_mb < 0:
        raise _Usage(f"--flush-mb={args.flush_mb}: must be >= 0 (0 skips the cold rows)")
    args.flush_bytes = 0 if args.device == "cuda" else (
        args.flush_mb if args.flush_mb is not None else 16 if args.quick else 256) * 1024 ** 2
    if args.concurrent < 1 or (args.concurrent > 1 and args.device != "cpu"):
        raise _Usage(f"--concurrent={args.concurrent}: an integer >= 1, and > 1 only with --device cpu")
    if args.gemm_draws is None:
        args.gemm_draws = 1 if args.quick or args.device == "cuda" else 3
    if args.gemm_draws < 1 or (args.gemm_draws > 1 and args.device != "cpu"):
        raise _Usage(f"--gemm-draws={args.gemm_draws}: an integer >= 1, and > 1 only with --device cpu")
    return _Checked(ops, dtypes, gemm_threads)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sel = _check_args(args)
    except _Usage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ops, dtypes, gemm_threads = sel.ops, sel.dtypes, sel.gemm_threads

    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    base = QUICK_POLICY if args.quick else FULL_POLICY
    policy = base if args.budget_s is None else TimingPolicy(
        base.warmup_s, args.budget_s, base.min_repeats, base.max_repeats, base.min_sample_s, base.min_warmup)
    os.makedirs(args.out, exist_ok=True)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already fixed once parallel work ran; recorded in env.json either way
    torch.set_num_threads(args.threads)

    env = _run_env(args, argv, device, policy, sel)
    cap = 2 * 1024 ** 3 if args.device == "cuda" else 512 * 1024 ** 2
    ctx = KernelContext(device=device, policy=policy, cache_bytes=env["last_level_cache_bytes"], rotate_mem_cap_bytes=cap,
                        flush_bytes=args.flush_bytes, cuda_graphs=args.cuda_graphs)
    shapes = shape_set(args.device, args.quick)
    kernel_rows: list[dict] = []
    coll_rows: list[dict] = []
    t_all = time.perf_counter()
    for op in ops:
        t0 = time.perf_counter()
        if op == "collectives":
            coll_rows = _collectives(args, device, policy, env)
        else:
            kernel_rows += _kernel_op(args, op, ctx, shapes, dtypes, gemm_threads, policy, env)
        env["op_wall_s"][op] = round(time.perf_counter() - t0, 2)
        env["loadavg_after_op"][op] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        # write after every op so that an interrupted run keeps what it measured
        write_csv(os.path.join(args.out, "kernels.csv"), KERNEL_COLUMNS, kernel_rows)
        write_csv(os.path.join(args.out, "collectives.csv"), COLLECTIVE_COLUMNS, coll_rows)
        _write_env(args.out, env)
    env["total_wall_s"] = round(time.perf_counter() - t_all, 2)
    env["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write_csv(os.path.join(args.out, "kernels.csv"), KERNEL_COLUMNS, kernel_rows)
    write_csv(os.path.join(args.out, "collectives.csv"), COLLECTIVE_COLUMNS, coll_rows)
    _write_env(args.out, env)
    print(json.dumps({"out": args.out, "kernels": len(kernel_rows), "collectives": len(coll_rows),
                      "wall_s": env["total_wall_s"]}))
    return 0


def _run_env(args: argparse.Namespace, argv, device, policy, sel: _Checked) -> dict:
    """env.json's contents at the start: the machine (:func:`collect_env`) and how this run measures."""
    ops, dtypes, gemm_threads = sel.ops, sel.dtypes, sel.gemm_threads
    env = collect_env(device, args.threads)
    env.update({
        "format_version": FORMAT_VERSION,
        "argv": list(sys.argv if argv is None else ["validation.harness", *argv]),
        "mode": "quick" if args.quick else "full",
        "ops": ops,
        "dtypes": list(dtypes),
        "gemm_threads": gemm_threads if args.device == "cpu" else None,
        "timing_policy": policy.__dict__,
        "timing_method": ("CUDA events around a loop of calls after torch.cuda.synchronize"
                          if args.device == "cuda" else "time.perf_counter around a loop of calls"),
        "last_level_cache_bytes": last_level_cache_bytes(device),
        "op_wall_s": {},
        "loadavg_after_op": {},
        "concurrent_processes": args.concurrent,
        "flush_bytes": args.flush_bytes,
        "gemm_draws": args.gemm_draws,
        "cuda_graphs": bool(args.cuda_graphs and args.device == "cuda"),
    })
    return env


def _kernel_op(args: argparse.Namespace, op: str, ctx, shapes, dtypes: tuple, gemm_threads: list, policy,
               env: dict) -> list[dict]:
    """The kernel rows of ``op``: median of N concurrent draws (gemm), N concurrent processes, each GEMM
    thread count in turn, or one pass."""
    if op == "gemm" and args.gemm_draws > 1:
        draws = []
        for d in range(args.gemm_draws):
            log(f"[gemm] draw {d + 1}/{args.gemm_draws}: {args.concurrent} concurrent process(es)")
            draws.append(_concurrent_kernels(args, op, dtypes, gemm_threads, policy, env))
        return median_draw(draws)
    if args.concurrent > 1:
        log(f"[{op}] {args.concurrent} concurrent processes")
        return _concurrent_kernels(args, op, dtypes, gemm_threads, policy, env)
    if op == "gemm":
        rows = []
        for thr in (gemm_threads if args.device == "cpu" else [args.threads]):
            torch.set_num_threads(thr)
            log(f"[gemm] threads={thr}")
            rows += run_kernels(ctx, op, shapes, dtypes)
        torch.set_num_threads(args.threads)
        return rows
    log(f"[{op}]")
    return run_kernels(ctx, op, shapes, other_op_dtypes(dtypes))


_TIMING_COLUMNS = ("median_s", "p10_s", "p90_s", "min_s", "max_s", "cpu_median_s", "cpu_p10_s", "cpu_p90_s",
                   "repeats", "inner", "warmup", "buffers")


def _kernel_worker(rank: int, op: str, args: argparse.Namespace, dtypes: tuple, gemm_threads: list, policy,
                   cache_bytes: int, barrier, queue) -> None:
    """One of N processes measuring the same kernel grid at the same time (CPU)."""
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    ctx = KernelContext(device=torch.device("cpu"), policy=policy, cache_bytes=cache_bytes,
                        rotate_mem_cap_bytes=512 * 1024 ** 2, flush_bytes=args.flush_bytes)
    shapes = shape_set("cpu", args.quick)
    barrier.wait()
    rows: list[dict] = []
    if op == "gemm":
        for thr in gemm_threads:
            torch.set_num_threads(thr)
            rows += run_kernels(ctx, op, shapes, dtypes) if rank == 0 else _quiet(ctx, op, shapes, dtypes)
    else:
        torch.set_num_threads(args.threads)
        one = other_op_dtypes(dtypes)
        rows += run_kernels(ctx, op, shapes, one) if rank == 0 else _quiet(ctx, op, shapes, one)
    queue.put((rank, rows))


def _quiet(ctx, op, shapes, dtypes) -> list[dict]:
    from validation.bench_kernels import KERNEL_BENCHES

    return list(KERNEL_BENCHES[op](ctx, shapes, dtypes))


def _concurrent_kernels(args: argparse.Namespace, op: str, dtypes: tuple, gemm_threads: list, policy, env: dict) -> list[dict]:
    """Run ``op``'s grid in ``args.concurrent`` processes at once; keep, per point, the slowest row.

    The processes walk the same grid in the same order and start together (a barrier), so each point
    is timed while the others run comparable kernels: the contended per-worker figure a node of N
    CPU "GPUs" (one process each) actually gets.
    """
    import multiprocessing as mp

    mctx = mp.get_context("spawn")
    barrier = mctx.Barrier(args.concurrent)
    queue = mctx.Queue()
    procs = [mctx.Process(target=_kernel_worker, args=(r, op, args, dtypes, gemm_threads, policy,
                                                        env["last_level_cache_bytes"], barrier, queue))
             for r in range(args.concurrent)]
    for pr in procs:
        pr.start()
    results = dict(queue.get() for _ in procs)
    for pr in procs:
        pr.join()
    merged: dict = {}
    for rank in sorted(results):
        for row in results[rank]:
            key = _row_key(row)
            if key not in merged or row["median_s"] > merged[key]["median_s"]:
                merged[key] = row
    return list(merged.values())


def _row_key(row: dict) -> tuple:
    return tuple((k, v) for k, v in row.items() if k not in _TIMING_COLUMNS)


def median_draw(draws: list[list[dict]]) -> list[dict]:
    """Per point, the row of the median draw by ``cpu_median_s`` (``median_s`` where CPU time is absent;
    the upper middle for an even count), with ``draws`` = how many draws timed it and ``draw_spread`` =
    slowest / fastest - 1 over them. Rows keep the first draw's order."""
    by_key: dict = {}
    for rows in draws:
        for row in rows:
            by_key.setdefault(_row_key(row), []).append(row)
    out = []
    for group in by_key.values():
        t = [r.get("cpu_median_s") if r.get("cpu_median_s") is not None else r["median_s"] for r in group]
        order = sorted(range(len(group)), key=t.__getitem__)
        row = dict(group[order[len(group) // 2]])
        row.update(draws=len(group), draw_spread=round(max(t) / min(t) - 1, 4) if min(t) > 0 else None)
        out.append(row)
    return out


def _write_env(out: str, env: dict) -> None:
    with open(os.path.join(out, "env.json"), "w") as fh:
        json.dump(env, fh, indent=1, sort_keys=True, default=str)
        fh.write("\n")


def _collectives(args: argparse.Namespace, device: torch.device, policy: TimingPolicy, env: dict) -> list[dict]:
    backend = args.backend or ("nccl" if device.type == "cuda" else "gloo")
    dev_type = "cuda" if backend == "nccl" else "cpu"
    if args.world_sizes:
        world_sizes = _int_list(args.world_sizes, "--world-sizes")
    elif dev_type == "cuda":
        world_sizes = [w for w in (2, 4, 8) if w <= torch.cuda.device_count()]
    else:
        world_sizes = [2] if args.quick else [2, 4]
    sizes = _int_list(args.collective_sizes, "--collective-sizes") if args.collective_sizes else \
        list(QUICK_SIZES if args.quick else FULL_SIZES)
    info: dict = {"backend": backend, "world_sizes": world_sizes, "sizes": sizes, "threads_per_rank": 1,
                  "transport": "TCP over 127.0.0.1" if backend == "gloo" else "NCCL (intra-node)"}
    if dev_type == "cuda":
        too_big = [w for w in world_sizes if w > torch.cuda.device_count()]
        if too_big:
            raise SystemExit(f"error: --world-sizes={too_big}: only {torch.cuda.device_count()} GPUs (one rank per GPU)")
    if not world_sizes:
        info["skipped"] = f"{backend}: needs at least 2 GPUs, found {torch.cuda.device_count()}"
        log(f"[collectives] skipped: {info['skipped']}")
        env["collectives"] = info
        return []
    cpus = available_cpus()
    if dev_type == "cpu":
        info["oversubscribed_world_sizes"] = [w for w in world_sizes if w > cpus]
        info["note"] = (f"{cpus} CPUs available; world sizes above that time-share cores, so their "
                        f"times include scheduling and are not a network model")
    env["collectives"] = info
    log(f"[collectives] {backend} world_sizes={world_sizes}")
    # samples of at least 5 ms (full mode) amortise the barrier-exit skew between ranks
    cpol = policy if args.quick else TimingPolicy(policy.warmup_s, policy.budget_s, policy.min_repeats,
                                                  policy.max_repeats, max(policy.min_sample_s, 5e-3), policy.min_warmup)
    info["timing_policy"] = cpol.__dict__
    return run_collectives(backend, dev_type, world_sizes, sizes, cpol, threads_per_rank=1, collectives=COLLECTIVES)


if __name__ == "__main__":
    sys.exit(main())
