"""Read request traces in the public formats into a :class:`RequestTable`.

Formats (detected from the header / first record; see traces/README.md):

==========  ==========================================================  ==========================
name        columns                                                      timestamps
==========  ==========================================================  ==========================
simfoe      arrival_s,prompt_tokens,output_tokens[,request_id][,prompt_type]  seconds
azure       TIMESTAMP,ContextTokens,GeneratedTokens (Azure LLM inference 2023)  datetime strings
mooncake    jsonl {timestamp, input_length, output_length[, hash_ids]}   milliseconds
burstgpt    Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type  seconds
lengths     num_prefill_tokens,num_decode_tokens[,arrived_at] (ShareGPT / Vidur tables)  seconds or none
==========  ==========================================================  ==========================

Every loader returns arrivals relative to the first request (earliest = 0 s), rows sorted by
arrival, request ids = 0-based data-row index in the file. A malformed row (unparseable number or
time, token count < 1, too many fields) raises :class:`TraceRowError` naming the file and its
1-based line number, unless ``skip_bad_rows=True``: then such rows are dropped and counted in
``RequestTable.skipped_rows`` (first line numbers in ``skipped_lines``). Nothing is dropped silently.
"""
from __future__ import annotations

import csv
import gzip
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from simfoe.errors import SpecError, plain
from simfoe.workloads.requests import RequestTable

FORMATS = ("simfoe", "azure", "mooncake", "burstgpt", "lengths")

#: Mooncake traces hash prompts in blocks of 512 tokens (kvcache-ai/Mooncake FAST25-release/traces README).
MOONCAKE_BLOCK_TOKENS = 512
#: Mooncake timestamps are milliseconds (same README).
_MS = 1e-3
#: How many skipped line numbers a table keeps for the report.
_KEEP_LINES = 10

# format -> (required header columns, optional header columns); names as spelled in the files.
_CSV_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "simfoe": (("arrival_s", "prompt_tokens", "output_tokens"), ("request_id", "prompt_type")),
    "azure": (("TIMESTAMP", "ContextTokens", "GeneratedTokens"), ()),
    "burstgpt": (("Timestamp", "Request tokens", "Response tokens"), ("Model", "Total tokens", "Log Type")),
    "lengths": (("num_prefill_tokens", "num_decode_tokens"), ("arrived_at",)),
}


class TraceRowError(SpecError):
    """A malformed trace row: names the file, the 1-based line and what is wrong."""

    def __init__(self, path: Path | str, line: int | None, problem: str):
        where = f"{path} line {line}" if line is not None else str(path)
        self.field, self.value = "trace", where
        self.allowed = "fix the row, or pass skip_bad_rows=True (--skip-bad-rows) to drop malformed rows and report their count"
        self.line = line
        ValueError.__init__(self, f"trace: {where}: {problem}; {self.allowed}")


# ---------------------------------------------------------------------------- detection
def _open_text(path: Path):
    """Text handle; utf-8-sig drops a byte-order mark so headers still match."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    return open(path, newline="", encoding="utf-8-sig")


def _first_line(path: Path) -> str:
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                return line.strip()
    return ""


def detect_format(path: str | Path) -> str:
    """Name of the trace format of ``path`` (one of ``FORMATS``), from its first line."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("trace", str(path), "an existing trace file or a built-in name")
    head = _first_line(path)
    if head.startswith("{"):
        try:
            keys = set(json.loads(head))
        except json.JSONDecodeError:
            raise TraceRowError(path, 1, "first line starts like JSON but does not parse") from None
        if {"timestamp", "input_length", "output_length"} <= keys:
            return "mooncake"
        raise SpecError("trace", str(path), f"jsonl with timestamp,input_length,output_length (found keys {sorted(keys)})")
    cols = next(csv.reader([head]))
    cols = [c.strip() for c in cols]
    for name, (required, _) in _CSV_COLUMNS.items():
        if set(required) <= set(cols):
            return name
    raise SpecError(
        "trace",
        str(path),
        "a header of one of: " + "; ".join(f"{k}: {','.join(v[0])}" for k, v in _CSV_COLUMNS.items())
        + f" (found {','.join(cols)})",
    )


# ---------------------------------------------------------------------------- csv reading
def _scan_lines(path: Path, ncols: int) -> tuple[np.ndarray, list[int]]:
    """Physical 1-based line numbers of data records as pandas sees them, and of too-long records.

    Only run on the error path (it is a Python loop over the file)."""
    good, long_ = [], []
    with _open_text(path) as f:
        r = csv.reader(f)
        next(r, None)
        for rec in r:
            if not rec:  # blank line: pandas skips it too
                continue
            (long_ if len(rec) > ncols else good).append(r.line_num)
    return np.asarray(good, dtype=np.int64), long_


def _read_csv(path: Path, skip_bad_rows: bool) -> tuple[pd.DataFrame, np.ndarray | None, list[int]]:
    """The csv as a DataFrame, its rows' line numbers (None = not computed yet) and skipped lines."""
    try:
        df = pd.read_csv(path, skipinitialspace=True, encoding="utf-8-sig")
        return df, None, []
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        line = int(m.group(1)) if m else None
        if not skip_bad_rows:
            raise TraceRowError(path, line, str(e).strip().removeprefix("Error tokenizing data. C error: ")) from None
    except (UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise TraceRowError(path, None, f"not a readable csv ({e})") from None
    ncols = len(next(csv.reader([_first_line(path)])))
    lines, long_ = _scan_lines(path, ncols)
    df = pd.read_csv(path, skipinitialspace=True, encoding="utf-8-sig", skiprows=[ln - 1 for ln in long_])
    return df, lines, long_


def _as_int(s: pd.Series, minimum: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, bad mask): bad = missing, not a number, not an integer, or < minimum."""
    x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(x) | (x < minimum) | (x != np.round(x))
    return np.where(bad, minimum, x).astype(np.int64), bad


def _as_seconds(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 seconds, bad mask) for numeric timestamps; bad = missing, not finite, negative."""
    x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(x) | (x < 0)
    return np.where(bad, 0.0, x), bad


def _as_datetime_seconds(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 seconds since the earliest valid time, bad mask) for ISO-8601 date-time strings."""
    t = pd.to_datetime(s.astype(str), format="ISO8601", errors="coerce")
    bad = t.isna().to_numpy()
    ns = t.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    base = ns[~bad].min() if (~bad).any() else 0
    return np.where(bad, 0.0, (ns - base) * 1e-9), bad


# format -> (time column, its kind, prompt-token column, output-token column, prompt-type column)
_ROLES: dict[str, tuple[str, str, str, str, str | None]] = {
    "simfoe": ("arrival_s", "seconds", "prompt_tokens", "output_tokens", "prompt_type"),
    "azure": ("TIMESTAMP", "datetime", "ContextTokens", "GeneratedTokens", None),
    "burstgpt": ("Timestamp", "seconds", "Request tokens", "Response tokens", "Model"),
    "lengths": ("arrived_at", "seconds", "num_prefill_tokens", "num_decode_tokens", None),  # time optional
}


def _load_csv(path: Path, fmt: str, skip_bad_rows: bool) -> RequestTable:
    required, _ = _CSV_COLUMNS[fmt]
    df, lines, long_lines = _read_csv(path, skip_bad_rows)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SpecError("trace", str(path), f"{fmt} format needs columns {','.join(required)} (missing {','.join(missing)})")
    time_col, time_kind, p_col, o_col, type_col = _ROLES[fmt]
    checks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if time_col in df.columns:
        checks[time_col] = (_as_datetime_seconds if time_kind == "datetime" else _as_seconds)(df[time_col])
    checks[p_col] = _as_int(df[p_col])
    checks[o_col] = _as_int(df[o_col])
    if fmt == "simfoe" and "request_id" in df.columns:
        checks["request_id"] = _as_int(df["request_id"], minimum=0)
    bad = np.zeros(len(df), dtype=bool)
    for _, b in checks.values():
        bad |= b
    skipped = list(long_lines)
    if bad.any():
        if lines is None:
            lines, long_lines = _scan_lines(path, len(df.columns))
        if len(lines) != len(df):  # quoted newlines or odd whitespace: line numbers unknowable
            lines = np.full(len(df), -1, dtype=np.int64)
        if not skip_bad_rows:
            i = int(np.flatnonzero(bad)[0])
            col = next(c for c, (_, b) in checks.items() if b[i])
            line = int(lines[i]) if lines[i] > 0 else None
            hint = " (BurstGPT logs failed requests with 0 response tokens)" if col == "Response tokens" else ""
            raise TraceRowError(path, line, f"column {col!r} has {plain(df[col].iloc[i])!r}, expected {_EXPECT[col]}{hint}")
        skipped = sorted(skipped + [int(x) for x in lines[bad]])
    keep = ~bad
    request_id = checks["request_id"][0] if "request_id" in checks else np.arange(len(df), dtype=np.int64)
    prompt_type = None
    if type_col is not None and type_col in df.columns:
        prompt_type = df[type_col].fillna("").astype(str).to_numpy()[keep]
    arrival = checks[time_col][0][keep] if time_col in checks else None
    if arrival is not None and len(arrival):
        arrival = arrival - arrival.min()
    t = RequestTable.from_arrays(
        arrival,
        checks[p_col][0][keep],
        checks[o_col][0][keep],
        request_id=request_id[keep],
        prompt_type=prompt_type,
        source=f"{fmt}:{path}",
    )
    return _with_skips(t, skipped).sorted_by_arrival()


_EXPECT = {
    "arrival_s": "seconds >= 0",
    "Timestamp": "seconds >= 0",
    "arrived_at": "seconds >= 0",
    "TIMESTAMP": "a date-time like 2023-11-16 18:15:46.6805900",
    "request_id": "an integer >= 0",
}
for _c in ("prompt_tokens", "output_tokens", "ContextTokens", "GeneratedTokens", "Request tokens",
           "Response tokens", "num_prefill_tokens", "num_decode_tokens"):
    _EXPECT[_c] = "an integer token count >= 1"


def _with_skips(t: RequestTable, skipped: list[int]) -> RequestTable:
    return replace(t, skipped_rows=len(skipped), skipped_lines=tuple(skipped[:_KEEP_LINES]))


# ---------------------------------------------------------------------------- jsonl (Mooncake)
def _load_mooncake(path: Path, skip_bad_rows: bool) -> RequestTable:
    ts, inp, out, hashes, rid, skipped = [], [], [], [], [], []
    with _open_text(path) as f:
        row = 0
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                t, i, o = rec["timestamp"], rec["input_length"], rec["output_length"]
                h = rec.get("hash_ids", [])
                ok = (
                    isinstance(t, (int, float)) and t >= 0
                    and isinstance(i, int) and i >= 1 and isinstance(o, int) and o >= 1
                    and isinstance(h, list)
                )
                problem = "" if ok else "timestamp must be ms >= 0, input_length/output_length integers >= 1, hash_ids a list"
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                problem = f"not a record with timestamp,input_length,output_length ({type(e).__name__}: {e})"
            if problem:
                if not skip_bad_rows:
                    raise TraceRowError(path, lineno, problem)
                skipped.append(lineno)
            else:
                ts.append(t)
                inp.append(i)
                out.append(o)
                hashes.append(h)
                rid.append(row)
            row += 1
    arrival = np.asarray(ts, dtype=np.float64) * _MS
    if len(arrival):
        arrival -= arrival.min()
    t = RequestTable.from_arrays(
        arrival, inp, out, request_id=rid, hash_lists=hashes,
        hash_block_tokens=MOONCAKE_BLOCK_TOKENS, source=f"mooncake:{path}",
    )
    return _with_skips(t, skipped).sorted_by_arrival()


# ---------------------------------------------------------------------------- entry point
def load_trace(path: str | Path, skip_bad_rows: bool = False, fmt: str | None = None) -> RequestTable:
    """Read a trace file (format detected unless ``fmt`` names one of ``FORMATS``).

    Returns rows sorted by arrival with arrivals in seconds from the first request (NaN for
    length-only tables); ``skipped_rows`` on the result reports dropped malformed rows.
    """
    path = Path(path)
    if fmt is None:
        fmt = detect_format(path)
    elif fmt not in FORMATS:
        raise SpecError("format", fmt, "one of " + ", ".join(FORMATS))
    elif not path.is_file():
        raise SpecError("trace", str(path), "an existing trace file or a built-in name")
    if fmt == "mooncake":
        return _load_mooncake(path, skip_bad_rows)
    return _load_csv(path, fmt, skip_bad_rows)
