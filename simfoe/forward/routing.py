"""Token-to-expert routing, sampled in bulk with numpy.

Each distribution yields per-layer expert probabilities; each token draws k distinct experts
(see ``sample_topk``).
From the choices follow per-expert loads, the GPU-to-GPU dispatch traffic and the local
activation rate (LAR): the share of expert activations served on the token's own GPU.
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
            raise SpecError("routing", value, f"a numeric .npy array of per-expert counts (dtype {getattr(arr, 'dtype', type(arr).__name__)})")
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


def sample_topk(probs: np.ndarray, n_tokens: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n_tokens, k) distinct expert ids per token.

    Draws k experts i.i.d. from ``probs`` (inverse CDF) and redraws the rows that repeat an expert,
    i.e. samples k-sets with probability proportional to the product of their probabilities
    (exactly uniform k-sets for uniform routing). Rows still repeating after a few rounds (very
    skewed distributions) fall back to Gumbel-top-k (sequential sampling without replacement).
    """
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


@dataclass(frozen=True)
class RoutingSample:
    """Outcome of routing ``tokens`` tokens of one layer inside one expert-parallel group.

    expert_load: tokens per expert (n_experts,); traffic: (g, g) bytes-free token counts sent
    from source GPU i to expert GPU j (dedup: one copy per destination GPU, else one per choice);
    local: activations served on the source GPU; activations: tokens x k.
    """

    expert_load: np.ndarray
    traffic_tokens: np.ndarray
    local: float
    activations: float


#: Entries a routing memo holds before it is emptied (each holds arrays of n_experts and g x g floats).
ROUTE_MEMO_ENTRIES = 20_000


def route_group(probs: np.ndarray, tokens_per_gpu: np.ndarray, k: int, experts_per_gpu: int,
                dedup: bool, rng: np.random.Generator, slot_map=None, memo: dict | None = None) -> RoutingSample:
    """Route the tokens held by each GPU of a group of g GPUs; expert e lives on GPU e // experts_per_gpu,
    or, with a ``slot_map`` (:class:`simfoe.forward.eplb.SlotMap`, redundant experts), each choice goes
    to one of its expert's replicas and ``expert_load`` is per slot (slot s on GPU s // slot_map.per_gpu).

    tokens_per_gpu: (g,) token counts on each source GPU. Counts beyond MAX_SAMPLED_TOKENS in total
    are sampled on a proportional subset and scaled back.

    ``memo``: a dict owned by the caller, for which ``probs`` (or the array it is a view of) and
    ``slot_map`` stay alive and unchanged. A call with
    the same inputs and the same generator state returns the stored sample (read-only arrays) and
    leaves ``rng`` in the state the sampling would have left it: exact, not an approximation. The
    forward model's iteration grids ask for the same token counts at many context lengths.
    """
    if memo is not None:
        st = rng.bit_generator.state
        # probs by address, shape and strides: callers pass views (probs[layer]) of arrays they keep alive
        key = (probs.ctypes.data, probs.shape, probs.strides, id(slot_map), tokens_per_gpu.dtype.str,
               tokens_per_gpu.tobytes(), k, experts_per_gpu, dedup,
               st["state"]["state"], st["state"]["inc"], st["has_uint32"], st["uinteger"])
        hit = memo.get(key)
        if hit is not None:
            rng.bit_generator.state = hit[1]
            return hit[0]
        s = route_group(probs, tokens_per_gpu, k, experts_per_gpu, dedup, rng, slot_map)
        for a in (s.expert_load, s.traffic_tokens):
            a.setflags(write=False)
        if len(memo) >= ROUTE_MEMO_ENTRIES:
            memo.clear()
        memo[key] = (s, rng.bit_generator.state)
        return s
    g = tokens_per_gpu.shape[0]
    total = int(tokens_per_gpu.sum())
    E = probs.shape[0] if slot_map is None else slot_map.n_slots
    if total == 0:
        return RoutingSample(np.zeros(E), np.zeros((g, g)), 0.0, 0.0)
    scale = 1.0
    counts = tokens_per_gpu.astype(np.int64)
    if total > MAX_SAMPLED_TOKENS:
        scale = total / MAX_SAMPLED_TOKENS
        counts = np.maximum(1, np.round(tokens_per_gpu / scale)).astype(np.int64)
        scale = total / counts.sum()
    n = int(counts.sum())
    choices = sample_topk(probs, n, k, rng)
    if slot_map is not None:
        choices = slot_map.assign(choices, rng)
        experts_per_gpu = slot_map.per_gpu
    src = np.repeat(np.arange(g), counts)
    dst_gpu = choices // experts_per_gpu
    load = np.bincount(choices.ravel(), minlength=E).astype(float) * scale
    local = float((dst_gpu == src[:, None]).sum()) * scale
    pair = src[:, None] * g + dst_gpu  # (n, k) source x destination GPU of every choice
    if dedup:
        # one copy per (token, destination GPU): sort each token's k destinations and keep the first of a run
        pair = np.sort(pair, axis=1)
        first = np.ones(pair.shape, dtype=bool)
        first[:, 1:] = pair[:, 1:] != pair[:, :-1]
        pair = pair[first]
    per_src = np.bincount(pair.ravel(), minlength=g * g).reshape(g, g).astype(float)
    return RoutingSample(load, per_src * scale, local, float(total * k))
