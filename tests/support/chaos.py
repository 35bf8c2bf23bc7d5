"""Helpers of the reliability suite (tests/reliability/test_reliability.py): random scripts and fault plans, the drivers
of one chaos call, and the checks every chaos call must pass.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import tenacity

import autocontinue
from tests.support import common
from tests.support.common import DIALECT_PERSONAS as EXPLICIT_DIALECT_PERSONAS
from tests.support.emulator import Fault, Script, tokenize

__all__ = [
    "DIALECT_PERSONAS",
    "Call",
    "Outcome",
    "check_against_log",
    "chunked",
    "fast_retry",
    "make_plan",
    "predicted_text_after",
    "random_target",
    "run_async",
    "run_sync",
    "sent_prefix",
]

#: (persona, dialect) pairs that the emulator speaks (explicit dialects: on loopback "auto" cannot tell them
#: apart), plus "auto" where the emulated server behaves like the real one towards prefill-then-instruction.
DIALECT_PERSONAS: list[tuple[str, str]] = [
    *EXPLICIT_DIALECT_PERSONAS,
    ("openrouter", "auto"),
    ("anthropic", "auto"),
    ("llamacpp", "auto"),
    ("claude46", "auto"),
]


def fast_retry(attempts: int = 6) -> tenacity.Retrying:
    """The suite's retry policy: ``attempts`` per round, Retry-After honoured up to 50 ms, else 5 ms."""
    return common.fast_retry(attempts, wait=0.005, max_retry_after=0.05)


# ---------------------------------------------------------------------------------------------------------------
# What the emulator said


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def sent_prefix(entry: dict[str, Any]) -> str | None:
    """The text-so-far a logged request asked the model to continue (None when it produced no answer text)."""
    mode = entry.get("mode")
    messages = entry["body"]["messages"]
    if mode == "first":
        return ""
    if mode == "prefill":
        return _text_of(messages[-1])
    if mode == "instruction":
        return _text_of(messages[-2])
    return None


def predicted_text_after(entry: dict[str, Any], script: Script) -> str | None:
    """The answer so far after a clean logged request, recomputed from the emulator's (deterministic) model:
    the prefix it was sent plus the next ``min(max_tokens, output_cap)`` tokens of the target."""
    prefix = sent_prefix(entry)
    if prefix is None or not script.target.startswith(prefix):
        return None
    body = entry["body"]
    cap = body.get("max_tokens") or body.get("max_completion_tokens") or script.default_max_tokens
    if script.output_cap is not None:
        cap = min(cap, script.output_cap)
    return prefix + "".join(tokenize(script.target[len(prefix) :])[:cap])


# ---------------------------------------------------------------------------------------------------------------
# Random scripts

# fmt: off
_WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then",
    "ran", "into", "forest", "naïve", "café", "Zürich", "façade", "coöperate", "Ærøskøbing", "日本語",
    "テキスト", "中文字符", "한국어", "Ελληνικά", "русский", "עברית", "العربية", "🙂", "👩\u200d💻", "🎉🎉",
    "e\u0301", "ﬁne", "x²", "½", "42", "3.14159", "1,000", "#tag", "@user", "http://example.com/a?b=c",
    "snake_case", "CamelCase", "(parens)", "[list]", "{json: 1}", "\"quoted\"", "'single'", "`code`", "--", "...",
    "—", "«guillemets»", "¿qué?", "¡sí!",
]
_SEPARATORS = [
    " ", " ", " ", " ", " ", " ", "\n", "\n\n", ", ", ". ", "\t", "  ",
    "   ", "\u3000", "\xa0", " - ", "; ", "!\n", ":\n    ", "\r\n", " \n",
]
# fmt: on


def random_target(rng: random.Random, low: int = 50, high: int = 600) -> str:
    """Random text of ``low``..``high`` characters: words of many scripts, emoji, digits, code-ish bits, and every
    kind of whitespace run (newlines, tabs, runs of spaces, NBSP, ideographic space).

    No word follows itself: a doubled word at a cut is what the instruction dialect's overlap removal cannot tell
    from a model repeating the tail (a documented trade-off), and a doubled token has its own test
    (``test_doubled_word_is_not_a_runaway``)."""
    length = rng.randint(low, high)
    parts: list[str] = ["\n"] if rng.random() < 0.05 else []
    size = sum(map(len, parts))
    previous = ""
    while size < length:
        word = rng.choice(_WORDS)
        if rng.random() < 0.1:
            word = word.capitalize()
        if word.lower() == previous.lower():
            continue
        previous = word
        sep = rng.choice(_SEPARATORS)
        parts += [word, sep]
        size += len(word) + len(sep)
    return "".join(parts)[:length]


_BURST_KINDS = ("status429", "status500", "status503", "drop")


def random_fault(
    rng: random.Random, *, stream: bool, chunks: int, allow_delay: bool, kinds: tuple[str, ...] | None = None
) -> Fault:
    """One fault of a kind that applies to the request type; ``chunks`` bounds where a stream breaks."""
    if kinds is None:
        kinds = ("status429", "status500", "status503", "drop", "malformed" if stream else "truncated")
        weights: list[float] | None = [0.15, 0.14, 0.14, 0.28, 0.29]
        if allow_delay:
            kinds += ("delay",)
            weights = [*weights, 0.04]
    else:
        weights = None
    kind = rng.choices(kinds, weights=weights)[0]
    if kind == "status429":
        return Fault("status", status=429, retry_after=rng.choice([0.0, 0.005, 0.01, 0.02]))
    if kind == "status500":
        return Fault("status", status=500)
    if kind == "status503":
        return Fault("status", status=503, retry_after=rng.choice([None, 0.01, 0.02]))
    if kind == "delay":
        return Fault("delay", delay=1.5)
    if kind == "drop":
        return Fault("drop", after_chunks=rng.randint(0, chunks) if stream else 0)
    if kind == "malformed":
        return Fault("malformed_sse", after_chunks=rng.randint(0, chunks))
    return Fault("truncated_json")


@dataclass
class Call:
    """One chaos call: how to make it, what the emulator will do, and what must come out."""

    index: int
    driver: str  # "sync" | "async" | "sync-stream" | "async-stream"
    persona: str
    dialect: str
    script: Script
    request: dict[str, Any]  # create() keyword arguments except model (added once the script is registered)
    burst_at: int | None = None  # first ordinal of a run of faults that exhausts the round's attempts
    model: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def stream(self) -> bool:
        return self.driver.endswith("stream")

    def describe(self) -> str:
        options = {k: v for k, v in self.request.items() if k not in ("messages", "retry")}
        faults = {n: (f.kind, f.status, f.after_chunks) for n, f in sorted(self.script.faults.items())}
        return (
            f"call #{self.index} [{self.driver}] persona={self.persona} dialect={self.dialect} model={self.model} "
            f"options={options} output_cap={self.script.output_cap} "
            f"default_max_tokens={self.script.default_max_tokens} burst_at={self.burst_at} faults={faults} "
            f"target={self.script.target!r}"
        )


def make_plan(rng: random.Random, index: int, driver: str, *, fault_rate: float, allow_delay: bool) -> Call:
    """A random call: target, persona/dialect, per-round limit, faults (about ``fault_rate`` of its requests;
    at most two faults in a row except for a deliberate burst that exhausts the retries of one round)."""
    stream = driver.endswith("stream")
    persona, dialect = rng.choice(DIALECT_PERSONAS)
    target = random_target(rng)
    n_tokens = len(tokenize(target))
    rounds_wanted = rng.randint(1, 6)
    limit = max(2, -(-n_tokens // rounds_wanted) + 1)
    output_cap = rng.choice([None, None, None, max(2, limit - rng.randint(0, 2))])
    default_max_tokens = 4096
    request: dict[str, Any] = {"messages": [{"role": "user", "content": "Write it."}]}
    which = rng.random()
    if which < 0.7:
        request["max_tokens"] = limit
    elif which < 0.9:
        request["max_completion_tokens"] = limit
    else:
        default_max_tokens = limit  # no limit in the request: the server's default cuts the reply
    if rng.random() < 0.2:
        request["messages"] = [{"role": "system", "content": "Be exact."}, *request["messages"]]
    est_requests = (n_tokens // max(1, (output_cap or limit) - 1) + 2) * (2 if dialect == "auto" else 1)
    chunks = min(limit, output_cap or limit) + 3
    faults: dict[int, Fault] = {}
    run = 0
    for ordinal in range(1, 2 * est_requests + 12):
        if run < 2 and rng.random() < fault_rate:
            faults[ordinal] = random_fault(rng, stream=stream, chunks=chunks, allow_delay=allow_delay)
            run += 1
        else:
            run = 0
    burst_at = None
    if rng.random() < 0.06:
        burst_at = rng.randint(1, max(1, min(est_requests, 8)))
        faults.pop(burst_at - 1, None)
        faults.pop(burst_at + 6, None)
        for ordinal in range(burst_at, burst_at + 6):
            # No text may come out of a burst (so that the partial is exactly the text before it): streams break
            # before any content chunk. Only kinds that the SDK raises as openai.APIError, so that a burst before
            # any text ends in the SDK's typed error whichever of its attempts turns out to be the last.
            fault = random_fault(rng, stream=stream, chunks=1, allow_delay=False, kinds=_BURST_KINDS)
            if fault.kind == "drop":
                fault.after_chunks = rng.randint(0, 1) if stream else 0
            faults[ordinal] = fault
    script = Script(target=target, faults=faults, output_cap=output_cap, default_max_tokens=default_max_tokens)
    return Call(index, driver, persona, dialect, script, request, burst_at)


@dataclass
class Outcome:
    """How one chaos call ended, and everything wrong with it."""

    call: Call
    kind: str  # "exact" | "ContinuationFailed" | an SDK exception's class name | "untyped:<class>"
    text: str = ""  # the returned content, or the partial's
    delivered: str | None = None  # streams: what the caller received
    error: BaseException | None = None
    problems: list[str] = field(default_factory=list)
    #: the partial was compared with the text the emulator's log says the completed rounds produced
    partial_verified: bool = False


def _usage_problems(completion: Any) -> list[str]:
    trace = completion.continuation
    usage = completion.usage
    rounds = trace.rounds
    if not rounds:
        return ["no rounds in the trace"]
    if usage is None:
        return ["no usage on the result"]
    want = (sum(r.usage.prompt_tokens for r in rounds), sum(r.usage.completion_tokens for r in rounds))
    got = (usage.prompt_tokens, usage.completion_tokens)
    return [] if want == got else [f"usage {got} is not the sum of the rounds' {want}"]


def judge_result(call: Call, text: str, completion: Any, finish_reason: str | None, trace: Any) -> Outcome:
    outcome = Outcome(call, "exact", text=text)
    target = call.script.target
    if text != target:
        kind = "prefix (chars lost)" if target.startswith(text) else "not a prefix (chars doubled/garbled)"
        outcome.problems.append(f"returned {kind}: got {text!r}, stop_cause={trace.stop_cause}")
    if trace.stop_cause != "natural":
        outcome.problems.append(f"stop_cause {trace.stop_cause!r}")
    if finish_reason != "stop":
        outcome.problems.append(f"finish_reason {finish_reason!r}")
    if completion is not None:
        outcome.problems += _usage_problems(completion)
    if sum(r.chars_added for r in trace.rounds) != len(text):
        outcome.problems.append("the rounds' chars_added do not add up to the text")
    return outcome


def judge_error(call: Call, error: BaseException, delivered: str | None) -> Outcome:
    import openai

    target = call.script.target
    if isinstance(error, autocontinue.ContinuationFailed):
        partial = error.partial
        text = partial.choices[0].message.content or ""
        outcome = Outcome(call, "ContinuationFailed", text=text, delivered=delivered, error=error)
        if not target.startswith(text):
            outcome.problems.append(f"partial is not a prefix of the target (chars doubled/garbled): {text!r}")
        if not text:
            outcome.problems.append("ContinuationFailed with an empty partial (nothing was generated)")
        trace = partial.continuation
        if trace.stop_cause != "error":
            outcome.problems.append(f"partial stop_cause {trace.stop_cause!r}")
        outcome.problems += _usage_problems(partial)
        if sum(r.chars_added for r in trace.rounds) != len(text):
            outcome.problems.append("the partial's rounds' chars_added do not add up to its text")
        if error.__cause__ is None or error.cause is not error.__cause__:
            outcome.problems.append("ContinuationFailed without its cause")
        if error.text != text:
            outcome.problems.append(".text differs from the partial's content")
        if delivered is not None and not text.startswith(delivered):
            outcome.problems.append(f"streamed text {delivered!r} is not a prefix of the partial {text!r}")
        return outcome
    if isinstance(error, openai.APIError):
        outcome = Outcome(call, type(error).__name__, delivered=delivered, error=error)
        if delivered:
            outcome.problems.append(f"SDK error after text was streamed ({delivered!r}): the partial is lost")
        return outcome
    kind = "JSONDecodeError (raw SDK)" if isinstance(error, json.JSONDecodeError) else type(error).__name__
    outcome = Outcome(call, f"untyped:{kind}", delivered=delivered, error=error)
    outcome.problems.append(f"untyped exception {type(error).__module__}.{type(error).__qualname__}: {error!r}")
    return outcome


def call_kwargs(call: Call) -> dict[str, Any]:
    kwargs = dict(call.request, model=call.model, retry=fast_retry(), dialect=call.dialect, max_rounds=400)
    if call.stream:
        kwargs["stream"] = True
        if call.index % 2:
            kwargs["stream_options"] = {"include_usage": True}
    return kwargs


def run_sync(call: Call, client: Any) -> Outcome:
    delivered: list[str] | None = [] if call.stream else None
    try:
        result = autocontinue.create(client, **call_kwargs(call))
        if delivered is None:
            choice = result.choices[0]
            return judge_result(call, choice.message.content or "", result, choice.finish_reason, result.continuation)
        finish = None
        for chunk in result:
            if chunk.choices:
                delivered.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        return judge_result(call, "".join(delivered), None, finish, result.continuation)
    except Exception as error:
        return judge_error(call, error, None if delivered is None else "".join(delivered))


async def run_async(call: Call, client: Any) -> Outcome:
    delivered: list[str] | None = [] if call.stream else None
    try:
        result = await autocontinue.acreate(client, **call_kwargs(call))
        if delivered is None:
            choice = result.choices[0]
            return judge_result(call, choice.message.content or "", result, choice.finish_reason, result.continuation)
        finish = None
        async for chunk in result:
            if chunk.choices:
                delivered.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        return judge_result(call, "".join(delivered), None, finish, result.continuation)
    except Exception as error:
        return judge_error(call, error, None if delivered is None else "".join(delivered))


def check_against_log(outcome: Outcome, log: list[dict[str, Any]]) -> None:
    """Failures only: compare with what the emulator actually did for the call.

    - an SDK error (no ContinuationFailed) is right only if no request produced answer text;
    - after a burst that exhausted a round, the partial must be exactly the text after the last clean request.
    """
    call = outcome.call
    text_requests = [
        i for i, e in enumerate(log) if "fault" not in e and "error" not in e and sent_prefix(e) is not None
    ]
    if outcome.kind != "ContinuationFailed":
        if text_requests:
            outcome.problems.append(
                f"{outcome.kind} raised although request #{text_requests[0] + 1} produced text: the partial is lost"
            )
        return
    if call.burst_at is None:
        outcome.problems.append(f"failed although no run of faults could exhaust a round's attempts: {outcome.error}")
        return
    if not text_requests:
        return
    last = text_requests[-1]
    between = log[last + 1 : call.burst_at - 1]
    if any("fault" in e for e in between) or len(log) != call.burst_at + 5:
        return  # text may have come from a broken stream, or the burst was not where the call failed
    expected = predicted_text_after(log[last], call.script)
    if expected is None:
        return
    outcome.partial_verified = True
    if outcome.text != expected:
        outcome.problems.append(
            f"partial is not the text of the completed rounds: expected {expected!r}, got {outcome.text!r}"
        )


def chunked(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
