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


def marked(token: str) -> set[tuple[int, int]]:
    """Live processes whose environment carries this run's mark."""
    needle = f"{MARK}={token}".encode()
    found: set[tuple[int, int]] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            st = _stat(int(name))
            if st is not None and st[1] not in ("Z", "X"):
                found.add((int(name), st[2]))
    return found


def _main() -> None:  # pragma: no cover - runs in the guard process (tested end to end)
    token = sys.argv[1] if len(sys.argv) > 1 else ""
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
    if token:  # jobs not registered yet (killed right after the fork) are marked too
        for pid, started in marked(token):
            trees.setdefault(pid, set()).add((pid, started))
    if not trees and not token:
        return
    for leader, tree in trees.items():
        kill_tree(leader, tree, signal.SIGTERM)
    # A job forked just before the runner died execs (and shows the mark) a
    # moment later: scan again until two scans in a row find nobody new, so
    # the journal lock is not let go while such a job still starts.
    quiet, rescan_until = 0, time.monotonic() + _RESCAN_MAX
    while token and quiet < 2 and time.monotonic() < rescan_until:
        time.sleep(_RESCAN_EVERY)
        late = {(p, s) for p, s in marked(token) if p not in trees}
        quiet = 0 if late else quiet + 1
        for pid, started in late:
            trees[pid] = {(pid, started)} | descendants(pid)
            kill_tree(pid, trees[pid], signal.SIGTERM)
    if not trees:
        return
    deadline = time.monotonic() + _GRACE
    while time.monotonic() < deadline and _any_left(trees):
        time.sleep(0.02)
    for leader, tree in trees.items():
        kill_tree(leader, tree, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: the lock ends with the guard only once
    # the jobs are gone (and their own locks and files are closed).
    deadline = time.monotonic() + _GRACE
    while time.monotonic() < deadline and _any_left(trees):
        time.sleep(0.02)


def _any_left(trees: dict[int, set[tuple[int, int]]]) -> bool:
    return any(
        _alive_group(leader) or any(same_process(p, s) for p, s in tree)
        for leader, tree in trees.items()
    )


def any_alive(tree: set[tuple[int, int]]) -> bool:
    return any(same_process(pid, started) for pid, started in tree)


def _alive_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# --- the runner's side ---------------------------------------------------------------------

_current: contextvars.ContextVar[Guard | None] = contextvars.ContextVar(
    "conveyor_guard", default=None
)


def current_guard() -> Guard | None:
    """The guard of the run this task belongs to, if it started one."""
    return _current.get()


class Guard:
    """The runner's handle on its guard process (see the module docstring).

    `with Guard(hold_fd=lock_fd):` starts the guard and makes it the current
    one for the tasks started inside; `add(pid)`/`remove(pid)` report jobs.
    Leaving the block says `bye` and waits for the guard to exit. Where the
    guard cannot start (no /proc, no fork), jobs run unguarded, as before.
    """

    def __init__(self, *, hold_fd: int | None = None) -> None:
        self._hold = hold_fd
        self.token = f"{os.getpid()}-{secrets.token_hex(8)}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._token: contextvars.Token[Guard | None] | None = None

    def __enter__(self) -> Guard:
        if os.path.isdir("/proc"):
            with contextlib.suppress(OSError):
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", os.path.abspath(__file__), self.token],
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
