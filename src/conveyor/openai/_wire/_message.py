"""A response's head read into status, version and `Headers`; its body's
Content-Encoding undone; the transport's errors."""

from __future__ import annotations

import zlib

__all__ = [
    "MAX_HEAD",
    "BadResponse",
    "ConnectError",
    "CutOff",
    "Disconnected",
    "Headers",
    "Result",
    "WireError",
    "decode",
    "parse_head",
    "tokens",
]

MAX_HEAD = 64 * 1024  # bytes of a response's status line and headers


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


def parse_head(head: str) -> tuple[int, str, Headers]:
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


def tokens(value: str | None) -> list[str]:
    return [t.strip().lower() for t in value.split(",")] if value else []


def decode(body: bytes, coding: str) -> bytes:
    """The body without its Content-Encoding (gzip, deflate; identity)."""
    for c in reversed(tokens(coding)):
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
