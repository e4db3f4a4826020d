"""Request-level serving simulation: vLLM-like continuous batching on replicas of one layout.

Entry points: :func:`run_serve` (JSON summary of ``simfoe serve``), :func:`simulate_serving`
(from preset names) and :func:`simulate` (any step model); results carry per-request records as
a pandas DataFrame. See docs/serving.md.
"""
from simfoe.serving.api import ServingResult, build_forward, run_serve, simulate, simulate_serving, summarize
from simfoe.serving.engine import EngineConfig
from simfoe.serving.router import ROUTERS, register_router
from simfoe.serving.scheduler import SCHEDULERS, register_scheduler
from simfoe.serving.step_models import (
    ConstantStep, InterpCost, LinearStep, MemoCost, StepModel, StepModelBase, bucket_up, make_cost,
)

__all__ = [
    "ConstantStep", "EngineConfig", "InterpCost", "LinearStep", "MemoCost", "StepModel", "StepModelBase", "make_cost",
    "ROUTERS", "SCHEDULERS", "ServingResult", "bucket_up",
    "build_forward", "register_router", "register_scheduler", "run_serve", "simulate", "simulate_serving",
    "summarize",
]
