"""The SDK's raw-response ways in, continued: ``with_raw_response``, ``with_streaming_response`` and ``client.post``.

Each runs on a wrapped client and under the decorator, through the real SDK over HTTP to the emulator. A continued
call returns the SDK's own response type; ``.parse()`` gives the joined completion (or the parsed result, or the
continued stream), and the HTTP parts are the last round's: the emulator numbers its replies (``x-request-id:
req-<n>``), so ``request_id`` must name the last request the server received.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pydantic
import pytest
from openai._legacy_response import LegacyAPIResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import autocontinue
from tests.support.common import API_KEY, TARGET, USER, acollect, add, collect
from tests.support.emulator import Emulator

PERSONA = "openrouter"
LIMIT = 6
RAW = {"X-Stainless-Raw-Response": "true"}  # what litellm puts on its client.post("/chat/completions", ...)
session_loop = pytest.mark.asyncio(loop_scope="session")
HOW = pytest.mark.parametrize("how", ["wrap", "decorator"])


@contextmanager
def continuing(how: str, client: Any) -> Iterator[Any]:
    """``client`` continued the ``how`` way: wrapped, or used inside a decorator scope."""
    if how == "wrap":
        yield autocontinue.wrap(client, max_rounds=30)
    else:
        with autocontinue.enabled(max_rounds=30):
            yield client


def request(model: str, **kwargs: Any) -> dict[str, Any]:
    return {"model": model, "messages": [USER], "max_tokens": LIMIT, **kwargs}


def assert_last_round(response: Any, emu: Emulator, model: str) -> None:
    """The response's HTTP parts are those of the last request the server received."""
    rounds = len(emu.requests(model))
    assert rounds > 1
    assert response.request_id == f"req-{rounds}"
    assert response.headers["x-request-id"] == f"req-{rounds}"
    assert response.http_response.status_code == 200


def assert_joined(completion: Any, emu: Emulator, model: str) -> None:
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == TARGET
    assert completion.choices[0].finish_reason == "stop"
    assert len(completion.continuation.rounds) == len(emu.requests(model))


# ------------------------------------------------------------------------------------------------------------------
# Sync


@HOW
def test_with_raw_response_create(how: str, emu: Emulator, sync_client: Any) -> None:
    model = add(emu)
    with continuing(how, sync_client(PERSONA)) as client:
        raw = client.chat.completions.with_raw_response.create(**request(model))
    assert isinstance(raw, LegacyAPIResponse)
    assert_joined(raw.parse(), emu, model)
    assert raw.parse() is raw.parse()
    assert_last_round(raw, emu, model)


@HOW
def test_with_raw_response_create_streaming(how: str, emu: Emulator, sync_client: Any) -> None:
    model = add(emu)
    with continuing(how, sync_client(PERSONA)) as client:
        raw = client.chat.completions.with_raw_response.create(**request(model, stream=True))
        assert raw.request_id == "req-1"  # the round being read when the call returns
        chunks, text = collect(raw.parse())
    assert isinstance(raw, LegacyAPIResponse)
    assert text == TARGET
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert_last_round(raw, emu, model)


@HOW
def test_with_streaming_response_create(how: str, emu: Emulator, sync_client: Any) -> None:
    model, streamed = add(emu), add(emu)
    with continuing(how, sync_client(PERSONA)) as client:
        with client.chat.completions.with_streaming_response.create(**request(model)) as response:
            assert isinstance(response, openai.APIResponse)
            assert_joined(response.parse(), emu, model)
            assert_last_round(response, emu, model)
        with client.chat.completions.with_streaming_response.create(**request(streamed, stream=True)) as response:
            _, text = collect(response.parse())
            assert text == TARGET
            assert_last_round(response, emu, streamed)


class Story(pydantic.BaseModel):
    title: str
    words: list[str]


STORY = '{"title": "The fox", "words": ["quick", "brown", "lazy", "dog"]}'


@HOW
def test_with_raw_response_parse(how: str, emu: Emulator, sync_client: Any) -> None:
    """langchain-openai's with_structured_output: chat.completions.with_raw_response.parse(response_format=...)."""
    model = add(emu, STORY)
    with continuing(how, sync_client(PERSONA)) as client:
        raw = client.chat.completions.with_raw_response.parse(**request(model, response_format=Story))
    parsed = raw.parse()
    assert parsed.choices[0].message.parsed == Story.model_validate_json(STORY)
    assert len(autocontinue.trace_of(parsed).rounds) == len(emu.requests(model)) > 1
    assert_last_round(raw, emu, model)


@HOW
def test_client_post_as_litellm_sends_it(how: str, emu: Emulator, sync_client: Any) -> None:
    model, streamed = add(emu), add(emu)
    with continuing(how, sync_client(PERSONA)) as client:
        raw = client.post(
            "/chat/completions", body=request(model), cast_to=ChatCompletion, options={"headers": RAW}, stream=False
        )
        assert_joined(raw.parse(), emu, model)
        assert_last_round(raw, emu, model)
        raw = client.post(
            "/chat/completions",
            body=request(streamed, stream=True),
            cast_to=ChatCompletion,
            options={"headers": RAW},
            stream=True,
            stream_cls=openai.Stream[ChatCompletionChunk],
        )
        _, text = collect(raw.parse())
    assert text == TARGET
    assert_last_round(raw, emu, streamed)


def test_outside_a_scope_raw_calls_are_the_sdks(emu: Emulator, sync_client: Any) -> None:
    autocontinue.enabled()  # the hook is installed
    client = sync_client(PERSONA)
    model = add(emu)
    raw = client.chat.completions.with_raw_response.create(**request(model))
    assert type(raw) is LegacyAPIResponse
    assert raw.parse().choices[0].finish_reason == "length"
    assert raw.request_id == "req-1"
    assert len(emu.requests(model)) == 1


def test_other_requests_pass_through(emu: Emulator, sync_client: Any) -> None:
    """Only /chat/completions is continued: any other path reaches the server as it was sent."""
    model = add(emu)
    with continuing("decorator", sync_client(PERSONA)) as client, pytest.raises(openai.NotFoundError):
        client.post("/no/such/path", body=request(model), cast_to=ChatCompletion)
    assert emu.requests(model) == []


# ------------------------------------------------------------------------------------------------------------------
# Async


@HOW
@session_loop
async def test_async_with_raw_response(how: str, emu: Emulator, async_client: Any) -> None:
    model, streamed = add(emu), add(emu)
    with continuing(how, async_client(PERSONA)) as client:
        raw = await client.chat.completions.with_raw_response.create(**request(model))
        assert isinstance(raw, LegacyAPIResponse)
        assert_joined(raw.parse(), emu, model)
        assert_last_round(raw, emu, model)
        raw = await client.chat.completions.with_raw_response.create(**request(streamed, stream=True))
        _, text = await acollect(raw.parse())
    assert text == TARGET
    assert_last_round(raw, emu, streamed)


@HOW
@session_loop
async def test_async_with_streaming_response(how: str, emu: Emulator, async_client: Any) -> None:
    model, streamed = add(emu), add(emu)
    with continuing(how, async_client(PERSONA)) as client:
        async with client.chat.completions.with_streaming_response.create(**request(model)) as response:
            assert isinstance(response, openai.AsyncAPIResponse)
            assert_joined(await response.parse(), emu, model)
            assert_last_round(response, emu, model)
        async with client.chat.completions.with_streaming_response.create(**request(streamed, stream=True)) as resp:
            _, text = await acollect(await resp.parse())
    assert text == TARGET
    assert_last_round(resp, emu, streamed)


@HOW
@session_loop
async def test_async_post_and_raw_parse(how: str, emu: Emulator, async_client: Any) -> None:
    model, story = add(emu), add(emu, STORY)
    with continuing(how, async_client(PERSONA)) as client:
        raw = await client.post(
            "/chat/completions", body=request(model), cast_to=ChatCompletion, options={"headers": RAW}
        )
        assert_joined(raw.parse(), emu, model)
        raw = await client.chat.completions.with_raw_response.parse(**request(story, response_format=Story))
    assert raw.parse().choices[0].message.parsed == Story.model_validate_json(STORY)
    assert_last_round(raw, emu, story)


def test_async_entry_points_are_coroutine_functions() -> None:
    """Frameworks (instructor) tell an async client from a sync one with inspect.iscoroutinefunction."""
    client = autocontinue.wrap(openai.AsyncOpenAI(api_key=API_KEY, base_url="http://127.0.0.1:9/v1"))
    for completions in (client.chat.completions, client.beta.chat.completions):
        for method in (completions.create, completions.parse, completions.with_raw_response.create):
            assert inspect.iscoroutinefunction(method)
    sync = autocontinue.wrap(openai.OpenAI(api_key=API_KEY, base_url="http://127.0.0.1:9/v1"))
    assert not inspect.iscoroutinefunction(sync.chat.completions.create)


# ------------------------------------------------------------------------------------------------------------------
# Import order


def test_methods_captured_before_the_first_scope_are_continued(emu: Emulator) -> None:
    """In a fresh interpreter (no scope was ever made): bound methods and a raw-response wrapper captured before the
    first scope, as frameworks keep them, are continued inside a scope made afterwards."""
    models = [add(emu) for _ in range(3)]
    script = textwrap.dedent(
        f"""
        import json, openai
        client = openai.OpenAI(base_url={emu.base_url(PERSONA)!r}, api_key="k")
        create, raw_create = client.chat.completions.create, client.chat.completions.with_raw_response.create
        post = client.post
        import autocontinue
        ask = dict(messages=[{{"role": "user", "content": "hi"}}], max_tokens={LIMIT})

        @autocontinue.autocontinue(max_rounds=30)
        def run(models):
            a = create(model=models[0], **ask)
            b = raw_create(model=models[1], **ask).parse()
            c = post("/chat/completions", body=dict(model=models[2], **ask), cast_to=openai.types.chat.ChatCompletion)
            return [r.choices[0].message.content for r in (a, b, c)]

        print(json.dumps(run({models!r})))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == [TARGET] * 3
    assert all(len(emu.requests(model)) > 1 for model in models)
