"""The provider's Files and Batches API over aiohttp (not the openai SDK: one
pooled session, errors translated like `_http.OpenAIClient`'s).

Shapes, from OpenAI's API reference
(https://platform.openai.com/docs/api-reference/batch and
https://platform.openai.com/docs/api-reference/files):

- `POST /files` multipart (`purpose=batch`, `file=@shard.jsonl`) -> a File
  object `{"id": "file-...", "object": "file", "bytes", "purpose", ...}`;
- `POST /batches` `{"input_file_id", "endpoint", "completion_window",
  "metadata"}` -> a Batch object `{"id": "batch_...", "status",
  "request_counts": {"total", "completed", "failed"}, "output_file_id",
  "error_file_id", "errors": {"data": [{"code", "message", "line"}]}, ...}`;
- `GET /batches/{id}`, `POST /batches/{id}/cancel`, `GET /batches?limit&after`
  (a list `{"data", "has_more", "last_id"}`);
- `GET /files/{id}/content` (the JSONL output or error file), `DELETE /files/{id}`.

Transient failures (429, 5xx, connection errors) are retried here with
exponential backoff; a 401/403 raises `AuthError`; other 4xx `HTTPClientError`.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from ..._base._exceptions import AuthError, HTTPClientError, HTTPRetryable
from .._http import _RETRYABLE_STATUS, _error_message, _retry_after

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from .._http import Endpoint

__all__ = ["BatchAPI"]

_ATTEMPTS = 8
_CHUNK = 1 << 16


class BatchAPI:
    """Files and Batches calls against one endpoint. Use `async with`."""

    def __init__(self, endpoint: Endpoint, *, attempts: int = _ATTEMPTS) -> None:
        self.endpoint = endpoint
        self._attempts = attempts
        self._session: aiohttp.ClientSession | None = None
        headers = {"User-Agent": "conveyor"}
        headers.update(dict(endpoint.headers))
        if endpoint.api_key:
            headers["Authorization"] = f"Bearer {endpoint.api_key}"
        self._headers = headers
        self.calls: dict[str, int] = {}

    async def __aenter__(self) -> BatchAPI:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the calls -----------------------------------------------------------

    async def upload(self, path: Path, *, filename: str) -> dict[str, Any]:
        """Upload a batch input file; returns the File object."""

        def form() -> aiohttp.FormData:
            # A file object is streamed (a 200 MB shard is never held in memory);
            # each attempt opens it afresh, and aiohttp closes it once sent.
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field(
                "file", path.open("rb"), filename=filename, content_type="application/jsonl"
            )
            return data

        return await self._json("POST", "/files", what="upload", form=form)

    async def create(
        self, *, file_id: str, endpoint: str, window: str, metadata: dict[str, str]
    ) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": window,
                "metadata": metadata}  # fmt: skip
        return await self._json("POST", "/batches", what="create", body=body)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}", what="retrieve")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/batches/{batch_id}/cancel", what="cancel")

    async def list_batches(self, *, limit: int = 100, pages: int = 20) -> list[dict[str, Any]]:
        """The newest batches (at most `pages` pages of `limit`)."""
        out: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(pages):
            q = f"/batches?limit={limit}" + (f"&after={after}" if after else "")
            page = await self._json("GET", q, what="list")
            data = page.get("data") or []
            out.extend(d for d in data if isinstance(d, dict))
            if not page.get("has_more") or not data:
                break
            after = page.get("last_id") or data[-1].get("id")
        return out

    async def delete_file(self, file_id: str) -> None:
        await self._json("DELETE", f"/files/{file_id}", what="delete")

    async def content_lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The lines of a file's content, streamed (no file is held in memory)."""
        session = self._need()
        url = self.endpoint.url_for(f"/files/{file_id}/content")
        for attempt in range(1, self._attempts + 1):
            try:
                async with session.get(url) as resp:
                    if resp.status != 200:
                        raw = await resp.read()
                        self._raise(resp.status, _parse(raw), resp.headers, "content")
                    rest = b""
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        rest += chunk
                        *lines, rest = rest.split(b"\n")
                        for line in lines:
                            if line.strip():
                                yield line
                    if rest.strip():
                        yield rest
                    return
            except (HTTPRetryable, aiohttp.ClientError, TimeoutError) as exc:
                # A restart after lines went out would repeat them; the merge
                # is idempotent per custom_id, so that is harmless.
                if attempt == self._attempts:
                    raise _translate(exc, self.endpoint.base_url) from None
                await asyncio.sleep(_backoff(attempt, exc))

    # -- plumbing ------------------------------------------------------------

    def _need(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("BatchAPI used outside `async with`")
        return self._session

    async def _json(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: Any = None,
        form: Any = None,
    ) -> dict[str, Any]:
        session = self._need()
        url = self.endpoint.url_for(path)
        self.calls[what] = self.calls.get(what, 0) + 1
        for attempt in range(1, self._attempts + 1):
            try:
                kwargs: dict[str, Any] = {}
                if form is not None:
                    kwargs["data"] = form()
                elif body is not None:
                    kwargs["data"] = orjson.dumps(body)
                    kwargs["headers"] = {"Content-Type": "application/json"}
                async with session.request(method, url, **kwargs) as resp:
                    raw = await resp.read()
                    parsed = _parse(raw)
                    if 200 <= resp.status < 300:
                        return parsed if isinstance(parsed, dict) else {}
                    self._raise(resp.status, parsed, resp.headers, what)
            except (HTTPRetryable, aiohttp.ClientError, TimeoutError) as exc:
                if attempt == self._attempts:
                    raise _translate(exc, self.endpoint.base_url) from None
                await asyncio.sleep(_backoff(attempt, exc))
        raise AssertionError("unreachable")

    def _raise(self, status: int, body: Any, headers: Any, what: str) -> None:
        msg = _error_message(body)
        where = f"{self.endpoint.base_url} ({what})"
        if status in (401, 403):
            raise AuthError(
                f"HTTP {status} from {where}: the API key was rejected ({msg or 'unauthorized'});"
                f" check {self.endpoint.api_key_env}",
                status_code=status,
            )
        if status in _RETRYABLE_STATUS and not (status == 409 and what == "cancel"):
            # (409 on cancel: the batch is already final; nothing to retry.)
            raise HTTPRetryable(
                f"HTTP {status} from {where}: {msg}",
                status_code=status,
                retry_after=_retry_after(headers),
                body=body,
            )
        raise HTTPClientError(
            f"HTTP {status} from {where}: {msg or 'refused'}",
            status_code=status,
            body=body,
            request_id=headers.get("x-request-id"),
        )


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def _backoff(attempt: int, exc: BaseException) -> float:
    hint = getattr(exc, "retry_after", None)
    base = min(30.0, 0.25 * 2 ** (attempt - 1))
    wait = random.uniform(base / 2, base)
    return max(wait, float(hint)) if isinstance(hint, int | float) else wait


def _translate(exc: BaseException, where: str) -> BaseException:
    if isinstance(exc, HTTPRetryable):
        return exc
    return HTTPRetryable(f"connection error talking to {where}: {type(exc).__name__}: {exc}")
