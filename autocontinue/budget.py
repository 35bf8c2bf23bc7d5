"""Stop conditions and prices.

A stop condition looks at the call so far (:class:`BudgetState`) and names the reason to stop, or ``None`` to go
on. Conditions compose like tenacity's ``stop_*`` strategies: ``max_rounds(8) | max_cost(0.5)`` stops at whichever
comes first. Each condition also says how many completion tokens it still allows, so that the next round's
``max_tokens`` can be clamped and a budget is never overshot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from .errors import ConfigurationError, UnknownPriceError

__all__ = [
    "DEFAULT_PRICES",
    "BudgetState",
    "Price",
    "PriceTable",
    "StopCondition",
    "max_cost",
    "max_rounds",
    "max_seconds",
    "max_total_tokens",
]


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input"):
            value = getattr(self, name)
            if value is None and name == "cached_input":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigurationError(
                    f"Price.{name} must be a finite number of USD per 1M tokens >= 0, got {value!r}"
                )

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """Cost in USD of one request with this usage."""
        cached = min(cached_tokens, prompt_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((prompt_tokens - cached) * self.input + cached * cached_rate + completion_tokens * self.output) / 1e6


# Public list prices (USD per 1M tokens) as published by the providers in 2026; they change, so callers can
# override or extend them with ``prices=``. Matching is exact first, then by the longest prefix, so dated snapshots
# such as "gpt-4o-2024-08-06" find "gpt-4o".
DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-5": Price(1.25, 10.00, 0.125),
    "gpt-5-mini": Price(0.25, 2.00, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "o3": Price(2.00, 8.00, 0.50),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "deepseek-chat": Price(0.28, 0.42, 0.028),
    "deepseek-reasoner": Price(0.28, 0.42, 0.028),
    "mistral-large-latest": Price(2.00, 6.00),
    "mistral-medium-latest": Price(0.40, 2.00),
    "mistral-small-latest": Price(0.10, 0.30),
    "qwen-max": Price(1.60, 6.40),
    "qwen-plus": Price(0.40, 1.20),
    "qwen-turbo": Price(0.05, 0.20),
    "qwen-flash": Price(0.05, 0.40),
    "kimi-k2": Price(0.60, 2.50, 0.15),
    "claude-sonnet-4-5": Price(3.00, 15.00, 0.30),
    "claude-haiku-4-5": Price(1.00, 5.00, 0.10),
    "claude-opus-4-5": Price(5.00, 25.00, 0.50),
}


class PriceTable:
    """Model name → :class:`Price`, with longest-prefix matching for dated model names."""

    def __init__(self, overrides: Mapping[str, Price | tuple[float, float]] | None = None) -> None:
        table = dict(DEFAULT_PRICES)
        for name, price in (overrides or {}).items():
            if isinstance(price, tuple) and len(price) in (2, 3):
                price = Price(*price)
            if not isinstance(name, str) or not isinstance(price, Price):
                raise ConfigurationError(
                    f"prices[{name!r}] must be an autocontinue.Price or an (input, output) pair of USD per 1M tokens"
                )
            table[name] = price
        self._table = table
        self._matched: dict[str, Price | None] = {}

    def lookup(self, model: str) -> Price | None:
        """The price of ``model``, or ``None`` when unknown."""
        if model in self._table:
            return self._table[model]
        if model in self._matched:
            return self._matched[model]
        best = max((name for name in self._table if model.startswith(name)), key=len, default=None)
        price = self._table[best] if best is not None else None
        if len(self._matched) < 1024:  # a call names one model; remember the match, boundedly
            self._matched[model] = price
        return price

    def require(self, model: str) -> Price:
        """The price of ``model``; raises :class:`UnknownPriceError` when a cost budget cannot be enforced."""
        price = self.lookup(model)
        if price is None:
            raise UnknownPriceError(
                f"a cost budget is set but the price of model {model!r} is unknown; "
                f"pass prices={{{model!r}: autocontinue.Price(input=..., output=...)}} (USD per 1M tokens)"
            )
        return price


class BudgetState(NamedTuple):
    """What a stop condition may look at: the call so far, before the next round."""

    # A named tuple: immutable, and the cheapest record to make (one or more per round).

    rounds: int
    completion_tokens: int
    cost_usd: float
    next_prompt_cost_usd: float = 0.0  # estimated cost of the next round's prompt
    output_price_per_token: float | None = None
    #: seconds since the call started (retry waits included), and the longest round's so far
    elapsed_s: float = 0.0
    longest_round_s: float = 0.0


class StopCondition:
    """Base of the composable stop conditions."""

    def __call__(self, state: BudgetState) -> str | None:
        """The stop cause if the call must stop now, else ``None``."""
        raise NotImplementedError

    def tokens_left(self, state: BudgetState) -> int | None:
        """How many completion tokens the next round may use, or ``None`` for no limit."""
        return None

    @property
    def needs_price(self) -> bool:
        """Whether the condition can only be enforced with a known price."""
        return False

    def __or__(self, other: StopCondition) -> StopCondition:
        return _StopAny((*_parts(self), *_parts(other)))

    def __ror__(self, other: StopCondition) -> StopCondition:
        return _StopAny((*_parts(other), *_parts(self)))


def _parts(condition: StopCondition) -> tuple[StopCondition, ...]:
    if not isinstance(condition, StopCondition):
        raise ConfigurationError(f"cannot combine a stop condition with {type(condition).__name__}")
    return condition.conditions if isinstance(condition, _StopAny) else (condition,)


def conditions_of(condition: StopCondition) -> tuple[StopCondition, ...]:
    """The conditions a composed condition is made of (a single one: itself)."""
    return _parts(condition)


class _StopAny(StopCondition):
    def __init__(self, conditions: tuple[StopCondition, ...]) -> None:
        self.conditions = conditions
        self._needs_price = any(c.needs_price for c in conditions)

    def __call__(self, state: BudgetState) -> str | None:
        for condition in self.conditions:
            cause = condition(state)
            if cause is not None:
                return cause
        return None

    def tokens_left(self, state: BudgetState) -> int | None:
        least = None
        for condition in self.conditions:
            left = condition.tokens_left(state)
            if left is not None and (least is None or left < least):
                least = left
        return least

    @property
    def needs_price(self) -> bool:
        return self._needs_price

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.conditions))


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value


def _positive_number(name: str, value: object, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of {unit}, got {value!r}")
    return float(value)


class max_rounds(StopCondition):
    """Stop after ``n`` rounds (requests that produced text); always bounded."""

    def __init__(self, n: int) -> None:
        self.n = _positive_int("max_rounds", n)

    def __call__(self, state: BudgetState) -> str | None:
        return "max_rounds" if state.rounds >= self.n else None

    def __repr__(self) -> str:
        return f"max_rounds({self.n})"


class max_total_tokens(StopCondition):
    """Stop when ``n`` completion tokens have been generated over all rounds; rounds are clamped to fit."""

    def __init__(self, n: int) -> None:
        self.n = _positive_int("max_total_tokens", n)

    def __call__(self, state: BudgetState) -> str | None:
        return "token_budget" if state.completion_tokens >= self.n else None

    def tokens_left(self, state: BudgetState) -> int | None:
        return max(0, self.n - state.completion_tokens)

    def __repr__(self) -> str:
        return f"max_total_tokens({self.n})"


class max_cost(StopCondition):
    """Stop when the call has cost ``usd``; the next round is clamped to what its estimated prompt leaves."""

    def __init__(self, usd: float) -> None:
        self.usd = _positive_number("max_cost_usd", usd, "USD")

    def __call__(self, state: BudgetState) -> str | None:
        if state.cost_usd >= self.usd:
            return "cost_budget"
        left = self.tokens_left(state)
        return "cost_budget" if left is not None and left <= 0 else None

    def tokens_left(self, state: BudgetState) -> int | None:
        if state.output_price_per_token is None or state.output_price_per_token <= 0:
            return None
        money = self.usd - state.cost_usd - state.next_prompt_cost_usd
        return max(0, math.floor(money / state.output_price_per_token))

    @property
    def needs_price(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"max_cost({self.usd})"


class max_seconds(StopCondition):
    """Start no round that the time left cannot fit, judged by the longest round so far: the call ends by about
    ``seconds`` after it started, with the answer so far (``time_budget``). For a deadline of the caller's, such as an
    HTTP client's timeout on a non-streamed call: a timeout loses every round already paid for; this keeps them.
    A round slower than every one before it can still end past ``seconds``. A retry that the time left cannot fit
    (its wait plus a round) is not waited for: the call ends with the error (the text so far in its ``partial``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = _positive_number("max_seconds", seconds, "seconds")

    def __call__(self, state: BudgetState) -> str | None:
        return "time_budget" if state.elapsed_s + state.longest_round_s > self.seconds else None

    def __repr__(self) -> str:
        return f"max_seconds({self.seconds})"
