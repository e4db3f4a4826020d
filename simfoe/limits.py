"""Bounds on the size of a run, checked from its inputs before anything is allocated.

A :class:`Limit` bounds one measure of a run's work (requests simulated, GPUs in one model
instance, layouts a placement search screens) and carries what one unit was measured to cost in
wall time and memory, so that a refusal can say what the run would have cost. Every limit can be
raised per call: a ``max_*`` argument of the Python API, a ``--max-*`` flag of the CLI.

The costs were measured on this project's 2-core development host (Python 3.11, the other core
busy with another simulation), end to end with ``/usr/bin/time -f "%e s %M KB"``, as the
difference between two runs of one configuration that differ only in size (so start-up and
forward-model evaluations cancel out); see each limit's ``source``. They are typical, not worst
cases: a run with many DP attention ranks or long outputs costs several times more per request.
"""
from __future__ import annotations

from dataclasses import dataclass

from simfoe.errors import SpecError
from simfoe.outputs import fmt_bytes


def _duration(seconds: float) -> str:
    """A rough wall time: ``40 s``, ``12 min``, ``3.5 h``, ``20 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.3g} days"


@dataclass(frozen=True)
class Limit:
    """An upper bound on ``unit`` in one run (default ``default``), raised by the API argument
    ``option`` or the CLI flag ``flag``; ``s_per_unit`` (s) and ``bytes_per_unit`` (bytes) are the
    measured marginal costs, ``source`` says how they were measured."""

    unit: str
    default: int
    option: str
    flag: str
    s_per_unit: float
    bytes_per_unit: float
    source: str

    def resolve(self, given: int | None) -> int:
        """The bound in force: ``given`` (an integer >= 1) or, when None, the default."""
        if given is None:
            return self.default
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise SpecError(self.option, given, f"an integer >= 1 ({self.unit}; the default is {self.default:,})")
        return given

    def unit_cost(self) -> str:
        """The measured cost of one unit, e.g. ``0.47 ms and 250 bytes per request``."""
        s = self.s_per_unit
        per = f"{s:.3g} s" if s >= 1 else f"{s * 1e3:.3g} ms"
        return f"{per} and {self.bytes_per_unit:,.0f} bytes per {self.unit.rstrip('s')}"

    def estimate(self, count: float) -> str:
        """``count`` units with their measured wall time and memory, in words."""
        return (f"~{count:,.0f} {self.unit}, about {_duration(count * self.s_per_unit)} and "
                f"{fmt_bytes(count * self.bytes_per_unit)} at the measured {self.unit_cost()}")

    def check(self, field: str, value: object, count: float, given: int | None = None, what: str = "") -> None:
        """Raise a SpecError naming ``field`` (``value``) when ``count`` units (``what``: how they are
        counted, e.g. ``"rate x duration"``) exceed the bound in force (``given`` or the default)."""
        bound = self.resolve(given)
        if count > bound:
            how = f" ({what})" if what else ""
            raise SpecError(field, value, f"a run of at most {bound:,} {self.unit}{how}; this one is "
                            f"{self.estimate(count)}; raise the limit with {self.flag} N (Python: {self.option}=N)")


#: Requests one serving simulation may hold (arrivals are generated up front, then simulated).
SERVING_REQUESTS = Limit(
    "requests", 1_000_000, "max_requests", "--max-requests", s_per_unit=4.7e-4, bytes_per_unit=250,
    source="simfoe serve --model mixtral-8x7b --hardware h100-sxm --nodes 1 --replicas 8 --arch moe "
    "--trace longbench --rate 64 --duration 250 vs 2500: 16,171 -> 160,308 requests, 26.0 -> 91.0 s wall, "
    "maxrss 141.5 -> 177.5 MB (olmoe-1b-7b on 2 nodes with DP attention: ~5 ms per request)")

#: Requests one pipeline run may hold (all arrival times are drawn up front).
PIPELINE_REQUESTS = Limit(
    "requests", 1_000_000, "max_requests", "--max-requests", s_per_unit=9.7e-4, bytes_per_unit=200,
    source="simfoe pipeline --spec factool --rate 10 --duration 720 vs 7200: 7,250 -> 72,027 requests, "
    "8.6 -> 71.7 s wall, maxrss 69.7 -> 82.8 MB")

#: The same bound for a pipeline whose LM stages run on the serving engine (``engine:``): dearer per request.
PIPELINE_ENGINE_REQUESTS = Limit(
    "requests", 1_000_000, "max_requests", "--max-requests", s_per_unit=1.8e-3, bytes_per_unit=2_900,
    source="python benchmarks/bench_pipeline.py --spec factool-engine --duration 360 vs 720 (one core, 2026-12-07): "
    "5,382 -> 10,836 requests, 10.8 -> 20.2 s wall, maxrss 155.7 -> 171.6 MB")

#: GPUs of one model instance (the fabric graph and the per-GPU programs grow with them).
INSTANCE_GPUS = Limit(
    "GPUs", 16_384, "max_gpus", "--max-gpus", s_per_unit=2.1e-4, bytes_per_unit=5_200,
    source="simfoe.forward('mixtral-8x7b', 'h100-sxm', nodes=4096 vs 8192, arch='moe', phase='decode', "
    "batch=64, seq_len=4096): 32,768 -> 65,536 GPUs, 5.4 -> 12.3 s wall, maxrss 241 -> 412 MB "
    "(per_layer=True costs more: deepseek-v3 decode on 2048 nodes took 114.6 s and 2.16 GB against "
    "7.4 s and 225 MB without it)")

#: Candidate layouts a placement search may screen (an upper bound counted before enumerating).
PLANNER_LAYOUTS = Limit(
    "layouts", 400, "max_layouts", "--max-layouts", s_per_unit=7.6, bytes_per_unit=780_000,
    source="simfoe recommend --model mixtral-8x7b --hardware h100-sxm --slo-ttft-p90 2 --slo-tbt-p99 0.1 "
    "--no-sensitivity --max-nodes 1/2/4/8: 8/16/32/64 layouts (valid and invalid), 29/60/183/491 s wall, "
    "maxrss 148/154/165/192 MB; per layout at 8 nodes: 491 s / 64, (192 - 148) MB / 56")


def check_instance_gpus(nodes: int, gpus_per_node: int, max_gpus: int | None = None) -> None:
    """Refuse (SpecError naming ``nodes``) an instance of more than ``max_gpus`` GPUs
    (default :data:`INSTANCE_GPUS`) before its fabric and programs are built."""
    INSTANCE_GPUS.check("nodes", nodes, nodes * gpus_per_node, max_gpus, f"nodes x {gpus_per_node} GPUs per node")


#: API arguments that raise a limit: they bound a run and never change its result
LIMIT_OPTIONS = frozenset(lim.option for lim in (SERVING_REQUESTS, PIPELINE_REQUESTS, PIPELINE_ENGINE_REQUESTS,
                                                   INSTANCE_GPUS, PLANNER_LAYOUTS))
