"""What an answer cost: a small price table for the providers' known models × the usage an answer
reported (``Completed.usage``: ``input_tokens`` / ``output_tokens``).

Prices are list prices in US dollars per million tokens (input, output), as published by Anthropic
and OpenAI in late 2025; they drift, so treat the figure as an estimate. A dated or suffixed model
name (``claude-haiku-4-5-20251001``, ``gpt-4o-mini-2024-07-18``) takes the price of the longest
known name it starts with. Models that run here (``ollama``, ``local``) cost nothing. Anything
else — an unknown model, or an answer that reported no usage — has no known cost (None), which a
front end shows as "—" rather than guessing.
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["PRICES", "FREE_PROVIDERS", "price_of", "cost_of", "format_cost"]

#: provider → model → (USD per million input tokens, USD per million output tokens)
PRICES: dict[str, dict[str, tuple[float, float]]] = {
    "anthropic": {
        "claude-opus-4-5": (5.00, 25.00),
        "claude-sonnet-4-5": (3.00, 15.00),
        "claude-haiku-4-5": (1.00, 5.00),
    },
    "openai": {
        "gpt-4.1": (2.00, 8.00),
        "gpt-4.1-mini": (0.40, 1.60),
        "gpt-4o": (2.50, 10.00),
        "gpt-4o-mini": (0.15, 0.60),
    },
}

#: providers whose models run on this machine (or the user's own server): no per-token price
FREE_PROVIDERS = frozenset({"ollama", "local"})


def price_of(provider: str, model: str) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for ``provider:model``, or None if unknown."""
    if provider in FREE_PROVIDERS:
        return (0.0, 0.0)
    table = PRICES.get(provider)
    if not table:
        return None
    name = model.lower()
    best = None
    for known in table:
        if (name == known or name.startswith(known + "-")) and (best is None or len(known) > len(best)):
            best = known
    return table[best] if best is not None else None


def cost_of(provider: str, model: str, usage: Mapping[str, int] | None) -> float | None:
    """USD for one answer, or None when the price or the usage is unknown (free providers: 0)."""
    if provider in FREE_PROVIDERS:
        return 0.0
    price = price_of(provider, model)
    if price is None or not usage:
        return None
    tokens_in = usage.get("input_tokens") or 0
    tokens_out = usage.get("output_tokens") or 0
    return (tokens_in * price[0] + tokens_out * price[1]) / 1_000_000


def format_cost(cost: float | None) -> str:
    """``$0.00042``-style (enough digits for a short answer), ``$0`` for free, ``—`` for unknown."""
    if cost is None:
        return "—"
    if cost == 0:
        return "$0"
    if cost >= 0.01:
        return f"${cost:.4f}"
    if cost < 0.000001:
        return "<$0.000001"
    return f"${cost:.6f}".rstrip("0")
