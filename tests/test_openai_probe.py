"""The endpoint half of the preflight (`conveyor.openai._probe`), below the CLI: its
advice names the caller's settings, keyword names unless the CLI passes its flags."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from conveyor.mock import MockServer
from conveyor.openai._probe import ProbeAdvice, endpoint_checks

if TYPE_CHECKING:
    pass

import pytest

KEY = "sk-test-probe-0123456789abcdef"


@pytest.fixture
def url(start_mock: Callable[..., MockServer]) -> str:
    return start_mock(api_key=KEY, models=("mock-gpt",)).base_url


async def test_library_advice_names_keywords_not_flags() -> None:
    """An unreachable endpoint: the fix says `base_url=`, never a CLI flag."""
    checks = await endpoint_checks("http://127.0.0.1:9/v1", KEY, "OPENAI_API_KEY", None, 2.0)
    assert [c.name for c in checks] == ["endpoint", "api key", "model"]
    assert checks[0].status == "fail"
    assert "base_url=" in checks[0].fix
    assert not any("--" in c.fix or "--" in c.detail for c in checks)


async def test_cli_advice_is_passed_through(url: str) -> None:
    """A model the endpoint does not list fails, worded with the caller's advice."""
    advice = ProbeAdvice(model="--model")
    checks = await endpoint_checks(url, KEY, "OPENAI_API_KEY", "gpt-x", 5.0, advice=advice)
    assert [c.status for c in checks] == ["ok", "ok", "fail"]
    assert "--model" in checks[2].fix
    assert "mock-gpt" in checks[2].detail


async def test_refused_key(url: str) -> None:
    """A wrong key fails the key check and skips the model check; the key is not shown."""
    wrong = "sk-wrong-0123456789abcdef"
    checks = await endpoint_checks(url, wrong, "MY_KEY", "mock-gpt", 5.0)
    assert [c.status for c in checks] == ["ok", "fail", "skip"]
    assert "MY_KEY" in checks[1].fix and "api_key_env=" in checks[1].fix
    assert not any(wrong in c.detail or wrong in c.fix for c in checks)
