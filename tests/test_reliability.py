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
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import autocontinue
from tests.chaos import (
    Call,
    FastEmulator,
    Outcome,
    check_against_log,
    chunked,
    make_plan,
    run_async,
    run_sync,
)

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
WAVE = 130  # calls per wave


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
    report = "\n\n".join(f"{o.call.describe()}\n  -> {o.kind}: " + "; ".join(o.problems) for o in bad[:8])
    assert not bad, f"{len(bad)} of {len(outcomes)} chaos calls went wrong; the first ones:\n{report}"


async def _run_chaos(emu: FastEmulator, calls: list[Call]) -> list[Outcome]:
    """Waves of calls; in each, the sync calls run one after another in a worker thread while the async ones run
    together on the event loop (asyncio.gather), so sync, async and streaming traffic overlap."""
    personas = {c.persona for c in calls}
    sync_clients = {p: sync_client(emu, p) for p in personas}
    async_clients = {p: async_client(emu, p) for p in personas}
    outcomes: list[Outcome] = []

    def sync_part(wave: list[Call]) -> list[Outcome]:
        return [run_sync(c, sync_clients[c.persona]) for c in wave]

    try:
        for wave in chunked(calls, WAVE):
            synchronous = [c for c in wave if c.driver.startswith("sync")]
            asynchronous = [c for c in wave if c.driver.startswith("async")]
            done_sync, *done_async = await asyncio.gather(
                asyncio.to_thread(sync_part, synchronous),
                *(run_async(c, async_clients[c.persona]) for c in asynchronous),
            )
            outcomes += done_sync
            outcomes += done_async
    finally:
        for client in sync_clients.values():
            client.close()
        for aclient in async_clients.values():
            await aclient.close()
    return outcomes
