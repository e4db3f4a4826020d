"""The recommendation report: one self-contained HTML file (plots as base64 PNG, no scripts, no
external links) and the JSON summary next to it.

Caveats quote the calibration error of each hardware profile used from its ``provenance`` map and
from ``docs/calibration-*.md`` (lines that state an error figure), never from numbers kept here.
Every name that comes from the user (model, hardware, trace, overrides, labels) is escaped.
"""
from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

from simfoe.outputs import fmt_bytes, fmt_time, json_text
from simfoe.planner.search import RANK_METRICS

_ERR = re.compile(r"(MAPE|error|err\b|within|deviat)", re.I)
_PCT = re.compile(r"\d+(\.\d+)?\s*%")


def calibration_notes(hardware: list[str], repo_root: Path | None = None) -> list[str]:
    """Error figures for the profiles used: provenance entries and docs/calibration-*.md lines that
    state a percentage error (MAPE, error, within ...)."""
    from simfoe.paths import REPO_ROOT
    from simfoe.specs.io import load_hardware

    notes: list[str] = []
    for h in hardware:
        try:
            hw = load_hardware(h)
        except Exception:  # noqa: BLE001 - a caveat must not break the report
            continue
        for k, v in hw.provenance.items():
            if _ERR.search(v) and _PCT.search(v):
                notes.append(f"{hw.name} {k}: {v}")
    root = repo_root or REPO_ROOT
    for f in sorted((root / "docs").glob("calibration*.md")) if (root / "docs").is_dir() else []:
        for para in re.split(r"\n\s*\n", f.read_text(errors="replace")):
            if para.lstrip().startswith(("|", "```")):
                continue  # tables and code: the prose states the summary figures
            text = " ".join(x.strip().lstrip("-*# ").strip() for x in para.splitlines())
            for sent in re.split(r"(?<=[.;])\s+(?=[A-Z(`])", text):
                if _ERR.search(sent) and _PCT.search(sent) and len(sent) < 400:
                    notes.append(f"docs/{f.name}: {sent.strip()}")
    seen, out = set(), []
    for n in notes:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def caveats(result: dict) -> list[str]:
    """Plain-text caveats for the report and the JSON summary."""
    out = []
    archs = {lay["arch"] for lay in result.get("layouts", [])}
    rec = result.get("recommended") or {}
    if rec.get("arch") == "foe" or "foe" in archs:
        out.append("FoE is a different model: a federated model must be trained (or retrained) with C clusters "
                   "of experts; an existing MoE checkpoint cannot be served as FoE. FoE layouts assume the "
                   "iso-parameter derivation (same total and active parameters) and equal quality.")
    w = result.get("workload", {})
    if is_closed_loop(result):
        out.append(_closed_loop_caveat(w))
    else:
        out.append(f"Workload: {result.get('trace')} (mean prompt {w.get('mean_prompt_tokens', 0):.0f} tokens, mean "
                   f"output {w.get('mean_output_tokens', 0):.0f} tokens); each rate probe simulates about "
                   f"{w.get('requests_per_probe')} requests with seed {w.get('seed')}, Poisson arrivals. Short probes "
                   "understate tail effects of long runs; rates are found to within the bisection bracket.")
        out.append("Goodput of a deployment = replicas x the rate one replica sustains (one replica simulated); "
                   "the recommended layout is re-checked with all replicas when it has more than one.")
    if result.get("disagg"):
        out.append(_disagg_caveat(result["disagg"]))
    out.append(f"Expert routing: {result.get('routing')}; iteration times are interpolated from forward-model "
               "evaluations on a grid (simfoe.serving.step_models.InterpCost).")
    out.append("Token budget per iteration (chunked prefill) is chosen per layout and applies to each data-parallel "
               "attention rank, as in vLLM and SGLang: one chunk on every rank takes at most 80% of the TBT SLO.")
    if any((x.get("dp_ranks") or 1) > 1 for x in result.get("layouts", [])):
        out.append("Layouts with several DP attention ranks (MoE with DP attention: one per GPU; with TP attention "
                   "across nodes: one per node) pin each request to a rank by vLLM's load-balancing score (4 x waiting "
                   "+ running), and an iteration waits for the rank with the most attention and other per-rank "
                   "compute; the imbalance of the all-to-all and of the TP collectives (the busiest rank sends "
                   "more tokens) is not modeled, so their rates lean optimistic. Throughput bounds and busy-time "
                   "breakdowns assume a full chunk on every rank (an upper bound).")
    notes = calibration_notes(result.get("hardware", []))
    if notes:
        out.append("Calibration of the hardware profiles used (from their provenance and docs/calibration-*.md):")
        out.extend("  " + n for n in notes)
    else:
        out.append("No calibration error figures were found in the hardware profiles' provenance or "
                   "docs/calibration-*.md; treat absolute numbers as uncalibrated.")
    return out


def _disagg_caveat(d: dict) -> str:
    mtp = (" The decode pool's multi-token prediction accepts its draft with DeepSeek-V3's published 85% "
           "(simfoe.serving.mtp).") if max(d.get("mtp") or [0]) else ""
    return ("Disaggregated deployments run both pools on one GPU type, each worker whole nodes of one layout, at the "
            "workload's concurrency (one probe each, as the aggregated layouts). A deployment is pruned only when its "
            "bounds reach neither the top two in tokens/s per GPU nor past an achieved deployment in both tokens/s "
            "per GPU and per user, so the Pareto front is that of every deployment searched, as far as the bounds hold "
            "(they take a passing run's mean TTFT to be at most twice its p90; docs/planner.md); aggregated layouts "
            "are on it as the aggregated search found them." + mtp)


def is_closed_loop(result: dict) -> bool:
    """Whether the search ran a closed-loop workload (one probe per layout) rather than a rate search."""
    return (result.get("workload") or {}).get("kind") == "closed-loop"


def workload_words(result: dict) -> str:
    """The workload in words: the trace's name, or the closed loop as the benchmark would run it."""
    return (result.get("workload") or {}).get("source") if is_closed_loop(result) else str(result.get("trace"))


def operating_point(result: dict) -> str:
    """Where layouts were judged: 'maximum rate' (rate search) or 'concurrency' (closed loop)."""
    return "concurrency" if is_closed_loop(result) else "maximum rate"


def missed_words(search: dict, result: dict) -> str:
    """', N missed the SLOs at every rate' (closed loop: 'at the concurrency'), or '' when none did."""
    n = search.get("infeasible_after_simulation")
    return f", {n} missed the SLOs {'at the concurrency' if is_closed_loop(result) else 'at every rate'}" if n else ""


def _closed_loop_caveat(w: dict) -> str:
    return (f"Workload: {w.get('source')}, seed {w.get('seed')}. Each layout is probed once at this concurrency "
            "with every replica simulated: the clients are split over the replicas by the least-outstanding "
            "router (each request to the replica with the fewest in flight). The 2x-load check runs twice the "
            "clients, prompts and warm-ups. A probe's throughput includes the drain at its end (docs/serving.md).")


def explain(result: dict) -> str:
    """One sentence on why the winner wins, from the per-request time breakdowns of the analysis; every
    comparison it words (wins/tied, less/more busy time) agrees with the figures it quotes."""
    an, rec = result.get("analysis") or {}, result.get("recommended")
    if not rec or rec["label"] not in an or len(an) < 2:
        return ""
    key, unit = _rank_metric(result)
    rank = {x["label"]: x.get(key) for x in result.get("layouts", [])}
    w = an[rec["label"]]["breakdown"]
    out = [_against(label, w, a["breakdown"], (rank.get(rec["label"]), rank.get(label)), unit)
           for label, a in an.items() if label != rec["label"]]
    return _verdict(result) + "; ".join(out) + "."


def _rank_metric(result: dict) -> tuple[str, str]:
    """(layout key, unit) of what the layouts are ranked by (the result's ``rank_key`` and ``rank_unit``;
    results stored before those keys existed: looked up from their ``rank_by`` words)."""
    if "rank_key" in result:
        return result["rank_key"], result["rank_unit"]
    words = {v[0]: v[1:] for v in RANK_METRICS.values()}
    return words.get(result.get("rank_by"), RANK_METRICS[(is_closed_loop(result), False)][1:])


def _verdict(result: dict) -> str:
    """'X wins: ...; ' or, when the margin over the runner-up is within the rate search's resolution,
    'X and Y are tied: ...; '."""
    rec, ru = result["recommended"], result.get("runner_up")
    steps = result.get("workload", {}).get("bisect_steps")
    key, unit = _rank_metric(result)
    if ru and ru.get(key) and rec.get(key) and steps is not None:
        margin = rec[key] / ru[key] - 1
        res = 2 ** (1 / 2 ** steps) - 1
        if margin <= res:
            return (f"{rec['label']} and the runner-up {ru['label']} are tied: {rec[key]:.3g} vs {ru[key]:.3g} "
                    f"{unit}, {margin:.1%} apart, within the rate search's resolution ({res:.1%}); ")
    return f"{rec['label']} wins; "


def _against(label: str, w: dict, b: dict, ranks: tuple, unit: str) -> str:
    """The winner's busy GPU time per request (breakdown ``w``) against layout ``label``'s (``b``), seconds.
    Less: the category where the other spends the most extra. Not less: the edge is the ranked rate
    (``ranks``: the two layouts' values, in ``unit``)."""
    names = {"compute_s": "compute", "all_to_all_s": "all-to-all", "all_reduce_s": "all-reduce"}
    diff = {k: b.get(k, 0.0) - w.get(k, 0.0) for k in names}
    busy_w, busy_b = (float(f"{sum(x.get(k, 0.0) for k in names):.3g}") for x in (w, b))
    head = f"against {label}: {busy_w:.3g} s vs {busy_b:.3g} s of busy GPU time per request"
    if busy_w < busy_b:
        k = max(diff, key=diff.get)
        return f"{head}; the other layout's largest excess is {names[k]} ({diff[k]:+.3g} s)"
    rates = f" ({ranks[0]:.3g} vs {ranks[1]:.3g} {unit})" if all(ranks) else ""
    return (f"{head}: the other layout is not slower per request; the winner's edge is its rate under the "
            f"SLOs{rates}")


def pruned_words(search: dict) -> str:
    """'N pruned (count reason, ...)' or 'none pruned': layouts rejected without a rate search."""
    by = search.get("pruned_by_reason") or {}
    if not search.get("pruned"):
        return "none pruned"
    return f"{search['pruned']} pruned ({', '.join(f'{v} {k}' for k, v in by.items())})"


def what_ran(run: dict | None) -> list[str]:
    """The report's "What ran" block from the ``run`` record (simfoe.provenance): simfoe version and the
    command line; nothing without a record (the Python API's ``recommend`` adds none)."""
    if not run:
        return []
    cmd = run.get("command")
    return ["<h2>What ran</h2>", f"<p>simfoe {_e(run['simfoe_version'])}; command "
            + (f"<code>{_e(cmd)}</code>" if cmd else "not recorded (called from Python)") + "</p>"]


# ---- plots -------------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plots(result: dict) -> dict[str, str]:
    """data: URIs of the report's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, str] = {}
    lays = result.get("layouts", [])[:20]
    if lays:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(lays) + 1.2))
        key, unit = _rank_metric(result)
        vals = [x.get(key) or 0 for x in lays]
        colors = ["#2b8a3e" if i == 0 else ("#74b816" if i == 1 else "#adb5bd") for i in range(len(lays))]
        ax.barh(range(len(lays)), vals, color=colors)
        ax.set_yticks(range(len(lays)), [x["label"] for x in lays], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.set_title("Feasible layouts (winner dark green)")
        figs["goodput"] = _png(fig)
    an = result.get("analysis", {})
    if an:
        fig, ax = plt.subplots(figsize=(7, 2.2 + 0.4 * len(an)))
        cats = [("compute_s", "compute", "#4c6ef5"), ("all_to_all_s", "all-to-all", "#f76707"),
                ("all_reduce_s", "all-reduce", "#e64980"), ("queueing_s", "queueing", "#868e96")]
        names = list(an)
        left = [0.0] * len(names)
        for key, lab, col in cats:
            v = [an[n]["breakdown"].get(key, 0.0) for n in names]
            ax.barh(range(len(names)), v, left=left, label=lab, color=col)
            left = [a + b for a, b in zip(left, v)]
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("seconds per request (busy GPU time by kind, plus mean queueing delay)")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"Where the time goes at the {operating_point(result)}")
        figs["breakdown"] = _png(fig)
    tops = [x for x in (result.get("recommended"), result.get("runner_up")) if x]
    if tops and not is_closed_loop(result):  # a closed loop has one probe per layout, no rate search
        panels = [(k, s, lab) for k, s, lab in (("ttft_p90_s", result["slo"].get("ttft_p90_s"), "p90 TTFT (s)"),
                                                  ("tbt_p99_s", result["slo"].get("tbt_p99_s"), "p99 TBT (s)")) if s]
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.2), squeeze=False)
        for ax, (key, slo_v, lab) in zip(axes[0], panels):
            for x, m in zip(tops, ("o", "s")):
                pr = sorted((p for p in x["probes"] if p.get(key) is not None), key=lambda p: p["rate_rps"])
                ax.plot([p["rate_rps"] for p in pr], [p[key] for p in pr], marker=m, label=x["label"][:60])
            ax.axhline(slo_v, color="k", ls="--", lw=1, label="SLO")
            if key == "ttft_p90_s":
                ax.set_yscale("log")
            ax.set_xlabel("arrival rate per replica (requests/s)")
            ax.set_ylabel(lab)
        axes[0][0].legend(fontsize=6)
        fig.suptitle("Rate search probes (a probe passes when every SLO holds)")
        figs["probes"] = _png(fig)
    if (result.get("disagg") or {}).get("deployments"):
        figs["pareto"] = _pareto_png(result["disagg"], plt)
    return figs


def _pareto_png(d: dict, plt) -> str:
    """Tokens/s per GPU against tokens/s per user of every passing deployment, by mode, the front joined."""
    fig, ax = plt.subplots(figsize=(7, 4))
    deps, key = d["deployments"], d.get("front_key", "output_tokens_per_s_per_gpu")
    for mode, m, col in (("aggregated", "o", "#4c6ef5"), ("disagg", "s", "#f76707")):
        pts = [(e["tokens_per_s_per_user"] or 0.0, e[key]) for e in deps if e["mode"] == mode]
        if pts:
            ax.scatter(*zip(*pts), marker=m, color=col, alpha=0.6, label=mode)
    front = sorted((e["tokens_per_s_per_user"] or 0.0, e[key]) for e in deps if e["pareto"])
    ax.plot(*zip(*front), color="k", lw=1, marker="*", ms=10, label="Pareto front")
    ax.set_xlabel("output tokens/s per user (1 / mean TPOT)")
    ax.set_ylabel({"output_tokens_per_dollar": "output tokens per $"}.get(key, "output tokens/s per GPU"))
    ax.legend(fontsize=7)
    ax.set_title("Aggregated vs disaggregated deployments at the concurrency")
    return _png(fig)


# ---- HTML --------------------------------------------------------------------------------------
def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _n(x, fmt="{:.3g}") -> str:
    return "-" if x is None else fmt.format(x)


def _table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _layouts_table(r: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the feasible layouts: open loop: the searched maximum rate, goodput and bound;
    closed loop: output tokens/s per GPU (per $) and the request rate achieved at the concurrency."""
    closed = is_closed_loop(r)
    if closed:
        head = ["layout", "replicas", "GPUs", "token budget per rank", "output tokens/s per GPU", "output tokens per $",
                "achieved req/s per replica", "achieved req/s"]
    else:
        head = ["layout", "replicas", "GPUs", "token budget per rank", "rate/replica", "goodput", "per GPU",
                "req per $", "bound/replica"]
    rows = []
    for x in r.get("layouts", []):
        ge = "&ge; " if x["status"] == "partial" else ""
        row = [_e(x["label"]), _e(x["replicas"]), _e(x["total_gpus"]), _e(x["token_budget"])]
        if closed:
            row += [_e(_n(x.get("output_tokens_per_s_per_gpu"))), _e(_n(x.get("output_tokens_per_dollar"), "{:.0f}")),
                    _e(_n(x["max_rate_rps_per_replica"])), _e(_n(x["goodput_rps"]))]
        else:
            row += [ge + _e(_n(x["max_rate_rps_per_replica"])), ge + _e(_n(x["goodput_rps"])),
                    ge + _e(_n(x["goodput_rps_per_gpu"])), _e(_n(x.get("requests_per_dollar"), "{:.0f}")),
                    _e(_n(x["bound_rps_per_replica"]))]
        at = x.get("at_max_rate") or {}
        rows.append(row + [_e(fmt_time(at.get("ttft_p90_s"))), _e(fmt_time(at.get("tbt_p99_s")))])
    return head + ["p90 TTFT", "p99 TBT"], rows


def _layout_desc(x: dict) -> str:
    return (f"<b>{_e(x['label'])}</b>: {_e(x['replicas'])} replica(s) x {_e(x['gpus_per_replica'])} GPUs; "
            f"goodput {_n(x['goodput_rps'])} req/s ({_n(x['goodput_rps_per_gpu'])} per GPU"
            + (f", {_n(x['requests_per_dollar'], '{:.0f}')} requests per $" if x.get("requests_per_dollar") else "")
            + f"); token budget {_e(x['token_budget'])}"
            + (f"; output {_n(x['output_tokens_per_s'])} tokens/s ({_n(x['output_tokens_per_s_per_gpu'])} per GPU)"
               if x.get("output_tokens_per_s") is not None else "")
            + (f" per DP attention rank ({_e(x['dp_ranks'])} ranks)" if (x.get("dp_ranks") or 1) > 1 else "")
            + f"; KV cache {_e(format(x['kv_capacity_tokens'] or 0, ','))} tokens"
            + f"; weights {_e(fmt_bytes(x['weight_bytes_per_gpu']))} per GPU.")


def disagg_words(d: dict) -> str:
    """The best deployment of either mode in words (or that none passed)."""
    rec = d.get("recommended")
    if not rec:
        return "no deployment, aggregated or disaggregated, meets the SLOs at the concurrency"
    user = rec["tokens_per_s_per_user"]
    return (f"best of both modes: {rec['label']} ({rec['mode']}), {rec['output_tokens_per_s_per_gpu']:,.0f} output "
            f"tokens/s per GPU, {'-' if user is None else f'{user:,.0f}'} tokens/s per user; "
            f"{len(d['pareto'])} deployment(s) on the Pareto front")


def _disagg_section(d: dict, figs: dict) -> list[str]:
    """'Aggregated or disaggregated': the best of both modes, the Pareto figure and table, the search's counts."""
    s = d["search"]
    out = ["<h2>Aggregated or disaggregated</h2>",
           f"<p>{_e(disagg_words(d))}. Disaggregated deployments: a prefill pool of x workers and a decode pool of y "
           f"workers (xPyD), each worker one of the layouts above, MTP drafts per decode step searched: "
           f"{_e(', '.join(map(str, d['mtp'])))}; KV sent "
           f"{_e(d['kv_transfer'])} on the fabric, first token from the {_e(d['first_token'])} worker. "
           + ("The best deployment's launch commands per pool follow the table."
              if any(e.get("launch") for e in d["layouts"]) else
              "No launch command is given (recommend --engine NAME gives one).") + "</p>",
           f"<p class=\"muted\">{s['candidates']} disaggregated deployments from {s['pools_screened']} pool "
           f"screenings: {s['simulated']} simulated ({s['probes']} probes, {s['infeasible_after_simulation']} missed "
           f"the SLOs), {s['pruned']} pruned ({_e(', '.join(f'{v} {k}' for k, v in s['pruned_by_reason'].items()) or '-')})"
           f"; {s['wall_s']:.1f} s.</p>"]
    if "pareto" in figs:
        out.append(f"<img alt=\"Pareto front\" src=\"{figs['pareto']}\">")
    rows = [[_e(e["label"]), _e(e["mode"]), _e(e["total_gpus"]), _e(_n(e["output_tokens_per_s_per_gpu"])),
             _e(_n(e["tokens_per_s_per_user"])), _e(fmt_time(e["ttft_p90_s"])), _e(fmt_time(e["tbt_p99_s"])),
             "yes" if e["pareto"] else ""] for e in d["deployments"][:30]]
    if rows:
        out.append(_table(["deployment", "mode", "GPUs", "output tokens/s per GPU", "tokens/s per user", "p90 TTFT",
                           "p99 TBT", "Pareto"], rows))
    best = next((e for e in d["layouts"] if e.get("launch")), None)
    if best is not None:
        for role in ("prefill", "decode"):
            out += launch_html(f"{best['label']}: {role} pool", best["launch"][role])
    return out


def launch_html(title: str, launch: dict) -> list[str]:
    """A launch block: the engine, each command as code, the notes."""
    return [f"<h3>Launch: {_e(title)} ({_e(launch['engine'])} {_e(launch['version'])})</h3>"]\
        + [f"<p><code>{_e(c)}</code></p>" for c in launch["commands"]]\
        + ["<ul>" + "".join(f"<li>{_e(n)}</li>" for n in launch["notes"]) + "</ul>"]


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#212529}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #dee2e6;padding:3px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f1f3f5}.win{background:#ebfbee;padding:.6em 1em;border-left:4px solid #2b8a3e}
.muted{color:#868e96;font-size:12px}img{max-width:100%}code{background:#f1f3f5;padding:0 3px}"""


def render_html(result: dict) -> str:
    """The report as one HTML string (no scripts, no external resources)."""
    r = result
    figs = plots(r)
    an = r.get("analysis", {})
    parts = [*_head_html(r), *_recommendation_html(r), *_search_html(r)]
    if r.get("disagg"):
        parts += _disagg_section(r["disagg"], figs)
    parts += _why_html(r, an, figs) + _sensitivity_html(r, an) + _layouts_html(r, figs)
    parts += _invalid_html(r)
    parts += what_ran(r.get("run"))
    parts.append("<h2>Caveats</h2><ul>" + "".join(f"<li>{_e(c)}</li>" for c in r.get("caveats", [])) + "</ul>")
    parts.append("<p class=\"muted\">Generated by simfoe recommend. Times in seconds, rates in requests/s.</p></body></html>")
    return "\n".join(parts)


def _head_html(r: dict) -> list[str]:
    """The page head and the title block: hardware, node limit, workload, SLOs (s), ranking, overrides."""
    slo = r["slo"]
    title = f"simfoe placement recommendation: {r['model']}"
    return [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>", f"<h1>{_e(title)}</h1>",
            f"<p>Hardware: {_e(', '.join(r['hardware']))}; up to {_e(r['max_nodes'])} node(s); workload "
            f"<code>{_e(workload_words(r))}</code>; SLOs: p90 TTFT &le; {_e(_n(slo['ttft_p90_s']))} s, p99 TBT &le; "
            f"{_e(_n(slo['tbt_p99_s']))} s; ranked by {_e(r['rank_by'])}."
            + (f" Overrides: <code>{_e(' '.join(r['overrides']))}</code>." if r.get("overrides") else "") + "</p>"]


def _recommendation_html(r: dict) -> list[str]:
    """The recommended layout, its all-replica check, launch commands and the runner-up (or that none fits)."""
    rec, ru = r.get("recommended"), r.get("runner_up")
    parts = ["<h2>Recommendation</h2>"]
    if not rec:
        return parts + ["<p><b>No layout meets the SLOs.</b> See the rejected layouts below.</p>"]
    parts.append(f"<div class=\"win\">{_layout_desc(rec)}</div>")
    if rec.get("replica_check"):
        rc = rec["replica_check"]
        parts.append(f"<p>Check with all {_e(rec['replicas'])} replicas simulated at {_n(rc['rate_rps'])} req/s: "
                     f"p90 TTFT {_e(fmt_time(rc['ttft_p90_s']))}, p99 TBT {_e(fmt_time(rc['tbt_p99_s']))}, "
                     f"{'meets' if rc['ok'] else 'MISSES'} the SLOs.</p>")
    if r.get("launch"):
        parts += launch_html("the recommended layout", r["launch"])
    if ru:
        parts.append(f"<p>Runner-up: {_layout_desc(ru)}</p>")
    return parts


def _search_html(r: dict) -> list[str]:
    """What the search did: candidates, simulated, pruned (and why), invalid; its wall time (s)."""
    s = r["search"]
    parts = [f"<p class=\"muted\">Search: {s['candidates']} candidate layouts, {s['simulated']} simulated "
             f"({s['probes']} serving probes{missed_words(s, r)}), "
             f"{s['pruned']} rejected without a {'probe' if is_closed_loop(r) else 'rate search'}, "
             f"{s['skipped_placements']} placements invalid; {s['wall_s']:.1f} s search, "
             f"{s.get('total_wall_s', s['wall_s']):.1f} s with the analysis.</p>"]
    if s["pruned_by_reason"]:
        parts.append(_table(["pruned because", "layouts"], [[_e(k), _e(v)] for k, v in s["pruned_by_reason"].items()]))
    return parts


def _why_html(r: dict, an: dict, figs: dict) -> list[str]:
    """Why the winner wins: each analysed layout's busy GPU time per request by category and its queueing (s)."""
    if not an:
        return []
    parts = ["<h2>Why the winner wins</h2>"]
    rows = []
    for name, a in an.items():
        b = a["breakdown"]
        tot = sum(b[k] for k in ("compute_s", "all_to_all_s", "all_reduce_s"))
        rows.append([_e(name), _e(fmt_time(b["compute_s"])), _e(fmt_time(b["all_to_all_s"])),
                     _e(fmt_time(b["all_reduce_s"])), _e(fmt_time(tot)), _e(fmt_time(b["queueing_s"])),
                     _e(b["decode_batch"])])
    if r.get("why"):
        parts.append(f"<p>{_e(r['why'])}</p>")
    parts.append(f"<p>Busy GPU time per request at each layout's {operating_point(r)} (prefill chunks plus its "
                 "share of decode steps), and the mean queueing delay:</p>")
    parts.append(_table(["layout", "compute", "all-to-all", "all-reduce", "busy total", "queueing",
                         "decode batch"], rows))
    if "breakdown" in figs:
        parts.append(f"<img alt=\"time breakdown\" src=\"{figs['breakdown']}\">")
    return parts


def _sensitivity_html(r: dict, an: dict) -> list[str]:
    """SLO metrics (s) of each analysed layout under changed conditions (none under --no-sensitivity)."""
    if not any(a.get("sensitivity") for a in an.values()):
        return []
    rows = []
    for name, a in an.items():
        for cond, v in a.get("sensitivity", {}).items():
            if "error" in v:
                rows.append([_e(name), _e(cond), "-", "-", _e(v["error"])])
                continue
            rows.append([_e(name), _e(cond), _e(fmt_time(v.get("ttft_p90_s"))), _e(fmt_time(v.get("tbt_p99_s"))),
                         _e(("meets SLOs" if v.get("ok") else "misses SLOs") + (f" ({v['note']})" if v.get("note") else ""))])
    return [f"<h2>Sensitivity</h2><p>SLO metrics at each layout's {operating_point(r)} when conditions "
            "change (one probe each):</p>", _table(["layout", "condition", "p90 TTFT", "p99 TBT", "verdict"], rows)]


def _layouts_html(r: dict, figs: dict) -> list[str]:
    """Every feasible layout: the goodput figure, the table and the rate-search probes figure."""
    parts = [f"<h2>All feasible layouts</h2><img alt=\"goodput per GPU\" src=\"{figs['goodput']}\">"] if "goodput" in figs else []
    parts.append(_table(*_layouts_table(r)))
    parts.append("<p class=\"muted\">&ge;: the rate search stopped early once its bracket fell below the "
                 "runner-up; the value is a lower bound.</p>")
    if "probes" in figs:
        parts.append(f"<img alt=\"rate search probes\" src=\"{figs['probes']}\">")
    return parts


def _invalid_html(r: dict) -> list[str]:
    """The rejected layouts and the invalid placements, each with its reason."""
    parts = []
    rej = r.get("rejected", [])
    if rej:
        parts.append("<h2>Rejected layouts</h2>")
        parts.append(_table(["layout", "status", "reason"], [[_e(x["label"]), _e(x["status"]), _e(x["reason"])] for x in rej]))
    if r.get("skipped"):
        parts.append("<h2>Invalid placements</h2>")
        parts.append(_table(["placement", "reason"], [[_e(x["what"]), _e(x["reason"])] for x in r["skipped"]]))
    return parts


def write_report(result: dict, out: str | Path, field: str = "--out") -> dict:
    """Write ``out`` (.html) and the JSON summary beside it (same stem, .json) atomically, both or
    neither; returns both paths. A write error is a SpecError naming ``field``."""
    from simfoe.outputs import AtomicFiles

    p = Path(out)
    jp = p.with_suffix(".json")
    result.setdefault("caveats", caveats(result))
    files = {"html": str(p), "json": str(jp)}
    with AtomicFiles(field) as w:  # both files or neither; no temporary file left on failure
        full = {**result, "files": files}
        w.path(p).write_text(render_html(full), encoding="utf-8")
        w.path(jp).write_text(json_text(full), encoding="utf-8")
    result["files"] = files
    return files
