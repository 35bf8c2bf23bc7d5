"""The answer so far: its text, what of it a stream has handed on, its reasoning text and its logprobs, and the
first reply (the result's template).

Rounds add to it in three ways: reply text as it arrives (:meth:`Answer.feed`, through the round's seam, which says
what a stream may hand on now), a round's text made part of it when the round ends (:meth:`Answer.commit`), and
what a broken-off reply had decided (:meth:`Answer.keep_partial`): text already generated is never dropped.
"""

from __future__ import annotations

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ._cut import HOLD_WINDOW, Release
from ._logprobs import Logprobs
from ._round import Round

__all__ = ["RAW_HEAD", "Answer"]

#: characters of each raw reply kept to recognise the same reply twice
RAW_HEAD = 64


class Answer:
    """The text of a continued call so far (the caller's own assistant prefix, if any, included)."""

    def __init__(self, prefix: str) -> None:
        self.text = prefix
        self.released = len(prefix)  # how much of the text a stream has handed on
        self.floor = 0  # length of the prefix sent last round: a heal never reaches back past it
        self.reasoning: list[str] = []  # reasoning text over all rounds, kept apart from the answer
        self.logprobs = Logprobs()
        #: the first reply (a completion, or a stream's first chunk): its id, model and creation time are the result's
        self.first: ChatCompletion | ChatCompletionChunk | None = None

    def release_of(self, sent: str, answer_start: int, heal: bool, strip_whitespace: bool) -> Release:
        """How a round that sends ``sent`` releases its text to a stream (see :class:`~autocontinue._cut.Release`):
        the part of ``sent`` not handed on yet is handed on with it, and re-created text already handed on is not
        handed on twice. ``answer_start``: where the caller's own prefix ends."""
        released = self.released
        return Release(
            start=len(sent),
            # The floor this round was planned with, not its prefix: a round that only wrote its held text again
            # may be followed by the same cut with a larger limit, and must not have released that text.
            floor=max(self.floor, answer_start),
            heal=heal,
            strip_whitespace=strip_whitespace,
            tail=sent[-2 * HOLD_WINDOW :],
            unreleased=sent[released:] if released < len(sent) else "",
            skip=max(0, released - len(sent)),
        )

    def feed(self, current: Round, delta: str) -> str:
        """Reply text of the round in flight, through its seam; return the text now safe to hand to a stream (the
        round's release is made before its first text comes)."""
        current.content_chunks += 1
        if len(current.raw_head) < RAW_HEAD:
            current.raw_head += delta[: RAW_HEAD - len(current.raw_head)]
        current.raw_chars += len(delta)
        seam = current.seam
        return self.append(current, delta if seam.plain else seam.feed(delta))

    def append(self, current: Round, text: str) -> str:
        """Add decided text of the round in flight; return the part of it (and of earlier text) that can no longer
        change: all but what a cut here would hold back for the model to regenerate."""
        if not text:
            return ""
        current.pieces.append(text)
        release = current.release
        assert release is not None, "the round's release is made before its text is appended"
        out, self.released = release.add(text, self.released)
        if not out:
            return ""
        if current.logprob_queue:
            self.logprobs.release(current, len(out))
        return out

    def commit(self, current: Round, new_text: str) -> int:
        """Make the round's text (and reasoning and logprobs) part of the answer; return the characters added."""
        before = len(self.text)
        self.text = current.sent + new_text
        self.floor = len(current.sent)
        if current.reasoning:
            self.reasoning.extend(current.reasoning)
        self.logprobs.last = current.logprob_queue
        return len(self.text) - before

    def keep_partial(self, current: Round) -> int | None:
        """A reply broke off: keep every decided character, as if the round had been cut there. Returns the
        characters added, or ``None`` when the round decided nothing and changed nothing (it is not recorded)."""
        decided = "".join(current.pieces)
        text = current.sent + decided + current.seam.abort()
        self.reasoning.extend(current.reasoning)
        added = len(text) - len(self.text)
        if text == self.text:
            # Nothing new was decided (typically the request itself failed): the floor stays where it was, so the
            # retry plans the very same request - the same cut, the same heal - and a transient error leaves no
            # mark on the answer.
            return added if decided else None
        self.text = text
        self.floor = len(current.sent)
        return added
