"""Streamed input: a request whose prompt arrives in pieces while it runs (a pipeline stage's
``stream_into: request``, docs/pipelines.md).

:func:`hold` marks a row before it is admitted: it prefills the prompt it has as the scheduler gives it
budget and then holds instead of decoding: out of its rank's running list (no decode, no preemption),
status held, its KV blocks kept and counted as used. :func:`extend` appends prompt tokens (prefilled as
any partial prefill) and, with ``last``, lets it decode once they are prefilled. The store routes a held
row whose prefill completes here (:attr:`simfoe.serving.metrics.RequestStore.on_hold`) instead of giving
it its first token, so an engine without holds runs exactly as before (one ``None`` check per emit).
"""
from __future__ import annotations

from functools import partial

import numpy as np

from simfoe.serving.metrics import STATUS_DROPPED, STATUS_HELD, STATUS_RUNNING


def hold(eng, i: int) -> None:
    """Request row ``i`` of engine ``eng`` streams its input: it holds before decoding until :func:`extend`
    says its last tokens came."""
    st = eng.store
    if st.held is None:
        st.held = np.zeros(len(st.prompt), bool)
        st.on_hold = partial(_park, eng)
    st.held[i] = True


def extend(eng, i: int, tokens: int, last: bool) -> None:
    """Append ``tokens`` prompt tokens to held request row ``i`` of ``eng``; ``last``: no more come, it decodes
    once they are prefilled. A dropped request ignores them."""
    st = eng.store
    status = st.status[i]
    if status == STATUS_DROPPED:
        return
    st.prompt[i] += tokens
    st.pf_left[i] += tokens
    if last:
        st.held[i] = False
    if status == STATUS_HELD:  # back to its rank's running list (after the others), waking an idle replica
        st.status[i] = STATUS_RUNNING
        rep = eng.replicas[st.replica[i]]
        rep.ranks[st.rank[i]].running.append(i)
        rep.wake()


def _park(eng, rows: np.ndarray) -> None:
    """Held ``rows`` of ``eng`` prefilled all the prompt they have: they leave their ranks' running lists."""
    st = eng.store
    for i in rows.tolist():
        eng.replicas[st.replica[i]].ranks[st.rank[i]].running.remove(i)
        st.status[i] = STATUS_HELD
