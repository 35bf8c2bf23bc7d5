"""2. Engine cost: the sans-IO core's CPU time per round as the answer grows from 1 k to 1 M characters.

The core (``autocontinue.core.Continuation``) is driven directly, with no network: synthetic replies of a fixed
size per round continue a long synthetic text from whatever prefix the core sent, the way a model would. For
each size S, fresh cores are seeded with an answer of S characters (the caller's own assistant prefix), run one
round so healing is active, and then one round is timed: ``on_response`` of the reply to the decision on the next
request (``_end_round`` + ``_begin_round``), or, streaming, every ``on_chunk`` of the reply and ``on_stream_end``.

Claim under test: the seam work is bounded to a window, so the cost per round does not grow with S. Two copies
of the text per round are inherent to the design (the prefix to send, ``text[:cut]``, and the joined text,
``sent + new``); they are timed on their own, interleaved with the rounds, and subtracted, so the table shows the
total, the inherent part, and the rest, whose 1 M / 1 k ratio must stay near 1. CPU time (``time.thread_time``)
is the measure: it is what the core costs, and it does not count the time other processes hold the CPU.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from autocontinue._options import Settings
from autocontinue.client import make_settings
from autocontinue.core import Continuation, DoRequest

from ._common import Row, cli, median, percentile, synthetic_text

SIZES = (1_000, 10_000, 100_000, 1_000_000)
#: characters of new text per round (about 100 tokens)
REPLY_CHARS = 400
#: characters per streamed chunk (about one token)
CHUNK_CHARS = 4
#: the non-inherent cost per round at 1 M over 1 k: "flat", allowing for cache effects
GOAL = 1.5
BASE_URL = "http://127.0.0.1:8000/v1"
USER = {"role": "user", "content": "Write a very long story."}


def _settings() -> Settings:
    # vLLM-style continuation (continue_final_message, echo "maybe"), healing on: the default path.
    return make_settings(max_rounds=1_000_000, dialect="continue_final_message")


def _sent(action: DoRequest) -> str:
    last = action.kwargs["messages"][-1]
    return str(last["content"]) if last.get("role") == "assistant" else ""


def _reply(text: str, action: DoRequest, serial: int) -> ChatCompletion:
    start = len(_sent(action))
    content = text[start : start + REPLY_CHARS]
    return ChatCompletion.model_validate(
        {
            "id": f"chatcmpl-{serial}",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "length",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": start // 4, "completion_tokens": 100, "total_tokens": start // 4 + 100},
        }
    )


def _chunks(text: str, action: DoRequest, serial: int) -> list[ChatCompletionChunk]:
    start = len(_sent(action))
    content = text[start : start + REPLY_CHARS]
    head = {"id": f"chatcmpl-{serial}", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_validate(
            {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        )

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": content[i : i + CHUNK_CHARS]}) for i in range(0, len(content), CHUNK_CHARS)]
    out.append(chunk({}, "length"))
    out.append(
        ChatCompletionChunk.model_validate(
            {**head, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 100, "total_tokens": 101}}
        )
    )
    return out


def _seeded(text: str, size: int, settings: Settings, stream: bool) -> tuple[Continuation, DoRequest]:
    """A core whose answer is already ``size`` characters, after one continuation round (healing active)."""
    kwargs: dict[str, Any] = {
        "model": "m",
        "messages": [USER, {"role": "assistant", "content": text[:size]}],
        "max_tokens": 100,
    }
    if stream:
        kwargs["stream"] = True
    core = Continuation(kwargs, settings, base_url=BASE_URL)
    action = core.start()
    assert isinstance(action, DoRequest)
    action = _round(core, text, action, stream, 0)
    assert isinstance(action, DoRequest), action
    return core, action


def _end_stream(core: Continuation) -> Any:
    """``on_stream_end``: the next action, with the text released at the round's end (``action.emit``)."""
    return core.on_stream_end()


def _round(core: Continuation, text: str, action: DoRequest, stream: bool, serial: int) -> Any:
    if stream:
        for item in _chunks(text, action, serial):
            core.on_chunk(item)
        return _end_stream(core)
    return core.on_response(_reply(text, action, serial))


def _measure(text: str, size: int, samples: int, stream: bool) -> dict[str, float]:
    """Time one round on each of ``samples`` fresh cores at ``size``: medians of wall and CPU (thread) time.

    Interleaved with each timed round, the two copies every round makes are timed on the same core's text (the
    answer so far: the prefix to send, then the prefix joined with a reply), so that they run in the same state of
    caches and allocator as the round's own copies do: timed alone in a tight loop they look cheaper.
    """
    settings = _settings()
    walls: list[float] = []
    cpus: list[float] = []
    copies: list[float] = []
    gc.collect()
    for serial in range(samples):
        core, action = _seeded(text, size, settings, stream)
        if stream:
            items = _chunks(text, action, serial)
            c0 = time.thread_time()
            t0 = time.perf_counter()
            for item in items:
                core.on_chunk(item)
            after = _end_stream(core)
            t1 = time.perf_counter()
            c1 = time.thread_time()
        else:
            reply = _reply(text, action, serial)
            c0 = time.thread_time()
            t0 = time.perf_counter()
            after = core.on_response(reply)
            t1 = time.perf_counter()
            c1 = time.thread_time()
        assert isinstance(after, DoRequest), after
        assert len(_sent(after)) > len(_sent(action)), "the round made no progress"
        walls.append(t1 - t0)
        cpus.append(c1 - c0)
        copies.append(_copies(getattr(core, "_text", None) or text[: size + 2 * REPLY_CHARS], text, size))
    return {
        "median_us": 1e6 * median(walls),
        "p90_us": 1e6 * percentile(walls, 0.9),
        "cpu_median_us": 1e6 * median(cpus),
        "copies_median_us": 1e6 * median(copies),
    }


def _copies(body: str, text: str, size: int) -> float:
    """CPU seconds of the two copies a round makes of an answer of ``len(body)`` characters: the prefix to send
    (``body[:cut]``, a few characters held back) and the prefix joined with a reply (``sent + new``)."""
    new = text[size + 2 * REPLY_CHARS : size + 3 * REPLY_CHARS]
    cut = len(body) - 7
    c0 = time.thread_time()
    sent = body[:cut]
    joined = sent + new
    c1 = time.thread_time()
    del sent, joined
    return c1 - c0


def _finish(text: str, size: int, repeats: int) -> float:
    """Microseconds of a call's last round at ``size`` (the joined ``ChatCompletion`` is built): once per call."""
    settings = _settings()
    times: list[float] = []
    for serial in range(repeats):
        core, action = _seeded(text, size, settings, False)
        reply = _reply(text, action, serial)
        stop = reply.model_copy(update={"choices": [reply.choices[0].model_copy(update={"finish_reason": "stop"})]})
        t0 = time.perf_counter()
        core.on_response(stop)
        times.append(time.perf_counter() - t0)
    return 1e6 * median(times)


def run(quick: bool) -> dict[str, Any]:
    samples = 60 if quick else 400
    text = synthetic_text(max(SIZES) + 8 * REPLY_CHARS, seed=3)
    series: dict[str, list[dict[str, Any]]] = {}
    for mode, stream in (("non_stream", False), ("stream", True)):
        rows = []
        for size in SIZES:
            measured = _measure(text, size, samples if not stream else max(20, samples // 4), stream)
            inherent = measured["copies_median_us"]
            cpu = measured["cpu_median_us"]
            rows.append(
                {
                    "size_chars": size,
                    "round_cpu_us": round(cpu, 1),
                    "round_wall_us": round(measured["median_us"], 1),
                    "round_wall_p90_us": round(measured["p90_us"], 1),
                    "inherent_copies_us": round(inherent, 1),
                    "rest_us": round(cpu - inherent, 1),
                }
            )
            print(
                f"engine {mode:<10} {size:>9,} chars: {cpu:8.1f} us CPU/round (wall {measured['median_us']:.1f}), "
                f"inherent copies {inherent:6.1f} us, rest {cpu - inherent:8.1f} us"
            )
        series[mode] = rows
    finish = {size: round(_finish(text, size, 10 if quick else 40), 1) for size in SIZES}
    print(
        "engine finish (last round, joined completion built): " + ", ".join(f"{k:,}: {v} us" for k, v in finish.items())
    )

    out_rows: list[dict[str, Any]] = []
    ratios: dict[str, Any] = {}
    for mode, rows in series.items():
        small, large = rows[0], rows[-1]
        total_ratio = large["round_cpu_us"] / small["round_cpu_us"]
        rest_ratio = large["rest_us"] / small["rest_us"]
        ratios[mode] = {"total_1M_over_1k": round(total_ratio, 3), "rest_1M_over_1k": round(rest_ratio, 3)}
        label = "non-streamed" if mode == "non_stream" else f"streamed, {CHUNK_CHARS}-char chunks"
        out_rows.append(
            Row(
                "engine",
                f"core CPU us/round at 1M vs 1k chars, {label}, excluding the 2 inherent text copies",
                f"{large['rest_us']:.0f} us",
                f"{small['rest_us']:.0f} us",
                rest_ratio,
                f"<= {GOAL} (flat)",
                rest_ratio <= GOAL,
            ).as_dict()
        )
        out_rows.append(
            Row(
                "engine",
                f"core CPU us/round at 1M vs 1k chars, {label}, total (inherent copies at 1M: "
                f"{large['inherent_copies_us']:.0f} us)",
                f"{large['round_cpu_us']:.0f} us",
                f"{small['round_cpu_us']:.0f} us",
                total_ratio,
                "info",
                None,
            ).as_dict()
        )
    return {
        "sizes": list(SIZES),
        "reply_chars_per_round": REPLY_CHARS,
        "chunk_chars": CHUNK_CHARS,
        "samples_per_size": samples,
        "dialect": "continue_final_message",
        "heal": True,
        "goal_rest_ratio": GOAL,
        "series": series,
        "ratios": ratios,
        "finish_us_by_size": finish,
        "rows": out_rows,
    }


def main() -> int:
    return cli("engine", run)


if __name__ == "__main__":
    raise SystemExit(main())
