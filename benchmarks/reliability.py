"""8. Reliability against servers that misbehave: the README's promises, as figures.

Against the hostile server of the test suite (``tests/support/hostile.py``: raw HTTP, every byte scripted) and the
provider emulator: a reply of the wrong shape after text, a stream answering 401/429, the runaway shapes (requests
each one costs with the defaults and with ``max_rounds`` unbounded), legitimate repetition under the loop floor, a
server that ignores ``max_tokens``, the cost budget under the instruction dialect and the budgets of an ``n = 3``
call. Each is a count or a ratio against its bound; ``tests/reliability/test_hostile.py`` asserts the same promises.

    python -m benchmarks.reliability [--quick]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import tenacity

import autocontinue
from autocontinue._progress import LOOP_FLOOR
from tests.support import hostile as H
from tests.support.emulator import Emulator, Script

from ._common import cli

USER = {"role": "user", "content": "Tell me the story."}
TARGET = "The quick brown fox jumps over the lazy dog. It was a sunny day, and the fox ran off into the forest. " * 6
PRICE = autocontinue.Price(input=50.0, output=100.0)


def _retry() -> tenacity.Retrying:
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_fixed(0.002),
        retry=tenacity.retry_if_exception(autocontinue.retry.is_transient),
        reraise=True,
    )


def _row(metric: str, ours: Any, goal: str, ok: bool | None, ratio: float | None = None) -> dict[str, Any]:
    return {
        "benchmark": "reliability",
        "metric": metric,
        "ours": ours,
        "baseline": "-",
        "ratio": ratio,
        "goal": goal,
        "ok": ok,
    }


def _wrong_shape_after_text(server: H.Hostile, client: openai.OpenAI) -> tuple[int, int]:
    """Shapes served from round 2 on: how many end in ContinuationFailed holding round 1's text."""

    def script(body: Any) -> H.Script:
        def reply(n: int, request: dict[str, Any], served: H.Served) -> H.Reply:
            if n < 2:
                return H.good(TARGET, 40, request, served)
            if request.get("stream"):
                return H.sse([H.event(H.chunk({"role": "assistant", "content": ""})), b"data: [1,2]\n\n"])
            return H.body(body)

        return reply

    shapes = [{"id": "x", "choices": [{"index": 0, "finish_reason": "length"}]}, [1, 2], None, {"error": {}}]
    kept = total = 0
    for body in shapes:
        for stream in (False, True):
            model = server.add(TARGET, script(body))
            total += 1
            try:
                result = autocontinue.create(
                    client, model=model, messages=[USER], max_tokens=10, dialect="partial", retry=_retry(),
                    stream=stream,
                )  # fmt: skip
                if stream:
                    list(result)
            except autocontinue.ContinuationFailed as error:
                kept += error.text == TARGET[:40]
            except Exception:
                pass
    return kept, total


def _stream_errors_from_create(server: H.Hostile, client: openai.OpenAI) -> tuple[int, int]:
    raised = 0
    for status in (401, 429):
        model = server.add(TARGET, lambda n, r, s, st=status: H.body({"error": {"message": "no"}}, status=st))
        try:
            autocontinue.create(client, model=model, messages=[USER], max_tokens=10, retry=_retry(), stream=True)
        except openai.APIStatusError:
            raised += 1
    return raised, 2


def _runaway_requests(server: H.Hostile, client: openai.OpenAI, texts: Callable[[int, H.Served], str], dialect: str,
                      **options: Any) -> tuple[int, str]:  # fmt: skip
    def reply(n: int, request: dict[str, Any], served: H.Served) -> H.Reply:
        return H.body(H.completion(texts(n, served), "length", H.usage_of(10, 2)))

    model = server.add("", reply)
    result = autocontinue.create(
        client, model=model, messages=[USER], max_tokens=8, dialect=dialect, retry=_retry(), **options
    )
    return len(server.served(model)), str(result.continuation.stop_cause)


def run(quick: bool) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    with H.Hostile() as server, Emulator() as emu:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", timeout=2)
        kept, total = _wrong_shape_after_text(server, client)
        rows.append(_row("reply of the wrong shape after text: ContinuationFailed holding every character sent",
                         f"{kept}/{total}", f"{total}/{total}", kept == total))  # fmt: skip
        raised, total = _stream_errors_from_create(server, client)
        rows.append(_row("stream answered 401 / 429: the SDK's error raised by create()", f"{raised}/{total}",
                         f"{total}/{total}", raised == total))  # fmt: skip

        def first_then(first: str, then: str) -> Callable[[int, H.Served], str]:
            return lambda n, served: first if n == 1 else then

        def tail(n: int, served: H.Served) -> str:
            return served.prefix[-30:] if served.prefix else "A story about a fox and a dog"

        shapes: list[tuple[str, Callable[[int, H.Served], str], str, dict[str, Any], int]] = [
            ("empty replies from round 1", lambda n, s: "", "partial", {}, 1),
            ("text, then empty replies", first_then("Once upon a time there was a fox", ""), "partial", {}, 2),
            ("text ending in whitespace (held back), then empty", first_then("Once upon a time \n\n", ""),
             "prefill", {}, 2),
            ("the same tail repeated, instruction", tail, "instruction", {}, 3),
            ("the same 'ok ok ' every round, defaults (max_rounds 10)", lambda n, s: "ok ok ", "partial", {}, 10),
            ("the same 'ok ok ' every round, max_rounds unbounded", lambda n, s: "ok ok ", "partial",
             {"max_rounds": 10**6}, -(-(LOOP_FLOOR + 6) // 6) + 1),
        ]  # fmt: skip
        for name, texts, dialect, options, bound in shapes:
            requests, cause = _runaway_requests(server, client, texts, dialect, **options)
            figures[name] = {"requests": requests, "stop_cause": cause, "bound": bound}
            rows.append(_row(f"runaway: {name}: requests", requests, f"<= {bound}", requests <= bound))

        answer = "one " * 60 + "two."
        model = server.add(answer, lambda n, r, s: H.good(answer, 8, r, s), size=8)
        result = autocontinue.create(client, model=model, messages=[USER], max_tokens=3, dialect="partial",
                                     retry=_retry(), max_rounds=200)  # fmt: skip
        whole = result.choices[0].message.content == answer
        rows.append(_row("'one one ... one two' in rounds of 8 characters, defaults: whole", "yes" if whole else "no",
                         "yes", whole))  # fmt: skip

        words = [f" w{i}" for i in range(60)]

        def ignoring(n: int, request: dict[str, Any], served: H.Served) -> H.Reply:
            events: list[Any] = [H.event(H.chunk({"role": "assistant", "content": ""}))]
            events += [H.event(H.chunk({"content": w})) for w in words] + [H.event(H.chunk({}, "length"))]
            return H.sse(events)

        over = 0
        for budget in (1, 5, 17):
            model = server.add("", ignoring)
            stream = autocontinue.create(client, model=model, messages=[USER], max_tokens=100, dialect="partial",
                                         retry=_retry(), stream=True, max_total_tokens=budget)  # fmt: skip
            delivered = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            over = max(over, len(delivered.split()) - budget)
        rows.append(_row("server ignoring max_tokens, streamed: tokens delivered past max_total_tokens (worst of 3)",
                         over, "0", over <= 0))  # fmt: skip
        client.close()

        instruction = openai.OpenAI(base_url=emu.base_url("openai"), api_key="x")
        worst = 0.0
        for budget in (0.01, 0.02, 0.05) if quick else (0.005, 0.01, 0.02, 0.05, 0.1):
            model = emu.add_script(Script(target=TARGET * 6))
            result = autocontinue.create(instruction, model=model, messages=[USER], max_tokens=24,
                                         dialect="instruction", retry=_retry(), max_rounds=200, max_cost_usd=budget,
                                         prices={model: PRICE})  # fmt: skip
            worst = max(worst, (result.continuation.cost_usd or 0.0) / budget)
        instruction.close()
        rows.append(_row("cost under instruction / max_cost_usd (worst of the budgets)", f"{worst:.3f}", "<= 1",
                         worst <= 1, ratio=worst))  # fmt: skip

        partial = openai.OpenAI(base_url=emu.base_url("dashscope"), api_key="x")
        story = TARGET * 6
        n_checks: list[tuple[str, dict[str, Any], Callable[[Any, int], float]]] = [
            ("completion tokens / max_total_tokens=20", {"max_total_tokens": 20},
             lambda r, q: r.usage.completion_tokens / 20),
            ("requests / max_rounds=3", {"max_rounds": 3}, lambda r, q: q / 3),
            ("requests / max_rounds=10", {"max_rounds": 10}, lambda r, q: q / 10),
            ("cost / max_cost_usd=0.01", {"max_cost_usd": 0.01, "max_rounds": 100},
             lambda r, q: (r.continuation.cost_usd or 0.0) / 0.01),
        ]  # fmt: skip
        for name, options, measure in n_checks:
            model = emu.add_script(Script(target=story, targets=[story, story, story]))
            if "max_cost_usd" in options:
                options = {**options, "prices": {model: PRICE}}
            result = autocontinue.create(partial, model=model, messages=[USER], max_tokens=8, n=3, dialect="partial",
                                         retry=_retry(), **options)  # fmt: skip
            value = measure(result, len(emu.requests(model)))
            rows.append(_row(f"n=3: {name}", f"{value:.3f}", "<= 1", value <= 1, ratio=value))
        partial.close()
    return {"runaways": figures, "rows": rows}


def main() -> int:
    return cli("reliability", run)


if __name__ == "__main__":
    raise SystemExit(main())
