"""A run's memo (`conveyor.Memo`) kept in its journal file, so a resumed run reuses it.

Entries live in a `memo` table beside the journal's own (created on first
use; the journal's schema checks look at its application id and version
only). The writer holds the journal's lock already: this is a second
connection of the same process, in WAL mode like the journal's, so its small
commits wait (busy timeout) for the sink's group commits and never block
readers.

Values are stored with `pickle`: the journal is your own file, read back by
your own code (as with any pickle, do not load a journal from someone you do
not trust). A value pickle cannot take stays in memory only.
"""

from __future__ import annotations

import pickle
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any

from ._errors import BUSY_TIMEOUT_S, _guard

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["JournalMemoStore"]

_TABLE = (
    "CREATE TABLE IF NOT EXISTS memo (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
    "input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, created_at REAL NOT NULL)"
)


class JournalMemoStore:
    """The `memo` table of the journal at `path` (a `conveyor._core._memo.MemoStore`)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        with _guard(path):
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_TABLE)

    def load(self) -> Iterator[tuple[str, Any, int, int]]:
        with self._lock, _guard(self._path):
            assert self._conn is not None
            rows = self._conn.execute(
                "SELECT key, value, input_tokens, output_tokens FROM memo"
            ).fetchall()
        for key, blob, tin, tout in rows:
            try:
                value = pickle.loads(blob)  # the user's own journal (module doc)
            except Exception:  # a class renamed since: the entry is just missed
                continue
            yield str(key), value, int(tin), int(tout)

    def put(self, key: str, value: Any, input_tokens: int, output_tokens: int) -> bool:
        try:
            blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            return False
        with self._lock, _guard(self._path):
            if self._conn is None:
                return False
            self._conn.execute(
                "INSERT OR REPLACE INTO memo VALUES (?, ?, ?, ?, ?)",
                (key, blob, input_tokens, output_tokens, time.time()),
            )
        return True

    def __len__(self) -> int:
        with self._lock, _guard(self._path):
            assert self._conn is not None
            return int(self._conn.execute("SELECT count(*) FROM memo").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
