"""Start-up and exit of the `conveyor` command: what is imported before it is
needed, and the quick exit after a finished run (issue 18). Speed itself lives
in benchmarks/hot_path.py (scenarios c and e); these pin the behaviour."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from typing import TYPE_CHECKING

import orjson

from conveyor.cli._main import quick_exit_status

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from conveyor.mock import MockServer

HEAVY = ("aiohttp", "jinja2", "conveyor._core._engine", "conveyor.executors", "conveyor._monitor")


def _python(
    code: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip


def _loaded_after(statement: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    out = _python(
        f"import sys\n{statement}\nprint(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_conveyor_loads_no_engine_and_no_http() -> None:
    assert _loaded_after("import conveyor") == []


def test_run_help_loads_neither_aiohttp_nor_the_engine() -> None:
    # What `conveyor run --help` imports: the command's module and its options (the
    # preflight's GPU probe brings the small `_monitor` package along).
    assert _loaded_after("import conveyor.cli._run", HEAVY[:-1]) == []


def test_lazy_names_resolve_and_say_conveyor_even_when_reached_first_inside() -> None:
    out = _python("""
        import conveyor
        from conveyor._core._report import BatchReport  # reached before conveyor.BatchReport
        conveyor.run  # loads the engine: every public name it brought says conveyor.X
        print(BatchReport.__module__, conveyor.BatchReport is BatchReport)
        print(conveyor.TaskResult.__module__, "run" in dir(conveyor))
        try:
            conveyor.no_such_name
        except AttributeError as exc:
            print(exc)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "conveyor True",
        "conveyor True",
        "module 'conveyor' has no attribute 'no_such_name'",
    ]


def test_a_batch_file_run_never_loads_jinja2_and_ends_complete(
    start_mock: Callable[..., MockServer], tmp_path: Path
) -> None:
    """The quick exit after a run: the output and the summary are whole, the exit
    status is the run's, atexit handlers ran; jinja2 (templates only) was never loaded."""
    srv = start_mock(latency=0.0, seed=3)
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    with inp.open("wb") as f:
        for i in range(40):
            body = {"model": "mock-gpt", "messages": [{"role": "user", "content": f"q{i}"}]}
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")
    code = """
        import atexit, sys
        atexit.register(lambda: print("atexit: jinja2 loaded" if "jinja2" in sys.modules
                                      else "atexit: no jinja2"))
        from conveyor.cli._main import entry
        sys.argv = ["conveyor", *sys.argv[1:]]
        entry()
    """
    done = _python(code, "run", str(inp), "-o", str(out), "--base-url", srv.base_url, "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "atexit: no jinja2"
    assert "40 items" in done.stderr and f"output: {out}" in done.stderr
    ids = [orjson.loads(raw)["custom_id"] for raw in out.read_bytes().splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(40))


def test_quick_exit_flushes_buffered_output_and_keeps_the_status() -> None:
    out = _python("""
        import atexit, sys
        from conveyor.cli import _main
        atexit.register(lambda: sys.stdout.write("|atexit ran"))
        _main.allow_quick_exit()
        sys.stdout.write("buffered, no newline")
        sys.argv = ["conveyor", "status"]  # a usage error: exit 2
        _main.entry()
    """)
    assert out.returncode == 2, out.stderr
    assert out.stdout == "buffered, no newline|atexit ran"
    assert "Missing argument" in out.stderr


def test_quick_exit_waits_for_a_running_non_daemon_thread() -> None:
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=False)
    worker.start()
    try:
        threads = threading.enumerate()
        assert quick_exit_status(0, threads) is None  # it would be cut off: exit the usual way
    finally:
        release.set()
        worker.join()
    assert quick_exit_status(0, threading.enumerate()) == 0
    assert quick_exit_status(None, []) == 0
    assert quick_exit_status(3, []) == 3
    assert quick_exit_status("a message", []) == 1
