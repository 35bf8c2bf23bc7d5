"""The chunks a continued stream hands to its reader: one stream across rounds, as if the provider had sent it.

Every chunk carries the first upstream chunk's id; the role is sent once; interim finish reasons are swallowed
and the last chunk carries the final one (then a usage chunk if the caller asked for one); each chunk carries
the logprobs of the text it releases. Upstream chunks are reused rather than copied: they are fresh from the
SDK's parser and nobody else holds them.
"""

from __future__ import annotations

import time
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta, ChoiceLogprobs
from openai.types.completion_usage import CompletionUsage

from ._replies import has_payload

__all__ = ["StreamOut"]

_DEFAULT_ID = "chatcmpl-autocontinue"


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
            top["logprobs"] = ChoiceLogprobs.model_construct(content=logprobs, refusal=None)
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
            chunk.choices[0].logprobs = ChoiceLogprobs.model_construct(content=self._held_logprobs, refusal=None)
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
            chunks[0].choices[0].logprobs = ChoiceLogprobs.model_construct(content=tail, refusal=None)
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
        return ChatCompletionChunk.model_construct(
            id=self.id or (first.id if first is not None else _DEFAULT_ID),
            object="chat.completion.chunk",
            created=first.created if first is not None else int(time.time()),
            model=first.model if first is not None else self._model,
            system_fingerprint=first.system_fingerprint if first is not None else None,
            choices=[
                Choice.model_construct(
                    index=0, delta=ChoiceDelta.model_construct(**delta), finish_reason=finish_reason, logprobs=None
                )
            ],
            usage=None,
        )
