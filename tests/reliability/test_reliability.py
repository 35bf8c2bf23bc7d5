"""Reliability: chaos, runaway servers, bad input, secrets in logs, and failure after k rounds.

Everything goes through the real ``openai`` SDK over real HTTP to the provider emulator (tests/support/emulator), served
by :class:`tests.support.emulator.Emulator` in its own process; nothing is mocked. Randomness is seeded
(``random.Random(1234)``), so a failure reproduces: its message names the call, its script and its faults.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import math
import random
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pydantic
import pytest
import structlog
import structlog.testing
import tenacity
from tenacity import retry_if_exception, wait_fixed

import autocontinue
from autocontinue._progress import MAX_GROWTHS, loops, repeat_removed
from tests.support.chaos import (
    Call,
    Outcome,
    check_against_log,
    chunked,
    fast_retry,
    make_plan,
    run_async,
    run_sync,
    sent_prefix,
)
from tests.support.common import Recorder
from tests.support.emulator import Emulator, Fault, Script

API_KEY = "sk-test-SECRET-123"
TIMEOUT = 1.0  # client timeout; "delay" faults sleep 1.5 s


@pytest.fixture(scope="module")
def remu() -> Iterator[Emulator]:
    with Emulator(subprocess=True) as emulator:  # its own process: the client and the server do not share a GIL
        yield emulator


def sync_client(emu: Emulator, persona: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.base_url(persona), api_key=API_KEY, timeout=TIMEOUT, **kwargs)


def async_client(emu: Emulator, persona: str, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=emu.base_url(persona), api_key=API_KEY, timeout=TIMEOUT, **kwargs)


# =================================================================================================================
# 1. Chaos

#: calls per driver (1,040 in all)
CHAOS_CALLS = {"sync": 300, "sync-stream": 220, "async": 300, "async-stream": 220}
FAULT_RATE = 0.19  # of each call's requests, before the bursts; ~20 % of all requests end up faulted
BATCH = 130  # calls per batch
SYNC_THREADS = 2  # worker threads for the sync calls of a batch
ASYNC_CONCURRENCY = 40  # async calls in flight at once


def test_chaos(remu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    """1,040 calls (sync, async, sync and async streams) against random scripts and ~20 % faulted requests.

    Each call ends with the target, byte-exact (streamed text too), or with a typed error: ``ContinuationFailed``
    whose partial is a prefix of the target (exactly the text of the completed rounds where the emulator's log
    pins it down), or, when no text was generated, the SDK's own ``openai.APIError``. Anything else is a problem;
    the failure message groups the problems by kind, with a reproducible example of each."""
    rng = random.Random(1234)
    drivers = [driver for driver, n in CHAOS_CALLS.items() for _ in range(n)]
    rng.shuffle(drivers)
    calls: list[Call] = []
    for index, driver in enumerate(drivers):
        # A delay fault costs a whole client timeout: allowed in async calls (they overlap), in few sync ones.
        allow_delay = driver.startswith("async") or rng.random() < 0.05
        call = make_plan(rng, index, driver, fault_rate=FAULT_RATE, allow_delay=allow_delay)
        call.model = remu.add_script(call.script)
        calls.append(call)

    before = remu.stats()
    started = time.perf_counter()
    outcomes = asyncio.run(_run_chaos(remu, calls))
    elapsed = time.perf_counter() - started
    after = remu.stats()

    failures = [o for o in outcomes if o.kind != "exact"]
    for outcome in failures:
        check_against_log(outcome, remu.requests(outcome.call.model))

    requests = after["requests_total"] - before["requests_total"]
    faults = after["faults_injected"] - before["faults_injected"]
    kinds = collections.Counter(o.kind for o in outcomes)
    by_driver = collections.Counter((o.call.driver, o.kind == "exact") for o in outcomes)
    fault_kinds = collections.Counter(
        f.kind if f.kind != "status" else f"status{f.status}" for c in calls for f in c.script.faults.values()
    )
    bad = [o for o in outcomes if o.problems]
    lines = [
        "",
        f"chaos: {len(outcomes)} calls in {elapsed:.1f} s; {requests} requests, {faults} faulted "
        f"({faults / max(1, requests):.1%})",
        f"  exact: {kinds['exact']}; typed errors: "
        + ", ".join(f"{k}={n}" for k, n in sorted(kinds.items()) if k != "exact" and not k.startswith("untyped")),
        f"  untyped: {sum(n for k, n in kinds.items() if k.startswith('untyped'))}; calls with problems: {len(bad)}; "
        f"partials checked char by char against the emulator's log: {sum(o.partial_verified for o in outcomes)}",
        "  per driver (exact/other): "
        + ", ".join(f"{d}={by_driver[(d, True)]}/{by_driver[(d, False)]}" for d in CHAOS_CALLS),
        "  faults planned by kind (incl. ordinals never reached): "
        + ", ".join(f"{k}={n}" for k, n in sorted(fault_kinds.items())),
    ]
    with capsys.disabled():
        print("\n".join(lines))
    assert len(outcomes) >= 1000
    assert faults >= 0.15 * requests, "fewer faults than planned: the chaos is not chaotic enough"
    categories: dict[str, list[Outcome]] = collections.defaultdict(list)
    for outcome in bad:
        categories[_category(outcome)].append(outcome)
    report = "\n\n".join(
        f"[{len(group)}x] {name}\n  e.g. {group[0].call.describe()}\n  -> {group[0].kind}: "
        + "; ".join(group[0].problems)
        for name, group in sorted(categories.items(), key=lambda item: -len(item[1]))
    )
    assert not bad, f"{len(bad)} of {len(outcomes)} chaos calls went wrong, by kind:\n{report}"


async def _run_chaos(emu: Emulator, calls: list[Call]) -> list[Outcome]:
    """Batches of calls, each run in two halves: its sync calls in ``SYNC_THREADS`` worker threads, then its async
    calls on the event loop (one ``asyncio.gather``, at most ``ASYNC_CONCURRENCY`` in flight).

    The halves do not overlap on purpose: threads busy with the SDK starve the event loop of the GIL, and the 1 s
    client timeout then fires on healthy connections (spurious ConnectTimeouts that no fault caused)."""
    personas = {c.persona for c in calls}
    sync_clients = {p: sync_client(emu, p) for p in personas}
    async_clients = {p: async_client(emu, p) for p in personas}
    limit = asyncio.Semaphore(ASYNC_CONCURRENCY)
    outcomes: list[Outcome] = []

    def sync_part(share: list[Call]) -> list[Outcome]:
        return [run_sync(c, sync_clients[c.persona]) for c in share]

    async def async_one(call: Call) -> Outcome:
        async with limit:
            return await run_async(call, async_clients[call.persona])

    try:
        for batch in chunked(calls, BATCH):
            synchronous = [c for c in batch if c.driver.startswith("sync")]
            with ThreadPoolExecutor(SYNC_THREADS) as pool:
                for result in pool.map(sync_part, [synchronous[i::SYNC_THREADS] for i in range(SYNC_THREADS)]):
                    outcomes += result
            outcomes += await asyncio.gather(*(async_one(c) for c in batch if c.driver.startswith("async")))
    finally:
        for client in sync_clients.values():
            client.close()
        for aclient in async_clients.values():
            await aclient.close()
    return outcomes


def _category(outcome: Outcome) -> str:
    call = outcome.call
    first = outcome.problems[0]
    kind = first.split(":")[0] if not first.startswith("returned") else first.split(": got")[0]
    cause = ""
    if "stop_cause" in first:
        cause = " / stop_cause=" + first.rsplit("stop_cause=", 1)[-1].split(";")[0]
    return f"{'stream' if call.stream else 'plain'} / dialect={call.dialect} / {kind}{cause}"


# =================================================================================================================
# Driving one call


class Run:
    """How one continued call ended: its text and trace, or its error; for streams, what the caller received."""

    def __init__(self) -> None:
        self.text: str | None = None
        self.trace: Any = None
        self.completion: Any = None
        self.error: BaseException | None = None
        self.delivered = ""
        self.chunks: list[Any] = []

    def take(self, chunk: Any) -> None:
        """One chunk of a stream, as the caller received it."""
        self.chunks.append(chunk)
        if chunk.choices:
            self.delivered += chunk.choices[0].delta.content or ""

    def end(self, result: Any, *, stream: bool) -> None:
        """The call returned ``result`` (a stream once drained, or a completion)."""
        if stream:
            self.text, self.trace = self.delivered, result.continuation
        else:
            self.completion, self.trace = result, result.continuation
            self.text = result.choices[0].message.content


DRIVERS = ["sync", "async", "stream", "astream"]


def drive(emu: Emulator, driver: str, persona: str, *, http_client: Any = None, **kwargs: Any) -> Run:
    """One ``autocontinue.create``/``acreate`` call through a fresh client; never raises (see ``Run.error``)."""
    extra = {"http_client": http_client} if http_client is not None else {}
    stream = driver in ("stream", "astream")
    if stream:
        kwargs["stream"] = True
    run = Run()
    if driver in ("sync", "stream"):
        client = sync_client(emu, persona, **extra)
        try:
            result = autocontinue.create(client, **kwargs)
            if stream:
                for chunk in result:
                    run.take(chunk)
            run.end(result, stream=stream)
        except Exception as error:
            run.error = error
        finally:
            client.close()
        return run

    async def go() -> Run:
        aclient = async_client(emu, persona, **extra)
        try:
            result = await autocontinue.acreate(aclient, **kwargs)
            if stream:
                async for chunk in result:
                    run.take(chunk)
            run.end(result, stream=stream)
        except Exception as error:
            run.error = error
        finally:
            await aclient.close()
        return run

    return asyncio.run(go())


USER_MESSAGE: dict[str, Any] = {"role": "user", "content": "Tell me the story, please."}
STORY = (
    "The quick brown fox jumps over the lazy dog. It was a sunny day, and the fox -- being quick -- ran off into "
    'the forest!\n\nThe end.\n\nEpilogue:  two  spaces,\ttabs,   and 12345 numbers; "quotes" (parens) [brackets].'
)


# =================================================================================================================
# 2. Runaway servers

#: (persona, dialect): one of each way of continuing
RUNAWAY_DIALECTS = [
    ("openrouter", "prefill"),
    ("mistral", "prefix"),
    ("dashscope", "partial"),
    ("llamacpp", "continue_final_message"),
    ("openai", "instruction"),
]
#: the round in which each runaway mode starts repeating itself: "empty" adds nothing from round 1 on; "identical"
#: and "repeat" write something new in round 1 and repeat from round 2 on
REPETITION_STARTS = {"empty": 1, "identical": 2, "repeat": 2}
#: requests after which a runaway call that did not stop by itself meets the test's sentinel: enough for the
#: slowest legitimate stop (one-token rounds of a few characters each, until the repetition covers LOOP_FLOOR)
SENTINEL = 1500


def runaway_model(emu: Emulator, mode: str, sentinel_at: int) -> str:
    """A server that always answers "length" without progress; from request ``sentinel_at`` on it answers a 400
    (not retried), so that a call that does not stop by itself still ends and the test can say so."""
    sentinel = Fault("status", status=400, message="sentinel: the call did not stop by itself")
    faults = {n: sentinel for n in range(sentinel_at, sentinel_at + 3)}
    return emu.add_script(Script(target=STORY, runaway=mode, faults=faults))


def _stopped_at_once(run: Run) -> None:
    """The exact bound of a runaway: the first round that adds nothing ends the call; a server that adds repeated
    text is stopped at the first round after which the answer loops (LOOP_FLOOR characters repeated), not later."""
    assert run.trace.stop_cause == "no_progress", f"stopped for {run.trace.stop_cause!r}"
    rounds = run.trace.rounds
    text = run.text or ""
    last = rounds[-1]
    if last.chars_added == 0:
        # At most one round before it added nothing (a model rewriting the held word gets one more round). Under
        # `instruction`, a reply that was all repeat of the tail and filled its limit is also sent again with twice
        # the limit, at most MAX_GROWTHS times in a row: at 1-3 tokens a round, the "repeat" server's 20 characters
        # of tail are what a model repeating more than its round holds sends, until the round holds them all and
        # the same reply comes again.
        stalled = [r for r in rounds[:-1] if r.chars_added == 0]
        widened = [r for r in stalled if r.dialect == "instruction" and repeat_removed(r.seam)]
        assert len(stalled) - len(widened) <= 1, [(r.chars_added, r.seam) for r in rounds]
        assert len(widened) <= MAX_GROWTHS, [(r.chars_added, r.seam) for r in rounds]
    else:
        assert loops(text), f"stopped after {len(rounds)} rounds without a loop: {text[-80:]!r}"
        assert not loops(text[: len(text) - last.chars_added]), "the loop was there a round earlier"


def _ended_by_itself(run: Run, emu: Emulator, model: str) -> None:
    if run.error is not None:
        partial = getattr(run.error, "partial", None)
        trace = autocontinue.trace_of(partial) if partial is not None else None
        text = getattr(run.error, "text", "")
        pytest.fail(
            f"the call did not stop by itself: {len(emu.requests(model))} requests and "
            f"{len(trace.rounds) if trace else '?'} rounds until the test's sentinel ended it "
            f"({type(run.error).__name__}); the answer had grown to {len(text)} chars: {text[:80]!r}..."
        )


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("mode", list(REPETITION_STARTS))
@pytest.mark.parametrize(("persona", "dialect"), RUNAWAY_DIALECTS)
def test_runaway_server_stops_for_no_progress(
    remu: Emulator, persona: str, dialect: str, mode: str, driver: str
) -> None:
    """(Before the loop floor this asserted at most 2-3 rounds for every mode; a server that appends the same text
    is now stopped once the repetition covers LOOP_FLOOR characters, as real answers repeat legitimately.)"""
    model = runaway_model(remu, mode, sentinel_at=SENTINEL)
    run = drive(
        remu, driver, persona, model=model, messages=[USER_MESSAGE], max_tokens=8, dialect=dialect, retry=fast_retry(),
        max_rounds=10**6,
    )  # fmt: skip
    _ended_by_itself(run, remu, model)
    _stopped_at_once(run)


@pytest.mark.parametrize("max_tokens", [1, 3, 8])
@pytest.mark.parametrize("mode", list(REPETITION_STARTS))
@pytest.mark.parametrize(("persona", "dialect"), RUNAWAY_DIALECTS)
def test_runaway_ends_even_with_a_million_rounds_allowed(
    remu: Emulator, persona: str, dialect: str, mode: str, max_tokens: int
) -> None:
    """No budget, max_rounds=10**6: a server that never makes progress must still not hold the call forever, at
    any per-round limit (rounds of one to three tokens included)."""
    model = runaway_model(remu, mode, sentinel_at=SENTINEL)
    run = drive(
        remu, "sync", persona, model=model, messages=[USER_MESSAGE], max_tokens=max_tokens, dialect=dialect,
        retry=fast_retry(), max_rounds=10**6,
    )  # fmt: skip
    _ended_by_itself(run, remu, model)
    _stopped_at_once(run)


@pytest.mark.parametrize("driver", ["stream", "async", "astream"])
def test_runaway_ends_even_with_a_million_rounds_allowed_other_drivers(remu: Emulator, driver: str) -> None:
    for mode in REPETITION_STARTS:
        model = runaway_model(remu, mode, sentinel_at=SENTINEL)
        run = drive(
            remu, driver, "dashscope", model=model, messages=[USER_MESSAGE], max_tokens=8, dialect="partial",
            retry=fast_retry(), max_rounds=10**6,
        )  # fmt: skip
        _ended_by_itself(run, remu, model)
        _stopped_at_once(run)


def never_stop_policy() -> tenacity.Retrying:
    return tenacity.Retrying(
        stop=tenacity.stop_never,
        wait=wait_fixed(0.001),
        retry=retry_if_exception(autocontinue.retry.is_transient),
        reraise=True,
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_stop_never_policy_is_capped_per_round(remu: Emulator, driver: str) -> None:
    cap = autocontinue.retry.HARD_ATTEMPT_CAP
    always_503 = {n: Fault("status", status=503) for n in range(1, 3 * cap)}
    model = remu.add_script(Script(target=STORY, faults=always_503))
    run = drive(
        remu, driver, "openrouter", model=model, messages=[USER_MESSAGE], max_tokens=8, retry=never_stop_policy()
    )
    assert isinstance(run.error, openai.InternalServerError), f"expected the SDK's error, got {run.error!r}"
    assert not isinstance(run.error, autocontinue.ContinuationFailed)
    assert len(remu.requests(model)) == cap

    # After text: the round that keeps failing ends the call with its partial, after the same cap.
    after_text = {n: Fault("status", status=503) for n in range(2, 3 * cap)}
    model = remu.add_script(Script(target=STORY, faults=after_text))
    run = drive(
        remu, driver, "openrouter", model=model, messages=[USER_MESSAGE], max_tokens=8, retry=never_stop_policy()
    )
    assert isinstance(run.error, autocontinue.ContinuationFailed), repr(run.error)
    assert isinstance(run.error.__cause__, openai.InternalServerError)
    assert len(remu.requests(model)) == 1 + cap
    assert run.error.text and STORY.startswith(run.error.text)


@pytest.mark.parametrize("driver", ["stream", "astream"])
def test_stop_never_policy_with_streams_that_always_break_is_capped(remu: Emulator, driver: str) -> None:
    """Every stream breaks after one content chunk: each attempt keeps a little text, none completes the round."""
    cap = autocontinue.retry.HARD_ATTEMPT_CAP
    breaks = {n: Fault("drop", after_chunks=2) for n in range(2, 5 * cap)}
    model = remu.add_script(Script(target=STORY * 3, faults=breaks))
    run = drive(
        remu, driver, "openrouter", model=model, messages=[USER_MESSAGE], max_tokens=8, retry=never_stop_policy()
    )
    assert isinstance(run.error, autocontinue.ContinuationFailed), repr(run.error)
    assert len(remu.requests(model)) <= 1 + cap
    assert (STORY * 3).startswith(run.error.text)


# =================================================================================================================
# 3. Bad input: a ConfigurationError naming the argument, before any request


class _Answer(pydantic.BaseModel):
    text: str


MISSING = object()  # delete the key from the request


class Bad:
    """One wrong call: ``request`` overrides the good request (MISSING deletes a key), ``options`` are autocontinue's;
    ``word`` must appear in the error's message."""

    def __init__(self, name: str, word: str, *, options: dict[str, Any] | None = None, **request: Any) -> None:
        self.name, self.word, self.options, self.request = name, word, options or {}, request

    def __repr__(self) -> str:
        return self.name


#: the price of the script's model is filled in by the test (it is only known once the script is registered)
MODEL = "<model>"

BAD_CALLS = [
    # --- messages
    Bad("messages-missing", "messages", messages=MISSING),
    Bad("messages-none", "messages", messages=None),
    Bad("messages-empty", "messages", messages=[]),
    Bad("messages-str", "messages", messages="Tell me a story."),
    Bad("messages-dict", "messages", messages={"role": "user", "content": "hi"}),
    Bad("messages-non-dict-entry", "messages[0]", messages=["hi"]),
    Bad("messages-none-entry", "messages[1]", messages=[USER_MESSAGE, None]),
    Bad("message-bad-role", "role", messages=[{"role": "robot", "content": "hi"}]),
    Bad("message-no-role", "role", messages=[{"content": "hi"}]),
    Bad("user-content-none", "messages[0]", messages=[{"role": "user", "content": None}]),
    Bad("user-content-int", "content", messages=[{"role": "user", "content": 42}]),
    Bad(
        "trailing-assistant-content-list",
        "content",
        messages=[USER_MESSAGE, {"role": "assistant", "content": [{"type": "text", "text": "Once"}]}],
    ),
    Bad("trailing-assistant-content-int", "content", messages=[USER_MESSAGE, {"role": "assistant", "content": 7}]),
    Bad("only-an-assistant-prefix", "messages", messages=[{"role": "assistant", "content": "Once"}]),
    Bad(
        "trailing-assistant-tool-calls",
        "tool_calls",
        messages=[
            USER_MESSAGE,
            {"role": "assistant", "content": "x", "tool_calls": [{"id": "1", "type": "function"}]},
        ],
    ),
    # --- model
    Bad("model-missing", "model", model=MISSING),
    Bad("model-empty", "model", model=""),
    Bad("model-int", "model", model=4),
    # --- limits and request options
    Bad("max_tokens-0", "max_tokens", max_tokens=0),
    Bad("max_tokens-negative", "max_tokens", max_tokens=-1),
    Bad("max_tokens-str", "max_tokens", max_tokens="10"),
    Bad("max_tokens-bool", "max_tokens", max_tokens=True),
    Bad("max_completion_tokens-0", "max_completion_tokens", max_completion_tokens=0),
    Bad("n-0", "n", n=0),
    Bad("n-float", "n", n=1.5),
    Bad("n-2-with-stream", "stream", n=2, stream=True),
    Bad("unknown-kwarg", "frobnicate", frobnicate=1),
    Bad("extra_body-list", "extra_body", extra_body=["continue_final_message"]),
    Bad("stream-str", "stream", stream="yes"),
    Bad("response_format-pydantic-class", "response_format", response_format=_Answer),
    # --- autocontinue's options
    Bad("dialect-unknown", "dialect", options={"dialect": "klingon"}),
    Bad("dialect-int", "dialect", options={"dialect": 3}),
    Bad("max_rounds-0", "max_rounds", options={"max_rounds": 0}),
    Bad("max_rounds-float", "max_rounds", options={"max_rounds": 1.5}),
    Bad("max_rounds-none", "max_rounds", options={"max_rounds": None}),
    Bad("max_rounds-bool", "max_rounds", options={"max_rounds": True}),
    Bad("max_total_tokens-negative", "max_total_tokens", options={"max_total_tokens": -5}),
    Bad("max_total_tokens-str", "max_total_tokens", options={"max_total_tokens": "100"}),
    Bad("max_cost_usd-0", "max_cost_usd", options={"max_cost_usd": 0}),
    Bad("max_cost_usd-nan", "max_cost_usd", options={"max_cost_usd": math.nan}),
    Bad("max_cost_usd-inf", "max_cost_usd", options={"max_cost_usd": math.inf}),
    Bad("max_cost_usd-str", "max_cost_usd", options={"max_cost_usd": "0.5"}),
    Bad("cost-budget-unknown-price", "price", options={"max_cost_usd": 0.5}),
    Bad("prices-not-a-mapping", "price", options={"prices": [("gpt-4o", 1.0)]}),
    Bad("prices-value-str", "price", options={"prices": {MODEL: "cheap"}}),
    Bad("prices-tuple-too-short", "price", options={"prices": {MODEL: (1.0,)}}),
    Bad("prices-tuple-non-numeric", "price", options={"prices": {MODEL: (1.0, "free")}, "max_cost_usd": 0.5}),
    Bad("prices-nan", "price", options={"prices": {MODEL: (math.nan, 1.0)}, "max_cost_usd": 0.5}),
    Bad("prices-key-not-str", "price", options={"prices": {5: (1.0, 1.0)}}),
    Bad("retry-int", "retry", options={"retry": 3}),
    Bad("retry-stop-strategy", "retry", options={"retry": tenacity.stop_after_attempt(3)}),
    Bad("heal-str", "heal", options={"heal": "no"}),
    Bad("log_text-str", "log_text", options={"log_text": "no"}),
    Bad("reasoning_retry-str", "reasoning_retry", options={"reasoning_retry": "yes"}),
    Bad("stop_on_repeat-int", "stop_on_repeat", options={"stop_on_repeat": 0}),
    Bad("stop_when-int", "stop_when", options={"stop_when": 5}),
    Bad("stop_when-lambda", "stop_when", options={"stop_when": lambda state: None}),
    # --- more of the same kinds, each a mistake of its own
    Bad("messages-int", "messages", messages=3),
    Bad("messages-bytes", "messages", messages=b"Tell me a story."),
    Bad("message-list-entry", "messages[0]", messages=[["user", "hi"]]),
    Bad("message-role-int", "role", messages=[{"role": 5, "content": "hi"}]),
    Bad("message-role-none", "role", messages=[{"role": None, "content": "hi"}]),
    Bad("system-content-int", "content", messages=[{"role": "system", "content": 3}, USER_MESSAGE]),
    Bad("user-content-dict", "content", messages=[{"role": "user", "content": {"text": "hi"}}]),
    Bad("user-content-bytes", "content", messages=[{"role": "user", "content": b"hi"}]),
    Bad("user-content-parts-not-dicts", "content", messages=[{"role": "user", "content": ["hi", 3]}]),
    Bad("system-no-content", "messages[0]", messages=[{"role": "system"}, USER_MESSAGE]),
    Bad("developer-content-none", "messages[0]", messages=[{"role": "developer", "content": None}, USER_MESSAGE]),
    Bad(
        "trailing-assistant-content-dict",
        "content",
        messages=[USER_MESSAGE, {"role": "assistant", "content": {"text": "Once"}}],
    ),
    Bad("model-list", "model", model=["gpt-4o"]),
    Bad("model-bytes", "model", model=b"gpt-4o"),
    Bad("max_tokens-float", "max_tokens", max_tokens=10.5),
    Bad("max_completion_tokens-negative", "max_completion_tokens", max_completion_tokens=-3),
    Bad("max_completion_tokens-str", "max_completion_tokens", max_completion_tokens="8"),
    Bad("max_completion_tokens-bool", "max_completion_tokens", max_completion_tokens=True),
    Bad("n-negative", "n", n=-2),
    Bad("n-str", "n", n="2"),
    Bad("n-bool", "n", n=True),
    Bad("stream-int", "stream", stream=1),
    Bad("stream_options-str", "stream_options", stream=True, stream_options="include_usage"),
    Bad("stream_options-list", "stream_options", stream=True, stream_options=[("include_usage", True)]),
    Bad("extra_body-str", "extra_body", extra_body="continue_final_message"),
    Bad("response_format-str", "response_format", response_format="json"),
    Bad("response_format-int", "response_format", response_format=1),
    Bad("option-typo", "max_round", options={"max_round": 3}),
    Bad("max_rounds-negative", "max_rounds", options={"max_rounds": -1}),
    Bad("max_rounds-str", "max_rounds", options={"max_rounds": "8"}),
    Bad("max_total_tokens-0", "max_total_tokens", options={"max_total_tokens": 0}),
    Bad("max_total_tokens-float", "max_total_tokens", options={"max_total_tokens": 100.0}),
    Bad("max_total_tokens-bool", "max_total_tokens", options={"max_total_tokens": True}),
    Bad("max_cost_usd-negative", "max_cost_usd", options={"max_cost_usd": -0.5}),
    Bad("max_cost_usd-bool", "max_cost_usd", options={"max_cost_usd": True}),
    Bad("dialect-none", "dialect", options={"dialect": None}),
    Bad("dialect-list", "dialect", options={"dialect": ["prefill"]}),
    Bad("dialect-class-not-a-dialect", "dialect", options={"dialect": dict}),
    Bad("retry-str", "retry", options={"retry": "3 times"}),
    Bad("retry-function", "retry", options={"retry": lambda error: True}),
    Bad("heal-int", "heal", options={"heal": 1}),
    Bad("heal-none", "heal", options={"heal": None}),
    Bad("log_text-int", "log_text", options={"log_text": 1}),
    Bad("reasoning_retry-none", "reasoning_retry", options={"reasoning_retry": None}),
    Bad("stop_on_repeat-str", "stop_on_repeat", options={"stop_on_repeat": "no"}),
    Bad("stop_when-str", "stop_when", options={"stop_when": "max_rounds(3)"}),
    Bad("prices-negative", "price", options={"prices": {MODEL: (-1.0, 1.0)}}),
    Bad("prices-inf", "price", options={"prices": {MODEL: (1.0, math.inf)}}),
    Bad("prices-tuple-too-long", "price", options={"prices": {MODEL: (1.0, 1.0, 0.5, 9.0)}}),
    Bad("prices-none-value", "price", options={"prices": {MODEL: None}}),
]


def test_the_bad_input_matrix_covers_at_least_80_kinds() -> None:
    assert len(BAD_CALLS) >= 80 and len({case.name for case in BAD_CALLS}) == len(BAD_CALLS)


@pytest.fixture(scope="module")
def bad_model(remu: Emulator) -> str:
    return remu.add_script(Script(target=STORY))


def _bad_request(case: Bad, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    request: dict[str, Any] = {"model": model, "messages": [USER_MESSAGE], "max_tokens": 8}
    for key, value in case.request.items():
        if value is MISSING:
            request.pop(key, None)
        else:
            request[key] = value
    options: dict[str, Any] = {"retry": fast_retry()}
    for key, value in case.options.items():
        if key == "prices" and isinstance(value, dict):
            value = {model if k == MODEL else k: v for k, v in value.items()}
        options[key] = value
    return request, options


def assert_configuration_error(emu: Emulator, call: Any, word: str) -> None:
    """``call()`` raises a ConfigurationError (a ValueError) naming ``word``, raised by the library's own validation
    (no SDK or pydantic frame, no internal error chained to it), and nothing was sent."""
    before = emu.stats()["requests_total"]
    try:
        result = call()
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
    except Exception as error:
        caught: Exception = error
    else:
        sent = emu.stats()["requests_total"] - before
        pytest.fail(f"the wrong call was accepted ({sent} request(s) sent); it returned {type(result).__name__}")
    sent = emu.stats()["requests_total"] - before
    frames = traceback.extract_tb(caught.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    assert isinstance(caught, autocontinue.ConfigurationError), (
        f"expected ConfigurationError, got {type(caught).__module__}.{type(caught).__name__}: {caught} (raised at "
        f"{where}; {sent} request(s) sent)"
    )
    assert isinstance(caught, ValueError)
    message = str(caught)
    assert message and "\n" not in message, f"not one line: {message!r}"
    assert word.lower() in message.lower(), f"the message does not name {word!r}: {message!r}"
    chained = caught.__cause__ or (None if caught.__suppress_context__ else caught.__context__)
    assert chained is None, f"an internal error leaks through: {chained!r}"
    foreign = [f"{f.filename}:{f.lineno}" for f in frames if "site-packages" in f.filename]
    assert not foreign, f"raised from outside the library's validation: {foreign}"
    assert "/autocontinue/" in frames[-1].filename, f"raised at {where}"
    assert sent == 0, f"{sent} request(s) were sent before the error"


@pytest.mark.parametrize("path", ["wrap", "create"])
@pytest.mark.parametrize("case", BAD_CALLS, ids=repr)
def test_bad_call_is_a_configuration_error(remu: Emulator, bad_model: str, case: Bad, path: str) -> None:
    request, options = _bad_request(case, bad_model)
    client = sync_client(remu, "openrouter")
    try:
        if path == "wrap":
            assert_configuration_error(
                remu, lambda: autocontinue.wrap(client, **options).chat.completions.create(**request), case.word
            )
        else:
            assert_configuration_error(remu, lambda: autocontinue.create(client, **options, **request), case.word)
    finally:
        client.close()


@pytest.mark.parametrize("path", ["awrap", "acreate"])
@pytest.mark.parametrize("case", BAD_CALLS, ids=repr)
def test_bad_async_call_is_a_configuration_error(remu: Emulator, bad_model: str, case: Bad, path: str) -> None:
    request, options = _bad_request(case, bad_model)

    async def call() -> Any:
        aclient = async_client(remu, "openrouter")
        try:
            if path == "awrap":
                return await autocontinue.wrap(aclient, **options).chat.completions.create(**request)
            return await autocontinue.acreate(aclient, **options, **request)
        finally:
            await aclient.close()

    assert_configuration_error(remu, call, case.word)


@pytest.mark.parametrize(
    "target", [None, "https://api.openai.com/v1", object(), openai, 42], ids=["None", "str", "object", "module", "int"]
)
def test_wrap_takes_only_clients(remu: Emulator, target: Any) -> None:
    assert_configuration_error(remu, lambda: autocontinue.wrap(target), "client")


def test_wrap_rejects_the_completions_resource_and_unknown_options(remu: Emulator, bad_model: str) -> None:
    client = sync_client(remu, "openrouter")
    try:
        assert_configuration_error(remu, lambda: autocontinue.wrap(client.chat.completions), "client")
        assert_configuration_error(remu, lambda: autocontinue.wrap(client, max_round=3), "max_round")
    finally:
        client.close()


def test_create_with_an_async_client_and_acreate_with_a_sync_one(remu: Emulator, bad_model: str) -> None:
    good = {"model": bad_model, "messages": [USER_MESSAGE], "max_tokens": 8}
    aclient = async_client(remu, "openrouter")
    client = sync_client(remu, "openrouter")
    try:
        assert_configuration_error(remu, lambda: autocontinue.create(aclient, **good), "acreate")
        assert_configuration_error(remu, lambda: autocontinue.acreate(client, **good), "create")
        assert_configuration_error(remu, lambda: autocontinue.create(None, **good), "client")
    finally:
        client.close()
        asyncio.run(aclient.close())


# =================================================================================================================
# 4. Secrets: no key, no header, no message text in any log event (unless log_text=True, and then never the key)

SYSTEM_PROMPT = "You are Quentin Marmalade, archivist of the vermilion lighthouse on Zephyr Key."
USER_PROMPT = "Recite the ballad of the obsidian kumquat orchard, every stanza, verbatim."
SECRET_TARGET = (
    "Beneath obsidian kumquat boughs a zephyr hummed of vermilion tides; Quentin inked each stanza twice into amber "
    "ledgers, sealed them with quince wax, and hid the ledgers behind the lighthouse lantern where only gulls read. "
    "When winter came the orchard froze, yet every kumquat kept its glow like a tiny ember under frost."
)
SECRET_MESSAGES = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PROMPT}]
FORBIDDEN = (API_KEY, "SECRET-123", "authorization", "bearer")


def _windows(*texts: str, size: int = 12) -> set[str]:
    return {text[i : i + size] for text in texts for i in range(len(text) - size + 1)}


TEXT_WINDOWS = _windows(SYSTEM_PROMPT, USER_PROMPT, SECRET_TARGET)


def _leaks(rendered: str, *, text_allowed: bool) -> list[str]:
    found = [word for word in FORBIDDEN if word.lower() in rendered.lower()]
    if not text_allowed:
        found += sorted({rendered[i : i + 12] for i in range(len(rendered) - 11)} & TEXT_WINDOWS)[:3]
    return found


def _secret_scenarios(emu: Emulator, **options: Any) -> None:
    """Success, retries of every kind, a dialect fallback, failures after and before text; sync, async, streams."""
    kinds = dict(model=None, messages=SECRET_MESSAGES, max_tokens=8, retry=fast_retry(), **options)

    def model(**script: Any) -> str:
        return emu.add_script(Script(target=SECRET_TARGET, **script))

    flaky = {
        2: Fault("status", status=429, retry_after=0.01),
        4: Fault("status", status=500),
        5: Fault("drop"),
        7: Fault("truncated_json"),
        9: Fault("status", status=503, retry_after=0.02),
    }
    flaky_stream = {
        2: Fault("drop", after_chunks=3),
        4: Fault("malformed_sse", after_chunks=2),
        6: Fault("status", status=500),
    }
    fails_after_text = {n: Fault("status", status=503) for n in range(3, 12)}
    fails_at_once = {n: Fault("status", status=500) for n in range(1, 10)}
    runs = [
        ("sync", "openrouter", {"dialect": "prefill"}, {}),
        ("stream", "mistral", {"dialect": "prefix"}, {}),
        ("sync", "openrouter", {"dialect": "prefill"}, {"faults": flaky}),
        ("astream", "dashscope", {"dialect": "partial"}, {"faults": flaky_stream}),
        ("async", "claude46", {}, {}),  # unknown host: prefill refused -> instruction fallback
        ("stream", "claude46", {}, {}),
        ("sync", "openai", {"dialect": "instruction"}, {"faults": fails_after_text}),
        ("astream", "openrouter", {"dialect": "prefill"}, {"faults": fails_after_text}),
        ("sync", "openrouter", {"dialect": "prefill"}, {"faults": fails_at_once}),
    ]
    for driver, persona, extra, script in runs:
        run = drive(emu, driver, persona, **{**kinds, **extra, "model": model(**script)})
        if run.error is not None:
            assert isinstance(run.error, autocontinue.ContinuationFailed | openai.APIError), repr(run.error)


EXPECTED_EVENTS = {
    "autocontinue.round",
    "autocontinue.retry",
    "autocontinue.call",
    "autocontinue.dialect_fallback",
    "autocontinue.failed",
}


def test_no_secret_or_text_in_structlog_events(remu: Emulator) -> None:
    try:
        with structlog.testing.capture_logs() as events:
            _secret_scenarios(remu)
    finally:
        structlog.reset_defaults()
    assert {e["event"] for e in events} >= EXPECTED_EVENTS, "the scenarios did not produce every kind of event"
    leaks = [(e["event"], found) for e in events if (found := _leaks(repr(e), text_allowed=False))]
    assert not leaks, f"{len(leaks)} of {len(events)} events leak: {leaks[:5]}"


def test_no_secret_or_text_in_stdlib_log_records(remu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    structlog.reset_defaults()  # unconfigured structlog: events go to the stdlib logger "autocontinue"
    caplog.set_level(logging.DEBUG)
    _secret_scenarios(remu)
    records = [r for r in caplog.records if r.name.split(".")[0] == "autocontinue"]
    assert {r.getMessage().split(" ")[0] for r in records} >= EXPECTED_EVENTS, "not every kind of event was logged"
    leaks = []
    for record in records:
        rendered = f"{record.getMessage()} {record.__dict__!r}"
        if found := _leaks(rendered, text_allowed=False):
            leaks.append((record.getMessage()[:60], found))
    assert not leaks, f"{len(leaks)} of {len(records)} records leak: {leaks[:5]}"


def test_log_text_may_show_text_but_never_the_key(remu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    try:
        with structlog.testing.capture_logs() as events:
            _secret_scenarios(remu, log_text=True)
    finally:
        structlog.reset_defaults()
    caplog.set_level(logging.DEBUG)
    _secret_scenarios(remu, log_text=True)
    rendered = [repr(e) for e in events]
    rendered += [f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records if r.name.split(".")[0] == "autocontinue"]
    assert any(_windows(text) & TEXT_WINDOWS for text in rendered), "log_text=True logged no text at all"
    leaks = [found for text in rendered if (found := _leaks(text, text_allowed=True))]
    assert not leaks, f"the key or an auth header was logged: {leaks[:5]}"


# =================================================================================================================
# 5. Failure after round k: the partial is exactly the k rounds' text, with their usage

#: (persona, dialect): no echo, an echo (Mistral returns the prefix first), and the instruction
K_PERSONAS = [("openrouter", "prefill"), ("mistral", "prefix"), ("openai", "instruction")]
#: six failures, one round's worth of attempts: every transient status, Retry-After or not; the last is a 500
EXHAUST = [
    Fault("status", status=503),
    Fault("status", status=429, retry_after=0.01),
    Fault("status", status=500),
    Fault("status", status=503, retry_after=0.02),
    Fault("status", status=429, retry_after=0.0),
    Fault("status", status=500),
]


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize(("persona", "dialect"), K_PERSONAS)
def test_failure_after_k_rounds_keeps_exactly_their_text(
    remu: Emulator, persona: str, dialect: str, k: int, driver: str
) -> None:
    faults = {k + 1 + i: fault for i, fault in enumerate(EXHAUST)}
    model = remu.add_script(Script(target=STORY, faults=faults))
    recorder = Recorder()
    http_client = recorder.aclient() if driver.startswith("a") else recorder.client()
    run = drive(
        remu, driver, persona, http_client=http_client, model=model, messages=[USER_MESSAGE], max_tokens=6,
        dialect=dialect, retry=fast_retry(len(EXHAUST)),
    )  # fmt: skip
    error = run.error
    assert type(error) is autocontinue.ContinuationFailed, f"expected ContinuationFailed, got {error!r}"
    assert isinstance(error.__cause__, openai.InternalServerError) and error.cause is error.__cause__

    log = remu.requests(model)
    answered = recorder.ok()
    assert len(log) == k + len(EXHAUST), "the round after the k-th was not tried exactly once per allowed attempt"
    assert len(answered) == k

    # The text after round k, as the emulator wrote it: the prefix it was sent plus its reply (minus any echo).
    sent = sent_prefix(log[k - 1])
    assert sent is not None
    reply = answered[-1]["content"]
    expected = sent + (reply[len(sent) :] if sent and reply.startswith(sent) else reply)
    partial = error.partial
    assert error.text == partial.choices[0].message.content == expected
    assert STORY.startswith(expected) and len(expected) < len(STORY)

    trace = partial.continuation
    assert trace.stop_cause == "error"
    assert partial.choices[0].finish_reason == "length"
    assert [r.finish_reason for r in trace.rounds] == ["length"] * k
    assert sum(r.chars_added for r in trace.rounds) == len(expected)

    usage = partial.usage
    assert usage is not None
    reported = [r["usage"] for r in answered]
    assert usage.prompt_tokens == sum(u["prompt_tokens"] for u in reported)
    assert usage.completion_tokens == sum(u["completion_tokens"] for u in reported)
    assert usage.total_tokens == sum(u["total_tokens"] for u in reported)
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in reported)
    assert (usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0) == cached

    if driver in ("stream", "astream"):
        assert run.delivered == expected, (
            f"the caller received {run.delivered!r} before the error, but the partial is {expected!r}"
        )


# =================================================================================================================
# Reproductions of what the chaos run found (each a plain, deterministic call)


def _text_of(run: Run) -> str:
    assert run.error is None, repr(run.error)
    return run.text or ""


@pytest.mark.parametrize("driver", ["sync", "stream"])
@pytest.mark.parametrize(
    ("persona", "dialect", "max_tokens", "target"),
    [
        ("openai", "instruction", 1, "Some longer opening text, then a, b, c, d, e, f."),
        ("deepseek-beta", "prefix", 1, "'single' \n3.14159   more"),
        ("claude46", "instruction", 3, "A line of intro text:\n  then more:\n  "),
    ],
)
def test_stream_delivers_text_decided_at_a_rounds_end(
    remu: Emulator, persona: str, dialect: str, max_tokens: int, target: str, driver: str
) -> None:
    """Text a seam stage holds until the reply ends (a short reply that could still be a repeated tail or an echo)
    is part of the answer and must reach a stream too."""
    model = remu.add_script(Script(target=target))
    run = drive(
        remu, driver, persona, model=model, messages=[USER_MESSAGE], max_tokens=max_tokens, dialect=dialect,
        retry=fast_retry(), max_rounds=200,
    )  # fmt: skip
    assert _text_of(run) == target
    assert sum(r.chars_added for r in run.trace.rounds) == len(target)


@pytest.mark.parametrize(("persona", "dialect"), [("openrouter", "prefill"), ("dashscope", "partial")])
def test_doubled_word_is_not_a_runaway(remu: Emulator, persona: str, dialect: str) -> None:
    """One token per round: two rounds that say the same word are ordinary text, not a model stuck in a loop."""
    for target, max_tokens in [("I said bye bye to everyone.", 1), ("Ha ha ha ha ha ha ha ha, very funny.", 2)]:
        model = remu.add_script(Script(target=target))
        run = drive(
            remu, "sync", persona, model=model, messages=[USER_MESSAGE], max_tokens=max_tokens, dialect=dialect,
            retry=fast_retry(), max_rounds=200,
        )  # fmt: skip
        assert _text_of(run) == target, f"stopped for {run.trace.stop_cause!r}"


@pytest.mark.parametrize("driver", ["sync", "stream"])
@pytest.mark.parametrize("max_tokens", [4, 16])
def test_auto_dialect_recovers_from_a_server_that_ignores_prefill(remu: Emulator, max_tokens: int, driver: str) -> None:
    """Unknown host, server without prefill (it answers the trailing assistant message by starting over): the reply
    reproduces the text so far, which looks like an echo of it; the call must fall back, not stop short."""
    model = remu.add_script(Script(target=STORY))
    run = drive(
        remu, driver, "openai", model=model, messages=[USER_MESSAGE], max_tokens=max_tokens, retry=fast_retry(),
        max_rounds=200,
    )  # fmt: skip
    assert _text_of(run) == STORY, f"stopped for {run.trace.stop_cause!r} after {len(run.trace.rounds)} rounds"
    assert run.trace.fallbacks


@pytest.mark.parametrize("max_tokens", [1, 2])
@pytest.mark.parametrize("persona", ["anthropic", "openrouter"])
def test_prefill_rounds_of_one_or_two_tokens_get_past_whitespace(remu: Emulator, persona: str, max_tokens: int) -> None:
    """The prefill dialect never sends trailing whitespace (Anthropic refuses it), so a round must regenerate it; at
    one or two tokens per round that round has no room left for anything new, yet the model is not stuck."""
    target = "Hello world\n\n  Second line here."
    model = remu.add_script(Script(target=target))
    run = drive(
        remu, "sync", persona, model=model, messages=[USER_MESSAGE], max_tokens=max_tokens, dialect="prefill",
        retry=fast_retry(), max_rounds=200,
    )  # fmt: skip
    assert _text_of(run) == target, f"stopped for {run.trace.stop_cause!r} after {len(run.trace.rounds)} rounds"
