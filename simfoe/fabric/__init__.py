"""Fabric: cluster topology graph and flow-level link sharing on SimPy."""
from simfoe.fabric.flows import FlowNetwork
from simfoe.fabric.topology import Cluster, build_cluster

__all__ = ["Cluster", "FlowNetwork", "build_cluster"]
