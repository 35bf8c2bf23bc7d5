"""The chunks a continued stream makes (``autocontinue/_chunks.py``) are the objects the SDK's construction makes.

``_built`` uses pydantic's own ``model_construct`` where the SDK's models override it with a slower walk over the
type hints; for the values a stream's chunks are made of (models already built, plain values), both must give equal
objects: the same fields, the same fields set, the same JSON.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionTokenLogprob
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta, ChoiceLogprobs
from openai.types.completion_usage import CompletionUsage

from autocontinue._chunks import StreamOut, _built

TOKEN = ChatCompletionTokenLogprob.model_validate(
    {"token": " a", "logprob": -0.5, "bytes": [32, 97], "top_logprobs": []}
)
FIRST = ChatCompletionChunk.model_validate(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
    }
)


def _same(ours: Any, sdks: Any) -> None:
    assert type(ours) is type(sdks)
    assert ours == sdks
    assert ours.model_fields_set == sdks.model_fields_set
    assert ours.model_dump_json(exclude_unset=True) == sdks.model_dump_json(exclude_unset=True)
    assert ours.model_dump() == sdks.model_dump()


@pytest.mark.parametrize(
    "delta", [{}, {"content": "text"}, {"role": "assistant", "content": ""}, {"role": None, "content": None}]
)
def test_a_chunk_is_the_sdks_construction(delta: dict[str, Any]) -> None:
    def chunk(build: Any) -> ChatCompletionChunk:
        choice = build(Choice, index=0, delta=build(ChoiceDelta, **delta), finish_reason="stop", logprobs=None)
        return build(  # type: ignore[no-any-return]
            ChatCompletionChunk,
            id="chatcmpl-1",
            object="chat.completion.chunk",
            created=1700000000,
            model="m",
            system_fingerprint=None,
            choices=[choice],
            usage=None,
        )

    _same(chunk(_built), chunk(lambda cls, **values: cls.model_construct(**values)))


def test_logprobs_are_the_sdks_construction() -> None:
    _same(
        _built(ChoiceLogprobs, content=[TOKEN], refusal=None),
        ChoiceLogprobs.model_construct(content=[TOKEN], refusal=None),
    )


def test_a_streams_last_chunks_carry_the_first_chunks_fields() -> None:
    from openai.types.chat import ChatCompletion

    completion = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a b"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )
    out = StreamOut("m")
    last, usage = out.closing(" b", completion, [TOKEN], True, FIRST)
    assert last.model_dump(exclude_unset=True) == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "system_fingerprint": "fp_1",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": " b"},
                "finish_reason": "stop",
                "logprobs": {"content": [TOKEN.model_dump()], "refusal": None},
            }
        ],
        "usage": None,
    }
    assert usage.choices == [] and usage.usage == CompletionUsage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
