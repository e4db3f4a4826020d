"""CLI plumbing shared by every sub-command: one-line errors with exit 2, JSON output, tables.

Each sub-command module exposes ``register(subparsers)`` which adds its parser and sets
``func=run`` where ``run(args) -> dict`` returns the JSON-able result. ``--json`` prints exactly
that object; otherwise the command's ``render(result)`` (or a generic table) is printed.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any


class UsageError(Exception):
    """Raised by the argument parser instead of printing usage and exiting."""


class _DefaultsMixin:
    """Help formatter part: appends "(default: X)" to an option's help unless the help already states
    a default or the default is empty (None, False, [])."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if (not action.option_strings or action.nargs == 0 or d is None or d == [] or d is argparse.SUPPRESS
                or "default" in h.lower() or h is argparse.SUPPRESS):
            return h
        return (h + " " if h else "") + "(default: %(default)s)"


_FORMATTERS: dict = {}


def _with_defaults(fc):
    if issubclass(fc, _DefaultsMixin):
        return fc
    if fc not in _FORMATTERS:
        _FORMATTERS[fc] = type("Defaults" + fc.__name__, (_DefaultsMixin, fc), {})
    return _FORMATTERS[fc]


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become a single `error: ...` line with exit code 2, and whose
    --help shows every option's default."""

    def __init__(self, *args, formatter_class=argparse.HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=_with_defaults(formatter_class), **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(message)


# ---- input checks shared by the commands (all raise SpecError -> exit 2, one line) ----

#: Largest token count (batch x sequence length) a forward pass or kernel accepts: beyond it the
#: per-layer byte and FLOP counts overflow 64-bit integers.
MAX_TOKENS = 2 ** 40


def check_seed(seed, flag: str = "--seed") -> None:
    from simfoe.errors import SpecError

    if seed is not None and seed < 0:
        raise SpecError(flag, seed, "an integer >= 0")


def placement_conflicts(args, overrides) -> dict:
    """An option given explicitly (not None on ``args``) and a --set placement.<name> that disagrees
    -> SpecError; with no explicit option the --set value is used. Returns {name: --set value}."""
    from simfoe.errors import SpecError
    from simfoe.specs.io import split_override

    found = {}
    for item in overrides or []:
        root, path, value = split_override(item)
        if root != "placement" or path not in ("nodes", "arch"):
            continue
        given = getattr(args, path, None)
        if given is not None and value != given:
            raise SpecError("--set", item, f"the same value as --{path} {given}, or leave one of the two out")
        found[path] = value
    return found


class renamed_fields:
    """Context manager: a SpecError raised inside whose field is an internal name gets the user's
    flag instead (``{"horizon_s": "--horizon"}``); ``values`` maps a field to the value to show."""

    def __init__(self, mapping: dict, values: dict | None = None):
        self.mapping = mapping
        self.values = values or {}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from simfoe.errors import SpecError

        if isinstance(exc, SpecError) and exc.field in self.mapping:
            flag = self.mapping[exc.field]
            new = SpecError(flag, self.values.get(exc.field, exc.value), exc.allowed, problem=getattr(exc, "problem", None))
            msg = str(exc)
            if exc.field not in self.values and msg.startswith(exc.field + ":"):
                new.args = (flag + msg[len(exc.field):],)  # keep the original detail (e.g. a trace row)
            raise new from None
        return False


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def add_set_flag(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help=help or "override a spec field by dotted path, e.g. hardware.network.nic_bandwidth=100e9 "
        "(repeatable; roots: hardware, model, placement)",
    )


def print_json(result: dict) -> None:
    from simfoe.outputs import json_text

    sys.stdout.write(json_text(result, indent=None))


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


def add_limit_flag(p: argparse.ArgumentParser, limit, what: str) -> None:
    """``limit.flag N`` (a :class:`simfoe.limits.Limit`): raise the bound on ``what`` (e.g. "requests
    simulated"), which is checked before the run starts."""
    p.add_argument(limit.flag, type=int, default=None, metavar="N",
                   help=f"refuse a run of more than N {what}, estimated before it starts "
                   f"(default {limit.default:,}; measured cost: {limit.unit_cost()})")


def add_progress_flag(p: argparse.ArgumentParser, what: str = "a progress bar") -> None:
    """--progress / --no-progress; unset (None) means: when stderr is a terminal (see :func:`want_progress`)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help=f"show {what} (default: when stderr is a terminal and not --json)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def want_progress(args) -> bool:
    """--progress / --no-progress as given, else: stderr is a terminal and the output is not --json."""
    return sys.stderr.isatty() and not args.json if args.progress is None else bool(args.progress)


def check_finite_result(value, args, what: str, caught: list) -> None:
    """Raise a one-line SpecError (blaming --set, else --model) unless ``value`` (a simulated time) is a
    finite number; otherwise pass on the ``caught`` warnings that were held back until it was known valid."""
    import warnings

    from simfoe.errors import SpecError

    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise SpecError("--set" if args.overrides else "--model", " ".join(args.overrides) or args.model,
                        f"inputs whose {what} (it overflowed; check --set values such as peak_flops or bandwidths)")
    for m in caught:
        warnings.showwarning(m.message, m.category, m.filename, m.lineno)


#: argparse entries that are plumbing, not options of a run (left out of the run record's options)
_NOT_OPTIONS = ("func", "render", "json", "progress", "overrides", "argv", "command")


def run_record(args, nodes: int, arch: str, seed: int | None = None, routing: str | None = None) -> dict:
    """The ``run`` provenance record of a forward or serve command (:func:`simfoe.api.run_record`):
    version, command line, specs as resolved, ``--set`` list and the command's options."""
    from simfoe.api import run_record as record

    return record(args.model, args.hardware, nodes, arch, args.overrides, seed=seed, routing=routing,
                  options=run_options(args), argv=getattr(args, "argv", None)).to_dict()


def command_run(args, model=None, hardware=()) -> dict:
    """The ``run`` provenance record of a command without one placement (recommend, validate, kernel;
    :func:`simfoe.provenance.command_record`): version, command line, ``--set`` list, seed and routing
    where it has them, its options, and the resolved ``model`` and ``hardware`` specs it is given."""
    from simfoe.provenance import command_record

    return command_record(model=model, hardware=hardware, overrides=args.overrides, seed=getattr(args, "seed", None),
                          routing=getattr(args, "routing", None), options=run_options(args),
                          argv=getattr(args, "argv", None)).to_dict()


def run_options(args) -> dict:
    """A command's options as given (argparse plumbing left out); the resolved values are in the specs."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS}


def run_lines(r: dict) -> list[str]:
    """Text lines naming what a forward or serve result simulated: its ``layout`` and ``run`` record."""
    lines = [f"layout: {r['layout']['label']}"] if r.get("layout") else []
    run = r.get("run")
    if run:
        sets = f"; --set {' '.join(run['overrides'])}" if run["overrides"] else ""
        lines.append(f"run: {run['model']} on {run['hardware']}, routing {run['routing']}, seed {run['seed']}"
                     f"{sets}; simfoe {run['simfoe_version']}")
    return lines
