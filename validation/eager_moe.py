"""Eager-torch MoE routing steps shared by the testbed (validation/testbed.py) and the routing-glue
microbenchmark (validation/bench_kernels.py), so that the benchmark times exactly the code the testbed runs.

An eager MoE layer spends, beside its GEMMs, a fixed number of small framework ops per layer (top-k,
softmax), per destination rank (mask, gather, concatenate the rows sent there) and per local expert
(select its rows, gather, activation, gate, scatter-add back). On a CPU each such op costs microseconds
of dispatch regardless of its size; simfoe prices them from the ``routing_glue`` benchmark
(simfoe/costs/kernels.py ``routing_glue``). Needs only torch.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def route(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts per token and their softmax gates: (ids [T, k] int64, gates [T, k])."""
    gv, gi = torch.topk(logits, top_k, dim=1)
    return gi, torch.softmax(gv, dim=1)


def partition(x: torch.Tensor, gi: torch.Tensor, gates: torch.Tensor, ranks: int, experts_per_rank: int):
    """Rows to send to each rank: a token goes once to every rank holding one of its experts, its hidden
    state followed by the local expert id per choice (-1 where the choice is elsewhere) and the gates.

    Returns (send [rows, hidden + 2k], rows per rank (list), token index of every sent row)."""
    dest = gi // experts_per_rank
    payloads, counts, tokens = [], [], []
    for r in range(ranks):
        mask = dest == r
        tok = mask.any(dim=1).nonzero().squeeze(1)
        lid = torch.where(mask[tok], gi[tok] - r * experts_per_rank, torch.full_like(gi[tok], -1)).to(x.dtype)
        payloads.append(torch.cat([x.index_select(0, tok), lid, gates[tok]], dim=1))
        counts.append(tok.numel())
        tokens.append(tok)
    return torch.cat(payloads), counts, torch.cat(tokens)


def experts(xs: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor, wgu: list, wd: list,
            mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.matmul) -> torch.Tensor:
    """Loop over local experts: rows of ``xs`` whose ``ids`` column equals e go through SwiGLU expert e
    (``wgu[e]`` [hidden, 2f], ``wd[e]`` [f, hidden]), scaled by their gate and added back in place.
    ``mm`` is the GEMM (the glue benchmark passes an allocation-only stand-in)."""
    out = torch.zeros_like(xs)
    for e in range(len(wgu)):
        sel = (ids == e).nonzero()
        if sel.numel() == 0:
            continue
        rows, slot = sel[:, 0], sel[:, 1]
        hmid = mm(xs.index_select(0, rows), wgu[e])
        n = hmid.shape[1] // 2
        act = F.silu(hmid[:, :n]) * hmid[:, n:]
        y = mm(act, wd[e]) * gates[rows, slot].unsqueeze(1)
        out.index_add_(0, rows, y)
    return out


def unpermute(tokens: int, back: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """Sum the expert outputs returned for every sent row into their tokens: [tokens, hidden]."""
    out = torch.zeros(tokens, back.shape[1], dtype=back.dtype)
    out.index_add_(0, token_index, back)
    return out


def gemm_stand_in(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A zero-filled output of the GEMM's shape: the glue benchmark excludes the GEMMs (priced by their
    table). Zeros, not ``new_empty``: uninitialised memory can hold denormals, which slow the SiLU after it."""
    return a.new_zeros((a.shape[0], b.shape[1]))
