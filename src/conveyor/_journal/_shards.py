"""The batch-mode part of a journal: shards (one uploaded file = one remote
batch) and the keys each one holds, in the same SQLite file as the results.

A shard moves through local states, each committed before the remote step it
guards, so a run killed at any moment knows what it may have done:

- ``built``: its lines are written to a local file; nothing remote yet.
- ``uploaded``: the file is at the provider (``file_id``).
- ``creating``: the intent to create its batch is committed, the create may
  or may not have reached the provider. A resumed run looks for a batch whose
  metadata carries this shard's id before it creates one.
- ``submitted``: the batch exists (``batch_id``); ``remote_status`` mirrors
  the provider's status and request counts as last polled.
- ``merged``: its output and error files are in the journal; the lines that
  did not finish went back to the pool (a newer shard holds them).
- ``dropped``: never submitted (a resumed run re-shards its lines);
  ``abandoned``: given up on (stuck even while cancelling, or past the
  deadline); late answers for its lines are dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import _guard

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._journal import Journal

__all__ = ["ACTIVE", "ShardRow", "ShardStore"]

ACTIVE = ("creating", "submitted")
"""States whose lines belong to a remote batch (they are not re-sharded)."""

_FIELDS = (
    "shard_id, seq, url, model, state, lines, bytes, tokens, file_id, batch_id, remote_status, "
    "completed, failed, polls, created_at, submitted_at, state_since, note"
)


@dataclass
class ShardRow:
    """One shard as the journal holds it."""

    shard_id: str
    seq: int
    url: str
    model: str
    state: str
    lines: int
    bytes: int
    tokens: int
    file_id: str | None = None
    batch_id: str | None = None
    remote_status: str | None = None
    completed: int = 0
    failed: int = 0
    polls: int = 0
    created_at: float = 0.0
    submitted_at: float | None = None
    state_since: float = 0.0
    note: str | None = None


class ShardStore:
    """Reads and writes the shard tables of an open journal (writer or reader)."""

    def __init__(self, journal: Journal) -> None:
        self._j = journal

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        j = self._j
        with j._lock, _guard(j.path, writing=not j.readonly):
            if not self._has_tables():
                return []
            return list(j._conn.execute(sql, tuple(params)))

    def _has_tables(self) -> bool:
        # A read-only open of a journal from before schema 2 has none.
        row = self._j._conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'shards'"
        ).fetchone()
        return bool(row[0])

    # -- reads ---------------------------------------------------------------

    def shards(self, states: Iterable[str] | None = None) -> list[ShardRow]:
        """Shards in creation order, optionally only those in `states`."""
        if states is None:
            rows = self._query(f"SELECT {_FIELDS} FROM shards ORDER BY seq")
        else:
            wanted = list(states)
            marks = ",".join("?" * len(wanted))
            rows = self._query(
                f"SELECT {_FIELDS} FROM shards WHERE state IN ({marks}) ORDER BY seq", wanted
            )
        return [ShardRow(*r) for r in rows]

    def keys(self, shard_id: str) -> list[tuple[str, int]]:
        """(key, input index) of a shard's lines, in input order."""
        rows = self._query(
            "SELECT key, idx FROM shard_lines WHERE shard_id = ? ORDER BY idx", (shard_id,)
        )
        return [(str(k), int(i)) for k, i in rows]

    def active_keys(self) -> set[str]:
        """Keys held by a remote batch (a shard in an `ACTIVE` state)."""
        marks = ",".join("?" * len(ACTIVE))
        rows = self._query(
            "SELECT l.key FROM shard_lines l JOIN shards s USING (shard_id) "
            f"WHERE s.state IN ({marks})",
            ACTIVE,
        )
        return {str(k) for (k,) in rows}

    def submissions(self) -> dict[str, int]:
        """Per key, how many shards that reached a remote batch held it."""
        rows = self._query(
            "SELECT l.key, count(*) FROM shard_lines l JOIN shards s USING (shard_id) "
            "WHERE s.batch_id IS NOT NULL OR s.state = 'creating' GROUP BY l.key"
        )
        return {str(k): int(n) for k, n in rows}

    def next_seq(self) -> int:
        rows = self._query("SELECT coalesce(max(seq), 0) FROM shards")
        return int(rows[0][0]) + 1 if rows else 1

    # -- writes --------------------------------------------------------------

    def add(self, row: ShardRow, keys: Iterable[tuple[str, int]]) -> None:
        """Record a new shard and its keys in one transaction."""
        values = (
            row.shard_id, row.seq, row.url, row.model, row.state, row.lines, row.bytes,
            row.tokens, row.file_id, row.batch_id, row.remote_status, row.completed,
            row.failed, row.polls, row.created_at, row.submitted_at, row.state_since, row.note,
        )  # fmt: skip
        self._j._writable()
        with self._j._transaction() as conn:
            conn.execute(f"INSERT INTO shards ({_FIELDS}) VALUES ({','.join('?' * 18)})", values)
            conn.executemany(
                "INSERT OR IGNORE INTO shard_lines (shard_id, key, idx) VALUES (?, ?, ?)",
                ((row.shard_id, k, i) for k, i in keys),
            )

    def update(self, shard_id: str, **fields: Any) -> None:
        """Set some fields of a shard (a new `state` also restarts `state_since`)."""
        if "state" in fields and "state_since" not in fields:
            fields["state_since"] = time.time()
        names = list(fields)
        self._j._writable()
        with self._j._transaction() as conn:
            conn.execute(
                f"UPDATE shards SET {', '.join(f'{n} = ?' for n in names)} WHERE shard_id = ?",
                (*(fields[n] for n in names), shard_id),
            )
