"""Jobs die with their runner: a watchdog process that outlives a `kill -9`.

A job runs in its own session (so Ctrl+C at the terminal reaches conveyor,
not the jobs, and a timeout can kill its whole group). Nothing in the
kernel then ends the job when conveyor itself is killed with SIGKILL: the
jobs would live on as orphans, and a rerun would start them again while they
still run. So a run that starts jobs first starts this guard, a separate
process (stdlib only, run as a script, in its own session so terminal
signals pass it by) that:

- marks every job with an environment variable (`CONVEYOR_RUN_GUARD`, a
  token of this run) that its descendants inherit, wherever they go (their
  own session, a double fork): a cgroup-like mark without privileges;
- marks every job before it execs too: the runner names the thread that
  spawns it (`/proc/<tid>/comm`, a name of this run) for the length of the
  spawn, and a forked child keeps that name until its `exec`. So a child the
  runner forked just before its death, that has not exec'd yet (and carries
  no environment mark yet), is found by name and killed before it runs;
- is told each job's pid when it starts (`+pid`) and ends (`-pid`) over a
  pipe, and keeps a snapshot of each job's descendants (for those that
  clear their environment);
- on end of file without `bye` (its runner died), sends SIGTERM, then after
  a short grace SIGKILL, to every marked process and every job still
  listed: its group, its descendants and theirs; then exits;
- holds an inherited copy of the runner's journal lock while it lives, so a
  rerun cannot take the journal (and start the same jobs) until the old
  jobs are gone.

`descendants(pid)` is also used by the runner itself to kill a timed-out
job's whole tree, `setsid` grandchildren included.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "MARK",
    "Guard",
    "current_guard",
    "descendants",
    "any_alive",
    "kill_tree",
    "marked",
    "same_process",
]

_SNAPSHOT_EVERY = 0.5  # seconds between snapshots of the jobs' trees
_GRACE = 1.0  # seconds between SIGTERM and SIGKILL when the runner died
_RESCAN_EVERY = 0.05  # seconds between scans for marked jobs after the runner died
_RESCAN_MAX = 2.0  # at most this long scanning for them
_COMM = "/proc/self/task/{}/comm"  # a thread's name: 15 bytes, inherited by fork, reset by exec


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of `pid` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return int(fields[1]), fields[0].decode(), int(fields[19])


def _ppids() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for name in entries:
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[1] not in ("Z", "X"):
                children.setdefault(st[0], []).append(int(name))
    return children


def descendants(pid: int) -> set[tuple[int, int]]:
    """Every live process below `pid`, as (pid, start time) (empty without /proc)."""
    children = _ppids()
    found: set[tuple[int, int]] = set()
    todo = list(children.get(pid, ()))
    while todo:
        p = todo.pop()
        st = _stat(p)
        if st is None or (p, st[2]) in found:
            continue
        found.add((p, st[2]))
        todo.extend(children.get(p, ()))
    return found


def same_process(pid: int, started: int) -> bool:
    # A pid seen earlier is signalled only while it is still the same process.
    st = _stat(pid)
    return st is not None and st[2] == started and st[1] not in ("Z", "X")


def kill_tree(leader: int, tree: set[tuple[int, int]], sig: int) -> None:
    """Send `sig` to the group of `leader` and to every process of `tree` and its group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, sig)
    own = os.getpgrp()
    for pid, started in tree:
        if not same_process(pid, started):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            pgid = os.getpgid(pid)
            if pgid not in (own, leader):
                os.killpg(pgid, sig)


# --- the guard process ---------------------------------------------------------------------


MARK = "CONVEYOR_RUN_GUARD"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def marked(token: str) -> set[tuple[int, int]]:
    """Live processes whose environment carries this run's mark."""
    return _scan(token, "", 0)[1]


def _scan(token: str, name: str, skip: int) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """(the runner's forked children that have not exec'd yet, found by `name`;
    live processes whose environment carries this run's mark), but never `skip`."""
    needle = f"{MARK}={token}".encode()
    comm = name.encode() + b"\n"
    unexeced: set[tuple[int, int]] = set()
    found: set[tuple[int, int]] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return unexeced, found
    for entry in entries:
        if not entry.isdigit() or int(entry) == skip:
            continue
        # The name first: exec gives the new name before the new environment,
        # so a child seen renamed here shows its mark just below (or, in the few
        # instructions between the two, at the next scan).
        into = None
        if name and _read(f"/proc/{entry}/comm") == comm:
            into = unexeced
        else:
            env = _read(f"/proc/{entry}/environ")
            if env is not None and needle in env.split(b"\0"):
                into = found
        if into is not None:
            st = _stat(int(entry))
            if st is not None and st[1] not in ("Z", "X"):
                into.add((int(entry), st[2]))
    return unexeced, found


def _main() -> None:  # pragma: no cover - runs in the guard process (tested end to end)
    token = sys.argv[1] if len(sys.argv) > 1 else ""
    name = sys.argv[2] if len(sys.argv) > 2 else ""
    runner = os.getppid()  # named like its children while it spawns one: not a job
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    jobs: dict[int, set[tuple[int, int]]] = {}
    pending = b""
    fd = sys.stdin.fileno()
    last = time.monotonic()
    while True:
        ready, _, _ = select.select([fd], [], [], _SNAPSHOT_EVERY)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line == b"bye":
                    return  # the runner ended normally: every job was reaped
                if line[:1] == b"+":
                    jobs[int(line[1:])] = set()
                elif line[:1] == b"-":
                    jobs.pop(int(line[1:]), None)
        if jobs and time.monotonic() - last >= _SNAPSHOT_EVERY:
            last = time.monotonic()
            for leader, seen in jobs.items():
                seen |= descendants(leader)
    trees = {leader: seen | descendants(leader) for leader, seen in jobs.items()}
    # Children not exec'd yet: SIGKILLed by pid alone. One killed before its
    # setsid is still in the runner's group, which holds the runner's caller
    # too (a shell pipeline, a test runner): never signal that group.
    doomed: set[tuple[int, int]] = set()
    if not trees and not token:
        return
    if token:  # jobs not registered yet (killed right after the fork) are marked too
        _add_marked(trees, doomed, token, name, runner)
    for leader, tree in trees.items():
        kill_tree(leader, tree, signal.SIGTERM)
    # A job forked just before the runner died execs (and shows the mark) a
    # moment later: scan again until two scans in a row find nobody new, so
    # the journal lock is not let go while such a job still starts.
    quiet, rescan_until = 0, time.monotonic() + _RESCAN_MAX
    while token and quiet < 2 and time.monotonic() < rescan_until:
        time.sleep(_RESCAN_EVERY)
        caught = len(doomed)
        late = _add_marked(trees, doomed, token, name, runner)
        quiet = 0 if late or len(doomed) > caught else quiet + 1
        for pid in late:
            kill_tree(pid, trees[pid], signal.SIGTERM)
    if not trees and not doomed:
        return
    deadline = time.monotonic() + _GRACE
    while time.monotonic() < deadline and _any_left(trees, doomed):
        time.sleep(0.02)
    for leader, tree in trees.items():
        kill_tree(leader, tree, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: the lock ends with the guard only once
    # the jobs are gone (and their own locks and files are closed).
    deadline = time.monotonic() + _GRACE
    while time.monotonic() < deadline and _any_left(trees, doomed):
        time.sleep(0.02)


def _add_marked(
    trees: dict[int, set[tuple[int, int]]],
    doomed: set[tuple[int, int]],
    token: str,
    name: str,
    runner: int,
) -> list[int]:
    """Add the marked processes not in `trees` yet; return their pids. A child
    not exec'd yet has run nothing of its job: SIGKILL at once, by pid alone,
    and into `doomed` (a SIGTERM would only reach the runner's handler, copied
    into it by the fork)."""
    unexeced, found = _scan(token, name, runner)
    for pid, _ in unexeced - doomed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    doomed |= unexeced
    new: list[int] = []
    for pid, started in found:
        if pid in trees:
            continue
        trees[pid] = {(pid, started)} | descendants(pid)
        new.append(pid)
    return new


def _any_left(trees: dict[int, set[tuple[int, int]]], doomed: set[tuple[int, int]]) -> bool:
    return any(same_process(p, s) for p, s in doomed) or any(
        _alive_group(leader) or any(same_process(p, s) for p, s in tree)
        for leader, tree in trees.items()
    )


def any_alive(tree: set[tuple[int, int]]) -> bool:
    return any(same_process(pid, started) for pid, started in tree)


def _alive_group(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs. Zombies are past: they hold
    the group id but no files or locks, and an orphan's wait for its reaper
    (pid 1) would hold the journal for the whole grace."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        raw = _read(f"/proc/{entry}/stat") if entry.isdigit() else None
        if raw is None:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


# --- the runner's side ---------------------------------------------------------------------

_current: contextvars.ContextVar[Guard | None] = contextvars.ContextVar(
    "conveyor_guard", default=None
)
# Threads named by `Guard.spawning`: /proc path -> (spawns under way, the name to give back).
_naming: dict[str, tuple[int, bytes]] = {}


def current_guard() -> Guard | None:
    """The guard of the run this task belongs to, if it started one."""
    return _current.get()


class Guard:
    """The runner's handle on its guard process (see the module docstring).

    `with Guard(hold_fd=lock_fd):` starts the guard and makes it the current
    one for the tasks started inside; a job is spawned inside
    `with guard.spawning():` and then reported with `add(pid)`/`remove(pid)`.
    Leaving the block says `bye` and waits for the guard to exit. Where the
    guard cannot start (no /proc, no fork), jobs run unguarded, as before.
    """

    def __init__(self, *, hold_fd: int | None = None) -> None:
        self._hold = hold_fd
        self.token = f"{os.getpid()}-{secrets.token_hex(8)}"
        self.name = f"cvy{secrets.token_hex(6)}"  # 15 bytes: a whole thread name
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._token: contextvars.Token[Guard | None] | None = None

    def __enter__(self) -> Guard:
        if os.path.isdir("/proc"):
            with contextlib.suppress(OSError):
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", os.path.abspath(__file__), self.token, self.name],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    pass_fds=() if self._hold is None else (self._hold,),
                    start_new_session=True,
                    close_fds=True,
                )
        self._token = _current.set(self)
        return self

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        with self._lock, contextlib.suppress(OSError, ValueError):
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Name the calling thread after this run while a job is forked in it.

        The child keeps the name until it execs: a child forked just before a
        `kill -9` of this process, not exec'd yet, is found by it (see the
        module docstring). Spawns awaited at once on one thread nest; the name
        is given back when the last one is done."""
        if self._proc is None:
            yield
            return
        path = _COMM.format(threading.get_native_id())
        nested = _naming.get(path)
        original = nested[1] if nested else _read(path)
        if original is None:
            yield  # no /proc/<tid>/comm: guarded by the environment mark alone
            return
        _naming[path] = ((nested[0] if nested else 0) + 1, original)
        try:
            with contextlib.suppress(OSError), open(path, "wb") as f:
                f.write(self.name.encode())
            yield
        finally:
            depth, _ = _naming[path]
            if depth > 1:
                _naming[path] = (depth - 1, original)
            else:
                del _naming[path]
                with contextlib.suppress(OSError), open(path, "wb") as f:
                    f.write(original.rstrip(b"\n"))

    def add(self, pid: int) -> None:
        self._send(f"+{pid}")

    def remove(self, pid: int) -> None:
        self._send(f"-{pid}")

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._send_to(proc, b"bye\n")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def _send_to(self, proc: subprocess.Popen[bytes], data: bytes) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.write(data)
            proc.stdin.close()


if __name__ == "__main__":  # pragma: no cover
    _main()
