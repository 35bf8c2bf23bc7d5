"""Token logprobs across rounds: each entry is kept with the text it covers.

A round's entries wait in its queue until the text they cover is released by the seam, so that those of
held-back text (which the model writes again next round) are dropped with it, and a stream carries each entry
with its own text. The last round's entries that cover unreleased text wait for the next round, which carries
those that cover text it sends again.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ._round import Round

__all__ = ["Logprobs"]


class Logprobs:
    """The logprobs of one continued call."""

    def __init__(self) -> None:
        self.kept: list[Any] = []  # entries of released text, in order
        self.last: deque[Any] = deque()  # the last round's entries of text not yet released

    def carry(self, sent_length: int, released: int) -> deque[Any]:
        """For a new round: entries of the last round that cover text being sent (``sent_length`` characters)
        but not yet released (past ``released``); the rest covered held-back text, so they are dropped."""
        queue, self.last = self.last, deque()
        room = sent_length - released
        carried: deque[Any] = deque()
        while queue and room > 0 and len(queue[0].token) <= room:
            entry = queue.popleft()
            room -= len(entry.token)
            carried.append(entry)
        return carried

    def release(self, current: Round, chars: int) -> None:
        """``chars`` more characters of the round's text were released: keep the entries they cover (and hand
        them to the stream, through ``current.fresh_logprobs``)."""
        current.logprob_credit += chars
        queue = current.logprob_queue
        while queue and len(queue[0].token) <= current.logprob_credit:
            entry = queue.popleft()
            current.logprob_credit -= len(entry.token)
            self.kept.append(entry)
            current.fresh_logprobs.append(entry)

    def all(self) -> list[Any]:
        """Every entry of the answer, in order."""
        return self.kept + list(self.last)
