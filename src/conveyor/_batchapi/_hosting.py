"""Running a server in the foreground until Ctrl+C (`conveyor mock`, `conveyor serve`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["run_until_interrupted"]


class Startable(Protocol):
    async def start(self) -> str: ...

    async def stop(self) -> None: ...


def run_until_interrupted(server: Startable, announce: Callable[[str], None]) -> None:
    """Start `server`, hand its URL to `announce`, serve until Ctrl+C, then stop it."""

    async def main() -> None:
        url = await server.start()
        try:
            announce(url)
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
