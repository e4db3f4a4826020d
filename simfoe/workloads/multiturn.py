"""Synthetic multi-turn conversations, for prefix caching: ``--trace multi-turn[:KEY=VALUE,...]``.

A conversation is one token stream: a system prompt shared by every conversation, then user message
1, answer 1, user message 2, answer 2, ... Turn t's prompt is the stream up to and including user
message t; it generates answer t. So consecutive turns of a conversation share a growing prefix, and
all conversations share the system prompt.

Prefix block ids name whole blocks of ``block`` tokens of the stream: a block inside the system prompt
has the same id in every conversation, any other block an id of its own conversation. A row's ids
cover the whole blocks of its prompt and its answer (the prefix cache caches what a turn generated,
as vLLM and SGLang do).

Arrivals: conversations start as a Poisson process at ``rate`` per second; each next turn arrives
``think`` seconds after the previous one (a fixed gap, not waiting for the answer: choose it longer
than a turn's latency). Rows are sorted by arrival; ``--rate`` rescales these timestamps like any
trace's.

Every parameter is a workload assumption, not a measurement: conversations (default 256), turns
(4), system (1024 tokens), user (256 tokens per message), output (256 tokens per answer), block (64
tokens per prefix block), rate (1 conversation start per s), think (30 s).
"""
from __future__ import annotations

import numpy as np

from simfoe.errors import SpecError
from simfoe.workloads.requests import RequestTable

#: Parameters and their defaults (see module docstring): integers, except rate and think (seconds).
DEFAULTS = {"conversations": 256, "turns": 4, "system": 1024, "user": 256, "output": 256, "block": 64,
            "rate": 1.0, "think": 30.0}
NAME = "multi-turn"


def parse(spec: str) -> dict:
    """``multi-turn[:KEY=VALUE,...]`` -> every parameter (defaults for those not given)."""
    name, _, rest = spec.partition(":")
    out = dict(DEFAULTS)
    for part in filter(None, rest.split(",")):
        key, eq, val = part.partition("=")
        if key not in DEFAULTS or not eq:
            raise SpecError("trace", spec, f"{NAME}[:KEY=VALUE,...] with keys " + ", ".join(DEFAULTS))
        try:
            v = type(DEFAULTS[key])(val)
        except ValueError:
            v = None
        if v is None or not (v >= 0 if key == "system" else v > 0):
            raise SpecError("trace", spec, f"{key}: " + ("an integer" if isinstance(DEFAULTS[key], int) else "a number")
                            + (" >= 0" if key == "system" else " > 0"))
        out[key] = v
    return out


def multi_turn(spec: str, rng: np.random.Generator) -> RequestTable:
    """The conversations of ``spec`` (see module docstring) as a request table with prefix block ids."""
    p = parse(spec)
    convs, turns, system, out, block = (p[k] for k in ("conversations", "turns", "system", "output", "block"))
    starts = np.cumsum(rng.exponential(1.0 / p["rate"], convs))
    starts -= starts[0]
    turn = np.arange(turns)
    prompt = system + (turn + 1) * p["user"] + turn * out  # the stream up to user message t (tokens)
    arrival = (starts[:, None] + p["think"] * turn[None, :]).ravel()
    conv = np.repeat(np.arange(convs), turns)
    hashes = [_ids(c, int(n), system, out, block) for c, n in zip(conv.tolist(), np.tile(prompt, convs).tolist())]
    order = np.argsort(arrival, kind="stable")
    t = RequestTable.from_arrays(arrival, np.tile(prompt, convs), np.full(convs * turns, out), hash_lists=hashes,
                                 hash_block_tokens=block, source=f"{NAME}: {convs} conversations x {turns} turns")
    return t[order].relabelled()


def _ids(c: int, prompt: int, system: int, output: int, block: int) -> list[int]:
    """Prefix block ids of a turn of conversation ``c`` whose prompt is the first ``prompt`` tokens of its
    stream: the whole blocks of its prompt and answer (the index inside the shared system prompt, else
    offset by the conversation)."""
    shared = system // block
    span = 1 << 32  # ids per conversation
    return [j if j < shared else (c + 1) * span + j for j in range((prompt + output) // block)]
