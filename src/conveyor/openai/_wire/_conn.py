"""One connection as an asyncio protocol: writes a request, parses its
answer as the bytes arrive (RFC 9112 framing)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, cast

from ._message import (
    MAX_HEAD,
    BadResponse,
    CutOff,
    Disconnected,
    Headers,
    Result,
    WireError,
    decode,
    parse_head,
    tokens,
)

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["SLICE_BYTES", "Conn"]

SLICE_BYTES = 256 * 1024  # a body above this is written in slices of this size
_MAX_CHUNK_LINE = 4096  # a chunk-size line (with extensions)
_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE, _DONE = range(7)


class Conn(asyncio.Protocol):
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
        status, version, headers = parse_head(head)
        if status < 200:
            if status == 101:
                raise BadResponse("101 Switching Protocols to a request that asked for none")
            return  # 100 Continue, 103 Early Hints: the answer follows
        self._status = status
        self._headers = headers
        conn = headers.get("connection")
        if version == "1.0":
            keep = conn is not None and "keep-alive" in tokens(conn)
        else:
            keep = conn is None or "close" not in tokens(conn)
        self.reusable = keep
        te = headers.get("transfer-encoding")
        if self._no_body or status in (204, 304):
            self._finish(b"")
        elif te is not None:
            if "content-length" in headers:
                self.reusable = False  # both: TE wins, then close (RFC 9112 6.3)
            if tokens(te)[-1:] == ["chunked"]:
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
            body = decode(body, coding)
        if self._buf:  # bytes beyond the answer: we never pipeline, so it is garbage
            self.reusable = False
        self.uses += 1
        self._waiter.set_result((self._status, headers, body))
