"""Importing aiohttp without reading the CA store until TLS needs it (issue 18).

aiohttp builds its two default TLS contexts when `aiohttp.connector` is
imported, and each reads the system's CA bundle (`set_default_verify_paths`,
through `ssl.create_default_context` for one): about 90 ms of a 200-300 ms
import here, paid by every run, also one that only speaks plain HTTP (a local
vLLM, the mock server, a proxy on loopback).

`deferred_ca_store()` wraps that import: a context that asks for the default
CA store while it runs gets the store on its first use instead, before its
first handshake (`wrap_bio`, `wrap_socket`) or any look at its store
(`get_ca_certs`, `cert_store_stats`), from any thread. Nothing else about the
context changes, and verification is as strict as ever (a context that never
got its store would verify nothing and fail closed, but none can be used
before it has it). `load_deferred()` reads it now: the HTTP client calls it
off the event loop before talking to an https URL, so no handshake stalls the
loop on disk reads. Contexts made outside the import are untouched.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["deferred_ca_store", "load_deferred", "pending"]

# What reads, or depends on, the store: hooked on each deferred context.
_FIRST_USES = ("wrap_bio", "wrap_socket", "get_ca_certs", "cert_store_stats")
_NAME = "set_default_verify_paths"
_REAL: Callable[[ssl.SSLContext], None] = ssl.SSLContext.set_default_verify_paths
_lock = threading.Lock()
_pending: list[ssl.SSLContext] = []


def _first_use(ctx: ssl.SSLContext, original: Callable[..., Any]) -> Callable[..., Any]:
    def use(*args: Any, **kwargs: Any) -> Any:
        load_deferred(ctx)
        return original(*args, **kwargs)

    return use


def _defer(ctx: ssl.SSLContext) -> None:
    """`SSLContext.set_default_verify_paths` while the import runs: noted, and
    done at the context's first use."""
    with _lock:
        if any(c is ctx for c in _pending):
            return
        for name in _FIRST_USES:
            # An instance attribute shadows the class's method until the load.
            ctx.__dict__[name] = _first_use(ctx, getattr(ctx, name))
        _pending.append(ctx)


def pending() -> bool:
    """Some context still waits for its CA store."""
    return bool(_pending)


def load_deferred(ctx: ssl.SSLContext | None = None) -> None:
    """Read the default CA store into the deferred contexts (all, or `ctx`)."""
    with _lock:
        for c in [c for c in _pending if ctx is None or c is ctx]:
            _REAL(c)
            for name in _FIRST_USES:
                c.__dict__.pop(name, None)
            _pending.remove(c)


@contextlib.contextmanager
def deferred_ca_store() -> Iterator[None]:
    """Contexts that ask for the default CA store in this block get it on first use."""
    cls = ssl.SSLContext
    if _NAME in cls.__dict__:  # someone else's stand-in is there: leave it
        yield
        return
    setattr(cls, _NAME, _defer)
    try:
        yield
    finally:
        delattr(cls, _NAME)
