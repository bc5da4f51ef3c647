"""The event loop a run gets (`conveyor._core._portal.new_loop`)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

import conveyor
from conveyor._base._exceptions import ConfigError
from conveyor._core._portal import new_loop

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _kind(loop: asyncio.AbstractEventLoop) -> str:
    try:
        return type(loop).__module__.split(".")[0]
    finally:
        loop.close()


def test_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONVEYOR_LOOP=asyncio gives asyncio's own loop even with uvloop installed."""
    monkeypatch.setenv("CONVEYOR_LOOP", "asyncio")
    assert _kind(new_loop()) == "asyncio"


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop (conveyor[fast]) is not installed")
def test_uvloop_by_default_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With uvloop installed and no choice made, a run gets uvloop's loop."""
    monkeypatch.delenv("CONVEYOR_LOOP", raising=False)
    assert _kind(new_loop()) == "uvloop"


@pytest.mark.skipif(HAS_UVLOOP, reason="only without uvloop")
def test_asking_for_uvloop_without_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CONVEYOR_LOOP=uvloop without uvloop is a ConfigError naming the extra."""
    monkeypatch.setenv("CONVEYOR_LOOP", "uvloop")
    with pytest.raises(ConfigError, match=r"conveyor\[fast\]"):
        new_loop()


@pytest.mark.parametrize("choice", ["asyncio", "auto"])
def test_a_run_works_on_either_loop(monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    """`conveyor.run` with an async function gives the same results on both loops."""
    monkeypatch.setenv("CONVEYOR_LOOP", choice)

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    assert conveyor.run(range(50), double, concurrency=8).values() == [2 * i for i in range(50)]
