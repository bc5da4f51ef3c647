"""Estimated cost of a run: a small built-in price table, overridable by a file.

Prices are US dollars per million tokens, input and output. The built-in
table holds public list prices of common OpenAI models (2025) and is only an
estimate: batch discounts, cached-input discounts and other providers differ,
so `--prices FILE` replaces or adds entries. A model matches an entry by its
longest prefix, so dated snapshots (`gpt-4o-mini-2024-07-18`) find their
family. Self-hosted models have no price: the report says so instead of
guessing.

A prices file is JSON or TOML (by extension; `.toml` is TOML, anything else
JSON) mapping a model name to its prices:

    {"my-model": {"input": 0.5, "output": 1.5}}
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .._base._exceptions import InputError

if TYPE_CHECKING:
    from collections.abc import Mapping

_SEPS = ("-", ":", "@", "/")

__all__ = ["DEFAULT_PRICES", "Price", "estimate_cost", "load_prices", "lookup_price"]


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million input and output tokens."""

    input: float
    output: float


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o1": Price(15.00, 60.00),
    "o3": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    "text-embedding-ada-002": Price(0.10, 0.0),
}


def lookup_price(model: str, prices: Mapping[str, Price] | None = None) -> Price | None:
    """The price of `model`: an exact entry, else the longest prefix entry, else None."""
    table = DEFAULT_PRICES if prices is None else prices
    if model in table:
        return table[model]
    # A prefix must end at a separator: "o1" must not price "o10-preview".
    matches = [n for n in table if model.startswith(n) and model[len(n) : len(n) + 1] in _SEPS]
    best = max(matches, key=len, default=None)
    return None if best is None else table[best]


def estimate_cost(price: Price, input_tokens: int, output_tokens: int) -> float:
    """Dollars for these tokens at `price`."""
    return (input_tokens * price.input + output_tokens * price.output) / 1_000_000


def load_prices(path: str | Path, *, base: Mapping[str, Price] | None = None) -> dict[str, Price]:
    """The built-in table (or `base`) updated with the entries of a JSON/TOML file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(
            f"cannot read the prices file ({exc.strerror or exc}): check the prices file path",
            path=str(p),
        ) from None
    try:
        data: Any = tomllib.loads(raw.decode()) if p.suffix == ".toml" else orjson.loads(raw)
    except (tomllib.TOMLDecodeError, orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        kind = "TOML" if p.suffix == ".toml" else "JSON"
        raise InputError(f"not valid {kind} ({exc}): fix the file", path=str(p)) from None
    if not isinstance(data, dict):
        raise InputError(
            'expected a table of model -> {"input": $, "output": $} per million tokens',
            path=str(p),
        )
    table = dict(DEFAULT_PRICES if base is None else base)
    for model, entry in data.items():
        table[str(model)] = _parse_entry(str(model), entry, str(p))
    return table


def _parse_entry(model: str, entry: Any, path: str) -> Price:
    if not isinstance(entry, dict):
        raise InputError(
            f'model {model!r}: expected {{"input": dollars, "output": dollars}} per million '
            f"tokens, got {type(entry).__name__}",
            path=path,
        )
    values: list[float] = []
    for field in ("input", "output"):
        v = entry.get(field, 0.0 if field == "output" else None)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise InputError(
                f"model {model!r}: {field!r} must be a number of dollars per million tokens "
                f">= 0, got {v!r}",
                path=path,
            )
        values.append(float(v))
    return Price(values[0], values[1])
