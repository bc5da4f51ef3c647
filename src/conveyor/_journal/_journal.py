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

from .._base._types import ErrorInfo, Result, Status, Usage
from ._errors import (
    _CORRUPT_HINT,
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

SCHEMA_VERSION = 1
APPLICATION_ID = 0x636F6E76  # "conv": tells our files from other SQLite databases
PENDING = "pending"
_PAGE = 1000

_SCHEMA = """
CREATE TABLE items (
    key TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    item BLOB,
    value BLOB,
    error_type TEXT,
    error_message TEXT,
    error_traceback TEXT,
    error_status_code INTEGER,
    error_retryable INTEGER,
    input_tokens INTEGER,
    output_tokens INTEGER,
    started_at REAL,
    ended_at REAL,
    duration REAL NOT NULL DEFAULT 0,
    meta BLOB,
    output_line BLOB,
    output_seq INTEGER
);
CREATE INDEX items_by_index ON items (idx, key);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = (
    "key, idx, status, attempts, item, value, error_type, error_message, error_traceback, "
    "error_status_code, error_retryable, input_tokens, output_tokens, started_at, ended_at, "
    "duration, meta, output_line, output_seq"
)
_UPSERT = (
    f"INSERT INTO items ({_COLUMNS}) VALUES ({', '.join('?' * 19)}) ON CONFLICT(key) DO UPDATE SET "
    + ", ".join(f"{c}=excluded.{c}" for c in _COLUMNS.split(", ")[1:])
)
_META_UPSERT = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value=excluded.value"
)


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def _json_default(obj: Any) -> Any:
    # Values are stored as JSON; types JSON cannot express are kept as text.
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, bytes | bytearray):
        return bytes(obj).decode("utf-8", "replace")
    dump = getattr(obj, "model_dump", None)
    if callable(dump):  # a Pydantic model (a typed `validate=` value): its JSON form
        try:
            return dump(mode="json")
        except Exception:
            pass
    return str(obj)


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
            if pid is None or _pid_alive(pid) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _pid_alive(pid: int) -> bool:
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
                _prepare_schema(conn, p)
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
                _check_schema(conn, p)
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
                    conn.execute(_META_UPSERT, (k, v))

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
    ) -> None:
        """Upsert results (each with its output line and sequence) and meta in one transaction."""
        self._writable()
        rows = [self._encode(r, line, seq) for r, line, seq in entries]
        with self._transaction() as conn:
            conn.executemany(_UPSERT, rows)
            if meta:
                conn.executemany(_META_UPSERT, meta.items())

    def _encode(self, r: Result[Any], line: bytes | None, seq: int | None) -> tuple[Any, ...]:
        err, usage = r.error, r.usage
        return (
            r.key,
            r.index,
            Status(r.status).value,
            r.attempts,
            _dumps(r.item) if self._store_items and r.item is not None else None,
            None if r.value is None else self._dumps_value(r.value, r.key),
            None if err is None else err.type,
            None if err is None else err.message,
            None if err is None else err.traceback,
            None if err is None else err.status_code,
            None if err is None else int(err.retryable),
            None if usage is None else usage.input_tokens,
            None if usage is None else usage.output_tokens,
            r.started_at,
            r.ended_at,
            r.duration,
            _dumps(r.meta) if r.meta else None,
            line,
            seq,
        )

    def _dumps_value(self, value: Any, key: str) -> bytes:
        """The value as JSON; a part JSON cannot express is kept as its text,
        and said once per type (a resumed run reports that text, not the object)."""
        lossy: list[str] = []

        def default(obj: Any) -> Any:
            if not isinstance(obj, set | frozenset | tuple | bytes | bytearray):
                lossy.append(type(obj).__qualname__)
            return _json_default(obj)

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
                conn.execute(_META_UPSERT, ("output_stale", "1"))
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
            conn.executemany(_META_UPSERT, meta.items())

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
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                sql = (
                    f"SELECT key FROM items WHERE status != '{PENDING}' AND key IN "
                    f"({','.join('?' * len(chunk))})"
                )
                found.update(k for (k,) in self._conn.execute(sql, chunk))
        return found

    def get(self, key: str) -> Result[Any] | None:
        """The terminal result stored for `key`, or None (absent or pending)."""
        with self._lock, _guard(self._path, writing=not self._readonly):
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM items WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None or row[2] == PENDING else _decode(row)

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
        sql = f"SELECT {_COLUMNS} FROM items WHERE {where} ORDER BY idx, key"
        return (_decode(row) for row in self._snapshot(sql, params))

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


def _decode(row: tuple[Any, ...]) -> Result[Any]:
    (key, idx, status, attempts, item, value, etype, emsg, etb, ecode, eretry) = row[:11]
    (itok, otok, started, ended, duration, meta) = row[11:17]
    return Result(
        index=idx,
        key=key,
        status=Status(status),
        item=None if item is None else orjson.loads(item),
        value=None if value is None else orjson.loads(value),
        error=None
        if etype is None
        else ErrorInfo(
            type=etype,
            message=emsg or "",
            traceback=etb or "",
            status_code=ecode,
            retryable=bool(eretry),
        ),
        attempts=attempts,
        started_at=started,
        ended_at=ended,
        duration=duration,
        usage=None if itok is None and otok is None else Usage(itok or 0, otok or 0),
        meta={} if meta is None else orjson.loads(meta),
    )


def _check_schema(conn: sqlite3.Connection, path: str) -> bool:
    """Validate an existing file; return False when it is empty (a new journal)."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if objects == 0 and version == 0:
        return False
    if app_id != APPLICATION_ID:
        raise JournalCorrupt(
            f"{path} is not a conveyor journal or is damaged (another SQLite database): "
            f"{_CORRUPT_HINT}",
            path=path,
        )
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"{path} was written by a newer conveyor (schema {version} > {SCHEMA_VERSION}): "
            "upgrade conveyor or use a new journal path",
            path=path,
        )
    return True


def _prepare_schema(conn: sqlite3.Connection, path: str) -> None:
    # Checked before switching to WAL so a foreign database is never modified.
    if _check_schema(conn, path):
        return  # version == SCHEMA_VERSION: migrations from older versions go here
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(_META_UPSERT, ("created_at", repr(time.time())))
        conn.execute(_META_UPSERT, ("schema", str(SCHEMA_VERSION)))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
