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

Around the stages, the two ends of a round live in ``_cut``: where the next prefix ends (the one healing-cut rule),
and, while streaming, what of the joined text a reader may be handed already.

Every comparison is against a bounded window or advances by the size of the new text, so the work per round does
not grow with the length of the answer. Pieces are never stripped: whitespace is significant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ._reading import InstructionReader

__all__ = ["RESTART_PROBE", "EchoMode", "PlainSeam", "Seam", "SeamPlan"]

EchoMode = Literal["never", "maybe", "always"]

#: opening characters of the answer used to recognise a restart
RESTART_PROBE = 24


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
