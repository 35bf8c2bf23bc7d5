"""Where a prefix is cut, and what a stream may release: the healing-cut rule, one of the seam's two ends.

:func:`hold_back_point` is the rule: the prefix sent ends where the model's own tokenizer would split the text the
same way (after the last word end), never inside a cut multi-byte character, and before trailing whitespace a
provider refuses. :func:`resume_point` applies it to the answer so far to plan a round, and :class:`Release` applies
it to the end of a streamed round's text to tell what a reader may be handed already (all but what a cut there would
hold back, so a reader never sees text that a later round changes). Work is bounded to a window of the text's end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "HOLD_WINDOW",
    "MAX_HOLD",
    "REPLACEMENT_CHAR",
    "Release",
    "hold_back_point",
    "resume_point",
    "word_ends_before",
]

#: characters of the text's end examined when choosing what to hold back
HOLD_WINDOW = 256
#: the most text a heal may hold back; a longer "word" (base64, CJK run) is sent as it is
MAX_HOLD = 48

REPLACEMENT_CHAR = "\ufffd"


def hold_back_point(tail: str, offset: int, *, floor: int, heal: bool, strip_whitespace: bool) -> int:
    """Where the prefix to send ends; the text after it is held back for the model to regenerate.

    ``tail`` is the end of the text so far, starting at absolute index ``offset`` (at least :data:`HOLD_WINDOW`
    characters of it, unless the text is shorter). ``floor`` is the length of the prefix sent last round: a heal
    never reaches back to it, so every round makes progress.

    - U+FFFD (a multi-byte character cut in two by the provider) is never sent.
    - ``strip_whitespace`` (providers that refuse a prefix ending in whitespace): the trailing whitespace run.
    - ``heal``: everything after the last place where a word (letters, digits) ends and something else follows,
      so the prefix ends where the tokenizer splits the same way the model did (see :func:`_last_word_end`).
    """
    if heal and tail[-1:] != REPLACEMENT_CHAR:
        # The common case, checked first as this runs for every streamed chunk: a word ends within MAX_HOLD of the
        # end. It is the answer the general path below gives then (its window is this one), with less work.
        window = tail[-(MAX_HOLD + 1) :]
        end = _last_word_end(window)
        if end is not None:
            cut = offset + len(tail) - len(window) + end
            if cut > floor:
                return cut
    return _hold_back_point(tail, offset, floor=floor, heal=heal, strip_whitespace=strip_whitespace)


def word_ends_before(before: str, piece: str) -> bool:
    """Whether a word ends just before ``piece`` (``before`` is the text before it, at least its last
    :data:`MAX_HOLD` + 1 characters) and nowhere after.

    Then, for text ending with ``piece``, the place :func:`hold_back_point` heals at is the start of ``piece``
    (as long as that is above the floor and ``piece`` is at most :data:`MAX_HOLD` long): the common case of a
    streamed token such as ``" word"`` or ``","`` after a word, answered without searching the text.
    """
    previous = before[-1:]
    if not piece or not (previous.isalnum() or previous == "_"):
        return False
    first, rest = piece[0], piece[1:]
    if first.isalnum() or first == "_" or first == REPLACEMENT_CHAR or (rest and not rest.isalnum()):
        return False
    return _TAG_WORD.search(before) is None


def _hold_back_point(tail: str, offset: int, *, floor: int, heal: bool, strip_whitespace: bool) -> int:
    """:func:`hold_back_point` without its shortcut for the common case (the tests check that both agree)."""
    # Only the end of the text is read: HOLD_WINDOW characters, or as far back as a long run of whitespace goes
    # (the prefix sent must not end inside it).
    size = HOLD_WINDOW
    while True:
        text = tail[-size:] if len(tail) > size else tail
        without_garbage = text.rstrip(REPLACEMENT_CHAR)
        stripped_length = len(without_garbage.rstrip())
        if stripped_length or len(text) == len(tail):
            break
        size *= 8
    base = offset + len(tail) - len(text)
    mandatory = base + len(without_garbage)
    ws_cut = base + stripped_length
    fallback = ws_cut if strip_whitespace else mandatory
    if not heal:
        return fallback
    # A cut further back than MAX_HOLD is refused below anyway, so only that much is searched (this runs for
    # every streamed chunk).
    window = without_garbage[-(MAX_HOLD + 1) :]
    end = _last_word_end(window)
    if end is None:
        return fallback
    cut = mandatory - len(window) + end
    if cut <= floor or mandatory - cut > MAX_HOLD:
        return fallback
    return cut


#: everything up to the last letter or digit (``\w``: str.isalnum() or "_") that something else follows
_LAST_WORD_END = re.compile(r".*\w(?=\W)", re.DOTALL)
#: a word that opens a markup tag (``<code``, ``</strong``), at the end of the text
_TAG_WORD = re.compile(r"</?\w+\Z")


def _last_word_end(text: str) -> int | None:
    """The last position in ``text`` where a run of letters or digits ends and something else follows, outside
    the name of a markup tag.

    Tokenizers of the GPT-2 family never join a letter or digit to the punctuation, quote or whitespace after it
    (contractions such as "'s" start a token of their own), so the model's own tokens always break there: a prefix
    cut at that point re-tokenizes exactly as the model wrote it. Anywhere after it (inside a word, between a
    full stop and the newlines it may share a token with, after a space that belongs to the next word) it may not.
    Gemma's tokenizer keeps to this too, with one exception measured on the seam-fidelity benchmark: whole tags
    such as ``<code>`` and ``</strong>`` are single tokens, so the end of a word that opens a tag is no boundary;
    the cut then goes to the last word end before the tag.
    """
    while True:
        match = _LAST_WORD_END.match(text)
        if match is None:
            return None
        end = match.end()
        tag = _TAG_WORD.search(text, 0, end)
        if tag is None:
            return end
        text = text[: tag.start() + 1]  # up to the "<", which ends the word before it


def resume_point(text: str, *, floor: int, released: int, answer_start: int, heal: bool, strip_whitespace: bool) -> int:
    """Where the prefix of the next round ends in the answer so far, ``text``: :func:`hold_back_point` on its end
    (reaching back over a long whitespace run), never before what a stream has already delivered (``released``,
    once past the caller's own prefix, which ends at ``answer_start``)."""
    heal = heal and len(text) > answer_start
    offset = max(0, len(text) - 2 * HOLD_WINDOW)
    while offset > 0 and text[offset:].isspace():
        offset = max(0, offset - 8 * HOLD_WINDOW)  # a long whitespace run: look back to where it starts
    cut = hold_back_point(
        text[offset:],
        offset,
        floor=max(floor, answer_start) if heal else 0,
        heal=heal,
        strip_whitespace=strip_whitespace,
    )
    if released > answer_start:
        cut = max(cut, released)  # never take back what a stream has already delivered
    return cut


@dataclass(slots=True)
class Release:
    """What of one round's decided text a stream may hand on now: all of it but what a cut at its end would hold
    back for the model to regenerate (so a reader never sees text that a later round changes).

    ``start`` is the length of the prefix the round sent, ``floor`` where a cut may reach back to (the floor the
    round was planned with); ``tail`` the end of the text so far (sent + decided), for hold-back decisions without
    joining; ``unreleased`` the end of the decided text not yet handed on; ``skip``
    leading characters of the round's text that were already released (they re-create held text).
    """

    start: int
    floor: int
    heal: bool
    strip_whitespace: bool
    tail: str = ""
    unreleased: str = ""
    skip: int = 0
    length: int = 0  # characters decided this round

    def add(self, text: str, released: int) -> tuple[str, int]:
        """Take the round's next decided ``text``; return what is released by it (of it and of earlier text), and
        the new end of the released text (``released``: where it ended before, in the whole answer)."""
        self.length += len(text)
        if self.skip:
            skipped = text[: self.skip]
            self.skip -= len(skipped)
            text = text[len(skipped) :]
        tail = self.tail + text
        if len(tail) > 4 * HOLD_WINDOW:  # trimmed now and then, not on every chunk
            tail = tail[-2 * HOLD_WINDOW :]
        self.tail = tail
        floor = self.floor
        total = self.start + self.length
        size = len(text)
        if (
            size <= MAX_HOLD
            and total - size > floor
            and len(tail) > size
            and self.heal
            and word_ends_before(tail[-size - MAX_HOLD - 2 : -size], text)
        ):
            # Most streamed tokens: the cut is just before this one, so all that was unreleased is released.
            out, self.unreleased = self.unreleased, text
            return (out, total - size) if out else ("", released)
        unreleased = self.unreleased + text
        end = hold_back_point(
            tail, total - len(tail), floor=floor, heal=self.heal, strip_whitespace=self.strip_whitespace
        )
        if end <= released:
            self.unreleased = unreleased
            return "", released
        # Unreleased text is only ever the last few characters of the round: this never touches the whole answer.
        count = end - released
        out, self.unreleased = unreleased[:count], unreleased[count:]
        return out, end
