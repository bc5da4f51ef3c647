"""Checks before a run (`conveyor doctor`, and automatically before `conveyor run`).

Each check answers ok / warn / fail / skip with a detail and, when it did not
pass, what to do. The checks: the endpoint answers `GET /models`, the key is
accepted, the model is listed (the HTTP probe is `conveyor.openai._probe`),
no HTTP(S)_PROXY applies to the endpoint (conveyor connects directly), the
journal's directory is writable, free disk and memory are above their floors,
and GPU memory (through `nvidia-smi`, skipped cleanly when absent) is below its
warning level.

The defaults are a go/no-go list: do not start with under 4 GB of memory
available; warn when a GPU's memory is more than 95% used. Each one is a
parameter.

The API key is only ever sent in the `Authorization` header: no detail, fix
or exception text includes it, and URLs are shown without credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .._base._checks import Check, CheckStatus, user_check_outcome
from .._monitor._gpu import GPU_QUERY, Gpu, parse_nvidia_smi
from ..openai._probe import AUTH_HEADERS, ProbeAdvice, endpoint_checks, redact_url

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_MIN_FREE_DISK_MB",
    "DEFAULT_MIN_FREE_MEMORY_MB",
    "DEFAULT_GPU_MEMORY_WARN",
    "Check",
    "Gpu",
    "CheckStatus",
    "format_checks",
    "has_failures",
    "parse_meminfo",
    "parse_nvidia_smi",
    "preflight",
    "redact_url",
]


DEFAULT_MIN_FREE_MEMORY_MB = 4096  # under 4 GB of memory available: do not start
DEFAULT_MIN_FREE_DISK_MB = 200  # room for a journal and an output file of a large batch
DEFAULT_GPU_MEMORY_WARN = 0.95  # warn when a GPU's memory is over 95% used before starting
# How the endpoint probe's advice names the settings: this command's flags.
_ADVICE = ProbeAdvice(
    base_url="--base-url", model="--model", timeout="--timeout", key_env="--api-key-env NAME"
)


def has_failures(checks: Sequence[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


# -- local resources ----------------------------------------------------------------


def _journal_check(journal_path: str | os.PathLike[str] | None) -> Check:
    if journal_path is None:
        return Check("journal", "skip", "no --journal given")
    path = Path(journal_path).absolute()
    folder = path.parent
    if not folder.is_dir():
        return Check(
            "journal",
            "fail",
            f"folder {folder} does not exist",
            f"create it (mkdir -p {folder}) or choose another --journal path",
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=".conveyor-preflight-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return Check(
            "journal",
            "fail",
            f"cannot write in {folder} ({exc.strerror or exc})",
            "choose a writable location with --journal",
        )
    state = "exists: the run will resume it" if path.exists() else "will be created"
    return Check("journal", "ok", f"{path} {state}")


def _proxy_check(base_url: str) -> Check:
    """Whether a proxy variable applies to the endpoint: conveyor never uses one
    (its HTTP client connects directly, as its aiohttp sessions, with `trust_env`
    off, always did), so a network that only reaches the endpoint through it
    fails to connect, and the user should know why before the run."""
    import urllib.request
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(base_url)
    except ValueError:
        return Check("proxy", "skip", "the base URL does not parse")
    proxies = urllib.request.getproxies_environment()
    scheme = parts.scheme or "http"
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return Check("proxy", "ok", "no HTTP(S)_PROXY set: conveyor connects directly")
    name = f"{scheme.upper()}_PROXY" if proxies.get(scheme) else "ALL_PROXY"
    host = parts.hostname or ""
    # proxy_bypass_environment: in the standard library, not in typeshed.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if host and bypass(host, proxies):
        return Check("proxy", "ok", f"{name} is set, NO_PROXY covers {host}: a direct connection")
    return Check(
        "proxy",
        "warn",
        f"{name} is set ({redact_url(proxy)}), but conveyor connects to {host} directly: "
        "it does not use proxies",
        "if this network reaches the endpoint only through the proxy, requests will fail to "
        f"connect: run where {host} is reachable directly; add it to NO_PROXY to silence this",
    )


def _disk_check(journal_path: str | os.PathLike[str] | None, min_free_mb: float) -> Check:
    folder = Path(journal_path).absolute().parent if journal_path is not None else Path.cwd()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free_mb = shutil.disk_usage(folder).free / 2**20
    except OSError as exc:
        return Check("disk", "warn", f"cannot measure free space in {folder}: {exc}")
    detail = f"{free_mb:,.0f} MB free in {folder} (floor {min_free_mb:,.0f} MB)"
    if free_mb < min_free_mb:
        return Check(
            "disk",
            "fail",
            detail,
            "free some space, put the journal elsewhere with --journal, or lower the floor "
            "with --min-free-disk MB",
        )
    return Check("disk", "ok", detail)


def parse_meminfo(text: str) -> tuple[int, int] | None:
    """(available, total) in MB from /proc/meminfo text, or None."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name in ("MemAvailable", "MemTotal") and fields and fields[0].isdigit():
            values[name] = int(fields[0]) // 1024  # kB
    if "MemAvailable" not in values or "MemTotal" not in values:
        return None
    return values["MemAvailable"], values["MemTotal"]


def _memory_mb() -> tuple[int, int] | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            found = parse_meminfo(f.read())
        if found is not None:
            return found
    except OSError:
        pass
    try:  # elsewhere than Linux, when psutil happens to be installed
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    vm = psutil.virtual_memory()
    return int(vm.available) // 2**20, int(vm.total) // 2**20


def _memory_check(min_free_mb: float) -> Check:
    mem = _memory_mb()
    if mem is None:
        return Check("memory", "skip", "cannot measure available memory on this system")
    avail, total = mem
    detail = f"{avail:,} MB available of {total:,} MB (floor {min_free_mb:,.0f} MB)"
    if avail < min_free_mb:
        return Check(
            "memory",
            "fail",
            detail,
            "close other programs, or lower the floor with --min-free-memory MB",
        )
    return Check("memory", "ok", detail)


async def _gpu_checks(
    nvidia_smi: str,
    warn_at: float,
    wait_s: float,
    max_memory: float | None = None,
    max_utilization: float | None = None,
) -> list[Check]:
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return [Check("gpu", "skip", "nvidia-smi not found: no NVIDIA GPU to check")]
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            *GPU_QUERY,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return [Check("gpu", "warn", f"cannot run {exe}: {exc.strerror or exc}")]
    try:
        out, err = await asyncio.wait_for(proc.communicate(), wait_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return [Check("gpu", "warn", f"nvidia-smi gave no answer within {wait_s:g} s")]
    if proc.returncode != 0:
        msg = err.decode(errors="replace").strip().splitlines()
        return [
            Check(
                "gpu",
                "warn",
                f"nvidia-smi exited {proc.returncode}: {msg[0] if msg else 'no message'}",
                "check the NVIDIA driver (run nvidia-smi yourself)",
            )
        ]
    gpus = parse_nvidia_smi(out.decode(errors="replace"))
    if not gpus:
        return [Check("gpu", "warn", "nvidia-smi listed no GPU it could read")]
    checks = []
    for g in gpus:
        share = g.used_mb / g.total_mb if g.total_mb > 0 else 0.0
        detail = (
            f"GPU {g.index} {g.name}: utilisation {g.utilization:.0f}%, memory "
            f"{g.used_mb:,.0f}/{g.total_mb:,.0f} MB ({share:.1%})"
        )
        over = []
        if max_memory is not None and share * 100 > max_memory:
            over.append(f"memory above the limit of {max_memory:g}% (--max-gpu-memory)")
        if max_utilization is not None and g.utilization > max_utilization:
            over.append(
                f"utilisation above the limit of {max_utilization:g}% (--max-gpu-utilization)"
            )
        if over:
            checks.append(
                Check(
                    f"gpu {g.index}",
                    "fail",
                    detail + ", " + " and ".join(over),
                    "free the GPU (nvidia-smi lists the processes using it), or raise the limit",
                )
            )
        elif share > warn_at:
            checks.append(
                Check(
                    f"gpu {g.index}",
                    "warn",
                    detail + f", above {warn_at:.0%}",
                    "free GPU memory (nvidia-smi lists the processes holding it) or raise "
                    "--gpu-memory-warn",
                )
            )
        else:
            checks.append(Check(f"gpu {g.index}", "ok", detail))
    return checks


# -- the user's own checks ----------------------------------------------------------

UserCheck = Callable[[], Any]


async def run_user_check(fn: UserCheck) -> Check:
    """One check of the user's: a function (sync or async) taking nothing.

    It passes by returning None or True; it fails by returning False or a
    string (the reason), or by raising; it may also return a `Check`.
    """
    try:
        out = fn()
        if inspect.isawaitable(out):
            out = await out
    except Exception as exc:
        return user_check_outcome(fn, exc=exc)
    return user_check_outcome(fn, out)


def load_check(spec: str, flag: str = "--check") -> UserCheck:
    """`module:function` (as for `--check`, `--gauge`) -> the function."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{flag} {spec!r}: give MODULE:FUNCTION, e.g. mychecks:db_reachable")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"{flag} {spec!r}: cannot load it ({exc}); is the module on PYTHONPATH?"
        ) from exc
    if not callable(obj):
        raise ValueError(f"{flag} {spec!r}: {attr} is not a function")
    return cast("UserCheck", obj)


# -- all of it ----------------------------------------------------------------------


async def preflight(
    *,
    base_url: str,
    api_key: str | None,
    model: str | None = None,
    journal_path: str | os.PathLike[str] | None = None,
    min_free_memory_mb: float = DEFAULT_MIN_FREE_MEMORY_MB,
    min_free_disk_mb: float = DEFAULT_MIN_FREE_DISK_MB,
    gpu_memory_warn: float = DEFAULT_GPU_MEMORY_WARN,
    timeout: float = 5.0,  # noqa: ASYNC109 - bounds each probe, not the whole call
    api_key_env: str = "OPENAI_API_KEY",
    nvidia_smi: str = "nvidia-smi",
    max_gpu_memory: float | None = None,
    max_gpu_utilization: float | None = None,
    checks: Sequence[UserCheck] = (),
    headers: Mapping[str, str] | None = None,
) -> list[Check]:
    """Every check, in a fixed order: endpoint, api key, model, proxy, journal, disk, memory, gpu,
    then the user's own `checks` (functions: see `run_user_check`).

    `max_gpu_memory` / `max_gpu_utilization` (percent) make a GPU above them
    fail (block the run); `gpu_memory_warn` only warns.

    `timeout` bounds each network or subprocess probe. `api_key_env` only
    names where the key came from, for the advice. `headers` are sent with
    the probe as the run sends them (a key in `api-key` counts as a key).
    """
    extra = dict(headers or {})
    remote, gpus, own = await asyncio.gather(
        endpoint_checks(
            base_url, api_key, api_key_env, model, timeout, advice=_ADVICE, headers=extra
        ),
        _gpu_checks(nvidia_smi, gpu_memory_warn, timeout, max_gpu_memory, max_gpu_utilization),
        asyncio.gather(*(run_user_check(fn) for fn in checks)),
    )
    local = [
        _proxy_check(base_url),
        _journal_check(journal_path),
        _disk_check(journal_path, min_free_disk_mb),
        _memory_check(min_free_memory_mb),
    ]
    done: list[Check] = [*remote, *local, *gpus, *own]
    # Belt and braces: no library message we quote may carry the key.
    for secret in [api_key, *(v for h, v in extra.items() if h.lower() in AUTH_HEADERS)]:
        if secret:
            done = [_scrub(c, secret.removeprefix("Bearer ")) for c in done]
    return done


def redact_secret(text: str, secret: str) -> str:
    """`text` with each whole occurrence of `secret` replaced by `***`.

    Whole: not inside a longer word, so a very short key (`x`) does not
    mangle `text-embedding-3-small` or `/tmp/exp/j.db`.
    """
    if not secret or secret not in text:
        return text
    pattern = rf"(?<![A-Za-z0-9_\-]){re.escape(secret)}(?![A-Za-z0-9_\-])"
    return re.sub(pattern, "***", text)


def _scrub(check: Check, secret: str) -> Check:
    detail, fix = redact_secret(check.detail, secret), redact_secret(check.fix, secret)
    if detail != check.detail or fix != check.fix:
        return Check(check.name, check.status, detail, fix)
    return check


_MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def format_checks(checks: Sequence[Check]) -> str:
    """A plain table: one line per check, its fix indented below when it has one."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{_MARK[c.status]:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in ("warn", "fail"):
            lines.append(f"{'':<4}  {'':<{width}}  -> {c.fix}")
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    verdict = "ready" if not failed else "not ready"
    lines.append(f"{verdict}: {failed} failed, {warned} warning(s)")
    return "\n".join(lines)
