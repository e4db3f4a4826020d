"""Checks of input files named by users (CLI flags, sweep options, API arguments), before any work:
one SpecError naming the field. The loaders keep their own format checks; this layer only makes
sure a named file is readable UTF-8 text, so a binary or mis-encoded file gets one clear line."""
from __future__ import annotations

from pathlib import Path

from simfoe.errors import SpecError


def check_text_file(flag: str, value, path=None) -> None:
    """An existing input file named by ``flag`` must be UTF-8 text (binary files get one line, exit 2).
    Files that do not exist are left to the loader's own message."""
    p = Path(str(path if path is not None else value))
    if p.is_dir() and ("/" in str(p) or p.suffix):  # a bare name is a preset, even if a folder has it
        raise SpecError(flag, str(value), "a file or a preset name (this is a folder)")
    if not p.is_file() or p.suffix.lower() in (".npy", ".gz", ".parquet", ".zip", ".bz2", ".xz", ".zst"):
        return
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(p, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                dec.decode(chunk, final=not chunk)
                if not chunk:
                    break
                if b"\x00" in chunk:
                    raise UnicodeDecodeError("utf-8", chunk, 0, 1, "NUL byte")
    except UnicodeDecodeError:
        raise SpecError(flag, str(value), "a UTF-8 text file (this file is binary or in another encoding)") from None
    except OSError as e:
        raise SpecError(flag, str(value), f"a readable file ({e.strerror or e})") from None


def routing_path(routing) -> str | None:
    """The file of a ``trace:PATH`` routing spec, else None."""
    s = str(routing or "")
    return s[len("trace:"):] if s.startswith("trace:") else None


def check_routing_file(routing, flag: str = "--routing") -> None:
    """A ``trace:PATH`` routing must name a UTF-8 text file (see :func:`check_text_file`)."""
    trace = routing_path(routing)
    if trace is not None:
        check_text_file(flag, routing, trace)
