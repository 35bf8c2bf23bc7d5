"""Planning the next round: in which dialect to ask, where the answer so far is cut, the request, the seam that
will join its reply, and the :class:`~autocontinue._round.Round` that waits for it.

The dialect may change once per call: an unknown host starts with a prefill and falls back to the instruction when
the prefill is refused, the model starts the answer again, or a round adds nothing (see :meth:`Planner.switch`).
Whether the provider echoes the prefix is learnt from the first long enough prefix where the dialect cannot say.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from . import _log
from ._answer import Answer
from ._cut import Release, resume_point
from ._round import Round
from .dialects import Dialect, for_json_mode, resolve_dialect
from .request import CallRequest
from .stitch import RESTART_PROBE, EchoMode, PlainSeam, Seam, SeamPlan
from .trace import ContinuationTrace

__all__ = ["ECHO_EVIDENCE", "MIN_RESTART_PROBE", "Planner"]

#: a prefix at least this long tells, from one reply, whether the provider echoes
ECHO_EVIDENCE = 16
#: the shortest answer whose opening is used to recognise a restart
MIN_RESTART_PROBE = 12


class Planner:
    """The dialect of a call (and the fallback waiting for it), and the plan of each of its rounds."""

    def __init__(self, call: CallRequest, spec: str | Dialect, *, base_url: str, heal: bool) -> None:
        """``spec``: the ``dialect=`` option (a name, "auto" or a dialect), resolved for ``base_url``."""
        choice = resolve_dialect(spec, base_url)
        self.dialect = for_json_mode(choice.dialect, base_url) if call.json_mode else choice.dialect
        self.fallback = choice.fallback
        self.echo_learned: EchoMode | None = None  # what the provider was seen to do, where the dialect cannot say
        self.first_reply = ""  # round 1's reply, kept while a fallback dialect waits: evidence against a restart
        self._call = call
        self._base_url = base_url
        self._heal = heal

    def plan(self, answer: Answer, *, index: int, started: float, stream: bool, upstream_usage: bool) -> Round:
        """Round ``index`` (``started`` at that time), continuing ``answer``: its request, the prefix it sends and
        the text held back from it, and the seam that will join its reply; ``stream``: its reply is streamed."""
        call = self._call
        dialect = self.dialect
        text = answer.text
        reasoning = "".join(answer.reasoning) if answer.reasoning else ""
        base_url: str | None = None
        added: list[Any] | None = None
        seam: Seam | PlainSeam
        if text == "" and not call.has_prefix and not reasoning:
            kwargs = dict(call.kwargs)
            kwargs["messages"] = list(call.messages)
            sent, held, seam = "", "", PlainSeam()
        else:
            cut = resume_point(
                text,
                floor=answer.floor,
                released=answer.released,
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
            base_url, added = dialect.base_url(self._base_url), messages[len(call.messages) :]
        if stream:
            kwargs["stream"] = True
            if upstream_usage:
                kwargs["stream_options"] = {**(call.stream_options or {}), "include_usage": True}
            elif call.stream_options:
                kwargs["stream_options"] = dict(call.stream_options)
        return Round(
            index=index,
            sent=sent,
            held=held,
            seam=seam,
            kwargs=kwargs,
            started=started,
            # A whole reply that needs no seam (most calls) releases nothing to anyone (see release_of).
            release=self.release_of(answer, sent) if stream or added is not None else None,
            released_at_start=answer.released,
            logprob_queue=answer.logprobs.carry(len(sent), answer.released) if answer.logprobs.last else deque(),
            base_url=base_url,
            added=added,
        )

    def release_of(self, answer: Answer, sent: str) -> Release:
        """How a round that sends ``sent`` releases its text to a stream (see :meth:`Answer.release_of`); a whole
        reply that has a seam to pass makes it when it arrives."""
        strip = self.dialect.strips_trailing_whitespace
        return answer.release_of(sent, len(self._call.prefix), self._heal, strip)

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
