"""The run journal: one SQLite file that is the source of truth of a run.

One row per item key holds its terminal result (or `pending` after a
`reset`), the exact output line written for it and that line's sequence
number; a `meta` table holds the run identity and the committed output
offset. A journal has one writer at a time, enforced with an OS lock
(`flock` on `<journal>.lock`) that the kernel drops when the holder dies, so
`kill -9` never leaves a stale lock. Readers (`Journal.open_readonly`) take
no lock and see committed transactions only (WAL).

Every sqlite3/OSError is translated here into a `JournalError` subclass
whose message says what happened to which file and what to do.

Never pass secrets in `identity`: it is stored in clear. Pass the *name* of
an environment variable instead of its value; values that look like API keys
are refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from .._base._types import Result, Status
from ._errors import (
    BUSY_TIMEOUT_S,
    JournalCorrupt,
    JournalError,
    JournalFull,
    JournalLocked,
    JournalMismatch,
    _guard,
    check_identity,
    translate_error,
)
from ._schema import (
    COLUMNS,
    META_UPSERT,
    PENDING,
    SCHEMA_VERSION,
    check_schema,
    decode_row,
    encode_row,
    json_default,
    prepare_schema,
    upsert_meta,
    upsert_rows,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

__all__ = [
    "PENDING",
    "SCHEMA_VERSION",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalFull",
    "JournalLocked",
    "JournalMismatch",
    "check_identity",
    "translate_error",
]

log = logging.getLogger("conveyor.journal")

_PAGE = 1000
_IN_MIN, _IN_MAX = 8, 256
_TERMINAL_AMONG = {
    1 << p: f"SELECT key FROM items WHERE status != '{PENDING}' AND key IN "
    f"({','.join('?' * (1 << p))})"
    for p in range(3, 9)
}


def _acquire_lock(path: str) -> int:
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _flock_or_wait(fd)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise JournalLocked(path, pid) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


_HELPER_WAIT_S = 10.0  # the most a dead writer's helper may hold its lock (its cleanup)


def _flock_or_wait(fd: int) -> None:
    """Take the lock; while the pid that wrote it is dead, a helper it left (the
    guard killing its jobs) still holds it for a moment: wait for that, bounded."""
    deadline = time.monotonic() + _HELPER_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pid = _read_pid(fd)
            if pid is None or pid_alive(pid) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead too
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return raw[raw.rfind(b")") + 2 :][:1] not in (b"Z", b"X")
    except OSError:
        return True


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(
        target,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
        check_same_thread=False,  # the sink's writer thread shares it, under Journal._lock
        uri=uri,
    )


def _readonly_uri(path: str) -> str:
    return Path(path).absolute().as_uri() + "?mode=ro"


class Journal:
    """A run's SQLite journal. Create or resume with `Journal.open`.

    Thread-safe: one connection guarded by a lock (the sink writes from its
    own thread). Long iterations use a separate read snapshot, so they never
    hold the lock while the caller consumes them.
    """

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        lock_fd: int | None,
        *,
        readonly: bool,
        store_items: bool,
    ) -> None:
        self._path = path
        self._conn = conn
        self._lock_fd = lock_fd
        self._readonly = readonly
        self._store_items = store_items
        self._lock = threading.Lock()
        self._closed = False
        self._warned_types: set[str] = set()

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        identity: Mapping[str, str],
        force: bool = False,
        store_items: bool = False,
    ) -> Journal:
        """Create or resume the journal at `path`, as its only writer.

        `identity` says what the run is (input path and fingerprint, endpoint,
        options; never secrets). Resuming with a different identity raises
        `JournalMismatch` unless `force`. `store_items` also keeps each
        result's `item` (off by default: inputs can be large and are re-read).
        """
        p = os.path.abspath(os.fspath(path))
        check_identity(identity)
        with _guard(p):
            lock_fd = _acquire_lock(p)
        conn: sqlite3.Connection | None = None
        try:
            with _guard(p):
                conn = _connect(p)
                prepare_schema(conn, p)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            journal = cls(p, conn, lock_fd, readonly=False, store_items=store_items)
            journal._check_identity(dict(identity), force=force)
        except BaseException:
            if conn is not None:
                conn.close()
            os.close(lock_fd)
            raise
        return journal

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str]) -> Journal:
        """Open for reading only (for `conveyor status`): no lock, works while a writer runs."""
        p = os.path.abspath(os.fspath(path))
        if not os.path.exists(p):
            raise JournalError(f"no journal at {p}: check the `journal=` path", path=p)
        conn: sqlite3.Connection | None = None
        try:
            with _guard(p, writing=False):
                conn = _connect(_readonly_uri(p), uri=True)
                check_schema(conn, p)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return cls(p, conn, None, readonly=True, store_items=False)

    def _check_identity(self, identity: dict[str, str], *, force: bool) -> None:
        stored_text = self.get_meta("identity")
        if stored_text is not None:
            stored: dict[str, str] = orjson.loads(stored_text)
            diff = {
                k: (stored.get(k), identity.get(k))
                for k in stored.keys() | identity.keys()
                if stored.get(k) != identity.get(k)
            }
            if not diff:
                return
            if not force:
                raise JournalMismatch(self._path, diff)
        self.set_meta("identity", orjson.dumps(identity, option=orjson.OPT_SORT_KEYS).decode())

    # -- lifecycle ---------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def lock_fd(self) -> int | None:
        """The descriptor holding the writer lock (a helper process that inherits
        it keeps the journal locked until it exits too); None when read-only."""
        return self._lock_fd

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def identity(self) -> dict[str, str]:
        text = self.get_meta("identity")
        return {} if text is None else dict(orjson.loads(text))

    def close(self) -> None:
        """Close the connection and release the writer lock (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._lock, _guard(self._path):
            try:
                self._conn.close()
            finally:
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writable(self) -> None:
        if self._readonly:
            raise JournalError(
                f"journal {self._path} was opened read-only: open it with Journal.open to write",
                path=self._path,
            )
        if self._closed:
            raise JournalError(f"journal {self._path} is closed", path=self._path)

    # -- meta --------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock, _guard(self._path, writing=not self._readonly):
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.update_meta({key: value})

    def update_meta(self, values: Mapping[str, str | None]) -> None:
        """Set (or, for None, delete) several meta keys in one transaction."""
        self._writable()
        with self._transaction() as conn:
            for k, v in values.items():
                if v is None:
                    conn.execute("DELETE FROM meta WHERE key = ?", (k,))
                else:
                    conn.execute(META_UPSERT, (k, v))

    # -- writes ------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _guard(self._path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise

    def record(
        self,
        entries: Iterable[tuple[Result[Any], bytes | None, int | None]],
        *,
        meta: Mapping[str, str] | None = None,
        values: bool = True,
    ) -> None:
        """Upsert results (each with its output line and sequence) and meta in one transaction.

        `values=False` leaves each result's value out (where the output line
        already holds all of it, as a Batch API answer does)."""
        self._writable()
        store = self._store_items
        rows = [
            encode_row(
                r, line, seq, store_items=store, store_value=values, dump_value=self._dumps_value
            )
            for r, line, seq in entries
        ]
        with self._transaction() as conn:
            upsert_rows(conn, rows)
            if meta:
                upsert_meta(conn, meta)

    def _dumps_value(self, value: Any, key: str) -> bytes:
        """The value as JSON; a part JSON cannot express is kept as its text,
        and said once per type (a resumed run reports that text, not the object)."""
        lossy: list[str] = []

        def default(obj: Any) -> Any:
            if not isinstance(obj, set | frozenset | tuple | bytes | bytearray):
                lossy.append(type(obj).__qualname__)
            return json_default(obj)

        data = orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS)
        for name in lossy:
            if name not in self._warned_types:
                self._warned_types.add(name)
                log.warning(
                    "journal %s: the result of item %r holds a %s, which is not JSON: it is "
                    "stored as its text (str), and a resumed run reports that text, not the "
                    "object. Return JSON types (dict, list, str, numbers) from fn, or convert "
                    "it yourself",
                    self._path,
                    key,
                    name,
                )
        return data

    def reset(self, keys: Iterable[str], *, mark_stale: bool = False) -> int:
        """Make these items pending again (for `conveyor retry`); returns how many changed.

        With `mark_stale`, in the same transaction the output is marked stale (meta
        `output_stale`): it still holds the old lines of these keys, so the
        next sink open rewrites it from the journal before appending, even
        after a crash right after this commit.
        """
        self._writable()
        wanted = [(k,) for k in keys]
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                f"UPDATE items SET status = '{PENDING}' WHERE key = ? AND status != '{PENDING}'",
                wanted,
            )
            changed = conn.total_changes - before
            if changed and mark_stale:
                conn.execute(META_UPSERT, ("output_stale", "1"))
            return changed

    def pending_count(self) -> int:
        """Items reset to pending (by `retry`) that have no terminal result yet."""
        with self._lock, _guard(self._path, writing=not self._readonly):
            row = self._conn.execute(
                "SELECT count(*) FROM items WHERE status = ?", (PENDING,)
            ).fetchone()
        return int(row[0])

    def renumber_output(self, meta: Mapping[str, str]) -> None:
        """Number terminal rows' lines 1..n in input order (what `export` writes), with meta."""
        self._writable()
        with self._transaction() as conn:
            conn.execute("UPDATE items SET output_seq = NULL")
            conn.execute(
                "UPDATE items SET output_seq = r.n FROM (SELECT key, row_number() OVER "
                "(ORDER BY idx, key) AS n FROM items WHERE status != ? AND output_line IS NOT "
                "NULL) AS r WHERE items.key = r.key",
                (PENDING,),
            )
            conn.executemany(META_UPSERT, meta.items())

    # -- point queries (main connection, prepared statements are cached) ----

    def is_terminal(self, key: str) -> bool:
        """True when `key` already has a terminal result (skip it on resume)."""
        with self._lock, _guard(self._path, writing=not self._readonly):
            row = self._conn.execute("SELECT status FROM items WHERE key = ?", (key,)).fetchone()
        return row is not None and row[0] != PENDING

    def terminal_among(self, keys: Sequence[str]) -> set[str]:
        """The subset of `keys` that already has a terminal result."""
        found: set[str] = set()
        with self._lock, _guard(self._path, writing=not self._readonly):
            for i in range(0, len(keys), _IN_MAX):
                chunk = list(keys[i : i + _IN_MAX])
                # A power of two of keys (8 to 256), the last one repeated to fill it:
                # a statement per group size would be prepared again and again, and
                # push the upserts out of the connection's statement cache.
                size = _IN_MIN
                while size < len(chunk):
                    size <<= 1
                chunk += chunk[-1:] * (size - len(chunk))
                found.update(k for (k,) in self._conn.execute(_TERMINAL_AMONG[size], chunk))
        return found

    def get(self, key: str) -> Result[Any] | None:
        """The terminal result stored for `key`, or None (absent or pending)."""
        with self._lock, _guard(self._path, writing=not self._readonly):
            row = self._conn.execute(
                f"SELECT {COLUMNS} FROM items WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None or row[2] == PENDING else decode_row(row)

    def status_counts(self) -> dict[str, int]:
        """Rows per status, `pending` included."""
        sql = "SELECT status, count(*) FROM items GROUP BY status"
        with self._lock, _guard(self._path, writing=not self._readonly):
            return {str(s): int(n) for s, n in self._conn.execute(sql)}

    def finished_since(self, since: float) -> int:
        """How many items reached a terminal result at or after `since` (epoch)."""
        with self._lock, _guard(self._path, writing=not self._readonly):
            row = self._conn.execute(
                "SELECT count(*) FROM items WHERE status != ? AND ended_at >= ?", (PENDING, since)
            ).fetchone()
        return int(row[0])

    def error_counts(self) -> dict[str, int]:
        """Terminal non-ok rows per error type (the status when no error type was kept)."""
        sql = (
            "SELECT coalesce(error_type, status), count(*) FROM items "
            "WHERE status NOT IN ('ok', ?) GROUP BY 1"
        )
        with self._lock, _guard(self._path, writing=not self._readonly):
            return {str(t): int(n) for t, n in self._conn.execute(sql, (PENDING,))}

    # -- iterations (own read snapshot) -------------------------------------

    def _snapshot(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        # A separate read-only connection sees one consistent snapshot (WAL)
        # and lets the caller consume slowly without blocking the writer.
        if self._closed:
            raise JournalError(f"journal {self._path} is closed", path=self._path)
        writing = not self._readonly
        with _guard(self._path, writing=writing):
            conn = _connect(_readonly_uri(self._path), uri=True)
        try:
            with _guard(self._path, writing=writing):
                cur = conn.execute(sql, params)
                while rows := cur.fetchmany(_PAGE):
                    yield from rows
        finally:
            conn.close()

    def terminal_keys(self) -> Iterator[str]:
        """Every key with a terminal result, in key order."""
        sql = "SELECT key FROM items WHERE status != ? ORDER BY key"
        return (str(k) for (k,) in self._snapshot(sql, (PENDING,)))

    def keys_with_status(self, statuses: Iterable[str | Status]) -> Iterator[str]:
        """Keys whose status is one of `statuses` (may include `pending`), in input order."""
        wanted = [s.value if isinstance(s, Status) else str(s) for s in statuses]
        sql = (
            f"SELECT key FROM items WHERE status IN ({','.join('?' * len(wanted))}) "
            "ORDER BY idx, key"
        )
        return (str(k) for (k,) in self._snapshot(sql, wanted))

    def iter_results(self, statuses: Iterable[str | Status] | None = None) -> Iterator[Result[Any]]:
        """Terminal results in input order, optionally only those with these statuses."""
        if statuses is None:
            where, params = "status != ?", [PENDING]
        else:
            params = [s.value if isinstance(s, Status) else str(s) for s in statuses]
            params = [s for s in params if s != PENDING]
            where = f"status IN ({','.join('?' * len(params))})"
        sql = f"SELECT {COLUMNS} FROM items WHERE {where} ORDER BY idx, key"
        return (decode_row(row) for row in self._snapshot(sql, params))

    def iter_output_lines(
        self, order: Literal["index", "seq"] = "index"
    ) -> Iterator[tuple[str, bytes]]:
        """(key, output line) of terminal rows, in input order or in the order written."""
        by = "idx, key" if order == "index" else "output_seq"
        sql = (
            "SELECT key, output_line FROM items WHERE status != ? AND output_line IS NOT NULL "
            f"ORDER BY {by}"
        )
        return ((str(k), bytes(line)) for k, line in self._snapshot(sql, (PENDING,)))
