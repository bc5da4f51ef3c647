"""Helpers for the tests that run real processes (commands, exec)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for its reaper counts as dead."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def eventually(predicate: Callable[[], object], within: float = 5.0) -> bool:
    """Poll `predicate` until it holds or `within` seconds pass (bounded)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


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
