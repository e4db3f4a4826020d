"""Layer programs as plain data (simfoe.costs.program): one dispatcher prices every collective step."""
from __future__ import annotations

import numpy as np
import pytest
import simpy

from simfoe.costs import collectives as coll
from simfoe.costs import dispatch as D
from simfoe.costs.program import Collective, run_step
from simfoe.errors import SpecError
from simfoe.fabric.flows import FlowNetwork
from simfoe.fabric.topology import build_cluster
from simfoe.specs.io import load_hardware

HW = load_hardware("h100-sxm")


def _run(step: Collective, nodes: int) -> tuple[float, dict]:
    """Every group of ``step`` at once on a fresh cluster: (seconds, bytes by tag)."""
    env = simpy.Environment()
    net = FlowNetwork(env, build_cluster(HW, nodes))
    procs = [env.process(run_step(net, step, gi)) for gi in range(len(step.groups))]
    env.run(simpy.AllOf(env, procs))
    return env.now, net.bytes_by_tag


@pytest.mark.parametrize("kind,collective", [("all_reduce", "all_reduce"), ("all_gather", "all_gather"),
                                             ("reduce_scatter", "reduce_scatter")])
@pytest.mark.parametrize("nodes", [1, 2])
def test_a_step_costs_what_its_collective_costs_alone(kind, collective, nodes):
    n = 8 * nodes
    t, tags = _run(Collective(kind, "all_reduce", (np.arange(n),), (2**24,)), nodes)
    assert t == pytest.approx(coll.predict(HW, collective, n, 2**24, "auto", nodes), rel=1e-12)
    assert set(tags) == {"all_reduce"}


def test_dispatch_step_costs_what_the_exchange_costs_alone():
    tr = D.deepep_test_traffic(2, 8, 512, 256, 8, 2, samples=512)
    for op in D.OPS:
        step = Collective(op, op, (np.arange(16),), (tr,), "deepep-normal", 7168.0)
        t, tags = _run(step, 2)
        alone, nbytes = D.run_alone(HW, tr, 7168.0, "deepep-normal", op, 2)
        assert t == pytest.approx(alone, rel=1e-12)
        assert tags["all_to_all"] == pytest.approx(nbytes)


def test_groups_run_side_by_side_and_share_the_fabric():
    """Two 8-GPU all-to-alls, one per node, each 1 MiB to every peer: on NVLink they do not contend, so
    both together take as long as one alone; the bytes are counted once per group."""
    T = np.full((8, 8), 2.0**20) * (1 - np.eye(8))
    one, _ = _run(Collective("all_to_all", "dispatch", (np.arange(8),), (T,), "direct"), 2)
    both, tags = _run(Collective("all_to_all", "dispatch", (np.arange(8), np.arange(8, 16)), (T, T), "direct"), 2)
    assert both == pytest.approx(one, rel=1e-12)
    assert tags["all_to_all"]["intra_node"] == pytest.approx(2 * T.sum())


def test_a_step_names_a_known_kind_and_one_size_per_group():
    with pytest.raises(SpecError, match="collective kind"):
        Collective("broadcast", "all_reduce", (np.arange(2),), (1.0,))
    with pytest.raises(SpecError, match="one per group"):
        Collective("all_reduce", "all_reduce", (np.arange(2), np.arange(2, 4)), (1.0,))
