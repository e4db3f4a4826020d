"""Token-to-expert routing, sampled in bulk with numpy.

Each distribution yields per-layer expert probabilities; each token draws k distinct experts
(see ``sample_topk``), from at most ``topk_group`` expert groups where the model limits them
(``sample_topk_grouped``, DeepSeek-V3). From the choices follow per-expert loads, the GPU-to-GPU
dispatch traffic, the local activation rate (LAR): the share of expert activations served on the
token's own GPU, and the distinct nodes a token's choices reach.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simfoe.errors import SpecError
from simfoe.specs.routing import RoutingSpec

#: Above this many tokens, routing is sampled on a proportional subset and the loads and traffic
#: scaled (draws are i.i.d. per token; at 32k sampled tokens the per-expert sampling error of a
#: 256-expert top-8 model is ~3%, below the natural token-count noise of real batches of that size).
MAX_SAMPLED_TOKENS = 32768


def expert_probs(spec: RoutingSpec, n_experts: int, n_layers: int, rng: np.random.Generator) -> np.ndarray:
    """Expert-choice probabilities, shape (n_layers, n_experts), rows sum to 1."""
    E = n_experts
    if spec.kind == "uniform":
        return np.full((n_layers, E), 1.0 / E)
    if spec.kind == "zipf":
        base = 1.0 / np.arange(1, E + 1) ** spec.s
        base /= base.sum()
        # which experts are popular differs by layer: a seeded permutation per layer
        perms = np.argsort(rng.random((n_layers, E)), axis=1)
        return base[perms]
    if spec.kind == "dirichlet":
        return rng.dirichlet(np.full(E, spec.alpha), size=n_layers)
    if spec.kind == "hotset":
        n_hot = max(1, min(E, int(round(spec.hot_fraction * E))))
        p = np.empty((n_layers, E))
        for layer in range(n_layers):
            hot = rng.choice(E, n_hot, replace=False)
            row = np.full(E, (1 - spec.hot_share) / max(E - n_hot, 1))
            row[hot] = spec.hot_share / n_hot
            if n_hot == E:
                row[:] = 1.0 / E
            p[layer] = row / row.sum()
        return p
    if spec.kind == "trace":
        return _load_trace_probs(spec.path, E, n_layers)
    raise SpecError("routing", spec.kind, "uniform | zipf | dirichlet | hotset | trace")


def _load_trace_probs(path: str | None, E: int, n_layers: int) -> np.ndarray:
    """Per-layer expert probabilities from a .npy or .csv of per-expert counts (one row per layer;
    fewer rows than layers are cycled). Malformed files raise SpecError naming the file."""
    value = f"trace:{path}"
    p = Path(path or "")
    if not p.is_file():
        raise SpecError("routing", value, "a path to a .npy or .csv of per-expert counts (one row per layer)")
    want = f"rows of {E} finite non-negative counts with a positive sum (one row per layer)"
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise SpecError("routing", value, "a numeric .npy array of per-expert counts (the file is not one: "
                            f"{_why(e)})") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            kind = getattr(arr, "dtype", type(arr).__name__)
            raise SpecError("routing", value, f"a numeric .npy array of per-expert counts (dtype {kind})")
        arr = arr.astype(float)
    else:
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError("routing", value, "a UTF-8 text CSV of per-expert counts (this is not a UTF-8 text file)") from None
        except OSError as e:
            raise SpecError("routing", value, f"a readable file ({_why(e)})") from None
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                rows.append([float(x) for x in line.split(",")])
            except ValueError:
                raise SpecError("routing", value, f"{want}; line {i} is not comma-separated numbers") from None
            if len(rows[-1]) != len(rows[0]):
                raise SpecError("routing", value, f"{want}; line {i} has {len(rows[-1])} values, the first row {len(rows[0])}")
        if not rows:
            raise SpecError("routing", value, f"{want}; the file has no rows")
        arr = np.asarray(rows, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise SpecError("routing", value, f"{want}; got an array of shape {tuple(arr.shape)}")
    if arr.shape[1] != E:
        raise SpecError("routing", value, f"{want}; rows have {arr.shape[1]} values")
    if not np.isfinite(arr).all():
        raise SpecError("routing", value, f"{want}; the file holds nan or inf")
    if (arr < 0).any() or (arr.sum(axis=1) <= 0).any() or not np.isfinite(arr.sum(axis=1)).all():
        raise SpecError("routing", value, want)
    arr = arr / arr.sum(axis=1, keepdims=True)
    return arr[np.arange(n_layers) % arr.shape[0]]


def _why(e: Exception) -> str:
    text = (getattr(e, "strerror", None) or str(e) or type(e).__name__).splitlines()[0]
    return text.split(". ")[0][:80]


@dataclass(frozen=True)
class GroupLimit:
    """Group-limited routing (DeepSeek-V3 ``n_group`` / ``topk_group``): the experts form ``n_group`` groups
    of consecutive ids, E / n_group each, and a token's experts come from at most ``topk_group`` of them."""

    n_group: int
    topk_group: int

    @classmethod
    def of(cls, moe) -> GroupLimit | None:
        """The limit of a :class:`simfoe.specs.model.MoESpec`; None when it limits nothing (or no MoE)."""
        if moe is None or moe.groups_per_token >= moe.n_group:
            return None
        return cls(moe.n_group, moe.groups_per_token)


def sample_topk(probs: np.ndarray, n_tokens: int, k: int, rng: np.random.Generator,
                limit: GroupLimit | None = None) -> np.ndarray:
    """(n_tokens, k) distinct expert ids per token (``limit``: group-limited, see :func:`sample_topk_grouped`).

    Draws k experts i.i.d. from ``probs`` (inverse CDF) and redraws the rows that repeat an expert,
    i.e. samples k-sets with probability proportional to the product of their probabilities
    (exactly uniform k-sets for uniform routing). Rows still repeating after a few rounds (very
    skewed distributions) fall back to Gumbel-top-k (sequential sampling without replacement).
    """
    if limit is not None:
        return sample_topk_grouped(probs, n_tokens, k, rng, limit)
    E = probs.shape[0]
    if k == E:
        return np.broadcast_to(np.arange(E), (n_tokens, E)).copy()
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    choices = np.minimum(np.searchsorted(cdf, rng.random((n_tokens, k)), side="right"), E - 1)
    if k == 1:
        return choices
    for _ in range(8):
        srt = np.sort(choices, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
        nd = int(dup.sum())
        if nd == 0:
            return choices
        choices[dup] = np.minimum(np.searchsorted(cdf, rng.random((nd, k)), side="right"), E - 1)
    srt = np.sort(choices, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
    if dup.any():
        with np.errstate(divide="ignore"):
            keys = np.log(probs) + rng.gumbel(size=(int(dup.sum()), E))
        choices[dup] = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    return choices


def sample_topk_grouped(probs: np.ndarray, n_tokens: int, k: int, rng: np.random.Generator,
                        limit: GroupLimit) -> np.ndarray:
    """(n_tokens, k) distinct expert ids per token, all inside at most ``limit.topk_group`` groups.

    DeepSeek-V3 ranks a token's groups by the sum of their two best expert scores and takes the top
    ``topk_group``; a distribution gives expert probabilities, not per-token scores, so here:

    1. groups: t = min(k, topk_group) distinct groups per token, drawn without replacement in proportion
       to each group's share of ``probs`` (Plackett-Luce: Gumbel-top-t on the log group masses);
    2. a chosen group is chosen for its best experts, so each serves one of the token's experts (its
       lead, drawn in proportion to ``probs`` inside the group);
    3. the other k - t experts are drawn in proportion to ``probs`` from all chosen groups' experts;
       rows repeating an expert redraw them (then Gumbel-top-k, as :func:`sample_topk`).

    Uniform routing stays exactly uniform per expert. Skewed ones keep their per-expert marginals
    closely (256 experts, top-8, 8 groups, top-4 groups; correlation with the ungrouped sampler's
    marginals >= 0.99 for zipf:1.2, zipf:0.8, dirichlet:0.3, hotset:0.1:0.5), slightly sharper: the
    hottest expert gains up to 8% (tests/test_group_routing.py).
    """
    G, t = limit.n_group, min(k, limit.topk_group)
    E = probs.shape[0]
    m = E // G
    cum = np.concatenate(([0.0], np.cumsum(probs)))
    start = cum[0:E:m]  # cumulative mass before each group, (G,)
    mass = cum[m::m] - start
    with np.errstate(divide="ignore"):
        keys = np.log(mass) + rng.gumbel(size=(n_tokens, G))
    groups = np.argpartition(-keys, t - 1, axis=1)[:, :t] if t < G else np.tile(np.arange(G), (n_tokens, 1))
    leads = _draw_in_groups(cum, groups, start[groups] + rng.random((n_tokens, t)) * mass[groups], m)
    r = k - t
    if r == 0:
        return leads
    gm = mass[groups]  # (n, t) masses of each token's chosen groups
    rest = _draw_in_union(cum, groups, gm, m, r, rng)
    dup = np.flatnonzero(_has_repeat(np.concatenate([leads, rest], axis=1)))  # rows to redraw
    for _ in range(8):
        if dup.size == 0:
            break
        rest[dup] = _draw_in_union(cum, groups[dup], gm[dup], m, r, rng)
        dup = dup[_has_repeat(np.concatenate([leads[dup], rest[dup]], axis=1))]
    if dup.size:  # very skewed: Gumbel-top-r among the chosen groups' experts other than the leads
        nd = dup.size
        with np.errstate(divide="ignore"):  # experts of probability 0 rank last, yet above those not allowed
            keys = np.maximum(np.log(probs), -1e30) + rng.gumbel(size=(nd, E))
        allowed = np.zeros((nd, G), dtype=bool)
        np.put_along_axis(allowed, groups[dup], True, axis=1)
        keys[~np.repeat(allowed, m, axis=1)] = -np.inf
        np.put_along_axis(keys, leads[dup], -np.inf, axis=1)
        rest[dup] = np.argpartition(-keys, r - 1, axis=1)[:, :r]
    return np.concatenate([leads, rest], axis=1)


def _draw_in_groups(cum: np.ndarray, groups: np.ndarray, pos: np.ndarray, m: int) -> np.ndarray:
    """Expert at cumulative-mass position ``pos`` (inverse CDF), kept inside its group (``groups``, same shape)."""
    e = np.searchsorted(cum, pos, side="right") - 1
    return np.clip(e, groups * m, groups * m + m - 1)


def _draw_in_union(cum: np.ndarray, groups: np.ndarray, gm: np.ndarray, m: int, r: int,
                   rng: np.random.Generator) -> np.ndarray:
    """(n, r) experts drawn in proportion to their probability from the union of each row's ``groups``
    (``gm``: those groups' masses)."""
    cgm = np.cumsum(gm, axis=1)
    v = rng.random((groups.shape[0], r)) * cgm[:, -1:]
    idx = np.minimum((v[:, :, None] >= cgm[:, None, :]).sum(axis=2), groups.shape[1] - 1)
    g = np.take_along_axis(groups, idx, axis=1)
    below = np.take_along_axis(cgm - gm, idx, axis=1)  # mass of the row's chosen groups before g
    return _draw_in_groups(cum, g, cum[g * m] + (v - below), m)


def _has_repeat(choices: np.ndarray) -> np.ndarray:
    """Rows of ``choices`` that name an expert twice."""
    srt = np.sort(choices, axis=1)
    return (srt[:, 1:] == srt[:, :-1]).any(axis=1)


@dataclass(frozen=True)
class RoutingSample:
    """Outcome of routing ``tokens`` tokens of one layer inside one expert-parallel group.

    expert_load: tokens per expert (n_experts,); traffic: (g, g) bytes-free token counts sent
    from source GPU i to expert GPU j (dedup: one copy per destination GPU, else one per choice);
    local: activations served on the source GPU; activations: tokens x k; node_visits: (token, node)
    pairs, the distinct nodes each token's choices reach summed over tokens (0 without a node map).
    """

    expert_load: np.ndarray
    traffic_tokens: np.ndarray
    local: float
    activations: float
    node_visits: float = 0.0


#: Entries a routing memo holds before it is emptied (each holds arrays of n_experts and g x g floats).
ROUTE_MEMO_ENTRIES = 20_000


def route_group(probs: np.ndarray, tokens_per_gpu: np.ndarray, k: int, experts_per_gpu: int,
                dedup: bool, rng: np.random.Generator, slot_map=None, memo: dict | None = None,
                limit: GroupLimit | None = None, node_of: np.ndarray | None = None) -> RoutingSample:
    """Route the tokens held by each GPU of a group of g GPUs; expert e lives on GPU e // experts_per_gpu,
    or, with a ``slot_map`` (:class:`simfoe.forward.eplb.SlotMap`, redundant experts), each choice goes
    to one of its expert's replicas and ``expert_load`` is per slot (slot s on GPU s // slot_map.per_gpu).

    tokens_per_gpu: (g,) token counts on each source GPU. Counts beyond MAX_SAMPLED_TOKENS in total
    are sampled on a proportional subset and scaled back. ``limit``: group-limited routing
    (:func:`sample_topk_grouped`); ``node_of``: (g,) node id of each GPU of the group, for ``node_visits``.

    ``memo``: a dict owned by the caller, for which ``probs`` (or the array it is a view of) and
    ``slot_map`` stay alive and unchanged. A call with
    the same inputs and the same generator state returns the stored sample (read-only arrays) and
    leaves ``rng`` in the state the sampling would have left it: exact, not an approximation. The
    forward model's iteration grids ask for the same token counts at many context lengths.
    """
    if memo is None:
        return _route(probs, tokens_per_gpu, k, experts_per_gpu, dedup, rng, slot_map, limit, node_of)
    st = rng.bit_generator.state
    # probs by address, shape and strides: callers pass views (probs[layer]) of arrays they keep alive
    key = (probs.ctypes.data, probs.shape, probs.strides, id(slot_map), tokens_per_gpu.dtype.str,
           tokens_per_gpu.tobytes(), k, experts_per_gpu, dedup, limit,
           None if node_of is None else node_of.tobytes(),
           st["state"]["state"], st["state"]["inc"], st["has_uint32"], st["uinteger"])
    hit = memo.get(key)
    if hit is not None:
        rng.bit_generator.state = hit[1]
        return hit[0]
    s = _route(probs, tokens_per_gpu, k, experts_per_gpu, dedup, rng, slot_map, limit, node_of)
    for a in (s.expert_load, s.traffic_tokens):
        a.setflags(write=False)
    if len(memo) >= ROUTE_MEMO_ENTRIES:
        memo.clear()
    memo[key] = (s, rng.bit_generator.state)
    return s


def _route(probs: np.ndarray, tokens_per_gpu: np.ndarray, k: int, experts_per_gpu: int, dedup: bool,
           rng: np.random.Generator, slot_map, limit: GroupLimit | None, node_of: np.ndarray | None) -> RoutingSample:
    """:func:`route_group` without a memo: sample the choices and count loads, local activations, traffic."""
    g = tokens_per_gpu.shape[0]
    total = int(tokens_per_gpu.sum())
    E = probs.shape[0] if slot_map is None else slot_map.n_slots
    if total == 0:
        return RoutingSample(np.zeros(E), np.zeros((g, g)), 0.0, 0.0)
    counts, scale = _sampled_counts(tokens_per_gpu, total)
    choices = sample_topk(probs, int(counts.sum()), k, rng, limit)
    if slot_map is not None:
        choices = slot_map.assign(choices, rng)
        experts_per_gpu = slot_map.per_gpu
    src = np.repeat(np.arange(g), counts)
    dst_gpu = choices // experts_per_gpu
    load = np.bincount(choices.ravel(), minlength=E).astype(float) * scale
    local = float((dst_gpu == src[:, None]).sum()) * scale
    per_src = _gpu_pair_counts(src, dst_gpu, g, dedup)
    return RoutingSample(load, per_src * scale, local, float(total * k), _node_visits(dst_gpu, node_of) * scale)


def _sampled_counts(tokens_per_gpu: np.ndarray, total: int) -> tuple[np.ndarray, float]:
    """(tokens to sample per source GPU, the factor that scales their counts back to ``total``): all of them,
    or beyond MAX_SAMPLED_TOKENS a proportional subset (at least one per GPU)."""
    if total <= MAX_SAMPLED_TOKENS:
        return tokens_per_gpu.astype(np.int64), 1.0
    counts = np.maximum(1, np.round(tokens_per_gpu / (total / MAX_SAMPLED_TOKENS))).astype(np.int64)
    return counts, total / counts.sum()


def _gpu_pair_counts(src: np.ndarray, dst_gpu: np.ndarray, g: int, dedup: bool) -> np.ndarray:
    """(g, g) token copies from source GPU i (``src``: each token's) to GPU j (``dst_gpu``: (n, k), each
    choice's): one per choice, or with ``dedup`` one per (token, destination GPU)."""
    pair = src[:, None] * g + dst_gpu  # (n, k) source x destination GPU of every choice
    if dedup:
        # one copy per (token, destination GPU): sort each token's k destinations and keep the first of a run
        pair = np.sort(pair, axis=1)
        first = np.ones(pair.shape, dtype=bool)
        first[:, 1:] = pair[:, 1:] != pair[:, :-1]
        pair = pair[first]
    return np.bincount(pair.ravel(), minlength=g * g).reshape(g, g).astype(float)


def _node_visits(dst_gpu: np.ndarray, node_of: np.ndarray | None) -> float:
    """Distinct nodes each row of ``dst_gpu`` (a token's destination GPUs) reaches, summed over rows."""
    if node_of is None:
        return 0.0
    if (node_of == node_of[0]).all():
        return float(dst_gpu.shape[0])
    nodes = np.sort(node_of[dst_gpu], axis=1)
    return float(dst_gpu.shape[0] + (nodes[:, 1:] != nodes[:, :-1]).sum())
