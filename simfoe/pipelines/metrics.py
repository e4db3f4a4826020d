"""Run metrics as in ALTO: latency percentiles and achieved vs offered load.

Achieved load (ALTO section 2) = requests sent during the interval / wall time until all of them
completed. A point counts on a latency-vs-load curve only when achieved >= 80% of offered.
"""
from __future__ import annotations

import numpy as np

from simfoe.pipelines.engine import RunResult

ACHIEVED_FRACTION_MIN = 0.8  # ALTO Fig. 3: "only points where the achieved load was >= 80% of the offered load"


def summarize(r: RunResult, per_instance: bool = True) -> dict:
    """Public JSON of one run (seconds, requests/s); contract keys first."""
    lat = r.latencies
    offered = r.sent / r.duration if r.duration > 0 else 0.0
    achieved = r.sent / r.t_end if r.t_end > 0 else 0.0
    q = (lambda p: float(np.percentile(lat, p))) if len(lat) else (lambda p: None)
    out = {
        "offered_rps": float(r.rate),
        "achieved_rps": achieved,
        "completed": int(len(lat)),
        "latency_s": {"mean": float(lat.mean()) if len(lat) else None, "p50": q(50), "p90": q(90), "p99": q(99)},
        "sent": int(r.sent),
        "sent_rps": offered,
        "achieved_fraction": achieved / r.rate if r.rate > 0 else None,
        "valid_point": bool(r.rate > 0 and achieved >= ACHIEVED_FRACTION_MIN * r.rate),
        "mode": r.mode,
        "routing": r.routing,
        "spec": r.spec.name,
        "duration_s": r.duration,
        "makespan_s": r.t_end,
        "seed": r.seed,
    }
    stages = {}
    T = r.t_end if r.t_end > 0 else 1.0
    for st in r.stages:
        insts = [
            {
                "node": inst.node,
                "utilization": inst.busy_time / (inst.slots * T),
                "mean_queue": inst.q_area / T,
                "max_queue": inst.q_max,
                "served": inst.served,
                **({"prefix_hits": inst.hits} if st.spec.prefix_cache is not None else {}),
            }
            for inst in st.instances
        ]
        u = [x["utilization"] for x in insts]
        stages[st.spec.name] = {
            "instances": len(insts),
            "items_in": st.items_in,
            "utilization_mean": float(np.mean(u)),
            "utilization_max": float(np.max(u)),
            "mean_queue": float(np.sum([x["mean_queue"] for x in insts])),
            **({"aggregates": st.aggs_done} if st.grouped else {}),
            **({"engine": st.lm.summary()} if st.lm is not None else {}),
            **({"per_instance": insts} if per_instance else {}),
        }
    out["stages"] = stages
    return out


def max_load_meeting(points: list[dict], target_s: float, stat: str = "p50") -> float | None:
    """Largest achieved load among valid points whose latency ``stat`` is <= ``target_s`` (None if none)."""
    ok = [p["achieved_rps"] for p in points if p["valid_point"] and p["latency_s"][stat] is not None
          and p["latency_s"][stat] <= target_s]
    return max(ok) if ok else None


def on_curve(p: dict, stat: str = "p50") -> bool:
    """Whether a point belongs on a latency-vs-load curve: valid (:data:`ACHIEVED_FRACTION_MIN`) and
    with a latency ``stat`` (some request completed)."""
    return bool(p["valid_point"]) and p["latency_s"][stat] is not None


def load_at_target(points: list[dict], target_s: float, stat: str = "p50") -> dict:
    """The load one variant's points sustain with latency ``stat`` <= ``target_s`` (s), said honestly:

    - ``max_load_status``: ``found`` (a higher offered rate missed the target or was left off the
      curve, so the limit lies inside the sweep), ``not_reached`` (every point from the best one up
      met it: the limit lies above ``highest_rate_tried_rps``), or ``none_met`` (no valid point meets it).
    - ``max_load_at_target_rps``: the largest achieved load (req/s) meeting the target, only when
      ``found`` (else None: the highest rate tried is not a limit).
    - ``meets_target_up_to_rps``: that load whatever the status (None when no point meets it).
    - ``dropped_rates_rps``: offered rates of the points left off the curves (not valid or none completed).
    """
    def meets(p):
        return on_curve(p, stat) and p["latency_s"][stat] <= target_s

    best = max((p for p in points if meets(p)), key=lambda p: p["achieved_rps"], default=None)
    top = max(p["offered_rps"] for p in points)
    if best is None:
        status = "none_met"
    elif any(p["offered_rps"] > best["offered_rps"] and not meets(p) for p in points):
        status = "found"
    else:
        status = "not_reached"
    return {
        "max_load_status": status,
        "max_load_at_target_rps": best["achieved_rps"] if status == "found" else None,
        "meets_target_up_to_rps": None if best is None else best["achieved_rps"],
        "highest_rate_tried_rps": top,
        "dropped_rates_rps": sorted(p["offered_rps"] for p in points if not on_curve(p, stat)),
    }


def load_at_target_text(s: dict, target_s: float) -> str:
    """One summary entry of :func:`load_at_target` in words: the load, or why there is none."""
    if s["max_load_status"] == "found":
        return f"{s['max_load_at_target_rps']:.2f}"
    if s["max_load_status"] == "not_reached":
        return f"not reached up to {s['highest_rate_tried_rps']:g} req/s"
    return f"none: no valid point within {target_s:g} s"


#: Most rate points one --compare run accepts (each is a full simulation per variant).
MAX_RATES = 10_000


def parse_rates(text: str) -> list[float]:
    """``1:30:1`` (start:stop:step, inclusive) or ``1,5,10`` -> list of rates."""
    import math

    from simfoe.errors import SpecError

    try:
        if ":" in text:
            a, b, *c = (float(x) for x in text.split(":"))
            step = c[0] if c else 1.0
            if len(c) > 1 or not all(math.isfinite(x) for x in (a, b, step)) or step <= 0 or b < a:
                raise ValueError
            n = int(np.floor((b - a) / step + 1e-9)) + 1
        else:
            rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SpecError("--rates", text, "START:STOP:STEP with finite numbers, STEP > 0 and STOP >= START, "
                        "or a comma list") from None
    if ":" in text:
        if n > MAX_RATES:
            raise SpecError("--rates", text, f"at most {MAX_RATES} rates (this gives {n})")
        rates = [round(a + k * step, 10) for k in range(n)]
    if not rates or any(not (math.isfinite(r) and r > 0) for r in rates):
        raise SpecError("--rates", text, "finite rates > 0 requests/s")
    if len(rates) > MAX_RATES:
        raise SpecError("--rates", text, f"at most {MAX_RATES} rates (this gives {len(rates)})")
    return rates
