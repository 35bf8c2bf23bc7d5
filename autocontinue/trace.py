"""What happened during a continued call: one record per round, and the call's totals.

``ChatCompletion.continuation`` on every result (and ``ContinuationFailed.partial``) is a :class:`ContinuationTrace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openai.types.completion_usage import CompletionUsage

__all__ = ["ContinuationTrace", "RoundTrace"]


@dataclass(slots=True)
class RoundTrace:
    """One request of the call."""

    index: int
    finish_reason: str | None
    usage: CompletionUsage
    #: True when the provider reported no usage and it was counted locally
    usage_estimated: bool
    #: characters this round added to the answer (after the seam was joined)
    chars_added: int
    #: what the seam did: "echo_stripped", "overlap_removed:N", "whitespace_restored", "healed", ...
    seam: tuple[str, ...]
    dialect: str
    latency_s: float
    #: failed attempts before this round's request went through
    retries: int = 0
    cost_usd: float | None = None


@dataclass
class ContinuationTrace:
    """The rounds of a call, why it stopped, and what it cost."""

    rounds: list[RoundTrace] = field(default_factory=list)
    # Why the call ended: "natural" (the model ended by itself), "max_rounds", "token_budget", "cost_budget",
    # "time_budget" (max_seconds: the next round would not end in time), "no_progress" (a round added nothing, or
    # the answer loops), "reasoning_truncated" (cut inside the reasoning phase where the dialect cannot resume it),
    # "tool_call_truncated" (only on TruncatedToolCallError.partial), "content_filter", "tool_calls",
    # "context_window" (the prompt plus the text so far no longer fits), "other" (any other finish_reason, passed
    # through) or "error" (a round failed after retries: ContinuationFailed.partial).
    stop_cause: str = "natural"
    #: total cost in USD, or None when the model's price is unknown
    cost_usd: float | None = None
    #: the dialect used for the last continuation (after any fallback)
    dialect: str = ""
    #: dialect changes made during the call, e.g. ["prefill->instruction"]
    fallbacks: list[str] = field(default_factory=list)
    #: for n > 1: each choice's own trace (the lists above then cover all choices)
    per_choice: list[ContinuationTrace] = field(default_factory=list)

    @property
    def continued(self) -> bool:
        """True when more than one round was needed."""
        return len(self.rounds) > 1
