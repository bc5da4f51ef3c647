"""The HTTP side of an OpenAI-compatible call: one keep-alive pool (`_wire`,
our own HTTP/1.1 client), errors translated into what the engine understands.

- 2xx: an `Answer` (status, parsed body, request id); usage and rate-limit
  headers are reported to the engine for the TPM settlement and learning.
- 429, 408, 409, 5xx, connection errors: `HTTPRetryable` (a `RetryableError`)
  with the server's `Retry-After` as a hint.
- 401/403: `AuthError` (a `FatalError`): the whole run stops early with one
  clear line instead of failing every item.
- other 4xx: `HTTPClientError`: the item fails at once, its response kept.

Transport errors never leave this module untranslated, and nothing here puts
the API key into a message.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from yarl import URL

from .._base import _tls
from .._base._exceptions import (
    AuthError,
    ConfigError,
    HTTPClientError,
    HTTPRetryable,
)
from .._core._attempt import report_limits, report_usage
from .._core._refusals import classify, parse_wait
from . import _wire
from ._limit_headers import read_limit_headers

with _tls.deferred_ca_store():  # read at the first https request, not by a plain-HTTP run
    # Not used here any more (requests go through `_wire`), but imported here,
    # under the deferral, for the rest of the package (batch mode's Files API).
    import aiohttp  # noqa: F401

if TYPE_CHECKING:
    from collections.abc import Coroutine, Mapping

__all__ = [
    "Answer",
    "AuthError",
    "Endpoint",
    "HTTPClientError",
    "HTTPRetryable",
    "OpenAIClient",
    "parse_duration",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# (status, parsed body, x-request-id, headers, raw body) of one request.
_Exchange = tuple[int, Any, "str | None", Any, bytes]
_HEADS_KEPT = 64  # request heads kept, by (method, endpoint) (a run has one or a few)
_RETRYABLE_STATUS = frozenset({408, 409, 429, 498, 500, 502, 503, 504, 520, 522, 524, 529})


@dataclass(frozen=True)
class Endpoint:
    """Where requests go and how they authenticate. The key is never shown."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    api_key_env: str = "OPENAI_API_KEY"

    @classmethod
    def resolve(
        cls,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        headers: dict[str, str] | None = None,
    ) -> Endpoint:
        """Like the OpenAI SDK: argument, then `OPENAI_BASE_URL`, then api.openai.com;
        the key from `api_key` or the environment variable `api_key_env`."""
        url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError("base_url", url, "an http(s) URL such as http://127.0.0.1:8000/v1")
        key = api_key if api_key is not None else os.environ.get(api_key_env)
        return cls(url.rstrip("/"), key, tuple((headers or {}).items()), api_key_env)

    def url_for(self, endpoint: str) -> str:
        """`/chat/completions` (or `/v1/chat/completions`) under the base URL."""
        path = endpoint if endpoint.startswith("/") else "/" + endpoint
        if path.startswith("/v1/") and self.base_url.endswith("/v1"):
            path = path[3:]
        return self.base_url + path


@dataclass(slots=True)
class Answer:
    """A response the server gave (2xx).

    `parsed` is the answer validated against its schema (the JSON value; for
    function tools a list of ``{"name", "arguments"}``) when `checked`. `raw`
    is the body as received (what a response cache keeps).
    """

    status: int
    body: Any
    request_id: str | None
    parsed: Any = None
    checked: bool = False
    raw: bytes | None = field(default=None, repr=False, compare=False)


def parse_duration(text: str | None) -> float | None:
    """`"1s"`, `"250ms"`, `"6m0s"`, `"1h2m3.5s"` or plain seconds -> seconds."""
    return parse_wait(text)


def _retry_after(headers: Any) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return parse_duration(headers.get("retry-after"))


def _num(v: str | None) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except ValueError:
        return None


def _report_headers(headers: Any) -> None:
    hint = read_limit_headers(headers)
    if hint is not None:
        report_limits(**{f: getattr(hint, f) for f in hint.__slots__})


def _report_usage(body: Any) -> None:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return
    tin = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    tout = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if isinstance(tin, int) and isinstance(tout, int):
        report_usage(tin, tout)


_AUTH_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})


def _secrets_of(api_key: str | None, headers: Mapping[str, str]) -> tuple[bytes, ...]:
    """The key and the credential header values, as a server could echo them
    back (bare, and JSON-escaped); short values are left alone (they would
    mangle ordinary text)."""
    values = [api_key or ""]
    for name, value in headers.items():
        if name.lower() in _AUTH_HEADERS:
            values.append(value.split(" ", 1)[1] if " " in value else value)
    found: list[bytes] = []
    for v in values:
        if len(v) >= 8:
            for form in (v.encode(), orjson.dumps(v)[1:-1]):
                if form not in found:
                    found.append(form)
    return tuple(found)


def _cut_off(exc: BaseException, headers: Any) -> str:
    expected = headers.get("Content-Length")
    detail = str(exc).split(":", 1)[0] if str(exc) else type(exc).__name__
    return f"{detail}; Content-Length {expected}" if expected else detail


def _error_message(body: Any) -> str:
    if isinstance(body, list) and body:
        body = body[0]  # Gemini's OpenAI-compatible endpoint: `[{"error": {...}}]`
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
    if isinstance(body, str):
        return body[:200]
    return ""


class OpenAIClient:
    """A pooled keep-alive client sized to the concurrency (`_wire.Pool`)."""

    def __init__(self, endpoint: Endpoint, *, concurrency: int) -> None:
        self.endpoint = endpoint
        self._concurrency = concurrency
        self._pool: _wire.Pool | None = None
        url = URL(endpoint.url_for(""))
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ConfigError("base_url", endpoint.base_url, "an http(s) URL")
        self._url = url
        # `Accept-Encoding: identity`: uncompressed answers (RFC 9110 12.5.3).
        headers = {
            "Host": url.host_port_subcomponent or url.raw_host,
            "User-Agent": "conveyor",
            "Accept": "*/*",
            "Accept-Encoding": "identity",
            "Content-Type": "application/json",
        }
        given = dict(endpoint.headers)
        if endpoint.api_key:
            given["Authorization"] = f"Bearer {endpoint.api_key}"
        for name, value in given.items():
            for ours in [k for k in headers if k.lower() == name.lower()]:
                del headers[ours]  # the caller's spelling wins, sent once
            headers[name] = value
        for name, value in headers.items():
            if any(c in name for c in "\r\n:") or "\r" in value or "\n" in value:
                raise ConfigError("headers", name, "a header name and value without CR or LF")
        self._header_lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        self._secrets = _secrets_of(endpoint.api_key, dict(endpoint.headers))
        # The head of each request, up to its Content-Length value, built once.
        self._heads: dict[tuple[str, str], bytes] = {}

    async def __aenter__(self) -> OpenAIClient:
        tls = None
        if self._url.scheme == "https":
            if _tls.pending():  # aiohttp's contexts (batch mode's Files API) too, off the loop
                await asyncio.to_thread(_tls.load_deferred)
            tls = await _wire.tls_context()
        self._pool = _wire.Pool(
            self._url.raw_host or "",
            self._url.port or (443 if tls else 80),
            tls=tls,
            limit=self._concurrency,
            connect_timeout=30.0,
            idle_timeout=60.0,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _head(self, method: str, endpoint: str) -> bytes:
        """`POST /v1/chat/completions HTTP/1.1` and the headers, up to the
        Content-Length value (a body follows) or the blank line (none)."""
        url = URL(self.endpoint.url_for(endpoint))
        head = f"{method} {url.raw_path_qs or '/'} HTTP/1.1\r\n".encode() + self._header_lines
        return head + (b"Content-Length: " if method == "POST" else b"\r\n")

    async def get(self, endpoint: str) -> tuple[int, Any]:
        """A GET (for `/models`), errors translated."""
        status, body, _, _, _ = await self._request("GET", endpoint, None)
        return status, body

    async def post(self, endpoint: str, body: Any) -> Answer:
        """POST one request; returns an `Answer` or raises a translated error."""
        return self.answer(*await self.exchange(endpoint, body))

    def exchange(self, endpoint: str, body: Any) -> Coroutine[Any, Any, _Exchange]:
        """POST one request: what the server said, for `answer` (`post` in two
        halves, so a caller that awaits this one saves a coroutine layer)."""
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return self._request("POST", endpoint, data)

    def answer(
        self, status: int, parsed: Any, request_id: str | None, headers: Any, raw: bytes
    ) -> Answer:
        """The `Answer` to a POST `exchange`, or its error raised."""
        _report_headers(headers)
        where = self.endpoint.base_url
        if 200 <= status < 300:
            if isinstance(parsed, dict) and parsed.get("error") is None:
                _report_usage(parsed)
                return Answer(status, parsed, request_id, raw=raw)
            # A 2xx that is not a result (a proxy's HTML page, an empty body,
            # an error object): a failure, retried like a 5xx.
            if isinstance(parsed, dict):
                what = f"an error: {_error_message(parsed) or parsed.get('error')!r}"
            elif parsed is None:
                what = "an empty body"
            else:
                text = parsed if isinstance(parsed, str) else orjson.dumps(parsed).decode()
                what = f"not a JSON object: {' '.join(text.split())[:120]!r}"
            raise HTTPRetryable(
                f"HTTP {status} from {where} with {what}",
                status_code=status,
                body=parsed,
                request_id=request_id,
            )
        msg = _error_message(parsed)
        if status in (401, 403):
            hint = (
                f"set {self.endpoint.api_key_env}"
                if not self.endpoint.api_key
                else f"check {self.endpoint.api_key_env} (or --api-key-env)"
            )
            raise AuthError(
                f"HTTP {status} from {where}: the API key was rejected ({msg or 'unauthorized'}); "
                f"{hint}",
                status_code=status,
            )
        if status in _RETRYABLE_STATUS:
            err = HTTPRetryable(
                f"HTTP {status}: {msg}" if msg else f"HTTP {status}",
                status_code=status,
                retry_after=_retry_after(headers),
                body=parsed,
                request_id=request_id,
            )
            # Rate limit, quota or capacity: the engine acts on the class.
            err.refusal = classify(status, parsed, retry_after=err.retry_after, message=msg)
            raise err
        raise HTTPClientError(
            f"HTTP {status}: {msg}" if msg else f"HTTP {status}",
            status_code=status,
            body=parsed,
            request_id=request_id,
        )

    async def _request(self, method: str, endpoint: str, data: bytes | None) -> _Exchange:
        pool = self._pool
        if pool is None:
            raise RuntimeError("OpenAIClient used outside `async with`")
        head = self._heads.get((method, endpoint))
        if head is None:
            head = self._head(method, endpoint)
            if len(self._heads) < _HEADS_KEPT:
                self._heads[method, endpoint] = head
        try:
            if data is None:
                status, headers, raw = await pool.request(head, None)
            elif len(data) <= _wire.SLICE_BYTES:  # one write: head and body
                status, headers, raw = await pool.request(
                    b"%b%d\r\n\r\n%b" % (head, len(data), data), None
                )
            else:  # the body in slices, not copied
                status, headers, raw = await pool.request(b"%b%d\r\n\r\n" % (head, len(data)), data)
        except _wire.CutOff as exc:
            # The server answered, then the body was cut off: a bad answer
            # (retried), not a server that cannot be reached.
            raise HTTPRetryable(
                f"HTTP {exc.status} from {self.endpoint.base_url}, but the response body "
                f"was cut off ({_cut_off(exc, exc.headers)})",
                status_code=exc.status,
                request_id=exc.headers.get("x-request-id"),
            ) from None
        except (_wire.ConnectError, _wire.Disconnected) as exc:
            raise HTTPRetryable(
                f"connection error talking to {self.endpoint.base_url}: {type(exc).__name__}: {exc}"
            ) from None
        except _wire.BadResponse as exc:
            raise HTTPRetryable(f"bad response from {self.endpoint.base_url}: {exc}") from None
        for secret in self._secrets:
            if secret in raw:  # a server that echoes the key: never store or show it
                raw = raw.replace(secret, b"***")
        try:
            parsed: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = raw.decode("utf-8", "replace")
        return status, parsed, headers.get("x-request-id"), headers, raw
