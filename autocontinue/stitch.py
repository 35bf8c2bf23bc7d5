"""Joining a continuation onto the text so far: pure, incremental, bounded.

One round's reply passes through up to four stages, each of which holds back only the text it cannot decide yet
and releases the rest:

1. **echo** - some providers (Mistral, llama.cpp) return the prefix they were given before the new text. While the
   reply still agrees with the prefix we wait; a full match is dropped, a divergence releases everything.
2. **restart** - on an unknown host a trailing assistant message may be ignored and the answer begun again; a reply
   that starts with the answer's opening words is reported so the caller can change dialect, unless the evidence
   says the host received the prefix and the model wrote its opening again (see :class:`_Restart`).
3. **reading** (instruction dialect) - a chat model asked in a new turn to continue may open with a preamble, "..."
   or a reopened code fence, repeat the end of the text or start the answer again: the reply is read as
   ``[junk][repeat][held text][new text]`` by :class:`~autocontinue._reading.InstructionReader`, which replaces the
   next stage.
4. **reconcile** - the part of the text held back from the prefix (trailing whitespace some providers refuse, a
   partial last word re-tokenized badly, a cut multi-byte character) is put back: held whitespace is kept and the
   model's re-emission of it dropped; a held word is replaced by the model's regeneration, and kept if the model
   writes nothing new in its place.

Around the stages, the two ends of a round: where the next prefix ends (:func:`resume_point`, one healing-cut rule:
:func:`hold_back_point`), and, while streaming, what of the joined text a reader may be handed already
(:class:`Release`: all but what a cut at its end would hold back).

Every comparison is against a bounded window or advances by the size of the new text, so the work per round does
not grow with the length of the answer. Pieces are never stripped: whitespace is significant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from ._reading import InstructionReader

__all__ = [
    "EchoMode",
    "PlainSeam",
    "Release",
    "Seam",
    "SeamPlan",
    "hold_back_point",
    "resume_point",
    "word_ends_before",
]

EchoMode = Literal["never", "maybe", "always"]

#: characters of the text's end examined when choosing what to hold back
HOLD_WINDOW = 256
#: the most text a heal may hold back; a longer "word" (base64, CJK run) is sent as it is
MAX_HOLD = 48
#: opening characters of the answer used to recognise a restart
RESTART_PROBE = 24

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


@dataclass(frozen=True)
class SeamPlan:
    """How one continuation round's reply is to be joined.

    ``sent`` is the prefix as sent, ``held`` the text held back from it, ``echo`` whether the provider may return
    ``sent`` first, ``remove_overlap`` whether the reply is a chat model's answer to "continue" (instruction
    dialect: junk, a repeated tail or a restart are read off it; ``answer_start`` is where the answer begins in
    ``sent``, after the caller's own prefix), ``restart_probe`` the answer's opening to recognise a restart by on a
    host that may ignore the prefix (empty: don't look), and ``restart_reply`` the first round's reply where
    decoding is greedy (a host that ignored the prefix then writes it again, whole).
    """

    sent: str = ""
    held: str = ""
    echo: EchoMode = "never"
    remove_overlap: bool = False
    restart_probe: str = ""
    answer_start: int = 0
    restart_reply: str = ""


@dataclass
class _Echo:
    sent: str
    mode: EchoMode
    actions: list[str]
    matched: int = 0
    pending: bool = field(init=False)

    def __post_init__(self) -> None:
        self.pending = self.mode != "never" and bool(self.sent)

    def feed(self, delta: str) -> str:
        if not self.pending:
            return delta
        n = min(len(delta), len(self.sent) - self.matched)
        if self.sent[self.matched : self.matched + n] == delta[:n]:
            self.matched += n
            if self.matched == len(self.sent):
                self.pending = False
                self.actions.append("echo_stripped")
                return delta[n:]
            return ""
        self.pending = False
        return self.sent[: self.matched] + delta

    def finish(self) -> str:
        if not self.pending:
            return ""
        self.pending = False
        if self.mode == "always":
            # A provider that always echoes returned only part of the prefix: that part is echo, not new text.
            self.actions.append("echo_stripped")
            return ""
        return self.sent[: self.matched]


@dataclass
class _Restart:
    """Tells a host that ignored the prefix (and began the answer again) from a model that, continuing correctly,
    writes the answer's opening again (a small model looping): only the first calls for another dialect.

    A reply that does not begin with the answer's opening (``probe``) is a continuation. One that does is a restart
    unless the evidence says the host received the prefix: under greedy decoding (``first``, round 1's reply, is
    given) a host that ignored the prefix writes round 1's reply again, whole, so a reply (its echo included) that
    leaves it received the prefix; otherwise an echo of the prefix proves it. The text is then kept, and
    ``opening_repeated`` recorded. A reply that, without an echo, begins with the opening where a word was held
    back (``held``) is a restart all the same: a model continuing would have written that word first.
    """

    probe: str
    actions: list[str]
    first: str = ""
    held: str = ""
    #: the prefix the reply echoed (the echo stage removed it before this stage)
    echoed: str = ""
    buffer: str = ""
    decided: bool = False
    restarted: bool = False

    def __post_init__(self) -> None:
        self.decided = not self.probe

    def feed(self, text: str) -> str:
        if self.restarted:
            return ""
        if self.decided:
            return text
        self.buffer += text
        return self._decide(final=False)

    def finish(self) -> str:
        return "" if self.decided else self._decide(final=True)

    def _decide(self, *, final: bool) -> str:
        head = self.buffer.lstrip()
        if len(head) < len(self.probe) and self.probe.startswith(head) and not final:
            return ""  # could still become the opening
        if not head.startswith(self.probe):
            return self._keep()
        if self.first and (self.echoed or not self.held.strip()):
            # Round 1's reply again, so far: undecided until the reply leaves it or ends.
            if self.first.startswith(self.echoed + self.buffer):
                if not final:
                    return ""
            else:
                return self._keep("opening_repeated")
        elif self.echoed and not self.first:
            return self._keep("opening_repeated")
        self.decided = self.restarted = True
        return ""

    def _keep(self, action: str = "") -> str:
        self.decided = True
        if action:
            self.actions.append(action)
        return self.buffer


@dataclass
class _Reconcile:
    held: str
    actions: list[str]
    whitespace: str = field(init=False)
    word: str = field(init=False)
    buffer: str = ""
    stage: int = 0  # 0: matching held whitespace, 1: matching the held word, 2: passing through

    def __post_init__(self) -> None:
        body = self.held.lstrip()
        self.whitespace = self.held[: len(self.held) - len(body)]
        self.word = body
        self.stage = 0 if self.whitespace else (1 if self.word else 2)

    def feed(self, text: str) -> str:
        if self.stage == 2:
            return text
        self.buffer += text
        out = ""
        if self.stage == 0:
            if len(self.buffer) < len(self.whitespace) and self.whitespace.startswith(self.buffer):
                return ""
            common = _common_prefix(self.whitespace, self.buffer)
            if common < len(self.whitespace):
                self.actions.append("whitespace_restored")
            out, self.buffer = self.whitespace, self.buffer[common:]
            self.stage = 1 if self.word else 2
            if self.stage == 2:
                out, self.buffer = out + self.buffer, ""
                return out
        # stage 1: the model regenerates the held word
        if len(self.buffer) < len(self.word) and self.word.startswith(self.buffer):
            return out
        self.actions.append("healed" if self.buffer.startswith(self.word) else "heal_diverged")
        self.stage = 2
        out, self.buffer = out + self.buffer, ""
        return out

    def finish(self) -> str:
        if self.stage == 0:
            # Nothing but (part of) the held whitespace came back: keep all of it.
            self.stage = 1 if self.word else 2
            if self.stage == 2:
                self.buffer = ""
                return self.whitespace
            self.buffer = ""
            return self.whitespace + self.finish()
        if self.stage == 1:
            # The model wrote nothing new in place of the held word: keep the word rather than lose it.
            self.stage = 2
            self.buffer = ""
            self.actions.append("held_kept")
            return self.word
        return ""

    def abort(self) -> str:
        """The reply broke off: the held text the model had not yet re-emitted, to keep."""
        if self.stage == 0:
            self.stage = 2
            return self.whitespace + self.word
        if self.stage == 1:
            self.stage = 2
            return self.word
        return ""


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Seam:
    """Joins one round's reply onto the text so far, chunk by chunk.

    ``feed`` takes the reply's text as it arrives and returns what can be appended to the answer now; ``finish``
    returns the rest at the end of the reply. ``restarted`` tells the model began the answer again (the reply is
    discarded); ``actions`` records what was done, for the trace.
    """

    #: whether every character passes through unchanged (see :class:`PlainSeam`)
    plain = False

    def __init__(self, plan: SeamPlan) -> None:
        self.actions: list[str] = []
        self._echo = _Echo(plan.sent, plan.echo, self.actions)
        self._restart = _Restart(plan.restart_probe, self.actions, plan.restart_reply, plan.held)
        self._reconcile = _Reconcile(plan.held, self.actions)
        self._reader = (
            InstructionReader(plan.sent, plan.held, plan.answer_start, self.actions) if plan.remove_overlap else None
        )
        self._said: list[str] = []
        #: pieces of the reply that were all echo (they carry no new tokens)
        self.echo_pieces = 0
        # Once every stage has decided and passes text through unchanged, so does the seam: the rest of a long
        # streamed round costs one check per chunk.
        self._through = False

    @property
    def restarted(self) -> bool:
        """True when the reply began the answer again instead of continuing it."""
        return self._restart.restarted

    def feed(self, delta: str) -> str:
        """Take the next piece of the reply; return the text that is decided."""
        if self._through:
            if self._reader is not None:
                return self._reader.feed(delta)  # decided: it passes the text through and keeps what was said
            if delta:
                self._said.append(delta)
            return delta
        after = self._echo.feed(delta)
        if not after and (self._echo.pending or self._echo.matched):
            self.echo_pieces += 1
        if not self._echo.pending and self._echo.matched == len(self._echo.sent):
            self._restart.echoed = self._echo.sent  # evidence for the restart stage
        out = self._after_echo(after)
        self._through = (
            not self._echo.pending
            and self._restart.decided
            and not self._restart.restarted
            and (self._reconcile.stage == 2 if self._reader is None else self._reader.decided)
        )
        return out

    def finish(self) -> str:
        """The reply has ended: return every character still held."""
        text = self._after_echo(self._echo.finish())
        text += self._after_restart(self._restart.finish())
        if self._restart.restarted:
            return ""
        if self._reader is not None:
            return text + self._reader.finish()
        return text + self._reconcile.finish()

    def abort(self) -> str:
        """The reply broke off mid-way: undecided text is dropped (the model will write it again) and the held
        text not yet re-emitted is returned, to keep."""
        return self._reconcile.abort() if self._reader is None else self._reader.abort()

    def _after_echo(self, text: str) -> str:
        return self._after_restart(self._restart.feed(text)) if text else ""

    @property
    def model_text(self) -> str:
        """What the model wrote this round, after echo (and junk and repeat) removal and before reconciliation
        with the held text: compared between rounds to notice a model stuck in a loop."""
        return "".join(self._said) if self._reader is None else self._reader.said

    def _after_restart(self, text: str) -> str:
        if not text:
            return ""
        return self._reconciled(text) if self._reader is None else self._reader.feed(text)

    def _reconciled(self, text: str) -> str:
        if text:
            self._said.append(text)
        return self._reconcile.feed(text)


class PlainSeam:
    """The seam of a round that continues nothing (an ordinary first request): every character passes through.

    It does what a :class:`Seam` with an empty plan would, without building the four stages that would each decide
    at once to do nothing: most calls are one such round, and they should cost next to nothing.
    """

    #: the reply passes through unchanged: the caller may skip :meth:`feed`
    plain = True
    echo_pieces = 0
    #: never: there was no answer to begin again
    restarted = False

    def __init__(self) -> None:
        self.actions: list[str] = []

    def feed(self, delta: str) -> str:
        """Take the next piece of the reply; all of it is decided."""
        return delta

    def finish(self) -> str:
        """Nothing is ever held."""
        return ""

    def abort(self) -> str:
        """Nothing was held back from a prefix."""
        return ""


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

    ``floor`` is the length of the prefix the round sent; ``tail`` the end of the text so far (sent + decided), for
    hold-back decisions without joining; ``unreleased`` the end of the decided text not yet handed on; ``skip``
    leading characters of the round's text that were already released (they re-create held text).
    """

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
        total = floor + self.length
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
