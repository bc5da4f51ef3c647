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

from ._message import MAX_HEAD, BadResponse, ConnectError, CutOff, Disconnected, Headers, WireError
from ._pool import DNS_TTL, HAPPY_EYEBALLS_DELAY, SLICE_BYTES, Pool, tls_context

__all__ = [
    "DNS_TTL",
    "HAPPY_EYEBALLS_DELAY",
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
