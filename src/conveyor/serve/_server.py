"""`BatchServer`: the Files and Batch API over any OpenAI-compatible upstream.

``/v1/files`` and ``/v1/batches`` are answered here (`conveyor._batchapi`, the same
routes and lifecycle as the simulated server); every other ``/v1/*`` request is
forwarded to the upstream unchanged, its answer streamed back, so one base URL serves
both. ``GET /`` is the status page.

Security: it listens on 127.0.0.1 unless told otherwise; every ``/v1`` request needs
this server's own bearer key unless auth was switched off explicitly; the status page
needs it too except from loopback; file ids reach the disk only through the store's own
tables; uploads past the size limit get a 413; the upstream's key is read from the
environment, sent only to the upstream, and never written to a response, file or log.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from yarl import URL

from .._base._exceptions import ConfigError
from .._batchapi import ApiError, BatchService, Limits, Store, dispatch, is_batch_path
from .._batchapi._hosting import run_until_interrupted
from ._page import render_page
from ._processor import UpstreamBatches

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["BatchServer", "ServeSettings", "serve"]

log = logging.getLogger("conveyor.serve")

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
# Hop-by-hop headers (RFC 9110 7.6.1) and those the forwarder sets itself.
_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
     "trailer", "transfer-encoding", "upgrade", "host", "authorization", "content-length"}
)  # fmt: skip
_CHUNK = 1 << 16


@dataclass
class ServeSettings:
    """What `conveyor serve` needs; the CLI fills it from flags."""

    upstream: str
    data: Path = Path("conveyor-serve-data")
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = field(default=None, repr=False)  # None: no auth (explicitly)
    upstream_key_env: str = "OPENAI_API_KEY"
    concurrency: int | str = 100
    rpm: float | None = None
    tpm: float | None = None
    max_upload_bytes: int = 512 * 1024 * 1024
    allow_remote: bool = False


class BatchServer:
    """``async with BatchServer(settings) as server:``; `base_url` once listening."""

    def __init__(self, settings: ServeSettings) -> None:
        s = settings
        if not s.upstream.startswith(("http://", "https://")):
            raise ConfigError(
                "upstream", s.upstream, "an http(s) URL such as http://127.0.0.1:8000/v1"
            )
        if s.host not in _LOOPBACK and not s.allow_remote:
            raise ConfigError("host", s.host, "pass allow_remote=True to listen beyond loopback")
        self.settings = s
        self._upstream = s.upstream.rstrip("/")
        # For the page: without any user:password a URL may carry.
        self._shown_upstream = str(URL(self._upstream).with_user(None))
        self._upstream_key = os.environ.get(s.upstream_key_env)  # never logged or echoed
        processor = UpstreamBatches(
            upstream=self._upstream,
            upstream_key_env=s.upstream_key_env,
            concurrency=s.concurrency,
            rpm=s.rpm,
            tpm=s.tpm,
        )
        limits = Limits(max_upload_bytes=s.max_upload_bytes, windows=None)
        self.service = BatchService(Store(Path(s.data)), processor, limits)
        self._ids = itertools.count(1)
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the server is not running; call start() first")
        return self._base_url

    async def start(self) -> str:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)
        )
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.settings.host, self.settings.port).start()
        except OSError as exc:
            await runner.cleanup()
            await self._session.close()
            raise ConfigError(
                "port",
                self.settings.port,
                f"cannot listen ({exc.strerror or exc}); pick a free port",
            ) from exc
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        self._base_url = f"http://{host}:{port}/v1"
        self.service.resume()
        return self._base_url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        await self.service.close()
        if runner is not None:
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()
        self._base_url = None

    async def __aenter__(self) -> BatchServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- requests -------------------------------------------------------------

    def _authorized(self, request: web.BaseRequest) -> bool:
        key = self.settings.api_key
        if key is None:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {key}".encode())

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = {"x-request-id": f"req_{next(self._ids):016x}"}
        path = request.path
        try:
            if path in ("/", "/index.html") and request.method == "GET":
                peer = request.remote or ""
                if not (self._authorized(request) or peer in _LOOPBACK):
                    raise _unauthorized(request)
                page = render_page(self.service, self._shown_upstream)
                return web.Response(body=page, headers=headers, content_type="text/html")
            if not path.startswith("/v1/"):
                raise ApiError(404, f"Invalid URL ({request.method} {path})")
            if not self._authorized(request):
                raise _unauthorized(request)
            if is_batch_path(path):
                return await dispatch(request, self.service, headers)
            return await self._forward(request)
        except ApiError as err:
            return web.Response(
                status=err.status, body=err.body(), headers=headers, content_type="application/json"
            )

    async def _forward(self, request: web.BaseRequest) -> web.StreamResponse:
        """The request to the upstream, unchanged but for the key; the answer streamed."""
        assert self._session is not None
        tail = request.rel_url.path_qs[len("/v1") :]
        url = (
            self._upstream + tail
            if self._upstream.endswith("/v1")
            else self._upstream + request.rel_url.path_qs
        )
        out_headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if self._upstream_key:
            out_headers["Authorization"] = f"Bearer {self._upstream_key}"
        body = request.content if request.body_exists else None
        try:
            upstream = await self._session.request(
                request.method, url, headers=out_headers, data=body, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise ApiError(
                502,
                f"The upstream did not answer ({type(exc).__name__}); check that it runs.",
                type="server_error",
            ) from None
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            with contextlib.suppress(aiohttp.ClientError, ConnectionResetError):
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
            await response.write_eof()
        return response


def _unauthorized(request: web.BaseRequest) -> ApiError:
    given = request.headers.get("Authorization")
    message = (
        "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
        if not given
        else "Incorrect API key provided. Check the key the client sends."
    )
    return ApiError(401, message, code="invalid_api_key")


def _announce(url: str) -> None:
    import sys

    print(f"conveyor serve listening on {url} (Ctrl+C to stop)", file=sys.stderr, flush=True)


def serve(settings: ServeSettings, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Run in the foreground until Ctrl+C (``conveyor serve``)."""
    server = BatchServer(settings)
    announce = _announce if on_ready is None else on_ready
    run_until_interrupted(server, announce)
