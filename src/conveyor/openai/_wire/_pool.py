"""Keep-alive connections to one origin, at most `limit` of them: who
waits for one, when a new one is made (name lookup, Happy Eyeballs, TLS),
when an idle one is closed."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections import deque
from typing import Any

from ._conn import SLICE_BYTES, Conn
from ._message import ConnectError, Disconnected, Result

__all__ = ["DNS_TTL", "HAPPY_EYEBALLS_DELAY", "SLICE_BYTES", "Pool", "tls_context"]

DNS_TTL = 300.0  # seconds a name lookup is kept (aiohttp's ttl_dns_cache was 300)
HAPPY_EYEBALLS_DELAY = 0.25  # seconds before the next address is tried (aiohttp's default)
_AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


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
        self._idle: list[Conn] = []  # newest last: taken from the end
        self._count = 0  # connections open or being opened (each holds a slot)
        self._conns: set[Conn] = set()  # every transport not yet lost
        self._waiters: deque[asyncio.Future[Conn | None]] = deque()
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

    async def _send(self, conn: Conn, head: bytes, body: bytes | None, no_body: bool) -> Result:
        try:
            result = await conn.send(head, body, no_body=no_body)
        except BaseException:
            conn.abort()  # cancelled or failed mid-way: never reused
            self._release(conn, reuse=False)
            raise
        self._release(conn, reuse=conn.reusable and not conn.closed)
        return result

    async def _acquire(self, *, fresh: bool) -> Conn:
        if self._closed:
            raise ConnectError("the client is closed")
        idle = self._idle
        while idle and not fresh:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self._forget(conn)
        while self._count >= self.limit:
            waiter: asyncio.Future[Conn | None] = self.loop.create_future()
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

    async def _connect(self) -> Conn:
        host, port = self.host, self.port
        try:
            async with asyncio.timeout(self._connect_timeout):
                sock = await self._socket()
                try:
                    _, conn = await self.loop.create_connection(
                        lambda: Conn(self),
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

    def _release(self, conn: Conn, *, reuse: bool) -> None:
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

    def _forget(self, conn: Conn) -> None:
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

    def _opened(self, conn: Conn) -> None:
        self._conns.add(conn)

    def _lost(self, conn: Conn) -> None:
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
