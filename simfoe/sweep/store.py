"""Results store of a sweep: one row per scenario, committed as scenarios finish.

Layout of ``OUT/``::

    results.parquet          compacted table (one row per run_id)
    results.csv              the same table as CSV: written at the end of a run asked for it (``simfoe sweep
                             --csv``), then rewritten at the end of every later run into OUT
    parts/part-*.parquet     rows committed since the last compaction (one file per finished chunk)
    sweep.yaml, sweep.json   the spec that was run and run metadata

A part file is written to a temporary name, fsynced and renamed, so it is either complete or
absent: a kill loses at most the chunks in flight. Compaction merges results and parts, keeps one
row per run_id (an ``ok`` row beats an ``error`` row, then the latest), writes results.parquet
atomically and only then removes the merged parts. Readers always merge both, so a kill during
compaction loses nothing and duplicates nothing.
A file damaged anyway (a disk that lied about a write, a copy cut short) is named in a SpecError
by every reader, with what to do: delete it and resume, which runs its scenarios again.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pandas as pd

from simfoe.errors import SpecError

VOLATILE = ("wall_s", "worker", "finished_at")  # columns that differ between identical runs
FIRST = ("run_id", "index", "kind", "status", "error")


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Make every column writable to parquet: mixed-type object columns become text."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype != object:
            continue
        vals = df[c].dropna()
        types = {type(v) for v in vals}
        if not types:
            continue
        if types <= {int, float}:
            df[c] = pd.to_numeric(df[c])
        elif len(types) > 1 or not types <= {str, bool, int, float}:
            df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    return df


def _write_atomic(df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    table = pa.Table.from_pandas(normalize(df), preserve_index=False)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill: no half-written temporary file stays behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _read_file(path: Path) -> pd.DataFrame:
    """One stored parquet file; a damaged one (truncated by a full disk, say) -> SpecError naming it and
    how to run its scenarios again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as e:
        why = " ".join(str(e).split()).split(f"{path}'")[-1].lstrip(": ").split(". ")[0][:160] or type(e).__name__
        fix = ("delete it (every scenario it held runs again with --resume) or restore it from a backup"
               if path.name == "results.parquet" else "delete it and rerun with --resume: its scenarios run again")
        raise SpecError("--out", str(path), f"readable parquet files in the sweep folder; this one is damaged "
                        f"({why}); {fix}") from None


def _dedup(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    rank = (df["status"] == "ok").astype(int)
    t = df["finished_at"] if "finished_at" in df else pd.Series(0.0, index=df.index)
    df = df.assign(_rank=rank.values, _t=t.values).sort_values(["run_id", "_rank", "_t"], kind="stable")
    df = df.drop_duplicates("run_id", keep="last").drop(columns=["_rank", "_t"])
    sort = ["index", "run_id"] if "index" in df else ["run_id"]
    df = df.sort_values(sort, kind="stable").reset_index(drop=True)
    cols = [c for c in FIRST if c in df] + [c for c in df.columns if c not in FIRST]
    return df[cols]


class ResultStore:
    """Append-only, crash-safe store of scenario rows under ``out``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.parts = self.out / "parts"
        self.results = self.out / "results.parquet"
        self.csv = self.out / "results.csv"
        self._seq = 0
        self._frames: dict[Path, tuple[tuple[int, int], pd.DataFrame]] = {}
        """Files read so far: path -> ((mtime ns, size), table); parts never change once written, and
        results.parquet is only replaced whole, so a resumed sweep reads each file once."""

    def part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []

    def has_results(self) -> bool:
        return self.results.is_file() or bool(self.part_files())

    def finished(self) -> dict[str, str]:
        """run_id -> status ("ok" beats "error") of every stored row. Reads every file whole, so a damaged
        one is named (SpecError) before a resumed sweep runs anything, not at the final compaction."""
        df = self.read()
        return dict(zip(df["run_id"], df["status"]))

    def append(self, rows: list[dict]) -> Path | None:
        """Commit rows as one new part file (atomic). Returns its path."""
        if not rows:
            return None
        self.parts.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        path = self.parts / f"part-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.parquet"
        _write_atomic(pd.DataFrame(rows), path)
        return path

    def read(self) -> pd.DataFrame:
        """Results and parts merged, one row per run_id, sorted by scenario index. No writes."""
        files = ([self.results] if self.results.is_file() else []) + self.part_files()
        frames = [self._read_once(f) for f in files]
        frames = [f for f in frames if not f.empty]
        if not frames:
            return pd.DataFrame(columns=list(FIRST))
        return _dedup(pd.concat(frames, ignore_index=True, sort=False))

    def _read_once(self, path: Path) -> pd.DataFrame:
        """``path``'s table, read again only if the file changed since this store last read it."""
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
        hit = self._frames.get(path)
        if hit is None or hit[0] != key:
            hit = self._frames[path] = (key, _read_file(path))
        return hit[1]

    def compact(self) -> pd.DataFrame:
        """Merge parts into results.parquet (atomic), then delete the merged parts."""
        parts = self.part_files()
        df = self.read()
        if parts or not self.results.is_file():
            self.out.mkdir(parents=True, exist_ok=True)
            _write_atomic(df, self.results)
            for p in parts:
                p.unlink(missing_ok=True)
                self._frames.pop(p, None)
        return df

    def clear(self) -> None:
        """Remove stored results (used by --overwrite)."""
        for p in self.part_files():
            p.unlink()
        self.results.unlink(missing_ok=True)
        self.csv.unlink(missing_ok=True)

    def write_csv(self, df: pd.DataFrame) -> Path:
        """Write ``df`` (the compacted table) as results.csv, atomically; returns its path."""
        from simfoe.outputs import AtomicFiles

        with AtomicFiles("--out") as w:
            df.to_csv(w.path(self.csv), index=False)
        return self.csv


def load_results(out: str | Path) -> pd.DataFrame:
    """The results table of a sweep folder (results.parquet merged with uncompacted parts)."""
    return ResultStore(out).read()
