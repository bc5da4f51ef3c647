"""Exactly-once output: results go to the output file and the journal together.

Group commit, on one writer thread: it takes every result handed to it so
far, commits them, and takes what arrived meanwhile, with no hop through the
event loop between commits; so at a low rate each result is committed as it
arrives and at a high rate in groups of what arrived during one commit (a
group is at most one commit old). A `kill -9` loses what was in flight plus
those few milliseconds of answers.
A flush appends the lines to the
output file (one `write`, handed to the OS) and then, in one SQLite
transaction, upserts their rows and the new committed output offset. A crash
between the two leaves bytes past the committed offset; they belong to items
the journal does not hold as terminal, so the next open truncates them and
those items run again. The output therefore holds each key exactly once.

One writer per output file: the sink holds an OS lock on `<output>.lock`
(holding the writer's pid and journal) for as long as it is open, so two
runs with different journals cannot both append to one file; and the
journal keeps the last bytes it committed (`output_tail`), so a file that
another writer appended to or rewrote is refused instead of truncated.

Meta keys used here: `output_path`, `output_offset`, `output_tail`, `output_seq`,
`export_tmp` while an `export` is being adopted, and `output_stale` after a
`reset` until the output is rewritten without the reset keys' old lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import stat
import threading
from typing import TYPE_CHECKING, Any

from .._base._exceptions import ConfigError, OutputMismatch
from ._errors import FileProblem, classify
from ._journal import Journal, JournalError, translate_error

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from .._base._types import Result

__all__ = ["OutputMismatch", "OutputSink", "export", "finish_reset"]

log = logging.getLogger("conveyor.journal")

_DUPLICATES_SHOWN = 5


class OutputSink:
    """Feeds results to the journal and the output file, each key exactly once.

    `format_line(result)` returns the output line (a trailing newline is
    added if missing; it is stored in the journal even without an output
    file, so `export` can write it later). The SQLite and file work runs on
    one dedicated thread, in order, so the event loop keeps running; the
    writer commits as soon as a result arrives and it is free (groups grow
    with the rate); at most `max_buffered` results wait in memory (default
    `2 * flush_every`) before `add` waits for the writer; `flush_interval` is
    how often an idle writer looks again unwoken (a safety net). Results
    for keys that already have a terminal result are dropped with a warning
    and counted in `duplicates`: the planner must deduplicate keys, or
    `reset` them to run them again. `store_values=False` keeps results'
    values out of the journal (when the output line holds all of it).
    """

    def __init__(
        self,
        journal: Journal,
        output_path: str | os.PathLike[str] | None,
        format_line: Callable[[Result[Any]], bytes],
        *,
        flush_every: int = 500,
        flush_interval: float = 0.2,
        max_buffered: int | None = None,
        overwrite: bool = False,
        store_values: bool = True,
    ) -> None:
        if flush_every < 1:
            raise ConfigError("flush_every", flush_every, "an integer >= 1")
        if not flush_interval > 0:
            raise ConfigError("flush_interval", flush_interval, "a number of seconds > 0")
        self._max = max(max_buffered or 2 * flush_every, flush_every)
        if journal.readonly:
            raise JournalError(
                f"journal {journal.path} was opened read-only: an output sink needs Journal.open",
                path=journal.path,
            )
        self._journal = journal
        self._format = format_line
        self._store_values = store_values
        self._every = flush_every
        self._interval = flush_interval
        # Shared with the writer thread, under `_cv`: results not yet taken,
        # how many were added and handled (committed or dropped as
        # duplicates), the first failure, and the flushes waiting.
        self._cv = threading.Condition(threading.Lock())
        self._buffer: list[Result[Any]] = []
        self._added = 0
        self._done = 0
        self._idle = False
        self._stopping = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._error: BaseException | None = None
        self._closing = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.written = 0
        self.duplicates = 0
        self._seq = int(journal.get_meta("output_seq") or 0)
        self._path: str | None = None
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._offset = 0
        self._new_path = False
        if output_path is not None:
            self._open_output(os.path.abspath(os.fspath(output_path)), overwrite)

    @property
    def offset(self) -> int:
        """Bytes of the output file committed in the journal."""
        return self._offset

    def _open_output(self, path: str, overwrite: bool) -> None:
        self._lock_fd = _lock_output(path, self._journal.path)
        try:
            self._open_locked(path, overwrite)
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def _open_locked(self, path: str, overwrite: bool) -> None:
        journal = self._journal
        _finish_export(journal)
        finish_reset(journal)
        recorded = journal.get_meta("output_path")
        offset = int(journal.get_meta("output_offset") or 0)
        if recorded is not None and recorded != path and offset > 0:
            raise OutputMismatch(
                f"this journal's output went to {recorded}, not {path}: pass the same output "
                f"path, or first rewrite the results to {path} with `conveyor export "
                f"{journal.path} {path}` and then resume",
                path=path,
            )
        with _output_guard(path):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            size = st.st_size if st is not None else 0
            regular = st is None or stat.S_ISREG(st.st_mode)
            if regular and size < offset:
                raise OutputMismatch(
                    f"output {path} has {size} bytes but the journal committed {offset}: it "
                    "was truncated or edited. Rewrite it from the journal with `conveyor "
                    "export JOURNAL OUTPUT`, then resume",
                    path=path,
                )
            if regular and size > 0 and recorded is None and not overwrite:
                # This journal never wrote here: the file is someone else's
                # (or a run whose journal is gone). Never truncate it silently.
                raise OutputMismatch(
                    f"output {path} already exists ({size} bytes) and this journal did not "
                    "write it: choose another output path, move the file away, pass the "
                    "journal that wrote it (`journal=`), or overwrite it with `force=True`",
                    path=path,
                )
            if regular and offset > 0:
                _check_tail(path, offset, journal)
            if regular and size > offset:
                # Lines written after the last commit: their items are not
                # terminal in the journal and will run again.
                log.info("output %s: dropping %d uncommitted bytes", path, size - offset)
                os.truncate(path, offset)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._path = path
        self._offset = offset if regular else 0
        if recorded != path:
            # Claimed before the first line is written: a kill -9 between that write and
            # its commit must leave a file this journal owns (its bytes past the committed
            # offset are dropped on resume), not one it would refuse as someone else's.
            journal.update_meta({"output_path": path, "output_offset": str(self._offset)})
        self._new_path = False

    # -- async API ---------------------------------------------------------

    async def __aenter__(self) -> OutputSink:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._writer, name="conveyor-journal", daemon=True
            )
            self._thread.start()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise JournalError("the output sink is closed", path=self._journal.path)
        if self._thread is not None and not self._thread.is_alive():
            raise JournalError(
                "the journal writer stopped unexpectedly; rerun to resume",
                path=self._journal.path,
            )

    async def add(self, result: Result[Any]) -> None:
        """Hand one result to the writer; waits only when `max_buffered` results
        are not committed yet."""
        self._check()
        self._start()
        with self._cv:
            self._buffer.append(result)
            self._added += 1
            if self._idle:
                self._cv.notify()
            behind = self._added - self._done
        if behind >= self._max:
            await self._committed(self._added)

    async def add_many(self, results: Sequence[Result[Any]]) -> None:
        """`add` for each of `results` in turn, with one lock and one wake-up of the
        writer per group instead of per result: it waits, as `add` does, once
        `max_buffered` results are not committed yet, so no more are held."""
        i, n = 0, len(results)
        while i < n:
            self._check()
            self._start()
            with self._cv:
                room = max(1, self._max - (self._added - self._done))
                chunk = results[i : i + room]
                self._buffer.extend(chunk)
                self._added += len(chunk)
                if self._idle:
                    self._cv.notify()
                behind = self._added - self._done
            i += len(chunk)
            if behind >= self._max:
                await self._committed(self._added)

    async def flush(self) -> None:
        """Write and commit everything added so far."""
        self._check()
        self._start()
        await self._committed(self._added)

    async def close(self) -> None:
        """Commit what is left, stop the writer thread and close the output file;
        raise a stored failure."""
        if self._closed:
            if self._error is not None:
                raise self._error
            return
        self._closing = True
        try:
            if self._thread is not None and self._error is None:
                await self._committed(self._added)
        finally:
            self._closed = True
            if self._thread is not None:
                # Even when this close is cancelled: the writer commits what it
                # holds and ends before the file is closed under it.
                with self._cv:
                    self._stopping = True
                    self._cv.notify()
                self._thread.join()
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
            self._unlock()
        if self._error is not None:
            raise self._error

    async def _committed(self, n: int) -> None:
        """Until the writer has handled the first `n` results added (or failed)."""
        assert self._loop is not None
        with self._cv:
            if self._done >= n or self._error is not None:
                waiter = None
            else:
                waiter = self._loop.create_future()
                self._waiters.append((n, waiter))
        if waiter is not None:
            await waiter
        if self._error is not None:
            raise self._error

    def _release_waiters(self) -> None:
        # On the loop's thread: wake each wait the writer has caught up with.
        ready: list[asyncio.Future[None]] = []
        with self._cv:
            keep = []
            for n, f in self._waiters:
                if self._done >= n or self._error is not None:
                    ready.append(f)
                elif not f.done():  # (a cancelled wait is dropped)
                    keep.append((n, f))
            self._waiters = keep
        for f in ready:
            if not f.done():
                f.set_result(None)

    # -- writer thread -----------------------------------------------------

    def _writer(self) -> None:
        """Commit what has arrived, again and again: each result as it comes at a
        low rate; at a high rate, in groups of what arrived during the previous
        commit (a group is at most one commit old), so a `kill -9` re-sends what
        was in flight plus about one commit's worth of answers."""
        loop = self._loop
        assert loop is not None
        while True:
            with self._cv:
                while not self._buffer and not self._stopping:
                    self._idle = True
                    self._cv.wait(self._interval)
                self._idle = False
                if not self._buffer:
                    return  # stopping, and nothing left
                batch, self._buffer = self._buffer, []
            try:
                self._write_batch(batch)
            except Exception as exc:
                with self._cv:
                    self._error = exc
                self._notify(loop)
                return  # surfaces on the next add, flush or close
            with self._cv:
                self._done += len(batch)
                waiting = bool(self._waiters)
            if waiting:
                self._notify(loop)

    def _notify(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(self._release_waiters)

    def _write_batch(self, batch: list[Result[Any]]) -> None:
        done = self._journal.terminal_among([r.key for r in batch])
        entries: list[tuple[Result[Any], bytes | None, int | None]] = []
        chunks: list[bytes] = []
        seq = self._seq
        for r in batch:
            if r.key in done:
                self._duplicate(r.key)
                continue
            done.add(r.key)
            try:
                line = self._format(r)
            except Exception as exc:
                exc.add_note(f"while formatting the output line for key {r.key!r}")
                raise
            if not line.endswith(b"\n"):
                line += b"\n"
            seq += 1
            entries.append((r, line, seq))
            chunks.append(line)
        if not entries:
            return
        meta = {"output_seq": str(seq)}
        new_offset = self._offset
        if self._fd is not None and self._path is not None:
            data = b"".join(chunks)
            new_offset += len(data)
            meta["output_offset"] = str(new_offset)
            meta["output_tail"] = _tail_of(data)
            if self._new_path:
                meta["output_path"] = self._path
            try:
                with _output_guard(self._path):
                    self._check_alone()
                    _write_all(self._fd, data)
            except BaseException:
                self._rewind()
                raise
        try:
            self._journal.record(entries, meta=meta, values=self._store_values)
        except BaseException:
            self._rewind()
            raise
        self._offset, self._seq, self._new_path = new_offset, seq, False
        self.written += len(entries)

    def _check_alone(self) -> None:
        # The lock keeps other conveyor runs out; this catches any other
        # writer (an editor, a tool, a run on another host over NFS).
        assert self._fd is not None
        assert self._path is not None
        st = os.fstat(self._fd)
        if stat.S_ISREG(st.st_mode) and st.st_size != self._offset:
            raise OutputMismatch(
                f"output {self._path} changed under this run: it has {st.st_size} bytes, this "
                f"run wrote {self._offset}. Another program wrote to it (or truncated it); "
                f"nothing more is written. Stop the other writer, then rewrite the file from "
                f"the journal with `conveyor export {self._journal.path} {self._path}` and "
                "resume",
                path=self._path,
            )

    def _rewind(self) -> None:
        # Best effort: the next open truncates to the committed offset anyway.
        if self._path is not None and self._fd is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.fstat(self._fd).st_mode):
                    os.ftruncate(self._fd, self._offset)

    def _duplicate(self, key: str) -> None:
        self.duplicates += 1
        if self.duplicates <= _DUPLICATES_SHOWN:
            log.warning(
                "key %r already has a terminal result in %s: this result was not written "
                "(deduplicate input keys, or reset the key to run it again)",
                key,
                self._journal.path,
            )


_TAIL = 64  # bytes of the output kept in the journal to recognise its end


def _tail_of(data: bytes) -> str:
    return data[-_TAIL:].hex()


def _check_tail(path: str, offset: int, journal: Journal) -> None:
    """The bytes before the committed offset must be the ones this journal wrote
    last: else another writer (another journal) appended or rewrote the file,
    and truncating it to this journal's offset would lose its lines."""
    tail = journal.get_meta("output_tail")
    if tail is None:
        return  # written by an older conveyor
    want = bytes.fromhex(tail)
    with open(path, "rb") as f:
        f.seek(offset - len(want))
        got = f.read(len(want))
    if got != want:
        raise OutputMismatch(
            f"output {path} does not end where journal {journal.path} left it (at byte "
            f"{offset}): another run or program wrote to it. Nothing was changed. Rewrite it "
            f"from this journal with `conveyor export {journal.path} {path}` and resume, or "
            "choose another output path",
            path=path,
        )


def _lock_output(path: str, journal_path: str) -> int | None:
    """Hold `<output>.lock` (pid and journal inside) while a sink writes `path`;
    the kernel drops it when the holder dies. Non-regular outputs (a pipe,
    /dev/null) are not locked."""
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
    lock = path + ".lock"
    with _output_guard(lock):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").split("\n")
        os.close(fd)
        pid = holder[0].strip() or "unknown"
        other = holder[1].strip() if len(holder) > 1 and holder[1].strip() else "unknown"
        raise OutputMismatch(
            f"output {path} is being written by another conveyor run (pid {pid}, journal "
            f"{other}); two runs must not write one file. Wait for that run to finish (or "
            f"stop it) and run this again, resume that run with its own journal, or choose "
            "another output path",
            path=path,
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{journal_path}\n".encode(), 0)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@contextlib.contextmanager
def _output_guard(path: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        err = translate_error(exc, path)
        if classify(exc) is not FileProblem.FULL:
            err = OutputMismatch(
                f"cannot write output {path} ({exc.strerror or exc}): check the path and "
                "permissions, or choose another output file",
                path=path,
            )
        raise err from exc


def _finish_export(journal: Journal) -> None:
    """Complete an export whose journal commit happened but whose rename did not."""
    tmp = journal.get_meta("export_tmp")
    if tmp is None:
        return
    target = journal.get_meta("output_path")
    if target is not None and os.path.exists(tmp):
        with _output_guard(target):
            os.replace(tmp, target)
    journal.update_meta({"export_tmp": None})


def finish_reset(journal: Journal) -> None:
    """After a `reset`, drop the reset keys' old lines from the output (crash-safe:
    the mark is cleared only once the rewritten file is in place)."""
    if journal.get_meta("output_stale") is None:
        return
    target = journal.get_meta("output_path")
    if target is not None and os.path.exists(target):
        log.info("output %s: rewriting it without the lines of items being re-run", target)
        export(journal, target)
    else:
        journal.update_meta({"output_stale": None})


def export(journal: Journal, path: str | os.PathLike[str], *, adopt: bool = True) -> int:
    """Rewrite `path` from the journal: each terminal key's line once, in input order.

    Written to a temporary file and renamed over `path`, so readers never see
    half a file. With `adopt` (and a writable journal) `path` becomes the
    journal's output: its committed offset and line numbers are updated, so a
    later resume appends to it. Run it when no sink is writing. Returns the
    number of lines written.
    """
    target = os.path.abspath(os.fspath(path))
    tmp = f"{target}.export-{os.getpid()}.tmp"
    n = 0
    committed = False
    with _output_guard(target):
        try:
            tail = b""
            with open(tmp, "wb") as f:
                for _key, line in journal.iter_output_lines("index"):
                    f.write(line)
                    tail = (tail + line)[-_TAIL:]
                    n += 1
                f.flush()
                os.fsync(f.fileno())
            size = os.stat(tmp).st_size
            if adopt and not journal.readonly:
                journal.renumber_output(
                    {
                        "output_path": target,
                        "output_offset": str(size),
                        "output_seq": str(n),
                        "output_tail": tail.hex(),
                        "export_tmp": tmp,
                    }
                )
                committed = True
                os.replace(tmp, target)
                journal.update_meta({"export_tmp": None, "output_stale": None})
            else:
                os.replace(tmp, target)
        except BaseException:
            if not committed:  # else the next sink open finishes the rename
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
    return n
