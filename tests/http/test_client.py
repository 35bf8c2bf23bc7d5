"""The SDK-shaped surface over real HTTP: wrap() for every client type, create()/acreate(), budgets, input checks
that send nothing, the caller's objects left alone, and what gets logged.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import openai
import pytest
import tenacity
from tenacity import stop_after_attempt, wait_fixed

import autocontinue
from autocontinue._progress import LOOP_FLOOR, MAX_GROWTHS, loops, repeat_removed
from autocontinue.dialects import Partial
from tests.support.common import (
    API_KEY,
    PERSONA_DIALECT,
    TARGET,
    USER,
    acollect,
    add,
    collect,
    fast_retry,
    register_route,
    usage_dict,
)
from tests.support.emulator import Emulator, Fault


def _cached(usage: Any) -> int:
    details = usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details is not None else 0


def _text_and_trace(result: Any) -> tuple[str, Any, str | None]:
    """(text, trace, finish_reason) of a completion or an exhausted stream."""
    if isinstance(result, openai.types.chat.ChatCompletion):
        return result.choices[0].message.content, result.continuation, result.choices[0].finish_reason
    chunks, text = collect(result)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, result.continuation, finishes[-1] if finishes else None


# ------------------------------------------------------------------------------------------------------------
# The result and wrap()


def test_result_is_a_chat_completion(emu: Emulator, sync_client: Any) -> None:
    model = add(emu)
    result = autocontinue.create(
        sync_client("dashscope"), model=model, messages=[USER], max_tokens=8, dialect="partial", max_rounds=50
    )
    assert isinstance(result, openai.types.chat.ChatCompletion)
    assert isinstance(result, autocontinue.result.ContinuedChatCompletion)
    assert result.choices[0].message.content == TARGET
    assert result.choices[0].message.role == "assistant"
    assert result.object == "chat.completion"
    assert result.continuation.continued
    assert autocontinue.trace_of(result) is result.continuation
    # The trace is not a model field: it does not leak into serialisation.
    assert "continuation" not in result.model_dump()
    openai.types.chat.ChatCompletion.model_validate(result.model_dump())


def test_wrap_openai(emu: Emulator, sync_client: Any) -> None:
    model = add(emu)
    raw = sync_client("mistral")
    client = autocontinue.wrap(raw, dialect="prefix", max_rounds=50, retry=fast_retry())
    result = client.chat.completions.create(model=model, messages=[USER], max_tokens=8)
    assert result.choices[0].message.content == TARGET
    assert result.continuation.continued
    # Everything else passes through.
    assert client.api_key == API_KEY
    assert client.models is raw.models
    assert client.base_url == raw.base_url
    assert client.embeddings is raw.embeddings
    assert "autocontinue.wrap" in repr(client)
    # with_options keeps continuing, with the new options applied.
    faster = client.with_options(timeout=5)
    assert faster.timeout == 5
    again = faster.chat.completions.create(model=add(emu), messages=[USER], max_tokens=8)
    assert again.choices[0].message.content == TARGET
    assert again.continuation.continued


def test_wrapped_client_is_still_an_openai_client(emu: Emulator, sync_client: Any) -> None:
    """The README calls a wrapped client a drop-in: code that checks the client's type must keep working."""
    client = autocontinue.wrap(sync_client("dashscope"), dialect="partial")
    assert isinstance(client, openai.OpenAI)


async def test_wrap_async_openai(emu: Emulator, async_client: Any) -> None:
    model = add(emu)
    raw = async_client("dashscope")
    client = autocontinue.wrap(raw, dialect="partial", max_rounds=50, retry=fast_retry())
    result = await client.chat.completions.create(model=model, messages=[USER], max_tokens=8)
    assert result.choices[0].message.content == TARGET
    assert result.continuation.continued
    assert client.models is raw.models
    stream = await client.with_options(timeout=5).chat.completions.create(
        model=add(emu), messages=[USER], max_tokens=8, stream=True
    )
    _, text = await acollect(stream)
    assert text == TARGET


def _azure_routes(emu: Emulator, model: str, persona: str, prefix: str) -> None:
    # AzureOpenAI builds {azure_endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...
    register_route(f"/{prefix}/openai/deployments/{model}/chat/completions", persona)


def test_wrap_azure(emu: Emulator) -> None:
    model = add(emu)
    _azure_routes(emu, model, "openrouter", "azure")
    raw = openai.AzureOpenAI(azure_endpoint=emu.url + "/azure", api_key=API_KEY, api_version="2024-10-21")
    with raw:
        client = autocontinue.wrap(raw, max_rounds=50, retry=fast_retry())
        result = client.chat.completions.create(model=model, messages=[USER], max_tokens=8)
        assert result.choices[0].message.content == TARGET
        assert result.continuation.continued
        second = add(emu)
        _azure_routes(emu, second, "openrouter", "azure")
        _, text = collect(client.chat.completions.create(model=second, messages=[USER], max_tokens=8, stream=True))
        assert text == TARGET
    requests = emu.requests(model)
    assert all(r["path"] == f"/azure/openai/deployments/{model}/chat/completions" for r in requests)
    assert all(r["headers"].get("api-key") == API_KEY for r in requests)


async def test_wrap_async_azure_with_deployment(emu: Emulator) -> None:
    model = add(emu)
    _azure_routes(emu, model, "dashscope", "aazure")
    raw = openai.AsyncAzureOpenAI(
        azure_endpoint=emu.url + "/aazure", azure_deployment=model, api_key=API_KEY, api_version="2024-10-21"
    )
    async with raw:
        client = autocontinue.wrap(raw, dialect="partial", max_rounds=50, retry=fast_retry())
        stream = await client.chat.completions.create(model=model, messages=[USER], max_tokens=8, stream=True)
        _, text = await acollect(stream)
        assert text == TARGET
        result = await autocontinue.acreate(raw, model=model, messages=[USER], max_tokens=8, dialect="partial")
        assert result.choices[0].message.content == TARGET
    assert len(emu.requests(model)) > 4


def test_create_function(emu: Emulator, sync_client: Any) -> None:
    model = add(emu)
    result = autocontinue.create(
        sync_client("vllm"), model=model, messages=[USER], max_tokens=8, dialect="continue_final_message", max_rounds=50
    )
    assert result.choices[0].message.content == TARGET


async def test_acreate_function(emu: Emulator, async_client: Any) -> None:
    model = add(emu)
    result = await autocontinue.acreate(
        async_client("sglang"),
        model=model,
        messages=[USER],
        max_tokens=8,
        dialect="continue_final_message",
        max_rounds=50,
    )
    assert result.choices[0].message.content == TARGET


def test_wrapped_client_to_create(emu: Emulator, sync_client: Any) -> None:
    """A wrapped client handed to code that uses the function form still works."""
    client = autocontinue.wrap(sync_client("dashscope"), dialect="partial")
    result = autocontinue.create(
        client, model=add(emu), messages=[USER], max_tokens=8, dialect="partial", max_rounds=50
    )
    assert result.choices[0].message.content == TARGET


# ------------------------------------------------------------------------------------------------------------
# The caller's objects are not mutated


@pytest.mark.parametrize("stream", [False, True])
def test_caller_objects_not_mutated(emu: Emulator, sync_client: Any, stream: bool) -> None:
    model = add(emu)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "Tell me the story, please.", "name": "reader"},
        {"role": "assistant", "content": TARGET[:10], "name": "narrator"},
    ]
    extra_body = {"top_k": 3}
    stream_options = {"include_usage": False}
    before = copy.deepcopy((messages, extra_body, stream_options))
    ids = [id(m) for m in messages]
    kwargs: dict[str, Any] = dict(
        model=model,
        messages=messages,
        max_tokens=5,
        dialect="continue_final_message",
        max_rounds=100,
        extra_body=extra_body,
    )
    client = sync_client("vllm")
    if stream:
        _, text = collect(autocontinue.create(client, stream=True, stream_options=stream_options, **kwargs))
    else:
        text = autocontinue.create(client, **kwargs).choices[0].message.content
    assert text == TARGET[10:]
    assert (messages, extra_body, stream_options) == before
    assert [id(m) for m in messages] == ids


async def test_caller_objects_not_mutated_async(emu: Emulator, async_client: Any) -> None:
    messages = [USER, {"role": "assistant", "content": "", "partial": True, "name": "narrator"}]
    before = copy.deepcopy(messages)
    result = await autocontinue.acreate(
        async_client("kimi"), model=add(emu), messages=messages, max_tokens=5, dialect="partial", max_rounds=100
    )
    assert result.choices[0].message.content == TARGET
    assert messages == before


# ------------------------------------------------------------------------------------------------------------
# Bad input: ConfigurationError, and not a single request


BAD_CALLS: dict[str, dict[str, Any]] = {
    "empty-messages": {"messages": []},
    "messages-not-a-list": {"messages": "hello"},
    "non-dict-message": {"messages": ["hello"]},
    "bad-role": {"messages": [{"role": "wizard", "content": "hi"}]},
    "only-a-prefix": {"messages": [{"role": "assistant", "content": "hi"}]},
    "unknown-dialect": {"dialect": "telepathy"},
    "max-rounds-0": {"max_rounds": 0},
    "negative-token-budget": {"max_total_tokens": -5},
    "zero-token-budget": {"max_total_tokens": 0},
    "negative-cost-budget": {"max_cost_usd": -1.0},
    "cost-budget-unknown-price": {"max_cost_usd": 1.0},
    "n-0": {"n": 0},
    "n-2-stream": {"n": 2, "stream": True},
    "unknown-kwarg": {"temprature": 0.2},
    "max-tokens-0": {"max_tokens": 0},
    "bad-retry": {"retry": 3},
    "bad-stop-when": {"stop_when": 5},
    "bad-prices": {"prices": [1, 2]},
    "no-model": {"model": ""},
}


def _call_kwargs(model: str, bad: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model": model, "messages": [USER], "max_tokens": 5, "dialect": "partial"}
    kwargs.update(bad)
    return kwargs


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_sends_nothing(emu: Emulator, sync_client: Any, case: str, stream: bool) -> None:
    model = add(emu)
    client = sync_client("dashscope")
    kwargs = _call_kwargs(model, BAD_CALLS[case])
    if stream:
        kwargs.setdefault("stream", True)
    before = emu.stats()["requests_total"]
    with pytest.raises(autocontinue.ConfigurationError):
        result = autocontinue.create(client, **kwargs)
        if kwargs.get("stream"):
            collect(result)
    assert emu.stats()["requests_total"] == before
    assert issubclass(autocontinue.ConfigurationError, ValueError)


@pytest.mark.parametrize("case", list(BAD_CALLS))
async def test_bad_input_sends_nothing_async(emu: Emulator, async_client: Any, case: str) -> None:
    model = add(emu)
    client = async_client("dashscope")
    before = emu.stats()["requests_total"]
    with pytest.raises(autocontinue.ConfigurationError):
        await autocontinue.acreate(client, **_call_kwargs(model, BAD_CALLS[case]))
    assert emu.stats()["requests_total"] == before


@pytest.mark.parametrize("case", ["empty-messages", "non-dict-message", "unknown-kwarg", "n-0", "max-tokens-0"])
def test_bad_input_through_wrapped_client(emu: Emulator, sync_client: Any, case: str) -> None:
    client = autocontinue.wrap(sync_client("dashscope"), dialect="partial")
    kwargs = _call_kwargs(add(emu), BAD_CALLS[case])
    kwargs.pop("dialect")
    before = emu.stats()["requests_total"]
    with pytest.raises(autocontinue.ConfigurationError):
        client.chat.completions.create(**kwargs)
    assert emu.stats()["requests_total"] == before


@pytest.mark.parametrize(
    "options",
    [
        {"dialect": "telepathy"},
        {"max_rounds": 0},
        {"max_total_tokens": -1},
        {"max_cost_usd": 0},
        {"bogus": 1},
        {"retry": "x"},
    ],
)
def test_bad_wrap_options(sync_client: Any, options: dict[str, Any]) -> None:
    with pytest.raises(autocontinue.ConfigurationError):
        autocontinue.wrap(sync_client("dashscope"), **options)


def test_cost_budget_unknown_price_is_unknown_price_error(emu: Emulator, sync_client: Any) -> None:
    before = emu.stats()["requests_total"]
    with pytest.raises(autocontinue.errors.UnknownPriceError):
        autocontinue.create(sync_client("dashscope"), model=add(emu), messages=[USER], max_cost_usd=1.0)
    assert emu.stats()["requests_total"] == before


async def test_wrong_client_kind(emu: Emulator, sync_client: Any, async_client: Any) -> None:
    before = emu.stats()["requests_total"]
    with pytest.raises(autocontinue.ConfigurationError):
        await autocontinue.acreate(sync_client("dashscope"), model=add(emu), messages=[USER])
    with pytest.raises(autocontinue.ConfigurationError):
        autocontinue.create(async_client("dashscope"), model=add(emu), messages=[USER])
    with pytest.raises(autocontinue.ConfigurationError):
        autocontinue.wrap(object())  # type: ignore[type-var]
    assert emu.stats()["requests_total"] == before


# ------------------------------------------------------------------------------------------------------------
# Budgets through HTTP


@pytest.mark.parametrize("mode", ["sync", "stream"])
@pytest.mark.parametrize("persona", ["dashscope", "mistral", "anthropic", "openai"])
@pytest.mark.parametrize("budget", [4, 17, 30])
def test_token_budget_never_overshot(emu: Emulator, sync_client: Any, mode: str, persona: str, budget: int) -> None:
    model = add(emu)
    result = autocontinue.create(
        sync_client(persona),
        model=model,
        messages=[USER],
        max_tokens=6,
        dialect=PERSONA_DIALECT[persona],
        max_total_tokens=budget,
        retry=fast_retry(),
        stream=mode == "stream",
    )
    text, trace, finish = _text_and_trace(result)
    assert finish == "length"
    assert trace.stop_cause == "token_budget"
    assert TARGET.startswith(text) and text
    assert sum(r.usage.completion_tokens for r in trace.rounds) <= budget
    spent = 0
    for request, record in zip(emu.requests(model), trace.rounds, strict=True):
        assert request["body"]["max_tokens"] <= min(6, budget - spent)
        spent += record.usage.completion_tokens


@pytest.mark.parametrize("mode", ["sync", "stream"])
def test_time_budget_ends_in_time_with_the_rounds_done(emu: Emulator, sync_client: Any, mode: str) -> None:
    """Each round takes at least 0.3 s upstream, so with 0.8 s no more than three can start (fewer on a slow
    machine); the answer needs many more. The rounds done are kept, as a budget's stop keeps them."""
    model = add(emu, first_token_delay=0.3)
    result = autocontinue.create(
        sync_client("deepseek-beta"),
        model=model,
        messages=[USER],
        max_tokens=4,
        dialect="prefix",
        max_seconds=0.8,
        retry=fast_retry(),
        stream=mode == "stream",
    )
    text, trace, finish = _text_and_trace(result)
    assert (trace.stop_cause, finish) == ("time_budget", "length")
    assert 1 <= len(trace.rounds) == len(emu.requests(model)) <= 3
    assert TARGET.startswith(text) and len(text) > 0
    assert all(r.latency_s >= 0.3 for r in trace.rounds)


async def test_token_budget_without_caller_limit(emu: Emulator, async_client: Any) -> None:
    """No max_tokens from the caller: the budget itself becomes each round's limit."""
    model = add(emu, output_cap=7)
    result = await autocontinue.acreate(
        async_client("openai"),
        model=model,
        messages=[USER],
        dialect="instruction",
        max_total_tokens=20,
        retry=fast_retry(),
    )
    assert result.continuation.stop_cause == "token_budget"
    assert result.usage.completion_tokens <= 20
    requests = emu.requests(model)
    assert len(requests) >= 3
    limits = [r["body"].get("max_completion_tokens") or r["body"].get("max_tokens") for r in requests]
    assert limits[0] == 20 and all(limit is not None for limit in limits)


@pytest.mark.parametrize("mode", ["sync", "stream"])
def test_max_rounds(emu: Emulator, sync_client: Any, mode: str) -> None:
    model = add(emu)
    result = autocontinue.create(
        sync_client("dashscope"),
        model=model,
        messages=[USER],
        max_tokens=5,
        dialect="partial",
        max_rounds=3,
        stream=mode == "stream",
    )
    text, trace, finish = _text_and_trace(result)
    assert finish == "length"
    assert trace.stop_cause == "max_rounds"
    assert len(trace.rounds) == 3 == len(emu.requests(model))
    assert TARGET.startswith(text) and len(text) < len(TARGET)


def test_default_max_rounds_is_bounded(emu: Emulator, sync_client: Any) -> None:
    model = add(emu, TARGET * 3)
    result = autocontinue.create(
        sync_client("dashscope"), model=model, messages=[USER], max_tokens=3, dialect="partial"
    )
    assert result.continuation.stop_cause == "max_rounds"
    assert len(emu.requests(model)) == 10


def test_stop_when(emu: Emulator, sync_client: Any) -> None:
    model = add(emu)
    result = autocontinue.create(
        sync_client("dashscope"),
        model=model,
        messages=[USER],
        max_tokens=5,
        dialect="partial",
        stop_when=autocontinue.max_rounds(2) | autocontinue.max_total_tokens(1000),
    )
    assert result.continuation.stop_cause == "max_rounds"
    assert len(emu.requests(model)) == 2


@pytest.mark.parametrize("mode", ["sync", "stream"])
@pytest.mark.parametrize("persona", ["dashscope", "mistral"])
def test_cost_budget(emu: Emulator, sync_client: Any, mode: str, persona: str) -> None:
    model = add(emu, TARGET * 3)
    price = autocontinue.Price(100.0, 200.0)
    budget = 0.01
    result = autocontinue.create(
        sync_client(persona),
        model=model,
        messages=[USER],
        max_tokens=10,
        dialect=PERSONA_DIALECT[persona],
        max_cost_usd=budget,
        prices={model: (price.input, price.output)},
        max_rounds=100,
        stream=mode == "stream",
        stream_options={"include_usage": True} if mode == "stream" else None,
    )
    text, trace, finish = _text_and_trace(result)
    assert finish == "length"
    assert trace.stop_cause == "cost_budget"
    assert (TARGET * 3).startswith(text)
    costs = [price.cost(r.usage.prompt_tokens, r.usage.completion_tokens, _cached(r.usage)) for r in trace.rounds]
    assert [r.cost_usd for r in trace.rounds] == pytest.approx(costs)
    assert trace.cost_usd == pytest.approx(sum(costs))
    assert trace.cost_usd <= budget


def test_known_model_price_is_used(emu: Emulator, sync_client: Any) -> None:
    """Without a cost budget a known price still fills cost_usd; an unknown one leaves it None."""
    model = add(emu)
    unknown = autocontinue.create(
        sync_client("dashscope"), model=model, messages=[USER], max_tokens=8, dialect="partial", max_rounds=50
    )
    assert unknown.continuation.cost_usd is None
    priced = autocontinue.create(
        sync_client("dashscope"),
        model=add(emu),
        messages=[USER],
        max_tokens=8,
        dialect="partial",
        max_rounds=50,
        prices={model: (1.0, 2.0)},
    )
    assert priced.continuation.cost_usd is None  # the price was for the other model name
    own = add(emu)
    priced = autocontinue.create(
        sync_client("dashscope"),
        model=own,
        messages=[USER],
        max_tokens=8,
        dialect="partial",
        max_rounds=50,
        prices={own: (1.0, 2.0)},
    )
    assert priced.continuation.cost_usd and priced.continuation.cost_usd > 0


@pytest.mark.parametrize("mode", ["sync", "async", "stream"])
async def test_content_filter_is_not_continued(emu: Emulator, mode: str) -> None:
    model = add(emu, finish_reasons={2: "content_filter"})
    kwargs: dict[str, Any] = dict(model=model, messages=[USER], max_tokens=5, dialect="partial", retry=fast_retry())
    if mode == "async":
        async with openai.AsyncOpenAI(base_url=emu.base_url("dashscope"), api_key=API_KEY) as client:
            result: Any = await autocontinue.acreate(client, **kwargs)
            text, trace, finish = _text_and_trace(result)
    else:
        with openai.OpenAI(base_url=emu.base_url("dashscope"), api_key=API_KEY) as client:
            result = autocontinue.create(client, stream=mode == "stream", **kwargs)
            text, trace, finish = _text_and_trace(result)
    assert finish == "content_filter"
    assert trace.stop_cause == "content_filter"
    assert len(emu.requests(model)) == 2
    assert TARGET.startswith(text)


@pytest.mark.parametrize("runaway", ["empty", "identical", "repeat"])
@pytest.mark.parametrize("persona", ["dashscope", "mistral", "anthropic", "openai", "vllm"])
def test_runaway_ends_with_no_progress(emu: Emulator, sync_client: Any, runaway: str, persona: str) -> None:
    """A round that adds nothing ends the call at once; a server that appends the same text every round is stopped
    at the first round after which the answer's last LOOP_FLOOR characters repeat, not later. (Before the loop
    floor, every runaway was stopped within 3 rounds, which also cut real answers that repeat themselves.)"""
    model = add(emu, runaway=runaway)
    result = autocontinue.create(
        sync_client(persona),
        model=model,
        messages=[USER],
        max_tokens=5,
        dialect=PERSONA_DIALECT[persona],
        max_rounds=400,
    )
    trace = result.continuation
    text = result.choices[0].message.content or ""
    assert trace.stop_cause == "no_progress", (trace.stop_cause, text[:80])
    assert result.choices[0].finish_reason == "length"
    last = trace.rounds[-1]
    if last.chars_added == 0:  # nothing added: ended at once (a reply that was not empty gets one more round)
        # Under `instruction`, a reply that was all repeat of the tail and filled its limit is also sent again with
        # twice the limit (the "repeat" server's 20 characters at 5 tokens a round), at most MAX_GROWTHS times.
        stalled = [r for r in trace.rounds[:-1] if r.chars_added == 0]
        widened = sum(r.dialect == "instruction" and repeat_removed(r.seam) for r in stalled)
        assert len(stalled) - widened <= 1 and widened <= MAX_GROWTHS
        assert len(trace.rounds) <= 3 + widened
    else:
        assert loops(text) and not loops(text[: len(text) - last.chars_added])
        assert len(text) < 2 * LOOP_FLOOR


@pytest.mark.parametrize("runaway", ["empty", "identical", "repeat"])
def test_runaway_without_the_repeat_stop_is_still_bounded(emu: Emulator, sync_client: Any, runaway: str) -> None:
    """No setting makes a loop unbounded: with stop_on_repeat=False a runaway server still ends the call, at the
    latest at max_rounds (these runaways add nothing new once their reply is taken for an echo, so sooner)."""
    model = add(emu, runaway=runaway)
    result = autocontinue.create(
        sync_client("vllm"), model=model, messages=[USER], max_tokens=5, max_rounds=6, stop_on_repeat=False
    )
    trace = result.continuation
    assert result.choices[0].finish_reason == "length"
    assert trace.stop_cause in ("no_progress", "max_rounds")
    assert len(emu.requests(model)) == len(trace.rounds) <= 6


@pytest.mark.parametrize("persona", ["vllm", "dashscope", "mistral"])
def test_repetitive_answer_whole_without_the_repeat_stop(emu: Emulator, sync_client: Any, persona: str) -> None:
    """An answer that really repeats itself (a table's identical rows) comes out whole while the repetition is under
    LOOP_FLOOR characters; a longer one is cut short by the repeat stop, the text so far intact, and with
    stop_on_repeat=False it comes out whole. (Before the loop floor the 24-row table was cut short.)"""
    short = "Rows:\n" + "| -- | -- |\n" * 24 + "Done."
    model = add(emu, target=short)
    request = {"model": model, "messages": [USER], "max_tokens": 4, "dialect": PERSONA_DIALECT[persona]}
    assert autocontinue.create(sync_client(persona), max_rounds=100, **request).choices[0].message.content == short
    target = "Rows:\n" + "| -- | -- |\n" * 100 + "Done."
    model = add(emu, target=target)
    request = {"model": model, "messages": [USER], "max_tokens": 16, "dialect": PERSONA_DIALECT[persona]}
    guarded = autocontinue.create(sync_client(persona), max_rounds=100, **request)
    assert guarded.continuation.stop_cause == "no_progress"
    assert target.startswith(guarded.choices[0].message.content or "")
    whole = autocontinue.create(sync_client(persona), max_rounds=100, stop_on_repeat=False, **request)
    assert whole.continuation.stop_cause == "natural"
    assert whole.choices[0].message.content == target


# ------------------------------------------------------------------------------------------------------------
# Retry limits through the client


def test_retry_cap_whatever_the_policy(emu: Emulator, sync_client: Any) -> None:
    """No policy makes a round unbounded: at most 20 attempts."""
    model = add(emu, faults={n: Fault("status", status=503) for n in range(2, 40)})
    policy = tenacity.Retrying(stop=stop_after_attempt(1000), wait=wait_fixed(0), reraise=True)
    with pytest.raises(autocontinue.ContinuationFailed):
        autocontinue.create(
            sync_client("dashscope"), model=model, messages=[USER], max_tokens=5, dialect="partial", retry=policy
        )
    assert len(emu.requests(model)) == 1 + 20


def test_retry_none_leaves_sdk_retries(emu: Emulator, sync_client: Any) -> None:
    """retry=None: the client's own max_retries applies unchanged."""
    model = add(
        emu, faults={2: Fault("status", status=500, retry_after=0.01), 3: Fault("status", status=500, retry_after=0.01)}
    )
    client = sync_client("dashscope", max_retries=2)
    result = autocontinue.create(
        client, model=model, messages=[USER], max_tokens=8, dialect="partial", retry=None, max_rounds=50
    )
    assert result.choices[0].message.content == TARGET


def test_our_retries_replace_sdk_retries(emu: Emulator, sync_client: Any) -> None:
    """With our policy the SDK does not retry on its own: attempts are exactly the policy's."""
    model = add(emu, faults={n: Fault("status", status=500, retry_after=0.01) for n in range(2, 20)})
    client = sync_client("dashscope", max_retries=5)
    with pytest.raises(autocontinue.ContinuationFailed):
        autocontinue.create(client, model=model, messages=[USER], max_tokens=8, dialect="partial", retry=fast_retry(3))
    assert len(emu.requests(model)) == 1 + 3


# ------------------------------------------------------------------------------------------------------------
# Logging

SECRET_TARGET = (
    "Zyxwv quorbling flimflam 8472 snarkles, vorpal blades!\n\nGalumphing back, the jabberwock's "
    "frumious bandersnatch mimsy borogoves outgrabe."
)
SECRET_USER = {"role": "user", "content": "Describe the quorbling secretly, Kraxtolian wanderer."}


def _grams(text: str, n: int = 6) -> set[str]:
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def _leaks(events: list[dict[str, Any]], *texts: str) -> list[str]:
    grams = set().union(*(_grams(t) for t in texts))
    found = []
    for event in events:
        rendered = repr(event)
        found += [g for g in grams if g in rendered]
    return found


@pytest.mark.parametrize("mode", ["sync", "stream"])
def test_logs_carry_no_text_or_key(emu: Emulator, sync_client: Any, logs: list[dict[str, Any]], mode: str) -> None:
    model = add(emu, SECRET_TARGET, faults={3: Fault("status", status=429, retry_after=0.01)})
    result = autocontinue.create(
        sync_client("mistral"),
        model=model,
        messages=[SECRET_USER],
        max_tokens=6,
        dialect="prefix",
        max_rounds=100,
        retry=fast_retry(),
        prices={model: (1.0, 2.0)},
        stream=mode == "stream",
    )
    text, trace, _ = _text_and_trace(result)
    assert text == SECRET_TARGET
    assert logs, "events are emitted"
    rendered = repr(logs)
    assert API_KEY not in rendered
    assert "Authorization" not in rendered and "Bearer" not in rendered
    assert _leaks(logs, SECRET_TARGET, SECRET_USER["content"]) == []

    rounds = [e for e in logs if e["event"] == "autocontinue.round"]
    calls = [e for e in logs if e["event"] == "autocontinue.call"]
    assert len(rounds) == len(trace.rounds)
    assert len(calls) == 1
    for event, record in zip(rounds, trace.rounds, strict=True):
        for key in ("round", "finish_reason", "completion_tokens", "cost_usd", "seam", "dialect"):
            assert key in event, key
        assert event["round"] == record.index
        assert event["finish_reason"] == record.finish_reason
        assert event["completion_tokens"] == record.usage.completion_tokens
        assert event["cost_usd"] == pytest.approx(record.cost_usd)
        assert event["dialect"] == record.dialect
        assert list(event["seam"]) == list(record.seam)
    call = calls[0]
    for key in ("rounds", "stop_cause", "finish_reason", "completion_tokens", "cost_usd", "dialect"):
        assert key in call, key
    assert call["stop_cause"] == "natural" and call["finish_reason"] == "stop"
    assert call["completion_tokens"] == sum(r.usage.completion_tokens for r in trace.rounds)
    assert call["cost_usd"] == pytest.approx(trace.cost_usd)
    assert any(e["event"] == "autocontinue.retry" for e in logs)


def test_one_call_event_per_call(emu: Emulator, sync_client: Any, logs: list[dict[str, Any]]) -> None:
    client = autocontinue.wrap(sync_client("dashscope"), dialect="partial", max_rounds=50)
    for _ in range(3):
        client.chat.completions.create(model=add(emu), messages=[USER], max_tokens=8)
    assert sum(1 for e in logs if e["event"] == "autocontinue.call") == 3


def test_log_text_shows_text_but_never_the_key(emu: Emulator, sync_client: Any, logs: list[dict[str, Any]]) -> None:
    model = add(emu, SECRET_TARGET)
    autocontinue.create(
        sync_client("dashscope"),
        model=model,
        messages=[SECRET_USER],
        max_tokens=6,
        dialect="partial",
        max_rounds=100,
        log_text=True,
    )
    rendered = repr(logs)
    assert API_KEY not in rendered and "Authorization" not in rendered
    assert _leaks(logs, SECRET_TARGET), "log_text=True puts seam excerpts in the events"


def test_failure_events_carry_no_text(emu: Emulator, sync_client: Any, logs: list[dict[str, Any]]) -> None:
    model = add(
        emu, SECRET_TARGET, faults={n: Fault("status", status=500, message=f"boom {API_KEY}") for n in range(3, 7)}
    )
    with pytest.raises(autocontinue.ContinuationFailed):
        autocontinue.create(
            sync_client("dashscope"),
            model=model,
            messages=[SECRET_USER],
            max_tokens=6,
            dialect="partial",
            retry=fast_retry(),
        )
    assert any(e["event"] == "autocontinue.failed" for e in logs)
    assert API_KEY not in repr(logs)
    assert _leaks(logs, SECRET_TARGET, SECRET_USER["content"]) == []


def test_stdlib_logging_when_structlog_unconfigured(
    emu: Emulator, sync_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    model = add(emu, SECRET_TARGET)
    with caplog.at_level(logging.DEBUG, logger="autocontinue"):
        autocontinue.create(
            sync_client("dashscope"),
            model=model,
            messages=[SECRET_USER],
            max_tokens=6,
            dialect="partial",
            max_rounds=100,
        )
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("autocontinue")]
    assert any(m.startswith("autocontinue.round") for m in messages)
    assert sum(1 for m in messages if m.startswith("autocontinue.call")) == 1
    joined = "\n".join(messages)
    assert API_KEY not in joined
    assert not [g for g in _grams(SECRET_TARGET) | _grams(SECRET_USER["content"]) if g in joined]


def test_usage_is_summed(emu: Emulator, sync_client: Any) -> None:
    model = add(emu)
    result = autocontinue.create(
        sync_client("dashscope"), model=model, messages=[USER], max_tokens=8, dialect="partial", max_rounds=50
    )
    rounds = result.continuation.rounds
    assert usage_dict(result.usage) == {
        "prompt_tokens": sum(r.usage.prompt_tokens for r in rounds),
        "completion_tokens": sum(r.usage.completion_tokens for r in rounds),
        "total_tokens": sum(r.usage.total_tokens for r in rounds),
        "cached_tokens": sum(r.usage.prompt_tokens_details.cached_tokens or 0 for r in rounds),
    }
    assert result.usage.prompt_tokens_details.cached_tokens > 0


@pytest.mark.parametrize("dialect", [Partial(), Partial, "partial"], ids=["instance", "class", "name"])
def test_dialect_given_as_object(emu: Emulator, sync_client: Any, dialect: Any) -> None:
    model = add(emu)
    result = autocontinue.create(
        sync_client("kimi"), model=model, messages=[USER], max_tokens=8, dialect=dialect, max_rounds=50
    )
    assert result.choices[0].message.content == TARGET
    assert result.continuation.dialect == "partial"


async def test_concurrent_calls_on_one_wrapped_client(emu: Emulator, async_client: Any) -> None:
    client = autocontinue.wrap(async_client("mistral"), dialect="prefix", max_rounds=100, retry=fast_retry())
    targets = [TARGET[i:] for i in (0, 10, 20, 30, 40)]
    models = [add(emu, t, token_delay=0.001) for t in targets]

    async def one(model: str) -> str:
        stream = await client.chat.completions.create(model=model, messages=[USER], max_tokens=5, stream=True)
        return (await acollect(stream))[1]

    texts = await asyncio.gather(*(one(m) for m in models))
    assert texts == targets


@pytest.mark.parametrize("stream", [False, True])
def test_server_without_usage(emu: Emulator, sync_client: Any, stream: bool) -> None:
    """No usage from the server: tokens are counted locally and marked as estimates."""
    model = add(emu, usage=False)
    result = autocontinue.create(
        sync_client("dashscope"),
        model=model,
        messages=[USER],
        max_tokens=8,
        dialect="partial",
        max_rounds=50,
        stream=stream,
        stream_options={"include_usage": True} if stream else None,
    )
    if stream:
        chunks, text = collect(result)
        usage = chunks[-1].usage
    else:
        text, usage = result.choices[0].message.content, result.usage
    assert text == TARGET
    assert all(r.usage_estimated for r in result.continuation.rounds)
    assert usage is not None and usage.completion_tokens > 0
    assert usage.completion_tokens == sum(r.usage.completion_tokens for r in result.continuation.rounds)


@pytest.mark.parametrize("mode", ["sync", "stream"])
def test_token_budget_with_max_completion_tokens(emu: Emulator, sync_client: Any, mode: str) -> None:
    model = add(emu)
    result = autocontinue.create(
        sync_client("openai"),
        model=model,
        messages=[USER],
        max_completion_tokens=6,
        dialect="instruction",
        max_total_tokens=15,
        stream=mode == "stream",
    )
    text, trace, finish = _text_and_trace(result)
    assert finish == "length" and trace.stop_cause == "token_budget"
    assert TARGET.startswith(text)
    asked = [r["body"]["max_completion_tokens"] for r in emu.requests(model)]
    assert asked[0] == 6 and sum(r.usage.completion_tokens for r in trace.rounds) <= 15
    assert all("max_tokens" not in r["body"] for r in emu.requests(model))
