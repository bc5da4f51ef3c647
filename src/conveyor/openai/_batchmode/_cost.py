"""What a batch-mode run cost: the lines each path answered, at batch prices
(half the online price, as OpenAI, Anthropic and Gemini sell batches) and at
online prices, from the built-in price table or `--prices`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._render._pricing import estimate_cost, lookup_price

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ..._render._pricing import Price

__all__ = ["BATCH_DISCOUNT", "cost_split"]

BATCH_DISCOUNT = 0.5


def cost_split(
    model: str | None,
    batch: Sequence[int],
    online: Sequence[int],
    prices: Mapping[str, Price] | None = None,
) -> dict[str, Any]:
    """Cost of (input, output) tokens answered by batches and online: what it
    cost, and what all of it would have cost at batch and at online prices."""
    price = None if model is None else lookup_price(model, prices)
    tokens = {"batch": {"input": batch[0], "output": batch[1]},
              "online": {"input": online[0], "output": online[1]}}  # fmt: skip
    if price is None:
        return {"model": model, "tokens": tokens, "total": None,
                "note": "no price for this model: pass --prices FILE"}  # fmt: skip
    at_online_b = estimate_cost(price, batch[0], batch[1])
    at_online_o = estimate_cost(price, online[0], online[1])
    return {
        "model": model,
        "currency": "USD",
        "tokens": tokens,
        "batch_path": round(at_online_b * BATCH_DISCOUNT, 6),
        "online_path": round(at_online_o, 6),
        "total": round(at_online_b * BATCH_DISCOUNT + at_online_o, 6),
        "all_at_batch_prices": round((at_online_b + at_online_o) * BATCH_DISCOUNT, 6),
        "all_at_online_prices": round(at_online_b + at_online_o, 6),
    }
