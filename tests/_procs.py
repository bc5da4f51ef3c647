"""Helpers for the tests that run real processes (commands, exec)."""

from __future__ import annotations

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
