"""A streamed call, chunk by chunk: each upstream chunk read into the round in flight and rewritten for the reader,
the round stopped early where it must be, and the chunks handed on when a round or the call ends.

The core hands each chunk to :meth:`StreamState.take` and ends the round when :attr:`StreamState.stop_reading`
says so (a server that ignores the request's limit, a chunk of the wrong shape: :attr:`StreamState.malformed`);
:meth:`StreamState.handing_on` gives the chunks for an action's ``emit``. Reading and making single chunks is
``_chunks``'s; what the text is, the answer's (``_answer``).
"""

from __future__ import annotations

from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ._answer import Answer
from ._chunks import StreamOut, malformed_chunk, take_choice
from ._limits import RoundLimits
from ._round import Round
from ._shape import usage_problem
from .errors import MalformedResponse
from .request import CallRequest

__all__ = ["StreamState"]


class StreamState:
    """What a streamed call reads and hands on, across its rounds (one per call)."""

    def __init__(self, call: CallRequest, answer: Answer, limits: RoundLimits) -> None:
        self.out = StreamOut(call.model)
        self._answer = answer
        self._limits = limits
        # the caller asked for a usage chunk at the end
        self._include_usage = bool((call.stream_options or {}).get("include_usage"))
        self.stop_reading = False  # the round must end before its reply does
        self.malformed: MalformedResponse | None = None  # a chunk of the wrong shape ended the round

    def take(self, current: Round, chunk: ChatCompletionChunk) -> ChatCompletionChunk | None:
        """Read ``chunk`` into ``current``; return it rewritten for the reader, or None when nothing in it is for
        the reader yet. Afterwards, :attr:`stop_reading` says whether the round must end here."""
        # This runs for every chunk of every stream: fields are read from the models' dicts, and the common case
        # (a piece of text and nothing else) takes no detour. A chunk of the wrong shape (the SDK does not validate
        # them) fails a lookup or a check below: the round then ends as a failed one, its text kept.
        try:
            # The chunk object is ours alone (fresh from the SDK's parser): it is reused rather than copied, and read
            # and written through its dicts, as pydantic's __getattr__/__setattr__ would cost more than the rest of
            # its handling (benchmarks/streaming.py, per chunk). This relies on pydantic v2 keeping a model's fields
            # in its instance __dict__ and extras in __pydantic_extra__: were that to change, reading a chunk fails
            # here, and every stream fails as malformed (the suite's streaming tests catch it at once).
            head = chunk.__dict__
            choices = head["choices"]
            usage = head["usage"]
            out = self.out
            answer = self._answer
            if answer.first is None:
                if not isinstance(chunk, ChatCompletionChunk):
                    raise TypeError("not a chunk")
                answer.first = chunk
                out.id = chunk.id or "chatcmpl-autocontinue"
            if usage is not None:
                problem = usage_problem(usage)
                if problem is not None:
                    raise TypeError(problem)
                current.usage = usage
                head["usage"] = None
            head["id"] = out.id
            if not choices:
                if choices is None or choices == []:
                    return None
                raise TypeError("choices is not a list")
            top = choices[0].__dict__
            delta = top["delta"]
            fields = delta.__dict__
            content = take_choice(current, top, delta, fields)
            limit = self._limits.current
            if (
                content
                and limit is not None
                and current.content_chunks - current.seam.echo_pieces >= max(1, limit)
                and (current.seam.echo_pieces < current.content_chunks or current.raw_chars >= len(current.sent))
            ):
                # A server that ignores the request's limit: every content chunk carries at least one token, so
                # this one would go past the budget. It is not fed (nor delivered): the round ends before it.
                current.finish_reason = "length"
                self.stop_reading = True
                return None
            released = answer.feed(current, content) if content else ""
            given = out.pass_on(chunk, top, delta, fields, released, current.fresh_logprobs)
            if current.fresh_logprobs:
                current.fresh_logprobs = []
            # The request's own limit already stops the server at the budget. Closing early is for servers that
            # ignore it: every content chunk carries at least one token, so more chunks than the limit prove an
            # overrun (a tokenizer-based estimate would not: ours and the server's differ).
            if limit is not None and current.content_chunks - current.seam.echo_pieces > limit:
                current.finish_reason = "length"
                self.stop_reading = True
            return given
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as error:
            # The round stops here, as if its stream had broken.
            self.malformed = malformed_chunk(error)
            current.finish_reason = None
            self.stop_reading = True
            return None

    def hold(self, text: str, logprobs: list[Any]) -> None:
        """Text (and its logprobs) released as a round ended, to be handed on with the next action."""
        self.out.hold(text, logprobs)

    def handing_on(self, *, done: ChatCompletion | None = None, failed: bool = False) -> list[ChatCompletionChunk]:
        """The chunks the reader is to see before the next action: the text held at a round's end; when the call is
        ``done``, the rest of the answer, its finish_reason and usage; when it ``failed``, the text kept in the
        error's partial that the reader has not seen yet."""
        out, answer = self.out, self._answer
        first = answer.first
        chunks = out.take_held(first)
        if done is not None or failed:
            rest = answer.text[answer.released :]
            answer.released = len(answer.text)
            if done is not None:
                chunks += out.closing(rest, done, list(answer.logprobs.last), self._include_usage, first)
            else:
                chunks += out.failing(rest, first)
        return chunks
