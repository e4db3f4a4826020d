"""Stage graph (networkx DAG) and its static checks: names, cycles, reachability, key levels.

Every item carries a key path such as ``(request, claim, query, token)``. The first stage receives
paths of one level, ``request``; a stage whose fan-out has a level adds it, ``parts`` add one
more; a stateful stage cuts the path back to its key level. This module derives, per stage, the
levels of arriving items and the depth each edge forwards, and rejects specs that cannot run.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from simfoe.errors import SpecError
from simfoe.pipelines.spec import EdgeSpec, PipelineSpec, StageSpec

ROOT_LEVEL = "request"


@dataclass(frozen=True)
class EdgeInfo:
    src: int
    dst: int
    depth: int  # path length of the items forwarded on this edge
    dst_port: int  # index among the destination's incoming edges


@dataclass(frozen=True)
class StageGraph:
    graph: nx.DiGraph
    order: tuple[int, ...]  # topological order of stage indices
    in_levels: tuple[tuple[str, ...], ...]  # levels of arriving items, per stage
    out_levels: tuple[tuple[str, ...], ...]  # levels of the finest emitted unit, per stage
    key_depth: tuple[int, ...]  # stateful or stream_into request: path length of the aggregation key, else 0
    edges: tuple[tuple[EdgeInfo, ...], ...]  # outgoing edges per stage
    n_in: tuple[int, ...]  # incoming edges per stage
    sinks: tuple[int, ...]


def build_graph(spec: PipelineSpec) -> StageGraph:
    """Validate ``spec`` as a DAG whose first stage receives requests; derive key levels."""
    names = [s.name for s in spec.stages]
    g = _dag(spec, names)
    order = tuple(nx.lexicographical_topological_sort(g))
    n_stages = len(names)
    in_levels: list[tuple[str, ...] | None] = [None] * n_stages
    out_levels: list[tuple[str, ...]] = [()] * n_stages
    key_depth = [0] * n_stages
    in_levels[0] = (ROOT_LEVEL,)
    edges: list[list[EdgeInfo]] = [[] for _ in range(n_stages)]
    port_count = [0] * n_stages
    for i in order:
        s = spec.stages[i]
        lv = in_levels[i]
        assert lv is not None
        kd = key_depth[i] = _key_depth(s, i, lv, g.in_degree(i))
        base = lv[:kd] if kd else lv
        own = tuple(x for x in (s.level, s.parts_level) if x is not None)
        for x in own:
            if x in base:
                raise SpecError(f"stages.{s.name}.level", x, f"a level name not already used upstream ({', '.join(base)})")
        out = out_levels[i] = base + own
        for e in s.to:
            j = names.index(e.stage)
            depth = _edge_depth(s, e, len(base), own, len(out))
            _arrive(in_levels, j, e.stage, out[:depth])
            edges[i].append(EdgeInfo(i, j, depth, port_count[j]))
            port_count[j] += 1
    sinks = tuple(i for i in order if g.out_degree(i) == 0)
    return StageGraph(
        graph=g, order=order, in_levels=tuple(in_levels), out_levels=tuple(out_levels),  # type: ignore[arg-type]
        key_depth=tuple(key_depth), edges=tuple(tuple(e) for e in edges), n_in=tuple(port_count), sinks=sinks,
    )


def _dag(spec: PipelineSpec, names: list[str]) -> nx.DiGraph:
    """The stage graph of ``spec`` (stage indices, an edge per ``to``): unique names, known destinations named
    once each, no cycle, every stage reachable from the first; else a SpecError naming the stage."""
    idx: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in idx:
            raise SpecError(f"stages[{i}].name", n, "a name not used by another stage")
        idx[n] = i
    g = nx.DiGraph()
    g.add_nodes_from(range(len(names)))
    for i, s in enumerate(spec.stages):
        for e in s.to:
            if e.stage not in idx:
                raise SpecError(f"stages.{s.name}.to", e.stage, f"a stage name ({', '.join(names)})")
            if g.has_edge(i, idx[e.stage]):
                raise SpecError(f"stages.{s.name}.to", e.stage, "each downstream stage once")
            g.add_edge(i, idx[e.stage])
    if not nx.is_directed_acyclic_graph(g):
        cyc = nx.find_cycle(g)
        path = " -> ".join(names[a] for a, _ in cyc) + f" -> {names[cyc[0][0]]}"
        raise SpecError("stages.to", path, "an acyclic stage graph (no cycles)")
    reach = nx.descendants(g, 0) | {0}
    for i, n in enumerate(names):
        if i not in reach:
            raise SpecError(f"stages.{n}", n, f"a stage reachable from the first stage {names[0]!r}")
    return g


def _edge_depth(s: StageSpec, e: EdgeSpec, n_base: int, own: tuple[str, ...], n_out: int) -> int:
    """Path length of the items stage ``s`` forwards on edge ``e``: its finest unit's (``n_out`` levels), or
    that of ``e.unit``, one of its own levels ``own`` after the ``n_base`` levels it keeps."""
    if e.unit is None:
        return n_out
    if e.unit in own:
        return n_base + own.index(e.unit) + 1
    raise SpecError(f"stages.{s.name}.to.{e.stage}.unit", e.unit,
                    f"one of this stage's own levels ({', '.join(own) or 'none: it has no fan-out'})")


def _arrive(in_levels: list, j: int, name: str, levels: tuple[str, ...]) -> None:
    """Items of ``levels`` arrive at stage ``j`` (``name``) on one more edge: the first edge sets its levels,
    every other must bring the same."""
    if in_levels[j] is None:
        in_levels[j] = levels
    elif in_levels[j] != levels:
        raise SpecError(f"stages.{name}", "/".join(levels),
                        f"the same item levels on every input edge (another edge brings {'/'.join(in_levels[j])})")


def _key_depth(s, i: int, lv: tuple[str, ...], n_in: int) -> int:
    """Path length of the key stage ``s`` (index ``i``, ``n_in`` input edges, arriving items of levels ``lv``)
    groups its items by: a stateful stage's ``key``, a ``stream_into: request`` stage's one request per
    upstream job (the arriving units' parent level); 0: no grouping."""
    if s.stateful:
        if i == 0:
            raise SpecError(f"stages.{s.name}.stateful", True,
                            "stateful only on a stage fed by another stage (the first stage gets whole requests)")
        if s.key is None:
            kd = len(lv) - 1
        elif s.key in lv:
            kd = lv.index(s.key) + 1
        else:
            raise SpecError(f"stages.{s.name}.key", s.key, f"a level of the arriving items ({', '.join(lv)})")
        if kd < 1 or (kd == len(lv) and n_in < 2):
            raise SpecError(f"stages.{s.name}.key", s.key or lv[-1],
                            f"a level above the arriving items' own ({', '.join(lv[:-1])}): "
                            "with one input edge each item would be its own aggregate" if len(lv) > 1 else
                            "an upstream fan-out to aggregate (give an upstream stage `outputs`) or "
                            "a second input edge to join")
        return kd
    if s.stream_into == "request":
        if len(lv) < 2:
            raise SpecError(f"stages.{s.name}.stream_into", "request",
                            "new, or request where the arriving items are units of an upstream fan-out "
                            f"(they arrive as whole {lv[-1]}s: give the upstream stage outputs or parts)")
        return len(lv) - 1
    return 0
