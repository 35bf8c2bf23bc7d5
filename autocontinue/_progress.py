"""Progress: whether a round that was cut moved the answer on, and when a call must stop for ``no_progress``.

Two rules, each with a bound that does not depend on how the model writes:

- **A round that adds nothing ends the call at once** (an empty reply, a reply that was all echo, or a repeat the
  seam removed). Two exceptions, for a reply that was not empty and not the same as the stalled round's before it
  (a server answering that way would answer so forever):

  - a round whose whole reply went into regenerating the text held back from the prefix (whitespace a provider
    refuses, a healed word, rounds of a token or two) gets another chance, at most :data:`MAX_GROWTHS` times in a
    row (``grow``);
  - a round whose reply was all repeat of the text already known (the instruction dialect's model writing the
    last line, or the answer from its beginning, again before it continues), with or without the held text after
    it, and used its whole limit, gets a round with twice the limit (``widen``), at most :data:`MAX_GROWTHS` times
    in a row: the repeat filled the round, and a round no larger can only write it again. A reply that stopped
    short of its limit gains nothing from a larger one, so a server that only repeats the tail (and says so in its
    usage) still ends the call at the second such round.
- **Repetition is text until it is long**: answers repeat legitimately (a table of zeros, a rule of dashes, "one
  one one ... one two" in rounds of two tokens), so repeated text never ends a call while it is shorter than
  :data:`LOOP_FLOOR` characters. Once the last :data:`LOOP_FLOOR` characters of the answer are a copy of the
  characters at most :data:`MAX_PERIOD` before them, the model is looping, and the call stops at the end of that
  round (``stop_on_repeat=False`` turns this rule off).

Everything else is bounded by ``max_rounds`` and the budgets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ._limits import filled, limit_of
from ._round import Round

__all__ = ["LOOP_FLOOR", "MAX_GROWTHS", "MAX_PERIOD", "Progress", "Verdict", "loops", "repeat_removed"]

#: repeated text shorter than this many characters never ends a call
LOOP_FLOOR = 1_000
#: the longest loop looked for (a repeated paragraph or table block up to this many characters)
MAX_PERIOD = 2_000
#: consecutive rounds given a larger limit because they could only regenerate held-back text
MAX_GROWTHS = 4
#: the longest unfinished last word looked past
_WORD = 64
#: characters of the tail searched for first, to rule a loop out cheaply
_PROBE = 64
#: characters of a raw reply that, seen again after round 1, make it "the same reply" (the fallback dialect's cue)
MIN_SAME_REPLY = 6

Verdict = Literal["go", "grow", "widen", "stalled", "loop"]

#: what the instruction seam records when it removed a repeat of the known text (``seam`` trace entries)
_REPEAT_ACTIONS = ("overlap_removed:", "restart_removed:")


def repeat_removed(actions: Sequence[str]) -> bool:
    """Whether a round's seam removed a repeat of the text already known (a tail or the answer's opening)."""
    return any(action.startswith(_REPEAT_ACTIONS) for action in actions)


def loops(text: str) -> bool:
    """Whether ``text`` ends in a loop: the :data:`LOOP_FLOOR` characters at its end already occur, verbatim,
    ending at most :data:`MAX_PERIOD` characters earlier.

    "At its end" allows for an unfinished last word: with healing, each round regenerates the word it was cut in,
    so the text of a loop ends in a different partial word every round and only what precedes it repeats. Two
    searches over a bounded window at the end of the text.
    """
    if len(text) <= LOOP_FLOOR:
        return False
    window = text[-(LOOP_FLOOR + MAX_PERIOD + _WORD) :]
    if _repeats(window):
        return True
    end = len(window.rstrip())
    start = max(end - _WORD, 0)
    word_start = max(window.rfind(" ", start, end), window.rfind("\n", start, end)) + 1
    return 0 < word_start < len(window) and _repeats(window[:word_start])


def _repeats(window: str) -> bool:
    """The last LOOP_FLOOR characters of ``window`` also occur starting before them (p >= 1 characters back)."""
    end = len(window)
    if end <= LOOP_FLOOR:
        return False
    # A short probe first: in text that does not loop, its last few dozen characters seldom recur, and a search
    # for a short needle is several times cheaper than for a long one (this runs once per cut round).
    if window.rfind(window[-_PROBE:], 0, end - 1) == -1:
        return False
    return window.rfind(window[-LOOP_FLOOR:], 0, end - 1) != -1


class Progress:
    """Judges each cut round of one call (see the module docstring for the rules)."""

    def __init__(self, stop_on_repeat: bool) -> None:
        self._stop_on_repeat = stop_on_repeat
        self._growths = 0
        self._widenings = 0
        self._first_raw: tuple[int, str] | None = None
        self._last_stalled: tuple[int, str] | None = None
        #: the last round's raw reply was the first judged round's, character for character (and not trivially
        #: short): what a host that ignores the prefix sends back (the fallback dialect's cue)
        self.same_reply = False

    def judge(self, current: Round, *, stalled: bool, text: str) -> Verdict:
        """One cut round, ``current``: ``stalled`` when the answer did not grow, ``text`` the answer so far."""
        actions = current.seam.actions
        # what the model wrote beyond an echo of the prefix (a restart or a repeat the seam removed counts)
        said = current.raw_chars - (len(current.sent) if "echo_stripped" in actions else 0)
        raw = (current.raw_chars, current.raw_head)  # the reply's length and start
        # the seam removed a repeat of the known text, and the reply used the round's whole limit
        repeated = repeat_removed(actions) and filled(current.usage, limit_of(current.kwargs))
        # Round 1's reply, not the last one's: a model continuing a whitespace run that a dialect may not send
        # writes the same echo and run in two rounds in a row (measured on Gemma 3), and needs the larger round.
        if self._first_raw is None:
            self._first_raw = raw
        else:
            self.same_reply = raw == self._first_raw and len(raw[1].strip()) >= MIN_SAME_REPLY
        if stalled:
            replied = said > 0
            again = raw == self._last_stalled
            self._last_stalled = raw
            if repeated and replied and not again and self._widenings < MAX_GROWTHS:
                # The repeat may be longer than a round (a line of 200 characters at 24 tokens a round): a larger
                # round tells a model that repeats before it continues from one that only repeats, which writes
                # the same reply again and so ends the call.
                self._widenings += 1
                return "widen"
            if replied and current.held and not again and not self.same_reply and self._growths < MAX_GROWTHS:
                self._growths += 1
                return "grow"
            return "stalled"
        self._growths = 0
        self._widenings = 0
        self._last_stalled = None
        if self._stop_on_repeat and loops(text):
            return "loop"
        return "go"
