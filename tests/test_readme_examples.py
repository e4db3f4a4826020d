"""README.md and docs/*.md examples that quote a number: each runs, fits and still gives that number.

Two ways a doc quotes a simulated number, both read from the doc text (nothing is hard-coded here):

1. A command in a fenced code block whose comment says what it prints, ``# -> 46.0 ms``
   (continuation lines ending in ``\\`` are joined)::

       simfoe forward --model deepseek-v3 ... --routing zipf:1.2   # -> 46.0 ms

2. A markdown table preceded by an HTML comment giving the command of every cell: the base command,
   then ``rows:`` and ``columns:`` with ``|``-separated arguments that row i and column j add::

       <!-- example: simfoe forward --model deepseek-v3 --hardware h100-sxm --nodes 4 ...
            rows: --routing uniform | --routing zipf:1.2
            columns: --set placement.moe.redundant_experts=0 | --set placement.moe.redundant_experts=32 -->

A quoted number is ``latency_s`` of ``simfoe forward --json`` in ms (or s), compared to the digits quoted.
Each example also has to fit (``memory.fits``, no "does not fit" warning), and so does every complete
``simfoe forward`` command in a code block (one without ``...``), quoted or not.

Refresh the docs after a model change: ``python tests/test_readme_examples.py`` prints every quoted
example with the quoted and the current number; ``--update`` rewrites the numbers in place (same digits).
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s)\b")
ARROW = re.compile(r"#.*?->\s*(\d+(?:\.\d+)?)\s*(ms|s)\b")
SCALE = {"ms": 1e3, "s": 1.0}


@dataclass(frozen=True)
class Example:
    """One quoted number: where it stands (file, 0-based line, column span), what it says, what runs it."""

    path: Path
    line: int
    span: tuple[int, int]
    quoted: str  # the digits as written, e.g. "46.0"
    unit: str  # "ms" or "s"
    argv: tuple[str, ...]  # simfoe's arguments, without "simfoe"

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line + 1}"


@dataclass(frozen=True)
class Run:
    """What one forward command gave: latency (s), whether it fits, its stderr."""

    latency_s: float
    fits: bool
    stderr: str


def _commands(lines: list[str]):
    """(logical command text, index of its last physical line) for each `simfoe ...` line in code blocks."""
    inside, buf = False, ""
    for i, raw in enumerate(lines):
        if raw.lstrip().startswith("```"):
            inside, buf = not inside, ""
            continue
        if not inside:
            continue
        text = raw.strip()
        if buf or text.startswith("simfoe "):
            buf += " " + text[:-1] if text.endswith("\\") else " " + text
            if not text.endswith("\\"):
                yield buf.strip(), i
                buf = ""


def _argv(command: str) -> tuple[str, ...]:
    """simfoe's arguments of a command line, its trailing comment dropped."""
    return tuple(shlex.split(command, comments=True)[1:])


def code_examples(path: Path) -> list[Example]:
    """Examples of form 1 (a command with ``# -> N unit``) in one doc."""
    lines = path.read_text().splitlines()
    out = []
    for cmd, i in _commands(lines):
        m = ARROW.search(lines[i])
        if m:
            out.append(Example(path, i, m.span(1), m.group(1), m.group(2), _argv(cmd)))
    return out


def _annotation(text: str) -> tuple[str, list[str], list[str]]:
    """(base command, row arguments, column arguments) of one ``<!-- example: ... -->`` comment."""
    m = re.fullmatch(r"\s*example:(.*?)rows:(.*?)columns:(.*)", " ".join(text.split()))
    if not m:
        raise ValueError(f"example comment needs 'example: CMD rows: A | B columns: C | D': {text[:80]!r}")
    return m.group(1).strip(), [r.strip() for r in m.group(2).split("|")], [c.strip() for c in m.group(3).split("|")]


def _cells(line: str) -> list[tuple[int, int]]:
    """Column spans of a markdown table row's cells."""
    bars = [m.start() for m in re.finditer(r"\|", line)]
    return list(zip([b + 1 for b in bars[:-1]], bars[1:]))


def table_examples(path: Path) -> list[Example]:
    """Examples of form 2 (an annotated table) in one doc."""
    text = path.read_text()
    lines = text.splitlines()
    out = []
    for m in re.finditer(r"^<!--(\s*example:.*?)-->", text, re.S | re.M):  # at a line start: not in prose
        base, rows, cols = _annotation(m.group(1))
        i = text.count("\n", 0, m.end()) + 1
        while not lines[i].startswith("|"):
            i += 1
        body = [j for j in range(i + 2, len(lines)) if lines[j].startswith("|")]
        body = body[:next((k for k, j in enumerate(body) if j != body[0] + k), len(body))]
        if len(body) != len(rows):
            raise ValueError(f"{path.name}:{i + 1}: example comment lists {len(rows)} rows, the table has {len(body)}")
        for r, j in zip(rows, body):
            spans = _cells(lines[j])[1:]
            if len(spans) != len(cols):
                raise ValueError(f"{path.name}:{j + 1}: {len(cols)} columns in the comment, {len(spans)} in the row")
            for c, (a, b) in zip(cols, spans):
                n = NUMBER.search(lines[j], a, b)
                if n:
                    out.append(Example(path, j, n.span(1), n.group(1), n.group(2), _argv(f"{base} {r} {c}")))
    return out


def all_examples() -> list[Example]:
    return [e for p in DOCS for e in code_examples(p) + table_examples(p)]


def complete_forward_commands() -> list[tuple[str, tuple[str, ...]]]:
    """(where, argv) of every `simfoe forward` command in a code block that can run as written."""
    out = []
    for p in DOCS:
        for cmd, i in _commands(p.read_text().splitlines()):
            if cmd.startswith("simfoe forward ") and "..." not in cmd:
                out.append((f"{p.relative_to(ROOT)}:{i + 1}", _argv(cmd)))
    return out


@functools.lru_cache(maxsize=None)
def run_forward(argv: tuple[str, ...]) -> Run:
    """Run ``simfoe <argv> --json`` in-process (--timeline dropped); raise on a non-zero exit."""
    from simfoe.cli import main

    args = list(argv)
    if "--timeline" in args:
        k = args.index("--timeline")
        del args[k:k + 2]
    if args[0] != "forward":
        raise ValueError(f"only `simfoe forward` examples can quote a number here, not {args[0]!r}")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--json"] if "--json" not in args else args)
    if code != 0:
        raise AssertionError(f"simfoe {' '.join(argv)} exited {code}: {err.getvalue()}")
    r = json.loads(out.getvalue())
    return Run(r["latency_s"], bool(r["memory"]["fits"]), err.getvalue())


def current(e: Example) -> str:
    """The number the example's command gives now, with the digits the doc quotes."""
    decimals = len(e.quoted.split(".")[1]) if "." in e.quoted else 0
    return f"{run_forward(e.argv).latency_s * SCALE[e.unit]:.{decimals}f}"


# ---- tests -------------------------------------------------------------------------------------

EXAMPLES = all_examples()


def test_the_docs_quote_examples():
    """The parser finds the README's quoted examples (a doc change that breaks the format fails here)."""
    assert any(e.path.name == "README.md" for e in EXAMPLES)
    assert any(e.path.name == "forward.md" for e in EXAMPLES)


def _param(e: Example):
    """Two micro-batches simulate a chain of layers: the slowest examples (1-2 s each) are marked slow."""
    slow = any("two-batch" in a or "overlap=auto" in a for a in e.argv)
    return pytest.param(e, id=f"{e.where}:{e.quoted}{e.unit}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("e", [_param(e) for e in EXAMPLES])
def test_quoted_example_fits_and_gives_its_number(e):
    r = run_forward(e.argv)
    assert r.fits and "does not fit" not in r.stderr, f"{e.where}: simfoe {' '.join(e.argv)}: {r.stderr}"
    assert current(e) == e.quoted, (f"{e.where}: simfoe {' '.join(e.argv)} gives {current(e)} {e.unit}, the doc "
                                    f"quotes {e.quoted} (refresh: python tests/test_readme_examples.py --update)")


FORWARD = complete_forward_commands()


@pytest.mark.parametrize("where,argv", FORWARD, ids=[w for w, _ in FORWARD])
def test_every_complete_forward_example_fits(where, argv):
    r = run_forward(argv)
    assert r.fits and "does not fit" not in r.stderr, f"{where}: simfoe {' '.join(argv)}: {r.stderr}"


def test_annotation_and_arrow_parsing(tmp_path):
    """Hand-made doc: an arrow comment across a continuation and a 2 x 2 annotated table."""
    doc = tmp_path / "d.md"
    doc.write_text("```\nsimfoe forward --model m \\\n    --batch 2   # -> 1.50 ms\nsimfoe forward ... # 3 ms\n```\n"
                   "<!-- example: simfoe forward --model m\n rows: --arch moe | --arch foe\n"
                   " columns: --batch 1 | --batch 2 -->\n\n| x | b1 | b2 |\n|---|---|---|\n"
                   "| moe | 1.0 ms | 2.0 ms |\n| foe | - | 4.0 s |\n\nafter, in prose: `<!-- example: ... -->`\n")
    code = code_examples(doc)
    assert [(e.line, e.quoted, e.unit, e.argv) for e in code] == [(2, "1.50", "ms", ("forward", "--model", "m", "--batch", "2"))]
    tab = table_examples(doc)
    assert [(e.quoted, e.unit, e.argv[-4:]) for e in tab] == [
        ("1.0", "ms", ("--arch", "moe", "--batch", "1")), ("2.0", "ms", ("--arch", "moe", "--batch", "2")),
        ("4.0", "s", ("--arch", "foe", "--batch", "2"))]
    line = doc.read_text().splitlines()[tab[2].line]
    assert line[slice(*tab[2].span)] == "4.0"


# ---- refresh script ----------------------------------------------------------------------------

def update(examples: list[Example], write: bool) -> int:
    """Print each example's quoted and current number; with ``write``, put the current ones in the docs.
    Returns how many differ."""
    changed: dict[Path, dict[int, list[tuple[tuple[int, int], str]]]] = {}
    for e in examples:
        now = current(e)
        fit = "" if run_forward(e.argv).fits else "  DOES NOT FIT"
        print(f"{e.where:28} {e.quoted:>8} -> {now:>8} {e.unit}{'' if now == e.quoted else '  *'}{fit}  "
              f"simfoe {' '.join(e.argv)}")
        if now != e.quoted:
            changed.setdefault(e.path, {}).setdefault(e.line, []).append((e.span, now))
    if write:
        for path, by_line in changed.items():
            lines = path.read_text().splitlines(keepends=True)
            for i, edits in by_line.items():
                for (a, b), now in sorted(edits, reverse=True):
                    lines[i] = lines[i][:a] + now + lines[i][b:]
            path.write_text("".join(lines))
    return sum(len(v) for by_line in changed.values() for v in by_line.values())


if __name__ == "__main__":
    n = update(all_examples(), write="--update" in sys.argv[1:])
    print(f"{n} number(s) differ{' (docs updated)' if n and '--update' in sys.argv[1:] else ''}")
