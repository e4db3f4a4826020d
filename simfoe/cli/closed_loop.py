"""Closed-loop workload flags (``--concurrency N --isl L --osl L ...``), shared by the commands that take
a workload; the workload itself is :class:`simfoe.workloads.closed_loop.ClosedLoop`."""
from __future__ import annotations

#: ClosedLoop fields -> the flags that set them
CLOSED_LOOP_FLAGS = {"concurrency": "--concurrency", "isl": "--isl", "osl": "--osl",
                     "random_range_ratio": "--random-range-ratio", "range_style": "--range-style",
                     "num_prompts": "--num-prompts", "warmup": "--warmup"}


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
    g.add_argument("--range-style", default=None,
                   help="symmetric (default: [L (1 - R), L (1 + R)], vLLM's RandomDataset) | below ([int(L R), L], "
                   "R in (0, 1]: srt-slurm's sa-bench and InferenceX's benchmark_serving.py)")
    g.add_argument("--num-prompts", type=int, default=None, help="measured requests (default 10 x --concurrency)")
    g.add_argument("--warmup", type=int, default=None,
                   help="warm-up requests run first and left out of every metric (--num-warmups; default 0)")


def workload_of(args):
    """``args.trace``, or the :class:`ClosedLoop` the closed-loop flags describe (errors name the flags
    through the command's :data:`CLOSED_LOOP_FLAGS` mapping)."""
    from simfoe.workloads.closed_loop import select_workload

    return select_workload(args.trace, **{f: getattr(args, f, None) for f in CLOSED_LOOP_FLAGS})
