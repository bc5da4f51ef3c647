"""The SQLite journal: round-trips, resume, identity, locking, and error translation."""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor._base._exceptions import ConveyorError
from conveyor._base._types import ErrorInfo, Result, Status, Usage
from conveyor._journal._journal import (
    SCHEMA_VERSION,
    Journal,
    JournalCorrupt,
    JournalError,
    JournalFull,
    JournalLocked,
    JournalMismatch,
    translate_error,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

IDENTITY = {"input": "/data/in.jsonl", "input_fingerprint": "abc123", "endpoint": "http://x/v1"}


def ok(i: int, **kw: Any) -> Result[Any]:
    return Result(index=i, key=f"k{i}", status=Status.OK, value={"i": i}, attempts=1, **kw)


def failed(i: int, etype: str = "HTTPError") -> Result[Any]:
    err = ErrorInfo(type=etype, message="boom", status_code=500, retryable=True)
    return Result(index=i, key=f"k{i}", status=Status.FAILED, error=err, attempts=3)


@pytest.fixture
def jpath(tmp_path: Path) -> str:
    return str(tmp_path / "run.journal")


@pytest.fixture
def journal(jpath: str) -> Iterator[Journal]:
    j = Journal.open(jpath, identity=IDENTITY)
    yield j
    j.close()


class Child:
    """A Python subprocess whose stdout lines are read with a deadline."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def line(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                raise TimeoutError(f"child said nothing in {timeout} s; buffered {self._buf!r}")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise EOFError(f"child exited: {self._buf!r} {err}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._sel.close()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


# -- round trips -------------------------------------------------------------


def test_every_result_field_round_trips(tmp_path: Path) -> None:
    """Each Result field written through `record` comes back equal from `get`."""
    full = Result(
        index=7,
        key="req-7",
        status=Status.TIMED_OUT,
        item={"prompt": "hi", "n": [1, 2]},
        value={"partial": True, "text": "é ✓"},
        error=ErrorInfo("TimeoutError", "took 30 s", "Traceback ...\n", 504, True),
        attempts=4,
        started_at=1_700_000_000.25,
        ended_at=1_700_000_031.5,
        duration=31.25,
        usage=Usage(input_tokens=12, output_tokens=0),
        meta={"phase": "a", "wave": 2},
    )
    minimal: Result[Any] = Result(index=0, key="req-0", status=Status.SKIPPED)
    with Journal.open(tmp_path / "j", identity=IDENTITY, store_items=True) as j:
        j.record([(full, b"line-7\n", 1), (minimal, None, None)])
        assert j.get("req-7") == full
        assert j.get("req-0") == minimal
        assert j.get("absent") is None
    with Journal.open_readonly(tmp_path / "j") as r:
        assert r.get("req-7") == full


def test_none_and_bytes_are_stored_as_null_and_blob(tmp_path: Path) -> None:
    """The journal binds None and bytes through identity adapters (issue 18: the
    sqlite3 module's failed adapter lookup costs more than the row): the file
    holds NULLs and BLOBs exactly as without them, and the rows read back equal."""
    import conveyor._journal._schema  # noqa: F401 - registers the adapters

    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)](None) is None
    line = b"line-1\n"
    assert sqlite3.adapters[(bytes, sqlite3.PrepareProtocol)](line) is line
    minimal: Result[Any] = Result(index=0, key="k0", status=Status.SKIPPED)
    with Journal.open(tmp_path / "j", identity=IDENTITY) as j:
        j.record([(ok(1), line, 1), (minimal, None, None)])
        assert j.get("k0") == minimal
    conn = sqlite3.connect(tmp_path / "j")
    try:
        rows = conn.execute(
            "SELECT key, typeof(output_line), output_line, typeof(error_type), typeof(item) "
            "FROM items ORDER BY key"
        ).fetchall()
    finally:
        conn.close()
    assert rows == [("k0", "null", None, "null", "null"), ("k1", "blob", line, "null", "null")]


def test_a_group_of_mixed_rows_is_written_as_executemany_writes_it(tmp_path: Path) -> None:
    """`record` writes a group with multi-row statements and NULL literals for the
    absent parts of a row (issue 18): a group of every shape of row, interleaved
    and longer than one statement, upserting pending rows too, leaves the table
    exactly as one-row `executemany` upserts of the same rows do."""
    from conveyor._journal._schema import SCHEMA_SQL, UPSERT, encode_row

    err = ErrorInfo("HTTPError", "boom", "", None, False)  # a NULL inside a present part
    shapes: list[Callable[[int], Result[Any]]] = [
        lambda i: Result(i, f"k{i}", Status.OK, value={"i": i}, attempts=1,
                         started_at=1.5, ended_at=2.5, duration=1.0, usage=Usage(3, 4)),
        lambda i: Result(i, f"k{i}", Status.SKIPPED),
        lambda i: Result(i, f"k{i}", Status.FAILED, item={"p": i}, error=err, attempts=2,
                         meta={"status_code": 500}, started_at=None, ended_at=3.0),
        lambda i: Result(i, f"k{i}", Status.TIMED_OUT, usage=Usage(0, 0), meta={"m": [i]}),
    ]  # fmt: skip
    results = [shapes[(i * 7) % 4 if i % 9 else 1](i) for i in range(150)]
    entries = [(r, None if i % 5 == 0 else f"line {i}\n".encode(), None if i % 5 == 0 else i)
               for i, r in enumerate(results)]  # fmt: skip
    reset = [(Result(i, f"k{i}", Status.CANCELLED), None, None) for i in range(0, 150, 3)]
    with Journal.open(tmp_path / "new", identity=IDENTITY, store_items=True) as j:
        j.record(reset)
        j.reset([f"k{i}" for i in range(0, 150, 3)])
        j.record(entries)
        for r in results:
            assert j.get(r.key) == r
    conn = sqlite3.connect(tmp_path / "old")
    try:
        conn.executescript(SCHEMA_SQL)
        conn.executemany(UPSERT, [encode_row(r, ln, sq, store_items=True) for r, ln, sq in reset])
        conn.execute("UPDATE items SET status = 'pending'")
        conn.executemany(UPSERT, [encode_row(r, ln, sq, store_items=True) for r, ln, sq in entries])
        conn.execute(f"ATTACH '{tmp_path / 'new'}' AS new")
        cols = (
            "key, idx, status, attempts, item, value, error_type, error_message, "
            "error_traceback, error_status_code, error_retryable, input_tokens, "
            "output_tokens, started_at, ended_at, duration, meta, output_line, output_seq"
        )
        typed = ", ".join(f"{c}, typeof({c})" for c in cols.split(", "))
        want = conn.execute(f"SELECT {typed} FROM main.items ORDER BY key").fetchall()
        got = conn.execute(f"SELECT {typed} FROM new.items ORDER BY key").fetchall()
    finally:
        conn.close()
    assert len(got) == 150
    assert got == want


def test_terminal_among_groups_of_any_size(journal: Journal) -> None:
    """`terminal_among` answers for any number of keys (its IN lists are padded
    to a power of two by repeating a key): pending and unknown keys are not in it."""
    journal.record([(ok(i), None, None) for i in range(0, 700, 2)])
    journal.reset(["k10", "k12"])
    for n in (1, 7, 8, 9, 63, 255, 256, 257, 700):
        keys = [f"k{i}" for i in range(n)] + ["nope"]
        want = {f"k{i}" for i in range(0, n, 2)} - {"k10", "k12"}
        assert journal.terminal_among(keys) == want
    assert journal.terminal_among([]) == set()


def test_items_are_not_stored_unless_asked(journal: Journal) -> None:
    """By default the (possibly large) input item is not kept in the journal."""
    journal.record([(ok(1, item={"big": "x" * 100}), None, None)])
    got = journal.get("k1")
    assert got is not None
    assert got.item is None
    assert got.value == {"i": 1}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def test_json_values_round_trip_property(tmp_path: Path) -> None:
    """Any JSON value, key text and status round-trips unchanged (Hypothesis)."""
    with Journal.open(tmp_path / "p.journal", identity={}) as j:
        counter = iter(range(10**6))

        @settings(max_examples=150, deadline=None)
        @given(
            value=json_values, key=st.text(min_size=1, max_size=30), status=st.sampled_from(Status)
        )
        def check(value: Any, key: str, status: Status) -> None:
            r = Result(index=next(counter), key=key, status=status, value=value)
            j.record([(r, None, None)])
            got = j.get(key)
            assert got is not None
            assert (got.value, got.status, got.index) == (value, status, r.index)

        check()


# -- queries and resume ------------------------------------------------------


def test_resume_skips_terminal_keys(jpath: str) -> None:
    """After reopening, keys with a terminal result are skipped; only the rest run again."""
    with Journal.open(jpath, identity=IDENTITY) as j:
        j.record([(ok(i), None, None) for i in range(0, 10, 2)])
        j.record([(failed(3), None, None)])
    with Journal.open(jpath, identity=IDENTITY) as j:
        todo = [f"k{i}" for i in range(10) if not j.is_terminal(f"k{i}")]
        assert todo == ["k1", "k5", "k7", "k9"]
        assert sorted(j.terminal_keys()) == ["k0", "k2", "k3", "k4", "k6", "k8"]
        assert j.terminal_among(["k0", "k1", "k3", "nope"]) == {"k0", "k3"}


def test_queries_counts_order_and_reset(journal: Journal) -> None:
    """Counts, status filters, input order, and `reset` making items pending again."""
    journal.record([(ok(i), None, None) for i in (5, 1, 3)])
    journal.record([(failed(2), None, None), (failed(4, "ValueError"), None, None)])
    journal.record([(Result(6, "k6", Status.TIMED_OUT), None, None)])
    assert journal.status_counts() == {"ok": 3, "failed": 2, "timed_out": 1}
    assert journal.error_counts() == {"HTTPError": 1, "ValueError": 1, "timed_out": 1}
    assert [r.index for r in journal.iter_results()] == [1, 2, 3, 4, 5, 6]
    assert [r.key for r in journal.iter_results(["failed", Status.TIMED_OUT])] == [
        "k2",
        "k4",
        "k6",
    ]
    assert list(journal.keys_with_status([Status.FAILED])) == ["k2", "k4"]

    assert journal.reset(journal.keys_with_status(["failed"])) == 2
    assert journal.reset(["k2", "missing"]) == 0  # already pending / unknown
    assert not journal.is_terminal("k2")
    assert journal.get("k2") is None
    assert journal.status_counts() == {"ok": 3, "pending": 2, "timed_out": 1}
    assert list(journal.keys_with_status(["pending"])) == ["k2", "k4"]
    assert "k2" not in set(journal.terminal_keys())
    assert [r.key for r in journal.iter_results()] == ["k1", "k3", "k5", "k6"]


def test_meta_get_set_delete(journal: Journal) -> None:
    """Meta keys are stored, replaced and deleted; `created_at` is set on creation."""
    assert journal.get_meta("total") is None
    journal.set_meta("total", "100")
    journal.update_meta({"total": "120", "options": '{"rpm": 60}'})
    assert journal.get_meta("total") == "120"
    journal.update_meta({"total": None})
    assert journal.get_meta("total") is None
    assert float(journal.get_meta("created_at") or 0) > 0
    assert journal.identity == IDENTITY


def test_is_terminal_is_fast(journal: Journal) -> None:
    """A key lookup stays in the microseconds on a journal with many rows."""
    journal.record([(ok(i), None, None) for i in range(20_000)])
    t0 = time.perf_counter()
    hits = sum(journal.is_terminal(f"k{i}") for i in range(0, 20_000, 10))
    per_lookup = (time.perf_counter() - t0) / 2000
    assert hits == 2000
    assert per_lookup < 200e-6  # ~5 us measured; loose for a shared CI machine


# -- identity ------------------------------------------------------------------


def test_identity_mismatch_names_keys_and_remedies(jpath: str) -> None:
    """Reopening for a different run says which keys differ (old vs new) and how to go on."""
    Journal.open(jpath, identity=IDENTITY).close()
    changed = {**IDENTITY, "endpoint": "http://y/v1", "options": "rpm=5"}
    del changed["input_fingerprint"]
    with pytest.raises(JournalMismatch) as info:
        Journal.open(jpath, identity=changed)
    msg = str(info.value)
    assert "endpoint: 'http://x/v1' in the journal, 'http://y/v1' now" in msg
    assert "input_fingerprint: 'abc123' in the journal, <absent> now" in msg
    assert "options: <absent> in the journal, 'rpm=5' now" in msg
    assert "`force=True`" in msg
    assert "new `journal=` path" in msg
    assert set(info.value.differences) == {"endpoint", "input_fingerprint", "options"}
    # the refused open released its lock, and force accepts the new identity
    with Journal.open(jpath, identity=changed, force=True) as j:
        assert j.identity == changed
    Journal.open(jpath, identity=changed).close()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("endpoint", "sk-proj-abcdefghijklmnop"),
        ("options", '{"headers": {"Authorization": "Bearer abcdefghijkl"}}'),
        ("api_key", "anything"),
        ("aws", "AKIAABCDEFGHIJKLMNOP"),
    ],
)
def test_identity_refuses_secrets(jpath: str, name: str, value: str) -> None:
    """Identity values that look like credentials are refused, without echoing them."""
    with pytest.raises(JournalError) as info:
        Journal.open(jpath, identity={**IDENTITY, name: value})
    assert "never pass secrets" in str(info.value)
    assert value not in str(info.value)
    assert not os.path.exists(jpath)


def test_identity_allows_lookalike_words(jpath: str) -> None:
    """Ordinary values containing 'sk-' inside a word are not mistaken for keys."""
    with Journal.open(jpath, identity={"task": "risk-assessment-2024-batch", "max_tokens": "9"}):
        pass


# -- locking -------------------------------------------------------------------


def test_second_open_in_process_is_locked(jpath: str) -> None:
    """A second writer open of the same journal fails at once, naming the holder pid."""
    first = Journal.open(jpath, identity=IDENTITY)
    try:
        with pytest.raises(JournalLocked) as info:
            Journal.open(jpath, identity=IDENTITY)
        assert info.value.pid == os.getpid()
        assert f"pid {os.getpid()}" in str(info.value)
    finally:
        first.close()
    Journal.open(jpath, identity=IDENTITY).close()


HOLDER = """
    import sys
    from conveyor._journal._journal import Journal
    j = Journal.open(sys.argv[1], identity={"input": "/data/in.jsonl"})
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_lock_held_by_process_is_released_by_kill_9(jpath: str) -> None:
    """A journal held by another process is refused with its pid, and free after kill -9."""
    child = Child(HOLDER, jpath)
    try:
        assert child.line() == "ready"
        with pytest.raises(JournalLocked) as info:
            Journal.open(jpath, identity={"input": "/data/in.jsonl"})
        assert info.value.pid == child.proc.pid
        child.proc.send_signal(signal.SIGKILL)
        assert child.proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.close()
    with Journal.open(jpath, identity={"input": "/data/in.jsonl"}) as j:
        assert j.status_counts() == {}


READ_WHILE_WRITING = """
    import sys
    from conveyor._journal._journal import Journal
    from conveyor._base._types import Result, Status
    with Journal.open(sys.argv[1], identity={}) as j:
        for batch in range(5):
            j.record([(Result(batch * 10 + i, f"k{batch}-{i}", Status.OK, value=i), b"x\\n", None)
                      for i in range(10)])
            print(batch, flush=True)
            sys.stdin.readline()
"""


def test_open_readonly_reads_while_writer_process_writes(jpath: str) -> None:
    """`open_readonly` takes no lock and sees each batch the writer process commits."""
    child = Child(READ_WHILE_WRITING, jpath)
    try:
        assert child.line() == "0"
        with Journal.open_readonly(jpath) as reader:
            assert reader.readonly
            for batch in range(5):
                if batch:
                    child.send("\n")
                    assert child.line() == str(batch)
                assert reader.status_counts() == {"ok": (batch + 1) * 10}
                assert len(list(reader.iter_results())) == (batch + 1) * 10
            with pytest.raises(JournalError, match="read-only"):
                reader.set_meta("x", "y")
            with pytest.raises(JournalLocked):
                Journal.open(jpath, identity={})
        child.send("\n")
        assert child.proc.wait(timeout=10) == 0
    finally:
        child.close()


# -- error translation -------------------------------------------------------


def test_newer_schema_is_refused(jpath: str) -> None:
    """A journal from a newer schema is refused with upgrade advice, by writers and readers."""
    Journal.open(jpath, identity=IDENTITY).close()
    conn = sqlite3.connect(jpath)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 98}")
    conn.close()
    expected = (
        f"written by a newer conveyor (schema {SCHEMA_VERSION + 98} > {SCHEMA_VERSION}): "
        "upgrade conveyor or use a new journal path"
    )
    with pytest.raises(JournalError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Journal.open(jpath, identity=IDENTITY)
    with pytest.raises(JournalError, match="newer conveyor"):
        Journal.open_readonly(jpath)
    Journal.open(jpath.replace("run", "other"), identity=IDENTITY).close()  # lock was released


def test_garbage_file_is_corrupt(jpath: str) -> None:
    """A file that is not SQLite is reported as not a journal, with what to do."""
    with open(jpath, "wb") as f:
        f.write(os.urandom(4096))
    openers: list[Callable[[], Journal]] = [
        lambda: Journal.open(jpath, identity=IDENTITY),
        lambda: Journal.open_readonly(jpath),
    ]
    for opener in openers:
        with pytest.raises(JournalCorrupt) as info:
            opener()
        assert "is not a conveyor journal or is damaged" in str(info.value)
        assert "move it away to start over; the output file is unaffected" in str(info.value)


def test_foreign_sqlite_database_is_refused_untouched(jpath: str) -> None:
    """Another application's SQLite file is refused and left in its own journal mode."""
    conn = sqlite3.connect(jpath)
    conn.execute("CREATE TABLE notes (t TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(JournalCorrupt, match="another SQLite database"):
        Journal.open(jpath, identity=IDENTITY)
    conn = sqlite3.connect(jpath)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_a_new_journal_is_created_in_wal_and_then_runs_synchronous_normal(jpath: str) -> None:
    """A new journal is written without waiting for the disk while it is created
    (start-up), and never after: the run's commits are WAL + synchronous=NORMAL,
    the file is whole when closed, and it resumes."""
    with Journal.open(jpath, identity=IDENTITY) as j:
        conn = j._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL, not OFF (0)
        j.record([(ok(1), b"x", 1)])
    conn = sqlite3.connect(jpath)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 1
    conn.close()
    with Journal.open(jpath, identity=IDENTITY) as j:
        assert j.get("k1") is not None


def test_damaged_pages_are_corrupt(jpath: str) -> None:
    """A journal whose data pages were overwritten reports JournalCorrupt, not sqlite3 errors."""
    with Journal.open(jpath, identity=IDENTITY) as j:
        j.record([(ok(i), b"x" * 200, i) for i in range(2000)])
    size = os.path.getsize(jpath)
    with open(jpath, "r+b") as f:
        f.seek(4096 * 2)
        f.write(b"\xff" * (size - 4096 * 3))
    with (  # noqa: PT012 - the damage may show at open or at the first full read
        pytest.raises(JournalCorrupt, match="move it away"),
        Journal.open(jpath, identity=IDENTITY) as j,
    ):
        j.status_counts()
        list(j.iter_results())


def read_only_dir(tmp_path: Path) -> Iterator[str]:
    """A directory this process cannot write: chmod when not root, a read-only mount if root."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield str(d)
        d.chmod(0o755)
        return
    # chmod does not stop root: mount a read-only tmpfs over the directory instead.
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("running as root without mount permission: no read-only location to test")
    try:
        yield str(d)
    finally:
        subprocess.run(["umount", str(d)], check=True)


@pytest.fixture(name="ro_dir")
def ro_dir_fixture(tmp_path: Path) -> Iterator[str]:
    yield from read_only_dir(tmp_path)


def test_read_only_location_says_choose_another(ro_dir: str) -> None:
    """A journal in a read-only directory fails with the path and the `journal=` advice."""
    path = os.path.join(ro_dir, "run.journal")
    with pytest.raises(JournalError) as info:
        Journal.open(path, identity=IDENTITY)
    assert type(info.value) is JournalError
    assert path in str(info.value)
    assert "choose a writable location with `journal=`" in str(info.value)


def test_missing_journal_for_readonly_and_closed_use(jpath: str) -> None:
    """Reading a missing journal, or using a closed one, raises JournalError (no sqlite3 error)."""
    with pytest.raises(JournalError, match="no journal at"):
        Journal.open_readonly(jpath)
    j = Journal.open(jpath, identity=IDENTITY)
    j.close()
    j.close()  # idempotent
    for call in (lambda: j.is_terminal("k"), lambda: j.record([]), lambda: list(j.iter_results())):
        with pytest.raises(JournalError):
            call()


def test_sqlite_full_keeps_committed_results(jpath: str) -> None:
    """SQLITE_FULL becomes JournalFull; every result committed before it is kept.

    The full disk is simulated with `PRAGMA max_page_count` (SQLite then
    fails exactly as on a full disk, with SQLITE_FULL); the real ENOSPC path
    is covered by the tmpfs test below where mounting is allowed.
    """
    with Journal.open(jpath, identity=IDENTITY) as j:
        j.record([(ok(i), b"y" * 100, i) for i in range(50)])
        pages = j._conn.execute("PRAGMA page_count").fetchone()[0]
        j._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(JournalFull) as info:
            j.record([(ok(i), b"y" * 2000, i) for i in range(50, 300)])
        assert "everything committed so far is kept" in str(info.value)
        assert "free some space and rerun" in str(info.value)
        assert j.status_counts() == {"ok": 50}  # the failed batch was rolled back whole
    with Journal.open(jpath, identity=IDENTITY) as j:
        assert j.status_counts() == {"ok": 50}


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[str]:
    d = tmp_path / "tiny"
    d.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(d)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tiny tmpfs here (needs root): SQLITE_FULL test covers it")
    try:
        yield str(d)
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_real_full_filesystem_is_journal_full(tiny_fs: str) -> None:
    """On a really full filesystem the journal raises JournalFull and keeps its commits."""
    path = os.path.join(tiny_fs, "run.journal")
    committed = 0
    with Journal.open(path, identity=IDENTITY) as j, pytest.raises(JournalFull):  # noqa: PT012
        for batch in range(1000):
            j.record([(ok(batch * 20 + i), b"z" * 400, None) for i in range(20)])
            committed += 20
    assert committed > 0
    with Journal.open_readonly(path) as r:
        assert r.status_counts() == {"ok": committed}


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), JournalFull, "disk full"),
        (OSError(errno.EROFS, "Read-only file system"), JournalError, "`journal=`"),
        (OSError(errno.EIO, "Input/output error"), JournalError, "check the disk"),
        (sqlite3.ProgrammingError("closed"), JournalError, "closed"),
    ],
)
def test_translate_error_maps_os_errors(exc: BaseException, kind: type, text: str) -> None:
    """OS-level errors map to the JournalError subclass whose message explains them."""
    err = translate_error(exc, "/x/run.journal")
    assert type(err) is kind
    assert isinstance(err, ConveyorError)
    assert text in str(err)
    assert err.path == "/x/run.journal"
