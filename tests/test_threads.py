"""The sync thread pool: exactly `concurrency` workers, per-worker init and teardown."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import conveyor
from conveyor import ConfigError, Status


def test_pool_runs_exactly_concurrency_threads() -> None:
    seen: set[int] = set()
    lock = threading.Lock()

    def fn(i: int) -> int:
        with lock:
            seen.add(threading.get_ident())
        time.sleep(0.001)
        return i

    report = conveyor.run(range(300), fn, concurrency=5)
    assert report.counts["ok"] == 300
    assert len(seen) == 5


def test_worker_init_and_teardown_once_per_worker_thread() -> None:
    local = threading.local()
    opened: list[int] = []
    closed: list[int] = []
    lock = threading.Lock()

    def init() -> None:
        local.conn = f"conn-{threading.get_ident()}"
        with lock:
            opened.append(threading.get_ident())

    def teardown() -> None:
        with lock:
            closed.append(threading.get_ident())

    def fn(i: int) -> str:
        time.sleep(0.002)
        return str(local.conn)

    report = conveyor.run(range(100), fn, concurrency=3, worker_init=init, worker_teardown=teardown)
    assert report.counts["ok"] == 100
    assert len(opened) == 3 and len(set(opened)) == 3
    assert sorted(closed) == sorted(opened)  # teardown has run when run() returns
    assert {r.value for r in report} == {f"conn-{t}" for t in opened}


def test_hung_call_replacement_thread_gets_worker_init() -> None:
    release = threading.Event()
    inits: list[int] = []
    lock = threading.Lock()

    def init() -> None:
        with lock:
            inits.append(threading.get_ident())

    def fn(i: int) -> int:
        if i == 0:
            release.wait(30)
        else:
            time.sleep(0.01)
        return i

    try:
        report = conveyor.run(
            range(30), fn, concurrency=2, timeout=0.2, retries=0, worker_init=init
        )
    finally:
        release.set()
    assert report[0].status is Status.TIMED_OUT
    assert report.counts["ok"] == 29
    assert len(inits) == 3  # two workers and the replacement of the stuck one


def test_worker_init_error_fails_the_call_with_a_clear_message() -> None:
    def init() -> None:
        raise OSError("database is down")

    report = conveyor.run([1, 2], lambda x: x, concurrency=1, worker_init=init, retries=0)
    assert report.counts["failed"] == 2
    assert report[0].error is not None and "worker_init" in report[0].error.message


def test_worker_init_must_be_callable() -> None:
    with pytest.raises(ConfigError, match="worker_init"):
        conveyor.run([1], lambda x: x, worker_init="nope")


def test_stream_takes_worker_init() -> None:
    inits: list[Any] = []
    with conveyor.stream(
        range(10), lambda x: x, concurrency=2, worker_init=lambda: inits.append(1)
    ) as s:
        assert sorted(r.value for r in s) == list(range(10))
    assert 1 <= len(inits) <= 2
