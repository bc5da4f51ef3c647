"""The endpoint the examples talk to: $OPENAI_BASE_URL, or `conveyor mock` started here."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from conveyor.mock import MockConfig, MockServer

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def endpoint(**mock: object) -> Iterator[str]:
    """Yield a base URL: the real one when OPENAI_BASE_URL is set, else a local mock."""
    if os.environ.get("OPENAI_BASE_URL"):
        yield os.environ["OPENAI_BASE_URL"]
        return
    os.environ.setdefault("OPENAI_API_KEY", "sk-mock")
    with MockServer(MockConfig(latency=0.05, **mock)).running_in_thread() as url:  # type: ignore[arg-type]
        yield url
