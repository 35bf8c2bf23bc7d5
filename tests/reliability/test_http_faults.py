"""Transient faults in any round are retried and the call still ends with the exact text; exhausted retries
surface the SDK's own error (nothing generated yet) or ``ContinuationFailed`` carrying everything generated.

All over real HTTP with the real SDK, sync, async and streaming.
"""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

import autocontinue
from tests.support.common import TARGET, USER, acollect, add, collect, fast_retry, usage_dict
from tests.support.emulator import Emulator, Fault

PERSONA, DIALECT = "dashscope", "partial"
MAX_TOKENS = 6
TIMEOUT = 0.5

# name -> (fault, which modes it applies to)
NON_STREAM = {"sync", "async"}
STREAM = {"stream", "astream"}
ALL = NON_STREAM | STREAM
FAULTS: dict[str, tuple[Fault, set[str]]] = {
    "429": (Fault("status", status=429, retry_after=0.2), ALL),
    "500": (Fault("status", status=500), ALL),
    "503": (Fault("status", status=503), ALL),
    "timeout": (Fault("delay", delay=1.2), ALL),
    "drop": (Fault("drop"), ALL),  # stream: closed before the first event
    "drop_mid_round": (Fault("drop", after_chunks=4), STREAM),
    "drop_after_role": (Fault("drop", after_chunks=1), STREAM),
    "malformed_sse": (Fault("malformed_sse", after_chunks=3), STREAM),
    "malformed_sse_first": (Fault("malformed_sse", after_chunks=0), STREAM),
    "truncated_json": (Fault("truncated_json"), NON_STREAM),
}
CASES = [
    (name, mode, ordinal)
    for name, (_, modes) in FAULTS.items()
    for mode in ("sync", "async", "stream", "astream")
    if mode in modes
    for ordinal in (1, 3)
]


async def _run(emu: Emulator, mode: str, model: str, **options: Any) -> tuple[str, Any]:
    """One continued call in ``mode``; returns (text, trace)."""
    kwargs: dict[str, Any] = dict(
        model=model, messages=[USER], max_tokens=MAX_TOKENS, dialect=DIALECT, max_rounds=100, **options
    )
    kwargs.setdefault("retry", fast_retry())
    if mode in ("sync", "stream"):
        with openai.OpenAI(base_url=emu.base_url(PERSONA), api_key="test-key", timeout=TIMEOUT) as client:
            if mode == "sync":
                result = autocontinue.create(client, **kwargs)
                return result.choices[0].message.content, result.continuation
            stream = autocontinue.create(client, stream=True, **kwargs)
            chunks, text = collect(stream)
            _check_stream_shape(chunks)
            return text, stream.continuation
    async with openai.AsyncOpenAI(base_url=emu.base_url(PERSONA), api_key="test-key", timeout=TIMEOUT) as client:
        if mode == "async":
            result = await autocontinue.acreate(client, **kwargs)
            return result.choices[0].message.content, result.continuation
        stream = await autocontinue.acreate(client, stream=True, **kwargs)
        chunks, text = await acollect(stream)
        _check_stream_shape(chunks)
        return text, stream.continuation


def _check_stream_shape(chunks: list[Any]) -> None:
    """However the upstream broke, the caller sees one uninterrupted stream."""
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert sum(1 for c in with_choices if c.choices[0].delta.role) == 1
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert with_choices[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("name", "mode", "ordinal"), CASES, ids=[f"{n}-{m}-req{o}" for n, m, o in CASES])
async def test_fault_is_retried(emu: Emulator, name: str, mode: str, ordinal: int) -> None:
    fault, _ = FAULTS[name]
    model = add(emu, faults={ordinal: fault})
    started = time.monotonic()
    text, trace = await _run(emu, mode, model)
    elapsed = time.monotonic() - started
    assert text == TARGET
    assert trace.stop_cause == "natural"
    requests = emu.requests(model)
    assert requests[ordinal - 1].get("fault") == fault.kind
    assert len(requests) > ordinal
    assert max(r.retries for r in trace.rounds) >= 1 or any(r.finish_reason == "error" for r in trace.rounds)
    if name == "429":
        assert elapsed >= 0.2, "Retry-After was not honoured"
    if name == "timeout":
        assert elapsed >= TIMEOUT


async def test_retry_after_honoured_by_default_policy(emu: Emulator) -> None:
    model = add(emu, faults={2: Fault("status", status=429, retry_after=0.3)})
    started = time.monotonic()
    text, trace = await _run(emu, "async", model, retry=autocontinue.default_retry())
    assert time.monotonic() - started >= 0.3
    assert text == TARGET
    assert trace.rounds[1].retries == 1


# ------------------------------------------------------------------------------------------------------------
# Retries exhausted


def _expected_after(emu: Emulator, rounds: int) -> Any:
    """The completion of a clean call stopped after ``rounds`` rounds (same script, no faults)."""
    model = add(emu)
    with openai.OpenAI(base_url=emu.base_url(PERSONA), api_key="test-key") as client:
        return autocontinue.create(
            client, model=model, messages=[USER], max_tokens=MAX_TOKENS, dialect=DIALECT, max_rounds=rounds
        )


@pytest.mark.parametrize("mode", ["sync", "async", "stream", "astream"])
@pytest.mark.parametrize("status", [500, 429])
async def test_exhausted_after_round_k(emu: Emulator, mode: str, status: int) -> None:
    k = 2
    expected = _expected_after(emu, k)
    assert expected.continuation.stop_cause == "max_rounds"
    faults = {n: Fault("status", status=status) for n in range(k + 1, k + 5)}
    model = add(emu, faults=faults)
    with pytest.raises(autocontinue.ContinuationFailed) as info:
        await _run(emu, mode, model)
    error = info.value
    assert type(error) is autocontinue.ContinuationFailed
    partial = error.partial
    assert isinstance(partial, openai.types.chat.ChatCompletion)
    assert partial.choices[0].message.content == expected.choices[0].message.content
    assert error.text == expected.choices[0].message.content
    assert usage_dict(partial.usage) == usage_dict(expected.usage)
    assert partial.continuation.stop_cause == "error"
    assert len(partial.continuation.rounds) == k
    expected_error = openai.InternalServerError if status == 500 else openai.RateLimitError
    assert isinstance(error.__cause__, expected_error)
    assert len(emu.requests(model)) == k + 4  # 4 attempts for the failing round


@pytest.mark.parametrize("mode", ["sync", "async", "stream", "astream"])
async def test_exhausted_in_round_one_raises_sdk_error(emu: Emulator, mode: str) -> None:
    model = add(emu, faults={n: Fault("status", status=503) for n in range(1, 5)})
    with pytest.raises(openai.InternalServerError):
        await _run(emu, mode, model)
    assert len(emu.requests(model)) == 4


async def test_stream_exhausted_after_drops_keeps_every_character(emu: Emulator) -> None:
    """Round 2 drops mid-stream on every attempt: the partial holds round 1 plus whatever was decided after."""
    faults = {n: Fault("drop", after_chunks=3) for n in range(2, 6)}
    model = add(emu, faults=faults)
    with openai.OpenAI(base_url=emu.base_url(PERSONA), api_key="test-key") as client:
        stream = autocontinue.create(
            client,
            model=model,
            messages=[USER],
            max_tokens=MAX_TOKENS,
            dialect=DIALECT,
            retry=fast_retry(),
            stream=True,
        )
        received = ""
        with pytest.raises(autocontinue.ContinuationFailed) as info:
            for chunk in stream:
                if chunk.choices:
                    received += chunk.choices[0].delta.content or ""
    partial_text = info.value.text
    assert TARGET.startswith(partial_text)
    assert partial_text.startswith(received)
    assert len(partial_text) > 0
    # After exhaustion the trace is still there.
    assert stream.continuation.stop_cause == "error"
    assert stream.continuation.rounds


# ------------------------------------------------------------------------------------------------------------
# retry=None: no retries of ours (the SDK's own max_retries applies; 0 here)


@pytest.mark.parametrize("mode", ["sync", "stream"])
def test_retry_none_round_one(emu: Emulator, mode: str) -> None:
    model = add(emu, faults={1: Fault("status", status=500)})
    with openai.OpenAI(base_url=emu.base_url(PERSONA), api_key="test-key", max_retries=0) as client:
        kwargs: dict[str, Any] = dict(model=model, messages=[USER], max_tokens=MAX_TOKENS, dialect=DIALECT, retry=None)
        with pytest.raises(openai.InternalServerError):
            if mode == "stream":
                collect(autocontinue.create(client, stream=True, **kwargs))
            else:
                autocontinue.create(client, **kwargs)
    assert len(emu.requests(model)) == 1


@pytest.mark.parametrize("mode", ["sync", "async", "stream", "astream"])
async def test_retry_none_later_round(emu: Emulator, mode: str) -> None:
    model = add(emu, faults={2: Fault("status", status=500)})
    with pytest.raises(autocontinue.ContinuationFailed) as info:
        await _run_no_sdk_retries(emu, mode, model)
    assert len(info.value.partial.continuation.rounds) == 1
    assert TARGET.startswith(info.value.text) and info.value.text
    assert len(emu.requests(model)) == 2


async def _run_no_sdk_retries(emu: Emulator, mode: str, model: str) -> None:
    kwargs: dict[str, Any] = dict(model=model, messages=[USER], max_tokens=MAX_TOKENS, dialect=DIALECT, retry=None)
    if mode in ("sync", "stream"):
        with openai.OpenAI(base_url=emu.base_url(PERSONA), api_key="test-key", max_retries=0) as client:
            if mode == "sync":
                autocontinue.create(client, **kwargs)
            else:
                collect(autocontinue.create(client, stream=True, **kwargs))
        return
    async with openai.AsyncOpenAI(base_url=emu.base_url(PERSONA), api_key="test-key", max_retries=0) as client:
        if mode == "async":
            await autocontinue.acreate(client, **kwargs)
        else:
            await acollect(await autocontinue.acreate(client, stream=True, **kwargs))


def test_non_transient_error_is_not_retried(emu: Emulator) -> None:
    """A 400 in a later round is not retried: ContinuationFailed at once, with the text so far."""
    model = add(emu, faults={3: Fault("status", status=400, message="bad request")})
    with (
        openai.OpenAI(base_url=emu.base_url(PERSONA), api_key="test-key") as client,
        pytest.raises(autocontinue.ContinuationFailed) as info,
    ):
        autocontinue.create(
            client, model=model, messages=[USER], max_tokens=MAX_TOKENS, dialect=DIALECT, retry=fast_retry()
        )
    assert isinstance(info.value.__cause__, openai.BadRequestError)
    assert len(emu.requests(model)) == 3
    assert len(info.value.partial.continuation.rounds) == 2
