"""Per-request options: an ``autocontinue`` object in the body, or ``X-Autocontinue-*`` headers.

    {"model": "...", "messages": [...], "autocontinue": {"max_rounds": 4, "dialect": "prefix", "heal": false}}
    X-Autocontinue-Max-Rounds: 4
    X-Autocontinue-Dialect: prefix

A header's name is the option's with ``-`` for ``_`` (any case). The body object is removed before the request goes
upstream; a header wins over the body. Unknown names and values of the wrong type are a 400 before any request, and
the library checks the values themselves (:class:`~autocontinue.ConfigurationError`, also a 400). When the server
holds the upstream key, a request may lower the server's budgets but not raise them: the server pays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ServeError

__all__ = ["BODY_FIELD", "CLIENT_TIMEOUT_SHARE", "HEADER_PREFIX", "client_deadline", "request_options"]

BODY_FIELD = "autocontinue"
HEADER_PREFIX = "x-autocontinue-"


def _positive_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError("a positive integer")


def _positive_number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    raise ValueError("a positive number")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("true or false")


def _name(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise ValueError("a dialect name")


def _prices(value: Any) -> dict[str, tuple[float, float]]:
    # {"model": {"input": USD per 1M, "output": USD per 1M}}
    if not isinstance(value, Mapping):
        raise ValueError('an object of model -> {"input": USD, "output": USD} per 1M tokens')
    prices: dict[str, tuple[float, float]] = {}
    for model, price in value.items():
        if not isinstance(price, Mapping) or set(price) != {"input", "output"}:
            raise ValueError('an object of model -> {"input": USD, "output": USD} per 1M tokens')
        amounts = (price["input"], price["output"])
        if not all(isinstance(a, int | float) and not isinstance(a, bool) and 0 <= a < math.inf for a in amounts):
            raise ValueError("prices of 0 or more")
        prices[str(model)] = (float(amounts[0]), float(amounts[1]))
    return prices


#: the options a request may set, each with its check; ``retry``, ``stop_when`` and ``log_text`` stay the server's
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "max_rounds": _positive_int,
    "max_total_tokens": _positive_int,
    "max_cost_usd": _positive_number,
    "max_seconds": _positive_number,
    "max_round_tokens": _positive_int,
    "dialect": _name,
    "heal": _flag,
    "stop_on_repeat": _flag,
    "reasoning_retry": _flag,
    "prices": _prices,
}
#: budgets a request may only lower when the server holds the key
_BUDGETS = ("max_rounds", "max_total_tokens", "max_cost_usd", "max_seconds", "max_round_tokens")


def _from_header(text: str) -> Any:
    """A header's value as the JSON value it stands for: an integer, a number, a flag, else the text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for parse in (int, float):
        try:
            return parse(lowered)
        except ValueError:
            pass
    return text.strip()


def _overrides(body_value: Any, headers: Mapping[str, str]) -> dict[str, Any]:
    given: dict[str, tuple[Any, str]] = {}
    if body_value is not None:
        if not isinstance(body_value, Mapping):
            raise ServeError(
                400,
                f"'{BODY_FIELD}' must be an object of options",
                "invalid_request_error",
                param=BODY_FIELD,
                code="invalid_autocontinue_options",
            )
        given.update({str(name): (value, f"{BODY_FIELD}.{name}") for name, value in body_value.items()})
    for header, text in headers.items():
        if header.lower().startswith(HEADER_PREFIX):
            suffix = header.lower()[len(HEADER_PREFIX) :]
            given[suffix.replace("-", "_")] = (_from_header(text), f"X-Autocontinue-{suffix}")
    options: dict[str, Any] = {}
    for name, (value, where) in given.items():
        check = _CHECKS.get(name)
        if check is None or (name == "prices" and where.startswith("X-")):
            known = ", ".join(sorted(_CHECKS))
            raise ServeError(
                400,
                f"{where}: unknown option (known: {known})",
                "invalid_request_error",
                param=where,
                code="invalid_autocontinue_options",
            )
        try:
            options[name] = check(value)
        except ValueError as exc:
            raise ServeError(
                400, f"{where} must be {exc}", "invalid_request_error", param=where, code="invalid_autocontinue_options"
            ) from None
    return options


#: the client's timeout in seconds, as the OpenAI SDKs announce it: Python's read timeout, Node's whole timeout
_CLIENT_TIMEOUTS = ("x-stainless-read-timeout", "x-stainless-timeout")
#: the share of a client's timeout a non-streamed call may take; the rest covers a round slower than the longest
#: before it (``max_seconds`` judges by that) and the way back
CLIENT_TIMEOUT_SHARE = 0.9


def client_deadline(headers: Mapping[str, str]) -> float | None:
    """Seconds a non-streamed call may take before the client gives up on it, from the timeout its OpenAI SDK
    announces (``None``: not announced). A client that times out retries from scratch: every round paid for is lost
    and paid again. Ending by then with the answer so far (``time_budget``) keeps it."""
    for name in _CLIENT_TIMEOUTS:
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds > 0:
            return seconds * CLIENT_TIMEOUT_SHARE
    return None


def request_options(
    defaults: Mapping[str, Any],
    body_value: Any,
    headers: Mapping[str, str],
    *,
    server_pays: bool,
    stream: bool = False,
) -> dict[str, Any]:
    """The library options of one request: the server's ``defaults`` with the request's overrides, and, not
    streamed, ``max_seconds`` no later than the client's own timeout allows (:func:`client_deadline`)."""
    overrides = _overrides(body_value, headers)
    if server_pays:
        for name in _BUDGETS:
            ceiling, asked = defaults.get(name), overrides.get(name)
            if ceiling is not None and asked is not None and asked > ceiling:
                raise ServeError(
                    400,
                    f"{name} may not be raised above the server's {ceiling}",
                    "invalid_request_error",
                    param=name,
                    code="budget_above_server_limit",
                )
    options = {**defaults, **overrides}
    deadline = None if stream else client_deadline(headers)
    if deadline is not None and deadline < options.get("max_seconds", math.inf):
        options["max_seconds"] = deadline
    return options
