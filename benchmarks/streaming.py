"""3. Streaming: the cost per chunk of a wrapped stream against the raw SDK stream, and the pause at a seam.

Per-chunk overhead: one long reply that needs no continuation, streamed with no delay (so the client's own work
is all that is timed), through one ``OpenAI`` client to the emulator in its own process. Raw and wrapped streams
alternate (order flipped every pair) after a warm-up; both ask for ``stream_options.include_usage`` so they
receive the same chunks. The headline is the median of per-pair ratios of the time to drain the stream.

Seam gap: a reply cut every ``k`` tokens, from a script whose every request waits ``first_token_delay`` (50 ms)
before its first chunk and ``token_delay`` between chunks. The caller's view is timed: the gaps between
consecutive content chunks it receives; the ``rounds - 1`` largest are the seams. The baseline is one upstream
time-to-first-token measured raw (request sent to first content chunk), interleaved with the wrapped calls. A
seam cannot be shorter than one TTFT; what it adds beyond is the core's work, the held-back word (healing
releases a round's last word only once the next round has confirmed it) and the closing of the old response.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import openai
from openai.types.chat import ChatCompletionChunk

import autocontinue
from autocontinue._cut import HOLD_WINDOW, hold_back_point
from autocontinue.client import make_settings
from autocontinue.core import Continuation, Done

from ._common import Row, cli, median, percentile, synthetic_text
from ._profiling import profile_calls, render

GOAL_CHUNK = 1.05
#: the seam should cost about one upstream TTFT; the held word adds a token interval or two
GOAL_SEAM = 1.10
STREAM_CHARS = 10_000  # about 2,000 emulator tokens: one chunk each
FIRST_TOKEN_DELAY = 0.050
TOKEN_DELAY = 0.001
SEAM_K = 20  # tokens per round in the seam test
SEAM_ROUNDS = 5
MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
PERSONA_DIALECT = {"vllm": "continue_final_message", "llamacpp": "continue_final_message"}


def _drain(stream: Any) -> int:
    count = 0
    for _chunk in stream:
        count += 1
    return count


def _chunk_overhead(emu: Any, quick: bool) -> dict[str, Any]:
    from tests.support.emulator import Script

    pairs = 6 if quick else 40
    target = synthetic_text(STREAM_CHARS, seed=21)
    model = emu.add_script(Script(target=target))
    client = openai.OpenAI(base_url=emu.base_url("vllm"), api_key="x", max_retries=0, timeout=120)
    wrapped = autocontinue.wrap(client, max_rounds=8, dialect="continue_final_message")
    request = {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": 100_000,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    def raw_call() -> int:
        return _drain(client.chat.completions.create(**request))

    def wrapped_call() -> int:
        return _drain(wrapped.chat.completions.create(**request))

    text = "".join(c.choices[0].delta.content or "" for c in wrapped.chat.completions.create(**request) if c.choices)
    assert text == target, "the wrapped stream did not reproduce the reply"
    upstream_chunks = raw_call()
    for _ in range(2):
        raw_call()
        wrapped_call()
    raw_t: list[float] = []
    wrapped_t: list[float] = []
    raw_cpu: list[float] = []
    wrapped_cpu: list[float] = []
    delivered = 0

    def timed(fn: Any, walls: list[float], cpus: list[float]) -> int:
        c0, t0 = time.thread_time(), time.perf_counter()
        n: int = fn()
        t1, c1 = time.perf_counter(), time.thread_time()
        walls.append(t1 - t0)
        cpus.append(c1 - c0)
        return n

    for i in range(pairs):
        if i % 2 == 0:
            timed(raw_call, raw_t, raw_cpu)
            delivered = timed(wrapped_call, wrapped_t, wrapped_cpu)
        else:
            delivered = timed(wrapped_call, wrapped_t, wrapped_cpu)
            timed(raw_call, raw_t, raw_cpu)
    ratios = [w / r for w, r in zip(wrapped_t, raw_t, strict=True)]
    cpu_ratios = [w / r for w, r in zip(wrapped_cpu, raw_cpu, strict=True)]
    ratio = median(ratios)
    # The same chunks through the core alone: its cost per chunk, and where it goes.
    dumps = [c.model_dump() for c in client.chat.completions.create(**request)]
    core_us, hold_us = _core_per_chunk(dumps, request, 3 if quick else 10)
    profile = None
    if ratio > GOAL_CHUNK:
        runs = 2 if quick else 5
        profile = profile_calls(_core_stream_runner(dumps, request, runs), runs, per="stream")
        profile["per"] = f"stream of {len(dumps)} chunks"
    return {
        "pairs": pairs,
        "stream_chars": STREAM_CHARS,
        "upstream_chunks": upstream_chunks,
        "delivered_chunks": delivered,
        "raw_us_per_chunk": round(1e6 * median(raw_t) / upstream_chunks, 2),
        "wrapped_us_per_chunk": round(1e6 * median(wrapped_t) / upstream_chunks, 2),
        "raw_cpu_us_per_chunk": round(1e6 * median(raw_cpu) / upstream_chunks, 2),
        "wrapped_cpu_us_per_chunk": round(1e6 * median(wrapped_cpu) / upstream_chunks, 2),
        "ratio_median_of_pairs": round(ratio, 4),
        "ratio_p25_p75": [round(percentile(ratios, 0.25), 4), round(percentile(ratios, 0.75), 4)],
        "cpu_ratio_median_of_pairs": round(median(cpu_ratios), 4),
        "core_alone_us_per_chunk": round(core_us, 2),
        "hold_back_point_us_per_call": round(hold_us, 2),
        "profile": profile,
    }


def _core_stream_runner(dumps: list[dict[str, Any]], request: dict[str, Any], runs: int) -> Any:
    """One stream through the core alone per call, fed fresh copies of captured chunks (on_chunk reuses chunk
    objects), built beforehand so that only the core is profiled."""
    settings = make_settings(max_rounds=8, dialect="continue_final_message")
    prepared = [[ChatCompletionChunk.model_validate(d) for d in dumps] for _ in range(runs)]

    def one() -> None:
        _feed_core(request, settings, prepared.pop())

    return one


def _feed_core(request: dict[str, Any], settings: Any, chunks: list[Any]) -> float:
    core = Continuation(request, settings, base_url="http://127.0.0.1:1/vllm/v1/")
    core.start()
    c0 = time.thread_time()
    for chunk in chunks:
        core.on_chunk(chunk)
    action = core.on_stream_end()  # with the closing chunks the stream driver hands on (``action.emit``)
    assert isinstance(action, Done), action
    return time.thread_time() - c0


def _core_per_chunk(dumps: list[dict[str, Any]], request: dict[str, Any], runs: int) -> tuple[float, float]:
    """CPU microseconds per chunk of the core alone, and of one hold_back_point call on a full window."""
    settings = make_settings(max_rounds=8, dialect="continue_final_message")
    times = []
    for _ in range(runs + 1):
        chunks = [ChatCompletionChunk.model_validate(d) for d in dumps]
        times.append(_feed_core(request, settings, chunks))
    per_chunk = 1e6 * median(times[1:]) / len(dumps)
    tail = synthetic_text(2 * HOLD_WINDOW, seed=5)
    calls = 2000
    c0 = time.thread_time()
    for _ in range(calls):
        hold_back_point(tail, 0, floor=0, heal=True, strip_whitespace=False)
    hold = 1e6 * (time.thread_time() - c0) / calls
    return per_chunk, hold


def _seam_gaps(emu: Any, persona: str, quick: bool) -> dict[str, Any]:
    from tests.support.emulator import Script, tokenize

    reps = 3 if quick else 6
    # A target that takes SEAM_ROUNDS rounds of SEAM_K tokens (healing regenerates a word per round, so a little
    # less than SEAM_ROUNDS * SEAM_K new tokens).
    words = synthetic_text(4000, seed=31)
    tokens = tokenize(words)
    target = "".join(tokens[: SEAM_K * (SEAM_ROUNDS - 1) + SEAM_K // 2])
    model = emu.add_script(Script(target=target, first_token_delay=FIRST_TOKEN_DELAY, token_delay=TOKEN_DELAY))
    client = openai.OpenAI(base_url=emu.base_url(persona), api_key="x", max_retries=0, timeout=60)
    wrapped = autocontinue.wrap(client, max_rounds=20, dialect=PERSONA_DIALECT[persona])
    request = {"model": model, "messages": MESSAGES, "max_tokens": SEAM_K, "stream": True}

    def raw_ttft() -> float:
        start = time.perf_counter()
        first = None
        with client.chat.completions.create(**request) as stream:
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
        assert first is not None
        return first - start

    def wrapped_gaps() -> tuple[list[float], list[float], int, str]:
        stamps: list[float] = []
        text: list[str] = []
        stream = wrapped.chat.completions.create(**request)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                stamps.append(time.perf_counter())
                text.append(chunk.choices[0].delta.content)
        rounds = len(stream.continuation.rounds)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        ordered = sorted(gaps, reverse=True)
        seams = ordered[: rounds - 1]
        others = ordered[rounds - 1 :]
        return seams, others, rounds, "".join(text)

    raw_ttft()
    wrapped_gaps()
    ttfts: list[float] = []
    seams: list[float] = []
    others: list[float] = []
    rounds = 0
    for _ in range(reps):
        ttfts.append(raw_ttft())
        s, o, rounds, text = wrapped_gaps()
        assert text == target, f"{persona}: the wrapped stream did not reproduce the target"
        seams += s
        others += o
    seam, ttft = median(seams), median(ttfts)
    return {
        "persona": persona,
        "rounds_per_call": rounds,
        "calls": reps,
        "k": SEAM_K,
        "first_token_delay_ms": 1000 * FIRST_TOKEN_DELAY,
        "token_delay_ms": 1000 * TOKEN_DELAY,
        "raw_ttft_ms": {"median": round(1000 * ttft, 2), "p90": round(1000 * percentile(ttfts, 0.9), 2)},
        "seam_gap_ms": {
            "median": round(1000 * seam, 2),
            "p90": round(1000 * percentile(seams, 0.9), 2),
            "max": round(1000 * max(seams), 2),
            "count": len(seams),
        },
        "ordinary_gap_ms_median": round(1000 * median(others), 3),
        "seam_over_ttft": round(seam / ttft, 4),
        "seam_minus_ttft_ms": round(1000 * (seam - ttft), 2),
    }


def run(quick: bool) -> dict[str, Any]:
    from ._emulator import start_emulator

    with start_emulator() as emu:
        chunks = _chunk_overhead(emu, quick)
        print(
            f"streaming: raw {chunks['raw_us_per_chunk']} us/chunk, wrapped {chunks['wrapped_us_per_chunk']} us/chunk,"
            f" median ratio {chunks['ratio_median_of_pairs']} (goal <= {GOAL_CHUNK})"
        )
        print(
            f"streaming: core alone {chunks['core_alone_us_per_chunk']} us CPU/chunk; one hold_back_point call "
            f"{chunks['hold_back_point_us_per_call']} us"
        )
        if chunks["profile"] is not None:
            print(render(chunks["profile"], title="the core alone fed a captured stream"))
        seams = [_seam_gaps(emu, persona, quick) for persona in ("vllm", "llamacpp")]
    for s in seams:
        print(
            f"streaming seam ({s['persona']}): gap {s['seam_gap_ms']['median']} ms vs raw TTFT "
            f"{s['raw_ttft_ms']['median']} ms -> {s['seam_over_ttft']} ({s['rounds_per_call']} rounds)"
        )
    rows = [
        Row(
            "streaming",
            "time per chunk, wrapped/raw stream (median of per-pair ratios)",
            f"{chunks['wrapped_us_per_chunk']:.1f} us",
            f"{chunks['raw_us_per_chunk']:.1f} us",
            chunks["ratio_median_of_pairs"],
            f"<= {GOAL_CHUNK}",
            chunks["ratio_median_of_pairs"] <= GOAL_CHUNK,
        ).as_dict(),
        Row(
            "streaming",
            "client CPU per chunk, wrapped/raw",
            f"{chunks['wrapped_cpu_us_per_chunk']:.1f} us",
            f"{chunks['raw_cpu_us_per_chunk']:.1f} us",
            chunks["cpu_ratio_median_of_pairs"],
            "info",
            None,
        ).as_dict(),
    ]
    for s in seams:
        rows.append(
            Row(
                "streaming",
                f"gap at a seam as the caller sees it vs one raw TTFT ({s['persona']}, first token "
                f"{s['first_token_delay_ms']:.0f} ms, {s['token_delay_ms']:.0f} ms/token)",
                f"{s['seam_gap_ms']['median']:.1f} ms",
                f"{s['raw_ttft_ms']['median']:.1f} ms",
                s["seam_over_ttft"],
                f"<= {GOAL_SEAM}",
                s["seam_over_ttft"] <= GOAL_SEAM,
            ).as_dict()
        )
    return {"goal_chunk": GOAL_CHUNK, "goal_seam": GOAL_SEAM, "per_chunk": chunks, "seams": seams, "rows": rows}


def main() -> int:
    return cli("streaming", run)


if __name__ == "__main__":
    raise SystemExit(main())
