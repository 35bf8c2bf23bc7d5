"""Planning the next round: in which dialect to ask, where the answer so far is cut, the request, and the seam
that will join its reply.

The dialect may change once per call: an unknown host starts with a prefill and falls back to the instruction when
the prefill is refused, the model starts the answer again, or a round adds nothing (see :meth:`Planner.switch`).
Whether the provider echoes the prefix is learnt from the first long enough prefix where the dialect cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _log
from ._cut import resume_point
from ._round import Round
from .dialects import Dialect
from .request import CallRequest
from .stitch import RESTART_PROBE, EchoMode, PlainSeam, Seam, SeamPlan
from .trace import ContinuationTrace

__all__ = ["ECHO_EVIDENCE", "MIN_RESTART_PROBE", "Planner", "RoundPlan"]

#: a prefix at least this long tells, from one reply, whether the provider echoes
ECHO_EVIDENCE = 16
#: the shortest answer whose opening is used to recognise a restart
MIN_RESTART_PROBE = 12


@dataclass(slots=True)
class RoundPlan:
    """The next round: its request (sent to ``base_url`` when set), the prefix it sends and the text held back
    from it, the seam that joins its reply, and the messages the dialect adds to the caller's."""

    kwargs: dict[str, Any]
    base_url: str | None
    sent: str
    held: str
    seam: Seam | PlainSeam
    added: list[Any] | None  # None for a round that continues nothing


class Planner:
    """The dialect of a call (and the fallback waiting for it), and the plan of each of its rounds."""

    def __init__(
        self, call: CallRequest, *, dialect: Dialect, fallback: Dialect | None, base_url: str, heal: bool
    ) -> None:
        self.dialect = dialect
        self.fallback = fallback
        self.echo_learned: EchoMode | None = None  # what the provider was seen to do, where the dialect cannot say
        self.first_reply = ""  # round 1's reply, kept while a fallback dialect waits: evidence against a restart
        self._call = call
        self._base_url = base_url
        self._heal = heal

    def plan(
        self, text: str, *, floor: int, released: int, reasoning: str, stream: bool, upstream_usage: bool
    ) -> RoundPlan:
        """The round that continues ``text`` (``floor``: where the last prefix sent ended; ``released``: how much
        of ``text`` a stream has handed on)."""
        call = self._call
        dialect = self.dialect
        if text == "" and not call.has_prefix and not reasoning:
            kwargs = dict(call.kwargs)
            kwargs["messages"] = list(call.messages)
            plan = RoundPlan(kwargs, None, "", "", PlainSeam(), None)
        else:
            cut = resume_point(
                text,
                floor=floor,
                released=released,
                answer_start=len(call.prefix),
                heal=self._heal,
                strip_whitespace=dialect.strips_trailing_whitespace,
            )
            sent, held = text[:cut], text[cut:]
            messages = dialect.messages(call.messages, sent, call.prefix_template, reasoning)
            kwargs = dict(call.kwargs)
            kwargs.pop("n", None)
            extra = dialect.extra_body(call.kwargs.get("extra_body"), reasoning)
            if extra is not None:
                kwargs["extra_body"] = extra
            kwargs["messages"] = messages
            seam = Seam(
                SeamPlan(
                    sent=sent,
                    held=held,
                    echo=self._echo_mode(),
                    remove_overlap=dialect.repeats_tail,
                    restart_probe=self._restart_probe(text),
                    answer_start=len(call.prefix),
                    restart_reply=self.first_reply if call.kwargs.get("temperature") == 0 else "",
                )
            )
            plan = RoundPlan(kwargs, dialect.base_url(self._base_url), sent, held, seam, messages[len(call.messages) :])
        if stream:
            kwargs["stream"] = True
            if upstream_usage:
                kwargs["stream_options"] = {**(call.stream_options or {}), "include_usage": True}
            elif call.stream_options:
                kwargs["stream_options"] = dict(call.stream_options)
        return plan

    def committed(self, current: Round, new_text: str) -> None:
        """A round's text became part of the answer: learn from it whether the provider echoes, and keep round 1's
        reply while a fallback waits."""
        # A prefix this long that the reply begins with is an echo, and one the reply does not begin with proves
        # there is none; either way later rounds (whose short prefixes could be ambiguous) know.
        if (
            current.sent
            and self.echo_learned is None
            and self.dialect.echo == "maybe"
            and len(current.sent) >= ECHO_EVIDENCE
        ):
            self.echo_learned = "always" if "echo_stripped" in current.seam.actions else "never"
        if current.index == 1 and self.fallback is not None:
            self.first_reply = new_text

    def switch(self, reason: str, trace: ContinuationTrace) -> None:
        """Go over to the fallback dialect for the rest of the call."""
        assert self.fallback is not None
        change = f"{self.dialect.name}->{self.fallback.name}"
        _log.emit("info", "autocontinue.dialect_fallback", change=change, reason=reason)
        trace.fallbacks.append(change)
        self.dialect, self.fallback = self.fallback, None
        self.echo_learned = None
        trace.dialect = self.dialect.name

    def _echo_mode(self) -> EchoMode:
        """The dialect's echo behaviour; where it is only "maybe", what this provider was seen to do."""
        return self.dialect.echo if self.dialect.echo != "maybe" else (self.echo_learned or "maybe")

    def _restart_probe(self, text: str) -> str:
        if self.fallback is None:
            return ""
        start = len(self._call.prefix)
        answer = text[start : start + 4 * RESTART_PROBE].lstrip()
        return answer[:RESTART_PROBE] if len(answer) >= MIN_RESTART_PROBE else ""
