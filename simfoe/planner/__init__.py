"""Placement planner: search MoE/FoE layouts, node counts, GPU types and replicas for the highest
goodput under latency SLOs, and write a self-contained HTML/JSON recommendation report.

>>> from simfoe.planner import recommend
>>> r = recommend("qwen3-235b-a22b", "h100-sxm", max_nodes=1, slo_ttft_p90=2.0, slo_tbt_p99=0.1)  # doctest: +SKIP
>>> r["recommended"]["label"]  # doctest: +SKIP
"""
from simfoe.planner.layouts import Candidate, enumerate_layouts
from simfoe.planner.search import PlanConfig, Planner, recommend

__all__ = ["Candidate", "PlanConfig", "Planner", "enumerate_layouts", "recommend"]
