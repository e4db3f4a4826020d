"""Forward layer: one forward pass (prefill or decode) of a model placed on a cluster."""
from simfoe.forward.simulate import ForwardModel, ForwardResult, IterationCost
from simfoe.forward.work import Work

__all__ = ["ForwardModel", "ForwardResult", "IterationCost", "Work"]
