"""Flow-level network on SimPy: max-min fair sharing of every link among all active flows.

A transfer is a batch of point-to-point flows. Each flow starts ``alpha_s`` + (sum of its path's link
latencies) after submission and then streams its bytes at a rate set by progressive filling
(water-filling): all unfrozen flows grow together; when a link fills, its flows are frozen at the
link's fair share; repeat. Rates are recomputed whenever a flow starts or finishes.

Implementation (vectorized with numpy, no per-flow Python loop on the hot path):
- active flows live in flat arrays (remaining bytes, rate, padded path of link indices, batch id);
- water-filling runs one iteration per distinct bottleneck level, each a ``bincount`` over links;
- completions are driven by SimPy timeouts with a generation counter (a timeout scheduled before the
  latest recompute is stale and ignored); at a completion, every flow whose remaining time is within
  ``rel_tol`` (default 1%) of the time it has already been streaming finishes too. N symmetric flows
  cost one event, and the ~N distinct completions of a skewed all-to-all collapse into a few dozen;
  a flow then ends at most ``rel_tol`` of its duration early (``rel_tol=0`` is exact);
- after completions only part of the flows is re-filled: removing flows whose lowest rate is L leaves
  every flow frozen below L where it was (no link that saturated below L carried a removed flow, and the
  filling up to L runs as before), so those keep their rates and the rest are re-filled on the residual
  capacity (exact; a large all-to-all re-fills a third or less of its flows per completion).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import simpy

from simfoe.fabric.topology import MAX_PATH, Cluster

Recorder = Callable[[str, str, str, float, float, float], None]

_REL_TOL = 1e-9


def _water_fill(path: np.ndarray, cap: np.ndarray, nl: int, pad: int) -> np.ndarray:
    """Max-min fair rates (bytes/s) of flows with padded link paths ``path`` on links of capacity ``cap``.

    Progressive filling, several bottlenecks per round: a link whose fair share (remaining capacity /
    unfrozen flows) is no larger than the share of any link its flows also cross is a bottleneck now;
    all its flows freeze at that share. Freezing a flow at a rate <= a link's share never lowers that
    link's share, so all such links can be settled in the same round. Rounds <= distinct bottleneck levels.
    """
    n = path.shape[0]
    rate = np.empty(n)
    idx = np.arange(n)
    cur = path
    while idx.size:
        flat = cur.ravel()
        cnt = np.bincount(flat, minlength=nl)
        cnt[pad] = 0
        share = cap / np.maximum(cnt, 1)
        share[cnt == 0] = np.inf
        sp = share[cur]  # (F, K)
        fmin = sp.min(axis=1)
        # a link is not settled now if one of its flows sees a strictly smaller share elsewhere
        later = sp > fmin[:, None] * (1 + _REL_TOL)
        settled = np.bincount(flat[later.ravel()], minlength=nl) == 0
        settled &= cnt > 0
        hit = settled[cur].any(axis=1)
        if hit.all():  # the last round (most fills have one): nothing left to fill
            rate[idx] = fmin
            break
        r = fmin[hit]
        rate[idx[hit]] = r
        cap = np.maximum(cap - np.bincount(cur[hit].ravel(), weights=np.repeat(r, cur.shape[1]), minlength=nl), 0.0)
        keep = ~hit
        idx = idx[keep]
        cur = cur[keep]
    return rate


class _Batch:
    __slots__ = ("event", "pending", "start_s", "nbytes", "tag")

    def __init__(self, event, pending, start_s, nbytes, tag):
        self.event = event
        self.pending = pending
        self.start_s = start_s
        self.nbytes = nbytes
        self.tag = tag


def _per_batch(bids: np.ndarray) -> list[tuple[int, int]]:
    """(batch id, flows finished) per distinct id of ``bids``, ids ascending: a bincount over the ids'
    span when it is short (the usual case, and the faster), else np.unique, whose cost follows the
    flows rather than the span between the oldest and newest batch still open."""
    lo, hi = int(bids.min()), int(bids.max())
    if hi - lo <= 4 * bids.size + 64:
        counts = np.bincount(bids - lo)
        return [(lo + off, int(counts[off])) for off in np.flatnonzero(counts).tolist()]
    ids, counts = np.unique(bids, return_counts=True)
    return list(zip(ids.tolist(), counts.tolist()))


class FlowNetwork:
    """Flows on a :class:`Cluster` inside ``env``.

    ``bytes_by_tag[tag] = {"intra_node": bytes, "inter_node": bytes}`` counts bytes that leave a GPU for
    another GPU (src == dst excluded); intra_node = both GPUs in one NVLink domain (one node unless the profile
    sets ``node.gpus_per_nvlink_domain``), so inter_node = the bytes that cross the network. ``recorder(kind, name,
    resource, start_s, end_s, bytes)`` is called once per finished batch (kind "comm", resource "fabric").
    """

    #: default completion tolerance (fraction of a flow's elapsed streaming time); see module docstring
    REL_TOL = 0.01
    #: re-fill only the flows a completion can affect (False: every recompute from scratch; same rates)
    INCREMENTAL = True

    def __init__(self, env: simpy.Environment, cluster: Cluster, recorder: Recorder | None = None,
                 rel_tol: float | None = None):
        self.env = env
        self.rel_tol = self.REL_TOL if rel_tol is None else float(rel_tol)
        self._t0 = np.zeros(0)
        self.cluster = cluster
        self.recorder = recorder
        self.bytes_by_tag: dict[str, dict[str, float]] = {}
        self._cap = np.asarray(cluster.link_capacity, dtype=float)
        self._lat = np.asarray(cluster.link_latency, dtype=float)
        self._nl = cluster.n_links + 1
        self._pad = cluster.n_links
        self._rem = np.zeros(0)
        self._rate = np.zeros(0)
        self._path = np.zeros((0, MAX_PATH), dtype=np.int64)
        self._bid = np.zeros(0, dtype=np.int64)
        self._t_last = 0.0
        self._gen = 0
        self._batches: dict[int, _Batch] = {}
        self._next_bid = 0
        self.flows_completed = 0

    # ------------------------------------------------------------------ public API
    def transfer(self, src: int, dst: int, nbytes: float, tag: str, alpha_s: float = 0.0) -> simpy.Event:
        """One flow ``src -> dst`` of ``nbytes`` bytes; the event fires when it has arrived."""
        return self.transfer_many([src], [dst], [nbytes], tag, alpha_s)

    def transfer_many(self, src, dst, nbytes, tag: str, alpha_s: float = 0.0, wire_factor: float = 1.0) -> simpy.Event:
        """Start flows ``src[f] -> dst[f]`` of ``nbytes[f]`` bytes together; event fires when all finished.

        Each flow begins after ``alpha_s`` + its path latency (s). Zero-byte and src == dst flows finish
        at once and are not counted. ``wire_factor`` scales the bytes put on the wire (not the bytes
        accounted), e.g. to apply a path-specific efficiency (NVLS) on top of the link capacities.
        """
        src = np.asarray(src, dtype=np.int64).ravel()
        dst = np.asarray(dst, dtype=np.int64).ravel()
        nb = np.broadcast_to(np.asarray(nbytes, dtype=float), src.shape).ravel()
        if dst.shape != src.shape:
            from simfoe.errors import SpecError

            raise SpecError("dst", f"{dst.size} entries", f"as many as src ({src.size})")
        keep = (nb > 0) & (src != dst)
        acc = self.bytes_by_tag.setdefault(tag, {"intra_node": 0.0, "inter_node": 0.0})
        ev = self.env.event()
        if not keep.all():
            src, dst, nb = src[keep], dst[keep], nb[keep]
        if src.size == 0:
            ev.succeed()
            return ev
        dom = self.cluster.gpus_per_domain
        intra = (src // dom) == (dst // dom)
        tot = float(nb.sum())
        b_intra = float(nb[intra].sum())
        acc["intra_node"] += b_intra
        acc["inter_node"] += tot - b_intra

        paths = self.cluster.paths(src, dst)
        delay = float(alpha_s) + self._lat[paths].sum(axis=1)
        bid = self._next_bid
        self._next_bid += 1
        self._batches[bid] = _Batch(ev, src.size, self.env.now, tot, tag)
        wire = nb * float(wire_factor)
        # group flows by distinct start delay: one timeout per group
        d_unique, inv = np.unique(np.round(delay, 15), return_inverse=True)
        for gi, d in enumerate(d_unique):
            sel = inv == gi if d_unique.size > 1 else slice(None)
            t = self.env.timeout(float(d))
            t.callbacks.append(self._make_arrival(wire[sel], paths[sel], bid))
        return ev

    # ------------------------------------------------------------------ internals
    def _make_arrival(self, wire, paths, bid):
        def _arrive(_ev):
            self._advance()
            self._rem = np.concatenate([self._rem, wire])
            self._path = np.concatenate([self._path, paths])
            self._bid = np.concatenate([self._bid, np.full(wire.size, bid, dtype=np.int64)])
            self._t0 = np.concatenate([self._t0, np.full(wire.size, self.env.now)])
            self._recompute()

        return _arrive

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._t_last
        if dt > 0 and self._rem.size:
            self._rem = self._rem - self._rate * dt
        self._t_last = now

    def _recompute(self, removed_min_rate: float | None = None) -> None:
        """Max-min fair rates by progressive filling, then schedule the next completion.

        ``removed_min_rate``: after completions, the lowest rate among the flows just removed (``_rate`` is
        then the surviving flows' old rates): flows below it keep their rates, the others are re-filled."""
        n = self._rem.size
        self._gen += 1
        if n == 0:
            self._rate = np.zeros(0)
            return
        if removed_min_rate is None or not self.INCREMENTAL:
            self._rate = rate = _water_fill(self._path, self._cap, self._nl, self._pad)
        else:
            rate = self._rate
            redo = rate >= removed_min_rate * (1 - _REL_TOL)
            if redo.all():  # nothing keeps its rate: fill from scratch (the same rates, fewer steps)
                self._rate = rate = _water_fill(self._path, self._cap, self._nl, self._pad)
            elif redo.any():
                fixed = ~redo
                used = np.bincount(self._path[fixed].ravel(), minlength=self._nl,
                                   weights=np.repeat(rate[fixed], self._path.shape[1]))
                cap = np.maximum(self._cap - used, 0.0)
                rate[redo] = _water_fill(self._path[redo], cap, self._nl, self._pad)
        rem = np.maximum(self._rem, 0.0)
        ttf = rem / rate
        t_min = float(ttf.min())
        gen = self._gen
        ev = self.env.timeout(t_min)
        ev.callbacks.append(lambda _e: self._complete(gen))

    def _complete(self, gen: int) -> None:
        if gen != self._gen:
            return  # stale: rates changed since this was scheduled
        self._advance()
        ttf = np.maximum(self._rem, 0.0) / self._rate
        # finished: remaining time within a tiny relative tolerance of now
        now = self.env.now
        tol = _REL_TOL * max(now, 1e-12) + 1e-15 + self.rel_tol * (now - self._t0)
        done = ttf <= tol
        if not done.any():
            done = ttf <= ttf.min()
        keep = ~done
        finished_bids = self._bid[done]
        removed_min_rate = float(self._rate[done].min())
        self._rem = self._rem[keep]
        self._path = self._path[keep]
        self._bid = self._bid[keep]
        self._t0 = self._t0[keep]
        self._rate = self._rate[keep]
        self.flows_completed += int(done.sum())
        self._recompute(removed_min_rate)
        for b, c in _per_batch(finished_bids):
            batch = self._batches[b]
            batch.pending -= c
            if batch.pending == 0:
                del self._batches[b]
                if self.recorder is not None:
                    self.recorder("comm", batch.tag, "fabric", batch.start_s, self.env.now, batch.nbytes)
                batch.event.succeed()
