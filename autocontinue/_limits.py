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

from openai.types.completion_usage import CompletionUsage

__all__ = ["MAX_STALLS", "capped", "doubled", "filled"]

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
