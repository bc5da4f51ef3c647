"""`--monitor`, `--gauge`, `--limit`: resources sampled while `conveyor run`/`exec` go on.

The figures show in the live panel (or the plain progress lines), in the
report (`--report-json`, `conveyor report --html`: memory, utilisation and
gauges over time), and a `--limit` exceeded stops the run (exit 3, resumable:
the same command sends what was cut off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from .._monitor import Monitor

__all__ = ["build_monitor", "monitor_options"]

F = TypeVar("F", bound=Callable[..., Any])

MONITOR_HELP = (
    "Sample memory, CPU, GPU (nvidia-smi, when installed) and your --gauge functions while "
    "the run goes on: in the live panel, the report and its HTML charts."
)


def monitor_options(fn: F) -> F:
    """The monitoring flags (shared by `run` and `exec`)."""
    for option in reversed(
        [
            click.option("--monitor", "monitor", is_flag=True, help=MONITOR_HELP),
            click.option(
                "--monitor-interval",
                type=click.FloatRange(min=0.05),
                default=1.0,
                show_default=True,
                metavar="SECONDS",
                help="Seconds between resource samples.",
            ),
            click.option(
                "--gauge",
                "gauges",
                multiple=True,
                metavar="NAME=MODULE:FUNC",
                help="A number of yours to sample (e.g. db_in_use=mypool:in_use: a function "
                "taking nothing). Repeatable; implies --monitor.",
            ),
            click.option(
                "--resource-max",
                "resource_limits",
                multiple=True,
                metavar="METRIC=MAX",
                help="Stop the run when METRIC goes above MAX (process_rss_mb=4000, "
                "system_memory_percent=90, gpu_memory_percent=95, or a --gauge name). "
                "Repeatable; implies --monitor.",
            ),
            click.option(
                "--resource-min",
                "resource_floors",
                multiple=True,
                metavar="METRIC=MIN",
                help="Stop the run when METRIC goes below MIN (system_memory_available_mb=4096, "
                "or a --gauge name). Repeatable; implies --monitor.",
            ),
            click.option(
                "--resource-samples",
                "limit_samples",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                metavar="N",
                help="A --resource-max or --resource-min stops the run only after N samples "
                "in a row past it.",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _pair(flag: str, text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name or not value.strip():
        raise click.BadParameter(f"{text!r}: give NAME=VALUE", param_hint=flag)
    from .._monitor import GAUGE_NAME  # loaded only when a flag asks for monitoring

    if not GAUGE_NAME.match(name):
        raise click.BadParameter(
            f"{name!r}: a name of letters, digits, _ and . (e.g. db_in_use)", param_hint=flag
        )
    return name, value.strip()


def build_monitor(
    *,
    monitor: bool,
    monitor_interval: float,
    gauges: Sequence[str],
    resource_limits: Sequence[str],
    limit_samples: int,
    resource_floors: Sequence[str] = (),
    also_limits: dict[str, float | None] | None = None,
    also_floors: dict[str, float | None] | None = None,
) -> Monitor | None:
    """The `Monitor` the flags ask for, or None. `also_limits`/`also_floors` (the
    preflight's --max-gpu-memory, --min-free-memory) are enforced live too once
    monitoring is on."""
    from ._preflight import load_check

    if not (monitor or gauges or resource_limits or resource_floors):
        return None
    fns: dict[str, Callable[[], Any]] = {}
    for text in gauges:
        name, spec = _pair("--gauge", text)
        try:
            fns[name] = load_check(spec, "--gauge")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--gauge") from None
    limits = _bounds("--resource-max", "MAX", resource_limits, also_limits)
    floors = _bounds("--resource-min", "MIN", resource_floors, also_floors)
    from .._monitor import Monitor

    return Monitor(
        interval=monitor_interval,
        gauges=fns,
        limits=limits,
        floors=floors,
        patience=limit_samples,
    )


def _bounds(
    flag: str, what: str, texts: Sequence[str], also: dict[str, float | None] | None
) -> dict[str, float]:
    out = {k: v for k, v in (also or {}).items() if v is not None}
    for text in texts:
        name, value = _pair(flag, text)
        try:
            out[name] = float(value)
        except ValueError:
            raise click.BadParameter(
                f"{text!r}: {what} must be a number", param_hint=flag
            ) from None
    return out
