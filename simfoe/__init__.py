"""simfoe: performance simulator and planner for MoE vs Federation-of-Experts inference
and ALTO-style compound AI pipelines.

Units everywhere: seconds, bytes, bytes/s, FLOP, FLOP/s.
"""
__version__ = "0.1.0"
