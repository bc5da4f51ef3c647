"""Run options, validated when the call is made (before any item runs)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._base._clock import Clock, SystemClock
from .._base._exceptions import ConfigError
from ._callbacks import FunctionCallbacks
from ._memo import Memo
from ._retry import RetryPolicy

__all__ = ["Breaker", "Options", "build_options"]

DEFAULT_CONCURRENCY = 16
AUTO_MIN = 1
AUTO_MAX = 1024


@dataclass(frozen=True)
class Breaker:
    """Circuit breaker settings: open after `threshold` consecutive transient
    failures, probe after `cooldown` seconds, doubling up to `max_cooldown`.

    `give_up`: after this many seconds in which every attempt failed (the
    breaker open or probing, no success), the run stops with a fatal error;
    the items it stopped are cancelled, so a resume sends them again. None:
    wait for the endpoint forever.
    """

    threshold: int = 5
    cooldown: float = 5.0
    max_cooldown: float = 60.0
    give_up: float | None = 120.0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.threshold, int)
            or isinstance(self.threshold, bool)
            or self.threshold < 1
        ):
            raise ConfigError("breaker.threshold", self.threshold, "a whole number >= 1")
        _positive("breaker.cooldown", self.cooldown)
        if self.give_up is not None:
            _positive("breaker.give_up", self.give_up)
        if self.max_cooldown < self.cooldown:
            raise ConfigError(
                "breaker.max_cooldown", self.max_cooldown, f">= cooldown ({self.cooldown})"
            )


@dataclass(frozen=True)
class Options:
    concurrency: int
    waves: bool
    batch_size: int | None
    timeout: float | None
    retry: RetryPolicy
    rpm: float | None
    tpm: float | None
    cost: Callable[[Any], float | tuple[float, float]] | None
    limit_window: float
    burst: float
    probe_first: bool
    refund_unused: bool
    breaker: Breaker | None
    adaptive: bool
    fail_fast: bool
    key: Callable[[Any], Any] | None
    callbacks: tuple[Any, ...]
    grace: float
    clock: Clock
    batch_id: str | None
    on_progress: Callable[[Any], Any] | None
    progress_interval: float
    shared_limiter: Any
    previous: Callable[[str], Any] | None
    worker_init: Callable[[], Any] | None = None
    worker_teardown: Callable[[], Any] | None = None
    memo: Memo | None = None
    """A `Memo` the items share; the report carries what it saved."""
    monitor: Any = None
    """A `conveyor.Monitor` (its `sample()`, `interval`, `limits`, `patience`,
    `unavailable`): resources sampled while the run goes on."""
    auto: tuple[int, int] | None = None
    """``(min, max)`` when ``concurrency="auto"``: the limit is found by
    `_congestion.CongestionController`, and `concurrency` is the max."""
    validate: Callable[[Any, Any], Any] | None = None
    """``validate(item, value) -> value``: raises when an answer is invalid (`_validation`)."""
    reask: int = 2
    auto_until_limits: int | None = None
    """With `auto`: the fixed concurrency taken, controller dropped, once the
    server shows it meters a rate (rate-limit headers or a 429): how `conveyor
    run` finds the concurrency of a server that queues by default, and keeps
    the header-driven behaviour for a provider that says its limits."""


def _positive(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value <= 0
    ):
        extra = " or None" if allow_none else ""
        raise ConfigError(name, value, f"a number > 0{extra}")


def _whole(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < lo
        or (hi is not None and value > hi)
    ):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(name, value, f"a whole number {rng}")


def build_options(
    *,
    concurrency: int | str | None = None,
    concurrency_min: int | None = None,
    concurrency_max: int | None = None,
    waves: bool = False,
    batch_size: int | None = None,
    timeout: float | None = None,
    retries: int | RetryPolicy = 3,
    rpm: float | None = None,
    tpm: float | None = None,
    cost: Callable[[Any], float | tuple[float, float]] | None = None,
    limit_window: float = 60.0,
    burst: float = 1.0,
    probe_first: bool = False,
    refund_unused: bool = True,
    breaker: Breaker | bool | None = None,
    adaptive: bool = True,
    fail_fast: bool = False,
    key: Callable[[Any], Any] | None = None,
    callbacks: Any = None,
    on_start: Callable[..., Any] | None = None,
    on_result: Callable[..., Any] | None = None,
    on_error: Callable[..., Any] | None = None,
    on_batch: Callable[..., Any] | None = None,
    grace: float = 10.0,
    clock: Clock | None = None,
    batch_id: str | None = None,
    on_progress: Callable[[Any], Any] | None = None,
    progress_interval: float = 1.0,
    shared_limiter: Any = None,
    previous: Callable[[str], Any] | None = None,
    worker_init: Callable[[], Any] | None = None,
    worker_teardown: Callable[[], Any] | None = None,
    memo: Memo | None = None,
    monitor: Any = None,
    validate: Callable[[Any], Any] | None = None,
    validate_item: Callable[[Any, Any], Any] | None = None,
    reask: int = 2,
    auto_until_limits: int | None = None,
) -> Options:
    auto: tuple[int, int] | None = None
    if auto_until_limits is not None:
        if concurrency != "auto":
            raise ConfigError("auto_until_limits", auto_until_limits, 'only with "auto"')
        _whole("auto_until_limits", auto_until_limits, 1, 100_000)
    if concurrency == "auto":
        if waves:
            raise ConfigError("concurrency", "auto", "a whole number with waves=True")
        lo = AUTO_MIN if concurrency_min is None else concurrency_min
        hi = AUTO_MAX if concurrency_max is None else concurrency_max
        _whole("concurrency_min", lo, 1, 100_000)
        _whole("concurrency_max", hi, 1, 100_000)
        if hi < lo:
            raise ConfigError("concurrency_max", hi, f">= concurrency_min ({lo})")
        auto = (lo, hi)
        concurrency = hi
    elif concurrency_min is not None or concurrency_max is not None:
        raise ConfigError("concurrency_min", concurrency_min, 'only with concurrency="auto"')
    if concurrency is not None:
        if isinstance(concurrency, str):
            raise ConfigError("concurrency", concurrency, 'a whole number 1..100000, or "auto"')
        _whole("concurrency", concurrency, 1, 100_000)
    if batch_size is not None and not waves:
        raise ConfigError(
            "batch_size", batch_size, "only with waves=True (fixed batches with a barrier)"
        )
    if waves:
        if batch_size is None:
            batch_size = concurrency or DEFAULT_CONCURRENCY
        _whole("batch_size", batch_size, 1, 100_000)
        conc = min(concurrency or batch_size, batch_size)
    else:
        conc = concurrency or DEFAULT_CONCURRENCY
    _positive("timeout", timeout, allow_none=True)
    if isinstance(retries, RetryPolicy):
        retry = retries
    else:
        _whole("retries", retries, 0, 1000)
        retry = RetryPolicy(retries=retries)
    _positive("rpm", rpm, allow_none=True)
    _positive("tpm", tpm, allow_none=True)
    if cost is not None and not callable(cost):
        raise ConfigError("cost", cost, "a function item -> weight (e.g. estimated tokens)")
    if tpm is not None and cost is None:
        raise ConfigError("cost", None, "a function item -> weight is needed with tpm")
    _positive("limit_window", limit_window)
    _positive("burst", burst)
    if breaker is True:
        brk: Breaker | None = Breaker()
    elif breaker is False or breaker is None:
        brk = None
    elif isinstance(breaker, Breaker):
        brk = breaker
    else:
        raise ConfigError("breaker", breaker, "True, False, None or conveyor.Breaker(...)")
    if key is not None and not callable(key):
        raise ConfigError("key", key, "a function item -> stable id")
    if not (isinstance(grace, int | float) and grace >= 0):
        raise ConfigError("grace", grace, "seconds >= 0")
    if on_progress is not None and not callable(on_progress):
        raise ConfigError("on_progress", on_progress, "a function taking a ProgressSnapshot")
    _positive("progress_interval", progress_interval)
    if shared_limiter is not None and not all(
        callable(getattr(shared_limiter, m, None)) for m in ("acquire", "settle", "pause")
    ):
        raise ConfigError(
            "shared_limiter", shared_limiter, "an object with acquire(), settle() and pause()"
        )
    if previous is not None and not callable(previous):
        raise ConfigError("previous", previous, "a function key -> earlier Result or None")
    for hook_name, hook in (("worker_init", worker_init), ("worker_teardown", worker_teardown)):
        if hook is not None and not callable(hook):
            raise ConfigError(
                hook_name, hook, "a function taking no arguments, called in each worker thread"
            )
    if memo is not None and not isinstance(memo, Memo):
        raise ConfigError("memo", memo, "a conveyor.Memo() shared by the items (or None)")
    if monitor is not None and not (
        callable(getattr(monitor, "sample", None))
        and isinstance(getattr(monitor, "limits", None), dict)
    ):
        raise ConfigError(
            "monitor", monitor, "a conveyor.Monitor(...) (or True for the default one)"
        )
    if validate is not None and not callable(validate):
        raise ConfigError(
            "validate", validate, "a function value -> parsed value that raises when invalid"
        )
    _whole("reask", reask, 0, 100)
    check = validate_item
    if validate is not None:
        user = validate
        check = (lambda item, value: user(value)) if check is None else check
    targets: list[Any] = []
    if callbacks is not None:
        if isinstance(callbacks, Sequence) and not isinstance(callbacks, str | bytes):
            targets.extend(callbacks)
        else:
            targets.append(callbacks)
    fns = {"on_start": on_start, "on_result": on_result, "on_error": on_error, "on_batch": on_batch}
    for name, fn in fns.items():
        if fn is not None and not callable(fn):
            raise ConfigError(name, fn, "a function")
    if any(fns.values()):
        targets.append(FunctionCallbacks(**fns))
    return Options(
        concurrency=conc,
        waves=waves,
        batch_size=batch_size,
        timeout=timeout,
        retry=retry,
        rpm=rpm,
        tpm=tpm,
        cost=cost,
        limit_window=float(limit_window),
        burst=float(burst),
        probe_first=bool(probe_first),
        refund_unused=bool(refund_unused),
        breaker=brk,
        adaptive=bool(adaptive),
        fail_fast=bool(fail_fast),
        key=key,
        callbacks=tuple(targets),
        grace=float(grace),
        clock=clock or SystemClock(),
        batch_id=batch_id,
        on_progress=on_progress,
        progress_interval=float(progress_interval),
        shared_limiter=shared_limiter,
        previous=previous,
        worker_init=worker_init,
        worker_teardown=worker_teardown,
        memo=memo,
        monitor=monitor,
        auto=auto,
        validate=check,
        reask=reask,
        auto_until_limits=auto_until_limits,
    )
