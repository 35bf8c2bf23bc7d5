"""Reliability: chaos, runaway servers, bad input, secrets in logs, and failure after k rounds.

Everything goes through the real ``openai`` SDK over real HTTP to the provider emulator (tests/emulator), served
by :class:`tests.chaos.FastEmulator` in its own process; nothing is mocked. Randomness is seeded
(``random.Random(1234)``), so a failure reproduces: its message names the call, its script and its faults.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import tenacity
from tenacity import retry_if_exception, wait_fixed

import autocontinue
from tests.chaos import (
    Call,
    FastEmulator,
    Outcome,
    Recorder,
    check_against_log,
    chunked,
    fast_retry,
    make_plan,
    run_async,
    run_sync,
    sent_prefix,
)
from tests.emulator import Fault, Script

API_KEY = "sk-test-SECRET-123"
TIMEOUT = 1.0  # client timeout; "delay" faults sleep 1.5 s


@pytest.fixture(scope="module")
def remu() -> Iterator[FastEmulator]:
    with FastEmulator(subprocess=True) as emulator:
        yield emulator


def sync_client(emu: FastEmulator, persona: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.base_url(persona), api_key=API_KEY, timeout=TIMEOUT, **kwargs)


def async_client(emu: FastEmulator, persona: str, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=emu.base_url(persona), api_key=API_KEY, timeout=TIMEOUT, **kwargs)


# =================================================================================================================
# 1. Chaos

#: calls per driver (1,040 in all)
CHAOS_CALLS = {"sync": 300, "sync-stream": 220, "async": 300, "async-stream": 220}
FAULT_RATE = 0.19  # of each call's requests, before the bursts; ~20 % of all requests end up faulted
BATCH = 130  # calls per batch
SYNC_THREADS = 2  # worker threads for the sync calls of a batch
ASYNC_CONCURRENCY = 40  # async calls in flight at once


def test_chaos(remu: FastEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(1234)
    drivers = [driver for driver, n in CHAOS_CALLS.items() for _ in range(n)]
    rng.shuffle(drivers)
    calls: list[Call] = []
    for index, driver in enumerate(drivers):
        # A delay fault costs a whole client timeout: plenty in async waves (they overlap), few in sync ones.
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
        f"  untyped: {sum(n for k, n in kinds.items() if k.startswith('untyped'))}; calls with problems: {len(bad)}",
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


async def _run_chaos(emu: FastEmulator, calls: list[Call]) -> list[Outcome]:
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


DRIVERS = ["sync", "async", "stream", "astream"]


def drive(emu: FastEmulator, driver: str, persona: str, *, http_client: Any = None, **kwargs: Any) -> Run:
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
                    run.chunks.append(chunk)
                    if chunk.choices:
                        run.delivered += chunk.choices[0].delta.content or ""
                run.text, run.trace = run.delivered, result.continuation
            else:
                run.completion, run.trace = result, result.continuation
                run.text = result.choices[0].message.content
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
                    run.chunks.append(chunk)
                    if chunk.choices:
                        run.delivered += chunk.choices[0].delta.content or ""
                run.text, run.trace = run.delivered, result.continuation
            else:
                run.completion, run.trace = result, result.continuation
                run.text = result.choices[0].message.content
        except Exception as error:
            run.error = error
        finally:
            await aclient.close()
        return run

    return asyncio.run(go())


USER_MESSAGE: dict[str, Any] = {"role": "user", "content": "Tell me the story, please."}
STORY = (
    "The quick brown fox jumps over the lazy dog. It was a sunny day, and the fox -- being quick -- ran off into "
    "the forest!\n\nThe end.\n\nEpilogue:  two  spaces,\ttabs,   and 12345 numbers; \"quotes\" (parens) [brackets]."
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


def runaway_model(emu: FastEmulator, mode: str, sentinel_at: int) -> str:
    """A server that always answers "length" without progress; from request ``sentinel_at`` on it answers a 400
    (not retried), so that a call that does not stop by itself still ends and the test can say so."""
    sentinel = Fault("status", status=400, message="sentinel: the call did not stop by itself")
    faults = {n: sentinel for n in range(sentinel_at, sentinel_at + 3)}
    return emu.add_script(Script(target=STORY, runaway=mode, faults=faults))


def _ended_by_itself(run: Run, emu: FastEmulator, model: str) -> None:
    if run.error is not None:
        rounds = len(trace.rounds) if (trace := autocontinue.trace_of(getattr(run.error, "partial", None))) else "?"
        pytest.fail(
            f"the call did not stop by itself: {len(emu.requests(model))} requests and {rounds} rounds until the "
            f"test's sentinel ended it with {type(run.error).__name__}: {str(run.error)[:200]}"
        )


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("mode", list(REPETITION_STARTS))
@pytest.mark.parametrize(("persona", "dialect"), RUNAWAY_DIALECTS)
def test_runaway_server_stops_for_no_progress(
    remu: FastEmulator, persona: str, dialect: str, mode: str, driver: str
) -> None:
    model = runaway_model(remu, mode, sentinel_at=40)
    run = drive(
        remu, driver, persona, model=model, messages=[USER_MESSAGE], max_tokens=8, dialect=dialect, retry=fast_retry()
    )
    _ended_by_itself(run, remu, model)
    rounds = [(r.chars_added, r.seam) for r in run.trace.rounds]
    assert run.trace.stop_cause == "no_progress", f"stopped for {run.trace.stop_cause!r} after rounds {rounds}"
    limit = REPETITION_STARTS[mode] + 1
    assert len(run.trace.rounds) <= limit, f"{len(rounds)} rounds (at most {limit} expected): {rounds}"


@pytest.mark.parametrize("mode", list(REPETITION_STARTS))
@pytest.mark.parametrize(("persona", "dialect", "driver"), [(*pd, "sync") for pd in RUNAWAY_DIALECTS])
def test_runaway_ends_even_with_a_million_rounds_allowed(
    remu: FastEmulator, persona: str, dialect: str, driver: str, mode: str
) -> None:
    model = runaway_model(remu, mode, sentinel_at=60)
    run = drive(
        remu,
        driver,
        persona,
        model=model,
        messages=[USER_MESSAGE],
        max_tokens=8,
        dialect=dialect,
        retry=fast_retry(),
        max_rounds=10**6,
    )
    _ended_by_itself(run, remu, model)
    assert run.trace.stop_cause == "no_progress"


def test_runaway_stream_ends_even_with_a_million_rounds_allowed(remu: FastEmulator) -> None:
    for mode in REPETITION_STARTS:
        model = runaway_model(remu, mode, sentinel_at=60)
        run = drive(
            remu, "astream", "openrouter", model=model, messages=[USER_MESSAGE], max_tokens=8, dialect="prefill",
            retry=fast_retry(), max_rounds=10**6,
        )  # fmt: skip
        _ended_by_itself(run, remu, model)
        assert run.trace.stop_cause == "no_progress", mode


def never_stop_policy() -> tenacity.Retrying:
    return tenacity.Retrying(
        stop=tenacity.stop_never,
        wait=wait_fixed(0.001),
        retry=retry_if_exception(autocontinue.is_transient),
        reraise=True,
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_stop_never_policy_is_capped_per_round(remu: FastEmulator, driver: str) -> None:
    cap = autocontinue.retry.HARD_ATTEMPT_CAP
    always_503 = {n: Fault("status", status=503) for n in range(1, 3 * cap)}
    model = remu.add_script(Script(target=STORY, faults=always_503))
    run = drive(remu, driver, "openrouter", model=model, messages=[USER_MESSAGE], max_tokens=8, retry=never_stop_policy())
    assert isinstance(run.error, openai.InternalServerError), f"expected the SDK's error, got {run.error!r}"
    assert not isinstance(run.error, autocontinue.ContinuationFailed)
    assert len(remu.requests(model)) == cap

    # After text: the round that keeps failing ends the call with its partial, after the same cap.
    after_text = {n: Fault("status", status=503) for n in range(2, 3 * cap)}
    model = remu.add_script(Script(target=STORY, faults=after_text))
    run = drive(remu, driver, "openrouter", model=model, messages=[USER_MESSAGE], max_tokens=8, retry=never_stop_policy())
    assert isinstance(run.error, autocontinue.ContinuationFailed), repr(run.error)
    assert isinstance(run.error.__cause__, openai.InternalServerError)
    assert len(remu.requests(model)) == 1 + cap
    assert run.error.text and STORY.startswith(run.error.text)


@pytest.mark.parametrize("driver", ["stream", "astream"])
def test_stop_never_policy_with_streams_that_always_break_is_capped(remu: FastEmulator, driver: str) -> None:
    """Every stream breaks after one content chunk: each attempt keeps a little text, none completes the round."""
    cap = autocontinue.retry.HARD_ATTEMPT_CAP
    breaks = {n: Fault("drop", after_chunks=2) for n in range(2, 5 * cap)}
    model = remu.add_script(Script(target=STORY * 3, faults=breaks))
    run = drive(remu, driver, "openrouter", model=model, messages=[USER_MESSAGE], max_tokens=8, retry=never_stop_policy())
    assert isinstance(run.error, autocontinue.ContinuationFailed), repr(run.error)
    assert len(remu.requests(model)) <= 1 + cap
    assert (STORY * 3).startswith(run.error.text)
