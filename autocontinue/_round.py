"""The round in flight: what was sent, and what its reply has brought so far.

Plain state, written as a reply arrives (a whole reply by :meth:`Round.take`, a streamed one chunk by chunk by
``_chunks.take_choice``) and read by the modules around the core (accounting, the seam's release, logprobs); one
object per request, dropped when the round ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion
from openai.types.completion_usage import CompletionUsage

from ._cut import Release
from ._replies import merge_tool_deltas, reasoning_of
from .stitch import PlainSeam, Seam

__all__ = ["Round"]


@dataclass(slots=True)
class Round:
    """The round in flight."""

    index: int
    sent: str  # the prefix sent ("" for an ordinary first request)
    held: str  # text after ``sent`` that was held back for the model to regenerate
    seam: Seam | PlainSeam
    kwargs: dict[str, Any]
    started: float
    release: Release | None  # what of the round's text a stream may hand on (made when the first text comes)
    pieces: list[str] = field(default_factory=list)  # the round's decided text
    raw_chars: int = 0  # characters of reply text received
    finish_reason: str | None = None
    usage: CompletionUsage | None = None
    message: Any = None
    content_chunks: int = 0  # pieces of reply text received (streamed: chunks that carried text)
    raw_head: str = ""  # the first characters of the raw reply, to recognise the same reply twice
    tool_calls: list[Any] = field(default_factory=list)  # streamed tool-call deltas
    released_at_start: int = 0
    reasoning: list[str] = field(default_factory=list)  # reasoning text of this round
    # Token logprobs wait here until the text they cover is released, so that those of held-back text (which
    # the model writes again) are dropped with it and a stream carries each entry with its own text.
    logprob_queue: deque[Any] = field(default_factory=deque)
    logprob_credit: int = 0  # released characters not yet matched to queued entries
    fresh_logprobs: list[Any] = field(default_factory=list)  # entries released by the last chunk
    base_url: str | None = None  # where the request goes, when not to the client's own URL
    added: list[Any] | None = None  # the messages the dialect added to the caller's (None: it continues nothing)

    def calls(self) -> list[Any]:
        """The tool calls the reply has brought: a whole reply's, or a streamed reply's fragments joined."""
        whole = getattr(self.message, "tool_calls", None)
        if whole:
            return list(whole)
        return merge_tool_deltas(self.tool_calls) if self.tool_calls else []

    def take(self, completion: ChatCompletion) -> str:
        """Read a whole reply (its first choice) into the round: message, usage, finish reason, reasoning text and
        logprobs (which wait for the text they cover); return its text."""
        choice = completion.choices[0]
        self.message = choice.message
        self.usage = completion.usage
        self.finish_reason = choice.finish_reason
        reasoning = reasoning_of(choice.message)
        if reasoning:
            self.reasoning.append(reasoning)
        if choice.logprobs is not None and choice.logprobs.content:
            self.logprob_queue.extend(choice.logprobs.content)
        return choice.message.content or ""
