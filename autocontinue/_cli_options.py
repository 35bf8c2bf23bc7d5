"""Types of the CLI's options: each says what it expects in its own words.

Each raises ``ArgumentTypeError`` with its message: for any other exception argparse would print the function's
name (``invalid _positive_int value: 'zero'``), an internal name that tells a user nothing.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["integer", "number", "positive_int", "positive_number", "price"]


def integer(value: str) -> int:
    """A whole number (a seed)."""
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {value!r}") from None


def positive_int(value: str) -> int:
    """A whole number above 0 (a count of tokens or rounds)."""
    try:
        parsed = int(value)
    except ValueError:
        parsed = 0
    if parsed <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return parsed


def number(value: str) -> float:
    """A finite number (not nan, not inf)."""
    try:
        parsed = float(value)
    except ValueError:
        parsed = math.nan
    if not math.isfinite(parsed):
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}")
    return parsed


def positive_number(value: str) -> float:
    """A number above 0 (a budget in USD)."""
    amount = number(value)
    if amount <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value!r}")
    return amount


def price(value: str) -> float:
    """A price in USD per 1M tokens: 0 (a free model) or more."""
    amount = number(value)
    if amount < 0:
        raise argparse.ArgumentTypeError(f"must be a price in USD per 1M tokens (0 or more), got {value!r}")
    return amount
