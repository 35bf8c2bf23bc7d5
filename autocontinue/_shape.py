"""Whether a reply has the shape of a chat completion, before any of it is trusted.

The SDK builds its models without validating them (``_strict_response_validation`` is off by default), so a body of
the wrong shape - a JSON array, ``null``, a choice without a message, a usage that is a string - reaches us as an
object of the wrong type or with ``None`` where a value must be. Each check here names what is wrong (never the
text) so that the core can treat the reply as a failed round and keep everything generated before it.
"""

from __future__ import annotations

from typing import Any

from openai.types.chat import ChatCompletion
from openai.types.completion_usage import CompletionUsage

__all__ = ["completion_problem", "finish_problem", "usage_problem"]


def completion_problem(completion: Any) -> str | None:
    """What makes ``completion`` unusable as a (non-streamed) chat completion, or ``None``."""
    if not isinstance(completion, ChatCompletion):
        return f"the body is a {type(completion).__name__}, not a chat completion"
    choices = completion.choices
    if not isinstance(choices, list) or not choices:
        return "the completion has no list of choices"
    for choice in choices:
        message = getattr(choice, "message", None)
        if message is None or not hasattr(message, "content"):
            return "a choice has no message"
        content = message.content
        if content is not None and not isinstance(content, str):
            return f"a message's content is a {type(content).__name__}, not text"
        problem = finish_problem(getattr(choice, "finish_reason", None))
        if problem is not None:
            return problem
        index = getattr(choice, "index", 0)
        if not isinstance(index, int) or isinstance(index, bool):
            return "a choice's index is not a number"
    return usage_problem(completion.usage)


def finish_problem(finish_reason: Any) -> str | None:
    """What is wrong with a finish reason (a string or ``None``), or ``None``."""
    if finish_reason is None or isinstance(finish_reason, str):
        return None
    return f"a finish_reason is a {type(finish_reason).__name__}, not a string"


def usage_problem(usage: Any) -> str | None:
    """What is wrong with a usage object (``None`` is fine: tokens are then counted locally), or ``None``."""
    if usage is None:
        return None
    if not isinstance(usage, CompletionUsage):
        return f"the usage is a {type(usage).__name__}, not a usage object"
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = getattr(usage, name, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"usage.{name} is not a count of tokens"
    details = usage.prompt_tokens_details
    if details is not None:
        cached = getattr(details, "cached_tokens", None)
        if cached is not None and (not isinstance(cached, int) or isinstance(cached, bool) or cached < 0):
            return "usage.prompt_tokens_details.cached_tokens is not a count of tokens"
    return None
