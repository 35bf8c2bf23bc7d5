"""The per-round output limit: how many tokens each request may ask for.

The rule (README, "The per-round limit"): a round asks for the caller's ``max_tokens`` / ``max_completion_tokens``,
lowered to what the budgets have left. It asks for more in four cases only, each at most ``max_round_tokens`` when
the caller sets it, and always within the budgets:

- a round whose whole limit went into regenerating whitespace the dialect may not send (the prefill dialect never
  sends trailing whitespace, as Anthropic refuses it) is followed by one with twice the limit, at most
  :data:`MAX_STALLS` times in a row. This happens only when the limit is smaller than a whitespace run, i.e. with
  limits of a few tokens. A round that could only regenerate a held-back *word* gets no more tokens: the next
  round holds back less instead (a heal never reaches back past the prefix sent before), at the caller's limit;
- under the instruction dialect, a round whose reply was all repeat of the text already known (a model that writes
  the current line, or the answer from its beginning, again before it continues) and used its whole limit is
  followed by one with twice the limit, at most :data:`MAX_STALLS` times in a row (see ``_progress``);
- a round cut inside a tool call is retried once with twice the limit (not while streaming);
- with ``reasoning_retry=True``, a round cut inside the reasoning phase is retried once with twice the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from openai.types.completion_usage import CompletionUsage

__all__ = [
    "MAX_STALLS",
    "NAMES",
    "RoundLimits",
    "capped",
    "doubled",
    "filled",
    "larger",
    "limit_of",
    "set_limit",
]

#: the request options that limit a round's output (the SDK's two names for one thing)
NAMES = ("max_tokens", "max_completion_tokens")

#: rounds in a row that may follow a round that could only regenerate held-back text (whitespace or a word)
MAX_STALLS = 4


def doubled(had: int | None, *, left: int | None, cap: int | None) -> int | None:
    """Twice ``had``, within the tokens the budgets leave (``left``) and the caller's ``cap``; ``None`` when that
    is not larger than ``had`` (or the round had no limit to double)."""
    if had is None:
        return None
    larger = 2 * had
    if left is not None:
        larger = min(larger, left)
    if cap is not None:
        larger = min(larger, cap)
    return larger if larger > had else None


def capped(limit: int | None, *, left: int | None) -> int | None:
    """A round's limit lowered to what the budgets leave (at least 1: a round that is sent asks for something)."""
    if left is None:
        return limit
    return max(1, left) if limit is None else min(limit, max(1, left))


def filled(usage: CompletionUsage | None, limit: int | None) -> bool:
    """Whether a round cut by the limit wrote all of it: a larger limit can only help a reply that did. Without
    reported usage, the finish reason's word is taken."""
    if usage is None or limit is None:
        return True
    return usage.completion_tokens >= limit


def limit_of(kwargs: Mapping[str, Any]) -> int | None:
    """The output limit a request asks for (the smaller, if it names both), or ``None``."""
    limits = [kwargs[name] for name in NAMES if kwargs.get(name) is not None]
    return min(limits) if limits else None


def larger(kwargs: Mapping[str, Any], *, left: int | None, cap: int | None) -> int | None:
    """The one rule for asking for more: twice the limit of the request ``kwargs`` (see :func:`doubled`)."""
    return doubled(limit_of(kwargs), left=left, cap=cap)


def set_limit(kwargs: dict[str, Any], *, limit: int | None, left: int | None, default_name: str) -> None:
    """Write a round's limit into its request: ``limit`` (else the request's own) lowered to ``left``, under each
    name the request uses (``default_name``, the dialect's, when it uses none)."""
    names = [name for name in NAMES if kwargs.get(name) is not None]
    for name in names or [default_name]:
        kwargs[name] = capped(limit if limit is not None else kwargs.get(name), left=left)


class RoundLimits:
    """The per-round limit of one call: what the round in flight may write, and the larger limits the rule grants
    (a retried round at most once per call, a stalled round at most :data:`MAX_STALLS` times in a row)."""

    def __init__(self, cap: int | None) -> None:
        self._cap = cap  # max_round_tokens
        #: the tokens the round in flight may write as the budgets see it (None: no budget limits it)
        self.current: int | None = None
        self._override: int | None = None  # a larger limit for the next round
        self._enlarged = False
        self._stalls = 0  # rounds in a row that could only regenerate held-back text

    def apply(self, kwargs: dict[str, Any], *, left: int | None, default_name: str) -> None:
        """Set the next round's limit in its request: the caller's (or a granted larger one), lowered to ``left``."""
        self.current = left
        override = self._override
        if left is None and override is None:
            return  # the caller's own limit (or none) stands
        self._override = None
        set_limit(kwargs, limit=override, left=left, default_name=default_name)

    def may_retry(self, kwargs: Mapping[str, Any]) -> bool:
        """Whether a round sent with ``kwargs`` may be retried with a larger limit (once per call)."""
        return not self._enlarged and limit_of(kwargs) is not None

    def retry_with(self, limit: int) -> None:
        """The next round retries the last one with ``limit``."""
        self._enlarged, self._override = True, limit

    def after_stall(self, kwargs: Mapping[str, Any], *, wider: bool, left: Callable[[], int | None]) -> bool:
        """Whether a round sent with ``kwargs`` that only regenerated held-back text (or only repeated known text)
        is followed by one that can add to the answer.

        A held word: the next round holds back less at the same limit, as a heal never reaches back past the
        prefix this round sent. Held whitespace the dialect may not send, or a repeat that filled the round
        (``wider``: either case): only a larger limit helps, within what the budgets leave (``left()``).
        """
        if self._stalls >= MAX_STALLS:
            return False
        if wider:
            limit = larger(kwargs, left=left(), cap=self._cap)
            if limit is None:
                return False
            self._override = limit
        self._stalls += 1
        return True

    def progressed(self) -> None:
        """A round added to the answer: stalls are counted afresh."""
        self._stalls = 0
