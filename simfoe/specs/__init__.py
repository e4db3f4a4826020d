"""Specs: the bottom layer. Typed descriptions of hardware, models, placements and routing,
with YAML I/O, presets and ``--set`` dotted-path overrides. Knows nothing of the layers above."""
from simfoe.specs.hardware import HardwareSpec
from simfoe.specs.model import ModelSpec
from simfoe.specs.placement import PlacementSpec
from simfoe.specs.routing import RoutingSpec, parse_routing

__all__ = ["HardwareSpec", "ModelSpec", "PlacementSpec", "RoutingSpec", "parse_routing"]
