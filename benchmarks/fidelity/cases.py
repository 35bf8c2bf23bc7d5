"""The cases of the seam-fidelity benchmark: the one-shot reference, a continued call in rounds of ``k`` tokens in
one of the modes, and the comparison of the two. Recording happens at the HTTP layer (httpx event hooks), so what is
compared is exactly what autocontinue sent and received."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import openai

import autocontinue
from autocontinue.budget import BudgetState, StopCondition
from autocontinue.local import DEFAULT_SEED

from ..prompts import Prompt


@dataclass(frozen=True)
class Mode:
    """How a continued call of the benchmark is made.

    ``dialect`` ``None`` is the one under test (``--dialect``, default "auto": prefill on the loopback URL);
    ``budget``: no early stop, ``max_total_tokens`` = N, to measure what the budget buys.
    """

    dialect: str | None
    heal: bool
    stop_on_repeat: bool
    stream: bool = False
    budget: bool = False


#: "naive" is continue_final_message without healing: the echo is stripped and nothing else is done (prefill would
#: still hold back trailing whitespace). "healed" (streamed: "healed-stream") uses the dialect under test; "cfm"
#: and "cfm-stream" continue_final_message, healed. They let a model that loops go on as it would in one request,
#: so that they measure the seam alone; "default" is "healed" with the library's defaults, whose repeat stop ends
#: such a call early. "naive-prefill" (not run by default) isolates the effect of holding back trailing
#: whitespace alone; "budget" (not run by default) what max_total_tokens buys with healing on.
MODE_SETTINGS: dict[str, Mode] = {
    "naive": Mode("continue_final_message", heal=False, stop_on_repeat=False),
    "healed": Mode(None, heal=True, stop_on_repeat=False),
    "healed-stream": Mode(None, heal=True, stop_on_repeat=False, stream=True),
    "cfm": Mode("continue_final_message", heal=True, stop_on_repeat=False),
    "cfm-stream": Mode("continue_final_message", heal=True, stop_on_repeat=False, stream=True),
    "default": Mode(None, heal=True, stop_on_repeat=True),
    "naive-prefill": Mode("prefill", heal=False, stop_on_repeat=False),
    "budget": Mode(None, heal=True, stop_on_repeat=False, budget=True),
}
MODES = ("healed", "healed-stream", "cfm", "cfm-stream")
#: one-shot limit: long enough for several seams at every k, short enough for two models in well under an hour
#: characters shown on each side of a difference
CONTEXT = 40

# --------------------------------------------------------------------------------------------------- recording


@dataclass
class Exchange:
    """One request of a call, and the reply's text (only chat completions are recorded)."""

    request: dict[str, Any]
    content: str = ""
    finish_reason: str | None = None


class Recorder:
    """Keeps every chat-completion request and reply of the current call, through httpx event hooks.

    Recording at the HTTP layer sees exactly what autocontinue sent (the prefix of each round) without reaching
    into the library. Each worker thread has its own client and recorder, so concurrent calls never mix.
    """

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def reset(self) -> None:
        """Start recording a new call."""
        self.exchanges = []

    def on_request(self, request: Any) -> None:
        """httpx request hook: keep the JSON body of chat-completion requests."""
        if request.url.path.endswith("/chat/completions"):
            self.exchanges.append(Exchange(json.loads(request.content)))

    def on_response(self, response: Any) -> None:
        """httpx response hook: keep the reply text (only non-streamed replies can be read here)."""
        if not response.request.url.path.endswith("/chat/completions") or not self.exchanges:
            return
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return
        response.read()
        body = response.json()
        if body.get("choices"):
            choice = body["choices"][0]
            self.exchanges[-1].content = choice["message"].get("content") or ""
            self.exchanges[-1].finish_reason = choice.get("finish_reason")

    def text_so_far(self) -> str:
        """The answer after the last reply, as the seam will have joined it (llama.cpp echoes the prefix)."""
        if not self.exchanges:
            return ""
        last = self.exchanges[-1]
        sent = sent_prefix(last.request)
        return last.content if last.content.startswith(sent) else sent + last.content


def sent_prefix(request: dict[str, Any]) -> str:
    """The prefix a round sent: the content of a trailing assistant message ("" for a first round)."""
    messages = request.get("messages") or []
    if messages and messages[-1].get("role") == "assistant":
        return str(messages[-1].get("content") or "")
    return ""


class Covered(StopCondition):
    """Stops a continued call once its text is longer than the one-shot: further rounds cannot change the verdict.

    For a one-shot cut at N the verdict is then known (it is a prefix of the joined text or it is not); for one
    that ended by itself, an identical call ends by itself at exactly its length, so a longer text has already
    failed. Either way a small model that loops costs no more rounds than needed.
    """

    def __init__(self, recorder: Recorder, target: str) -> None:
        self.recorder = recorder
        self.target = target

    def __call__(self, state: BudgetState) -> str | None:
        return "covered" if len(self.recorder.text_so_far()) > len(self.target) else None

    def __repr__(self) -> str:
        return f"Covered({len(self.target)} chars)"


# ------------------------------------------------------------------------------------------------------ runs


@dataclass
class Token:
    """One token of the one-shot answer: its bytes, and the gap to the runner-up choice (a near-tie is fragile)."""

    text: str
    nbytes: int
    gap: float | None


@dataclass
class OneShot:
    """The reference answer, written in one request."""

    text: str
    finish_reason: str
    completion_tokens: int
    tokens: list[Token] = field(default_factory=list)


@dataclass
class CaseResult:
    """One (prompt, k, mode): the verdict and, for a failure, where and why."""

    prompt: str
    kind: str
    k: int
    mode: str
    identical: bool
    stop_cause: str
    rounds: int
    completion_tokens: int
    seconds: float
    first_difference: int | None = None
    expected: str = ""  # the one-shot text around the difference
    got: str = ""  # the joined text around the difference
    diagnosis: dict[str, Any] | None = None
    #: not identical, but the joined text is the one-shot's up to where the call stopped (a loop guard's stop, not
    #: a seam's error)
    stopped_early: bool = False
    #: "budget" mode: the call's characters / the one-shot's (None where the one-shot ended before N)
    budget_chars: float | None = None


def make_client(base_url: str, api_key: str = "unused") -> tuple[openai.OpenAI, Recorder]:
    """An SDK client whose chat-completion traffic is recorded (no SDK retries: a failure must show)."""
    recorder = Recorder()
    http_client = openai.DefaultHttpxClient(
        event_hooks={"request": [recorder.on_request], "response": [recorder.on_response]}
    )
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, http_client=http_client, timeout=600)
    return client, recorder


def request_args(model: str, prompt: Prompt, extra_body: dict[str, Any] | None) -> dict[str, Any]:
    """The request every run shares: greedy decoding and a fixed seed, so the answer is reproducible."""
    args: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt.text}],
        "temperature": 0,
        "seed": DEFAULT_SEED,
    }
    if extra_body:
        args["extra_body"] = dict(extra_body)
    return args


def run_oneshot(
    client: openai.OpenAI, model: str, prompt: Prompt, n: int, extra_body: dict[str, Any] | None
) -> OneShot:
    """The reference: one request of ``n`` tokens, with the log-probabilities that tell near-ties apart."""
    reply = client.chat.completions.create(
        **request_args(model, prompt, extra_body), max_tokens=n, logprobs=True, top_logprobs=2
    )
    choice = reply.choices[0]
    tokens: list[Token] = []
    for item in choice.logprobs.content if choice.logprobs and choice.logprobs.content else []:
        runners = [t.logprob for t in item.top_logprobs if t.token != item.token or t.bytes != item.bytes]
        gap = item.logprob - max(runners) if runners else None
        tokens.append(Token(item.token, len(item.bytes or item.token.encode()), gap))
    return OneShot(
        text=choice.message.content or "",
        finish_reason=choice.finish_reason,
        completion_tokens=reply.usage.completion_tokens if reply.usage else 0,
        tokens=tokens,
    )


def compare(reference: OneShot, text: str) -> int | None:
    """The first position where ``text`` fails to reproduce the one-shot, or ``None`` when it is identical.

    A one-shot cut at N only has to be a prefix of the joined text; one that ended by itself must be all of it.
    """
    expected = reference.text
    common = common_prefix(expected, text)
    if reference.finish_reason == "length":
        return None if common == len(expected) else common
    return None if text == expected else common


def run_case(
    client: openai.OpenAI,
    recorder: Recorder,
    model: str,
    prompt: Prompt,
    reference: OneShot,
    *,
    k: int,
    mode: str,
    n: int,
    dialect: str,
    extra_body: dict[str, Any] | None,
) -> tuple[CaseResult, list[Exchange]]:
    """One continued call in rounds of ``k`` tokens, compared with the one-shot (``dialect``: the healed one's)."""
    settings = MODE_SETTINGS[mode]
    recorder.reset()
    started = time.perf_counter()
    options: dict[str, Any] = {
        # Enough rounds and tokens for the whole one-shot even when every round regenerates a held word.
        "max_rounds": 10 * n,
        "max_total_tokens": 4 * n + 4 * k,
        "stop_when": Covered(recorder, reference.text),
    }
    if settings.budget:
        options = {"max_rounds": 10 * n, "max_total_tokens": n}
    call = autocontinue.create(
        client,
        **request_args(model, prompt, extra_body),
        max_tokens=k,
        **options,
        dialect=settings.dialect or dialect,
        heal=settings.heal,
        stop_on_repeat=settings.stop_on_repeat,
        retry=None,
        **({"stream": True} if settings.stream else {}),
    )
    if settings.stream:
        with call as stream:
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        trace = stream.continuation
    else:
        text = call.choices[0].message.content or ""
        trace = call.continuation
    seconds = time.perf_counter() - started
    assert trace is not None
    difference = compare(reference, text)
    result = CaseResult(
        prompt=prompt.name,
        kind=prompt.kind,
        k=k,
        mode=mode,
        identical=difference is None,
        stop_cause=trace.stop_cause,
        rounds=len(trace.rounds),
        completion_tokens=sum(r.usage.completion_tokens for r in trace.rounds),
        seconds=round(seconds, 3),
    )
    if settings.budget:
        # Only a one-shot that used the whole budget is a fair measure of what the budget buys.
        if reference.finish_reason == "length" and reference.text:
            result.budget_chars = round(len(text) / len(reference.text), 4)
        # The verdict that matters here is the ratio; the text is a prefix of the one-shot's or the seam failed.
        result.identical = reference.text.startswith(text)
        difference = None if result.identical else common_prefix(reference.text, text)
    if difference is not None:
        result.first_difference = difference
        result.expected = _around(reference.text, difference)
        result.got = _around(text, difference)
        result.stopped_early = difference == len(text)
    return result, list(recorder.exchanges)


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _around(text: str, position: int) -> str:
    return text[max(0, position - CONTEXT) : position] + "⟦" + text[position : position + CONTEXT]
