"""Which keys were seen already, in memory that does not grow with the input.

`SeenKeys` answers "is this key new, or which line had it first?" for every
key of a stream (duplicate `custom_id`s of a Batch input file). A fixed-size
Bloom filter says "surely new" for almost every new key at no I/O; the keys
themselves go to a scratch SQLite file in groups, and the file is read only
when the filter says "maybe" (a real repeat, or a false positive that the
lookup resolves). Every repeat is found: the filter never gives a false
negative, and the file holds every key recorded.

The scratch file is unlinked as soon as it is opened (SQLite keeps using it;
nothing is left behind, even after `kill -9`). A stream of fewer than
`spill_at` keys never creates it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile

from .._core._bloom import BloomFilter
from ._errors import JournalError

__all__ = ["SeenKeys"]


class SeenKeys:
    """key -> the first line (or index) it was seen at, for any number of keys."""

    def __init__(
        self,
        *,
        bits: int = 1 << 25,
        spill_at: int = 20_000,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        self._filter = BloomFilter(bits=bits)
        self._recent: dict[str, int] = {}  # not yet in the file
        self._spill_at = max(1, spill_at)
        self._dir = None if directory is None else os.fspath(directory)
        self._conn: sqlite3.Connection | None = None
        self.lookups = 0  # file reads (filter said "maybe")
        self.spilled = 0

    def first(self, key: str, line: int) -> int | None:
        """None if `key` is new (it is recorded at `line`), else the line it was first seen at."""
        if not self._filter.add(key):
            self._record(key, line)
            return None
        seen = self._recent.get(key)
        if seen is None:
            seen = self._lookup(key)
        if seen is None:  # a false positive: the key is new after all
            self._record(key, line)
        return seen

    def _record(self, key: str, line: int) -> None:
        self._recent[key] = line
        if len(self._recent) >= self._spill_at:
            self._spill()

    def _lookup(self, key: str) -> int | None:
        if self._conn is None:
            return None
        self.lookups += 1
        row = self._conn.execute("SELECT line FROM seen WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def _spill(self) -> None:
        try:
            if self._conn is None:
                self._conn = self._open()
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT OR IGNORE INTO seen (key, line) VALUES (?, ?)", self._recent.items()
            )
            self._conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            where = self._dir or tempfile.gettempdir()
            raise JournalError(
                f"cannot write the scratch file of seen keys in {where} ({exc}): free disk "
                "space there, or set TMPDIR to a writable directory",
                path=where,
            ) from exc
        self.spilled += len(self._recent)
        self._recent.clear()

    def _open(self) -> sqlite3.Connection:
        fd, path = tempfile.mkstemp(prefix="conveyor-keys-", suffix=".db", dir=self._dir)
        os.close(fd)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Scratch data: no rollback journal, no fsync; a crash just loses the file.
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA cache_size=-2048")
            conn.execute("CREATE TABLE seen (key TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # the open connection keeps the data
        return conn

    def close(self) -> None:
        self._recent.clear()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def __enter__(self) -> SeenKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
