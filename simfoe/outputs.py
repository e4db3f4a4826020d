"""Writing output files safely: checked before a run, written atomically, with ordinary permissions.

* :func:`check_file` / :func:`check_dir` - raise :class:`~simfoe.errors.SpecError` (exit 2 in the CLI)
  when an output path cannot be written, *before* a long simulation or search starts.
* :class:`AtomicFiles` - write one or several files under temporary names in their own folders and
  rename them all into place only when every one was written; on failure the temporary files are
  removed and nothing is left half-written. A write error (``OSError``) becomes a ``SpecError``
  naming the flag and the path.
* :func:`write_text` - one text file, atomically.
* :func:`fmt_time` / :func:`fmt_bytes` - human-readable seconds and bytes for reports and tables.

Files get the mode an ordinary ``open(path, "w")`` would give: ``0o666 & ~umask``.
"""
from __future__ import annotations

import errno
import math
import os
import secrets
import tempfile
from pathlib import Path

from simfoe.errors import SpecError

FILE_ALLOWED = "a file path whose folder is writable or can be created"
DIR_ALLOWED = "a writable folder, or one that can be created"


def json_safe(obj):
    """A result made JSON-safe: numpy scalars to Python numbers, NaN/inf to None, keys to strings."""
    import numpy as np  # here, not at import: `simfoe --help` stays light

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj, indent: int | None = 1) -> str:
    """``obj`` as JSON text for every file and stdout writer: :func:`json_safe` first (NaN/inf -> null),
    other objects (paths) as strings, one trailing newline."""
    import json

    return json.dumps(json_safe(obj), indent=indent, default=str) + "\n"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permission bits of a newly written output file: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _writable(d: Path) -> str | None:
    """None when a file can be created in existing folder ``d``, else why not."""
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".simfoe-probe-")
    except OSError as e:
        return f"cannot create files in {d}: {_why(e)}"
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:  # pragma: no cover
        pass
    return None


def _ancestor_problem(d: Path) -> str | None:
    """None when folder ``d`` exists and is writable, or can be created (its nearest existing
    ancestor is a writable folder); else why not."""
    for anc in (d, *d.parents):
        if anc.exists():
            if not anc.is_dir():
                return f"{anc} is not a folder"
            return _writable(anc)
        if anc.is_symlink():  # a dangling link
            return f"{anc} is a broken link"
    return f"{d} cannot be created"  # pragma: no cover - '/' always exists


def check_file(flag: str, value, suffixes: tuple[str, ...] = (), what: str = FILE_ALLOWED) -> Path:
    """Check that ``value`` can be written as a file (not a folder; its folder exists or can be created
    and is writable; with ``suffixes``, the name ends in one of them). Returns the Path."""
    if value is None or str(value).strip() == "":
        raise SpecError(flag, value, what)
    p = Path(str(value)).expanduser()
    if suffixes and not p.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise SpecError(flag, str(value), f"{what}, ending in {' or '.join(suffixes)}")
    if p.is_dir():
        raise SpecError(flag, str(value), f"{what} (this is a folder)")
    why = _ancestor_problem(p.parent if str(p.parent) else Path("."))
    if why:
        raise SpecError(flag, str(value), f"{what} ({why})")
    return p


def check_dir(flag: str, value, files: tuple[str, ...] = (), what: str = DIR_ALLOWED) -> Path:
    """Check that ``value`` is a writable folder or can be created, and that none of ``files`` (names
    written inside it; may contain '/') is in the way as a folder or under a non-folder."""
    if value is None or str(value).strip() == "":
        raise SpecError(flag, value, what)
    p = Path(str(value)).expanduser()
    why = _ancestor_problem(p)
    if why:
        raise SpecError(flag, str(value), f"{what} ({why})")
    for name in files:
        f = p / name
        if f.is_dir():
            raise SpecError(flag, str(value), f"{what} ({f} is a folder; a file is written there)")
        for anc in f.parents:
            if anc == p:
                break
            if anc.exists() and not anc.is_dir():
                raise SpecError(flag, str(value), f"{what} ({anc} is not a folder)")
    return p


class AtomicFiles:
    """Write several output files all-or-nothing::

        with AtomicFiles("--out") as w:
            df.to_parquet(w.path(out / "requests.parquet"))
            w.path(out / "summary.json").write_text(text)
        # both renamed into place here; on any error neither is, and no temporary file is left

    ``path(final)`` creates the folder of ``final`` when missing and returns a temporary path in it
    (same suffix, so writers that look at the suffix - savefig, to_csv - behave as for ``final``).
    An ``OSError`` inside the block or while renaming becomes a ``SpecError(field, path, ...)``.
    """

    def __init__(self, field: str = "output"):
        self.field = field
        self._pairs: list[tuple[Path, Path]] = []
        self._fields: dict[Path, str] = {}
        self._made_dirs: list[Path] = []

    def __enter__(self) -> "AtomicFiles":
        return self

    def _error(self, path, e: OSError) -> SpecError:
        target = getattr(e, "filename", None)
        for final, tmp in self._pairs:  # report the user's path, not the temporary name
            if target is not None and str(target) in (str(tmp), str(final)):
                path = final
        field = self._fields.get(Path(str(path)), self.field)
        return SpecError(field, str(path), f"{FILE_ALLOWED} ({_why(e)})")

    def path(self, final, field: str | None = None) -> Path:
        """A temporary path for ``final``; ``field`` (default: the group's) names it in errors."""
        final = Path(final)
        if field is not None:
            self._fields[final] = field
        parent = final.parent
        if not parent.is_dir():
            missing = [a for a in (parent, *parent.parents) if not a.exists()]
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise self._error(final, e) from None
            self._made_dirs += missing
        tmp = parent / f".{final.name}.{secrets.token_hex(4)}.tmp{final.suffix}"
        self._pairs.append((final, tmp))
        return tmp

    def _cleanup(self) -> None:
        for _, tmp in self._pairs:
            try:
                if tmp.is_dir():  # pragma: no cover - a writer that makes folders
                    import shutil

                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
            except OSError:  # pragma: no cover
                pass
        for d in sorted(self._made_dirs, key=lambda x: len(x.parts), reverse=True):
            try:
                d.rmdir()  # only when still empty
            except OSError:
                pass

    def commit(self) -> None:
        """Rename every temporary file into place (all targets are checked first)."""
        mode = file_mode()
        try:
            for final, tmp in self._pairs:
                if final.is_dir():
                    raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(final))
                if not tmp.exists():
                    raise FileNotFoundError(errno.ENOENT, "the file was not written", str(final))
                os.chmod(tmp, mode)
            for final, tmp in self._pairs:
                os.replace(tmp, final)
        except OSError as e:
            self._cleanup()
            raise self._error(final, e) from None
        self._pairs.clear()
        self._made_dirs.clear()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
            return False
        self._cleanup()
        if isinstance(exc, OSError) and not isinstance(exc, SpecError):
            raise self._error(getattr(exc, "filename", None) or "?", exc) from None
        return False


def write_text(path, text: str, field: str = "output", encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary file + rename); returns the Path."""
    with AtomicFiles(field) as w:
        w.path(path).write_text(text, encoding=encoding)
    return Path(path)


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
