"""Streaming across rounds: the caller sees one stream, whatever happened upstream.

Real HTTP, real SDK streams (sync and async), the emulator behind them.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import autocontinue
from autocontinue.dialects import DIALECTS
from tests.support.common import (
    PERSONA_DIALECT,
    SPACY,
    TARGET,
    USER,
    acollect,
    active_streams_zero,
    add,
    aeventually,
    collect,
    eventually,
    fast_retry,
    usage_dict,
)
from tests.support.emulator import Emulator, Fault

PERSONAS = [
    "dashscope",
    "kimi",
    "deepseek",
    "mistral",
    "vllm",
    "sglang",
    "llamacpp",
    "anthropic",
    "openrouter",
    "ollama",
    "openai",
    "claude46",
]


def _kwargs(persona: str, model: str, **extra: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        model=model, messages=[USER], max_tokens=5, dialect=PERSONA_DIALECT[persona], max_rounds=200, retry=fast_retry()
    )
    kwargs.update(extra)
    return kwargs


def _shape(chunks: list[Any], finish: str = "stop") -> None:
    assert len({c.id for c in chunks}) == 1, "one id across all chunks"
    with_choices = [c for c in chunks if c.choices]
    roles = [c.choices[0].delta.role for c in with_choices if c.choices[0].delta.role is not None]
    assert roles == ["assistant"]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1]), "no interim finish_reason"
    assert with_choices[-1].choices[0].finish_reason == finish
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)


@pytest.mark.parametrize("persona", PERSONAS)
def test_stream_shape_without_usage(emu: Emulator, sync_client: Any, persona: str) -> None:
    model = add(emu)
    client = sync_client(persona)
    stream = autocontinue.create(client, stream=True, **_kwargs(persona, model))
    chunks, text = collect(stream)
    assert text == TARGET
    _shape(chunks)
    assert all(c.usage is None for c in chunks), "no usage chunk unless the caller asked for one"
    requests = emu.requests(model)
    assert len(requests) > 2
    # Upstream, usage is always requested (budgets and the trace need it).
    assert all(r["body"]["stream"] is True for r in requests)
    assert all(r["body"]["stream_options"]["include_usage"] is True for r in requests)
    assert all(not r.usage_estimated for r in stream.continuation.rounds)


@pytest.mark.parametrize("persona", ["dashscope", "mistral", "anthropic"])
async def test_stream_include_usage_false(emu: Emulator, async_client: Any, persona: str) -> None:
    model = add(emu)
    client = async_client(persona)
    stream = await autocontinue.acreate(
        client, stream=True, stream_options={"include_usage": False}, **_kwargs(persona, model)
    )
    chunks, text = await acollect(stream)
    assert text == TARGET
    _shape(chunks)
    assert all(c.usage is None for c in chunks)
    assert all(r["body"]["stream_options"]["include_usage"] is True for r in emu.requests(model))


@pytest.mark.parametrize("persona", PERSONAS)
async def test_stream_usage_chunk_is_the_sum(emu: Emulator, async_client: Any, persona: str) -> None:
    model = add(emu)
    client = async_client(persona)
    stream = await autocontinue.acreate(
        client, stream=True, stream_options={"include_usage": True}, **_kwargs(persona, model)
    )
    chunks, text = await acollect(stream)
    assert text == TARGET
    _shape(chunks)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
    rounds = stream.continuation.rounds
    assert usage_dict(usage_chunks[0].usage) == {
        "prompt_tokens": sum(r.usage.prompt_tokens for r in rounds),
        "completion_tokens": sum(r.usage.completion_tokens for r in rounds),
        "total_tokens": sum(r.usage.total_tokens for r in rounds),
        "cached_tokens": sum(r.usage.prompt_tokens_details.cached_tokens or 0 for r in rounds),
    }


@pytest.mark.parametrize("max_tokens", [3, 7])
@pytest.mark.parametrize("target", [TARGET, SPACY], ids=["prose", "spacy"])
@pytest.mark.parametrize("persona", ["dashscope", "deepseek", "mistral", "llamacpp", "openai"])
def test_streamed_equals_non_streamed(
    emu: Emulator, sync_client: Any, persona: str, target: str, max_tokens: int
) -> None:
    client = sync_client(persona)
    whole = autocontinue.create(client, **_kwargs(persona, add(emu, target), max_tokens=max_tokens))
    stream = autocontinue.create(client, stream=True, **_kwargs(persona, add(emu, target), max_tokens=max_tokens))
    _, text = collect(stream)
    assert whole.choices[0].message.content == target
    assert text == whole.choices[0].message.content


@pytest.mark.parametrize("echo_chunks", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("persona", ["mistral", "llamacpp"])
def test_echo_split_over_chunks(emu: Emulator, sync_client: Any, persona: str, echo_chunks: int) -> None:
    model = add(emu, echo_chunks=echo_chunks)
    client = sync_client(persona)
    stream = autocontinue.create(client, stream=True, **_kwargs(persona, model, max_tokens=4))
    chunks, text = collect(stream)
    assert text == TARGET
    _shape(chunks)
    assert all("echo_stripped" in r.seam for r in stream.continuation.rounds[1:])


@pytest.mark.parametrize("echo_chunks", [1, 3, 5])
async def test_echo_split_over_chunks_async(emu: Emulator, async_client: Any, echo_chunks: int) -> None:
    model = add(emu, SPACY, echo_chunks=echo_chunks)
    client = async_client("llamacpp")
    stream = await autocontinue.acreate(client, stream=True, **_kwargs("llamacpp", model, max_tokens=4))
    chunks, text = await acollect(stream)
    assert text == SPACY
    _shape(chunks)


# ------------------------------------------------------------------------------------------------------------
# A broken upstream is invisible to the caller


BROKEN = {
    2: Fault("drop", after_chunks=2),  # mid-round, right after the first content chunk
    4: Fault("malformed_sse", after_chunks=3),
    5: Fault("drop", after_chunks=0),  # before any event
    7: Fault("drop", after_chunks=5),
    9: Fault("status", status=503),
}


@pytest.mark.parametrize("persona", ["dashscope", "mistral", "llamacpp", "anthropic", "vllm"])
def test_uninterrupted_stream_despite_breaks(emu: Emulator, sync_client: Any, persona: str) -> None:
    model = add(emu, faults=BROKEN, echo_chunks=2)
    client = sync_client(persona)
    stream = autocontinue.create(client, stream=True, stream_options={"include_usage": True}, **_kwargs(persona, model))
    chunks, text = collect(stream)
    assert text == TARGET
    _shape(chunks)
    kinds = [r.get("fault") for r in emu.requests(model)]
    assert kinds.count("drop") == 3 and kinds.count("malformed_sse") == 1


@pytest.mark.parametrize("persona", ["dashscope", "mistral"])
async def test_uninterrupted_stream_despite_breaks_async(emu: Emulator, async_client: Any, persona: str) -> None:
    model = add(emu, faults=BROKEN)
    client = async_client(persona)
    stream = await autocontinue.acreate(client, stream=True, **_kwargs(persona, model))
    chunks, text = await acollect(stream)
    assert text == TARGET
    _shape(chunks)


# ------------------------------------------------------------------------------------------------------------
# Budgets mid-stream


@pytest.mark.parametrize("persona", ["dashscope", "mistral", "llamacpp", "anthropic", "openai"])
@pytest.mark.parametrize("budget", [3, 13, 22])
def test_token_budget_mid_round(emu: Emulator, sync_client: Any, persona: str, budget: int) -> None:
    model = add(emu, echo_chunks=3)
    client = sync_client(persona)
    stream = autocontinue.create(
        client,
        stream=True,
        stream_options={"include_usage": True},
        **_kwargs(persona, model, max_tokens=5, max_total_tokens=budget),
    )
    chunks, text = collect(stream)
    _shape(chunks, finish="length")
    assert TARGET.startswith(text) and text
    trace = stream.continuation
    assert trace.stop_cause == "token_budget"
    assert sum(r.usage.completion_tokens for r in trace.rounds) <= budget
    requested = [r["body"]["max_tokens"] for r in emu.requests(model)]
    assert len(requested) == len(trace.rounds)
    spent = 0
    for asked, record in zip(requested, trace.rounds, strict=True):
        assert asked <= budget - spent, "each round's max_tokens is clamped to what the budget has left"
        spent += record.usage.completion_tokens
    assert next(c for c in chunks if c.usage is not None).usage.completion_tokens <= budget


# Rare words: a local tokenizer (tiktoken) counts more tokens than the provider does. The provider's count rules.
RARE = (
    "Zyxwv quorbling flimflam 8472 snarkles, vorpal blades!\n\nGalumphing back, the jabberwock's "
    "frumious bandersnatch mimsy borogoves outgrabe."
)


@pytest.mark.parametrize("budget", [5, 8, 13])
def test_token_budget_stream_matches_non_stream(emu: Emulator, sync_client: Any, budget: int) -> None:
    client = sync_client("dashscope")
    kwargs = _kwargs("dashscope", "", max_tokens=6, max_total_tokens=budget)
    whole = autocontinue.create(client, **{**kwargs, "model": add(emu, RARE)})
    model = add(emu, RARE)
    stream = autocontinue.create(
        client, stream=True, stream_options={"include_usage": True}, **{**kwargs, "model": model}
    )
    chunks, text = collect(stream)
    usage = chunks[-1].usage
    assert whole.usage.completion_tokens <= budget
    assert usage.completion_tokens <= budget, "the streamed call reports more completion tokens than the budget"
    assert text == whole.choices[0].message.content
    assert usage_dict(usage) == usage_dict(whole.usage)


# ------------------------------------------------------------------------------------------------------------
# Closing early releases the upstream connection

SLOW = {"token_delay": 0.05}


def _slow_kwargs(model: str) -> dict[str, Any]:
    return dict(model=model, messages=[USER], max_tokens=200, dialect="partial", retry=fast_retry())


def test_break_out_of_loop(emu: Emulator, sync_client: Any) -> None:
    model = add(emu, TARGET * 4, **SLOW)
    client = sync_client("dashscope")
    for chunk in autocontinue.create(client, stream=True, **_slow_kwargs(model)):
        if chunk.choices and chunk.choices[0].delta.content:
            break
    assert emu.requests(model)
    assert eventually(lambda: active_streams_zero(emu))


def test_break_then_drop_reference(emu: Emulator, sync_client: Any) -> None:
    model = add(emu, TARGET * 4, **SLOW)
    client = sync_client("dashscope")
    stream = autocontinue.create(client, stream=True, **_slow_kwargs(model))
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    del stream, chunk
    gc.collect()
    assert eventually(lambda: active_streams_zero(emu))


def test_close(emu: Emulator, sync_client: Any) -> None:
    model = add(emu, TARGET * 4, **SLOW)
    client = sync_client("dashscope")
    stream = autocontinue.create(client, stream=True, **_slow_kwargs(model))
    next(iter(stream))
    next(iter(stream))
    assert emu.stats()["active_streams"] == 1
    stream.close()
    assert eventually(lambda: active_streams_zero(emu))
    assert emu.requests(model)[-1].get("cancelled") is True
    stream.close()  # idempotent


def test_with_block(emu: Emulator, sync_client: Any) -> None:
    model = add(emu, TARGET * 4, **SLOW)
    client = sync_client("dashscope")
    with autocontinue.create(client, stream=True, **_slow_kwargs(model)) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
    assert eventually(lambda: active_streams_zero(emu))


def test_close_before_iterating_closes_the_first_response(emu: Emulator, sync_client: Any) -> None:
    """create(stream=True) sends the first request, as the SDK's does, so that its errors are raised by create();
    closing the stream before reading it closes that response and sends nothing more. (It used to send nothing
    before the first chunk was asked for, and errors such as a 429 then arrived at the first next().)"""
    model = add(emu, TARGET * 4, **SLOW)
    client = sync_client("dashscope")
    stream = autocontinue.create(client, stream=True, **_slow_kwargs(model))
    assert len(emu.requests(model)) == 1
    stream.close()
    assert eventually(lambda: active_streams_zero(emu))
    assert len(emu.requests(model)) == 1


async def test_async_break(emu: Emulator, async_client: Any) -> None:
    model = add(emu, TARGET * 4, **SLOW)
    client = async_client("dashscope")
    async for chunk in await autocontinue.acreate(client, stream=True, **_slow_kwargs(model)):
        if chunk.choices and chunk.choices[0].delta.content:
            break
    gc.collect()
    assert await aeventually(lambda: active_streams_zero(emu))


async def test_async_close(emu: Emulator, async_client: Any) -> None:
    model = add(emu, TARGET * 4, **SLOW)
    client = async_client("dashscope")
    stream = await autocontinue.acreate(client, stream=True, **_slow_kwargs(model))
    await stream.__anext__()
    await stream.__anext__()
    assert emu.stats()["active_streams"] == 1
    await stream.close()
    assert await aeventually(lambda: active_streams_zero(emu))


async def test_async_with_block(emu: Emulator, async_client: Any) -> None:
    model = add(emu, TARGET * 4, **SLOW)
    client = async_client("dashscope")
    async with await autocontinue.acreate(client, stream=True, **_slow_kwargs(model)) as stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
    assert await aeventually(lambda: active_streams_zero(emu))


async def test_async_task_cancelled(emu: Emulator, async_client: Any) -> None:
    model = add(emu, TARGET * 4, **SLOW)
    client = async_client("dashscope")

    async def consume() -> None:
        async for _ in await autocontinue.acreate(client, stream=True, **_slow_kwargs(model)):
            pass

    task = asyncio.create_task(consume())
    assert await aeventually(lambda: emu.stats()["active_streams"] == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await aeventually(lambda: active_streams_zero(emu))


def test_continuation_after_exhaustion(emu: Emulator, sync_client: Any) -> None:
    model = add(emu)
    client = sync_client("mistral")
    stream = autocontinue.create(client, stream=True, **_kwargs("mistral", model))
    _, text = collect(stream)
    trace = stream.continuation
    assert text == TARGET
    assert trace.stop_cause == "natural"
    assert len(trace.rounds) == len(emu.requests(model))
    assert trace.rounds[-1].finish_reason == "stop"
    assert autocontinue.trace_of(stream) is trace


# ------------------------------------------------------------------------------------------------------------
# Property: streamed == non-streamed == target

HYPO_PERSONAS = ["dashscope", "kimi", "deepseek", "mistral", "vllm", "sglang", "llamacpp"]
ECHOING = {"mistral", "llamacpp"}
ALPHABET = st.sampled_from([*list("abcdefgh XYZ.,;:!?-'\"()\n\t0123456789"), "  ", "\n\n", "é", "中", "😀"])
# Natural text repeats its words: a small vocabulary makes a reply that also begins the answer likely.
WORDS = st.sampled_from(["The", " the", " cat", " sat", ".", ",", " on", " mat", "\n", "\n\n", " ", "  ", "A", " a"])
PIECES = st.one_of(ALPHABET, WORDS)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    target=st.lists(PIECES, min_size=1, max_size=40).map("".join),
    max_tokens=st.integers(min_value=1, max_value=6),
    persona=st.sampled_from(HYPO_PERSONAS),
)
@example(target="a.a", max_tokens=1, persona="deepseek")  # a one-token reply that also begins the answer
@example(target=" the cat. The cat", max_tokens=2, persona="vllm")
def test_property_stream_equals_whole_equals_target(emu: Emulator, target: str, max_tokens: int, persona: str) -> None:
    with openai.OpenAI(base_url=emu.base_url(persona), api_key="test-key") as client:
        kwargs = _kwargs(persona, add(emu, target), max_tokens=max_tokens, max_rounds=400)
        if persona not in ECHOING:
            # On the providers' real hosts the dialect knows they never echo; on the loopback URL it can only
            # guess ("maybe"), and a prefix of a few characters that the new text happens to begin with (target
            # "  a", one token per round) is then truly ambiguous. Tell it, as detection would.
            kwargs["dialect"] = DIALECTS[PERSONA_DIALECT[persona]](echo="never")
        result = autocontinue.create(client, **kwargs)
        stream = autocontinue.create(client, stream=True, **{**kwargs, "model": add(emu, target)})
        chunks, streamed = collect(stream)
    whole = result.choices[0].message.content
    # The same decisions with and without streaming, character for character.
    assert streamed == whole
    assert stream.continuation.stop_cause == result.continuation.stop_cause
    if result.continuation.stop_cause == "no_progress":
        # Documented trade-off: a round that repeats the previous one exactly ends the call, and a target that
        # repeats itself at round granularity (" the the the" one token per round) looks exactly like that.
        assert target.startswith(whole) and len(result.continuation.rounds) >= 2
        _shape(chunks, finish="length")
    else:
        assert whole == target
        _shape(chunks)
