"""The hard cases of continuation, each end to end: the real SDK over HTTP to the emulator.

Reasoning cut inside the thinking phase (per provider), tool calls cut by the limit, JSON modes, ``parse()``,
``n`` > 1, logprobs, and the context window filling up. Expected values come from the emulator's script and its
request log, never from the library under test.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
import pytest

import autocontinue
from tests.support.common import TARGET, USER, Recorder, add, collect, usage_dict
from tests.support.emulator import KIMI_JSON_PARTIAL, Emulator, tokenize

session_loop = pytest.mark.asyncio(loop_scope="session")

#: 18 tokens of reasoning: cut by a limit of 4 inside the thinking phase
REASONING = "First I recall the story, then I check the fox, then I write it down."
ANSWER = "The quick brown fox jumps over the lazy dog. The end."


def first_tokens(text: str, n: int) -> str:
    return "".join(tokenize(text)[:n])


def bodies(emu: Emulator, model: str) -> list[dict[str, Any]]:
    return [entry["body"] for entry in emu.requests(model)]


def reasoning_of(message: Any) -> Any:
    """``reasoning_content`` as the SDK exposes a field it does not know: attribute access or model_extra."""
    value = getattr(message, "reasoning_content", None)
    return value if value is not None else (message.model_extra or {}).get("reasoning_content")


# ------------------------------------------------------------------------------------------------------------------
# Reasoning cut inside the thinking phase


def test_reasoning_cut_on_dashscope_switches_thinking_off(emu: Emulator, sync_client: Any) -> None:
    model = add(emu, ANSWER, reasoning=REASONING)
    client = autocontinue.wrap(sync_client("dashscope"), dialect="partial", max_rounds=20)
    reply = client.chat.completions.create(
        model=model, messages=[USER], max_tokens=4, extra_body={"enable_thinking": True}
    )
    message = reply.choices[0].message
    assert message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop"
    # DashScope refuses partial with thinking on: every continuation round switched it off...
    sent = bodies(emu, model)
    assert sent[0]["enable_thinking"] is True
    assert len(sent) > 1
    assert all(body["enable_thinking"] is False for body in sent[1:])
    assert all(body["messages"][-1].get("partial") is True for body in sent[1:])
    assert not any("error" in entry for entry in emu.requests(model))
    # ...and the reasoning of round 1 is kept apart from the answer.
    assert reasoning_of(message) == first_tokens(REASONING, 4)
    assert reply.continuation.stop_cause == "natural"


def test_reasoning_cut_on_deepseek_resumes_the_reasoning_on_beta(emu: Emulator, sync_client: Any) -> None:
    model = add(emu, ANSWER, reasoning=REASONING)
    client = autocontinue.wrap(sync_client("deepseek"), dialect="prefix", max_rounds=30)
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=4)
    message = reply.choices[0].message
    assert message.content == ANSWER
    # The reasoning is joined over the rounds that produced it, in order.
    assert reasoning_of(message) == REASONING
    log = emu.requests(model)
    assert log[0]["path"] == "/deepseek/chat/completions"
    assert all(entry["path"] == "/deepseek/beta/chat/completions" for entry in log[1:])
    # Round 2 carries the chain of thought so far on the prefix message, with no visible text yet.
    second = log[1]["body"]["messages"][-1]
    assert second["prefix"] is True
    assert second["content"] == ""
    assert second["reasoning_content"] == first_tokens(REASONING, 4)
    # The reply's usage counts every round's reasoning tokens.
    assert reply.usage.completion_tokens_details.reasoning_tokens == len(tokenize(REASONING))


@pytest.mark.parametrize(("persona", "dialect"), [("vllm", "continue_final_message"), ("openrouter", "prefill")])
def test_reasoning_cut_elsewhere_stops(emu: Emulator, sync_client: Any, persona: str, dialect: str) -> None:
    model = add(emu, ANSWER, reasoning=REASONING)
    client = autocontinue.wrap(sync_client(persona), dialect=dialect)
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=4)
    assert reply.continuation.stop_cause == "reasoning_truncated"
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == ""
    assert reasoning_of(reply.choices[0].message) == first_tokens(REASONING, 4)
    assert len(emu.requests(model)) == 1


def test_reasoning_retry_stays_within_the_token_budget(emu: Emulator, sync_client: Any) -> None:
    """2 tokens left after the cut round: no room for a larger attempt, so no retry (not one with 2 tokens)."""
    model = add(emu, ANSWER, reasoning=REASONING)
    client = autocontinue.wrap(
        sync_client("vllm"), dialect="continue_final_message", reasoning_retry=True, max_total_tokens=12
    )
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=10)
    assert [body["max_tokens"] for body in bodies(emu, model)] == [10]
    assert reply.continuation.stop_cause == "reasoning_truncated"
    assert reasoning_of(reply.choices[0].message) == first_tokens(REASONING, 10)


def test_reasoning_retry_doubles_the_limit_once(emu: Emulator, sync_client: Any) -> None:
    model = add(emu, ANSWER, reasoning=REASONING)  # 18 reasoning tokens: 8 is not enough either
    client = autocontinue.wrap(sync_client("vllm"), dialect="continue_final_message", reasoning_retry=True)
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=4)
    assert [body["max_tokens"] for body in bodies(emu, model)] == [4, 8]
    assert reply.continuation.stop_cause == "reasoning_truncated"

    enough = add(emu, ANSWER, reasoning=REASONING)
    reply = client.chat.completions.create(model=enough, messages=[USER], max_tokens=10)
    sent = [body["max_tokens"] for body in bodies(emu, enough)]
    assert sent[:2] == [10, 20]  # the retry had room for the reasoning and the start of the answer
    assert len(sent) > 2
    assert all(limit == 10 for limit in sent[2:])  # later rounds are back to the caller's limit
    assert reply.choices[0].message.content == ANSWER
    assert reasoning_of(reply.choices[0].message) == REASONING  # the discarded round's reasoning is not kept


# ------------------------------------------------------------------------------------------------------------------
# Tool calls cut by the limit

ARGUMENTS = '{"city": "Paris", "unit": "celsius", "days": [1, 2, 3], "detail": "full"}'
TOOL = {"name": "get_weather", "arguments": ARGUMENTS}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
]


def test_tool_call_reply_keeps_its_tool_calls(emu: Emulator, sync_client: Any) -> None:
    """Not cut at all: a wrapped client must return the provider's tool call as the SDK would."""
    model = add(emu, "", tool_call=TOOL)
    client = autocontinue.wrap(sync_client("openrouter"), dialect="prefill")
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=100, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert choice.message.tool_calls[0].function.arguments == ARGUMENTS
    assert len(emu.requests(model)) == 1


def test_cut_tool_call_is_retried_with_a_larger_limit(emu: Emulator, sync_client: Any) -> None:
    limit = len(tokenize(ARGUMENTS)) - 5
    model = add(emu, "", tool_call=TOOL)
    client = autocontinue.wrap(sync_client("openrouter"), dialect="prefill")
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=limit, tools=TOOLS)
    assert [body["max_tokens"] for body in bodies(emu, model)] == [limit, 2 * limit]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == json.loads(ARGUMENTS)
    assert reply.continuation.stop_cause == "tool_calls"


@pytest.mark.parametrize("budget", ["max_total_tokens", "max_rounds"])
def test_cut_tool_call_without_room_raises(emu: Emulator, sync_client: Any, budget: str) -> None:
    """No room for a larger attempt (2 tokens left of the budget, or no round left): fail closed at once."""
    limit = len(tokenize(ARGUMENTS)) - 5
    model = add(emu, "", tool_call=TOOL)
    options = {"max_total_tokens": limit + 2} if budget == "max_total_tokens" else {"max_rounds": 1}
    client = autocontinue.wrap(sync_client("openrouter"), dialect="prefill", **options)
    with pytest.raises(autocontinue.TruncatedToolCallError) as caught:
        client.chat.completions.create(model=model, messages=[USER], max_tokens=limit, tools=TOOLS)
    error = caught.value
    assert len(emu.requests(model)) == 1
    assert isinstance(error, autocontinue.ContinuationFailed)
    assert len(error.tool_calls) == 1
    assert error.tool_calls[0].function.arguments == first_tokens(ARGUMENTS, limit)  # the provider's own object
    assert error.partial.choices[0].message.tool_calls[0].function.arguments == first_tokens(ARGUMENTS, limit)
    assert error.partial.choices[0].finish_reason == "length"
    assert error.partial.continuation.stop_cause == "tool_call_truncated"


def test_streamed_cut_tool_call_raises(emu: Emulator, sync_client: Any) -> None:
    model = add(emu, "", tool_call=TOOL)
    client = autocontinue.wrap(sync_client("openrouter"), dialect="prefill")
    stream = client.chat.completions.create(model=model, messages=[USER], max_tokens=6, tools=TOOLS, stream=True)
    with pytest.raises(autocontinue.TruncatedToolCallError) as caught:
        collect(stream)
    assert len(emu.requests(model)) == 1  # its deltas already reached the caller: no second attempt
    partial_call = caught.value.partial.choices[0].message.tool_calls[0]
    assert partial_call.function.name == "get_weather"
    assert partial_call.function.arguments == first_tokens(ARGUMENTS, 6)
    assert caught.value.partial.choices[0].finish_reason == "length"


# ------------------------------------------------------------------------------------------------------------------
# JSON

DOC = '{"name": "Ada Lovelace", "born": 1815, "languages": ["en", "fr", "it"], "notes": "first programmer"}'


def test_json_object_continued_and_valid(emu: Emulator, sync_client: Any) -> None:
    model = add(emu, DOC)
    client = autocontinue.wrap(sync_client("openrouter"), dialect="prefill", max_rounds=30)
    reply = client.chat.completions.create(
        model=model, messages=[USER], max_tokens=5, response_format={"type": "json_object"}
    )
    assert reply.choices[0].message.content == DOC
    assert json.loads(reply.choices[0].message.content) == json.loads(DOC)
    assert len(reply.continuation.rounds) > 1


def test_invalid_joined_json_raises(emu: Emulator, sync_client: Any) -> None:
    broken = DOC[:-12]  # the model itself stops early: the joined text is not JSON
    model = add(emu, broken)
    client = autocontinue.wrap(sync_client("openrouter"), dialect="prefill", max_rounds=30)
    with pytest.raises(autocontinue.InvalidJSONError) as caught:
        client.chat.completions.create(
            model=model, messages=[USER], max_tokens=5, response_format={"type": "json_object"}
        )
    assert caught.value.text == broken


def test_json_schema_violation_raises(emu: Emulator, sync_client: Any) -> None:
    model = add(emu, DOC)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "born": {"type": "string"}},
        "required": ["name", "born"],
    }
    client = autocontinue.wrap(sync_client("openrouter"), dialect="prefill", max_rounds=30)
    with pytest.raises(autocontinue.InvalidJSONError) as caught:
        client.chat.completions.create(
            model=model,
            messages=[USER],
            max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        )
    assert caught.value.text == DOC  # valid JSON, but "born" is a number


def test_kimi_json_object_uses_the_instruction_dialect(emu: Emulator, sync_client: Any) -> None:
    raw = sync_client("kimi")
    # The emulated Kimi does what its docs warn of when partial meets json_object:
    probe = add(emu, DOC)
    broken = raw.chat.completions.create(
        model=probe,
        messages=[USER, {"role": "assistant", "content": DOC[:10], "partial": True}],
        response_format={"type": "json_object"},
    )
    assert broken.choices[0].message.content == KIMI_JSON_PARTIAL

    model = add(emu, DOC)
    client = autocontinue.wrap(raw, dialect="partial", max_rounds=30)
    reply = client.chat.completions.create(
        model=model, messages=[USER], max_tokens=6, response_format={"type": "json_object"}
    )
    assert reply.continuation.dialect == "instruction"
    assert reply.choices[0].message.content == DOC
    sent = bodies(emu, model)
    assert len(sent) > 1
    assert not any(message.get("partial") for body in sent for message in body["messages"])
    assert [entry["mode"] for entry in emu.requests(model)][1:] == ["instruction"] * (len(sent) - 1)


class Person(pydantic.BaseModel):
    name: str
    born: int
    languages: list[str]
    notes: str


def test_parse_on_a_wrapped_client_needs_several_rounds(emu: Emulator, sync_client: Any) -> None:
    raw = sync_client("openrouter")
    plain = add(emu, DOC)
    with pytest.raises(openai.LengthFinishReasonError):  # the SDK alone gives up on the same script
        raw.chat.completions.parse(model=plain, messages=[USER], max_tokens=6, response_format=Person)

    model = add(emu, DOC)
    client = autocontinue.wrap(raw, dialect="prefill", max_rounds=30)
    parsed = client.chat.completions.parse(model=model, messages=[USER], max_tokens=6, response_format=Person)
    assert parsed.choices[0].message.parsed == Person.model_validate_json(DOC)
    assert len(emu.requests(model)) > 1
    assert autocontinue.trace_of(parsed).stop_cause == "natural"
    # warnings=False: the SDK's own parse() results warn on model_dump() too (its generic `parsed` field).
    assert "__autocontinue_trace__" not in parsed.model_dump(warnings=False)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_beta_chat_on_a_wrapped_client_is_continued_too(
    emu: Emulator, sync_client: Any, async_client: Any, asynchronous: bool
) -> None:
    """The SDK's second way in, client.beta.chat.completions (create and parse), goes through the same engine."""
    raw = async_client("openrouter") if asynchronous else sync_client("openrouter")
    # The original's own beta, once read, is cached in its instance dict, which the wrapped copy starts from.
    assert raw.beta.chat is not None
    client = autocontinue.wrap(raw, dialect="prefill", max_rounds=30)
    assert client.beta.chat.completions is client.beta.chat.completions
    assert client.beta.assistants is raw.beta.assistants  # the rest of beta passes through
    created_model, parsed_model = add(emu, DOC), add(emu, DOC)
    create = client.beta.chat.completions.create(model=created_model, messages=[USER], max_tokens=6)
    parse = client.beta.chat.completions.parse(
        model=parsed_model, messages=[USER], max_tokens=6, response_format=Person
    )
    created, parsed = (await create, await parse) if asynchronous else (create, parse)
    assert created.choices[0].message.content == DOC
    assert created.continuation.continued
    assert parsed.choices[0].message.parsed == Person.model_validate_json(DOC)
    assert len(emu.requests(parsed_model)) > 1


# ------------------------------------------------------------------------------------------------------------------
# n > 1

CHOICES = [
    "Alpha: the first answer runs on for a while, then stops.",
    "Beta: a second, somewhat shorter answer.",
    "Gamma: the third answer is the longest of them all, by a few words at least.",
]


def check_choices(reply: Any, recorder: Recorder) -> None:
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert [choice.message.content for choice in reply.choices] == CHOICES
    assert all(choice.finish_reason == "stop" for choice in reply.choices)
    per_choice = reply.continuation.per_choice
    assert len(per_choice) == 3
    assert all(trace.stop_cause == "natural" for trace in per_choice)
    assert all(len(trace.rounds) > 1 for trace in per_choice)
    # Usage: exactly what the provider reported over every request, summed.
    total = recorder.total()
    got = usage_dict(reply.usage)
    assert got == total


def test_n_choices_each_continued(emu: Emulator, sync_client: Any) -> None:
    recorder = Recorder()
    model = add(emu, targets=CHOICES)
    client = autocontinue.wrap(sync_client("openrouter", recorder=recorder), dialect="prefill", max_rounds=30)
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=5, n=3)
    check_choices(reply, recorder)
    assert bodies(emu, model)[0]["n"] == 3
    assert all("n" not in body for body in bodies(emu, model)[1:])


@session_loop
async def test_n_choices_each_continued_async(emu: Emulator, async_client: Any) -> None:
    recorder = Recorder()
    model = add(emu, targets=CHOICES)
    client = autocontinue.wrap(async_client("openrouter", recorder=recorder), dialect="prefill", max_rounds=30)
    reply = await client.chat.completions.create(model=model, messages=[USER], max_tokens=5, n=3)
    check_choices(reply, recorder)


# ------------------------------------------------------------------------------------------------------------------
# logprobs


@pytest.mark.parametrize(
    ("persona", "dialect", "heal"),
    [
        ("vllm", "continue_final_message", False),  # nothing held back between rounds
        ("vllm", "continue_final_message", True),  # the default: the last word is held back and regenerated
        ("openrouter", "prefill", False),  # trailing whitespace is held back and regenerated
    ],
    ids=["cfm-no-heal", "cfm-heal", "prefill-no-heal"],
)
def test_logprobs_joined_across_rounds(emu: Emulator, sync_client: Any, persona: str, dialect: str, heal: bool) -> None:
    model = add(emu)
    client = autocontinue.wrap(sync_client(persona), dialect=dialect, max_rounds=40, heal=heal)
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=5, logprobs=True)
    assert reply.choices[0].message.content == TARGET
    entries = reply.choices[0].logprobs.content
    # One entry per token of the answer, in order: they spell the answer exactly.
    assert "".join(entry.token for entry in entries) == TARGET
    assert [entry.token for entry in entries] == tokenize(TARGET)


@pytest.mark.parametrize("heal", [False, True], ids=["no-heal", "heal"])
def test_streamed_logprobs_match_the_streamed_text(emu: Emulator, sync_client: Any, heal: bool) -> None:
    model = add(emu)
    client = autocontinue.wrap(sync_client("vllm"), dialect="continue_final_message", max_rounds=40, heal=heal)
    chunks, text = collect(
        client.chat.completions.create(model=model, messages=[USER], max_tokens=5, logprobs=True, stream=True)
    )
    assert text == TARGET
    tokens = [t.token for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert tokens == tokenize(TARGET)


# ------------------------------------------------------------------------------------------------------------------
# The context window


def test_context_window_400_keeps_the_text(emu: Emulator, sync_client: Any) -> None:
    # Prompt: 1 role marker + 7 tokens. Round 1 fits (8 + 10 <= 20); round 2's prompt holds round 1's text too.
    model = add(emu, context_window=20)
    client = autocontinue.wrap(sync_client("openrouter"), dialect="prefill", max_rounds=10)
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=10)
    log = emu.requests(model)
    assert len(log) == 2
    assert reply.continuation.stop_cause == "context_window"
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == first_tokens(TARGET, 10)


def test_context_window_filled_llamacpp_style(emu: Emulator, sync_client: Any) -> None:
    # The reply stops where prompt + output fill the window (finish "length"); the next request cannot fit.
    model = add(emu, context_window=14, context_finish=True)
    client = autocontinue.wrap(sync_client("llamacpp"), dialect="continue_final_message", max_rounds=10)
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=50)
    assert len(emu.requests(model)) == 2
    assert reply.continuation.stop_cause == "context_window"
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == first_tokens(TARGET, 14 - 8)
