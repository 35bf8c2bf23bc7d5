"""autocontinue's options: the :class:`Settings` of a call, built and checked by :func:`make_settings`, whose
keyword arguments are the one list of option names (:data:`OPTION_NAMES`) that ``create()``, ``wrap()``, the
decorator and the CLI share.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tenacity

from . import budget as _budget
from .budget import Price, PriceTable, StopCondition
from .dialects import Dialect, resolve_dialect
from .errors import ConfigurationError
from .retry import default_retry
from .tokens import TokenCounter, default_counter

__all__ = ["DEFAULT_MAX_ROUNDS", "OPTION_NAMES", "Settings", "check_options", "make_settings", "split_options"]

#: rounds per call unless the caller says otherwise; a call is always bounded
DEFAULT_MAX_ROUNDS = 10

_DEFAULT = object()


@dataclass(frozen=True)
class Settings:
    """The options of a continued call (built by ``wrap()`` / ``create()`` from their keyword arguments)."""

    stop: StopCondition
    dialect: str | Dialect = "auto"
    retry: tenacity.BaseRetrying | None = None
    prices: PriceTable = field(default_factory=PriceTable)
    heal: bool = True
    counter: TokenCounter = field(default_factory=default_counter)
    log_text: bool = False
    #: retry a round cut inside the reasoning phase once with a larger limit (where it cannot be continued)
    reasoning_retry: bool = False
    #: end the call (``no_progress``) when a round repeats itself; off, only a round that adds nothing ends it
    stop_on_repeat: bool = True
    #: the most tokens a round may ask for when its limit is raised above the caller's (see ``_limits``)
    max_round_tokens: int | None = None


def make_settings(
    *,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    max_total_tokens: int | None = None,
    max_cost_usd: float | None = None,
    max_seconds: float | None = None,
    stop_when: StopCondition | None = None,
    dialect: str | Dialect = "auto",
    retry: Any = _DEFAULT,
    prices: Mapping[str, Price | tuple[float, float]] | None = None,
    heal: bool = True,
    log_text: bool = False,
    reasoning_retry: bool = False,
    stop_on_repeat: bool = True,
    max_round_tokens: int | None = None,
    counter: TokenCounter | None = None,
) -> Settings:
    """Check the options and build the :class:`Settings` of a call.

    ``max_rounds``, ``max_total_tokens``, ``max_cost_usd`` and ``max_seconds`` build stop conditions; ``stop_when``
    adds any composed condition (``max_rounds(8) | max_cost(0.5)``). A call always stops after ``max_rounds``.
    """
    stop: StopCondition = _budget.max_rounds(max_rounds)
    if max_total_tokens is not None:
        stop = stop | _budget.max_total_tokens(max_total_tokens)
    if max_cost_usd is not None:
        stop = stop | _budget.max_cost(max_cost_usd)
    if max_seconds is not None:
        stop = stop | _budget.max_seconds(max_seconds)
    if stop_when is not None:
        if not isinstance(stop_when, StopCondition):
            raise ConfigurationError(f"stop_when must be a stop condition, got {type(stop_when).__name__}")
        stop = stop | stop_when
    if not isinstance(dialect, str | Dialect) and not (isinstance(dialect, type) and issubclass(dialect, Dialect)):
        raise ConfigurationError(f"dialect must be a name or a Dialect, got {type(dialect).__name__}")
    resolve_dialect(dialect, "http://localhost")  # unknown names fail here, before any request
    if retry is _DEFAULT:
        retry = default_retry()
    elif retry is not None and not isinstance(retry, tenacity.BaseRetrying):
        raise ConfigurationError("retry must be a tenacity.Retrying (or AsyncRetrying) policy, or None")
    if prices is not None and not isinstance(prices, Mapping):
        raise ConfigurationError("prices must be a mapping of model name to Price")
    flags = {"heal": heal, "log_text": log_text, "reasoning_retry": reasoning_retry, "stop_on_repeat": stop_on_repeat}
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise ConfigurationError(f"{name} must be True or False, got {flag!r}")
    if max_round_tokens is not None and (
        not isinstance(max_round_tokens, int) or isinstance(max_round_tokens, bool) or max_round_tokens <= 0
    ):
        raise ConfigurationError(f"max_round_tokens must be a positive integer or None, got {max_round_tokens!r}")
    return Settings(
        stop=stop,
        dialect=dialect,
        retry=retry,
        prices=PriceTable(prices),
        heal=heal,
        counter=counter or default_counter(),
        log_text=log_text,
        reasoning_retry=reasoning_retry,
        stop_on_repeat=stop_on_repeat,
        max_round_tokens=max_round_tokens,
    )


#: keyword arguments that configure autocontinue rather than the request: :func:`make_settings`'s (``counter``
#: is for tests and benchmarks, not an option)
OPTION_NAMES = frozenset(inspect.signature(make_settings).parameters) - {"counter"}


def split_options(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``create()``'s keyword arguments as (autocontinue's options, the request's arguments)."""
    options = {k: v for k, v in kwargs.items() if k in OPTION_NAMES}
    request = {k: v for k, v in kwargs.items() if k not in OPTION_NAMES}
    return options, request


def check_options(options: Mapping[str, Any], *, who: str = "") -> Settings:
    """The settings of ``options``, all of which must be option names (``who`` names the caller in the error)."""
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise ConfigurationError(f"{who}unknown option(s) {unknown}; expected some of {sorted(OPTION_NAMES)}")
    return make_settings(**options)
