"""The CLI's options: the parser, and the types of their values, each saying what it expects in its own words.

Each type raises ``ArgumentTypeError`` with its message: for any other exception argparse would print the function's
name (``invalid _positive_int value: 'zero'``), an internal name that tells a user nothing.
"""

from __future__ import annotations

import argparse
import math

from ._options import DEFAULT_MAX_ROUNDS
from .dialects import DIALECTS
from .local import DEFAULT_MODEL, MODELS

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "PROG",
    "build_parser",
    "integer",
    "number",
    "positive_int",
    "positive_number",
    "price",
]

#: tokens per round unless --max-tokens says otherwise: small enough that a long answer visibly takes several
#: rounds on the local model, large enough that a remote API is not asked for many tiny rounds
DEFAULT_MAX_TOKENS = 128

PROG = "autocontinue"


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


def build_parser() -> argparse.ArgumentParser:
    """The command line: the prompt, the request, the budgets, where to send it, and how to print the result."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ask an LLM and get the whole answer: a reply cut off by the output-token limit is continued "
        "until it ends by itself or a budget runs out.",
        epilog="Without --base-url and without an API key (--api-key, OPENAI_API_KEY) the embedded local model "
        "(SmolLM2-135M-Instruct on llama.cpp) is started and used; it is built or fetched on first use. "
        "The answer goes to stdout, the round trace to stderr.",
    )
    parser.add_argument("prompt", nargs="*", help="the user message (read from stdin when omitted)")
    request = parser.add_argument_group("request")
    request.add_argument(
        "--model",
        help=f"model name; for the local engine one of {', '.join(MODELS)} (default {DEFAULT_MODEL}); "
        "required for a remote API",
    )
    request.add_argument("--system", help="a system message to put before the prompt")
    request.add_argument(
        "--max-tokens",
        type=positive_int,
        default=DEFAULT_MAX_TOKENS,
        help="output tokens per round (default %(default)s)",
    )
    request.add_argument("--temperature", type=number, help="sampling temperature (default: the server's)")
    request.add_argument("--seed", type=integer, help="sampling seed, for reproducible answers")
    budgets = parser.add_argument_group("continuation")
    budgets.add_argument(
        "--max-rounds",
        type=positive_int,
        default=DEFAULT_MAX_ROUNDS,
        help="most requests for one answer (default %(default)s)",
    )
    budgets.add_argument("--max-total-tokens", type=positive_int, help="most output tokens over all rounds")
    budgets.add_argument(
        "--max-cost",
        type=positive_number,
        metavar="USD",
        help="most money to spend on the answer (needs the model's price: built in, or --price-in/--price-out)",
    )
    budgets.add_argument(
        "--max-seconds",
        type=positive_number,
        metavar="S",
        help="start no round that would end past S seconds (judged by the longest round so far)",
    )
    budgets.add_argument("--price-in", type=price, metavar="USD", help="the model's price per 1M input (prompt) tokens")
    budgets.add_argument("--price-out", type=price, metavar="USD", help="the model's price per 1M output tokens")
    budgets.add_argument(
        "--max-round-tokens",
        type=positive_int,
        metavar="N",
        help="the most tokens one round may ask for when a round's limit is raised above --max-tokens "
        "(see the README's per-round limit rule; --max-round-tokens equal to --max-tokens: never above it)",
    )
    budgets.add_argument(
        "--dialect",
        default="auto",
        choices=["auto", *sorted(DIALECTS)],
        help="how the text so far is sent back to the model (default: chosen from the base URL)",
    )
    budgets.add_argument(
        "--no-heal",
        dest="heal",
        action="store_false",
        help="send the text so far as it is, instead of holding back its last word for the model to rewrite",
    )
    budgets.add_argument(
        "--no-repeat-stop",
        dest="stop_on_repeat",
        action="store_false",
        help="let an answer whose rounds repeat themselves go on (to its end, --max-rounds or a budget)",
    )
    where = parser.add_argument_group("where")
    where.add_argument("--base-url", help="an OpenAI-compatible API's base URL (default: $OPENAI_BASE_URL)")
    where.add_argument("--api-key", help="the API key (default: $OPENAI_API_KEY)")
    where.add_argument("--local", action="store_true", help="use the embedded local model even if an API is set")
    output = parser.add_argument_group("output")
    output.add_argument("--no-stream", dest="stream", action="store_false", help="print the answer only at the end")
    output.add_argument(
        "--json",
        action="store_true",
        help="print the final ChatCompletion, trace included, as JSON on stdout (implies --no-stream)",
    )
    output.add_argument("-q", "--quiet", action="store_true", help="print no trace and no progress on stderr")
    output.add_argument("-v", "--verbose", action="store_true", help="also log every round's event on stderr")
    return parser
