"""The journal file's format: the tables, one result as a row and back, the schema check.

`Journal` (`_journal.py`) does the locking, transactions and queries; this
module knows what a row holds and how a file is recognised and created.
"""

from __future__ import annotations

import contextlib
import operator
import sqlite3
import time
from itertools import chain
from typing import TYPE_CHECKING, Any

import orjson

from .._base._types import ErrorInfo, Result, Status, Usage
from ._errors import _CORRUPT_HINT, JournalCorrupt, JournalError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

__all__ = [
    "APPLICATION_ID",
    "COLUMNS",
    "META_UPSERT",
    "PENDING",
    "SCHEMA_VERSION",
    "UPSERT",
    "check_schema",
    "decode_row",
    "dumps",
    "encode_row",
    "prepare_schema",
    "upsert_meta",
    "upsert_rows",
]

# The sqlite3 module "adapts" every bound None and bytes (CPython 3.11-3.13,
# Modules/_sqlite/statement.c `need_adapt`: only exact int, float, str and
# bytearray skip it): with no adapter registered for the type it looks up
# `PrepareProtocol.__adapt__`, and that failed lookup on a class formats and
# clears an AttributeError, about 2,000 instructions a parameter. A journal row
# binds ten or so of them: registered C identities (`{}.get(None)` is None,
# `bytes(b)` is b for an exact bytes) bind the same values at half the cost of a
# row (issue 18). Only where nobody registered one for these types before.
sqlite3.adapters.setdefault((type(None), sqlite3.PrepareProtocol), {}.get)
sqlite3.adapters.setdefault((bytes, sqlite3.PrepareProtocol), bytes)

# Each status's text, read per row (`Status(x).value` is two Python-level enum calls).
_STATUS_VALUES: dict[object, str] = {s: s.value for s in Status}

SCHEMA_VERSION = 2
APPLICATION_ID = 0x636F6E76  # "conv": tells our files from other SQLite databases
PENDING = "pending"

SCHEMA_SQL = """
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

# Schema upgrades, applied in order to older journals when they are opened
# for writing (a read-only open of an older journal works without them; the
# readers of the newer tables check that they exist).
_MIGRATIONS: dict[int, str] = {
    # 1 -> 2: provider batch mode (`conveyor run --mode batch`, see
    # `conveyor.openai._batchmode`): which keys went into which uploaded file
    # and remote batch, and the state of each (`_journal._shards`).
    2: """
CREATE TABLE IF NOT EXISTS shards (
    shard_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    url TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    lines INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    file_id TEXT,
    batch_id TEXT,
    remote_status TEXT,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    polls INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    submitted_at REAL,
    state_since REAL NOT NULL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS shard_lines (
    shard_id TEXT NOT NULL,
    key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (shard_id, key)
);
CREATE INDEX IF NOT EXISTS shard_lines_by_key ON shard_lines (key);
""",
}


COLUMNS = (
    "key, idx, status, attempts, item, value, error_type, error_message, error_traceback, "
    "error_status_code, error_retryable, input_tokens, output_tokens, started_at, ended_at, "
    "duration, meta, output_line, output_seq"
)
UPSERT = (
    f"INSERT INTO items ({COLUMNS}) VALUES ({', '.join('?' * 19)}) ON CONFLICT(key) DO UPDATE SET "
    + ", ".join(f"{c}=excluded.{c}" for c in COLUMNS.split(", ")[1:])
)
META_UPSERT = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value=excluded.value"
)

# A group of results is upserted with a few multi-row statements (64, 32, ... 1
# rows: its size in binary) instead of `executemany` of a one-row statement, for
# two costs of the sqlite3 module (CPython 3.11-3.13, Modules/_sqlite/cursor.c)
# that were a large part of the writer thread's own work (issue 18, callgrind):
# - it releases and takes back the GIL around every `sqlite3_step`, once per row
#   under `executemany`; while the event loop holds the GIL each take-back waits
#   for it (a switch of threads);
# - every bound None and bytes goes through `pysqlite_microprotocols_adapt` (a
#   tuple built, a dict lookup, an adapter called: ~1,250 instructions), and an
#   ok result's row holds eight NULLs and a BLOB. The NULLs of a row's absent
#   parts (item, value, error, usage, meta, line) are written into the statement
#   as literals, one statement per pattern of absent parts (a run has a handful),
#   and the output line is bound as a `bytearray`, which binds as the same BLOB
#   without an adapter (`encode_row`).
# 64 rows bind at most 1,216 parameters (SQLite's limit: 32,766 since 3.32, 999 before).
_CHUNK = 64
# The parts of a row that are NULL together: (first column, columns), in `COLUMNS`
# order (item; value; error_type..error_retryable, all None without an error;
# input_tokens, output_tokens; meta; output_line).
_PARTS = ((4, 1), (5, 1), (6, 5), (11, 2), (16, 1), (17, 1))
_WIDTH = 19
_ITEMS_SQL: dict[tuple[tuple[bool, ...], int], str] = {}
_BOUND: dict[tuple[bool, ...], Callable[[tuple[Any, ...]], tuple[Any, ...]]] = {}
_META_SQL: dict[int, str] = {}
_ON_CONFLICT = UPSERT.split(" ON CONFLICT", 1)[1]
_META_ON_CONFLICT = META_UPSERT.split(" ON CONFLICT", 1)[1]


def _absent(row: tuple[Any, ...]) -> tuple[bool, ...]:
    """Which of `_PARTS` are NULL in `row` (each part's first column tells)."""
    return (
        row[4] is None,
        row[5] is None,
        row[6] is None,
        row[11] is None,
        row[16] is None,
        row[17] is None,
    )


def _null_columns(absent: tuple[bool, ...]) -> set[int]:
    return {c for (first, n), gone in zip(_PARTS, absent, strict=True) if gone
            for c in range(first, first + n)}  # fmt: skip


def _items_sql(absent: tuple[bool, ...], n: int) -> str:
    sql = _ITEMS_SQL.get((absent, n))
    if sql is None:
        nulls = _null_columns(absent)
        one = "(" + ", ".join("NULL" if c in nulls else "?" for c in range(_WIDTH)) + ")"
        values = ", ".join([one] * n)
        sql = f"INSERT INTO items ({COLUMNS}) VALUES {values} ON CONFLICT{_ON_CONFLICT}"
        _ITEMS_SQL[(absent, n)] = sql
    return sql


def _bound(absent: tuple[bool, ...]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """The values of a row that its statement binds (all but the NULL parts)."""
    get = _BOUND.get(absent)
    if get is None:
        nulls = _null_columns(absent)
        get = operator.itemgetter(*(c for c in range(_WIDTH) if c not in nulls))
        _BOUND[absent] = get
    return get


def _meta_sql(n: int) -> str:
    sql = _META_SQL.get(n)
    if sql is None:
        values = ", ".join(["(?, ?)"] * n)
        sql = f"INSERT INTO meta (key, value) VALUES {values} ON CONFLICT{_META_ON_CONFLICT}"
        _META_SQL[n] = sql
    return sql


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    """(start, size) of the power-of-two chunks of at most `_CHUNK` covering range(n)."""
    i = 0
    while i < n:
        k = _CHUNK
        while k > n - i:
            k >>= 1
        yield i, k
        i += k


def upsert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Upsert `encode_row` rows: the same rows, values and conflict rule as
    `executemany(UPSERT, rows)`, in a few statements (see `_CHUNK`)."""
    i, n = 0, len(rows)
    while i < n:
        # A run of rows with the same absent parts shares its statements.
        absent = _absent(rows[i])
        j = i + 1
        while j < n and _absent(rows[j]) == absent:
            j += 1
        bound = _bound(absent)
        for start, k in _chunks(j - i):
            part = rows[i + start : i + start + k]
            conn.execute(_items_sql(absent, k), list(chain.from_iterable(map(bound, part))))
        i = j


def upsert_meta(conn: sqlite3.Connection, values: Mapping[str, str]) -> None:
    """Upsert meta (key, text value) pairs in one statement or a few."""
    pairs = list(values.items())
    for start, k in _chunks(len(pairs)):
        conn.execute(_meta_sql(k), list(chain.from_iterable(pairs[start : start + k])))


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=json_default, option=orjson.OPT_NON_STR_KEYS)


def json_default(obj: Any) -> Any:
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


def encode_row(
    r: Result[Any],
    line: bytes | None,
    seq: int | None,
    *,
    store_items: bool,
    store_value: bool = True,
    dump_value: Callable[[Any, str], bytes] | None = None,
) -> tuple[Any, ...]:
    """One result as the values of `UPSERT` (item kept only with `store_items`, value
    unless `store_value` is False); the output line as a `bytearray` (see `_CHUNK`)."""
    err, usage = r.error, r.usage
    return (
        r.key,
        r.index,
        _STATUS_VALUES.get(r.status) or Status(r.status).value,
        r.attempts,
        dumps(r.item) if store_items and r.item is not None else None,
        None
        if r.value is None or not store_value
        else (dumps(r.value) if dump_value is None else dump_value(r.value, r.key)),
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
        dumps(r.meta) if r.meta else None,
        None if line is None else bytearray(line),  # a BLOB bound without an adapter
        seq,
    )


def decode_row(row: tuple[Any, ...]) -> Result[Any]:
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


def check_schema(conn: sqlite3.Connection, path: str) -> bool:
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


def prepare_schema(conn: sqlite3.Connection, path: str) -> None:
    # Checked before switching to WAL so a foreign database is never modified.
    if check_schema(conn, path):
        _migrate(conn)
        return
    # A new file: switched to WAL and its schema written without waiting for the
    # disk (synchronous=OFF until `Journal.open` sets NORMAL, the journal's mode):
    # the rollback journal's ten fsyncs took 10-40 ms before the first request on a
    # shared disk; now ~1 ms. A kill -9 loses nothing (the writes are the kernel's
    # by then); a power loss before the first checkpoint (which syncs WAL and file)
    # can at worst damage this still empty journal, as NORMAL may lose the results
    # written since the last checkpoint anyway.
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        _run_script(conn, SCHEMA_SQL)
        for version in sorted(_MIGRATIONS):
            _run_script(conn, _MIGRATIONS[version])
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(META_UPSERT, ("created_at", repr(time.time())))
        conn.execute(META_UPSERT, ("schema", str(SCHEMA_VERSION)))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    for stmt in script.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an older journal up to `SCHEMA_VERSION`, each step in one transaction."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for target in sorted(v for v in _MIGRATIONS if v > version):
        conn.execute("BEGIN IMMEDIATE")
        try:
            _run_script(conn, _MIGRATIONS[target])
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute(META_UPSERT, ("schema", str(target)))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
