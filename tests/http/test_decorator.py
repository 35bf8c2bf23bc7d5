"""The decorator and ``enabled()``: which calls a scope continues, through the real SDK over HTTP to the emulator.

A scope is a context (``contextvars``), so the tests check its edges as much as its inside: a call outside is the
SDK's own (one request, finish_reason "length"), a thread gets the scope only with a copied context, a concurrent
task outside a scope is untouched, generators are in scope only while their body runs, and nothing is continued
twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pydantic
import pytest

import autocontinue
from autocontinue.decorator import active_settings
from tests.support.common import API_KEY, TARGET, USER, acollect, add, collect, register_route
from tests.support.emulator import Emulator

PERSONA = "openrouter"  # a plain prefill: what dialect="auto" picks for an unknown (loopback) host
LIMIT = 6  # max_tokens per round: TARGET needs many rounds
#: async tests share the session loop with the async_client fixture (which closes its clients on that loop)
session_loop = pytest.mark.asyncio(loop_scope="session")


def ask(client: Any, model: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=[USER], max_tokens=LIMIT, **kwargs)


def assert_continued(reply: Any, emu: Emulator, model: str) -> None:
    assert reply.choices[0].message.content == TARGET
    assert reply.choices[0].finish_reason == "stop"
    assert len(emu.requests(model)) > 1


def assert_plain(reply: Any, emu: Emulator, model: str) -> None:
    """The SDK's own call: one request, cut by the limit, not continued."""
    assert reply.choices[0].finish_reason == "length"
    assert len(emu.requests(model)) == 1
    assert not hasattr(reply, "continuation")


# ------------------------------------------------------------------------------------------------------------------
# The forms of the decorator


def test_sync_function(emu: Emulator, sync_client: Any) -> None:
    client = sync_client(PERSONA)
    model = add(emu)

    @autocontinue.autocontinue(max_rounds=30)
    def summarize() -> Any:
        return ask(client, model)

    reply = summarize()
    assert_continued(reply, emu, model)
    assert reply.continuation.stop_cause == "natural"
    assert active_settings() is None  # the scope ended with the function


def test_bare_form_uses_defaults(emu: Emulator, sync_client: Any) -> None:
    client = sync_client(PERSONA)
    model = add(emu)

    @autocontinue.autocontinue
    def summarize(text: str) -> Any:
        """Docstring kept."""
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=LIMIT
        )

    assert summarize.__name__ == "summarize"
    assert summarize.__doc__ == "Docstring kept."
    reply = summarize("Tell me the story.")
    # The default max_rounds (10) stops this answer before its end: proof that the defaults, not others, apply.
    assert reply.continuation.stop_cause == "max_rounds"
    assert len(emu.requests(model)) == autocontinue.client.DEFAULT_MAX_ROUNDS
    assert TARGET.startswith(reply.choices[0].message.content)


@session_loop
async def test_async_function(emu: Emulator, async_client: Any) -> None:
    client = async_client(PERSONA)
    model = add(emu)

    @autocontinue.autocontinue(max_rounds=30)
    async def summarize() -> Any:
        return await ask(client, model)

    assert inspect.iscoroutinefunction(summarize)  # frameworks that look before they call see an async function
    reply = await summarize()
    assert_continued(reply, emu, model)
    # Outside the coroutine the scope is gone again.
    other = add(emu)
    assert_plain(await ask(client, other), emu, other)


def test_sync_generator(emu: Emulator, sync_client: Any) -> None:
    """The scope is active while the generator's body runs, not while the caller's code runs between items."""
    client = sync_client(PERSONA)
    inside = [add(emu), add(emu)]

    @autocontinue.autocontinue(max_rounds=30)
    def replies() -> Iterator[Any]:
        received = yield ask(client, inside[0])
        assert received == "sent in"
        yield ask(client, inside[1])

    assert inspect.isgeneratorfunction(replies)
    gen = replies()
    assert_continued(next(gen), emu, inside[0])
    between = add(emu)
    assert_plain(ask(client, between), emu, between)  # the caller's call between two items
    assert_continued(gen.send("sent in"), emu, inside[1])
    with pytest.raises(StopIteration):
        next(gen)


def test_sync_generator_throw_and_close_run_in_scope(emu: Emulator, sync_client: Any) -> None:
    client = sync_client(PERSONA)
    models = [add(emu), add(emu)]
    seen: list[Any] = []

    @autocontinue.autocontinue(max_rounds=30)
    def replies() -> Iterator[int]:
        try:
            yield 1
        except KeyError:
            seen.append(ask(client, models[0]))  # handling a thrown-in error is the body's code too
        try:
            yield 2
        finally:
            seen.append(ask(client, models[1]))  # and so is clean-up on close()

    gen = replies()
    assert next(gen) == 1
    assert gen.throw(KeyError("x")) == 2
    gen.close()
    for reply, model in zip(seen, models, strict=True):
        assert_continued(reply, emu, model)
    assert active_settings() is None


@session_loop
async def test_async_generator(emu: Emulator, async_client: Any) -> None:
    client = async_client(PERSONA)
    inside = [add(emu), add(emu)]

    @autocontinue.autocontinue(max_rounds=30)
    async def replies() -> AsyncIterator[Any]:
        received = yield await ask(client, inside[0])
        assert received == "sent in"
        yield await ask(client, inside[1])

    assert inspect.isasyncgenfunction(replies)
    gen = replies()
    assert_continued(await gen.__anext__(), emu, inside[0])
    between = add(emu)
    assert_plain(await ask(client, between), emu, between)
    assert_continued(await gen.asend("sent in"), emu, inside[1])
    with pytest.raises(StopAsyncIteration):
        await gen.__anext__()


@session_loop
async def test_async_generator_in_async_for(emu: Emulator, async_client: Any) -> None:
    client = async_client(PERSONA)
    models = [add(emu) for _ in range(3)]

    @autocontinue.autocontinue(max_rounds=30)
    async def replies() -> AsyncIterator[Any]:
        for model in models:
            yield await ask(client, model)

    results = [reply async for reply in replies()]
    for reply, model in zip(results, models, strict=True):
        assert_continued(reply, emu, model)


def test_enabled_context_manager(emu: Emulator, sync_client: Any) -> None:
    client = sync_client(PERSONA)
    model = add(emu)
    with autocontinue.enabled(max_rounds=30):
        reply = ask(client, model)
    assert_continued(reply, emu, model)
    after = add(emu)
    assert_plain(ask(client, after), emu, after)


@session_loop
async def test_enabled_async_context_manager(emu: Emulator, async_client: Any) -> None:
    client = async_client(PERSONA)
    model = add(emu)
    async with autocontinue.enabled(max_rounds=30):
        reply = await ask(client, model)
    assert_continued(reply, emu, model)
    after = add(emu)
    assert_plain(await ask(client, after), emu, after)


def test_enabled_scope_can_decorate_and_be_shared(emu: Emulator, sync_client: Any) -> None:
    """One Scope object, entered by several threads at once and used as a decorator."""
    client = sync_client(PERSONA)
    scope = autocontinue.enabled(max_rounds=30)
    models = [add(emu) for _ in range(4)]
    results: dict[str, Any] = {}

    def work(model: str) -> None:
        with scope:
            results[model] = ask(client, model)

    threads = [threading.Thread(target=work, args=(m,)) for m in models[:3]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results[models[3]] = scope(lambda: ask(client, models[3]))()
    for model in models:
        assert_continued(results[model], emu, model)


def test_exception_ends_the_scope(emu: Emulator, sync_client: Any) -> None:
    @autocontinue.autocontinue
    def fails() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fails()
    with pytest.raises(RuntimeError), autocontinue.enabled():
        raise RuntimeError("boom")
    assert active_settings() is None
    client = sync_client(PERSONA)
    model = add(emu)
    assert_plain(ask(client, model), emu, model)


# ------------------------------------------------------------------------------------------------------------------
# Edges of a scope


def test_outside_a_scope_the_sdk_is_untouched(emu: Emulator, sync_client: Any) -> None:
    autocontinue.enabled()  # makes sure the patch is installed
    client = sync_client(PERSONA)
    model = add(emu)
    reply = ask(client, model)
    assert_plain(reply, emu, model)
    assert type(reply) is openai.types.chat.ChatCompletion


def test_threads_need_a_copied_context(emu: Emulator, sync_client: Any) -> None:
    client = sync_client(PERSONA)
    copied, plain = add(emu), add(emu)
    results: dict[str, Any] = {}

    def call(model: str) -> None:
        results[model] = ask(client, model)

    @autocontinue.autocontinue(max_rounds=30)
    def start_threads() -> None:
        context = contextvars.copy_context()
        threads = [
            threading.Thread(target=context.run, args=(call, copied)),
            threading.Thread(target=call, args=(plain,)),  # a new thread starts with an empty context
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    start_threads()
    assert_continued(results[copied], emu, copied)
    assert_plain(results[plain], emu, plain)


@session_loop
async def test_concurrent_tasks_inside_and_outside(emu: Emulator, async_client: Any) -> None:
    client = async_client(PERSONA)
    inside = add(emu, token_delay=0.002)
    outside = add(emu, token_delay=0.002)

    @autocontinue.autocontinue(max_rounds=30)
    async def scoped() -> Any:
        # A task started here copies the context: it is in the scope too.
        return await asyncio.create_task(ask(client, inside))

    async def unscoped() -> Any:
        await asyncio.sleep(0.005)  # starts while the scoped task is mid-way
        return await ask(client, outside)

    a, b = await asyncio.gather(scoped(), unscoped())
    assert_continued(a, emu, inside)
    assert_plain(b, emu, outside)


def test_nested_scopes_use_the_innermost_options(emu: Emulator, sync_client: Any) -> None:
    client = sync_client(PERSONA)
    outer_model, inner_model, again = add(emu), add(emu), add(emu)

    @autocontinue.autocontinue(max_rounds=2)
    def inner() -> Any:
        return ask(client, inner_model)

    @autocontinue.autocontinue(max_rounds=30)
    def outer() -> tuple[Any, Any, Any]:
        first = ask(client, outer_model)
        nested = inner()
        return first, nested, ask(client, again)  # the outer options are back after the inner scope

    first, nested, last = outer()
    assert_continued(first, emu, outer_model)
    assert nested.continuation.stop_cause == "max_rounds"
    assert len(emu.requests(inner_model)) == 2
    assert_continued(last, emu, again)


def test_wrapped_client_inside_a_scope_is_continued_once(emu: Emulator, sync_client: Any) -> None:
    """wrap()'s rounds call the SDK's captured originals: the scope's patch never sees them."""
    client = sync_client(PERSONA)
    wrapped = autocontinue.wrap(client, max_rounds=30)
    alone, scoped = add(emu), add(emu)
    baseline = wrapped.chat.completions.create(model=alone, messages=[USER], max_tokens=LIMIT)
    with autocontinue.enabled(max_rounds=3):  # would stop after 3 rounds if it took over
        reply = wrapped.chat.completions.create(model=scoped, messages=[USER], max_tokens=LIMIT)
    assert reply.choices[0].message.content == baseline.choices[0].message.content == TARGET
    assert len(emu.requests(scoped)) == len(emu.requests(alone)) == len(reply.continuation.rounds)
    modes = [r["mode"] for r in emu.requests(scoped)]
    assert modes == ["first"] + ["prefill"] * (len(modes) - 1)


def test_streaming_inside_a_scope(emu: Emulator, sync_client: Any) -> None:
    client = sync_client(PERSONA)
    model = add(emu)
    with autocontinue.enabled(max_rounds=30):
        stream = ask(client, model, stream=True)
    # The stream was created in the scope: its rounds are continued wherever it is read.
    chunks, text = collect(stream)
    assert text == TARGET
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(emu.requests(model)) > 1


@session_loop
async def test_async_streaming_inside_a_scope(emu: Emulator, async_client: Any) -> None:
    client = async_client(PERSONA)
    model = add(emu)

    @autocontinue.autocontinue(max_rounds=30)
    async def read() -> tuple[list[Any], str]:
        return await acollect(await ask(client, model, stream=True))

    chunks, text = await read()
    assert text == TARGET
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_azure_client_inside_a_scope(emu: Emulator) -> None:
    register_route("/azure-decorator/openai/deployments/dep/chat/completions", PERSONA)
    client = openai.AzureOpenAI(
        azure_endpoint=emu.url + "/azure-decorator", azure_deployment="dep", api_version="2024-10-21", api_key=API_KEY
    )
    model = add(emu)
    try:
        with autocontinue.enabled(max_rounds=30):
            reply = ask(client, model)
        assert_continued(reply, emu, model)
    finally:
        client.close()


class Story(pydantic.BaseModel):
    title: str
    words: list[str]


STORY = '{"title": "The fox", "words": ["quick", "brown", "lazy", "dog"]}'


def test_parse_inside_a_scope(emu: Emulator, sync_client: Any) -> None:
    client = sync_client(PERSONA)
    model = add(emu, STORY)
    with autocontinue.enabled(max_rounds=30):
        parsed = client.chat.completions.parse(model=model, messages=[USER], max_tokens=4, response_format=Story)
    assert parsed.choices[0].message.parsed == Story.model_validate_json(STORY)
    assert len(emu.requests(model)) > 1
    assert autocontinue.trace_of(parsed).stop_cause == "natural"


@session_loop
async def test_async_parse_inside_a_scope(emu: Emulator, async_client: Any) -> None:
    client = async_client(PERSONA)
    model = add(emu, STORY)
    async with autocontinue.enabled(max_rounds=30):
        parsed = await client.chat.completions.parse(model=model, messages=[USER], max_tokens=4, response_format=Story)
    assert parsed.choices[0].message.parsed == Story.model_validate_json(STORY)


def test_a_create_captured_before_the_first_scope_is_continued(emu: Emulator, sync_client: Any) -> None:
    """Frameworks keep bound methods (instructor keeps ``create``): the hook is at the request layer, looked up at
    call time, so a method captured before any scope existed is still continued inside one."""
    client = sync_client(PERSONA)
    captured = client.chat.completions.create
    model = add(emu)
    with autocontinue.enabled(max_rounds=30):
        assert_continued(captured(model=model, messages=[USER], max_tokens=LIMIT), emu, model)
    assert_plain(captured(model=(other := add(emu)), messages=[USER], max_tokens=LIMIT), emu, other)


def test_stream_helper_is_passed_through(emu: Emulator, sync_client: Any) -> None:
    """chat.completions.stream() reads the raw stream's HTTP response: a scope leaves it to the SDK, which reports
    the cut reply as it always does (LengthFinishReasonError)."""
    client = sync_client(PERSONA)
    model = add(emu)
    with (
        autocontinue.enabled(max_rounds=30),
        pytest.raises(openai.LengthFinishReasonError),
        client.chat.completions.stream(model=model, messages=[USER], max_tokens=LIMIT) as stream,
    ):
        stream.get_final_completion()
    assert len(emu.requests(model)) == 1


def test_bad_options_fail_at_decoration_time() -> None:
    with pytest.raises(autocontinue.ConfigurationError):
        autocontinue.autocontinue(max_rounds=0)
    with pytest.raises(autocontinue.ConfigurationError):
        autocontinue.autocontinue(max_round=3)  # a typo
    with pytest.raises(autocontinue.ConfigurationError):
        autocontinue.autocontinue(dialect="no-such-dialect")
    with pytest.raises(autocontinue.ConfigurationError):
        autocontinue.enabled(stop_when="max_rounds")
    with pytest.raises(autocontinue.ConfigurationError):
        autocontinue.autocontinue(42)  # type: ignore[call-overload]
