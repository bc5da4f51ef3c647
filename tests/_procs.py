"""Helpers for the tests that run real processes (commands, exec)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psutil


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for its reaper counts as dead."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def eventually(predicate: Callable[[], object], within: float = 30.0) -> bool:
    """Poll `predicate` until it holds or `within` seconds pass (bounded).

    The bound is generous on purpose: it costs nothing when the condition comes,
    and a loaded machine (2 cores, several test runs) takes seconds to start a
    Python process."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def ready_line(stream: IO[str] | None, pattern: str, within: float = 60.0) -> re.Match[str]:
    """The first line of `stream` (a child's stderr) matching `pattern`, read for at
    most `within` seconds; fails with what was read instead. A server announces
    itself with such a line: wait for it, not for a time."""
    assert stream is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        try:
            for line in stream:
                lines.put(line)
        except (OSError, ValueError):  # closed by the test's cleanup
            pass
        lines.put("")  # end of stream

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if not line:
            break
        if match := re.search(pattern, line):
            return match
        seen.append(line)
    raise AssertionError(f"no line matching {pattern!r} within {within:.0f} s; got {seen!r}")


def pids(path: Path) -> list[int]:
    """The pids a test job wrote to `path`, one per line."""
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill `proc` if it still runs, reap it, close its stderr pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()


def cli_env(key: str) -> dict[str, str]:
    """The environment of a `conveyor` subprocess: this one's, with the mock's
    key and no base URL the machine may have set."""
    e = dict(os.environ)
    e["OPENAI_API_KEY"] = key
    e.pop("OPENAI_BASE_URL", None)
    return e
