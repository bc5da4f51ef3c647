"""The simulated server itself: `MockServer`, `serve` (see `conveyor.mock`)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import itertools
import math
import random
import socket
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .._base._exceptions import ConfigError
from .._batchapi import (
    ApiError,
    BatchService,
    Store,
    dispatch,
    error_body,
    is_batch_path,
    json_object,
)
from .._batchapi._hosting import run_until_interrupted
from ._api import build_answer, build_models, model_entry, shape_answer, validate
from ._batches import MockBatches, batch_limits
from ._config import MockConfig, MockStats
from ._content import count_prompt_tokens
from ._limiter import ServerLimits, capacity_reply, charge_of
from ._meters import format_seconds
from ._saturation import Saturation
from ._structured import plan_and_count

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

__all__ = ["MockServer", "serve"]

_SHUTDOWN_GRACE = 1.0  # seconds in-flight answers get to finish on stop
_BACKLOG = 4096  # a burst of 1,000 new connections must not overflow the accept queue
# The largest request body read (aiohttp's default is 1 MB). OpenAI takes "up to
# 50 MB image bytes per request" (https://platform.openai.com/docs/guides/images-vision,
# "Image input requirements"), sent as base64 data URLs: 4/3 of that plus the text.
_MAX_REQUEST_BYTES = 96 * 1024 * 1024

_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("POST", "chat"),
    "/v1/completions": ("POST", "completions"),
    "/v1/embeddings": ("POST", "embeddings"),
    "/v1/responses": ("POST", "responses"),
    "/v1/models": ("GET", "models"),
}
_MODEL_PREFIX = "/v1/models/"
_BATCH_PREFIX = "/v1/batches/"
_INJECTED = "(injected by the conveyor mock server)"


def _large_request_factory(loop: asyncio.AbstractEventLoop) -> Callable[..., web.BaseRequest]:
    """aiohttp's request factory with the body limit of `_MAX_REQUEST_BYTES`."""

    def make(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=_MAX_REQUEST_BYTES
        )

    return make


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MockServer:
    """The simulated server. ``async with MockServer(cfg) as server:`` or `running_in_thread`."""

    def __init__(
        self,
        config: MockConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
    ) -> None:
        if not allow_remote and not _is_loopback(host):
            raise ConfigError(
                "host",
                host,
                "the mock server listens on loopback only (127.0.0.1, ::1, localhost); "
                "pass allow_remote=True to expose it on a network",
            )
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError("port", port, "use 0 (any free port) to 65535")
        self._host = host
        self._port = port
        self._config = MockConfig() if config is None else config
        self._rng = random.Random(self._config.seed)
        self._limits = ServerLimits(self._config)
        self._gate = Saturation()
        self._ids = itertools.count(1)
        self._runner: web.ServerRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._base_url: str | None = None
        self.stats = MockStats()
        processor = MockBatches(lambda: self._config, self._count_batch_line, self.stats)
        self.batches = BatchService(Store(), processor, batch_limits(self._config))
        """The Files and Batch API's state (`conveyor._batchapi`): files, batches, jobs."""

    def _count_batch_line(self) -> None:
        self.stats.batch_lines += 1

    @property
    def config(self) -> MockConfig:
        """The behaviour in force; assign a new `MockConfig` to change it while running."""
        return self._config

    @config.setter
    def config(self, value: MockConfig) -> None:
        if not isinstance(value, MockConfig):
            raise ConfigError("config", type(value).__name__, "assign a MockConfig")
        if value.seed != self._config.seed:
            self._rng = random.Random(value.seed)
        if not self._limits.same_shape(value):
            admitted = self._limits.admitted
            self._limits = ServerLimits(value)  # a new way of metering starts afresh
            self._limits.admitted = admitted  # the quota counts on
        else:
            if value.spent and not self._limits.cfg.spent:
                self._limits.spend_next()  # spent now, by "another client"
            self._limits.cfg = value
        self._config = value
        self.batches.limits = batch_limits(value)

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1`` once started."""
        if self._base_url is None:
            raise RuntimeError("the mock server is not running; call start() first")
        return self._base_url

    def reset_stats(self) -> None:
        """Start counting afresh; requests still in flight stay counted as such."""
        in_flight = self.stats.in_flight
        self.stats = MockStats(in_flight=in_flight, max_in_flight=in_flight)

    async def start(self) -> str:
        """Listen and return the base URL (``http://127.0.0.1:PORT/v1``)."""
        if self._runner is not None:
            raise RuntimeError("the mock server is already running")
        self._stopping = asyncio.Event()
        # handler_cancellation: a client that gives up ends its hanging handler.
        server = web.Server(
            self._handle,
            request_factory=_large_request_factory(asyncio.get_running_loop()),
            handler_cancellation=True,
            access_log=None,
        )
        runner = web.ServerRunner(server, shutdown_timeout=_SHUTDOWN_GRACE)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port, backlog=_BACKLOG).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                "port",
                self._port,
                f"cannot listen on {self._host}:{self._port} ({exc.strerror or exc}); "
                "pick a free port, or 0 for any",
            ) from exc
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._base_url = f"http://{host}:{port}/v1"
        return self._base_url

    async def stop(self) -> None:
        """Stop listening; hanging requests are dropped, others get a short grace."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._stopping is not None:
            self._stopping.set()
        await self.batches.close()
        await runner.cleanup()
        self._base_url = None

    async def __aenter__(self) -> MockServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @contextlib.contextmanager
    def running_in_thread(self) -> Iterator[str]:
        """Run on an event loop in a daemon thread; yields the base URL."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="conveyor-mock", daemon=True)
        thread.start()
        try:
            url = asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=30)
            try:
                yield url
            finally:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            if not thread.is_alive():
                loop.close()

    # -- request handling ---------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.by_path[request.path] += 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        cfg = self._config
        headers = {"x-request-id": f"req_{next(self._ids):016x}"}
        try:
            return await self._serve(request, cfg, headers)
        except ApiError as err:
            if cfg.capacity is None:
                headers.update(self._limits.headers(time.monotonic()))
            return self._reply(err.status, err.body(), headers)
        finally:
            # self.stats, not the local: reset_stats() may have swapped it.
            self.stats.in_flight -= 1

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> web.Response:
        self.stats.statuses[status] += 1
        return web.Response(
            status=status, body=body, headers=headers, content_type="application/json"
        )

    async def _serve(
        self, request: web.BaseRequest, cfg: MockConfig, headers: dict[str, str]
    ) -> web.StreamResponse:
        path = request.path
        if is_batch_path(path):
            self._authorize(cfg, request)
            if request.method == "GET" and path.startswith(_BATCH_PREFIX):
                batch_id = path[len(_BATCH_PREFIX) :]
                if "/" not in batch_id:
                    self.stats.batch_polls[batch_id].append(time.monotonic())
            response = await dispatch(request, self.batches, headers)
            self.stats.statuses[response.status] += 1
            return response
        route = _ROUTES.get(path)
        if route is None:
            if request.method == "GET" and path.startswith(_MODEL_PREFIX):
                self._authorize(cfg, request)
                model = path[len(_MODEL_PREFIX) :]
                if model not in cfg.models:
                    raise _model_not_found(model)
                return self._reply(200, orjson.dumps(model_entry(model)), headers)
            raise ApiError(404, f"Invalid URL ({request.method} {path})")
        method, kind = route
        if request.method != method:
            raise ApiError(405, f"Method {request.method} is not allowed on {path}; use {method}.")
        self._authorize(cfg, request)
        if kind == "models":
            return self._reply(200, orjson.dumps(build_models(cfg.models)), headers)

        body = json_object(await request.read())
        validate(kind, body)
        if body["model"] not in cfg.models:
            raise _model_not_found(body["model"])

        fault = self._draw_fault(cfg)
        delay = cfg.latency + (self._rng.uniform(0.0, cfg.jitter) if cfg.jitter else 0.0)
        if fault == "hang":
            if not await self._hang(cfg):
                return self._drop(request)
        elif fault is not None and fault != "truncate":
            if delay > 0:
                await asyncio.sleep(delay)
            if fault == "reset":
                return self._drop(request)
            return self._fault_reply(fault, cfg, headers)
        answer = await self._answer(kind, body, cfg, headers, delay)
        if fault == "truncate" and isinstance(answer, web.Response) and answer.status == 200:
            return await self._truncate(request, answer)
        return answer

    async def _answer(
        self,
        kind: str,
        body: dict[str, Any],
        cfg: MockConfig,
        headers: dict[str, str],
        delay: float,
    ) -> web.StreamResponse:
        prompt = count_prompt_tokens(body)
        each, n, finish, asked = shape_answer(kind, body, cfg.completion_tokens)
        # Charged at admission as OpenAI counts it: prompt + the completion cap.
        charge = charge_of(prompt, asked, n)
        charged = int(charge["tokens"])
        if cfg.capacity is not None:
            # A GPU server's time grows with the tokens it generates (decode
            # is one step per token); `max_tokens` only caps them.
            scaled = each if kind != "embeddings" else cfg.completion_tokens
            scale = scaled / cfg.completion_tokens if cfg.scale_by_tokens else 1.0
            if not await self._saturate(cfg, scale):
                message = f"The server is overloaded: the request waited too long {_INJECTED}."
                return self._reply(503, error_body(message, "server_error", None, None), headers)
            if delay > 0:
                await asyncio.sleep(delay)
            self.stats.admitted += 1
            self.stats.tokens += charged
            self.stats.admissions.append((time.monotonic(), charged))
            return self._build(kind, body, headers, prompt, each, finish)
        now = time.monotonic()
        refusal = self._limits.admit(now, charge)
        headers.update(self._limits.headers(now))
        if refusal is not None:
            self.stats.refused[refusal.kind] += 1
            self.stats.refusals.append((now, refusal.kind))
            status, payload_bytes, extra = self._limits.refusal_reply(refusal, body["model"])
            headers.update(extra)
            return self._reply(status, payload_bytes, headers)
        self.stats.admitted += 1
        stats = self.stats
        stats.tokens += charged
        stats.admissions.append((now, charged))
        if delay > 0:
            await asyncio.sleep(delay)
        return self._build(kind, body, headers, prompt, each, finish)

    def _build(
        self,
        kind: str,
        body: dict[str, Any],
        headers: dict[str, str],
        prompt: int,
        each: int,
        finish: str,
    ) -> web.StreamResponse:
        rid = headers["x-request-id"][4:]
        reply = plan_and_count(self._config, self.stats, kind, body)
        payload = build_answer(kind, rid, int(time.time()), body, prompt, each, finish, reply)
        return self._reply(200, orjson.dumps(payload), headers)

    async def _saturate(self, cfg: MockConfig, scale: float) -> bool:
        """Queue for a slot, then serve; False when the queue deadline passed."""
        assert cfg.capacity is not None
        gate = self._gate
        if not await gate.acquire(cfg.capacity, cfg.queue_timeout):
            return False
        try:
            service = cfg.service_time * scale
            if cfg.degrade_after is not None and gate.present > cfg.degrade_after:
                service *= gate.present / cfg.degrade_after  # preemption: all slow down
            if service > 0:
                await asyncio.sleep(service)
        finally:
            gate.release(self._config.capacity or 1)
        return True

    def _authorize(self, cfg: MockConfig, request: web.BaseRequest) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("Authorization", "")
        azure = request.headers.get("api-key")
        if azure is not None and not given:
            given = f"Bearer {azure}"
        if not given:
            raise ApiError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
            )
        if not hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
            # Never echo the key back, not even masked, unless told to (a careless proxy).
            sent = given.removeprefix("Bearer ")
            raise ApiError(
                401,
                f"Incorrect API key provided: {sent}. Check the key the client sends."
                if cfg.echo_key
                else "Incorrect API key provided. Check the key the client sends.",
                code="invalid_api_key",
            )

    def _draw_fault(self, cfg: MockConfig) -> str | None:
        draw = self._rng.random()
        for name, rate in cfg.fault_rates:
            if draw < rate:
                self.stats.faults[name] += 1
                return name
            draw -= rate
        return None

    async def _hang(self, cfg: MockConfig) -> bool:
        """Wait; True when `hang_seconds` ran out, False when the server is stopping."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), cfg.hang_seconds)
        except TimeoutError:
            return True
        return False

    async def _truncate(self, request: web.BaseRequest, full: web.Response) -> web.StreamResponse:
        """Send the status, the headers and half the body, then close the connection."""
        data = bytes(full.body) if isinstance(full.body, bytes | bytearray) else b""
        resp = web.StreamResponse(status=200, headers=full.headers)
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        return self._drop(request)

    def _drop(self, request: web.BaseRequest) -> web.StreamResponse:
        """Close the connection without an answer (RST, like a crashed upstream)."""
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # aiohttp fails to write this to the closed transport and drops it quietly.
        return web.Response(status=500)

    def _fault_reply(
        self, fault: str, cfg: MockConfig, headers: dict[str, str]
    ) -> web.StreamResponse:
        if fault == "429":
            wait = format_seconds(cfg.retry_after)
            headers["Retry-After"] = wait
            headers["retry-after-ms"] = str(math.ceil(cfg.retry_after * 1000))
            body = error_body(
                f"Rate limit reached {_INJECTED}. Please try again in {wait}s.",
                "requests",
                None,
                "rate_limit_exceeded",
            )
            return self._reply(429, body, headers)
        if fault in ("529", "498", "429_capacity"):
            status, body = capacity_reply(fault, cfg.headers == "anthropic")
            return self._reply(status, body, headers)
        if fault == "503":
            message = f"The server is overloaded or not ready yet {_INJECTED}."
            return self._reply(503, error_body(message, "server_error", None, None), headers)
        message = f"The server had an error while processing your request {_INJECTED}."
        return self._reply(500, error_body(message, "server_error", None, None), headers)


def _model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def _announce(url: str) -> None:
    print(f"conveyor mock server listening on {url} (Ctrl+C to stop)", file=sys.stderr, flush=True)


def serve(
    config: MockConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    allow_remote: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the mock server in the foreground until Ctrl+C (``conveyor mock``).

    `on_ready` gets the base URL once listening (default: one line on stderr).
    A host other than loopback needs ``allow_remote=True``.
    """
    server = MockServer(config, host=host, port=port, allow_remote=allow_remote)
    announce = _announce if on_ready is None else on_ready
    run_until_interrupted(server, announce)
