"""The exactly-once output sink: group commit, resume truncation, export, kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import selectors
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor._base._exceptions import ConfigError
from conveyor._base._types import ErrorInfo, Result, Status
from conveyor._journal._journal import Journal, JournalError, JournalFull
from conveyor._journal._sink import OutputMismatch, OutputSink, export

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def fmt(r: Result[Any]) -> bytes:
    return orjson.dumps({"key": r.key, "status": r.status.value, "value": r.value})


def res(i: int, status: Status = Status.OK, value: Any = None) -> Result[Any]:
    err = None if status is Status.OK else ErrorInfo("HTTPError", "500", status_code=500)
    return Result(i, f"k{i:05d}", status, value=value if value is not None else i, error=err)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "run.journal", identity={"test": "sink"})
    yield j
    j.close()


def output_keys(path: str | Path) -> list[str]:
    with open(path, "rb") as f:
        return [orjson.loads(line)["key"] for line in f.read().splitlines()]


def put_bytes(path: str | Path, data: bytes, mode: str = "ab") -> None:
    with open(path, mode) as f:
        f.write(data)


def file_size(path: str | Path) -> int:
    return os.path.getsize(path)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f.read().splitlines()]


def assert_matches_journal(journal: Journal, out: str | Path) -> None:
    """The output file is exactly the journal's lines, in the order written."""
    with open(out, "rb") as f:
        data = f.read()
    lines = b"".join(line for _k, line in journal.iter_output_lines("seq"))
    assert data == lines
    assert int(journal.get_meta("output_offset") or 0) == len(data)


async def test_results_reach_file_and_journal_together(journal: Journal, tmp_path: Path) -> None:
    """Every added result is in the output once and in the journal with its exact line."""
    out = tmp_path / "out.jsonl"
    async with OutputSink(journal, out, fmt, flush_every=7) as sink:
        for i in range(100):
            await sink.add(res(i, Status.OK if i % 3 else Status.FAILED))
    assert output_keys(out) == [f"k{i:05d}" for i in range(100)]
    assert sink.written == 100
    assert journal.status_counts() == {"ok": 66, "failed": 34}
    assert journal.get_meta("output_path") == str(out)
    assert_matches_journal(journal, out)
    got = journal.get("k00003")
    assert got is not None
    assert got.error is not None
    assert got.error.status_code == 500


async def test_background_flush_by_interval(journal: Journal, tmp_path: Path) -> None:
    """Results are committed within `flush_interval` without an explicit flush."""
    out = tmp_path / "out.jsonl"
    async with OutputSink(journal, out, fmt, flush_every=1000, flush_interval=0.02) as sink:
        for i in range(3):
            await sink.add(res(i))
        deadline = time.monotonic() + 5
        while journal.status_counts().get("ok", 0) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert journal.status_counts() == {"ok": 3}
        assert output_keys(out) == ["k00000", "k00001", "k00002"]


async def test_each_result_is_committed_as_it_arrives_even_while_the_loop_is_busy(
    journal: Journal, tmp_path: Path
) -> None:
    """The writer thread commits a result handed to it without waiting for the
    event loop to run again (a loop busy with answers must not hold results
    uncommitted: a kill -9 would send them again), nor for `flush_interval`."""
    out = tmp_path / "out.jsonl"
    async with OutputSink(journal, out, fmt, flush_every=1000, flush_interval=600) as sink:
        for i in range(3):
            await sink.add(res(i))
            # Blocking poll on this thread: the loop does not run until it ends.
            deadline = time.monotonic() + 30
            while journal.status_counts().get("ok", 0) <= i and time.monotonic() < deadline:
                time.sleep(0.001)  # noqa: ASYNC251 - blocking the loop is the point
            assert journal.status_counts() == {"ok": i + 1}
        assert output_keys(out) == ["k00000", "k00001", "k00002"]


async def test_event_loop_runs_during_flushes(journal: Journal, tmp_path: Path) -> None:
    """The SQLite work runs on the writer thread: the loop keeps ticking while it flushes."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    sink = OutputSink(journal, tmp_path / "o.jsonl", fmt, flush_every=5000, flush_interval=60)
    for i in range(2000):
        await sink.add(res(i))  # below flush_every: buffered, no suspension
    before = ticks
    await sink.flush()
    during = ticks - before
    stop.set()
    await task
    await sink.close()
    assert journal.status_counts() == {"ok": 2000}
    assert during > 0


async def test_resume_truncates_uncommitted_bytes(journal: Journal, tmp_path: Path) -> None:
    """Bytes past the committed offset (a crash before commit) are cut on the next open."""
    out = tmp_path / "out.jsonl"
    async with OutputSink(journal, out, fmt) as sink:
        for i in range(5):
            await sink.add(res(i))
    committed = file_size(out)
    put_bytes(out, b'{"key":"k00005","status":"ok","value":5}\n{"key":"k000')
    async with OutputSink(journal, out, fmt) as sink:
        assert file_size(out) == committed
        for i in range(5, 8):
            if not journal.is_terminal(f"k{i:05d}"):
                await sink.add(res(i))
    assert output_keys(out) == [f"k{i:05d}" for i in range(8)]
    assert_matches_journal(journal, out)


async def test_short_output_asks_for_export(journal: Journal, tmp_path: Path) -> None:
    """An output shorter than the committed offset is refused; `export` repairs it."""
    out = tmp_path / "out.jsonl"
    async with OutputSink(journal, out, fmt) as sink:
        for i in range(5):
            await sink.add(res(i))
    os.truncate(out, 10)
    with pytest.raises(OutputMismatch) as info:
        OutputSink(journal, out, fmt)
    assert str(out) in str(info.value)
    assert "export" in str(info.value)
    assert export(journal, out) == 5
    async with OutputSink(journal, out, fmt) as sink:
        await sink.add(res(5))
    assert output_keys(out) == [f"k{i:05d}" for i in range(6)]
    assert_matches_journal(journal, out)


async def test_other_output_path_is_refused(journal: Journal, tmp_path: Path) -> None:
    """Resuming into a different output file than the journal's is refused with the fix."""
    async with OutputSink(journal, tmp_path / "a.jsonl", fmt) as sink:
        await sink.add(res(0))
    with pytest.raises(OutputMismatch, match=r"a\.jsonl, not .*b\.jsonl"):
        OutputSink(journal, tmp_path / "b.jsonl", fmt)


async def test_a_group_of_results_is_added_in_order_and_held_within_max_buffered(
    journal: Journal, tmp_path: Path
) -> None:
    """`add_many` writes a group as `add` would each: in order, each key once, and
    it never holds more than `max_buffered` uncommitted results (a group larger
    than that waits for the writer part-way)."""
    out = tmp_path / "out.jsonl"
    held: list[int] = []
    async with OutputSink(journal, out, fmt, flush_every=4, max_buffered=8) as sink:
        real_committed = sink._committed

        async def committed(n: int) -> None:
            held.append(sink._added - sink._done)
            await real_committed(n)

        sink._committed = committed  # type: ignore[method-assign]
        await sink.add_many([res(i) for i in range(30)])
        await sink.add_many([])
        await sink.add_many([res(3, value="again"), res(30), res(30, value="twin")])
    assert output_keys(out) == [f"k{i:05d}" for i in range(31)]
    assert sink.duplicates == 2
    assert held and max(held) <= 8
    assert_matches_journal(journal, out)


async def test_duplicate_keys_are_written_once(journal: Journal, tmp_path: Path) -> None:
    """A key already terminal (in the journal or the same batch) is not written again."""
    out = tmp_path / "out.jsonl"
    async with OutputSink(journal, out, fmt, flush_every=3) as sink:
        await sink.add(res(0, value="first"))
        await sink.flush()
        for r in (res(0, value="again"), res(1), res(1, value="twin")):
            await sink.add(r)
    assert output_keys(out) == ["k00000", "k00001"]
    assert sink.duplicates == 2
    got = journal.get("k00000")
    assert got is not None
    assert got.value == "first"
    assert_matches_journal(journal, out)


async def test_retry_then_export_keeps_each_key_once(journal: Journal, tmp_path: Path) -> None:
    """After reset + rerun the latest line per key wins; export rewrites in input order."""
    out = tmp_path / "out.jsonl"
    async with OutputSink(journal, out, fmt) as sink:
        for i in range(6):
            await sink.add(res(i, Status.FAILED if i in (1, 4) else Status.OK))
    assert journal.reset(journal.keys_with_status(["failed"]), mark_stale=True) == 2
    async with OutputSink(journal, out, fmt) as sink:
        for key in list(journal.keys_with_status(["pending"])):
            await sink.add(res(int(key[1:]), value="retried"))
    assert output_keys(out).count("k00001") == 1  # once, even before export
    assert export(journal, out) == 6
    rows = read_rows(out)
    assert [r["key"] for r in rows] == [f"k{i:05d}" for i in range(6)]
    assert [r["status"] for r in rows] == ["ok"] * 6
    assert rows[1]["value"] == rows[4]["value"] == "retried"
    assert_matches_journal(journal, out)
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []
    async with OutputSink(journal, out, fmt) as sink:  # the export is the new committed state
        await sink.add(res(6))
    assert output_keys(out)[-1] == "k00006"
    assert_matches_journal(journal, out)


async def test_export_interrupted_before_rename_is_finished(
    journal: Journal, tmp_path: Path
) -> None:
    """An export whose journal commit landed but whose rename did not completes on next open."""
    out = tmp_path / "out.jsonl"
    async with OutputSink(journal, out, fmt) as sink:
        for i in range(3):
            await sink.add(res(i))
    # The state export leaves between its commit and its rename (a crash there).
    tmp = f"{out}.export-1.tmp"
    data = b"".join(line for _k, line in journal.iter_output_lines("index"))
    put_bytes(tmp, data, "wb")
    put_bytes(out, b"stale bytes that the export replaces\n")
    journal.renumber_output(
        {"output_path": str(out), "output_offset": str(len(data)), "export_tmp": tmp}
    )
    async with OutputSink(journal, out, fmt) as sink:
        await sink.add(res(3))
    assert file_size(out) == len(data) + len(fmt(res(3))) + 1
    assert tmp not in os.listdir(tmp_path)
    assert journal.get_meta("export_tmp") is None
    assert output_keys(out) == [f"k{i:05d}" for i in range(4)]


async def test_disk_full_output_surfaces_and_stops(journal: Journal) -> None:
    """ENOSPC writing the output (/dev/full) raises JournalFull on the next add and on close."""
    sink = OutputSink(journal, "/dev/full", fmt, flush_every=2)
    await sink.add(res(0))
    with pytest.raises(JournalFull) as info:  # noqa: PT012
        for i in range(1, 100):
            await sink.add(res(i))
    assert "free some space and rerun" in str(info.value)
    with pytest.raises(JournalFull):
        await sink.add(res(200))
    with pytest.raises(JournalFull):
        await sink.close()
    assert journal.status_counts() == {}  # nothing committed whose line was not written


async def test_background_failure_surfaces_on_close(journal: Journal, tmp_path: Path) -> None:
    """A failure in the background flusher is raised by close, naming the key involved."""

    def bad(r: Result[Any]) -> bytes:
        raise TypeError("not serialisable")

    sink = OutputSink(journal, tmp_path / "o.jsonl", bad, flush_interval=0.01)
    await sink.add(res(0))
    raised: TypeError | None = None
    deadline = time.monotonic() + 5
    while raised is None and time.monotonic() < deadline:  # until the flusher has failed
        await asyncio.sleep(0.01)
        try:
            await sink.add(res(1))
        except TypeError as exc:
            raised = exc
    assert raised is not None
    assert "k00000" in "".join(getattr(raised, "__notes__", []))
    with pytest.raises(TypeError):
        await sink.close()


def test_bad_options_and_readonly_journal(journal: Journal, tmp_path: Path) -> None:
    """Invalid flush settings and a read-only journal are refused at construction."""
    with pytest.raises(ConfigError, match="flush_every"):
        OutputSink(journal, None, fmt, flush_every=0)
    with pytest.raises(ConfigError, match="flush_interval"):
        OutputSink(journal, None, fmt, flush_interval=0)
    with Journal.open_readonly(journal.path) as r, pytest.raises(JournalError, match="read-only"):
        OutputSink(r, None, fmt)


async def test_without_output_file_lines_are_kept_for_export(
    journal: Journal, tmp_path: Path
) -> None:
    """With no output path the lines are still journaled, and `export` writes them later."""
    async with OutputSink(journal, None, fmt) as sink:
        for i in (2, 0, 1):
            await sink.add(res(i))
    assert journal.get_meta("output_offset") is None
    out = tmp_path / "later.jsonl"
    assert export(journal, out, adopt=False) == 3
    assert output_keys(out) == ["k00000", "k00001", "k00002"]


@settings(max_examples=25, deadline=None)
@given(
    keys=st.lists(st.integers(0, 40), min_size=1, max_size=80),
    flush_every=st.integers(1, 20),
)
def test_output_matches_journal_property(keys: list[int], flush_every: int) -> None:
    """For any key sequence (with repeats) and batch size, output == journal, one line per key."""

    async def feed(j: Journal, out: str) -> None:
        async with OutputSink(j, out, fmt, flush_every=flush_every) as sink:
            for n, k in enumerate(keys):
                await sink.add(Result(k, f"k{k:05d}", Status.OK, value=n))

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.jsonl")
        with Journal.open(os.path.join(d, "j"), identity={}) as j:
            asyncio.run(feed(j, out))
            assert sorted(output_keys(out)) == sorted({f"k{k:05d}" for k in keys})
            assert_matches_journal(j, out)


# -- exactly once under kill -9 -------------------------------------------------

FEEDER = """
    import asyncio, sys
    import orjson
    from conveyor._journal._journal import Journal
    from conveyor._journal._sink import OutputSink
    from conveyor._base._types import Result, Status

    journal_path, out, n, flush_every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    def fmt(r):
        return orjson.dumps({"key": r.key, "status": r.status.value, "value": r.value})

    async def main():
        with Journal.open(journal_path, identity={"test": "exactly-once"}) as j:
            async with OutputSink(j, out, fmt, flush_every=flush_every,
                                  flush_interval=0.002) as sink:
                for i in range(n):
                    key = f"k{i:05d}"
                    if j.is_terminal(key):
                        continue
                    status = Status.FAILED if i % 7 == 0 else Status.OK
                    await sink.add(Result(i, key, status, value={"i": i, "pad": "x" * (i % 40)}))
                    sys.stdout.write(f"{i}\\n")
                    sys.stdout.flush()
                    if i % 3 == 0:
                        await asyncio.sleep(0)
            print(f"done {sink.duplicates}", flush=True)

    asyncio.run(main())
"""


class Feeder:
    """The feeder subprocess; its stdout lines are read with a deadline."""

    def __init__(self, script: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self._buf = b""

    def read_until(self, n_lines: int, deadline: float) -> str | None:
        """Read `n_lines` lines; return the `done ...` line if the run finished first."""
        assert self.proc.stdout is not None
        seen = 0
        while seen < n_lines:
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not self._sel.select(left):
                    raise TimeoutError("feeder stalled")
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    err = self.proc.stderr.read() if self.proc.stderr else b""
                    raise AssertionError(f"feeder died: {err.decode()}")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            if line.startswith(b"done"):
                return line.decode()
            seen += 1
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._sel.close()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def test_exactly_once_across_kill_9(tmp_path: Path) -> None:
    """Killed with SIGKILL at random moments and resumed, the output holds each key once.

    At least 10 kills land at random points of a feeder that journals through
    the sink (often mid-flush: lines written, commit not yet); each resume
    truncates uncommitted bytes and re-runs only non-terminal keys. In the end
    the file equals the journal's lines and every key appears exactly once.
    """
    n = 20_000
    script = tmp_path / "feeder.py"
    script.write_text(textwrap.dedent(FEEDER))
    jpath, out = str(tmp_path / "run.journal"), str(tmp_path / "out.jsonl")
    rng = random.Random(20240611)
    deadline = time.monotonic() + 60
    kills = 0
    done: str | None = None
    for _attempt in range(30):
        if kills >= 12 or time.monotonic() > deadline:
            break
        feeder = Feeder(script, jpath, out, str(n), str(rng.randint(1, 60)))
        try:
            done = feeder.read_until(rng.randint(1, 400), deadline)
            if done:
                break
            feeder.proc.kill()
            kills += 1
        finally:
            feeder.close()
    assert kills >= 10, f"only {kills} kills before the run finished"
    for _attempt in range(3):
        if done:
            break
        feeder = Feeder(script, jpath, out, str(n), "200")
        try:
            done = feeder.read_until(n + 1, deadline)
        finally:
            feeder.close()
    assert done == "done 0"  # the last run met no key that was already terminal

    keys = output_keys(out)
    assert len(keys) == n
    assert set(keys) == {f"k{i:05d}" for i in range(n)}
    with Journal.open_readonly(jpath) as j:
        assert j.status_counts() == {"ok": n - len(range(0, n, 7)), "failed": len(range(0, n, 7))}
        assert_matches_journal(j, out)


async def test_reset_then_crash_before_rewrite_is_repaired_on_open(
    journal: Journal, tmp_path: Path
) -> None:
    """`retry` resets keys (one commit) and is killed before rewriting the
    output: the next sink open drops the reset keys' old lines, so their new
    results appear once."""
    out = tmp_path / "out.jsonl"
    async with OutputSink(journal, out, fmt, flush_every=5) as sink:
        for i in range(20):
            await sink.add(res(i, Status.FAILED if i % 4 == 0 else Status.OK))
    failed = list(journal.keys_with_status(["failed"]))
    assert journal.reset(failed, mark_stale=True) == 5
    # (kill -9 here: nothing else ran)
    async with OutputSink(journal, out, fmt, flush_every=5) as sink:
        for i in range(0, 20, 4):
            await sink.add(res(i))
    keys = output_keys(out)
    assert sorted(keys) == sorted(f"k{i:05d}" for i in range(20))
    assert_matches_journal(journal, out)
    assert journal.get_meta("output_stale") is None


# -- the crash window and one writer per output (#12) ------------------------


async def test_a_result_is_committed_as_soon_as_the_writer_is_free(
    journal: Journal, tmp_path: Path
) -> None:
    """At a low rate each result is committed as it arrives, not after
    `flush_every` results or `flush_interval` seconds: a kill -9 then re-sends
    no answer that had already arrived (the crash window)."""
    out = tmp_path / "out.jsonl"
    reader = Journal.open_readonly(journal.path)
    try:
        async with OutputSink(journal, out, fmt, flush_every=500, flush_interval=600) as sink:
            for i in range(3):
                await sink.add(res(i))
                deadline = time.monotonic() + 5
                while not reader.is_terminal(f"k{i:05d}") and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                assert reader.is_terminal(f"k{i:05d}"), f"result {i} still uncommitted"
                assert output_keys(out)[-1] == f"k{i:05d}"
    finally:
        reader.close()


async def test_a_second_journal_cannot_write_the_same_output(tmp_path: Path) -> None:
    """Two sinks with different journals on one output: the second is refused
    while the first is open, naming the first's journal and what to do; once
    the first closes, the lock is free (#12.5)."""
    out = tmp_path / "out.jsonl"
    ja = Journal.open(tmp_path / "a.journal", identity={"test": "a"})
    jb = Journal.open(tmp_path / "b.journal", identity={"test": "b"})
    try:
        async with OutputSink(ja, out, fmt) as sink:
            await sink.add(res(1))
            with pytest.raises(OutputMismatch) as info:
                OutputSink(jb, out, fmt)
            msg = str(info.value)
            assert str(tmp_path / "a.journal") in msg and f"pid {os.getpid()}" in msg
            assert "another output path" in msg
        assert output_keys(out) == ["k00001"]
        OutputSink(jb, tmp_path / "other.jsonl", fmt)  # other files are unaffected
    finally:
        ja.close()
        jb.close()


async def test_a_resume_refuses_an_output_another_writer_appended_to(tmp_path: Path) -> None:
    """Journal A wrote the output, journal B (forced over it) wrote after; A's
    resume must not truncate B's lines to A's offset: it refuses, names the
    export that repairs it, and changes nothing (#12.5)."""
    out = tmp_path / "out.jsonl"
    ja = Journal.open(tmp_path / "a.journal", identity={"test": "a"})
    jb = Journal.open(tmp_path / "b.journal", identity={"test": "b"})
    try:
        async with OutputSink(ja, out, fmt) as sink:
            for i in range(3):
                await sink.add(res(i))
        async with OutputSink(jb, out, fmt, overwrite=True) as sink:
            for i in range(10, 15):
                await sink.add(res(i))
        before = out.read_bytes()
        with pytest.raises(OutputMismatch) as info:
            OutputSink(ja, out, fmt)
        assert "another run or program wrote to it" in str(info.value)
        assert f"conveyor export {tmp_path / 'a.journal'} {out}" in str(info.value)
        assert out.read_bytes() == before
        export(ja, out)
        async with OutputSink(ja, out, fmt) as sink:  # repaired: the resume goes on
            await sink.add(res(3))
        assert output_keys(out) == ["k00000", "k00001", "k00002", "k00003"]
    finally:
        ja.close()
        jb.close()


async def test_a_foreign_append_during_the_run_stops_the_writes(
    journal: Journal, tmp_path: Path
) -> None:
    """Bytes another program appends while the sink runs are noticed at the
    next flush: the sink stops with an error naming the file and the repair,
    instead of committing offsets that no longer describe the file (#12.5)."""
    out = tmp_path / "out.jsonl"
    sink = OutputSink(journal, out, fmt)
    await sink.add(res(1))
    await sink.flush()
    put_bytes(out, b'{"key": "intruder"}\n')
    await sink.add(res(2))
    with pytest.raises(OutputMismatch, match="changed under this run"):
        await sink.flush()
    with contextlib.suppress(OutputMismatch):
        await sink.close()
    assert not journal.is_terminal("k00002")


async def test_a_kill_between_the_first_write_and_its_commit_leaves_a_resumable_output(
    tmp_path: Path,
) -> None:
    """The first flush wrote its lines, then the process died before the commit:
    the journal already owns the output, so the resume drops those bytes and
    goes on instead of refusing the file as someone else's."""
    out = tmp_path / "out.jsonl"
    journal = Journal.open(tmp_path / "j.db", identity={"kind": "test"})
    sink = OutputSink(journal, out, lambda r: b"line\n")
    with out.open("ab") as f:  # the write of a flush whose commit never happened
        f.write(b"line\nline\n")
    # The process is gone: nothing else of it runs (its writer thread never started).
    sink._unlock()  # and the OS released its lock on the output with it
    journal.close()
    journal = Journal.open(tmp_path / "j.db", identity={"kind": "test"})
    try:
        again = OutputSink(journal, out, lambda r: b"line\n")
        assert out.stat().st_size == 0
        await again.close()
    finally:
        journal.close()


async def test_a_cancelled_close_leaves_no_writer_behind_the_closed_output(
    journal: Journal, tmp_path: Path
) -> None:
    """A close cancelled while the writer commits (a second Ctrl+C, an aborted
    run) returns only once the writer thread has ended: after it the output
    file descriptor is closed (and may be reused by anything), so a writer
    still running would write or truncate through it. What it had not taken
    is committed before it ends, or not at all: the journal and the output agree
    either way (a resume re-runs what is missing)."""
    import sqlite3
    import threading

    out = tmp_path / "out.jsonl"
    sink = OutputSink(journal, out, fmt, flush_every=1000)
    other = sqlite3.connect(journal.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the writer's commit waits for this lock
    released = threading.Event()

    def release() -> None:  # once close has given up waiting (its loop may be blocked)
        deadline = time.monotonic() + 10
        while not sink._closed and time.monotonic() < deadline:
            time.sleep(0.005)
        other.rollback()
        released.set()

    try:
        await sink.add(res(0))
        deadline = time.monotonic() + 10
        while file_size(out) == 0 and time.monotonic() < deadline:  # written, now committing
            await asyncio.sleep(0.005)
        assert file_size(out) > 0
        await sink.add(res(1))  # waits behind the commit
        closing = asyncio.get_running_loop().create_task(sink.close())
        await asyncio.sleep(0)
        threading.Thread(target=release, daemon=True).start()
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        assert sink._thread is not None
        assert not sink._thread.is_alive()
    finally:
        released.wait(10)
        other.close()
    assert sink._error is None
    assert_matches_journal(journal, out)
    assert output_keys(out) in (["k00000"], ["k00000", "k00001"])
