"""Workloads for the serving simulator: trace loaders, arrival processes, LongBench synthetic.

Main entry point: :func:`make_workload` -> :class:`RequestTable` (arrivals in seconds from 0,
lengths in tokens). See traces/README.md for the file formats.
"""
from simfoe.workloads.arrivals import (
    gamma_arrivals,
    parse_arrival,
    poisson_arrivals,
    renewal_arrivals,
    renewal_arrivals_until,
    rescale_to_rate,
)
from simfoe.workloads.closed_loop import ClosedLoop
from simfoe.workloads.lengths import LognormalLengths, sample_lengths, sample_rows
from simfoe.workloads.loaders import FORMATS, TraceRowError, detect_format, load_trace
from simfoe.workloads.longbench import longbench_requests, longbench_suite
from simfoe.workloads.requests import RequestTable
from simfoe.workloads.workload import BUILTIN_NAMES, make_workload, resolve_trace

__all__ = [
    "BUILTIN_NAMES", "ClosedLoop", "FORMATS", "LognormalLengths", "RequestTable", "TraceRowError", "detect_format",
    "gamma_arrivals", "load_trace", "longbench_requests", "longbench_suite", "make_workload",
    "parse_arrival", "poisson_arrivals", "renewal_arrivals", "renewal_arrivals_until", "rescale_to_rate",
    "resolve_trace", "sample_lengths", "sample_rows",
]
