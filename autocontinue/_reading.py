"""Reading a chat model's answer to "continue where you stopped" (the instruction dialect's seam).

A model asked in a new turn to continue its cut-off reply does not always start at the next character. Its reply
is read as ``[junk][repeat][held text re-created][new text]``:

- **junk**: a preamble line ("Sure! Continuing:"), a leading "..." or "…", a code-fence line opened again while the
  text is inside an open fence;
- **repeat**: a suffix of the text already known (the prefix sent), starting where a word or line starts, or the
  answer written again from its beginning (a restart, however long the answer is);
- **held text**: what the seam held back from the prefix (a healed word, whitespace), which the model re-creates.

Every way of splitting the reply like this is a *reading*; the one kept is the one that best re-creates the held
text: the held text is the evidence of where the new text starts, so a repeat of a single word counts when the
held text confirms it, and no length or uniqueness rule is needed then. The held text also settles the whitespace
at the join (a space or newline the model added or dropped). Where it cannot tell (nothing held, held text without
a letter or digit, or two repeats after which it is re-created equally well), a repeat that is evidence by itself
decides: at least 8 characters that occur once in the window. Where nothing confirms a reading, text is kept
rather than deleted, and the doubt is recorded (``doubt:...`` in the round's ``seam`` trace).

While the reply streams in, its start is held only as long as some reading is still open; then the chosen reading
is applied and the rest passes through. Every search is within :data:`WINDOW` characters of the end of the known
text or within the reply itself, so a round's work does not grow with the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["InstructionReader"]

#: how far back a repeated tail is looked for
WINDOW = 1024
#: a repeat that no held text confirms is removed only if it is at least this long and occurs once in the window
MIN_UNCONFIRMED = 8
#: a reply that ends inside a repeat (the answer's opening, or a tail) is taken for one from this length on
MIN_RESTART = 24
#: the longest preamble line
MAX_PREAMBLE = 120

_MARKERS = (
    "sure",
    "certainly",
    "of course",
    "okay",
    "ok",
    "alright",
    "absolutely",
    "no problem",
    "here",
    "continuing",
    "continued",
    "continuation",
    "let me continue",
    "i'll continue",
    "picking up",
    "resuming",
)
_OPENING = "(?:" + "|".join(re.escape(m) for m in _MARKERS) + ")"
_PREAMBLE = re.compile(_OPENING + rf"\b[^\n`]{{0,{MAX_PREAMBLE}}}[:.!…]\s*\n+", re.IGNORECASE)
_PREAMBLE_OPEN = re.compile(_OPENING + rf"\b[^\n`]{{0,{MAX_PREAMBLE}}}$", re.IGNORECASE)
_FENCE_LINE = re.compile(r"```[\w+#.-]*[ \t]*\n")
_FENCE = re.compile(r"^[ \t]*```", re.MULTILINE)
_ELLIPSES = ("...", "…")


def _joined(a: str, b: str) -> bool:
    """Whether ``a`` then ``b`` are inside one word (letters or digits of a script that separates words)."""
    return a.isalnum() and b.isalnum() and a < "\u2e80" and b < "\u2e80"


@dataclass(frozen=True)
class _Fit:
    """How the text after junk and repeat re-creates the held text."""

    full: bool  # every character of the held text was found
    body: int  # held non-whitespace characters matched
    exact_space: bool  # the whitespace at the join was the held text's own
    end: int  # where the new text starts in the reply's remainder (when full)
    pending: bool  # the remainder is too short to tell
    tail: str = ""  # when the held text ends in whitespace: the whitespace run to put in place of the model's
    diverged: bool = False  # the remainder says something else than the held text


def _settle(held_run: str, model_run: str) -> str:
    """The whitespace run that ends the held text, as the model's reply goes on from it.

    The model's run is kept where it extends the held one (a run of blank lines or an indentation going on), except
    for whitespace it put in front of the held run (a space or newline added at the join); where it has less, the
    held newlines are kept, then the model's indentation where it extends the held one (a newline dropped before an
    indentation, or eaten with a preamble).
    """
    if model_run.startswith(held_run):
        if "\n" in held_run and model_run[:1] == "\n" and model_run[1:].startswith(held_run):
            return model_run[1:]
        return model_run
    at = model_run.find(held_run)
    if at > 0:
        return model_run[at:]  # whitespace added in front of the held run
    if "\n" not in held_run:
        return held_run
    cut = held_run.rfind("\n") + 1
    indent, model_indent = held_run[cut:], model_run[model_run.rfind("\n") + 1 :]
    return held_run[:cut] + (model_indent if model_indent.startswith(indent) else indent)


def _fit(rest: str, held: str, final: bool) -> _Fit:
    """Align ``rest`` with ``held``: non-whitespace must agree; a whitespace run may be added, dropped or changed."""
    xi = hi = body = 0
    exact = True
    while hi < len(held):
        if held[hi].isspace():
            hj = hi
            while hj < len(held) and held[hj].isspace():
                hj += 1
            xj = xi
            while xj < len(rest) and rest[xj].isspace():
                xj += 1
            if xj == len(rest) and not final:
                return _Fit(False, body, exact, 0, True)
            run, mine = held[hi:hj], rest[xi:xj]
            if hj == len(held):
                tail = _settle(run, mine)
                return _Fit(True, body, exact and tail == mine, xj, False, held[:hi] + tail)
            exact = exact and mine == run
            xi, hi = xj, hj
            continue
        if xi == len(rest):
            return _Fit(False, body, False, 0, not final)
        if rest[xi].isspace():
            exact = False  # whitespace the held text does not have
            while xi < len(rest) and rest[xi].isspace():
                xi += 1
            continue
        if rest[xi] != held[hi]:
            return _Fit(False, body, False, 0, False, diverged=True)
        xi, hi, body = xi + 1, hi + 1, body + 1
    return _Fit(True, body, exact, xi, False, held)


@dataclass(frozen=True)
class _Reading:
    junk: int  # characters of junk at the start of the reply
    junk_kinds: tuple[str, ...]
    repeat: int  # characters of repeat after the junk
    restart: bool  # the repeat is the answer from its beginning
    complete: bool  # the reply goes past the repeat (else it ended inside it)
    fit: _Fit
    unique: bool  # the repeat occurs once in the window
    seen: int  # characters of the reply that are repeat
    visible: int  # of them, not whitespace

    def score(self, held_body: bool, held_word: bool) -> tuple[int, ...]:
        """How well this reading explains the reply (greater is better; see the module docstring)."""
        fit = self.fit
        # A repeat that is evidence by itself: long enough, and once in the window, so that new text beginning with
        # it would be a coincidence (the same rule decides where nothing is held). A reply cut inside a repeat needs
        # a long one (else it may be new text that happens to match).
        evident = (
            self.unique
            and all(kind == "preamble" for kind in self.junk_kinds)
            and (
                self.seen >= MIN_UNCONFIRMED
                if self.complete
                # (a reply of whitespace that ends where the text has more proves nothing)
                else self.seen >= MIN_RESTART and self.visible >= MIN_UNCONFIRMED
            )
        )
        # A reading agrees with the held text when it re-creates it, or when the reply ended inside or right after
        # such a repeat, or inside the held text after it (the held text would have come next).
        agrees = fit.full or (evident and not fit.diverged)
        # A remainder that agrees with the held text for a while and then says something else is no evidence, and
        # held text without a letter or digit (" |", "):") is too little to outweigh an evident repeat.
        body = 0 if fit.diverged or not held_word else fit.body
        # Where the held text is re-created equally well after two repeats, those are a shorter and a longer suffix
        # of text that repeats itself at the cut ("0-0, 0-0" + ", 0"): the shorter one also occurs at the start of
        # the longer one, so at most one of them is evident, and it decides. The whitespace at the join comes after
        # that: it is what models change most.
        # A preamble line is junk by its look; "..." or a fence line may be the text's own, so they are taken for
        # junk only where the held text is re-created after them (and then rather than kept: "9" + "....5").
        junk = "preamble" in self.junk_kinds or (held_body and fit.full and bool(self.junk_kinds))
        return (agrees, body, evident, fit.exact_space, junk, -len(self.junk_kinds), -self.repeat)


class InstructionReader:
    """Joins one instruction-dialect reply onto the text so far; fed like a seam stage.

    ``sent`` is the prefix sent, ``held`` the text held back from it, ``answer_start`` where the answer begins in
    ``sent`` (after the caller's own prefix). ``feed`` returns the text decided so far, ``finish`` the rest.
    """

    def __init__(self, sent: str, held: str, answer_start: int, actions: list[str]) -> None:
        self.sent = sent
        self.held = held
        self.answer_start = answer_start
        self.actions = actions
        self.window_start = max(0, len(sent) - WINDOW)
        self.window = sent[self.window_start :]
        self.held_body = bool(held.strip())
        self.held_word = any(c.isalnum() for c in held)
        self.buffer = ""
        self.decided = False
        self._inside_fence: bool | None = None
        # How much of the reply (after each junk start) is known to agree with the answer's opening: a restart of
        # a long answer is compared once, not again with every streamed piece.
        self._restart_agrees: dict[int, int] = {}
        # What the model wrote that is not junk or repeat (compared between rounds by the loop watch).
        self._said: list[str] = []

    @property
    def said(self) -> str:
        """What the model wrote this round after junk and repeat, before the held text is put back."""
        return "".join(self._said)

    # ------------------------------------------------------------------------------------------------- feeding

    def feed(self, text: str) -> str:
        """Take the next piece of the reply; return what is decided."""
        if self.decided:
            self._said.append(text)
            return text
        self.buffer += text
        return self._decide(final=False)

    def finish(self) -> str:
        """The reply ended: decide with what there is."""
        return "" if self.decided else self._decide(final=True)

    def abort(self) -> str:
        """The reply broke off: an undecided start is dropped (the model writes it again); the held text is kept."""
        if self.decided:
            return ""
        self.decided = True
        return self.held

    # ------------------------------------------------------------------------------------------------- reading

    def _decide(self, final: bool) -> str:
        readings, open_ = self._readings(final)
        if open_ and not final:
            return ""
        self.decided = True
        best = max(readings, key=lambda r: r.score(self.held_body, self.held_word))
        return self._apply(best, readings)

    def _junk_starts(self, final: bool) -> tuple[list[tuple[int, tuple[str, ...]]], bool]:
        """Every junk prefix the reply may start with, and whether a longer one could still come."""
        buffer = self.buffer
        starts: list[tuple[int, tuple[str, ...]]] = [(0, ())]
        open_ = False
        match = _PREAMBLE.match(buffer)
        if match:
            starts.append((match.end(), ("preamble",)))
        elif _PREAMBLE_OPEN.match(buffer):
            if final:
                starts.append((len(buffer), ("preamble",)))  # the reply was cut inside its preamble
            else:
                open_ = True
        elif not final and buffer and any(m.startswith(buffer.lower()) for m in _MARKERS):
            open_ = True
        for at, kinds in list(starts):
            head = buffer[at:]
            for dots in _ELLIPSES:
                if head.startswith(dots):
                    starts.append((at + len(dots), (*kinds, "ellipsis")))
                elif not final and head and dots.startswith(head):
                    open_ = True
        for at, kinds in list(starts):
            head = buffer[at:]
            if head.startswith("`") and self._in_fence():
                fence = _FENCE_LINE.match(head)
                if fence:
                    starts.append((at + fence.end(), (*kinds, "fence")))
                elif not final and "\n" not in head and len(head) < 40:
                    open_ = True
        return starts, open_

    def _in_fence(self) -> bool:
        if self._inside_fence is None:
            # Read once per round, and only when a reply starts with a backtick.
            self._inside_fence = len(_FENCE.findall(self.sent)) % 2 == 1
        return self._inside_fence

    def _readings(self, final: bool) -> tuple[list[_Reading], bool]:
        starts, open_ = self._junk_starts(final)
        readings: list[_Reading] = []
        for at, kinds in starts:
            rest = self.buffer[at:]
            if not rest and not final:
                open_ = True  # after junk, a repeat may follow
                continue
            for length, restart, complete in self._repeats(rest, final, at):
                if not complete:
                    if not final:
                        open_ = True
                        continue
                    fit = _fit("", self.held, True)
                else:
                    fit = _fit(rest[length:], self.held, final)
                    if fit.pending:
                        open_ = True
                        if not final:
                            continue
                # Once in the window (a repeat's first occurrence is the tail itself), or a restart from beyond it.
                seen = rest[:length]
                unique = length > len(self.window) or (
                    self.window.find(seen) == self.window.rfind(seen)
                    if not complete
                    else self.window.find(seen) == len(self.window) - length
                )
                visible = len(seen) - sum(1 for c in seen if c.isspace()) if not complete else 0
                readings.append(_Reading(at, kinds, length, restart, complete, fit, unique, len(seen), visible))
        return readings, open_

    def _repeats(self, rest: str, final: bool, at: int) -> list[tuple[int, bool, bool]]:
        """(length, is a restart, complete) of every suffix of the known text that ``rest`` starts with, or that
        ``rest`` is the start of (the reply may be cut inside a repeat); (0, False, True) always."""
        found = [(0, False, True)]
        if not rest:
            return found
        window, sent = self.window, self.sent
        size = len(window)
        first = rest[0]
        position = window.find(first)
        while position != -1:
            absolute = self.window_start + position
            length = size - position
            # A repeat starts where a word or line does; one starting inside a word (a model echoing a quote cut
            # mid-word) only when long enough to tell by itself.
            boundary = absolute == 0 or not _joined(sent[absolute - 1], first)
            if not boundary and min(length, len(rest)) < MIN_UNCONFIRMED:
                if not final and len(rest) < length and window.startswith(rest, position):
                    found.append((length, False, False))  # may yet grow long enough
            elif len(rest) >= length:
                if rest.startswith(window[position:]):
                    found.append((length, absolute in (0, self.answer_start), True))
            elif window.startswith(rest, position):
                found.append((length, absolute in (0, self.answer_start), False))
            position = window.find(first, position + 1)
        # A restart: the answer written again from its beginning, however far back that is.
        start = self.answer_start
        while start < len(sent) and sent[start].isspace():
            start += 1
        if start < self.window_start:
            answer_length = len(sent) - start
            agreed = self._restart_agrees.get(at, 0)
            if agreed >= 0:
                upto = min(len(rest), answer_length)
                agreed = upto if sent.startswith(rest[agreed:upto], start + agreed) else -1
                self._restart_agrees[at] = agreed
            if agreed >= 0:
                found.append((answer_length, True, len(rest) >= answer_length))
        return found

    def _apply(self, best: _Reading, readings: list[_Reading]) -> str:
        buffer, held = self.buffer, self.held
        rest = buffer[best.junk + best.repeat :] if best.complete else ""
        for kind in best.junk_kinds:
            self.actions.append(f"junk_removed:{kind}")
        if best.repeat:
            self.actions.append(("restart_removed:" if best.restart else "overlap_removed:") + str(best.repeat))
        self._record_doubts(best, readings)
        self._said.append(rest)
        fit = best.fit
        if fit.full:
            if held:
                self.actions.append("healed" if fit.exact_space else "whitespace_settled")
            return fit.tail + rest[fit.end :]
        if not rest or (held.startswith(rest.lstrip()) and rest.strip()):
            # The reply ended before it re-created the held text (or wrote none): keep the held text.
            self.actions.append("held_kept")
            return held
        self.actions.append("heal_diverged")
        lead = held[: len(held) - len(held.lstrip())]
        if lead and not rest[:1].isspace():
            return lead + rest  # the model wrote another word; the held whitespace still separates it
        return rest

    def _record_doubts(self, best: _Reading, readings: list[_Reading]) -> None:
        score = best.score(self.held_body, self.held_word)
        rivals = [r for r in readings if r is not best and r.score(self.held_body, self.held_word)[:-1] == score[:-1]]
        if rivals:
            self.actions.append("doubt:readings_tied")
        elif any(r.fit.full and not r.junk_kinds for r in readings if r is not best) and set(best.junk_kinds) - {
            "preamble"
        }:
            self.actions.append("doubt:junk_removed")  # the reply also reads as text that begins with it
        if not self.held_body:
            kept = [r.repeat for r in readings if r.repeat > best.repeat and not r.junk_kinds]
            if kept and best.repeat == 0:
                self.actions.append(f"doubt:repeat_kept:{max(kept)}")
