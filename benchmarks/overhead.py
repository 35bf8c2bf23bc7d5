"""1. Overhead: a wrapped ``create()`` against the raw SDK's, on a reply that needs no continuation.

Both go through one ``OpenAI`` client (one connection pool) to the emulator running in its own process, so the
server does not compete with the client for the GIL (with TCP_NODELAY: see ``benchmarks._emulator``).
Calls alternate raw/wrapped (the order flips every pair, so drift and warm caches favour neither), after a warm-up;
the headline is the median of the per-pair ratios wrapped/raw of wall time. The client's own CPU time per call
(``time.thread_time``) is reported too: with a local server it is most of the wall time, so it shows the same
thing from the other side.

The reply is untruncated and has no delay: the worst case for a ratio, since nothing but client and server work is
timed. If the ratio misses its goal, cProfile says where the wrapped path spends its time, and the core alone
(``Continuation`` from construction to ``Done``, fed the same reply) is timed in a tight loop.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import openai

import autocontinue
from autocontinue.client import make_settings
from autocontinue.core import Continuation, Done

from ._common import Row, cli, median, percentile, synthetic_text
from ._profiling import profile_calls, render

GOAL = 1.02
#: reply length in characters (about 400 emulator tokens): a typical untruncated answer
REPLY_CHARS = 2000
MESSAGES = [{"role": "user", "content": "Write a paragraph about rivers."}]


def run(quick: bool) -> dict[str, Any]:
    from tests.support.emulator import Script

    from ._emulator import start_emulator

    pairs = 150 if quick else 600
    warmup = 30 if quick else 100
    target = synthetic_text(REPLY_CHARS, seed=11)
    with start_emulator() as emu:
        model = emu.add_script(Script(target=target))
        client = openai.OpenAI(base_url=emu.base_url("vllm"), api_key="x", max_retries=0, timeout=60)
        wrapped = autocontinue.wrap(client, max_rounds=8, max_total_tokens=20_000, dialect="continue_final_message")
        request = {"model": model, "messages": MESSAGES, "max_tokens": 1024, "temperature": 0}

        def raw_call() -> Any:
            return client.chat.completions.create(**request)

        def wrapped_call() -> Any:
            return wrapped.chat.completions.create(**request)

        check = wrapped_call()
        assert check.choices[0].message.content == target, "the emulator's reply changed"
        assert len(check.continuation.rounds) == 1 and check.continuation.stop_cause == "natural"
        for _ in range(warmup):
            raw_call()
            wrapped_call()

        raw_wall: list[float] = []
        wrapped_wall: list[float] = []
        raw_cpu: list[float] = []
        wrapped_cpu: list[float] = []

        def timed(fn: Any, walls: list[float], cpus: list[float]) -> None:
            c0, t0 = time.thread_time(), time.perf_counter()
            fn()
            t1, c1 = time.perf_counter(), time.thread_time()
            walls.append(t1 - t0)
            cpus.append(c1 - c0)

        gc.collect()
        for i in range(pairs):
            if i % 2 == 0:
                timed(raw_call, raw_wall, raw_cpu)
                timed(wrapped_call, wrapped_wall, wrapped_cpu)
            else:
                timed(wrapped_call, wrapped_wall, wrapped_cpu)
                timed(raw_call, raw_wall, raw_cpu)
        ratios = [w / r for w, r in zip(wrapped_wall, raw_wall, strict=True)]
        cpu_ratios = [w / r for w, r in zip(wrapped_cpu, raw_cpu, strict=True) if r > 0]
        ratio = median(ratios)
        core = _core_runner(raw_call(), request)
    core_us = _core_per_call(core, 300 if quick else 3000)
    # The SDK request is the same on both paths, so what the wrapped path adds is the core's CPU work.
    profile = profile_calls(core, 300 if quick else 2000) if ratio > GOAL else None

    result: dict[str, Any] = {
        "goal": GOAL,
        "pairs": pairs,
        "warmup_pairs": warmup,
        "reply_chars": REPLY_CHARS,
        "persona": "vllm",
        "raw_wall_us": _summary(raw_wall),
        "wrapped_wall_us": _summary(wrapped_wall),
        "raw_cpu_us": _summary(raw_cpu),
        "wrapped_cpu_us": _summary(wrapped_cpu),
        "ratio_wall_median_of_pairs": round(ratio, 4),
        "ratio_wall_p25_p75": [round(percentile(ratios, 0.25), 4), round(percentile(ratios, 0.75), 4)],
        "ratio_cpu_median_of_pairs": round(median(cpu_ratios), 4),
        "added_wall_us_median_of_pairs": round(
            1e6 * median([w - r for w, r in zip(wrapped_wall, raw_wall, strict=True)]), 1
        ),
        "core_only_us_per_call": round(core_us, 1),
        "profile": profile,
    }
    result["rows"] = [
        Row(
            "overhead",
            "create() wall time, wrapped/raw (median of per-pair ratios)",
            f"{1e6 * median(wrapped_wall):.0f} us",
            f"{1e6 * median(raw_wall):.0f} us",
            ratio,
            f"<= {GOAL}",
            ratio <= GOAL,
        ).as_dict(),
        Row(
            "overhead",
            "client CPU per create(), wrapped/raw",
            f"{1e6 * median(wrapped_cpu):.0f} us",
            f"{1e6 * median(raw_cpu):.0f} us",
            median(cpu_ratios),
            "info",
            None,
        ).as_dict(),
        Row(
            "overhead",
            "core alone per call (Continuation init + start + on_response), share of a raw call",
            f"{core_us:.0f} us",
            f"{1e6 * median(raw_wall):.0f} us",
            core_us / (1e6 * median(raw_wall)),
            "info",
            None,
        ).as_dict(),
    ]
    print(
        f"overhead: raw {1e6 * median(raw_wall):.0f} us, wrapped {1e6 * median(wrapped_wall):.0f} us per call; "
        f"median ratio {ratio:.4f} (goal <= {GOAL}); core alone {core_us:.0f} us per call"
    )
    if profile is not None:
        print(render(profile))
    return result


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(1e6 * median(values), 1),
        "p10": round(1e6 * percentile(values, 0.10), 1),
        "p90": round(1e6 * percentile(values, 0.90), 1),
        "min": round(1e6 * min(values), 1),
    }


def _core_runner(reply: Any, request: dict[str, Any]) -> Any:
    """One call of the core alone: build a Continuation, start it, feed it the reply, get Done."""
    settings = make_settings(max_rounds=8, max_total_tokens=20_000, dialect="continue_final_message")
    base_url = "http://127.0.0.1:1/vllm/v1/"

    def one() -> Any:
        core = Continuation(request, settings, base_url=base_url)
        core.start()
        return core.on_response(reply)

    assert isinstance(one(), Done)
    return one


def _core_per_call(one: Any, calls: int) -> float:
    """Microseconds per call of the core alone, in a tight loop."""
    for _ in range(20):
        one()
    start = time.perf_counter()
    for _ in range(calls):
        one()
    return 1e6 * (time.perf_counter() - start) / calls


def main() -> int:
    return cli("overhead", run)


if __name__ == "__main__":
    raise SystemExit(main())
