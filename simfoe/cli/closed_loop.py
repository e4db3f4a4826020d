"""Closed-loop workload flags (``--concurrency N --isl L --osl L ...``), shared by the commands that take
a workload; the workload itself is :class:`simfoe.workloads.closed_loop.ClosedLoop`."""
from __future__ import annotations

#: ClosedLoop fields -> the flags that set them
CLOSED_LOOP_FLAGS = {"concurrency": "--concurrency", "isl": "--isl", "osl": "--osl",
                     "random_range_ratio": "--random-range-ratio", "num_prompts": "--num-prompts", "warmup": "--warmup"}
#: open-loop flags a closed loop has no use for
OPEN_LOOP_FLAGS = {"trace": "--trace", "rate": "--rate", "duration": "--duration", "arrival": "--arrival"}


def add_closed_loop_flags(p) -> None:
    """The closed-loop flags (vLLM benchmark_serving.py's random dataset at --max-concurrency)."""
    g = p.add_argument_group("closed-loop workload (instead of --trace; as vLLM's benchmark_serving.py with "
                             "--dataset-name random --request-rate inf --ignore-eos)")
    g.add_argument("--concurrency", type=int, default=None,
                   help="clients, each sending its next request when its last one finishes (--max-concurrency)")
    g.add_argument("--isl", type=int, default=None, help="prompt tokens per request (--random-input-len)")
    g.add_argument("--osl", type=int, default=None, help="output tokens per request, ignore_eos (--random-output-len)")
    g.add_argument("--random-range-ratio", type=float, default=None,
                   help="draw lengths uniformly from [L (1 - R), L (1 + R)], R in [0, 1) (default 0: fixed)")
    g.add_argument("--num-prompts", type=int, default=None, help="measured requests (default 10 x --concurrency)")
    g.add_argument("--warmup", type=int, default=None,
                   help="warm-up requests run first and left out of every metric (--num-warmups; default 0)")


def workload_of(args):
    """``args.trace``, or the :class:`ClosedLoop` the closed-loop flags describe; a SpecError naming the
    flag when the two kinds are mixed or --concurrency lacks --isl/--osl."""
    from simfoe.errors import SpecError
    from simfoe.workloads.closed_loop import ClosedLoop

    given = {f: getattr(args, f, None) for f in CLOSED_LOOP_FLAGS}
    if given["concurrency"] is None:
        extra = next((CLOSED_LOOP_FLAGS[f] for f, v in given.items() if v is not None), None)
        if extra is not None:
            raise SpecError(extra, given[extra.lstrip("-").replace("-", "_")], "only with --concurrency (a closed loop)")
        if args.trace is None:
            raise SpecError("--trace", None, "a trace file or built-in name, or a closed loop: --concurrency N "
                            "--isl L --osl L")
        return args.trace
    for f, flag in OPEN_LOOP_FLAGS.items():
        if getattr(args, f, None) is not None:
            raise SpecError(flag, getattr(args, f), "omitted with --concurrency (a closed loop: its clients send "
                            "the requests)")
    for f in ("isl", "osl"):
        if given[f] is None:
            raise SpecError(CLOSED_LOOP_FLAGS[f], None, f"an integer >= 1 with --concurrency ({f} tokens)")
    kw = {f: v for f, v in given.items() if v is not None}
    return ClosedLoop(**kw)
