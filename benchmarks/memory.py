"""7. Memory: the peak Python memory (tracemalloc) of producing a 1 M-character answer over rounds, against the
answer's own size, and against a hand-written continuation loop doing the same rounds.

- Core: the sans-IO core driven directly with synthetic replies of 4,000 characters per round (250 rounds), up to
  the joined ``ChatCompletion``. Baseline: the least a hand-written loop holds (the text, ``text += reply``, a
  request whose last message is the text so far, and a ``ChatCompletion`` of the result), fed the same replies.
- End to end: a wrapped ``create()`` against the emulator (its own process, so only the client is traced) with
  ``max_tokens`` 8,192 per round; baseline: the raw SDK in a hand-written loop making the same continuation
  requests (vLLM's ``continue_final_message``), keeping the text in a string.

The answer's own size is ``sys.getsizeof`` of the final text (about one byte per character: it is ASCII).
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import openai
from openai.types.chat import ChatCompletion

import autocontinue
from autocontinue.client import make_settings
from autocontinue.core import Continuation, Done, DoRequest

from ._common import Row, cli, synthetic_text

SIZE = 1_000_000
REPLY_CHARS = 4_000
E2E_MAX_TOKENS = 8_192
USER = {"role": "user", "content": "Write a book."}
DIALECT = "continue_final_message"


def _reply(target: str, start: int, serial: int) -> ChatCompletion:
    content = target[start : start + REPLY_CHARS]
    finish = "stop" if start + REPLY_CHARS >= len(target) else "length"
    return ChatCompletion.model_validate(
        {
            "id": f"chatcmpl-{serial}",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": start // 4, "completion_tokens": 1000, "total_tokens": start // 4 + 1000},
        }
    )


def _core_run(target: str) -> str:
    settings = make_settings(max_rounds=100_000, dialect=DIALECT)
    core = Continuation({"model": "m", "messages": [USER], "max_tokens": 1000}, settings, base_url="http://h/v1")
    action: Any = core.start()
    serial = 0
    while isinstance(action, DoRequest):
        last = action.kwargs["messages"][-1]
        sent = last["content"] if last["role"] == "assistant" else ""
        serial += 1
        action = core.on_response(_reply(target, len(sent), serial))
    assert isinstance(action, Done), action
    content = action.completion.choices[0].message.content or ""
    assert content == target
    return content


def _naive_run(target: str) -> str:
    text = ""
    serial = 0
    while True:
        messages: list[dict[str, Any]] = [USER]
        if text:
            messages.append({"role": "assistant", "content": text})
        request = {"model": "m", "messages": messages, "max_tokens": 1000}
        serial += 1
        reply = _reply(target, len(text), serial)
        del request
        text += reply.choices[0].message.content or ""
        if reply.choices[0].finish_reason != "length":
            break
    completion = ChatCompletion.model_validate(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
    )
    content = completion.choices[0].message.content or ""
    assert content == target
    return content


def _peak(fn: Callable[[], str]) -> tuple[int, int, float]:
    """Peak traced bytes while ``fn`` runs, the size of what it returned, and its time (tracemalloc slows it)."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak, sys.getsizeof(result), seconds


def _e2e(size: int) -> dict[str, Any]:
    from tests.support.emulator import Script

    from ._emulator import start_emulator

    target = synthetic_text(size, seed=71)
    with start_emulator() as emu:
        model = emu.add_script(Script(target=target))
        client = openai.OpenAI(base_url=emu.base_url("vllm"), api_key="x", max_retries=0, timeout=300)
        wrapped = autocontinue.wrap(client, max_rounds=1000, dialect=DIALECT)
        rounds: dict[str, int] = {}

        def ours() -> str:
            reply = wrapped.chat.completions.create(model=model, messages=[USER], max_tokens=E2E_MAX_TOKENS)
            rounds["ours"] = len(reply.continuation.rounds)
            content = reply.choices[0].message.content or ""
            assert content == target
            return content

        def naive() -> str:
            text = ""
            count = 0
            while True:
                messages: list[dict[str, Any]] = [USER]
                extra = None
                if text:
                    messages.append({"role": "assistant", "content": text})
                    extra = {"continue_final_message": True, "add_generation_prompt": False}
                reply = client.chat.completions.create(
                    model=model, messages=messages, max_tokens=E2E_MAX_TOKENS, extra_body=extra
                )
                count += 1
                text += reply.choices[0].message.content or ""
                if reply.choices[0].finish_reason != "length":
                    break
            rounds["naive"] = count
            assert text == target
            return text

        ours()  # warm-up: imports, connection
        peaks = _peaks(_peak(ours), _peak(naive))
    return {"size_chars": size, "max_tokens_per_round": E2E_MAX_TOKENS, "rounds": rounds, **peaks}


def _peaks(ours: tuple[int, int, float], naive: tuple[int, int, float]) -> dict[str, Any]:
    """The peaks of ours and the naive loop (as :func:`_peak` measures them), each against the text it produced,
    and against each other."""
    ours_peak, ours_size, ours_s = ours
    naive_peak, naive_size, naive_s = naive
    return {
        "text_bytes": ours_size,
        "ours_peak_bytes": ours_peak,
        "naive_peak_bytes": naive_peak,
        "ours_over_text": round(ours_peak / ours_size, 3),
        "naive_over_text": round(naive_peak / naive_size, 3),
        "ours_over_naive": round(ours_peak / naive_peak, 3),
        "seconds_traced": {"ours": round(ours_s, 2), "naive": round(naive_s, 2)},
    }


def run(quick: bool) -> dict[str, Any]:
    target = synthetic_text(SIZE, seed=61)
    _core_run(target[:20_000])  # warm-up
    core = {
        "size_chars": SIZE,
        "reply_chars_per_round": REPLY_CHARS,
        "rounds": -(-SIZE // REPLY_CHARS),
        **_peaks(_peak(lambda: _core_run(target)), _peak(lambda: _naive_run(target))),
    }
    ours_peak, naive_peak = core["ours_peak_bytes"], core["naive_peak_bytes"]
    print(
        f"memory (core, {SIZE:,} chars): peak {ours_peak / 1e6:.2f} MB = {core['ours_over_text']}x the text; "
        f"hand-written loop {naive_peak / 1e6:.2f} MB = {core['naive_over_text']}x"
    )
    e2e = _e2e(200_000 if quick else SIZE)
    print(
        f"memory (end to end, {e2e['size_chars']:,} chars, {e2e['rounds']} rounds): peak "
        f"{e2e['ours_peak_bytes'] / 1e6:.2f} MB = {e2e['ours_over_text']}x the text; raw SDK loop "
        f"{e2e['naive_peak_bytes'] / 1e6:.2f} MB = {e2e['naive_over_text']}x"
    )
    rows = [
        Row(
            "memory",
            f"peak traced memory / text size, core driven to {SIZE // 1000:,} k chars (vs hand-written loop)",
            f"{core['ours_over_text']:.2f}x ({ours_peak / 1e6:.1f} MB)",
            f"{core['naive_over_text']:.2f}x ({naive_peak / 1e6:.1f} MB)",
            core["ours_over_naive"],
            "info",
            None,
        ).as_dict(),
        Row(
            "memory",
            f"peak traced memory / text size, wrapped create() to {e2e['size_chars'] // 1000:,} k chars on the "
            f"emulator (vs raw SDK loop)",
            f"{e2e['ours_over_text']:.2f}x ({e2e['ours_peak_bytes'] / 1e6:.1f} MB)",
            f"{e2e['naive_over_text']:.2f}x ({e2e['naive_peak_bytes'] / 1e6:.1f} MB)",
            e2e["ours_over_naive"],
            "info",
            None,
        ).as_dict(),
    ]
    return {"core": core, "end_to_end": e2e, "rows": rows}


def main() -> int:
    return cli("memory", run)


if __name__ == "__main__":
    raise SystemExit(main())
