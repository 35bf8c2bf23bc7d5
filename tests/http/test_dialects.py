"""Every continuation dialect against the emulator persona that speaks it, over real HTTP with the real SDK.

Each call uses a small ``max_tokens`` so that several rounds happen; the joined text must equal the script's
target exactly, and what autocontinue reports (usage, seams, dialects) must match what the provider did.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

import autocontinue
from tests.support.common import (
    DIALECT_PERSONAS,
    SPACY,
    TARGET,
    USER,
    Recorder,
    acollect,
    add,
    collect,
    fast_retry,
    usage_dict,
)
from tests.support.emulator import Emulator

ECHO_PERSONAS = {"mistral", "llamacpp"}
# The Prefill dialect never sends trailing whitespace, so a round whose whole output is the held whitespace run
# cannot make progress: give it room for the whitespace plus a word.
MAX_TOKENS = 5
IDS = [f"{p}-{d}" for p, d in DIALECT_PERSONAS]


def _trace_usage(trace: Any) -> dict[str, int]:
    rounds = trace.rounds
    return {
        "prompt_tokens": sum(r.usage.prompt_tokens for r in rounds),
        "completion_tokens": sum(r.usage.completion_tokens for r in rounds),
        "total_tokens": sum(r.usage.total_tokens for r in rounds),
        "cached_tokens": sum(
            (r.usage.prompt_tokens_details.cached_tokens or 0) for r in rounds if r.usage.prompt_tokens_details
        ),
    }


def _check_result(
    emu: Emulator, model: str, persona: str, dialect: str, target: str, content: str, trace: Any, recorder: Recorder
) -> None:
    assert content == target
    assert trace.stop_cause == "natural"
    assert len(trace.rounds) >= 3, "the test wants several rounds"
    # What the provider reported, summed, is what the trace holds (cached tokens included).
    assert recorder.total() == _trace_usage(trace)
    assert len(recorder.usages) == len(trace.rounds)
    assert all(not r.usage_estimated for r in trace.rounds)
    assert trace.rounds[0].dialect == "first"
    assert all(r.dialect == dialect for r in trace.rounds[1:])
    assert trace.dialect == dialect
    assert trace.fallbacks == []
    assert [r.finish_reason for r in trace.rounds] == ["length"] * (len(trace.rounds) - 1) + ["stop"]
    assert sum(r.chars_added for r in trace.rounds) == len(target)
    requests = emu.requests(model)
    assert len(requests) == len(trace.rounds)
    assert requests[0]["mode"] == "first"
    expected_mode = "instruction" if dialect == "instruction" else "prefill"
    assert [r["mode"] for r in requests[1:]] == [expected_mode] * (len(requests) - 1)
    assert not any("error" in r for r in requests)
    echoed = ["echo_stripped" in r.seam for r in trace.rounds[1:]]
    if persona in ECHO_PERSONAS:
        assert all(echoed), [r.seam for r in trace.rounds]
    else:
        assert not any(echoed)
    # Cached prompt tokens are reported from round 2 on (the prompt shares its start with round 1's).
    assert recorder.total()["cached_tokens"] > 0


@pytest.mark.parametrize("target", [TARGET, SPACY], ids=["prose", "spacy"])
@pytest.mark.parametrize(("persona", "dialect"), DIALECT_PERSONAS, ids=IDS)
def test_sync(emu: Emulator, sync_client: Any, persona: str, dialect: str, target: str) -> None:
    recorder = Recorder()
    model = add(emu, target)
    client = sync_client(persona, recorder=recorder)
    result = autocontinue.create(
        client, model=model, messages=[USER], max_tokens=MAX_TOKENS, dialect=dialect, max_rounds=100, retry=fast_retry()
    )
    assert isinstance(result, openai.types.chat.ChatCompletion)
    assert result.choices[0].finish_reason == "stop"
    assert usage_dict(result.usage) == recorder.total()
    _check_result(
        emu, model, persona, dialect, target, result.choices[0].message.content, result.continuation, recorder
    )


@pytest.mark.parametrize("target", [TARGET], ids=["prose"])  # whitespace-heavy text: sync variants
@pytest.mark.parametrize(("persona", "dialect"), DIALECT_PERSONAS, ids=IDS)
async def test_async(emu: Emulator, async_client: Any, persona: str, dialect: str, target: str) -> None:
    recorder = Recorder()
    model = add(emu, target)
    client = async_client(persona, recorder=recorder)
    result = await autocontinue.acreate(
        client, model=model, messages=[USER], max_tokens=MAX_TOKENS, dialect=dialect, max_rounds=100, retry=fast_retry()
    )
    assert result.choices[0].finish_reason == "stop"
    assert usage_dict(result.usage) == recorder.total()
    _check_result(
        emu, model, persona, dialect, target, result.choices[0].message.content, result.continuation, recorder
    )


def _check_stream_chunks(chunks: list[Any], recorder: Recorder) -> None:
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert sum(1 for c in with_choices if c.choices[0].delta.role is not None) == 1
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert with_choices[-1].choices[0].finish_reason == "stop"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
    assert usage_dict(usage_chunks[0].usage) == recorder.total()


@pytest.mark.parametrize("target", [TARGET, SPACY], ids=["prose", "spacy"])
@pytest.mark.parametrize(("persona", "dialect"), DIALECT_PERSONAS, ids=IDS)
def test_stream_sync(emu: Emulator, sync_client: Any, persona: str, dialect: str, target: str) -> None:
    recorder = Recorder()
    model = add(emu, target)
    client = sync_client(persona, recorder=recorder)
    stream = autocontinue.create(
        client,
        model=model,
        messages=[USER],
        max_tokens=MAX_TOKENS,
        dialect=dialect,
        max_rounds=100,
        retry=fast_retry(),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks, text = collect(stream)
    _check_stream_chunks(chunks, recorder)
    _check_result(emu, model, persona, dialect, target, text, stream.continuation, recorder)
    assert all(r["body"]["stream_options"] == {"include_usage": True} for r in emu.requests(model))


@pytest.mark.parametrize("target", [TARGET], ids=["prose"])  # whitespace-heavy text: sync variants
@pytest.mark.parametrize(("persona", "dialect"), DIALECT_PERSONAS, ids=IDS)
async def test_stream_async(emu: Emulator, async_client: Any, persona: str, dialect: str, target: str) -> None:
    recorder = Recorder()
    model = add(emu, target)
    client = async_client(persona, recorder=recorder)
    stream = await autocontinue.acreate(
        client,
        model=model,
        messages=[USER],
        max_tokens=MAX_TOKENS,
        dialect=dialect,
        max_rounds=100,
        retry=fast_retry(),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks, text = await acollect(stream)
    _check_stream_chunks(chunks, recorder)
    _check_result(emu, model, persona, dialect, target, text, stream.continuation, recorder)


# One token per round: every cut of the text is a seam. Dialects that send trailing whitespace can always progress.
SHORT = TARGET[:140]  # through "...forest!\n\nThe end." ("The" also begins the answer)
TINY = [(p, d) for p, d in DIALECT_PERSONAS if d != "prefill"]


@pytest.mark.parametrize(("persona", "dialect"), TINY, ids=[f"{p}-{d}" for p, d in TINY])
def test_one_token_rounds(emu: Emulator, sync_client: Any, persona: str, dialect: str) -> None:
    model = add(emu, SHORT)
    client = sync_client(persona)
    result = autocontinue.create(
        client, model=model, messages=[USER], max_tokens=1, dialect=dialect, max_rounds=500, retry=fast_retry()
    )
    assert result.choices[0].message.content == SHORT
    assert result.continuation.stop_cause == "natural"


@pytest.mark.parametrize(("persona", "dialect"), TINY, ids=[f"{p}-{d}" for p, d in TINY])
def test_one_token_rounds_stream(emu: Emulator, sync_client: Any, persona: str, dialect: str) -> None:
    model = add(emu, SHORT)
    client = sync_client(persona)
    stream = autocontinue.create(
        client,
        model=model,
        messages=[USER],
        max_tokens=1,
        dialect=dialect,
        max_rounds=500,
        retry=fast_retry(),
        stream=True,
    )
    _, text = collect(stream)
    assert text == SHORT
    assert stream.continuation.stop_cause == "natural"


# ------------------------------------------------------------------------------------------------------------
# Provider specifics


def test_deepseek_continuations_go_to_beta(emu: Emulator, sync_client: Any) -> None:
    model = add(emu)
    client = sync_client("deepseek")
    result = autocontinue.create(
        client, model=model, messages=[USER], max_tokens=6, dialect="prefix", retry=fast_retry(), max_rounds=100
    )
    assert result.choices[0].message.content == TARGET
    paths = [r["path"] for r in emu.requests(model)]
    assert paths[0] == "/deepseek/chat/completions"
    assert len(paths) > 2
    assert all(p == "/deepseek/beta/chat/completions" for p in paths[1:])
    for request in emu.requests(model)[1:]:
        assert request["body"]["messages"][-1]["prefix"] is True


async def test_deepseek_v1_base_url_stream(emu: Emulator) -> None:
    model = add(emu)
    async with openai.AsyncOpenAI(base_url=emu.url + "/deepseek/v1", api_key="test-key") as client:
        stream = await autocontinue.acreate(
            client,
            model=model,
            messages=[USER],
            max_tokens=6,
            dialect="prefix",
            retry=fast_retry(),
            max_rounds=100,
            stream=True,
        )
        _, text = await acollect(stream)
    assert text == TARGET
    paths = [r["path"] for r in emu.requests(model)]
    assert paths[0] == "/deepseek/v1/chat/completions"
    assert all(p == "/deepseek/beta/chat/completions" for p in paths[1:])


@pytest.mark.parametrize("persona", ["vllm", "sglang", "llamacpp"])
def test_continue_final_message_flags(emu: Emulator, sync_client: Any, persona: str) -> None:
    model = add(emu)
    client = sync_client(persona)
    result = autocontinue.create(
        client,
        model=model,
        messages=[USER],
        max_tokens=6,
        dialect="continue_final_message",
        retry=fast_retry(),
        max_rounds=100,
        extra_body={"top_k": 5},
    )
    assert result.choices[0].message.content == TARGET
    requests = emu.requests(model)
    assert requests[0]["body"]["top_k"] == 5
    assert "continue_final_message" not in requests[0]["body"]
    for request in requests[1:]:
        body = request["body"]
        assert body["continue_final_message"] is True
        assert body["add_generation_prompt"] is False
        assert body["top_k"] == 5  # the caller's extra_body survives
        assert body["messages"][-1]["role"] == "assistant"


@pytest.mark.parametrize("mode", ["sync", "stream"])
def test_anthropic_never_gets_trailing_whitespace(emu: Emulator, sync_client: Any, mode: str) -> None:
    model = add(emu, SPACY)
    client = sync_client("anthropic")
    kwargs: dict[str, Any] = dict(
        model=model, messages=[USER], max_tokens=4, dialect="prefill", retry=fast_retry(), max_rounds=200
    )
    if mode == "stream":
        _, text = collect(autocontinue.create(client, stream=True, **kwargs))
    else:
        text = autocontinue.create(client, **kwargs).choices[0].message.content
    assert text == SPACY
    requests = emu.requests(model)
    assert len(requests) > 5
    for request in requests[1:]:
        prefix = request["body"]["messages"][-1]["content"]
        assert prefix == prefix.rstrip(), repr(prefix[-10:])
    assert not any("error" in r for r in requests)


@pytest.mark.parametrize("persona", ["dashscope", "kimi"])
def test_partial_flag(emu: Emulator, sync_client: Any, persona: str) -> None:
    model = add(emu)
    client = sync_client(persona)
    result = autocontinue.create(
        client, model=model, messages=[USER], max_tokens=7, dialect="partial", retry=fast_retry(), max_rounds=100
    )
    assert result.choices[0].message.content == TARGET
    for request in emu.requests(model)[1:]:
        last = request["body"]["messages"][-1]
        assert last["role"] == "assistant"
        assert last["partial"] is True
        assert "prefix" not in last


@pytest.mark.parametrize("stream", [False, True])
def test_kimi_name_survives(emu: Emulator, sync_client: Any, stream: bool) -> None:
    model = add(emu)
    client = sync_client("kimi")
    messages = [
        {"role": "system", "content": "You are Kal'tsit."},
        USER,
        {"role": "assistant", "name": "Kal'tsit", "content": "", "partial": True},
    ]
    kwargs: dict[str, Any] = dict(
        model=model, messages=messages, max_tokens=7, dialect="partial", retry=fast_retry(), max_rounds=100
    )
    if stream:
        _, text = collect(autocontinue.create(client, stream=True, **kwargs))
    else:
        text = autocontinue.create(client, **kwargs).choices[0].message.content
    assert text == TARGET
    requests = emu.requests(model)
    assert len(requests) > 2
    for request in requests:
        last = request["body"]["messages"][-1]
        assert last["role"] == "assistant"
        assert last["name"] == "Kal'tsit"
        assert last["partial"] is True
        assert request["body"]["messages"][:2] == messages[:2]


# ------------------------------------------------------------------------------------------------------------
# dialect="auto" on an unknown (loopback) host, and the instruction dialect


@pytest.mark.parametrize("persona", ["openai", "claude46"])
@pytest.mark.parametrize("mode", ["sync", "stream"])
def test_auto_falls_back_to_instruction(emu: Emulator, sync_client: Any, persona: str, mode: str) -> None:
    model = add(emu)
    client = sync_client(persona)
    kwargs: dict[str, Any] = dict(model=model, messages=[USER], max_tokens=8, retry=fast_retry(), max_rounds=100)
    if mode == "stream":
        stream = autocontinue.create(client, stream=True, **kwargs)
        _, text = collect(stream)
        trace = stream.continuation
    else:
        result = autocontinue.create(client, **kwargs)
        text, trace = result.choices[0].message.content, result.continuation
    assert text == TARGET
    assert trace.fallbacks == ["prefill->instruction"]
    assert trace.dialect == "instruction"
    assert trace.stop_cause == "natural"
    modes = [r.get("mode") for r in emu.requests(model)]
    assert modes[0] == "first"
    assert modes[-1] == "instruction"


async def test_auto_falls_back_to_instruction_async(emu: Emulator, async_client: Any) -> None:
    model = add(emu)
    client = async_client("claude46")
    result = await autocontinue.acreate(
        client, model=model, messages=[USER], max_tokens=8, retry=fast_retry(), max_rounds=100
    )
    assert result.choices[0].message.content == TARGET
    assert result.continuation.fallbacks == ["prefill->instruction"]


@pytest.mark.parametrize("overlap", [8, 12, 30])
@pytest.mark.parametrize("persona", ["openai", "claude46"])
@pytest.mark.parametrize("stream", [False, True])
def test_instruction_removes_repeated_tail(
    emu: Emulator, sync_client: Any, overlap: int, persona: str, stream: bool
) -> None:
    model = add(emu, overlap=overlap)
    client = sync_client(persona)
    kwargs: dict[str, Any] = dict(
        model=model, messages=[USER], max_tokens=20, dialect="instruction", retry=fast_retry(), max_rounds=100
    )
    if stream:
        s = autocontinue.create(client, stream=True, **kwargs)
        _, text = collect(s)
        trace = s.continuation
    else:
        result = autocontinue.create(client, **kwargs)
        text, trace = result.choices[0].message.content, result.continuation
    assert text == TARGET
    assert trace.stop_cause == "natural"
    assert any(any(a.startswith("overlap_removed:") for a in r.seam) for r in trace.rounds[1:])
    for request in emu.requests(model)[1:]:
        messages = request["body"]["messages"]
        assert [m["role"] for m in messages[-2:]] == ["assistant", "user"]


# ------------------------------------------------------------------------------------------------------------
# The caller's own assistant prefix


@pytest.mark.parametrize(
    ("persona", "dialect"),
    [
        ("dashscope", "partial"),
        ("mistral", "prefix"),
        ("anthropic", "prefill"),
        ("vllm", "continue_final_message"),
        ("llamacpp", "prefill"),
    ],
)
@pytest.mark.parametrize("cut", [40, 44])  # 44: the prefix ends in a space
@pytest.mark.parametrize("stream", [False, True])
def test_caller_prefix(emu: Emulator, sync_client: Any, persona: str, dialect: str, cut: int, stream: bool) -> None:
    model = add(emu)
    client = sync_client(persona)
    prefix = TARGET[:cut]
    messages = [USER, {"role": "assistant", "content": prefix}]
    kwargs: dict[str, Any] = dict(
        model=model, messages=messages, max_tokens=6, dialect=dialect, retry=fast_retry(), max_rounds=100
    )
    if stream:
        s = autocontinue.create(client, stream=True, **kwargs)
        _, text = collect(s)
    else:
        text = autocontinue.create(client, **kwargs).choices[0].message.content
    assert text == TARGET[cut:]
    first = emu.requests(model)[0]
    assert first["mode"] == "prefill"
    assert not any("error" in r for r in emu.requests(model))


async def test_caller_prefix_async(emu: Emulator, async_client: Any) -> None:
    model = add(emu)
    client = async_client("deepseek")
    messages = [USER, {"role": "assistant", "content": TARGET[:30]}]
    result = await autocontinue.acreate(
        client, model=model, messages=messages, max_tokens=6, dialect="prefix", retry=fast_retry(), max_rounds=100
    )
    assert result.choices[0].message.content == TARGET[30:]
    # The caller's prefix needs DeepSeek's beta endpoint from the first request on.
    assert all(r["path"] == "/deepseek/beta/chat/completions" for r in emu.requests(model))
