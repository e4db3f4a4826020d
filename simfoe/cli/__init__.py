"""The `simfoe` command: a thin shell over the Python API.

Sub-commands live in sibling modules, each with ``register(subparsers)``; a module that is not
present (a feature not installed) is skipped. Heavy imports happen inside each ``run``.
"""
from __future__ import annotations

import importlib
import sys

from simfoe.cli.common import Parser, UsageError, print_json
from simfoe.errors import SpecError

# Order = order in --help.
COMMANDS = [
    "forward", "kernel", "serve", "pipeline", "sweep", "plot", "recommend",
    "calibrate", "validate", "testbed", "fit", "presets", "compare",
]


def build_parser() -> Parser:
    from simfoe import __version__

    p = Parser(
        prog="simfoe",
        description="Simulate MoE vs Federation-of-Experts inference and compound AI pipelines "
        "on GPU clusters. Time in seconds, sizes in bytes, bandwidth in bytes/s.",
    )
    p.add_argument("--version", action="version", version=f"simfoe {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"simfoe.cli.{name}_cmd")
        except ModuleNotFoundError as e:
            if e.name == f"simfoe.cli.{name}_cmd":
                continue
            raise
        mod.register(sub)
    return p


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split("\n")).strip()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = ["simfoe", *(sys.argv[1:] if argv is None else argv)]  # the run record's command line
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        result = args.func(args)
    except (UsageError, SpecError) as e:
        sys.stderr.write(f"error: {_one_line(e)}\n")
        return 2
    except UnicodeDecodeError as e:  # an input file that is not text, caught where no check named it
        sys.stderr.write(f"error: input: a file is not allowed; a UTF-8 text file ({e.reason} at byte {e.start})\n")
        return 2
    except OSError as e:  # a file that cannot be read or written, caught where no check named it
        if getattr(e, "filename", None) is None:
            raise
        sys.stderr.write(f"error: path: {str(e.filename)!r} is not allowed; a path that can be "
                         f"read or written ({e.strerror or type(e).__name__})\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    if result is None:
        return 0
    code = 0
    if isinstance(result, tuple):  # (result, exit code)
        result, code = result
    if getattr(args, "json", False):
        print_json(result)
    else:
        render = getattr(args, "render", None)
        sys.stdout.write((render(result) if render else str(result)) + "\n")
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
