"""The HTTP/1.1 transport of the request hot path (`openai/_wire.py`), against
real servers on loopback: the simulated server, and small raw asyncio servers
that send what real endpoints (and the proxies in front of them) may send."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor._base._exceptions import ConfigError, HTTPRetryable
from conveyor.mock import MockServer
from conveyor.openai import _wire
from conveyor.openai._http import Endpoint, OpenAIClient

CHAT = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
OK = b'{"id":"x","object":"chat.completion","choices":[]}'


class Peer:
    """One accepted connection of a raw server, as its handler sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self) -> tuple[bytes, bytes] | None:
        """The next request's head and body, or None when the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        return head, body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Handler = Callable[[Peer], Awaitable[None]]


class Raw:
    """A raw loopback server: each connection runs `handler`; it counts
    connections and notes when each one ended."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.connections = 0
        self.ended = 0
        self.changed = asyncio.Event()
        self.url = ""
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        self.connections += 1
        self.changed.set()
        try:
            await self._handler(Peer(reader, writer))
            # Then wait for the client to close (a handler that returns keeps it open).
            await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.ended += 1
            self.changed.set()

    async def until(self, cond: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not cond():
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def raw_server(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Raw]:
    raw = Raw(handler)
    server = await asyncio.start_server(raw._serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    raw.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1"
    try:
        yield raw
    finally:
        server.close()
        for writer in raw.writers:
            writer.close()
        await server.wait_closed()


def answer(body: bytes = OK, *, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body
    )


def answering(*replies: bytes) -> Handler:
    """A handler answering each request on the connection with the next reply."""

    async def handle(peer: Peer) -> None:
        for reply in replies:
            if await peer.request() is None:
                return
            await peer.send(reply)

    return handle


def keep_answering(reply: bytes = answer()) -> Handler:
    async def handle(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(reply)

    return handle


@asynccontextmanager
async def client(url: str, concurrency: int = 4) -> AsyncIterator[OpenAIClient]:
    async with OpenAIClient(Endpoint(url, "sk-test-key-123456"), concurrency=concurrency) as c:
        yield c


def pool_of(c: OpenAIClient) -> _wire.Pool:
    pool = c._pool
    assert pool is not None
    return pool


# -- against the simulated server -------------------------------------------------------


async def test_the_mock_answers_over_kept_alive_connections(
    start_mock: Callable[..., MockServer],
) -> None:
    """GET and POST through the pool; 200 requests at concurrency 5 open at most
    5 connections, and the server never sees more than 5 at once."""
    server = start_mock(api_key="sk-test-key-123456")
    async with client(server.base_url, concurrency=5) as c:
        status, models = await c.get("/models")
        assert status == 200
        assert models["object"] == "list"
        answers = await asyncio.gather(*(c.post("/chat/completions", CHAT) for _ in range(200)))
        assert all(a.status == 200 and a.body["object"] == "chat.completion" for a in answers)
        assert all(a.request_id for a in answers)
        pool = pool_of(c)
        assert pool.peak <= 5
        assert pool.opened <= 5
    assert server.stats.max_in_flight <= 5


async def test_a_wrong_key_and_a_rate_limit_are_translated(
    start_mock: Callable[..., MockServer],
) -> None:
    """The engine's errors come out as before: a 429 is retryable with the
    server's Retry-After, read from the headers case-insensitively."""
    server = start_mock(rate_429=1.0, seed=3)
    async with client(server.base_url) as c:
        with pytest.raises(HTTPRetryable) as info:
            await c.post("/chat/completions", CHAT)
    assert info.value.status_code == 429
    assert info.value.retry_after is not None


# -- framing ----------------------------------------------------------------------------


async def test_a_chunked_body_with_trailers() -> None:
    """Chunks (with an extension) joined; trailers read and dropped; the
    connection stays usable for the next request."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        b"5;ext=1\r\n" + OK[:5] + b"\r\n" + f"{len(OK) - 5:x}".encode() + b"\r\n" + OK[5:]
        + b"\r\n0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n"
    )  # fmt: skip
    async with raw_server(answering(chunked, answer())) as srv, client(srv.url) as c:
        first = await c.post("/chat/completions", CHAT)
        second = await c.post("/chat/completions", CHAT)
        assert first.raw == OK
        assert second.raw == OK
        assert srv.connections == 1


async def test_a_chunked_body_arriving_a_byte_at_a_time() -> None:
    """The parser keeps its place across reads of any size."""
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(OK):x}".encode() + b"\r\n" + OK + b"\r\n0\r\n\r\n"
    )  # fmt: skip

    async def handle(peer: Peer) -> None:
        await peer.request()
        for i in range(len(reply)):
            await peer.send(reply[i : i + 1])

    async with raw_server(handle) as srv, client(srv.url) as c:
        assert (await c.post("/chat/completions", CHAT)).raw == OK


async def test_a_body_until_the_connection_closes() -> None:
    """No Content-Length, no chunking: the body is what came before the close."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK)
        peer.writer.close()

    async with raw_server(handle) as srv, client(srv.url) as c:
        assert (await c.post("/chat/completions", CHAT)).raw == OK
        assert (await c.post("/chat/completions", CHAT)).raw == OK
        assert srv.connections == 2


async def test_a_body_cut_off_mid_content_length() -> None:
    """The head arrived, then the connection closed: a retryable error that
    says the body was cut off and how long it should have been."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nx-request-id: r1\r\n\r\n{")
        peer.writer.close()

    async with raw_server(handle) as srv, client(srv.url) as c:
        with pytest.raises(HTTPRetryable, match=r"cut off .*Content-Length 100") as info:
            await c.post("/chat/completions", CHAT)
    assert info.value.status_code == 200
    assert info.value.meta["request_id"] == "r1"


async def test_interim_responses_are_skipped() -> None:
    """A 100 Continue (and a 103) before the answer: the answer is the 200."""
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + answer()
    )
    async with raw_server(answering(reply)) as srv, client(srv.url) as c:
        got = await c.post("/chat/completions", CHAT)
        assert got.status == 200
        assert got.raw == OK


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_bodies_are_decoded(coding: str) -> None:
    """A proxy that compresses although we asked for identity: gzip, deflate
    (zlib-wrapped, and raw as some servers send it) are decoded."""
    if coding == "gzip":
        body = gzip.compress(OK)
    elif coding == "deflate":
        body = zlib.compress(OK)
    else:
        squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body = squeeze.compress(OK) + squeeze.flush()
    name = b"deflate" if "deflate" in coding else b"gzip"
    reply = answer(body, extra=b"Content-Encoding: " + name + b"\r\n")
    async with raw_server(answering(reply)) as srv, client(srv.url) as c:
        assert (await c.post("/chat/completions", CHAT)).body["object"] == "chat.completion"


async def test_an_unknown_content_encoding_is_a_bad_response() -> None:
    reply = answer(b"xx", extra=b"Content-Encoding: br\r\n")
    async with raw_server(answering(reply)) as srv, client(srv.url) as c:
        with pytest.raises(HTTPRetryable, match=r"bad response .*Content-Encoding 'br'"):
            await c.post("/chat/completions", CHAT)


async def test_repeated_headers_and_any_case() -> None:
    """Headers are read case-insensitively; a repeated name keeps every value."""
    extra = b"X-Request-ID: abc\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nX-Folded: one\r\n two\r\n"
    async with raw_server(answering(answer(extra=extra))) as srv, client(srv.url) as c:
        status, _, request_id, headers, _ = await c.exchange("/chat/completions", CHAT)
    assert (status, request_id) == (200, "abc")
    assert headers.get("set-cookie") == "a=1"
    assert headers.getall("Set-Cookie") == ["a=1", "b=2"]
    assert headers["CONTENT-LENGTH"] == str(len(OK))
    assert headers.get("x-folded") == "one two"
    assert "Content-Type" in headers


async def test_a_header_section_over_the_limit() -> None:
    """Headers beyond 64 KiB: a clear bad-response error, not a buffer that grows."""
    big = b"X-Big: " + b"a" * (_wire.MAX_HEAD + 10) + b"\r\n"
    async with raw_server(answering(answer(extra=big))) as srv, client(srv.url) as c:
        with pytest.raises(HTTPRetryable, match="header section exceeds 65536 bytes"):
            await c.post("/chat/completions", CHAT)


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
    ],
)
async def test_malformed_responses(reply: bytes, says: str) -> None:
    """Bytes that are not an HTTP/1.x answer: a retryable bad response naming why."""
    async with raw_server(answering(reply)) as srv, client(srv.url) as c:
        with pytest.raises(HTTPRetryable, match=f"bad response from {srv.url}: .*{says}"):
            await c.post("/chat/completions", CHAT)


# -- connections ------------------------------------------------------------------------


async def test_connection_close_is_honoured() -> None:
    """`Connection: close` in an answer: that connection is closed after the body."""
    close = answer(extra=b"Connection: close\r\n")
    async with raw_server(answering(close)) as srv, client(srv.url) as c:
        await c.post("/chat/completions", CHAT)
        await srv.until(lambda: srv.ended == 1)
        await c.post("/chat/completions", CHAT)
        assert srv.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    """uvicorn closes idle keep-alive connections after 5 s: the next request
    goes out on a fresh connection and succeeds."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer())  # kept alive, as far as the client knows
        peer.writer.close()

    async with raw_server(handle) as srv, client(srv.url) as c:
        await c.post("/chat/completions", CHAT)
        await srv.until(lambda: srv.ended == 1)
        assert (await c.post("/chat/completions", CHAT)).raw == OK
        assert srv.connections == 2


async def test_a_reused_connection_closed_under_the_request_is_retried_once() -> None:
    """The server closed a kept-alive connection as the next request arrived
    (no byte of an answer): sent once more, on a new connection."""

    async def handle(peer: Peer) -> None:
        if srv.connections == 1:
            await peer.request()
            await peer.send(answer())
            await peer.request()  # the second request: closed unanswered
            peer.writer.close()
            return
        await keep_answering()(peer)

    async with raw_server(handle) as srv, client(srv.url) as c:
        await c.post("/chat/completions", CHAT)
        assert (await c.post("/chat/completions", CHAT)).raw == OK
        assert srv.connections == 2


async def test_a_fresh_connection_closed_unanswered_is_a_connection_error() -> None:
    """On a new connection there is no retry: the engine's retry policy decides."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        peer.writer.close()

    async with raw_server(handle) as srv, client(srv.url) as c:
        with pytest.raises(HTTPRetryable, match=r"connection error talking to .*disconnected"):
            await c.post("/chat/completions", CHAT)
        assert srv.connections == 1


async def test_nothing_listening_is_a_connection_error() -> None:
    async with raw_server(keep_answering()) as srv:
        url = srv.url
    async with client(url) as c:
        with pytest.raises(HTTPRetryable, match=r"connection error talking to .*Cannot connect"):
            await c.post("/chat/completions", CHAT)
        assert pool_of(c).size == 0


async def test_a_cancelled_request_closes_its_connection() -> None:
    """Cancelled mid-answer (the engine's timeout): the connection is closed,
    never reused; the next request opens another; the timeout passes through."""

    async def handle(peer: Peer) -> None:
        if await peer.request() is None:
            return
        if srv.connections == 1:
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
            await peer.reader.read()  # until the client closes
            return
        await peer.send(answer())

    async with raw_server(handle) as srv, client(srv.url) as c:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await c.post("/chat/completions", CHAT)
        await srv.until(lambda: srv.ended == 1)
        assert pool_of(c).size == 0
        assert (await c.post("/chat/completions", CHAT)).raw == OK
        assert srv.connections == 2


async def test_the_pool_never_exceeds_the_concurrency() -> None:
    """50 requests at once through a pool of 3: at most 3 connections, each reused."""
    in_flight = 0
    most = 0
    gate = asyncio.Event()

    async def handle(peer: Peer) -> None:
        nonlocal in_flight, most
        while await peer.request() is not None:
            in_flight += 1
            most = max(most, in_flight)
            if most == 3:
                gate.set()
            await gate.wait()
            in_flight -= 1
            await peer.send(answer())

    async with raw_server(handle) as srv, client(srv.url, concurrency=3) as c:
        answers = await asyncio.gather(*(c.post("/chat/completions", CHAT) for _ in range(50)))
        assert len(answers) == 50
        assert srv.connections == 3
        assert pool_of(c).peak == 3
    assert most == 3


async def test_a_waiter_cancelled_leaves_the_pool_whole() -> None:
    """A request cancelled while it waits for a connection takes no slot."""
    release = asyncio.Event()

    async def handle(peer: Peer) -> None:
        while await peer.request() is not None:
            await release.wait()
            await peer.send(answer())

    async with raw_server(handle) as srv, client(srv.url, concurrency=1) as c:
        first = asyncio.create_task(c.post("/chat/completions", CHAT))
        await srv.until(lambda: srv.connections == 1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await c.post("/chat/completions", CHAT)
        release.set()
        assert (await first).raw == OK
        assert (await c.post("/chat/completions", CHAT)).raw == OK
        assert srv.connections == 1


async def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    async with raw_server(keep_answering()) as srv:
        host, port = srv.url.split("//")[1].split("/")[0].split(":")
        pool = _wire.Pool(host, int(port), tls=None, limit=2, idle_timeout=0.05)
        try:
            head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
            status, _, body = await pool.request(head, None)
            assert (status, body) == (200, OK)
            await srv.until(lambda: srv.ended == 1)
            assert pool.size == 0
        finally:
            await pool.close()


async def test_a_large_body_is_sent_whole_in_slices() -> None:
    """A 3 MB body (above the slice size) arrives whole, while the server
    reads slowly (the transport's flow control holds the writer back)."""
    got: list[bytes] = []

    async def handle(peer: Peer) -> None:
        head = await peer.reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = b""
        while len(body) < length:
            body += await peer.reader.read(65536)
            await asyncio.sleep(0)
        got.append(body)
        await peer.send(answer())

    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 3_000_000}]}
    async with raw_server(handle) as srv, client(srv.url) as c:
        assert (await c.post("/chat/completions", big)).raw == OK
    assert got == [orjson.dumps(big)]


async def test_the_request_head() -> None:
    """What goes out: the path under the base URL, Host with its port, the
    key as a bearer token, the -H headers (their spelling wins), the length."""
    heads: list[bytes] = []

    async def handle(peer: Peer) -> None:
        req = await peer.request()
        assert req is not None
        heads.append(req[0])
        await peer.send(answer())

    async with raw_server(handle) as srv:
        endpoint = Endpoint(srv.url, "sk-test-key-123456", (("content-type", "application/x"),))
        async with OpenAIClient(endpoint, concurrency=1) as c:
            await c.post("/v1/chat/completions", CHAT)
    head = heads[0].decode()
    port = srv.url.split(":")[2].split("/")[0]
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{port}\r\n" in head
    assert "\r\nAuthorization: Bearer sk-test-key-123456\r\n" in head
    assert "\r\ncontent-type: application/x\r\n" in head
    assert "Content-Type" not in head
    assert f"\r\nContent-Length: {len(orjson.dumps(CHAT))}\r\n" in head


def test_a_header_with_a_newline_is_refused() -> None:
    with pytest.raises(ConfigError, match="without CR or LF"):
        OpenAIClient(
            Endpoint("http://127.0.0.1:9/v1", None, (("X-A", "b\r\nX-B: c"),)), concurrency=1
        )


# -- https ------------------------------------------------------------------------------


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), and its key."""
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@needs_openssl
async def test_https_on_loopback(certificate: tuple[Path, Path]) -> None:
    """TLS with the server's name checked, kept alive like plain HTTP; a
    certificate the client does not trust is a connection error."""
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with raw_server(keep_answering(), tls=server_ctx) as srv:
        port = int(srv.url.split(":")[2].split("/")[0])
        head = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        pool = _wire.Pool("127.0.0.1", port, tls=trusting, limit=2)
        try:
            for _ in range(3):
                assert await pool.request(head, None) == (200, pool_headers(), OK)
            assert pool.opened == 1
        finally:
            await pool.close()
        stranger = _wire.Pool("127.0.0.1", port, tls=ssl.create_default_context(), limit=1)
        try:
            with pytest.raises(_wire.ConnectError, match="certificate verify failed"):
                await stranger.request(head, None)
        finally:
            await stranger.close()


def pool_headers() -> _wire.Headers:
    h = _wire.Headers()
    h._add("content-type", "application/json")
    h._add("content-length", str(len(OK)))
    return h


# -- addresses and shutdown -------------------------------------------------------------


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    return host, int(port)


async def test_a_name_is_resolved_and_its_addresses_tried_in_turn() -> None:
    """`localhost` may resolve to ::1 first while the server listens on
    127.0.0.1 only: the next address is tried (Happy Eyeballs), and the
    one-after-another fallback (no aiohappyeyeballs) reaches it too."""
    async with raw_server(keep_answering()) as srv:
        _, port = host_port(srv.url)
        head = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n"
        pool = _wire.Pool("localhost", port, tls=None, limit=1)
        try:
            assert (await pool.request(head, None))[0] == 200
            closed = socket.socket()
            closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
            refused = closed.getsockname()
            infos = [
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", refused),
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port)),
            ]
            sock = await pool._one_by_one(infos)
            assert sock.getpeername() == ("127.0.0.1", port)
            sock.close()
            with pytest.raises(ConnectionRefusedError):
                await pool._one_by_one(infos[:1])
            closed.close()
        finally:
            await pool.close()


async def test_closing_the_client_fails_the_waiting_requests() -> None:
    """`__aexit__` closes every connection: a request in flight and one
    waiting for a connection both end with a connection error, none hangs."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.reader.read()

    async with raw_server(handle) as srv:
        async with client(srv.url, concurrency=1) as c:
            tasks = [asyncio.create_task(c.post("/chat/completions", CHAT)) for _ in range(2)]
            await srv.until(lambda: srv.connections == 1)
            pool = pool_of(c)
        async with asyncio.timeout(10):
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, HTTPRetryable) for r in results), results
        assert pool.size == 0


async def test_length_and_chunked_together_close_after_the_body() -> None:
    """Content-Length and chunked at once (a smuggling shape): chunked wins,
    and the connection is not reused (RFC 9112 6.3)."""
    both = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(OK):x}".encode() + b"\r\n" + OK + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    async with raw_server(keep_answering(both)) as srv, client(srv.url) as c:
        assert (await c.post("/chat/completions", CHAT)).raw == OK
        assert (await c.post("/chat/completions", CHAT)).raw == OK
        assert srv.connections == 2


async def test_a_close_delimited_body_that_does_not_decode() -> None:
    """A gzip body until close that is not gzip: a bad response, not a hang."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\nnot gzip")
        peer.writer.close()

    async with raw_server(handle) as srv, client(srv.url) as c:
        with pytest.raises(HTTPRetryable, match="cannot decode the gzip body"):
            await c.post("/chat/completions", CHAT)


# -- the parser, property-tested ---------------------------------------------------------


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bytes, list[int]]:
    """A response (framed by length, chunks or close; maybe after a 100), the
    body it carries, and where the server splits its bytes."""
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    head = b"HTTP/1.1 200 OK\r\nX-A: 1\r\n"
    if draw(st.booleans()):
        head = b"HTTP/1.1 100 Continue\r\n\r\n" + head
    if framing == "length":
        wire = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        sizes = draw(st.lists(st.integers(1, 50), max_size=10))
        parts, at = [], 0
        for size in sizes:
            if at < len(body):
                parts.append(b"%x\r\n%b\r\n" % (len(body[at : at + size]), body[at : at + size]))
                at += size
        if at < len(body):
            parts.append(b"%x\r\n%b\r\n" % (len(body) - at, body[at:]))
        trailer = b"T: x\r\n" if draw(st.booleans()) else b""
        wire = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(parts) + b"0\r\n" + trailer
        wire += b"\r\n"
    else:
        wire = head + b"Connection: close\r\n\r\n" + body
    cuts = sorted(draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    return wire, body, cuts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_any_split_of_a_response_reads_the_same(case: tuple[bytes, bytes, list[int]]) -> None:
    """However the server's bytes are split into reads, the body is the one sent."""
    wire, body, cuts = case

    async def handle(peer: Peer) -> None:
        await peer.request()
        start = 0
        for cut in [*cuts, len(wire)]:
            await peer.send(wire[start:cut])
            start = cut
        if b"Connection: close" in wire:
            peer.writer.close()

    async def main() -> tuple[int, bytes]:
        async with raw_server(handle) as srv:
            host, port = host_port(srv.url)
            pool = _wire.Pool(host, port, tls=None, limit=1)
            try:
                async with asyncio.timeout(10):
                    status, headers, got = await pool.request(b"GET / HTTP/1.1\r\n\r\n", None)
                assert headers.get("x-a") == "1"
                return status, got
            finally:
                await pool.close()

    assert asyncio.run(main()) == (200, body)
