"""``n > 1``: one first request serves every choice; each choice is then continued on its own.

:func:`split_choices` turns the first reply into one single-choice reply per choice, shares the reported usage
between them so that sums stay exact (the prompt to choice 0, completion tokens in proportion to each choice's
text), and returns the :class:`~autocontinue._shares.Share` by which the choices divide the call's budgets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openai.types.chat import ChatCompletion
from openai.types.completion_usage import CompletionUsage

from ._replies import cached_tokens
from ._shares import Share
from .budget import Price
from .tokens import TokenCounter

__all__ = ["split_choices", "split_tokens"]


def split_choices(
    completion: ChatCompletion, counter: TokenCounter, price: Price | None, messages: Sequence[Any]
) -> tuple[list[ChatCompletion], Share]:
    """One reply per choice (each with its choice at index 0 and its part of the usage), in index order, and how
    the choices share the call's budgets."""
    choices = sorted(completion.choices, key=lambda c: c.index)
    usage = completion.usage
    counts = [counter.count(c.message.content or "") for c in choices]
    shares = split_tokens(usage.completion_tokens if usage is not None else 0, counts)
    singles = []
    for i, choice in enumerate(choices):
        part = None
        if usage is not None:
            prompt = usage.prompt_tokens if i == 0 else 0
            part = CompletionUsage(
                prompt_tokens=prompt,
                completion_tokens=shares[i],
                total_tokens=prompt + shares[i],
                prompt_tokens_details=usage.prompt_tokens_details if i == 0 else None,
            )
        singles.append(
            completion.model_copy(update={"choices": [choice.model_copy(update={"index": 0})], "usage": part})
        )
    if usage is not None:
        first_tokens, prompt, cached = usage.completion_tokens, usage.prompt_tokens, cached_tokens(usage)
    else:
        first_tokens, prompt, cached = sum(counts), counter.count_messages(messages), 0
    cost = price.cost(prompt, first_tokens, cached) if price else 0.0
    return singles, Share(choices=len(choices), first_tokens=first_tokens, first_cost=cost)


def split_tokens(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder), summing exactly to ``total``."""
    weight = sum(weights)
    if weight <= 0:
        return [total] + [0] * (len(weights) - 1)
    exact = [total * w / weight for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares
