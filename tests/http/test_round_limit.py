"""The per-round limit rule (README, "The per-round limit"), over real HTTP to the provider emulator.

A round asks for the caller's limit. A round that could only regenerate a held-back word is followed by one that
holds back less, at the same limit; only whitespace a dialect may not send, or (under the instruction dialect) a
repeat of the text that filled the round, can make a round ask for more, and ``max_round_tokens`` caps that.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import ChatCompletion

import autocontinue
from autocontinue.client import make_settings
from autocontinue.core import Continuation, Done, DoRequest
from autocontinue.errors import ConfigurationError
from tests.support.common import USER, add, fast_retry
from tests.support.emulator import Emulator
from tests.support.emulator.tokenizer import tokenize


def limits_sent(emu: Emulator, model: str) -> list[int]:
    return [entry["body"]["max_tokens"] for entry in emu.requests(model)]


def reply(text: str, tokens: int) -> ChatCompletion:
    """A provider's reply cut by the limit (built through the SDK's public pydantic model)."""
    return ChatCompletion.model_validate(
        {
            "id": "r",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens},
        }
    )


def test_a_round_that_only_rewrote_a_held_word_is_followed_by_one_at_the_callers_limit() -> None:
    """Sans-IO: round 2 is sent "One" and holds back " two"; the model spends its 4 tokens on " tw" (it tokenizes
    the word its own way). Round 3 asks for the caller's 4 tokens again, and sends the word instead of holding it."""
    settings = make_settings(dialect="continue_final_message", retry=None)
    core = Continuation({"model": "m", "messages": [USER], "max_tokens": 4}, settings, base_url="http://127.0.0.1/v1")
    assert isinstance(core.start(), DoRequest)
    second = core.on_response(reply("One two", 4))
    assert isinstance(second, DoRequest)
    assert second.kwargs["messages"][-1]["content"] == "One"  # " two" held back for the model to rewrite
    third = core.on_response(reply(" tw", 4))
    assert isinstance(third, DoRequest)
    assert third.kwargs["max_tokens"] == 4
    assert third.kwargs["messages"][-1]["content"] == "One two"
    assert core.trace.rounds[1].seam == ("held_kept",)
    done = core.on_response(reply(" three.", 2).model_copy(update={"choices": [_stop(" three.")]}))
    assert isinstance(done, Done)
    assert done.completion.choices[0].message.content == "One two three."


def _stop(text: str) -> Any:
    return reply(text, 2).choices[0].model_copy(update={"finish_reason": "stop"})


def test_held_whitespace_a_dialect_cannot_send_raises_the_limit_up_to_max_round_tokens(
    emu: Emulator, sync_client: Any
) -> None:
    """Anthropic refuses a prefix ending in whitespace: at one token per round, the round after "Hello world"
    can only write the held "\\n\\n" again. The limit is then doubled (the rule), never above max_round_tokens."""
    target = "Hello world\n\n   Second line here."
    client = sync_client("anthropic")
    common: dict[str, Any] = dict(messages=[USER], max_tokens=1, dialect="prefill", max_rounds=100, retry=fast_retry())

    grown = add(emu, target)
    reply = autocontinue.create(client, model=grown, **common)
    assert reply.choices[0].message.content == target
    assert max(limits_sent(emu, grown)) == 4  # "\n\n", "  " and a word: doubled twice

    capped = add(emu, target)
    reply = autocontinue.create(client, model=capped, max_round_tokens=2, **common)
    assert max(limits_sent(emu, capped)) == 2
    assert reply.continuation.stop_cause == "no_progress"  # the text so far is kept, none of it lost
    assert target.startswith(reply.choices[0].message.content or "")

    never = add(emu, target)
    reply = autocontinue.create(client, model=never, max_round_tokens=1, **common)
    assert set(limits_sent(emu, never)) == {1}
    assert reply.continuation.stop_cause == "no_progress"


def test_max_round_tokens_caps_the_retry_of_a_cut_tool_call(emu: Emulator, sync_client: Any) -> None:
    arguments = '{"city": "Paris", "unit": "celsius", "days": [1, 2, 3]}'
    needed = len(tokenize(arguments))
    limit = needed - 5  # the first attempt is cut; twice the limit would be more than needed
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    client = sync_client("vllm")
    request: dict[str, Any] = dict(messages=[USER], tools=tools, max_tokens=limit)

    cut = add(emu, "", tool_call={"name": "get_weather", "arguments": arguments})
    with pytest.raises(autocontinue.TruncatedToolCallError):
        autocontinue.create(client, model=cut, max_round_tokens=limit, **request)
    assert limits_sent(emu, cut) == [limit]  # no room above the cap: no retry, the cut call is reported

    retried = add(emu, "", tool_call={"name": "get_weather", "arguments": arguments})
    reply = autocontinue.create(client, model=retried, max_round_tokens=needed + 1, **request)
    assert limits_sent(emu, retried) == [limit, needed + 1]
    assert reply.continuation.rounds[0].seam[-1:] == ("tool_call_retry",)
    assert reply.choices[0].message.tool_calls[0].function.arguments == arguments


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "8"])
def test_max_round_tokens_is_checked_before_any_request(emu: Emulator, sync_client: Any, value: Any) -> None:
    model = add(emu, "Some text.")
    with pytest.raises(ConfigurationError, match="max_round_tokens"):
        autocontinue.create(sync_client("vllm"), model=model, messages=[USER], max_tokens=4, max_round_tokens=value)
    assert emu.requests(model) == []


# -- a chat model's repeat that fills the round (the instruction dialect)

OPENING = "The old harbour town kept its records in a ledger"


def _instruction_core(**options: Any) -> Continuation:
    settings = make_settings(dialect="instruction", retry=None, **options)
    return Continuation({"model": "m", "messages": [USER], "max_tokens": 4}, settings, base_url="http://127.0.0.1/v1")


def _prefix_of(request: DoRequest) -> str:
    return str(request.kwargs["messages"][-2]["content"])  # the assistant turn before the instruction


def test_a_round_that_only_repeated_the_text_is_sent_again_with_twice_the_limit() -> None:
    """Sans-IO: asked to continue, the model writes its current line again before it goes on, and at 4 tokens a
    round the repeat fills the round. The next round is the same request (the same cut, the word " ledger" still
    held back as evidence of where the new text starts) with twice the limit; it gets past the repeat."""
    core = _instruction_core()
    assert isinstance(core.start(), DoRequest)
    second = core.on_response(reply(OPENING, 4))
    assert isinstance(second, DoRequest)
    assert _prefix_of(second) == "The old harbour town kept its records in a"
    third = core.on_response(reply("town kept its records in a", 4))  # all repeat, the whole limit used
    assert isinstance(third, DoRequest)
    assert third.kwargs["max_tokens"] == 8
    assert _prefix_of(third) == _prefix_of(second)
    assert core.trace.rounds[1].chars_added == 0
    done = core.on_response(
        reply("", 8).model_copy(update={"choices": [_stop("town kept its records in a ledger nobody read.")]})
    )
    assert isinstance(done, Done)
    assert done.completion.choices[0].message.content == OPENING + " nobody read."


def test_a_repeat_that_did_not_fill_its_round_or_came_again_ends_the_call() -> None:
    """A larger limit helps only a reply that used all of its own: a server that says "length" after 2 of 4
    tokens, or that sends the same repeat to the larger round, is not given more (README, Guarantees)."""
    short = _instruction_core()
    short.start()
    short.on_response(reply(OPENING, 4))
    third = short.on_response(reply("town kept its records in a", 2))  # stopped short of its limit
    assert isinstance(third, DoRequest)
    assert third.kwargs["max_tokens"] == 4  # the held-word rule's chance only, at the caller's limit
    assert isinstance(short.on_response(reply("town kept its records in a ledger", 2)), Done)
    assert short.trace.stop_cause == "no_progress"

    same = _instruction_core()
    same.start()
    same.on_response(reply(OPENING, 4))
    larger = same.on_response(reply("town kept its records in a", 4))
    assert isinstance(larger, DoRequest) and larger.kwargs["max_tokens"] == 8
    assert isinstance(same.on_response(reply("town kept its records in a", 8)), Done)  # the same reply again
    assert same.trace.stop_cause == "no_progress"
    assert same.trace.rounds[-1].chars_added == 0 and len(same.trace.rounds) == 3


def test_max_round_tokens_caps_the_larger_round_after_a_repeat() -> None:
    """With ``max_round_tokens`` at the caller's limit there is no larger round: the call ends with no_progress,
    keeping all of its text."""
    core = _instruction_core(max_round_tokens=4)
    core.start()
    core.on_response(reply(OPENING, 4))
    done = core.on_response(reply("town kept its records in a", 4))
    assert isinstance(done, Done)
    assert core.trace.stop_cause == "no_progress"
    assert done.completion.choices[0].message.content == OPENING
