"""4. Concurrency: 500 concurrent async continued calls of exactly 4 rounds each, against the same 2,000 requests
made by hand.

One shared ``AsyncOpenAI`` client, its pool opened wide enough for every call at once (``httpx2.Limits`` with
1,000 connections, all kept alive: the SDK's default keeps only 100 alive), talks to the emulator in its own
process (persona vLLM, dialect ``continue_final_message``). The target and ``max_tokens`` are chosen, by probing,
so that every call takes exactly 4 rounds (healing regenerates a word per round, so a round adds a little less
than ``max_tokens``).

Wrapped: 500 ``wrapped.chat.completions.create`` tasks at once. Raw: the very requests the wrapped run sent (read
back from the emulator's request log, grouped per call by their unique user message), replayed by 500 tasks, each
sending its call's 4 requests one after another with the raw SDK. Runs alternate wrapped/raw after a warm-up; the
throughput ratio (requests per second, wrapped/raw) of each pair is reported and the median is the headline.

Event-loop stalls: during every run a monitor task sleeps 1 ms in a loop and records how late it wakes. With 500
busy tasks the loop's iterations are long whoever runs in them, so the raw runs' lateness is the baseline. Two
finer measures come from instrumented runs (60 calls, the pool still holding every connection): the longest
single task step (asyncio's debug timing of each callback: from a task's resumption to its next ``await``),
wrapped and raw; and the longest single call of the core (``start``/``on_response``, which never await), in CPU
time and wall time (which includes preemption by other processes).

The SDK's connection pool (httpcore) scans every open connection for each request it places, so with 500
connections the SDK's own CPU cost per request is several milliseconds, the same on both sides.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import time
from collections import defaultdict
from typing import Any

import httpx2
import openai
from openai.resources.chat.completions import AsyncCompletions

import autocontinue

from ._common import Row, cli, median, synthetic_text
from ._emulator import server_cpu_seconds, server_pid, start_emulator
from ._loop_stalls import CALL_TASK, LoopMonitor, longest_callbacks, time_core_steps

GOAL_THROUGHPUT = 0.95
GOAL_STALL_MS = 5.0
K = 64  # max_tokens per round
ROUNDS = 4
PERSONA = "vllm"
DIALECT = "continue_final_message"
_SDK_PARAMS = frozenset(inspect.signature(AsyncCompletions.create).parameters) - {"self"}


def _messages(i: int, tag: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Story number {i} ({tag}), please."}]


def _client(base_url: str, connections: int) -> openai.AsyncOpenAI:
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    http = openai.DefaultAsyncHttpxClient(limits=limits, timeout=httpx2.Timeout(120.0))
    return openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, http_client=http)


def _wrap(client: openai.AsyncOpenAI) -> Any:
    return autocontinue.wrap(client, max_rounds=8, max_total_tokens=10_000, dialect=DIALECT)


async def _rounds_for(emu: Any, wrapped: Any, target: str) -> int:
    from tests.support.emulator import Script

    model = emu.add_script(Script(target=target))
    reply = await wrapped.chat.completions.create(model=model, messages=_messages(0, "probe"), max_tokens=K)
    assert reply.choices[0].message.content == target
    return len(reply.continuation.rounds)


async def _choose_target(emu: Any, wrapped: Any) -> tuple[str, int]:
    """A target (a prefix of synthetic text, in emulator tokens) whose continued call takes exactly ROUNDS rounds:
    the middle of the range of lengths that do."""
    from tests.support.emulator import tokenize

    tokens = tokenize(synthetic_text(20 * K * ROUNDS, seed=41))

    async def rounds(n: int) -> int:
        return await _rounds_for(emu, wrapped, "".join(tokens[:n]))

    async def first_with(at_least: int) -> int:
        lo, hi = 1, len(tokens)  # rounds(hi) >= at_least is assumed
        while lo < hi:
            mid = (lo + hi) // 2
            if await rounds(mid) >= at_least:
                hi = mid
            else:
                lo = mid + 1
        return lo

    low = await first_with(ROUNDS)
    high = await first_with(ROUNDS + 1)
    n = (low + high - 1) // 2
    assert await rounds(n) == ROUNDS
    return "".join(tokens[:n]), n


async def _timed_run(tasks: list[Any], pid: int | None) -> dict[str, Any]:
    gc.collect()
    s0 = server_cpu_seconds(pid)
    c0 = time.process_time()
    with LoopMonitor() as monitor:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(asyncio.create_task(t, name=f"{CALL_TASK}{i}") for i, t in enumerate(tasks)))
        wall = time.perf_counter() - t0
    c1 = time.process_time()
    s1 = server_cpu_seconds(pid)
    return {
        "results": results,
        "wall_s": wall,
        "client_cpu_s": c1 - c0,
        "server_cpu_s": (s1 - s0) if s0 is not None and s1 is not None else None,
        "stall": monitor.summary(),
    }


async def _wrapped_run(emu: Any, wrapped: Any, target: str, calls: int, tag: str) -> tuple[dict[str, Any], str]:
    from tests.support.emulator import Script

    model = emu.add_script(Script(target=target))

    async def one(i: int) -> Any:
        return await wrapped.chat.completions.create(model=model, messages=_messages(i, tag), max_tokens=K)

    run = await _timed_run([one(i) for i in range(calls)], server_pid(emu))
    for reply in run["results"]:
        assert reply.choices[0].message.content == target, "a wrapped call returned the wrong text"
        assert len(reply.continuation.rounds) == ROUNDS, f"a call took {len(reply.continuation.rounds)} rounds"
    run["requests"] = calls * ROUNDS
    del run["results"]
    return run, model


def _recorded_calls(emu: Any, model: str) -> list[list[dict[str, Any]]]:
    """The wrapped run's request bodies, grouped per call (by the user message), in the order they were sent."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in emu.requests(model):
        body = entry["body"]
        groups[body["messages"][0]["content"]].append(body)
    return list(groups.values())


def _sdk_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in body.items() if k in _SDK_PARAMS}
    extra = {k: v for k, v in body.items() if k not in _SDK_PARAMS}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


async def _raw_run(emu: Any, client: openai.AsyncOpenAI, calls: list[list[dict[str, Any]]]) -> dict[str, Any]:
    prepared = [[_sdk_kwargs(body) for body in bodies] for bodies in calls]

    async def one(requests: list[dict[str, Any]]) -> int:
        for kwargs in requests:
            await client.chat.completions.create(**kwargs)
        return len(requests)

    run = await _timed_run([one(r) for r in prepared], server_pid(emu))
    run["requests"] = sum(run.pop("results"))
    return run


async def _warm_up(client: openai.AsyncOpenAI, target_model: str, calls: int) -> None:
    """Open the pool's connections: one first-round request per call, all at once."""

    async def one(i: int) -> None:
        await client.chat.completions.create(model=target_model, messages=_messages(i, "warm-up"), max_tokens=K)

    await asyncio.gather(*(one(i) for i in range(calls)))


async def _main(quick: bool) -> dict[str, Any]:
    from tests.support.emulator import Script

    calls = 100 if quick else 500
    reps = 1 if quick else 4
    instrumented_calls = 30 if quick else 60
    with start_emulator() as emu:
        client = _client(emu.base_url(PERSONA), connections=2 * calls)
        wrapped = _wrap(client)
        try:
            target, target_tokens = await _choose_target(emu, wrapped)
            await _warm_up(client, emu.add_script(Script(target=target)), calls)
            pairs = []
            recorded: list[list[dict[str, Any]]] = []
            for rep in range(reps):
                # The raw side replays the requests of the first wrapped run (the same in every run but for the user
                # message), so that run comes first; after it the order alternates, so drift in the machine's load
                # favours neither side.
                if rep % 2 == 0:
                    ours, model = await _wrapped_run(emu, wrapped, target, calls, f"rep {rep}")
                    if not recorded:
                        recorded = _recorded_calls(emu, model)
                        assert len(recorded) == calls and all(len(r) == ROUNDS for r in recorded)
                    raw = await _raw_run(emu, client, recorded)
                else:
                    raw = await _raw_run(emu, client, recorded)
                    ours, _ = await _wrapped_run(emu, wrapped, target, calls, f"rep {rep}")
                assert raw["requests"] == ours["requests"]
                pairs.append({"wrapped": ours, "raw": raw})
                print(
                    f"concurrency rep {rep}: wrapped {ours['requests'] / ours['wall_s']:.0f} req/s, raw "
                    f"{raw['requests'] / raw['wall_s']:.0f} req/s; loop lateness max wrapped "
                    f"{ours['stall']['max_ms']} ms, raw {raw['stall']['max_ms']} ms"
                )
            # Instrumented runs (fewer calls; the pool still holds every connection): the core's own steps, and
            # every task step that held the loop for more than 1 ms, wrapped and raw.
            core_steps: dict[str, Any] = {}

            async def wrapped_once() -> None:
                core_steps.update(
                    await time_core_steps(
                        lambda: _wrapped_run(emu, wrapped, target, instrumented_calls, "instrumented")
                    )
                )

            async def raw_once() -> None:
                await _raw_run(emu, client, recorded[:instrumented_calls])

            callbacks = {"wrapped": await longest_callbacks(wrapped_once), "raw": await longest_callbacks(raw_once)}
            print(
                "concurrency: longest task step (asyncio debug timing) wrapped "
                f"{callbacks['wrapped']['longest_ms']} ms, raw {callbacks['raw']['longest_ms']} ms; "
                f"longest core step {core_steps}"
            )
            stats = emu.stats()
        finally:
            await client.close()

    for pair in pairs:
        for side in ("wrapped", "raw"):
            run = pair[side]
            run["throughput_rps"] = round(run["requests"] / run["wall_s"], 1)
            run["client_cpu_ms_per_request"] = round(1000 * run["client_cpu_s"] / run["requests"], 3)
            if run["server_cpu_s"] is not None:
                run["server_cpu_ms_per_request"] = round(1000 * run["server_cpu_s"] / run["requests"], 3)
        pair["throughput_ratio"] = round(pair["wrapped"]["throughput_rps"] / pair["raw"]["throughput_rps"], 4)
        pair["client_cpu_ratio"] = round(
            pair["wrapped"]["client_cpu_ms_per_request"] / pair["raw"]["client_cpu_ms_per_request"], 4
        )
    ratio = median([p["throughput_ratio"] for p in pairs])
    cpu_ratio = median([p["client_cpu_ratio"] for p in pairs])
    stall_wrapped = max(p["wrapped"]["stall"]["max_ms"] for p in pairs)
    stall_raw = max(p["raw"]["stall"]["max_ms"] for p in pairs)
    core_max = max(v["max_ms"] for v in core_steps.values())
    core_max_cpu = max(v["max_cpu_ms"] for v in core_steps.values())
    tput_w = median([p["wrapped"]["throughput_rps"] for p in pairs])
    tput_r = median([p["raw"]["throughput_rps"] for p in pairs])
    cpu_w = median([p["wrapped"]["client_cpu_ms_per_request"] for p in pairs])
    cpu_r = median([p["raw"]["client_cpu_ms_per_request"] for p in pairs])
    rows = [
        Row(
            "concurrency",
            f"throughput, {calls} concurrent calls x {ROUNDS} rounds, wrapped/raw replay (median of {reps})",
            f"{tput_w:.0f} req/s",
            f"{tput_r:.0f} req/s",
            ratio,
            f">= {GOAL_THROUGHPUT}",
            ratio >= GOAL_THROUGHPUT,
        ).as_dict(),
        Row(
            "concurrency",
            "client CPU per request, wrapped/raw",
            f"{cpu_w:.2f} ms",
            f"{cpu_r:.2f} ms",
            cpu_ratio,
            "info",
            None,
        ).as_dict(),
        Row(
            "concurrency",
            "longest event-loop stall (1 ms sleeper's lateness), wrapped run vs raw run",
            f"{stall_wrapped:.1f} ms",
            f"{stall_raw:.1f} ms",
            stall_wrapped / stall_raw if stall_raw else None,
            f"< {GOAL_STALL_MS} ms",
            stall_wrapped < GOAL_STALL_MS,
        ).as_dict(),
        Row(
            "concurrency",
            "longest single task step holding the loop (asyncio debug timing), wrapped vs raw run",
            f"{callbacks['wrapped']['longest_ms']:.1f} ms",
            f"{callbacks['raw']['longest_ms']:.1f} ms",
            callbacks["wrapped"]["longest_ms"] / callbacks["raw"]["longest_ms"]
            if callbacks["raw"]["longest_ms"]
            else None,
            "info",
            None,
        ).as_dict(),
        Row(
            "concurrency",
            "longest single core call (start/on_response) holding the loop, CPU (wall, preemption included)",
            f"{core_max_cpu:.2f} ms ({core_max:.2f} ms)",
            "-",
            None,
            f"< {GOAL_STALL_MS} ms",
            core_max_cpu < GOAL_STALL_MS,
        ).as_dict(),
    ]
    return {
        "calls": calls,
        "rounds_per_call": ROUNDS,
        "requests_per_run": calls * ROUNDS,
        "max_tokens": K,
        "target_tokens": target_tokens,
        "target_chars": len(target),
        "persona": PERSONA,
        "dialect": DIALECT,
        "pool": {"max_connections": 2 * calls, "max_keepalive_connections": 2 * calls},
        "goal_throughput_ratio": GOAL_THROUGHPUT,
        "goal_stall_ms": GOAL_STALL_MS,
        "pairs": pairs,
        "throughput_ratio_median": ratio,
        "instrumented_calls": instrumented_calls,
        "core_steps": core_steps,
        "longest_task_steps": callbacks,
        "emulator_stats": stats,
        "rows": rows,
    }


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(_main(quick))


def main() -> int:
    return cli("concurrency", run)


if __name__ == "__main__":
    raise SystemExit(main())
