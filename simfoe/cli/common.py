"""CLI plumbing shared by every sub-command: one-line errors with exit 2, JSON output, tables.

Each sub-command module exposes ``register(subparsers)`` which adds its parser and sets
``func=run`` where ``run(args) -> dict`` returns the JSON-able result. ``--json`` prints exactly
that object; otherwise the command's ``render(result)`` (or a generic table) is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


class UsageError(Exception):
    """Raised by the argument parser instead of printing usage and exiting."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become a single `error: ...` line with exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(message)


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def add_set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec field by dotted path, e.g. hardware.network.nic_bandwidth=100e9 "
        "(repeatable; roots: hardware, model, placement)",
    )


def _clean(obj: Any) -> Any:
    """Make a result JSON-safe: numpy scalars to Python, NaN/inf to None."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if np is not None and isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def print_json(result: dict) -> None:
    sys.stdout.write(json.dumps(_clean(result), indent=None, sort_keys=False) + "\n")


def fmt_time(seconds: float | None) -> str:
    """Human-readable duration."""
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)):
        return "-"
    s = float(seconds)
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"


def table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    """Plain aligned text table."""
    cells = [[str(c) for c in r] for r in ([header] if header else []) + rows]
    if not cells:
        return ""
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(len(r) for r in cells))]
    out = []
    for j, r in enumerate(cells):
        out.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if header and j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
