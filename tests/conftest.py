"""Shared test settings and fixtures."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from conveyor.mock import MockConfig, MockServer

# CI runs the same examples every time (a fresh machine has no example
# database): a failure there is reproducible, not a one-off draw. Locally,
# Hypothesis keeps exploring.
settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    """Compile conveyor's bytecode once, as `pip install` does for an installed
    package: an editable install under PYTHONDONTWRITEBYTECODE=1 (set on this
    project's machines) would otherwise compile its ~250 modules again in every
    `conveyor` subprocess the tests start (0.2-0.4 s each). A tree that cannot
    be written is left as it is."""
    import compileall
    from pathlib import Path

    import conveyor

    with contextlib.suppress(OSError):
        compileall.compile_dir(Path(conveyor.__file__).parent, quiet=2)


@pytest.fixture
def start_mock() -> Iterator[Callable[..., MockServer]]:
    """The one way tests start the simulated server (`conveyor.mock`): call it with
    `MockConfig` fields; it serves on 127.0.0.1 from its own thread and loop (so sync
    and async tests, subprocesses and Ray actors can all reach it at `.base_url`) and
    is stopped when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(**config: Any) -> MockServer:
            server = MockServer(MockConfig(**config))
            stack.enter_context(server.running_in_thread())
            return server

        yield start


# `PYTHONPATH=src pytest` imports this checkout; subprocesses that run in
# another directory (tmp_path) must too, not whatever conveyor is installed.
if os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p
    )

# Every server a test talks to is on 127.0.0.1: a proxy set on the machine (a CI runner's
# HTTPS_PROXY for pip) has no part in them, and the preflight's proxy check would warn in
# every `conveyor run`. The proxy check's own tests set the variables they need.
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.lower(), None)
