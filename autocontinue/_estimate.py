"""The prompt of the next round, estimated before it is sent (the cost budget needs it to clamp the round).

The next prompt is the last one plus the text the last round added, plus whatever the dialect adds around the
prefix: the prefix message's own overhead and, under ``instruction``, the user turn asking to continue. Counting
the added messages (never the prefix, which may be long) keeps the estimate to the request actually sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .tokens import TokenCounter

__all__ = ["added_prompt_tokens"]

#: tokens a message costs beyond its text (role and separators, as ``TokenCounter.count_messages`` counts them)
PER_MESSAGE = 4


def added_prompt_tokens(added: Sequence[Any], prefix: str, counter: TokenCounter) -> int:
    """Tokens of ``added`` (the messages a dialect puts after the caller's), the prefix's own text left out."""
    total = 0
    for message in added:
        total += PER_MESSAGE
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content is not prefix and content != prefix:
            total += counter.count(content)
    return total
