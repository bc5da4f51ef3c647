"""Small pieces of `run_file`: the output without a journal, a sized iterator for
the ETA, the input's line count, and the task function shipped to Ray actors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._http import Answer, Endpoint, OpenAIClient
from ._runparts import Item, _Caller, format_line

if TYPE_CHECKING:
    from pathlib import Path

    from .._base._types import Result


class _PlainOutput:
    """The output without a journal: lines appended as results arrive."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("wb")

    async def add(self, result: Result[Any]) -> None:
        self._f.write(format_line(result))

    async def close(self) -> None:
        self._f.close()


class _Sized(Iterator[Item]):
    """An iterator that knows roughly how many items it will give (for the ETA)."""

    def __init__(self, it: Iterator[Item], n: int | None) -> None:
        self._it = it
        self._n = n

    def __iter__(self) -> _Sized:
        return self

    def __next__(self) -> Item:
        return next(self._it)

    def __len__(self) -> int:
        if self._n is None:
            raise TypeError("length unknown")
        return self._n


_COUNT_LIMIT = 2 << 30  # count lines of inputs up to 2 GiB (about a second per GiB)


def _count_lines(path: Path) -> int | None:
    """Non-blank-ish line count for progress totals; None for huge files."""
    try:
        size = path.stat().st_size
        if size > _COUNT_LIMIT:
            return None
        n = 0
        last = b"\n"
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
                last = chunk[-1:]
        return n + (0 if last == b"\n" else 1)
    except OSError:
        return None


class _RemoteCaller:
    """The task function shipped to Ray actors (it must pickle): each actor
    opens its own pooled session on first use and reads the API key from its
    own environment unless one was given explicitly."""

    def __init__(
        self,
        base_url: str,
        api_key_env: str,
        headers: dict[str, str],
        api_key: str | None,
        concurrency: int,
    ) -> None:
        self._args = (base_url, api_key_env, dict(headers), api_key, concurrency)
        self._caller: _Caller | None = None
        self._client: OpenAIClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_args": self._args, "_caller": None, "_client": None}

    async def __call__(self, req: Item) -> Answer:
        if self._caller is None:
            base_url, key_env, headers, key, concurrency = self._args
            endpoint = Endpoint.resolve(base_url, api_key=key, api_key_env=key_env,
                                        headers=headers)  # fmt: skip
            client = OpenAIClient(endpoint, concurrency=concurrency)
            await client.__aenter__()  # lives as long as the actor
            if self._ready():
                await client.__aexit__(None, None, None)  # another call got there first
            else:
                self._client, self._caller = client, _Caller(client, None)
        assert self._caller is not None
        return await self._caller(req)

    def _ready(self) -> bool:
        # A method, so the check is re-read after the await above.
        return self._caller is not None
