"""A minimal HTTP/1.1 client over an asyncio protocol: the request hot path (issue 18).

`OpenAIClient` sends every request of a run through one `Pool`: keep-alive
connections to one origin (http or https), at most `limit` of them, idle ones
closed after `idle_timeout`. A request is one write of a precomputed head and
its body (a large body in slices, under the transport's flow control); the
answer is parsed with bytes operations as it arrives.

Why not aiohttp: with a server answering at once, aiohttp's request machinery
(`ClientRequest`, its writer task, `ClientResponse`, the stream reader) was a
third of the CPU a `conveyor run` spent per request (py-spy, issue 18).

What the server may send (RFC 9112): a body by Content-Length, by
`Transfer-Encoding: chunked` (trailers read and dropped), or until the
connection closes; 1xx interim responses are skipped; `Connection: close` (or
HTTP/1.0 without keep-alive) closes the connection after the body; a gzip or
deflate `Content-Encoding` is decoded although we ask for `identity` (a proxy
may not care). A head over `MAX_HEAD` bytes, or one that does not parse, is a
`BadResponse`.

Errors are this module's own (`WireError` and below); `_http` translates them.
A request that fails on a reused connection before any byte of its answer
arrived (the server closed it while it was idle: uvicorn does after 5 s) is
sent once more on a new connection, as browsers and urllib3 do. A cancelled
request closes its connection: a half-used one never goes back to the pool.

Proxies (HTTP(S)_PROXY) are not used, as they were not by the aiohttp session
this replaces (`trust_env` was off).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import zlib
from collections import deque
from typing import Any, cast

__all__ = [
    "MAX_HEAD",
    "SLICE_BYTES",
    "BadResponse",
    "ConnectError",
    "CutOff",
    "Disconnected",
    "Headers",
    "Pool",
    "WireError",
    "tls_context",
]

MAX_HEAD = 64 * 1024  # bytes of a response's status line and headers
SLICE_BYTES = 256 * 1024  # a body above this is written in slices of this size
DNS_TTL = 300.0  # seconds a name lookup is kept (aiohttp's ttl_dns_cache was 300)
HAPPY_EYEBALLS_DELAY = 0.25  # seconds before the next address is tried (aiohttp's default)
_MAX_CHUNK_LINE = 4096  # a chunk-size line (with extensions)
_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE, _DONE = range(7)


class WireError(Exception):
    """A failure of the HTTP transport."""


class ConnectError(WireError):
    """No connection could be made (name lookup, refused, TLS, timeout)."""


class Disconnected(WireError):
    """The connection was lost before the response's head was complete."""

    def __init__(self, message: str, *, untouched: bool) -> None:
        super().__init__(message)
        self.untouched = untouched  # not one byte of the answer had arrived


class CutOff(WireError):
    """The head arrived, then the body was cut off."""

    def __init__(self, message: str, status: int, headers: Headers) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class BadResponse(WireError):
    """The server's bytes are not an HTTP/1.x response we can read."""


class Headers(dict[str, str]):
    """A response's headers: names lower-cased, `get` case-insensitive, the
    first value of a repeated name (`getall` has every one)."""

    __slots__ = ("_more",)

    def __init__(self) -> None:
        super().__init__()
        self._more: dict[str, list[str]] | None = None

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())

    def getall(self, name: str) -> list[str]:
        """Every value of `name`, in the order received."""
        key = name.lower()
        first = dict.get(self, key)
        if first is None:
            return []
        more = self._more.get(key, []) if self._more is not None else []
        return [first, *more]

    def _add(self, key: str, value: str) -> None:
        if not dict.__contains__(self, key):
            dict.__setitem__(self, key, value)
            return
        if self._more is None:
            self._more = {}
        self._more.setdefault(key, []).append(value)


def _parse_head(head: str) -> tuple[int, str, Headers]:
    """Status, version and headers of a head (without its blank line)."""
    lines = head.split("\r\n")
    first = lines[0]
    # "HTTP/1.1 200 OK" (the reason phrase may be empty or absent)
    code = first[9:12]
    if (
        not first.startswith("HTTP/1.")
        or first[8:9] != " "
        or first[12:13] not in ("", " ")
        or not code.isdigit()
        or not code.isascii()
        or len(code) != 3
    ):
        raise BadResponse(f"not an HTTP/1.x status line: {first[:80]!r}")
    headers = Headers()
    last = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):  # obsolete line folding (RFC 9112 5.2): one space
            if not last:
                raise BadResponse("a folded header line with no header before it")
            folded = dict.__getitem__(headers, last) + " " + line.strip(" \t")
            dict.__setitem__(headers, last, folded)
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t":
            raise BadResponse(f"a malformed header line: {line[:80]!r}")
        last = name.lower()
        headers._add(last, value.strip(" \t"))
    return int(code), first[5:8], headers


def _tokens(value: str | None) -> list[str]:
    return [t.strip().lower() for t in value.split(",")] if value else []


def _decode(body: bytes, coding: str) -> bytes:
    """The body without its Content-Encoding (gzip, deflate; identity)."""
    for c in reversed(_tokens(coding)):
        if c in ("", "identity"):
            continue
        try:
            if c in ("gzip", "x-gzip"):
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                body = d.decompress(body) + d.flush()
            elif c == "deflate":  # zlib-wrapped as RFC 9110 says, or raw as some send it
                try:
                    body = zlib.decompress(body)
                except zlib.error:
                    body = zlib.decompress(body, -zlib.MAX_WBITS)
            else:
                raise BadResponse(f"a body in Content-Encoding {c!r}, which conveyor cannot read")
        except zlib.error as exc:
            raise BadResponse(f"cannot decode the {c} body: {exc}") from None
    return body


# (status, headers, body) of one answer.
Result = tuple[int, Headers, bytes]
_AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


class _Conn(asyncio.Protocol):
    """One connection: writes a request, parses its answer."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.uses = 0  # requests answered on it
        self.counted = True  # holds one of the pool's slots
        self.idle_since = 0.0
        self._buf = bytearray()
        self._waiter: asyncio.Future[Result] | None = None
        self._state = _DONE
        self._no_body = False
        self._status = 0
        self._headers: Headers | None = None
        self._remaining = 0
        self._parts: list[bytes] = []
        self._got = False  # some byte of the current answer arrived
        self.reusable = False
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but have its methods.
        self.transport = transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pool._opened(self)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for (or after the answer): the connection is
            # in no state to carry another request.
            self.reusable = False
            self.close()
            return
        self._got = True
        self._buf += data
        try:
            self._parse()
        except WireError as exc:
            self.reusable = False
            waiter.set_exception(exc)
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._state == _UNTIL_CLOSE and exc is None:
                body = bytes(self._buf)
                self._buf.clear()
                try:
                    self._finish(body)
                except WireError as err:  # a body that does not decode
                    waiter.set_exception(err)
            elif self._state in (_HEAD, _DONE):
                reason = f": {exc}" if exc else ""
                waiter.set_exception(
                    Disconnected(f"Server disconnected{reason}", untouched=not self._got)
                )
            else:
                assert self._headers is not None
                reason = f": {type(exc).__name__}: {exc}" if exc else ""
                waiter.set_exception(
                    CutOff(
                        f"Response payload is not completed{reason}", self._status, self._headers
                    )
                )
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        self._pool._lost(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- one request ---------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    async def send(self, head: bytes, body: bytes | None, *, no_body: bool) -> Result:
        """Write one request, wait for its whole answer. The caller closes the
        connection if this raises (or is cancelled)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise Disconnected("Server disconnected", untouched=True)
        waiter: asyncio.Future[Result] = self._pool.loop.create_future()
        self._waiter = waiter
        self._state = _HEAD
        self._got = False
        self._no_body = no_body
        self.reusable = False
        if body is None:
            transport.write(head)
        elif len(body) <= SLICE_BYTES:
            transport.write(head + body)
        else:
            transport.write(head)
            await self._write_sliced(transport, body, waiter)
        return await waiter

    async def _write_sliced(
        self, transport: asyncio.Transport, body: bytes, waiter: asyncio.Future[Result]
    ) -> None:
        """`body` as views of its bytes, a slice a write, each once the
        transport has room (nothing copied; at most a slice held back)."""
        view = memoryview(body)
        for start in range(0, len(view), SLICE_BYTES):
            if waiter.done() or self.closed:
                return  # answered early, or gone: the answer (or error) says
            transport.write(view[start : start + SLICE_BYTES])
            while self._paused and not self.closed and not waiter.done():
                self._drained = self._pool.loop.create_future()
                try:
                    await self._drained
                finally:
                    self._drained = None

    # -- parsing -------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(_HEAD_END)
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise BadResponse(f"the response's header section exceeds {MAX_HEAD} bytes")
                    return
                if end > MAX_HEAD:
                    raise BadResponse(f"the response's header section exceeds {MAX_HEAD} bytes")
                head = buf[:end].decode("utf-8", "surrogateescape")
                del buf[: end + 4]
                self._start(head)
            elif state == _LENGTH:
                n = self._remaining
                if len(buf) < n:
                    return
                if len(buf) == n:
                    body = bytes(buf)
                    buf.clear()
                else:
                    body = bytes(buf[:n])
                    del buf[:n]
                self._finish(body)
            elif state == _CHUNK_SIZE:
                end = buf.find(_CRLF)
                if end < 0:
                    if len(buf) > _MAX_CHUNK_LINE:
                        raise BadResponse("a chunk-size line too long")
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    size = int(size_text, 16)
                except ValueError:
                    size = -1
                if size < 0 or not size_text.isalnum():
                    raise BadResponse(f"a malformed chunk size: {size_text[:40]!r}")
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                n = self._remaining
                if len(buf) < n + 2:
                    return
                if buf[n : n + 2] != _CRLF:
                    raise BadResponse("a chunk not followed by CRLF")
                self._parts.append(bytes(buf[:n]))
                del buf[: n + 2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if buf[:2] == _CRLF:
                    del buf[:2]
                else:
                    end = buf.find(_HEAD_END)
                    if end < 0:
                        if len(buf) > MAX_HEAD:
                            raise BadResponse(f"the trailer section exceeds {MAX_HEAD} bytes")
                        return
                    del buf[: end + 4]  # trailers (RFC 9112 7.1.2): read, not kept
                body = b"".join(self._parts)
                self._parts = []
                self._finish(body)
            else:  # _UNTIL_CLOSE (the body is what is in buf when the server closes), _DONE
                return

    def _start(self, head: str) -> None:
        status, version, headers = _parse_head(head)
        if status < 200:
            if status == 101:
                raise BadResponse("101 Switching Protocols to a request that asked for none")
            return  # 100 Continue, 103 Early Hints: the answer follows
        self._status = status
        self._headers = headers
        conn = headers.get("connection")
        if version == "1.0":
            keep = conn is not None and "keep-alive" in _tokens(conn)
        else:
            keep = conn is None or "close" not in _tokens(conn)
        self.reusable = keep
        te = headers.get("transfer-encoding")
        if self._no_body or status in (204, 304):
            self._finish(b"")
        elif te is not None:
            if "content-length" in headers:
                self.reusable = False  # both: TE wins, then close (RFC 9112 6.3)
            if _tokens(te)[-1:] == ["chunked"]:
                self._state = _CHUNK_SIZE
            else:
                self.reusable = False
                self._state = _UNTIL_CLOSE
        else:
            length = headers.get("content-length")
            if length is None:
                self.reusable = False
                self._state = _UNTIL_CLOSE
                return
            values = {v.strip() for v in length.split(",")}
            more = headers.getall("content-length")[1:]
            values.update(v.strip() for m in more for v in m.split(","))
            if len(values) != 1 or not (value := values.pop()).isdigit() or not value.isascii():
                raise BadResponse(f"a malformed Content-Length: {length[:40]!r}")
            self._remaining = int(value)
            if self._remaining == 0:
                self._finish(b"")
            else:
                self._state = _LENGTH

    def _finish(self, body: bytes) -> None:
        self._state = _DONE
        headers = self._headers
        assert headers is not None
        assert self._waiter is not None
        coding = headers.get("content-encoding")
        if coding is not None:
            body = _decode(body, coding)
        if self._buf:  # bytes beyond the answer: we never pipeline, so it is garbage
            self.reusable = False
        self.uses += 1
        self._waiter.set_result((self._status, headers, body))


_tls_lock = threading.Lock()
_tls_ctx: ssl.SSLContext | None = None


def _make_tls_context() -> ssl.SSLContext:
    global _tls_ctx
    with _tls_lock:
        if _tls_ctx is None:
            ctx = ssl.create_default_context()  # the system's CA store, verified, with SNI
            ctx.set_alpn_protocols(["http/1.1"])
            _tls_ctx = ctx
        return _tls_ctx


async def tls_context() -> ssl.SSLContext:
    """The verifying TLS context, made once; its CA store read off the loop."""
    if _tls_ctx is not None:
        return _tls_ctx
    return await asyncio.to_thread(_make_tls_context)


class Pool:
    """Keep-alive connections to one origin, at most `limit` open at once."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        limit: int,
        connect_timeout: float = 30.0,
        idle_timeout: float = 60.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self._tls = tls
        self.limit = max(1, limit)
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._idle: list[_Conn] = []  # newest last: taken from the end
        self._count = 0  # connections open or being opened (each holds a slot)
        self._conns: set[_Conn] = set()  # every transport not yet lost
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._all_lost: asyncio.Future[None] | None = None
        self._addrs: list[_AddrInfo] = []
        self._addrs_until = 0.0
        self.opened = 0  # connections ever made (for tests and curiosity)
        self.peak = 0  # most slots taken at once

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return self._count

    async def request(self, head: bytes, body: bytes | None, *, no_body: bool = False) -> Result:
        """Send one request, return its answer."""
        conn = await self._acquire(fresh=False)
        reused = conn.uses > 0
        try:
            return await self._send(conn, head, body, no_body)
        except Disconnected as exc:
            if not (exc.untouched and reused):
                raise
        # It was reused, and the server had closed it: once more on a new one.
        conn = await self._acquire(fresh=True)
        return await self._send(conn, head, body, no_body)

    async def _send(self, conn: _Conn, head: bytes, body: bytes | None, no_body: bool) -> Result:
        try:
            result = await conn.send(head, body, no_body=no_body)
        except BaseException:
            conn.abort()  # cancelled or failed mid-way: never reused
            self._release(conn, reuse=False)
            raise
        self._release(conn, reuse=conn.reusable and not conn.closed)
        return result

    async def _acquire(self, *, fresh: bool) -> _Conn:
        if self._closed:
            raise ConnectError("the client is closed")
        idle = self._idle
        while idle and not fresh:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self._forget(conn)
        while self._count >= self.limit:
            waiter: asyncio.Future[_Conn | None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                given = await waiter
            except BaseException:
                # Cancelled: a waiter still queued is skipped when its turn
                # comes; one that was handed a connection (or a slot) as it
                # was cancelled passes it on.
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    late = waiter.result()
                    if late is not None:
                        self._release(late, reuse=not late.closed)
                    else:
                        self._wake()
                raise
            if given is not None:
                if not given.closed and not fresh:
                    return given
                given.close()
                self._forget(given)
        self._count += 1
        self.peak = max(self.peak, self._count)
        try:
            return await self._connect()
        except BaseException:
            self._count -= 1
            self._wake()
            raise

    async def _addresses(self) -> list[_AddrInfo]:
        """The host's addresses, looked up at most every `DNS_TTL` seconds."""
        now = self.loop.time()
        if self._addrs and now < self._addrs_until:
            return self._addrs
        infos = await self.loop.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        if not infos:
            raise OSError(f"no address for {self.host}")
        self._addrs, self._addrs_until = list(infos), now + DNS_TTL
        return self._addrs

    async def _socket(self) -> socket.socket:
        """A connected socket: the addresses tried the Happy Eyeballs way
        (RFC 8305: the next one 0.25 s after the last, address families
        interleaved) where `aiohappyeyeballs` (aiohttp's own dependency from
        3.10) is there, one after another otherwise."""
        infos = await self._addresses()
        try:
            from aiohappyeyeballs import start_connection
        except ImportError:  # aiohttp < 3.10
            return await self._one_by_one(infos)
        return await start_connection(
            infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, loop=self.loop
        )

    async def _one_by_one(self, infos: list[_AddrInfo]) -> socket.socket:
        last: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await self.loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        assert last is not None
        raise last

    async def _connect(self) -> _Conn:
        host, port = self.host, self.port
        try:
            async with asyncio.timeout(self._connect_timeout):
                sock = await self._socket()
                try:
                    _, conn = await self.loop.create_connection(
                        lambda: _Conn(self),
                        sock=sock,
                        ssl=self._tls,
                        server_hostname=host if self._tls is not None else None,
                    )
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise ConnectError(f"Connection timeout to host {host}:{port}") from None
        except OSError as exc:
            how = "default" if self._tls is not None else "False"
            raise ConnectError(
                f"Cannot connect to host {host}:{port} ssl:{how} [{type(exc).__name__}: {exc}]"
            ) from None
        self.opened += 1
        return conn

    def _release(self, conn: _Conn, *, reuse: bool) -> None:
        if not reuse or self._closed:
            conn.close()
            self._forget(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_at(conn.idle_since + self._idle_timeout, self._expire)

    def _forget(self, conn: _Conn) -> None:
        """`conn` no longer holds a slot (once per connection)."""
        if conn.counted:
            conn.counted = False
            self._count -= 1
            self._wake()

    def _wake(self) -> None:
        """A slot is free: let one waiter connect."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _expire(self) -> None:
        self._sweep = None
        deadline = self.loop.time() - self._idle_timeout
        idle = self._idle
        while idle and (idle[0].closed or idle[0].idle_since <= deadline):
            conn = idle.pop(0)
            conn.close()
            self._forget(conn)
        if idle:
            self._sweep = self.loop.call_at(idle[0].idle_since + self._idle_timeout, self._expire)

    def _opened(self, conn: _Conn) -> None:
        self._conns.add(conn)

    def _lost(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        if conn in self._idle:  # the server closed it while idle
            self._idle.remove(conn)
            self._forget(conn)
        if not self._conns and self._all_lost is not None and not self._all_lost.done():
            self._all_lost.set_result(None)

    async def close(self, *, grace: float = 2.0) -> None:
        """Close every connection; wait (at most `grace`) until they are gone."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._idle.clear()
        for conn in list(self._conns):
            if self._tls is not None:
                conn.abort()  # no TLS close_notify exchange to wait for
            else:
                conn.close()
        self._wake_all()
        if self._conns:
            self._all_lost = self.loop.create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._all_lost

    def _wake_all(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectError("the client is closed"))
