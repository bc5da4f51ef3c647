"""Start one process in its own process group, wait for it, kill the group when told.

Output goes straight to files the caller opened, never through pipes held by
this process, so a job writing gigabytes neither blocks nor fills memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ._guard import MARK, any_alive, current_guard, descendants, kill_tree

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

__all__ = ["Exit", "SpawnError", "run_process"]

_POLL = 0.02


class SpawnError(Exception):
    """The program could not be started (internal; mapped to CommandNotFound)."""

    def __init__(self, exit_code: int, reason: str) -> None:
        super().__init__(reason)
        self.exit_code = exit_code
        self.reason = reason


@dataclass(slots=True)
class Exit:
    returncode: int
    pid: int
    started_at: float
    duration: float
    timed_out: bool


@contextlib.contextmanager
def _stdin_file(data: bytes | None) -> Iterator[IO[bytes] | int]:
    # stdin comes from an anonymous temp file, not a pipe: nothing to feed
    # while waiting, nothing left open when the wait is cancelled.
    if data is None:
        yield asyncio.subprocess.DEVNULL
        return
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(0)
        yield f


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies count as dead)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    # Orphans are reparented to a reaper that may never collect them; a zombie
    # holds its group id but cannot run, so look past them.
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for the group leader after SIGKILL; a further cancel cannot skip the wait."""
    cancelled = False
    while True:
        try:
            await proc.wait()
            break
        except asyncio.CancelledError:
            cancelled = True
            _killpg(proc.pid, signal.SIGKILL)
    if cancelled:
        raise asyncio.CancelledError


async def terminate_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the whole group, give it `grace` seconds, then SIGKILL what is left.

    Returns only once the leader is reaped. Cancelled while waiting, it kills
    at once, reaps, and re-raises the cancellation.
    """
    pgid = proc.pid
    # The whole tree, not just the group: a `setsid` grandchild left the group.
    tree = descendants(pgid) if proc.returncode is None else set()
    kill_tree(pgid, tree, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, grace)
    try:
        # The leader and its children got SIGTERM together; wait for all of them.
        while (remaining := deadline - time.monotonic()) > 0:
            if proc.returncode is None:
                try:
                    await asyncio.wait_for(proc.wait(), remaining)
                except TimeoutError:
                    break
            if not _group_alive(pgid) and not any_alive(tree):
                break
            await asyncio.sleep(min(_POLL, remaining))
    except asyncio.CancelledError:
        kill_tree(pgid, tree, signal.SIGKILL)
        await _reap(proc)
        raise
    if proc.returncode is None:
        tree |= descendants(pgid)
    kill_tree(pgid, tree, signal.SIGKILL)
    await _reap(proc)


def _spawn_error(exc: OSError) -> SpawnError:
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return SpawnError(127, "no such file or command")
    if isinstance(exc, PermissionError):
        return SpawnError(126, "permission denied (not executable)")
    if exc.errno == errno.ENOEXEC:
        return SpawnError(126, "not an executable format (a script without a #! line?)")
    return SpawnError(126, f"the system refused to start it: {exc.strerror or exc}")


async def run_process(
    argv: Sequence[str] | str,
    *,
    shell: bool,
    cwd: Path,
    env: Mapping[str, str],
    stdin: bytes | None,
    stdout_path: Path,
    stderr_path: Path,
    limit: float | None,
    kill_grace: float,
) -> Exit:
    """Run to completion, or for `limit` seconds, then kill the group; see `terminate_group`."""
    guard = current_guard()
    if guard is not None:
        env = {**env, MARK: guard.token}  # inherited by the job's descendants
    with (
        stdout_path.open("wb") as out,
        stderr_path.open("wb") as err,
        _stdin_file(stdin) as inp,
        # Found by the guard even if this process dies before the child execs.
        guard.spawning() if guard is not None else contextlib.nullcontext(),
    ):
        started_at = time.time()
        t0 = time.monotonic()
        try:
            if shell:
                assert isinstance(argv, str)
                proc = await asyncio.create_subprocess_shell(
                    argv,
                    stdin=inp,
                    stdout=out,
                    stderr=err,
                    cwd=cwd,
                    env=dict(env),
                    start_new_session=True,
                )
            else:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=inp,
                    stdout=out,
                    stderr=err,
                    cwd=cwd,
                    env=dict(env),
                    start_new_session=True,
                )
        except OSError as exc:
            raise _spawn_error(exc) from exc
    # The child holds its own copies of the descriptors; ours are closed above.
    if guard is not None:
        guard.add(proc.pid)  # killed by the guard if this process dies first
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), limit)
    except TimeoutError:
        timed_out = True
        await terminate_group(proc, kill_grace)
    except asyncio.CancelledError:
        await terminate_group(proc, kill_grace)
        raise
    finally:
        if guard is not None and proc.returncode is not None:
            guard.remove(proc.pid)
    duration = time.monotonic() - t0
    assert proc.returncode is not None
    return Exit(proc.returncode, proc.pid, started_at, duration, timed_out)
