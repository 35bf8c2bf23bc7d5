"""Streamed chunks, in and out.

In: :func:`take_choice` reads an upstream chunk's choice into the round in flight (a field of the wrong type is a
malformed chunk: :func:`malformed_chunk`). Out: :class:`StreamOut` makes the chunks a continued stream hands to
its reader, one stream across rounds, as if the provider had sent it. Every chunk carries the first upstream
chunk's id; the role is sent once; interim finish reasons are swallowed and the last chunk carries the final one
(then a usage chunk if the caller asked for one); each chunk carries the logprobs of the text it releases.
Upstream chunks are reused rather than copied: they are fresh from the SDK's parser and nobody else holds them.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta, ChoiceLogprobs
from openai.types.completion_usage import CompletionUsage

from ._replies import DELTA_HAS_REASONING, has_payload, reasoning_of
from ._round import Round
from ._shape import finish_problem
from .errors import MalformedResponse

__all__ = ["StreamOut", "malformed_chunk", "take_choice"]

_DEFAULT_ID = "chatcmpl-autocontinue"

M = TypeVar("M", bound=openai.BaseModel)


def _built(model_class: type[M], /, **values: Any) -> M:
    """A ``model_class`` holding ``values`` as they are, by pydantic's own ``model_construct``.

    The SDK's models override it with a construction that walks every value against the type hints, to build
    nested objects out of dicts: about 120 µs for a chunk, against 18 µs here. Every value given here is a model
    already (the upstream's, or one built here) or a plain value, which that walk hands back unchanged, so the
    objects are equal (``tests/unit/test_chunks.py``)."""
    built: M = super(openai.BaseModel, model_class).model_construct(**values)
    return built


def take_choice(current: Round, top: dict[str, Any], delta: Any, fields: dict[str, Any]) -> str | None:
    """Read a streamed choice into ``current``: its finish reason (taken off the chunk: interim finish reasons are
    swallowed, the last chunk carries the final one), tool-call fragments, reasoning text and logprobs (which wait
    for the text they cover); return its text. ``top`` and ``fields`` are the choice's and the delta's dicts
    (read directly: this runs for every chunk). A field of the wrong type raises ``TypeError``."""
    if top["finish_reason"] is not None:
        finish = top["finish_reason"]
        if finish.__class__ is not str:
            raise TypeError(finish_problem(finish))
        current.finish_reason = finish
        top["finish_reason"] = None
    if fields.get("tool_calls"):
        current.tool_calls.extend(fields["tool_calls"])
    if delta.__pydantic_extra__ or DELTA_HAS_REASONING:  # else there is nowhere for reasoning to be
        reasoning = reasoning_of(delta)
        if reasoning:
            current.reasoning.append(reasoning)
    if top["logprobs"] is not None:
        current.logprob_queue.extend(top["logprobs"].content or ())
        top["logprobs"] = None
    content = fields.get("content")
    if content.__class__ is not str and content is not None:
        raise TypeError(f"a delta's content is a {type(content).__name__}, not text")
    return content


def malformed_chunk(error: BaseException) -> MalformedResponse:
    """The error of a streamed chunk of the wrong shape (``error``: what reading it raised)."""
    detail = str(error) if isinstance(error, TypeError) and str(error).startswith(("a ", "usage", "the ")) else ""
    return MalformedResponse(
        "the provider sent a malformed stream chunk" + (f": {detail}" if detail else f" ({type(error).__name__})")
    )


class StreamOut:
    """What a stream has handed on, and the text and logprobs that wait to be (released when a round ended)."""

    def __init__(self, model: str) -> None:
        self._model = model
        self.id: str | None = None
        self._role_sent = False
        self._held = ""  # text released when a round ended, not yet handed to the stream
        self._held_logprobs: list[Any] = []

    def pass_on(
        self,
        chunk: ChatCompletionChunk,
        top: dict[str, Any],
        delta: Any,
        fields: dict[str, Any],
        released: str,
        logprobs: list[Any],
    ) -> ChatCompletionChunk | None:
        """An upstream chunk rewritten to carry what the seam ``released`` (and its ``logprobs``), or None when
        nothing in it is for the reader. ``top`` and ``fields`` are the choice's and the delta's dicts."""
        if logprobs:
            top["logprobs"] = _built(ChoiceLogprobs, content=logprobs, refusal=None)
        fields["content"] = released or None
        if self._role_sent:
            fields["role"] = None
        elif fields.get("role") is not None or released:
            fields["role"] = "assistant"
            self._role_sent = True
        keep = released or fields["role"] or top["logprobs"] is not None or has_payload(delta)
        return chunk if keep else None

    def hold(self, text: str, logprobs: list[Any]) -> None:
        """Text (and its logprobs) released as a round ended, to be handed on with the next action."""
        self._held += text
        self._held_logprobs += logprobs

    def take_held(self, first: Any) -> list[ChatCompletionChunk]:
        """The held text, as a chunk (``first``: the first upstream reply, the chunks' template)."""
        if not self._held:
            return []
        text, self._held = self._held, ""
        chunk = self.make({"content": text}, None, first)
        if self._held_logprobs:
            chunk.choices[0].logprobs = _built(ChoiceLogprobs, content=self._held_logprobs, refusal=None)
            self._held_logprobs = []
        return [chunk]

    def failing(self, rest: str, first: Any) -> list[ChatCompletionChunk]:
        """Before an error is raised to the reader: ``rest``, the text kept in the error's partial that the stream
        had not delivered yet (held back at the seam), so the reader has seen exactly the partial."""
        self._held = ""
        return [self.make({"content": rest}, None, first)] if rest else []

    def closing(
        self, rest: str, completion: ChatCompletion, logprobs: list[Any], usage: bool, first: Any
    ) -> list[ChatCompletionChunk]:
        """After the call is done: the rest of the text, the final finish_reason (and the ``logprobs`` not handed
        on yet), and the usage when the caller asked for it."""
        self._held = ""
        chunks = [self.make({"content": rest} if rest else {}, completion.choices[0].finish_reason, first)]
        tail = self._held_logprobs + logprobs
        if tail:
            chunks[0].choices[0].logprobs = _built(ChoiceLogprobs, content=tail, refusal=None)
        if usage and completion.usage is not None:
            chunks.append(self._usage_chunk(completion.usage, first))
        return chunks

    def _usage_chunk(self, usage: CompletionUsage, first: Any) -> ChatCompletionChunk:
        chunk = self.make({}, None, first)
        chunk.choices = []
        chunk.usage = usage
        return chunk

    def make(self, delta: dict[str, Any], finish_reason: str | None, first: Any) -> ChatCompletionChunk:
        """A chunk of this stream carrying ``delta`` (the role added if it was not sent yet)."""
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        return _built(
            ChatCompletionChunk,
            id=self.id or (first.id if first is not None else _DEFAULT_ID),
            object="chat.completion.chunk",
            created=first.created if first is not None else int(time.time()),
            model=first.model if first is not None else self._model,
            system_fingerprint=first.system_fingerprint if first is not None else None,
            choices=[
                _built(Choice, index=0, delta=_built(ChoiceDelta, **delta), finish_reason=finish_reason, logprobs=None)
            ],
            usage=None,
        )
