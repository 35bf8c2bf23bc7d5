"""Sans-IO tests of the continuation state machine (autocontinue.core.Continuation).

No server and no network: a pure-Python fake provider answers each ``DoRequest`` the way a provider of each
dialect would (facts: ``/work/shared/reference/providers.md``), and the drivers ``autocontinue.drivers.sync`` and
``autocontinue.drivers.stream`` run the core against it, with a ``sleep`` that does not wait.

The fake provider (tests/support/fakes.py), the driving of the core (tests/support/drive.py) and the property cases
(tests/support/cases.py) are shared with test_budget.py and test_retry_policy.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import autocontinue
from autocontinue import ConfigurationError, TruncatedToolCallError, max_rounds
from autocontinue._options import Settings
from autocontinue._progress import LOOP_FLOOR, loops
from autocontinue.client import make_settings
from autocontinue.core import Continuation, DoRequest
from autocontinue.drivers import stream as stream_driver
from autocontinue.retry import RetryTracker
from tests.support.cases import SETTINGS, Case, assume_unambiguous, cases, setup_case
from tests.support.common import fast_retry
from tests.support.drive import (
    COUNTER,
    Upstream,
    content_of,
    drive,
    make_core,
    prefix_sent,
    run,
    run_stream,
    scripted,
)
from tests.support.fakes import (
    FLAVOURS,
    MODEL,
    USER,
    Provider,
    bad_request,
    connection_error,
    make_completion,
    stream_of,
)

# ================================================================================================================
# 1. The joined text is the target, whatever the dialect, quirk, cut points and heal setting


@SETTINGS
@given(case=cases())
def test_joined_text_is_the_target(case: Case) -> None:
    provider, core = setup_case(case, stream=False)
    try:
        result = run(core, provider.completion)
    finally:
        assume_unambiguous(case, provider)
    assert content_of(result) == case.target[case.caller_prefix :]
    assert result.choices[0].finish_reason == "stop"
    assert core.trace.stop_cause == "natural"


@SETTINGS
@given(case=cases())
def test_streamed_text_is_the_target(case: Case) -> None:
    provider, core = setup_case(case, stream=True)
    try:
        result = run_stream(core, provider.chunks)
    finally:
        assume_unambiguous(case, provider)
    expected = case.target[case.caller_prefix :]
    assert result.text == expected
    assert content_of(result.completion) == expected
    finishes = [c.choices[0].finish_reason for c in result.chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert result.chunks[-1].choices[0].finish_reason == "stop"


def flaky_stream(provider: Provider, failures: dict[int, int]) -> Callable[[DoRequest], Iterator[ChatCompletionChunk]]:
    """Request n (1-based) breaks with a connection error after ``failures[n]`` chunks (0: the request fails)."""
    calls = 0

    def send(action: DoRequest) -> Iterator[ChatCompletionChunk]:
        nonlocal calls
        calls += 1
        at = failures.get(calls)
        if at == 0:
            raise connection_error()
        last_new = provider.last_new
        chunks = provider.chunks(action)
        if at is not None and at < len(chunks):
            provider.last_new = last_new  # a broken reply is no round for the "same text as last round" rule

        def gen() -> Iterator[ChatCompletionChunk]:
            for i, chunk in enumerate(chunks):
                if i == at:
                    raise connection_error()
                yield chunk

        return gen()

    return send


@SETTINGS
@given(case=cases(), failures=st.dictionaries(st.integers(1, 40), st.integers(0, 25), max_size=5))
def test_stream_survives_dropped_connections(case: Case, failures: dict[int, int]) -> None:
    """A connection dropped after any chunk: the call resumes from exactly the released text."""
    provider, core = setup_case(case, stream=True)
    core._retry = RetryTracker(fast_retry(10, wait=0))
    try:
        result = run_stream(core, flaky_stream(provider, failures))
    finally:
        assume_unambiguous(case, provider)
    expected = case.target[case.caller_prefix :]
    assert result.text == expected
    assert content_of(result.completion) == expected


@SETTINGS
@given(case=cases(), failed=st.sets(st.integers(1, 12), max_size=4), stream=st.booleans())
def test_a_failed_request_is_retried_unchanged(case: Case, failed: set[int], stream: bool) -> None:
    """A request that fails before any reply (a refused or dropped connection) leaves no mark: the retry sends
    the very same request - the same prefix, the same held-back text - so the answer is what it would have been."""

    def sent_requests(failing: set[int]) -> tuple[list[Any], str]:
        provider, core = setup_case(case, stream=stream)
        core._retry = RetryTracker(fast_retry(10, wait=0))
        messages: list[Any] = []
        calls = 0

        def send(action: DoRequest) -> Any:
            nonlocal calls
            calls += 1
            if calls in failing:
                raise connection_error()
            messages.append(action.kwargs["messages"])
            return provider.chunks(action) if stream else provider.completion(action)

        try:
            text = run_stream(core, send).text if stream else content_of(run(core, send))
        finally:
            assume_unambiguous(case, provider)
        return messages, text

    assert sent_requests(failed) == sent_requests(set())


@pytest.mark.parametrize("name", sorted(FLAVOURS))
@pytest.mark.parametrize("heal", [True, False])
@pytest.mark.parametrize("stream", [False, True])
def test_every_flavour_on_a_long_text(name: str, heal: bool, stream: bool) -> None:
    target = (
        "# Title\n\nThe quick brown fox jumps over the lazy dog. 😀 日本語のテキスト。\n\n"
        "```python\ndef f(x):\n    return x ** 2\n```\n\n- one\n- two\n\n"
        + " ".join(f"Sentence {i} is about item {i * 7}." for i in range(12))
    )
    provider = Provider(target, FLAVOURS[name], echo_chunks=3)
    core = make_core(provider, heal=heal, stream=stream, max_tokens=7)
    if stream:
        result = run_stream(core, provider.chunks)
        assert result.text == target
        completion = result.completion
    else:
        completion = run(core, provider.completion)
    assert content_of(completion) == target
    assert completion.choices[0].finish_reason == "stop"
    assert len(provider.requests) > 10


@pytest.mark.parametrize(
    ("base_url", "dialect"),
    [
        ("https://dashscope.aliyuncs.com/compatible-mode/v1", "partial"),
        ("https://api.moonshot.cn/v1", "partial"),
        ("https://api.deepseek.com", "prefix"),
        ("https://api.mistral.ai/v1", "prefix"),
        ("https://api.openai.com/v1", "instruction"),
        ("https://myres.openai.azure.com/openai", "instruction"),
        ("https://generativelanguage.googleapis.com/v1beta/openai/", "instruction"),
        ("https://api.anthropic.com/v1/", "prefill"),
        ("https://openrouter.ai/api/v1", "prefill"),
        ("http://localhost:11434/v1", "prefill"),
    ],
)
def test_auto_dialect_by_host(base_url: str, dialect: str) -> None:
    core = make_core(None, dialect="auto", base_url=base_url)
    assert core.trace.dialect == dialect


def test_deepseek_rounds_go_to_beta() -> None:
    provider = Provider("one two three four five six", FLAVOURS["deepseek"])
    result = run(make_core(provider, max_tokens=2), provider.completion)
    assert content_of(result) == provider.target
    assert provider.requests[0].base_url is None  # the first request goes where the client points
    assert all(r.base_url == "https://api.deepseek.com/beta" for r in provider.requests[1:])


# ================================================================================================================
# Bugs found by the properties above, as single examples


def test_stream_delivers_the_text_a_round_holds_until_its_end() -> None:
    """Text the seam returns from Seam.finish() reaches the stream (through take_released()).

    Round 2 regenerates nothing for the held word " brown" and stops: the word is kept ("held_kept") in the
    result. (Found as a bug at b7135b9: core._end_round dropped the return value of
    ``self._append(current, current.seam.finish())``, which had already advanced ``_released``.)
    """
    core = make_core(None, stream=True, max_tokens=3)
    cid = "chatcmpl-s"
    replies = [stream_of(cid, ["The", " quick", " brown"], "length"), stream_of(cid, [], "stop")]
    result = run_stream(core, scripted(replies))
    assert content_of(result.completion) == "The quick brown"
    assert result.text == "The quick brown"  # got "The quick" at b7135b9


def test_stream_delivers_a_reply_that_looked_like_an_echo() -> None:
    """Same root cause: a "maybe"-echo dialect holds a reply that is a prefix of the prefix until the round
    ends; Seam.finish() returns it as new text, and the stream must get it (target " worldHello world")."""
    provider = Provider(" worldHello world", FLAVOURS["anthropic"])
    core = make_core(provider, heal=False, stream=True, max_tokens=1)
    result = run_stream(core, provider.chunks)
    assert content_of(result.completion) == " worldHello world"
    assert result.text == " worldHello world"  # got " worldHello" at b7135b9


@pytest.mark.parametrize("heal", [True, False])
@pytest.mark.parametrize("stream", [False, True])
def test_restart_that_reproduces_the_text_falls_back_to_instruction(heal: bool, stream: bool) -> None:
    """BUG: on an unknown host the prefill dialect falls back to the instruction dialect when the model
    restarts. A temperature-0 model that ignores the trailing assistant message replies, with the same
    max_tokens, exactly the text of round 1: the "maybe" echo stage strips it as an echo of the prefix, the
    restart stage never sees the answer's opening, the round adds nothing and the call stops with "no_progress"
    and a truncated answer, never trying the fallback (core._end_round: the no_progress branch ignores
    ``self._fallback``)."""
    target = "Hellodef f(x):\n    return x ** 2\n"
    provider = Provider(target, FLAVOURS["openai_restart"])
    core = make_core(provider, heal=heal, stream=stream, max_tokens=8)
    completion = drive(core, provider, stream=stream)
    assert core.trace.fallbacks == ["prefill->instruction"]
    assert content_of(completion) == target  # got "Hellodef f(x):\n    return", stop_cause "no_progress"


def test_restart_is_discarded_and_falls_back() -> None:
    """A restarted reply long enough to show the answer's opening is discarded and the instruction dialect
    takes over for the rest of the call."""
    answer = "The answer begins with this sentence, and then it goes on for a while. The end."
    requests: list[DoRequest] = []
    replies = [
        make_completion(answer[:40], "length"),
        make_completion(answer[:30], "length"),  # restart: shorter than the prefix, starts with the opening
        make_completion(answer[40:], "stop"),
    ]
    core = make_core(None, dialect="auto", base_url="http://10.1.2.3:9000/v1", max_tokens=10, heal=False)
    result = run(core, scripted(replies, requests))
    assert content_of(result) == answer
    assert core.trace.fallbacks == ["prefill->instruction"]
    assert "restart_discarded" in core.trace.rounds[1].seam
    assert requests[1].kwargs["messages"][-1]["role"] == "assistant"
    assert requests[2].kwargs["messages"][-1]["role"] == "user"  # the instruction
    assert requests[2].kwargs["messages"][-2] == {"role": "assistant", "content": answer[:40]}


@pytest.mark.parametrize("heal", [True, False])
@pytest.mark.parametrize("stream", [False, True])
def test_prefill_never_sends_trailing_whitespace_after_a_long_run(heal: bool, stream: bool) -> None:
    """BUG: the prefill dialect must never send a prefix ending in whitespace (Anthropic: 400). After a
    whitespace run longer than HOLD_WINDOW (256), stitch.hold_back_point only strips the part of the run inside
    its 256-char window (``stripped = without_garbage.rstrip()`` on ``tail[-HOLD_WINDOW:]`` gives 0, so it
    returns ``base + 0``), and the prefix sent ends in the rest of the run."""
    target = "Hello world." + "\n" * 300 + "The end of it all."
    provider = Provider(target, FLAVOURS["anthropic"])
    # 4 tokens a round: round 1 is "Hello world." + the run, so round 2's prefix is cut right after the run
    core = make_core(provider, heal=heal, stream=stream, max_tokens=4)
    completion = drive(core, provider, stream=stream)  # got ContinuationFailed(BadRequestError)
    assert content_of(completion) == target
    assert all(not (p or "x")[-1].isspace() for p in provider.prefixes)


def test_deepseek_never_echoes() -> None:
    """BUG (design): DeepSeek is documented never to echo the prefix (providers.md §2), but the prefix dialect
    treats every reply as a possible echo (Mistral's). A caller prefilling "#" for a markdown heading whose
    DeepSeek continuation is "## Introduction" (i.e. "### Introduction") loses one "#": the echo stage strips
    the reply's leading "#" as an echo of the prefix. With the host known (api.deepseek.com), echo="never"
    would be exact."""
    messages = [dict(USER), {"role": "assistant", "content": "#"}]
    core = make_core(None, messages, dialect="auto", base_url="https://api.deepseek.com/v1")
    result = run(core, scripted([make_completion("## Introduction\n\nText.", "stop")]))
    assert content_of(result) == "## Introduction\n\nText."  # got "# Introduction\n\nText."


# ================================================================================================================
# 2. The caller's own assistant prefix


@pytest.mark.parametrize("name", ["dashscope", "deepseek", "mistral", "vllm", "llamacpp", "anthropic", "openai"])
@pytest.mark.parametrize("stream", [False, True])
def test_caller_prefix_is_continued_and_not_returned(name: str, stream: bool) -> None:
    prefix = "Sure, here is the list:\n"
    target = prefix + "1. apples\n2. pears\n3. plums, and a much longer line to finish the list.\n"
    messages = [dict(USER), {"role": "assistant", "content": prefix, "name": "Kal'tsit"}]
    provider = Provider(target, FLAVOURS[name], answer_start=len(prefix))
    core = make_core(provider, messages, stream=stream, max_tokens=4)
    if stream:
        result = run_stream(core, provider.chunks)
        assert result.text == target[len(prefix) :]
        completion = result.completion
    else:
        completion = run(core, provider.completion)
    assert content_of(completion) == target[len(prefix) :]
    # The first request already continues the caller's prefix, with its other keys kept.
    first = provider.requests[0].kwargs["messages"]
    carrier = first[-1] if first[-1]["role"] == "assistant" else first[-2]
    assert carrier["name"] == "Kal'tsit"
    assert target.startswith(carrier["content"])
    assert messages[-1] == {"role": "assistant", "content": prefix, "name": "Kal'tsit"}  # not modified


def test_caller_prefix_single_round() -> None:
    messages = [dict(USER), {"role": "assistant", "content": "The answer is"}]
    core = make_core(None, messages)
    requests: list[DoRequest] = []
    result = run(core, scripted([make_completion(" 42.", "stop")], requests))
    assert content_of(result) == " 42."
    assert requests[0].kwargs["messages"][-1] == {"role": "assistant", "content": "The answer is", "partial": True}


def test_caller_prefix_ending_in_whitespace_with_prefill() -> None:
    """The caller's own trailing whitespace is held back from Anthropic and is not returned as new text."""
    messages = [dict(USER), {"role": "assistant", "content": "Answer: "}]
    core = make_core(None, messages, dialect="prefill", base_url="https://api.anthropic.com/v1/")
    requests: list[DoRequest] = []
    result = run(core, scripted([make_completion("42, of course.", "stop")], requests))
    assert requests[0].kwargs["messages"][-1]["content"] == "Answer:"
    assert content_of(result) == "42, of course."


# ================================================================================================================
# 4. No progress


def misbehaving(provider: Provider, good: int, mode: str) -> Callable[[DoRequest], ChatCompletion]:
    """Answers well for ``good`` requests, then with "length" and: no text, the same text every time, or the
    last 20 chars of the prefix it was given (echoed first by an echoing flavour)."""

    def send(action: DoRequest) -> ChatCompletion:
        if provider.calls < good:
            return provider.completion(action)
        provider.calls += 1
        provider.requests.append(action)
        p = provider.prefix_of(action)[1] or ""
        body = {"empty": "", "same": "Lorem ipsum dolor sit.", "tail20": p[-20:]}[mode]
        if provider.flavour.echo and p:
            body = p + body
        return make_completion(body, "length", completion=5)

    return send


@pytest.mark.parametrize("name", ["dashscope", "deepseek", "mistral", "vllm", "llamacpp", "anthropic", "openai"])
@pytest.mark.parametrize("mode", ["empty", "same", "tail20"])
@pytest.mark.parametrize("heal", [True, False])
def test_no_progress(name: str, mode: str, heal: bool) -> None:
    """A provider that starts misbehaving after ``good`` rounds is stopped with "no_progress":

    - a round that adds nothing (an empty reply, an echo alone, a repeat the instruction seam removes) ends the
      call at once;
    - a provider that adds the same text every round is writing repetitive text, which is legitimate until the
      repetition reaches LOOP_FLOOR characters: the call ends at the first round after which the text loops, and
      not a round later.

    (Before the loop floor, "same" and "tail20" were stopped within 3 rounds: that cut short real answers that
    repeat, e.g. "one one one ... one two" in small rounds; see autocontinue._progress.)"""
    target = "The quick brown fox jumps over the lazy dog. " * 20
    provider = Provider(target, FLAVOURS[name])
    good = 3
    core = make_core(provider, heal=heal, max_tokens=5, stop=max_rounds(500))
    result = run(core, misbehaving(provider, good, mode))
    assert core.trace.stop_cause == "no_progress"
    assert result.choices[0].finish_reason == "length"
    text = content_of(result)
    assert text.startswith(target[:20])
    last = core.trace.rounds[-1]
    if mode == "empty" or last.chars_added == 0:
        assert last.chars_added == 0
        # The first round that adds nothing ends the call. Under `instruction`, a reply that is all repeat of the
        # tail and used its whole limit is first given one larger round (it may be a model repeating a line
        # longer than its round); the same reply again ends the call: the second such round.
        widened = mode != "empty" and provider.flavour.shape == "instruction"
        assert len(provider.requests) <= good + 2 + widened
    else:
        assert loops(text) and not loops(text[: len(text) - last.chars_added])  # stopped at once, not later
        assert len(text) < 2 * LOOP_FLOOR


@pytest.mark.parametrize("stream", [False, True])
def test_repetitive_text_in_full_without_the_repeat_stop(stream: bool) -> None:
    """A reply that really is repetitive (a rule of dashes, a table's rows) comes out whole with the defaults while
    its repetition is under LOOP_FLOOR characters; above it, it stops early by default, with the text so far
    intact, and comes out whole with stop_on_repeat=False. (Before the loop floor, the 30-row table was stopped
    by default: a legitimate answer cut short.)"""
    short = "Table:\n" + "| -- | -- |\n" * 30 + "End."
    provider = Provider(short, FLAVOURS["llamacpp"])
    core = make_core(provider, max_tokens=4, stream=stream, stop=max_rounds(200))
    text = run_stream(core, provider.chunks).text if stream else content_of(run(core, provider.completion))
    assert text == short and core.trace.stop_cause == "natural"
    target = "Table:\n" + "| -- | -- |\n" * 120 + "End."
    for stop_on_repeat in (True, False):
        provider = Provider(target, FLAVOURS["llamacpp"])
        core = make_core(provider, max_tokens=4, stream=stream, stop=max_rounds(2000), stop_on_repeat=stop_on_repeat)
        text = run_stream(core, provider.chunks).text if stream else content_of(run(core, provider.completion))
        if stop_on_repeat:
            assert core.trace.stop_cause == "no_progress"
            assert target.startswith(text) and len(text) < len(target)
        else:
            assert core.trace.stop_cause == "natural"
            assert text == target


def test_no_progress_on_an_empty_first_round() -> None:
    core = make_core(None, max_tokens=5)
    result = run(core, scripted([make_completion("", "length", completion=5)]))
    assert content_of(result) == ""
    assert core.trace.stop_cause == "no_progress"
    assert result.choices[0].finish_reason == "length"


# ================================================================================================================
# 5. Finish reasons that are never continued


@pytest.mark.parametrize(
    ("finish", "cause", "final"),
    [
        ("stop", "natural", "stop"),
        ("content_filter", "content_filter", "content_filter"),
        ("tool_calls", "tool_calls", "tool_calls"),
        ("model_length", "context_window", "length"),
        ("model_context_window_exceeded", "context_window", "length"),
        ("end_turn", "natural", "end_turn"),
    ],
)
@pytest.mark.parametrize("at_round", [1, 3])
def test_final_finish_reasons_are_not_continued(finish: str, cause: str, final: str, at_round: int) -> None:
    replies = [make_completion(f"part {i} ", "length") for i in range(1, at_round)]
    tool_calls = None
    if finish == "tool_calls":
        tool_calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    replies.append(make_completion(f"last {at_round}.", finish, tool_calls=tool_calls))
    requests: list[DoRequest] = []
    core = make_core(None, max_tokens=5)
    result = run(core, scripted(replies, requests))
    assert len(requests) == at_round
    assert core.trace.stop_cause == cause
    assert result.choices[0].finish_reason == final
    assert content_of(result).endswith(f"last {at_round}.")


@pytest.mark.parametrize("finish", ["length", "max_tokens", "MAX_TOKENS"])
def test_length_stops_of_every_provider_are_continued(finish: str) -> None:
    core = make_core(None, max_tokens=5)
    result = run(core, scripted([make_completion("Hello", finish), make_completion(" world.", "stop")]))
    assert content_of(result) == "Hello world."
    assert core.trace.stop_cause == "natural"


def test_streamed_content_filter_is_final() -> None:
    core = make_core(None, stream=True, max_tokens=5, heal=False)
    replies = [stream_of("a", ["Hello", " there"], "length"), stream_of("b", [" and"], "content_filter")]
    result = run_stream(core, scripted(replies))
    assert result.text == "Hello there and"
    assert result.chunks[-1].choices[0].finish_reason == "content_filter"
    assert core.trace.stop_cause == "content_filter"


def test_tool_call_cut_by_the_limit_is_never_continued() -> None:
    tool_calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": '}}]
    requests: list[DoRequest] = []
    core = make_core(None, max_tokens=5)
    with pytest.raises(TruncatedToolCallError) as info:
        run(core, scripted([make_completion(None, "length", tool_calls=tool_calls)] * 3, requests))
    assert all(prefix_sent(r) is None for r in requests)  # never continued as text
    assert info.value.tool_calls


# ================================================================================================================
# 7. Streaming shape


def test_stream_shape_across_rounds() -> None:
    target = "One two three four five six seven eight nine ten eleven twelve."
    provider = Provider(target, FLAVOURS["dashscope"])
    core = make_core(provider, stream=True, max_tokens=3, stream_options={"include_usage": True})
    result = run_stream(core, provider.chunks)
    assert result.text == target
    assert len(provider.requests) >= 4
    content_chunks = [c for c in result.chunks if c.choices]
    # one role delta in total, on the first chunk
    roles = [c.choices[0].delta.role for c in content_chunks if c.choices[0].delta.role is not None]
    assert roles == ["assistant"]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    # interim finish reasons swallowed: only the last content chunk has one
    assert [c.choices[0].finish_reason for c in content_chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in content_chunks[:-1])
    # one id across rounds (the first round's), though every upstream round had its own
    assert {c.id for c in result.chunks} == {"chatcmpl-stream-1"}
    # usage: one usage chunk, last, with the sum over rounds
    usage_chunks = [c for c in result.chunks if c.usage is not None]
    assert usage_chunks == [result.chunks[-1]]
    assert not result.chunks[-1].choices
    assert result.chunks[-1].usage is not None
    assert result.chunks[-1].usage.completion_tokens == provider.completion_tokens
    # the upstream request always asks for usage
    for request in provider.requests:
        assert request.kwargs["stream"] is True
        assert request.kwargs["stream_options"]["include_usage"] is True


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}])
def test_stream_usage_chunk_only_when_asked(options: Any) -> None:
    target = "One two three four five six seven."
    provider = Provider(target, FLAVOURS["dashscope"])
    kwargs = {} if options is None else {"stream_options": options}
    core = make_core(provider, stream=True, max_tokens=3, **kwargs)
    result = run_stream(core, provider.chunks)
    assert result.text == target
    assert all(c.usage is None for c in result.chunks)
    assert all(c.choices for c in result.chunks)
    for request in provider.requests:
        assert request.kwargs["stream_options"]["include_usage"] is True  # budgets need it upstream


def test_stream_without_any_text() -> None:
    core = make_core(None, stream=True)
    result = run_stream(core, scripted([stream_of("x", [], "stop")]))
    assert result.text == ""
    roles = [c.choices[0].delta.role for c in result.chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"]
    assert result.chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "payload",
    [
        {"audio": {"id": "audio-1", "data": "UklGRg==", "transcript": "Hi"}},
        {"refusal": "I cannot help with that."},
        {"x_provider_note": "kept"},  # a provider's own field, arriving as a pydantic extra
    ],
)
def test_stream_passes_other_delta_fields_through(payload: dict[str, Any]) -> None:
    """A chunk that carries no text but some other field reaches the caller with that field unchanged."""
    special = ChatCompletionChunk.model_validate(
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": payload, "finish_reason": None, "logprobs": None}],
        }
    )
    upstream = stream_of("x", ["Hello", " there."], "stop")
    upstream.insert(2, special)
    core = make_core(None, stream=True)
    result = run_stream(core, scripted([upstream]))
    assert result.text == "Hello there."
    carried = [c for c in result.chunks if c.choices and any(getattr(c.choices[0].delta, k, None) for k in payload)]
    assert len(carried) == 1
    delta = carried[0].choices[0].delta
    for key, value in payload.items():
        got = getattr(delta, key)
        assert (got.model_dump(exclude_none=True) if hasattr(got, "model_dump") else got) == value


@pytest.mark.parametrize("name", ["dashscope", "mistral", "anthropic", "openai"])
@pytest.mark.parametrize("after", [1, 2, 3, 5])
def test_mid_stream_error_resumes_from_the_released_text(name: str, after: int) -> None:
    """Round 2 breaks after ``after`` chunks; the resumed request's prefix holds every character released so
    far, and the caller's stream has no character lost or doubled."""
    target = "Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho."
    provider = Provider(target, FLAVOURS[name])
    released_before_error: list[str] = []
    core = make_core(provider, stream=True, max_tokens=4, retry=fast_retry(10, wait=0))
    calls = 0
    out: list[ChatCompletionChunk] = []

    def send(action: DoRequest) -> Iterator[ChatCompletionChunk]:
        nonlocal calls
        calls += 1
        chunks = provider.chunks(action)
        for i, chunk in enumerate(chunks):
            if calls == 2 and i == after:
                released_before_error.append("".join(c.choices[0].delta.content or "" for c in out if c.choices))
                raise connection_error()
            yield chunk

    for chunk in stream_driver.chunks(core, lambda action: Upstream(send(action)), sleep=lambda seconds: None):
        if chunk is not None:
            out.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in out if c.choices)
    assert text == target
    resumed = provider.prefixes[2]
    assert resumed is not None
    assert resumed.startswith(released_before_error[0])


def test_stream_options_refused_falls_back_to_counting() -> None:
    """A server that rejects stream_options: asked again without it; the caller still gets the text."""
    requests: list[DoRequest] = []
    replies = [
        bad_request("Unrecognized request argument supplied: stream_options"),
        stream_of("a", ["Hello", " world"], "length"),
        stream_of("b", [" again."], "stop"),
    ]
    core = make_core(None, stream=True, max_tokens=2, heal=False)
    result = run_stream(core, scripted(replies, requests))
    assert result.text == "Hello world again."
    assert requests[0].kwargs["stream_options"] == {"include_usage": True}
    assert "stream_options" not in requests[1].kwargs
    assert all(r.usage_estimated for r in core.trace.rounds)


def test_incomplete_stream_keeps_the_text_and_resumes() -> None:
    """The stream ends without a finish_reason: its text is kept and the call resumes from it (when the policy
    retries it)."""
    retry = tenacity.Retrying(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(), reraise=True)
    replies = [
        stream_of("a", ["Hello", " world"], "length"),
        stream_of("b", [" and", " more"], "length")[:-1],  # no finish chunk
        stream_of("c", [" text."], "stop"),
    ]
    requests: list[DoRequest] = []
    core = make_core(None, stream=True, max_tokens=2, retry=retry, heal=False)
    result = run_stream(core, scripted(replies, requests))
    assert result.text == "Hello world and more text."
    assert prefix_sent(requests[2]) == "Hello world and more"


# ================================================================================================================
# 10. Bad input: every ConfigurationError is raised at construction, before any request

GOOD: dict[str, Any] = {"model": MODEL, "messages": [dict(USER)]}


def _settings(**options: Any) -> Settings:
    return make_settings(counter=COUNTER, **options)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({**GOOD, "temprature": 0.5}, id="unknown-kwarg"),
        pytest.param({"messages": [dict(USER)]}, id="no-model"),
        pytest.param({**GOOD, "model": ""}, id="empty-model"),
        pytest.param({**GOOD, "model": 4}, id="model-not-str"),
        pytest.param({"model": MODEL}, id="no-messages"),
        pytest.param({**GOOD, "messages": "hello"}, id="messages-str"),
        pytest.param({**GOOD, "messages": b"hello"}, id="messages-bytes"),
        pytest.param({**GOOD, "messages": dict(USER)}, id="messages-dict"),
        pytest.param({**GOOD, "messages": 3}, id="messages-not-iterable"),
        pytest.param({**GOOD, "messages": []}, id="messages-empty"),
        pytest.param({**GOOD, "messages": ["hello"]}, id="message-not-dict"),
        pytest.param({**GOOD, "messages": [{"role": "robot", "content": "x"}]}, id="bad-role"),
        pytest.param({**GOOD, "messages": [{"content": "x"}]}, id="no-role"),
        pytest.param({**GOOD, "messages": [{"role": "user", "content": 5}]}, id="content-int"),
        pytest.param({**GOOD, "messages": [{"role": "user", "content": None}]}, id="user-without-content"),
        pytest.param({**GOOD, "messages": [{"role": "system"}, dict(USER)]}, id="system-without-content"),
        pytest.param({**GOOD, "max_tokens": 0}, id="max_tokens-0"),
        pytest.param({**GOOD, "max_tokens": -3}, id="max_tokens-negative"),
        pytest.param({**GOOD, "max_tokens": 1.5}, id="max_tokens-float"),
        pytest.param({**GOOD, "max_tokens": True}, id="max_tokens-bool"),
        pytest.param({**GOOD, "max_tokens": "100"}, id="max_tokens-str"),
        pytest.param({**GOOD, "max_completion_tokens": 0}, id="max_completion_tokens-0"),
        pytest.param({**GOOD, "n": 0}, id="n-0"),
        pytest.param({**GOOD, "n": True}, id="n-bool"),
        pytest.param({**GOOD, "n": "2"}, id="n-str"),
        pytest.param({**GOOD, "n": 2, "stream": True}, id="n-2-stream"),
        pytest.param({**GOOD, "extra_body": ["x"]}, id="extra_body-list"),
        pytest.param({**GOOD, "stream": "yes"}, id="stream-str"),
        pytest.param({**GOOD, "stream": 1}, id="stream-int"),
        pytest.param(
            {**GOOD, "messages": [dict(USER), {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]},
            id="prefix-content-list",
        ),
        pytest.param(
            {
                **GOOD,
                "messages": [
                    dict(USER),
                    {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "type": "function"}]},
                ],
            },
            id="prefix-with-tool_calls",
        ),
        pytest.param({**GOOD, "messages": [{"role": "assistant", "content": "x"}]}, id="only-a-prefix"),
    ],
)
def test_bad_request_raises_configuration_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Continuation(kwargs, _settings(), base_url="https://api.openai.com/v1")


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"max_rounds": 0}, id="max_rounds-0"),
        pytest.param({"max_rounds": -1}, id="max_rounds-negative"),
        pytest.param({"max_rounds": 2.0}, id="max_rounds-float"),
        pytest.param({"max_rounds": True}, id="max_rounds-bool"),
        pytest.param({"max_rounds": None}, id="max_rounds-None"),
        pytest.param({"max_total_tokens": 0}, id="max_total_tokens-0"),
        pytest.param({"max_total_tokens": "50"}, id="max_total_tokens-str"),
        pytest.param({"max_cost_usd": 0}, id="max_cost-0"),
        pytest.param({"max_cost_usd": -1.0}, id="max_cost-negative"),
        pytest.param({"max_cost_usd": float("nan")}, id="max_cost-nan"),
        pytest.param({"max_cost_usd": float("inf")}, id="max_cost-inf"),
        pytest.param({"max_cost_usd": True}, id="max_cost-bool"),
        pytest.param({"max_cost_usd": "1"}, id="max_cost-str"),
        pytest.param({"stop_when": 5}, id="stop_when-int"),
        pytest.param({"stop_when": lambda state: None}, id="stop_when-function"),
        pytest.param({"dialect": "klingon"}, id="dialect-unknown"),
        pytest.param({"dialect": 3}, id="dialect-int"),
        pytest.param({"dialect": object}, id="dialect-other-class"),
        pytest.param({"retry": 3}, id="retry-int"),
        pytest.param({"retry": tenacity.stop_after_attempt(3)}, id="retry-stop-strategy"),
        pytest.param({"prices": [("m", (1.0, 2.0))]}, id="prices-list"),
        pytest.param({"prices": {"m": (-1.0, 2.0)}}, id="price-negative"),
        pytest.param({"prices": {"m": "cheap"}}, id="price-str"),
        pytest.param({"heal": "yes"}, id="heal-str"),
        pytest.param({"heal": 1}, id="heal-int"),
    ],
)
def test_bad_options_raise_configuration_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        _settings(**options)


def test_bad_options_through_wrap_and_create_make_no_request() -> None:
    # The client points at a closed port: a request would surface as APIConnectionError, not ConfigurationError.
    client = openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9/v1", max_retries=0)
    try:
        with pytest.raises(ConfigurationError):
            autocontinue.wrap(client, max_rounds=0)
        with pytest.raises(ConfigurationError):
            autocontinue.wrap(client, colour="blue")
        with pytest.raises(ConfigurationError):
            autocontinue.create(client, model=MODEL, messages=[], max_rounds=3)
        with pytest.raises(ConfigurationError):
            autocontinue.wrap("not a client")  # type: ignore[type-var]
    finally:
        client.close()


def test_good_request_is_accepted_and_not_modified() -> None:
    messages = [{"role": "system", "content": "Be brief."}, dict(USER), {"role": "assistant", "content": "Well,"}]
    snapshot = [dict(m) for m in messages]
    core = Continuation(
        {**GOOD, "messages": messages, "max_tokens": None, "n": 1, "stream": False},
        _settings(),
        base_url="https://api.openai.com/v1",
    )
    action = core.start()
    assert isinstance(action, DoRequest)
    assert messages == snapshot
    assert "max_tokens" not in action.kwargs  # None is "not given"
