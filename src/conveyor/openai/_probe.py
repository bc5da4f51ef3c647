"""The endpoint half of a preflight: one `GET {base_url}/models` tells whether the
endpoint answers, the key is accepted and the model is served.

Each answer is a `Check` (ok / warn / fail / skip, a detail, what to do). The
key is only ever sent in the `Authorization` header and URLs are shown without
credentials or query. `ProbeAdvice` words the fixes in the caller's terms:
keyword names by default; the CLI passes its flags.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from .._base._checks import Check

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["AUTH_HEADERS", "ProbeAdvice", "endpoint_checks", "models_url", "redact_url"]

_MODELS_SHOWN = 8


@dataclass(frozen=True)
class ProbeAdvice:
    """How the caller sets what a failed probe points at."""

    base_url: str = "base_url="
    model: str = "model="
    timeout: str = "timeout="
    key_env: str = "api_key_env="


def models_url(base_url: str) -> str:
    """`{base_url}/models`, keeping any query string at the end where it belongs."""
    try:
        parts = urlsplit(base_url)
    except ValueError:
        return base_url.rstrip("/") + "/models"
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/models"))


def redact_url(url: str) -> str:
    """`url` without user:password and query string (either may hold a secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


AUTH_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})
"""Header names (lower case) that carry a credential: Azure's `api-key` counts as a key."""


async def _get_models(
    base_url: str, api_key: str | None, wait_s: float, a: ProbeAdvice, extra: Mapping[str, str]
) -> tuple[int, bytes] | Check:
    from .._base._tls import deferred_ca_store

    with deferred_ca_store():  # here, not at the top: `conveyor run --help` reaches this module
        import aiohttp

    url = models_url(base_url)
    shown = redact_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    headers.update(extra)  # what the run sends too (Azure's `api-key`, a proxy's token)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait_s)) as session,
            session.get(url, headers=headers, allow_redirects=True) as resp,
        ):
            return resp.status, await resp.read()
    except TimeoutError:
        return Check(
            "endpoint",
            "fail",
            f"GET {shown} got no answer within {wait_s:g} s",
            f"is the server up and not overloaded? check {a.base_url} / OPENAI_BASE_URL, "
            f"or raise {a.timeout}",
        )
    except (aiohttp.InvalidURL, ValueError) as exc:
        why = str(exc).replace(url, shown).replace(base_url, shown)
        return Check(
            "endpoint",
            "fail",
            f"cannot request {shown}: {why}",
            f"pass {a.base_url} like https://api.openai.com/v1 or http://localhost:8000/v1",
        )
    except aiohttp.ClientError as exc:
        # aiohttp's text names host and port, never the request headers.
        return Check(
            "endpoint",
            "fail",
            f"cannot reach {shown}: {_reason(exc).replace(url, shown)}",
            f"is the server running? check {a.base_url} / OPENAI_BASE_URL",
        )


def _reason(exc: BaseException) -> str:
    os_err = getattr(exc, "os_error", None)
    if isinstance(os_err, OSError):
        # asyncio words a refusal "Connect call failed (...)"; the errno says it plainly.
        if not isinstance(os_err, socket.gaierror) and os_err.errno and os_err.errno > 0:
            return os.strerror(os_err.errno)
        if os_err.strerror:
            return os_err.strerror
    return str(exc) or type(exc).__name__


def _model_ids(body: bytes) -> list[str] | None:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return None
    return [str(m["id"]) for m in items if isinstance(m, dict) and "id" in m]


async def endpoint_checks(
    base_url: str,
    api_key: str | None,
    key_env: str,
    model: str | None,
    wait_s: float,
    *,
    advice: ProbeAdvice | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[Check]:
    """Three checks from one `GET {base_url}/models`: endpoint, api key, model.

    `key_env` names where the key came from; `advice` how the caller sets
    the base URL, model, timeout and key variable (CLI flags, or keywords);
    `headers` are sent as the run sends them (a key in `api-key` is a key)."""
    a = advice or ProbeAdvice()
    extra = dict(headers or {})
    shown = redact_url(models_url(base_url))
    t0 = time.monotonic()
    got = await _get_models(base_url, api_key, wait_s, a, extra)
    header_key = next((h for h in extra if h.lower() in AUTH_HEADERS), None)
    if not api_key and header_key is not None:
        key_env = f"the {header_key} header"
    if isinstance(got, Check):
        skip = "skipped: the endpoint did not answer"
        return [got, Check("api key", "skip", skip), Check("model", "skip", skip)]
    status, body = got
    ms = (time.monotonic() - t0) * 1000
    reached = Check("endpoint", "ok", f"GET {shown} answered HTTP {status} in {ms:.0f} ms")
    key_fix = f"check the key in {key_env} (or pass {a.key_env} to read another variable)"
    if status in (401, 403):
        if api_key or header_key is not None:
            key = Check("api key", "fail", f"the endpoint refused the key (HTTP {status})", key_fix)
        else:
            key = Check(
                "api key",
                "fail",
                f"no key set and the endpoint requires one (HTTP {status})",
                f"export {key_env}=... (or pass {a.key_env})",
            )
        return [reached, key, Check("model", "skip", "skipped: the key was refused")]
    if status == 404:
        reached = Check(
            "endpoint",
            "warn",
            f"GET {shown} answered 404: this server lists no models there",
            f"OpenAI-compatible servers serve /v1/models: does {a.base_url} end in /v1?",
        )
        return [
            reached,
            Check("api key", "skip", "skipped: cannot tell without /models"),
            Check("model", "skip", "skipped: the server lists no models"),
        ]
    if status >= 400:
        reached = Check(
            "endpoint",
            "fail" if status >= 500 else "warn",
            f"GET {shown} answered HTTP {status}",
            "the server is up but failing: check its logs, or retry in a moment",
        )
        return [
            reached,
            Check("api key", "skip", f"skipped: HTTP {status}"),
            Check("model", "skip", f"skipped: HTTP {status}"),
        ]
    key = (
        Check("api key", "ok", f"accepted (from {key_env})")
        if api_key or header_key is not None
        else Check("api key", "skip", f"{key_env} is not set; the endpoint needs no key")
    )
    return [reached, key, _model_check(model, _model_ids(body), a)]


def _model_check(model: str | None, ids: list[str] | None, a: ProbeAdvice) -> Check:
    if ids is None:
        return Check("model", "warn", "the /models answer is not a model list", "")
    if model is None:
        few = ", ".join(ids[:_MODELS_SHOWN]) + (" ..." if len(ids) > _MODELS_SHOWN else "")
        return Check("model", "skip", f"no {a.model} given; {len(ids)} served: {few}")
    if model in ids:
        return Check("model", "ok", f"{model} is served")
    few = ", ".join(ids[:_MODELS_SHOWN])
    more = f" (+{len(ids) - _MODELS_SHOWN} more)" if len(ids) > _MODELS_SHOWN else ""
    return Check(
        "model",
        "fail",
        f"{model} is not among the {len(ids)} models this endpoint lists: {few}{more}",
        f"pass one of the listed models with {a.model} (or in the requests' body)",
    )
