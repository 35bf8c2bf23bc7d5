"""The SSE body of a continued stream (``ChatRoute._events``): text goes out as it comes, only a chunk that can be
the last waits (for the next one, or for the end, to carry the trace), and nothing held is lost to an error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from autocontinue.serve.chat import ChatRoute
from autocontinue.trace import ContinuationTrace

pytestmark = pytest.mark.timeout(30)


def _chunk(content: str | None, finish: str | None = None) -> ChatCompletionChunk:
    delta = {} if content is None else {"content": content}
    return ChatCompletionChunk.model_validate(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


class _Stream:
    """A continued stream as ``acreate`` returns it: chunks, then ``continuation``; ``gate`` holds it after the
    first chunk, and ``error`` is raised after the last."""

    def __init__(self, chunks: list[ChatCompletionChunk], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error
        self.gate = asyncio.Event()
        self.continuation = ContinuationTrace(stop_cause="max_rounds")
        self.closed = False

    async def _items(self) -> AsyncIterator[ChatCompletionChunk]:
        for n, chunk in enumerate(self.chunks):
            if n == 1:
                await self.gate.wait()
            yield chunk
        if self.error is not None:
            raise self.error

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self._items()

    async def close(self) -> None:
        self.closed = True


def _route() -> ChatRoute:
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused")  # never sent to
    return ChatRoute(client, {}, server_pays=False, observe=lambda *args: None)


def _events(body: bytes) -> list[Any]:
    return [json.loads(e[6:]) if e != b"data: [DONE]" else "[DONE]" for e in body.split(b"\n\n") if e]


async def test_text_goes_out_before_the_next_chunk_and_the_last_carries_the_trace() -> None:
    stream = _Stream([_chunk("Hello"), _chunk(" world"), _chunk(None, "stop")])
    body = _route()._events(stream, 0.0)
    first = await asyncio.wait_for(body.__anext__(), 5)  # while the source waits at its gate
    assert _events(first) == [_chunk("Hello").model_dump(mode="json", exclude_unset=True)]
    stream.gate.set()
    rest = _events(b"".join([part async for part in body]))
    assert rest[-1] == "[DONE]"
    assert [e["choices"][0]["delta"].get("content") for e in rest[:-1]] == [" world", None]
    assert ["continuation" in e for e in rest[:-1]] == [False, True]
    assert rest[-2]["continuation"]["stop_cause"] == stream.continuation.stop_cause
    assert stream.closed


async def test_a_held_chunk_goes_out_before_an_error() -> None:
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    stream = _Stream([_chunk("Hello"), _chunk(" world", "stop")], error=openai.APIConnectionError(request=request))
    stream.gate.set()
    events = _events(b"".join([part async for part in _route()._events(stream, 0.0)]))
    assert [e.get("choices", [{}])[0].get("delta", {}).get("content") for e in events] == ["Hello", " world", None]
    assert "error" in events[-1] and "continuation" not in events[1]
    assert stream.closed
