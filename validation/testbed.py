"""Testbed: a real small MoE model and its FoE counterpart, run across processes with torch.distributed.

``python -m validation.testbed --config CONFIG.json [--out RESULT.json]``. Needs only the standard library and torch;
never imports simfoe. Prints one
JSON object (``{"cases": [...], "env": {...}}``) on stdout. simfoe.calibration.testbed builds the
config from a simfoe ModelSpec and compares the results with simfoe's predictions.

Both architectures run the same kernels, in the same order and shapes, as simfoe/forward/plan.py
prices them (fp32, one torch thread per process, one process per "GPU", gloo on CPU):

MoE, expert parallel over all ranks, attention data-parallel (``placement.moe.attention=dp``): each
rank holds its own sequences; per layer: layer_norm, QKV GEMM, SDPA (GQA), O GEMM, residual add;
layer_norm, router GEMM, top-k; dispatch all-to-all (each token sent once per destination rank, its
expert choices riding in extra columns; split sizes exchanged first in a small all-to-all); the local
experts as a loop (up GEMM n = 2f, silu*mul, down GEMM); combine all-to-all; residual add.
FoE, one cluster per rank: every rank computes its cluster's heads for all tokens (QKV, SDPA, O GEMM,
add), one all-reduce of the residual (T x hidden), layer_norm, router GEMM over its cluster's experts,
top-k_c, the local experts, add; no all-to-all.
Both: embedding lookup, final layer_norm and LM head GEMM on the last token of each sequence (FoE:
vocabulary split over ranks). Decode: one new token per sequence attends to a KV cache of
``seq_len`` tokens (a separate cache per layer, so it is read from DRAM as in a real model).

Timing: per repeat, ``barrier; t0; forward; barrier; t1`` on every rank, the MoE and FoE passes of
one shape interleaved repeat by repeat (so a shared host's drift moves both alike); a repeat's time is the
slowest rank's ``t1 - t0`` (wall) and, separately, the largest process CPU time of a rank over the
forward (``time.process_time``: excludes time descheduled on a shared host). Median over repeats
after untimed warm-up passes. The load average is recorded before and after.

Routing: one untimed pass per case records how many tokens chose each expert in each layer
(``expert_counts``: MoE one row of n_experts per layer, summed over ranks; FoE one row of
experts_per_cluster per layer and cluster, layer-major). Routing depends only on the (seeded) inputs
and weights, so the timed passes route the same way; the caller may give these counts to its model
as the workload's routing distribution.

Host-speed probe (``cfg["probe"]``, optional): after each timed repeat of a shape every rank times one
GEMM ``[m, k] @ [k, n]`` (process CPU time, rotating over ``buffers`` weight matrices as the harness
does), both ranks at once as in ``--concurrent 2`` calibration runs. Its median per shape
(``probe_cpu_median_s``) tells the caller how fast the host ran during that shape compared with the
calibration: a shared host's speed moves by 10-20 % between minutes, and that moves every case alike.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from validation import eager_moe

DTYPE = torch.float32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Weights:
    """Random weights of one rank (std 0.02; the router's std 1 / sqrt(hidden) keeps routing near uniform)."""

    def __init__(self, cfg: dict, rank: int, world: int, gen: torch.Generator):
        m, f = cfg["model"], cfg["foe"]
        h, H, KV, d = m["hidden"], m["n_heads"], m["n_kv_heads"], m["head_dim"]
        L, V = m["n_layers"], m["vocab"]

        def rnd(*shape, std=0.02):
            return (torch.randn(*shape, generator=gen, dtype=DTYPE) * std).contiguous()

        self.emb = rnd(V, h)
        # MoE: all heads (attention dp), experts rank*E/W .. (rank+1)*E/W - 1
        epg = m["n_experts"] // world
        self.moe = [{
            "ln1": torch.ones(h), "ln2": torch.ones(h),
            "wqkv": rnd(h, (H + 2 * KV) * d), "wo": rnd(H * d, h), "wr": rnd(h, m["n_experts"], std=h ** -0.5),
            "wgu": [rnd(h, 2 * m["expert_ffn"]) for _ in range(epg)], "wd": [rnd(m["expert_ffn"], h) for _ in range(epg)],
        } for _ in range(L)]
        self.lm = rnd(h, V)
        # FoE: cluster = rank; H/C query heads, KV/C kv heads, Ec experts of width f'
        C = f["clusters"]
        hq, hk = H // C, KV // C
        self.foe = [{
            "ln1": torch.ones(h), "ln2": torch.ones(h),
            "wqkv": rnd(h, (hq + 2 * hk) * d), "wo": rnd(hq * d, h), "wr": rnd(h, f["experts_per_cluster"], std=h ** -0.5),
            "wgu": [rnd(h, 2 * f["expert_ffn"]) for _ in range(f["experts_per_cluster"])],
            "wd": [rnd(f["expert_ffn"], h) for _ in range(f["experts_per_cluster"])],
        } for _ in range(L)]
        self.lm_shard = rnd(h, V // world)


class Sections:
    """Per-category clock of one pass (``breakdown`` passes only): ``mark(cat)`` charges the process CPU
    time and wall time since the previous mark to ``cat`` (simfoe's breakdown categories:
    simfoe/forward/simulate.py CATEGORIES). A mark costs about a microsecond."""

    def __init__(self):
        self.cpu: dict = {}
        self.wall: dict = {}
        self._c, self._w = time.process_time(), time.perf_counter()

    def mark(self, cat: str) -> None:
        c, w = time.process_time(), time.perf_counter()
        self.cpu[cat] = self.cpu.get(cat, 0.0) + c - self._c
        self.wall[cat] = self.wall.get(cat, 0.0) + w - self._w
        self._c, self._w = c, w


class _NoSections:
    """The timed passes' stand-in for Sections: marks nothing."""

    def mark(self, cat: str) -> None:
        pass


NO_SECTIONS = _NoSections()


def _attention(x, w, ln, b, s, hq, hk, d, phase, kv_cache):
    """layer_norm, QKV GEMM, SDPA, O GEMM, residual add; ``x`` [b*s, h]."""
    h = x.shape[1]
    xn = F.layer_norm(x, (h,), ln)
    qkv = xn @ w["wqkv"]
    q = qkv[:, : hq * d].view(b, s, hq, d).transpose(1, 2)
    if phase == "prefill":
        k = qkv[:, hq * d:(hq + hk) * d].view(b, s, hk, d).transpose(1, 2)
        v = qkv[:, (hq + hk) * d:].view(b, s, hk, d).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hq != hk)
    else:
        k, v = kv_cache
        a = F.scaled_dot_product_attention(q, k, v, enable_gqa=hq != hk)
    o = a.transpose(1, 2).reshape(b * s, hq * d) @ w["wo"]
    return o


def forward_moe(W: Weights, cfg, tokens, b, s, phase, kv, rank, world, route_counts=None, sec=NO_SECTIONS):
    m = cfg["model"]
    h, H, KV, d, E, topk = m["hidden"], m["n_heads"], m["n_kv_heads"], m["head_dim"], m["n_experts"], m["top_k"]
    epg = E // world
    x = W.emb.index_select(0, tokens)
    sec.mark("embed_lm_head")
    for li, lw in enumerate(W.moe):
        x = x + _attention(x, lw, lw["ln1"], b, s, H, KV, d, phase, kv[li] if kv else None)
        sec.mark("attention")
        xn = F.layer_norm(x, (h,), lw["ln2"])
        logits = xn @ lw["wr"]
        gi, gates = eager_moe.route(logits, topk)
        if route_counts is not None:
            route_counts[li] += torch.bincount(gi.flatten(), minlength=E)
        T = x.shape[0]
        send, counts, tok_index = eager_moe.partition(x, gi, gates, world, epg)
        cin = torch.tensor(counts, dtype=torch.int64)
        cout = torch.empty_like(cin)
        sec.mark("experts")
        dist.all_to_all_single(cout, cin)
        recv = torch.empty(int(cout.sum()), send.shape[1], dtype=DTYPE)
        dist.all_to_all_single(recv, send, cout.tolist(), counts)
        sec.mark("dispatch")
        ids = recv[:, h:h + topk].long()
        y = eager_moe.experts(recv[:, :h].contiguous(), ids, recv[:, h + topk:], lw["wgu"], lw["wd"])
        back = torch.empty(send.shape[0], h, dtype=DTYPE)
        sec.mark("experts")
        dist.all_to_all_single(back, y, counts, cout.tolist())
        sec.mark("combine")
        moe_out = eager_moe.unpermute(T, back, tok_index)
        x = x + moe_out
        sec.mark("experts")
    last = x.view(b, s, h)[:, -1]
    out = F.layer_norm(last, (h,), W.moe[0]["ln1"]) @ W.lm
    sec.mark("embed_lm_head")
    return out


def forward_foe(W: Weights, cfg, tokens, b, s, phase, kv, rank, world, route_counts=None, sec=NO_SECTIONS):
    m, f = cfg["model"], cfg["foe"]
    h, d, C = m["hidden"], m["head_dim"], f["clusters"]
    hq, hk, kc = m["n_heads"] // C, m["n_kv_heads"] // C, f["top_k_per_cluster"]
    x = W.emb.index_select(0, tokens)
    sec.mark("embed_lm_head")
    for li, lw in enumerate(W.foe):
        o = _attention(x, lw, lw["ln1"], b, s, hq, hk, d, phase, kv[li] if kv else None)
        sec.mark("attention")
        dist.all_reduce(o)
        sec.mark("all_reduce")
        x = x + o
        sec.mark("attention")
        xn = F.layer_norm(x, (h,), lw["ln2"])
        logits = xn @ lw["wr"]
        gi, gates = eager_moe.route(logits, kc)
        if route_counts is not None:
            route_counts[li, rank] += torch.bincount(gi.flatten(), minlength=f["experts_per_cluster"])
        x = x + eager_moe.experts(x, gi, gates, lw["wgu"], lw["wd"])
        sec.mark("experts")
    last = x.view(b, s, h)[:, -1]
    out = F.layer_norm(last, (h,), W.foe[0]["ln1"]) @ W.lm_shard
    sec.mark("embed_lm_head")
    return out


BREAKDOWN_CATEGORIES = ("embed_lm_head", "attention", "all_reduce", "dispatch", "experts", "combine")


def _breakdown(passes: list) -> dict:
    """Median over breakdown passes of each category's CPU and wall seconds on this rank, then the
    largest over ranks (collective: every rank calls it): ``breakdown_cpu_s`` / ``breakdown_wall_s``."""
    out = {}
    for i, key in enumerate(("breakdown_cpu_s", "breakdown_wall_s")):
        med = [statistics.median(p[i].get(c, 0.0) for p in passes) for c in BREAKDOWN_CATEGORIES]
        t = torch.tensor(med, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        out[key] = {c: v for c, v in zip(BREAKDOWN_CATEGORIES, t.tolist()) if v > 0}
    return out


def _local_batch(arch: str, batch: int, rank: int, world: int) -> int:
    """Sequences on this rank: MoE data-parallel attention splits them as evenly as possible."""
    if arch == "foe":
        return batch
    return batch // world + (1 if rank < batch % world else 0)


def _worker(rank: int, world: int, port: int, cfg: dict, out_path: str) -> None:
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)) * 1000 + rank)
    W = Weights(cfg, rank, world, gen)
    m, f = cfg["model"], cfg["foe"]
    results = []
    # empty interval: barrier; t0; barrier; t1 (the timing overhead included in every sample)
    bar = []
    for _ in range(20):
        dist.barrier()
        t0 = time.perf_counter()
        dist.barrier()
        bar.append(time.perf_counter() - t0)
    # Cases of one shape (phase, batch, seq_len) are interleaved repeat by repeat (MoE, FoE, FoE, MoE, ...):
    # a shared host's speed drifts over seconds, and drift then moves both architectures alike instead
    # of biasing their ratio.
    shapes: dict = {}
    for arch, phase, batch, seq in cfg["cases"]:
        shapes.setdefault((phase, batch, seq), []).append(arch)
    samples: dict = {}
    routed: dict = {}
    probe = cfg.get("probe")
    probe_s: dict = {}
    sections: dict = {}
    if probe:
        pa = torch.randn(probe["m"], probe["k"], generator=gen)
        pbs = [torch.randn(probe["k"], probe["n"], generator=gen) for _ in range(probe.get("buffers", 16))]
    for (phase, batch, seq), archs in shapes.items():
        inputs = {}
        for arch in archs:
            b = _local_batch(arch, batch, rank, world)
            s = seq if phase == "prefill" else 1
            tokens = torch.randint(0, m["vocab"], (max(b, 1) * s,), generator=gen)
            kv = None
            if phase == "decode":
                hk = m["n_kv_heads"] // (f["clusters"] if arch == "foe" else 1)
                kv = [(torch.randn(b, hk, seq, m["head_dim"], generator=gen),
                       torch.randn(b, hk, seq, m["head_dim"], generator=gen)) for _ in range(m["n_layers"])]
            inputs[arch] = (forward_foe if arch == "foe" else forward_moe, tokens, b, s, kv)
            # expert choices per layer (an untimed pass; routing is deterministic for fixed inputs):
            # MoE [layers, experts] summed over ranks, FoE [layers, clusters, experts per cluster]
            shape = (m["n_layers"], m["n_experts"]) if arch == "moe" else \
                (m["n_layers"], f["clusters"], f["experts_per_cluster"])
            cnt = torch.zeros(shape, dtype=torch.int64)
            with torch.inference_mode():
                inputs[arch][0](W, cfg, tokens, b, s, phase, kv, rank, world, route_counts=cnt)
            dist.all_reduce(cnt)
            routed[(arch, phase, batch, seq)] = cnt.reshape(-1, shape[-1]).tolist()
        for i in range(cfg["warmup"] + cfg["repeats"]):
            for arch in (archs if i % 2 == 0 else archs[::-1]):
                fwd, tokens, b, s, kv = inputs[arch]
                dist.barrier()
                t0, c0 = time.perf_counter(), time.process_time()
                with torch.inference_mode():
                    fwd(W, cfg, tokens, b, s, phase, kv, rank, world)
                c1 = time.process_time()
                dist.barrier()
                t1 = time.perf_counter()
                if i >= cfg["warmup"]:
                    samples.setdefault((arch, phase, batch, seq), []).append((t1 - t0, c1 - c0))
            if probe and i >= cfg["warmup"]:
                dist.barrier()
                c0 = time.process_time()
                pa @ pbs[i % len(pbs)]
                probe_s.setdefault((phase, batch, seq), []).append(time.process_time() - c0)
        # breakdown passes (untimed for the headline): per-category CPU and wall time of each rank
        for arch in archs:
            fwd, tokens, b, s, kv = inputs[arch]
            for _ in range(cfg.get("breakdown", 0)):
                dist.barrier()
                sec = Sections()
                with torch.inference_mode():
                    fwd(W, cfg, tokens, b, s, phase, kv, rank, world, sec=sec)
                sections.setdefault((arch, phase, batch, seq), []).append((sec.cpu, sec.wall))
        del inputs
    for arch, phase, batch, seq in cfg["cases"]:
        t = torch.tensor(samples[(arch, phase, batch, seq)], dtype=torch.float64).T.contiguous()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        w, c = t[0].tolist(), t[1].tolist()
        qs = statistics.quantiles(w, n=10) if len(w) > 1 else [w[0]] * 9
        row = {"arch": arch, "phase": phase, "batch": batch, "seq_len": seq,
               "wall_median_s": statistics.median(w), "wall_p10_s": qs[0], "wall_p90_s": qs[-1],
               "wall_min_s": min(w), "cpu_median_s": statistics.median(c), "repeats": len(w),
               "cpu_samples_s": c, "expert_counts": routed[(arch, phase, batch, seq)]}
        if probe:
            pt = torch.tensor(probe_s[(phase, batch, seq)], dtype=torch.float64)
            dist.all_reduce(pt, op=dist.ReduceOp.MAX)
            row["probe_cpu_median_s"] = statistics.median(pt.tolist())
        if sections.get((arch, phase, batch, seq)):
            row.update(_breakdown(sections[(arch, phase, batch, seq)]))
        results.append(row)
    if rank == 0:
        with open(out_path, "w") as fh:
            json.dump({"cases": results, "barrier_s": statistics.median(bar)}, fh)
    dist.barrier()
    dist.destroy_process_group()


def run(cfg: dict) -> dict:
    """Run every case of ``cfg`` (keys: model, foe, cases [[arch, phase, batch, seq_len], ...],
    world_size, repeats, warmup, seed, optional probe {m, n, k, buffers}, optional breakdown: passes per
    case timed section by section after the timed repeats, 0 = none) and return ``{"cases",
    "barrier_s", "env"}``."""
    world = int(cfg.get("world_size", 2))
    cfg = {"warmup": 2, "repeats": 7, "seed": 0, "breakdown": 0, **cfg}
    m, f = cfg["model"], cfg["foe"]
    if m["n_experts"] % world or f["clusters"] != world or m["n_kv_heads"] % f["clusters"] or m["vocab"] % world:
        raise SystemExit(f"error: world_size={world}: needs n_experts, vocab divisible by it, foe.clusters equal to it "
                         "and n_kv_heads divisible by foe.clusters")
    load0 = os.getloadavg()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        mp.spawn(_worker, args=(world, _free_port(), cfg, out), nprocs=world, join=True)
        with open(out) as fh:
            res = json.load(fh)
    res["env"] = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "torch": torch.__version__, "world_size": world, "threads_per_rank": 1, "backend": "gloo",
                  "dtype": "fp32", "cpus": os.cpu_count(), "loadavg_start": list(load0),
                  "loadavg_end": list(os.getloadavg()), "wall_s": round(time.time() - t0, 2),
                  "warmup": cfg["warmup"], "repeats": cfg["repeats"], "interleaved": True,
                  "probe": cfg.get("probe"), "breakdown_passes": cfg["breakdown"]}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m validation.testbed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="JSON file (see run()); simfoe testbed writes one")
    p.add_argument("--out", default=None, help="also write the result JSON here")
    a = p.parse_args(argv)
    with open(a.config) as fh:
        cfg = json.load(fh)
    res = run(cfg)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
