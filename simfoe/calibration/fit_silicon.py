"""Fit the engine profiles' host overheads to the real serving benchmarks (``simfoe fit silicon``).

Fitted on the aggregated rows (one engine instance each). Three parameters per engine profile
(simfoe/specs/engines/*.yaml, ``overheads``), the host time the forward model does not price:
``request_s`` (per request, before it can be scheduled), ``step_s`` and ``step_per_seq_s`` (per
iteration, and per sequence in its batch). Nothing per row or per model.

Method (one linearised step, L1 on relative error): replay every covered row without overheads
(:func:`simfoe.calibration.silicon.serve_row`, recording its iterations); for each row the first-order
effect of each parameter on its mean TTFT and TPOT is read off the run (TTFT: 1 per second of
``request_s``, the iterations between a request's sending and its first token and their sequences;
TPOT: the iterations between its first and last token, per token); the parameters >= 0 that minimise
the summed absolute relative error of TTFT and TPOT over the engine's *fitted* rows (a linear
program; terms the model already over-predicts are left out, :data:`OVER`) are the fit; it is replayed,
and an engine keeps it only when that replay fits the engine's fitted rows better than no overheads
(the first-order model misses how a delay moves closed-loop clients against the iterations). Held out: for an engine
with rows of several models, all rows of the model with the fewest covered rows; with one model,
every third row in id order (:func:`held_out`). The report gives MAPE, MdAPE and the share within
25%, fitted and held-out, per engine and overall: before (no overheads), linearised (the first replay
moved along its derivatives) and after (replayed with what each engine keeps).
Units: seconds (parameters), milliseconds (TTFT, TPOT), % (errors).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from simfoe.calibration import silicon
from simfoe.errors import SpecError

PARAMS = ("request_s", "step_s", "step_per_seq_s")


@dataclass(frozen=True)
class RowFit:
    """One replayed row: predicted mean TTFT and TPOT (ms) and their derivatives (ms per second of each
    of :data:`PARAMS`), or the reason it has none."""

    row: silicon.SiliconRow
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    d_ttft: tuple[float, float, float] = (0.0, 0.0, 0.0)
    d_tpot: tuple[float, float, float] = (0.0, 0.0, 0.0)
    reason: str | None = None


def _iterations(res) -> tuple[np.ndarray, np.ndarray]:
    """(end time s, sequences) of every iteration of a serving run recorded with its timeline."""
    ev = res.engine.timeline
    end = np.array([(e["ts"] + e["dur"]) * 1e-6 for e in ev])
    seqs = np.array([e["args"]["decode_seqs"] + e["args"]["prefill_seqs"] for e in ev], dtype=float)
    order = np.argsort(end, kind="stable")
    return end[order], seqs[order]


def _between(end: np.ndarray, cum: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Iterations ending in (lo, hi] and their summed sequences, per request (``cum``: cumulative sequences)."""
    a = np.searchsorted(end, lo, side="right")
    b = np.searchsorted(end, hi, side="right")
    c = np.concatenate(([0.0], cum))
    return (b - a).astype(float), c[b] - c[a]


def derivatives(res) -> tuple[float, float, tuple, tuple] | None:
    """(mean TTFT ms, mean TPOT ms, their derivatives in ms per second of each of :data:`PARAMS`) over the
    completed requests of a serving run recorded with its timeline (None when none completed)."""
    rec = res.records
    rec = rec[rec["completed"] & (rec["generated_tokens"] > 1)]
    if not len(rec):
        return None
    end, seqs = _iterations(res)
    cum = np.cumsum(seqs)
    arr, first, last = (rec[k].to_numpy() for k in ("arrival_s", "first_token_s", "finish_s"))
    per_tok = 1.0 / (rec["generated_tokens"].to_numpy() - 1)
    n1, s1 = _between(end, cum, arr, first)
    n2, s2 = _between(end, cum, first, last)
    ms = 1e3
    return (float((first - arr).mean() * ms), float(((last - first) * per_tok).mean() * ms),
            (ms, float(n1.mean()) * ms, float(s1.mean()) * ms),
            (0.0, float((n2 * per_tok).mean()) * ms, float((s2 * per_tok).mean()) * ms))


def row_fit(engines: dict | None, row, deployments=None, seed: int = 0) -> RowFit:
    """The :class:`RowFit` of ``row`` replayed with ``engines`` (profile name -> EngineConfig; None: as committed)."""
    res = silicon.serve_row(row, deployments, seed, engines, record_timeline=True)
    if isinstance(res, silicon.NotCovered):
        return RowFit(row, reason=res.reason)
    if getattr(res.engine, "timeline", None) is None:  # not one engine's run (a disaggregated row)
        return RowFit(row, reason="not an aggregated run")
    if res.engine.timeline_truncated:
        return RowFit(row, reason="too many iterations to fit")
    d = derivatives(res)
    if d is None:
        return RowFit(row, reason="no request completed")
    if row.async_host:  # its engine overlaps the per-iteration host time: only request_s moves it
        d = (d[0], d[1], (d[2][0], 0.0, 0.0), (d[3][0], 0.0, 0.0))
    return RowFit(row, *d)


def held_out(rows: list) -> set[str]:
    """Ids of the held-out rows among one engine's covered ``rows`` (see the module docstring)."""
    by_model: dict[str, list] = {}
    for r in rows:
        by_model.setdefault(r.model_path, []).append(r.id)
    if len(by_model) > 1:
        return set(min(sorted(by_model.items()), key=lambda kv: len(kv[1]))[1])
    return {i for k, i in enumerate(sorted(r.id for r in rows)) if k % 3 == 2}


#: A TTFT or TPOT already predicted above this multiple of its measurement without overheads says nothing
#: about them (they only add time; such rows are the model's own misses, e.g. a KV cache too small or clients
#: kept in lockstep): :func:`solve` leaves that term out. The row still counts in every reported error.
OVER = 1.25


#: What a fit tries, in turn, per engine: the parameters each candidate frees (the others stay 0). All three first;
#: then the per-iteration ones alone, since a delay before a request is schedulable can move closed-loop clients
#: into waves of prompts that the linearisation does not see (docs/calibration.md).
CANDIDATES = (PARAMS, ("step_s", "step_per_seq_s"))


def solve(fits: list[RowFit], theta0, free=PARAMS) -> tuple[float, float, float]:
    """Parameters >= 0 (s) minimising sum |TTFT(theta) / measured - 1| + |TPOT(theta) / measured - 1| with
    each prediction linear around ``theta0`` (the parameters ``fits`` were replayed with): a linear program.
    Only the parameters in ``free`` move (the others stay 0). Terms predicted above :data:`OVER` x measured are
    left out."""
    from scipy.optimize import linprog

    a_rows, b_rows = [], []
    for f in fits:
        for pred, d, meas in ((f.ttft_ms, f.d_ttft, f.row.ttft_ms), (f.tpot_ms, f.d_tpot, f.row.tpot_ms)):
            if pred > OVER * meas:
                continue
            # residual = (pred + d . (theta - theta0)) / meas - 1 = g . theta + h
            g = np.asarray(d) / meas
            a_rows.append(g)
            b_rows.append(pred / meas - 1.0 - g @ np.asarray(theta0))
    if not a_rows:
        return (0.0, 0.0, 0.0)
    g, h = np.array(a_rows), np.array(b_rows)
    n, k = g.shape
    # variables: theta (k), t (n); minimise sum t subject to -t <= g theta + h <= t
    c = np.concatenate((np.zeros(k), np.ones(n)))
    eye = np.eye(n)
    a_ub = np.block([[g, -eye], [-g, -eye]])
    b_ub = np.concatenate((-h, h))
    fixed = [(0, None) if p in free else (0, 0) for p in PARAMS]
    sol = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=fixed + [(0, None)] * n, method="highs")
    if not sol.success:  # pragma: no cover - the problem is always feasible (t large enough)
        raise RuntimeError(f"fit silicon: linear program failed: {sol.message}")
    return tuple(float(x) for x in sol.x[:k])


def _stats(fits: list[RowFit]) -> dict:
    """MAPE, MdAPE (%), share within 25% of TTFT and TPOT, and the number of rows."""
    out = {"rows": len(fits)}
    for what in ("ttft", "tpot"):
        out.update(silicon.ape_stats([getattr(f, f"{what}_ms") for f in fits],
                                     [getattr(f.row, f"{what}_ms") for f in fits], what))
    return out


def engines_with(theta: dict) -> dict:
    """Profile name -> its EngineConfig with the overheads ``theta[name]`` (s, in :data:`PARAMS` order)."""
    from simfoe.serving.engine import profile_config

    return {e: replace(profile_config(e), request_overhead_s=t[0], step_overhead_s=t[1], step_overhead_per_seq_s=t[2])
            for e, t in theta.items()}


def replay_fits(rows, theta: dict, workers: int = 1, progress=None) -> list[RowFit]:
    """:func:`row_fit` of every row with the overheads ``theta`` (profile name -> parameters)."""
    return silicon.replay(rows, progress, workers=workers, predict=partial(row_fit, engines_with(theta)))


def moved(f: RowFit, theta) -> RowFit:
    """``f`` (replayed without overheads) with its predictions moved along their derivatives to ``theta``."""
    th = np.asarray(theta)
    return replace(f, ttft_ms=f.ttft_ms + float(np.dot(f.d_ttft, th)), tpot_ms=f.tpot_ms + float(np.dot(f.d_tpot, th)))


def _objective(fits: list[RowFit]) -> float:
    """Summed absolute relative error of TTFT and TPOT (what :func:`solve` minimises, every term counted)."""
    return float(sum(abs(f.ttft_ms / f.row.ttft_ms - 1) + abs(f.tpot_ms / f.row.tpot_ms - 1) for f in fits))


def _split(fits: list[RowFit], held: set[str]) -> dict:
    """Error statistics of ``fits`` (those predicted): fitted rows, held-out rows, all."""
    ok = [f for f in fits if f.reason is None]
    return {"fitted": _stats([f for f in ok if f.row.id not in held]),
            "held_out": _stats([f for f in ok if f.row.id in held]), "all": _stats(ok)}


def _summary(fits: list[RowFit], held: set[str], engine_of: dict) -> dict:
    by = {e: _split([f for f in fits if engine_of[f.row.id] == e], held) for e in sorted(set(engine_of.values()))}
    return {**_split(fits, held), "by_engine": by}


def _fit_rows(path, engines) -> tuple[list, dict]:
    """(covered aggregated rows of the profiles ``engines`` (None: every profile), row id -> profile)."""
    rows = list(silicon.load_rows(path).rows)
    scen = {r.id: silicon.scenario(r) for r in rows}
    rows = [r for r in rows if r.mode == "agg" and not isinstance(scen[r.id], silicon.NotCovered) and scen[r.id].engine]
    if engines is not None:
        known = sorted({scen[r.id].engine for r in rows})
        for e in engines:
            if e not in known:
                raise SpecError("--engine", e, "a profile with covered rows: " + ", ".join(known))
        rows = [r for r in rows if scen[r.id].engine in engines]
    return rows, {r.id: scen[r.id].engine for r in rows}


def _choose(rows, fits, fitted: dict, engine_of: dict, workers, progress) -> tuple[dict, dict, list]:
    """Per engine, the first of :data:`CANDIDATES` whose replay fits its ``fitted`` rows better than no overheads
    (else none): (parameters, acceptance, the fits the report's ``after`` shows)."""
    zero = (0.0, 0.0, 0.0)
    names = sorted(fitted)
    theta, after = {e: zero for e in names}, {f.row.id: f for f in fits}
    ids = {e: {f.row.id for f in fitted[e]} for e in names}

    def objective(fs, e):
        return _objective([f for f in fs if f.reason is None and f.row.id in ids[e]])

    acc = {e: {"kept": False, "fitted_objective_before": objective(fits, e), "freed": []} for e in names}
    for e in names:
        acc[e]["fitted_objective_replayed"] = acc[e]["fitted_objective_before"]
    for free in CANDIDATES:
        todo = [e for e in names if not acc[e]["kept"] and fitted[e]]
        if not todo:
            break
        cand = {e: solve(fitted[e], zero, free) for e in todo}
        tried = replay_fits([r for r in rows if engine_of[r.id] in cand], cand, workers, progress)
        for e in todo:
            got = objective(tried, e)
            acc[e].update(fitted_objective_replayed=got, freed=list(free))
            if got < acc[e]["fitted_objective_before"]:
                acc[e]["kept"], theta[e] = True, cand[e]
                after.update({f.row.id: f for f in tried if engine_of[f.row.id] == e})
    return theta, acc, [after[f.row.id] for f in fits]


def fit(path, workers: int = 1, progress=None, engines=None) -> dict:
    """Fit the overheads of the engine profiles ``engines`` (None: every profile with covered rows) to the silicon
    rows at ``path`` (one replay without overheads, then per engine each of :data:`CANDIDATES` until one replays
    better); returns the report (module docstring) with ``params`` (profile -> parameters, s). ``linearised``: the
    first replay moved along its derivatives to the first candidate; ``after``: the replay with the parameters each
    engine keeps (``accepted``)."""
    rows, engine_of = _fit_rows(path, engines)
    names = sorted(set(engine_of.values()))
    zero = (0.0, 0.0, 0.0)
    fits = replay_fits(rows, {e: zero for e in names}, workers, progress)
    ok = [f for f in fits if f.reason is None]
    held = set().union(*(held_out([f.row for f in ok if engine_of[f.row.id] == e]) for e in names))
    fitted = {e: [f for f in ok if engine_of[f.row.id] == e and f.row.id not in held] for e in names}
    first = {e: solve(fitted[e], zero) for e in names}
    moved_fits = [moved(f, first[engine_of[f.row.id]]) if f.reason is None else f for f in fits]
    theta, acc, after = _choose(rows, fits, fitted, engine_of, workers, progress)
    models = {e: sorted({f.row.model_path for f in ok if f.row.id in held and engine_of[f.row.id] == e})
              for e in names}
    left = {e: sum(int(f.ttft_ms > OVER * f.row.ttft_ms) + int(f.tpot_ms > OVER * f.row.tpot_ms) for f in fitted[e])
            for e in names}
    return {"data": str(path), "rows": len(rows),
            "held_out": {"rule": "an engine's model with the fewest covered rows; one model: every third row by id",
                         "models": models, "rows": len(held)},
            "terms_left_out": {"rule": f"a TTFT or TPOT predicted above {OVER:g} x measured without overheads",
                               "by_engine": left},
            "params": {e: dict(zip(PARAMS, theta[e])) for e in names}, "accepted": acc,
            "before": _summary(fits, held, engine_of), "linearised": _summary(moved_fits, held, engine_of),
            "after": _summary(after, held, engine_of)}


def write(report: dict) -> list[str]:
    """Write the fitted overheads of ``report`` into the engine profiles (simfoe/specs/engines/*.yaml), each
    value naming this fit as its source; returns the paths written."""
    import yaml

    from simfoe.outputs import write_text
    from simfoe.specs.base import validate_spec
    from simfoe.specs.engine import EngineProfile, engine_path

    day = datetime.date.today().isoformat()
    out = []
    for e, params in report["params"].items():
        path = engine_path(e)
        raw = yaml.safe_load(path.read_text())
        raw["overheads"] = {k: round(float(v), 6) for k, v in params.items()}
        a = report["after"]["by_engine"][e]
        src = (f"simfoe fit silicon {day} ({report['data'].split('/')[-1]}, {a['fitted']['rows']} fitted rows, "
               f"{a['held_out']['rows']} held out; after: TTFT MdAPE {_pct(a['fitted'].get('ttft_mdape'))} fitted, "
               f"{_pct(a['held_out'].get('ttft_mdape'))} held out; TPOT MdAPE {_pct(a['fitted'].get('tpot_mdape'))}, "
               f"{_pct(a['held_out'].get('tpot_mdape'))}; docs/calibration.md)")
        acc = report.get("accepted", {}).get(e)
        if acc and acc["kept"] and acc.get("freed") and tuple(acc["freed"]) != PARAMS:
            src += "; " + " and ".join(acc["freed"]) + " alone (all three replayed worse)"
        if acc and not acc["kept"]:
            src = (f"simfoe fit silicon {day}: none; the fitted overheads replayed worse on the engine's fitted rows "
                   f"(summed relative error {acc['fitted_objective_before']:.1f} without, "
                   f"{acc['fitted_objective_replayed']:.1f} with; docs/calibration.md)")
        raw["provenance"].update({f"overheads.{k}": src for k in params})
        validate_spec(EngineProfile, raw, "engine")
        write_text(path, yaml.safe_dump(raw, sort_keys=False, width=200), "engine profile")
        out.append(str(path))
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1f}%"
