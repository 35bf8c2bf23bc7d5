"""Seam fidelity on the real engine: is an answer written in rounds the same as the answer written at once?

Claim: at temperature 0 with a fixed seed, an answer produced in rounds of ``k`` tokens and joined by autocontinue
is identical to the one-shot answer under the same total limit. That holds only if every seam gives the model
exactly the context it had when it wrote the text in one go: the same tokens (the prefix must end where the
tokenizer splits the same way the model emitted it) and the same numbers (the engine must compute the same
logits for them).

Method, per model and prompt: a one-shot request with ``max_tokens=N``; then for each ``k`` the continued call
with ``max_tokens=k`` per round, once with ``heal=False`` ("naive": the echo is stripped, nothing else), then with
``heal=True`` in each dialect llama.cpp takes, streamed and not ("healed" and "healed-stream": a plain trailing
assistant message, the ``prefill`` that "auto" picks on a loopback URL; "cfm" and "cfm-stream":
``continue_final_message``), all with ``stop_on_repeat=False`` so that a model that loops goes on as it does in
one request, and once with the library's defaults ("default": healed, and a loop ends the call early). "Identical"
means the joined text equals the one-shot text when the one-shot ended by itself, or starts with it when the
one-shot was cut at ``N``. A continued call stops as soon as its text is longer than the
one-shot (a custom stop condition), so a small model that loops forever costs no more than needed.

Every failure is diagnosed automatically: the round whose reply first left the one-shot text, the prefix it was
sent, whether that prefix ends on one of the one-shot's own token boundaries and re-tokenizes to the same tokens,
the log-probability gap of the one-shot's choice at the first differing token, and whether replaying the round
without the prompt cache gives the one-shot text back.

The "budget" mode measures something else: what ``max_total_tokens=N`` buys in rounds of ``k`` with healing on
(a held word is written again each round, so its tokens are paid twice): the characters of the continued call's
text as a share of the one-shot's (``budget_chars``), one-shots that ended by themselves before N excluded.

    python -m benchmarks.fidelity                    # both models, all prompts: benchmarks/results/fidelity.json
    python -m benchmarks.fidelity --model gemma3 --prompts story_cat,zh_story --k 5,7 --modes healed,cfm
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai

import autocontinue
from autocontinue.budget import BudgetState, StopCondition
from autocontinue.local import DEFAULT_SEED, MODELS, LocalEngine

from .prompts import PROMPTS, Prompt

__all__ = [
    "K_VALUES",
    "MODES",
    "CaseResult",
    "OneShot",
    "Recorder",
    "compare",
    "main",
    "make_client",
    "run_case",
    "run_oneshot",
]

K_VALUES = (9,)
#: the prompts of the two-model table (24 of the 35: every kind, non-English, code, tables and blank lines included;
#: Gemma on a shared 2-core machine writes a few tokens a second, so the table is kept to what gives an answer)
TABLE_PROMPTS = (
    "story_cat",
    "explain_photosynthesis",
    "dialogue",
    "list_tips",
    "list_steps",
    "code_python",
    "code_js",
    "code_bash",
    "json_person",
    "json_list",
    "fr_story",
    "fr_explain",
    "de_explain",
    "es_story",
    "zh_story",
    "zh_explain",
    "ja_poem",
    "poem_stanzas",
    "blank_sections",
    "haiku_series",
    "table_fruits",
    "table_schedule",
    "markdown_readme",
    "math",
)


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
#: the healed modes: the seam under test, whose identical rate is the goal (100 %)
HEALED_MODES = ("healed", "healed-stream", "cfm", "cfm-stream")
#: one-shot limit: long enough for several seams at every k, short enough for two models in well under an hour
DEFAULT_N = 48
RESULTS = Path(__file__).resolve().parent / "results" / "fidelity.json"
#: characters shown on each side of a difference
CONTEXT = 40
#: below this log-probability gap between the one-shot's token and the runner-up, the choice is a near-tie that
#: differences in floating-point evaluation order can flip
NEAR_TIE = 0.05


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
    common = _common_prefix(expected, text)
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
        difference = None if result.identical else _common_prefix(reference.text, text)
    if difference is not None:
        result.first_difference = difference
        result.expected = _around(reference.text, difference)
        result.got = _around(text, difference)
        result.stopped_early = difference == len(text)
    return result, list(recorder.exchanges)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _around(text: str, position: int) -> str:
    return text[max(0, position - CONTEXT) : position] + "⟦" + text[position : position + CONTEXT]


# ------------------------------------------------------------------------------------------------- diagnosis


class Engine:
    """The llama-server endpoints a diagnosis needs beyond the OpenAI API (tokenization)."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        # Our own loopback server: a developer's http_proxy must not capture the request.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the server tokenizes message content."""
        body = json.dumps({"content": text}).encode()
        request = urllib.request.Request(
            f"{self.server_url}/tokenize", data=body, headers={"Content-Type": "application/json"}
        )
        with self._opener.open(request, timeout=30) as response:
            return [int(t) if isinstance(t, int) else int(t["id"]) for t in json.load(response)["tokens"]]


def diverging_round(exchanges: Sequence[Exchange], reference: OneShot) -> int | None:
    """Index of the first exchange whose joined text leaves the one-shot text."""
    expected = reference.text
    for index, exchange in enumerate(exchanges):
        sent = sent_prefix(exchange.request)
        joined = exchange.content if exchange.content.startswith(sent) else sent + exchange.content
        common = _common_prefix(expected, joined)
        if common < min(len(expected), len(joined)):
            return index
    return None


def token_boundaries(reference: OneShot) -> list[int]:
    """Byte offsets (into the one-shot's UTF-8 text) where the model's own tokens end."""
    offsets, total = [0], 0
    for token in reference.tokens:
        total += token.nbytes
        offsets.append(total)
    return offsets


#: what a server puts in place of bytes that are not valid UTF-8
REPLACEMENT_CHAR = "\ufffd"


def diagnose(
    client: openai.OpenAI,
    recorder: Recorder,
    engine: Engine,
    reference: OneShot,
    exchanges: Sequence[Exchange],
    result: CaseResult,
    reference_ids: list[int] | None,
) -> dict[str, Any]:
    """Why a continued call left the one-shot text: the seam, the prefix sent, tokens, near-ties, the cache."""
    diagnosis: dict[str, Any] = {"round": None}
    index = diverging_round(exchanges, reference)
    if index is None:
        # Every reply agreed with the one-shot, so the model did its part: the call stopped early or joined wrongly.
        if result.stop_cause == "no_progress":
            diagnosis["cause"] = "no_progress: the answer looped (1,000 characters repeated) and the call stopped early"
        else:
            diagnosis["cause"] = (
                f"join: every reply agreed with the one-shot, the joined text did not ({result.stop_cause})"
            )
        return diagnosis
    exchange = exchanges[index]
    sent = sent_prefix(exchange.request)
    reply_new = exchange.content[len(sent) :] if exchange.content.startswith(sent) else exchange.content
    previous = exchanges[index - 1] if index > 0 else None
    previous_text = ""
    if previous is not None:
        previous_sent = sent_prefix(previous.request)
        content = previous.content
        previous_text = content if content.startswith(previous_sent) else previous_sent + content
    held = previous_text[len(sent) :] if previous_text.startswith(sent) else ""
    diagnosis.update(
        round=index + 1,
        sent_tail=sent[-CONTEXT:],
        held=held,
        reply_head=reply_new[:CONTEXT],
        expected_head=reference.text[len(sent) : len(sent) + CONTEXT],
    )
    if index == 0:
        diagnosis["cause"] = "first round differs from the one-shot: the engine is not deterministic"
        return diagnosis
    # Tokens: does the prefix end on one of the one-shot's own token boundaries, and re-tokenize identically?
    sent_bytes = len(sent.encode())
    boundaries = token_boundaries(reference)
    on_boundary = sent_bytes in boundaries
    same_tokens: bool | None = None
    if on_boundary and reference_ids is not None:
        count = boundaries.index(sent_bytes)
        same_tokens = engine.tokenize(sent) == reference_ids[:count]
    diagnosis["on_token_boundary"] = on_boundary
    diagnosis["same_tokens"] = same_tokens
    # The one-shot's first token past the prefix that the reply did not reproduce, and how close its choice was.
    differ_at = len(sent) + _common_prefix(reference.text[len(sent) :], reply_new)
    differ_byte = len(reference.text[:differ_at].encode())
    position = next((i for i, end in enumerate(boundaries[1:]) if end > differ_byte), None)
    gap = reference.tokens[position].gap if position is not None else None
    diagnosis["differing_token"] = reference.tokens[position].text if position is not None else None
    diagnosis["gap"] = None if gap is None else round(gap, 4)
    # Replay the round with the prompt cache off: the whole prompt is then evaluated as one batch instead of
    # reusing the key/value entries computed token by token, which moves the logits slightly. (This rewrites the
    # slot's cache, so diagnoses run only after every case of the prompt.)
    diagnosis["replay_uncached_matches"] = _replay_matches(client, recorder, exchange, reference, sent, cache=False)
    if REPLACEMENT_CHAR in sent:
        cause = (
            "unreachable: the engine's text holds U+FFFD (it replaced invalid UTF-8 the model wrote), so the bytes "
            "the model wrote cannot be sent back"
        )
    elif not on_boundary:
        cause = "prefix cut inside one of the model's tokens"
    elif same_tokens is False:
        cause = "prefix re-tokenizes differently from the model's own tokens"
    elif same_tokens is None:
        cause = (
            "prefix tokens not compared: the one-shot's text does not re-tokenize into the model's own tokens "
            "(a seam where a tokenization can differ, or numerics)"
        )
    elif gap is not None and gap < NEAR_TIE:
        cause = f"numerics: near-tie (gap {gap:.4f}) flipped by different evaluation of the same tokens"
    else:
        cause = "numerics: same tokens, different logits"
    diagnosis["cause"] = cause
    return diagnosis


def _replay_matches(
    client: openai.OpenAI, recorder: Recorder, exchange: Exchange, reference: OneShot, sent: str, *, cache: bool
) -> bool:
    """Does sending the failing round's request again (prompt cache on or off) give the one-shot's text back?"""
    request = dict(exchange.request)
    # Replayed without streaming whatever the case did: the reply's text is what is compared.
    extra = {key: value for key, value in request.items() if key not in _SDK_FIELDS | {"stream", "stream_options"}}
    kwargs = {key: value for key, value in request.items() if key in _SDK_FIELDS}
    extra["cache_prompt"] = cache
    recorder.reset()
    reply = client.chat.completions.create(**kwargs, extra_body=extra)
    content = reply.choices[0].message.content or ""
    joined = content if content.startswith(sent) else sent + content
    common = _common_prefix(reference.text, joined)
    return common >= min(len(reference.text), len(joined))


_SDK_FIELDS = frozenset({"model", "messages", "max_tokens", "temperature", "seed"})


# ----------------------------------------------------------------------------------------------------- runner


@dataclass
class PromptRun:
    """Everything measured for one prompt."""

    prompt: Prompt
    reference: OneShot
    cases: list[CaseResult]


def run_prompt(
    prompt: Prompt,
    *,
    connect: Callable[[], tuple[openai.OpenAI, Recorder]],
    engine: Engine,
    model: str,
    n: int,
    ks: Iterable[int],
    modes: Iterable[str],
    dialect: str,
    extra_body: dict[str, Any] | None,
) -> PromptRun:
    """The one-shot and every (k, mode) of one prompt, failures diagnosed."""
    client, recorder = connect()
    reference = run_oneshot(client, model, prompt, n, extra_body)
    cases: list[CaseResult] = []
    failures: list[tuple[CaseResult, list[Exchange]]] = []
    for k in ks:
        for mode in modes:
            result, exchanges = run_case(
                client,
                recorder,
                model,
                prompt,
                reference,
                k=k,
                mode=mode,
                n=n,
                dialect=dialect,
                extra_body=extra_body,
            )
            if not result.identical:
                failures.append((result, exchanges))
            cases.append(result)
    # Diagnoses replay requests, which changes what the server has cached: they must come after every measured
    # call of the prompt, or they would change the numbers of the calls after them.
    reference_ids = _reference_ids(engine, reference) if failures else None
    for result, exchanges in failures:
        result.diagnosis = diagnose(client, recorder, engine, reference, exchanges, result, reference_ids)
    return PromptRun(prompt, reference, cases)


def _reference_ids(engine: Engine, reference: OneShot) -> list[int] | None:
    # The one-shot's token ids are not in the logprobs; re-tokenizing the whole text gives them when the model's
    # tokens were canonical, which is checked by comparing the pieces' byte lengths.
    ids = engine.tokenize(reference.text)
    return ids if len(ids) == len(reference.tokens) else None


def summarize(runs: Sequence[PromptRun], ks: Sequence[int], modes: Sequence[str]) -> dict[str, Any]:
    """Identical rates per k and mode, and overall."""
    table: dict[str, dict[str, Any]] = {}
    for k in [*ks, "all"]:
        row: dict[str, Any] = {}
        for mode in modes:
            cases = [c for r in runs for c in r.cases if c.mode == mode and (k == "all" or c.k == k)]
            same = sum(c.identical for c in cases)
            row[mode] = {
                "identical": same,
                "total": len(cases),
                "rate": round(same / len(cases), 4) if cases else None,
                "stopped_early": sum(c.stopped_early for c in cases),
                # why the others differ (the diagnosis' cause, up to its first colon)
                "causes": dict(
                    Counter(
                        ((c.diagnosis or {}).get("cause") or "undiagnosed").split(":")[0]
                        for c in cases
                        if not c.identical
                    ).most_common()
                ),
            }
            ratios = [c.budget_chars for c in cases if c.budget_chars is not None]
            if ratios:
                row[mode]["budget_chars"] = {
                    "mean": round(sum(ratios) / len(ratios), 4),
                    "min": min(ratios),
                    "max": max(ratios),
                    "cases": len(ratios),
                }
        table[str(k)] = row
    return table


def render(summary: dict[str, Any], runs: Sequence[PromptRun], modes: Sequence[str]) -> str:
    """The human-readable report: the table, then every failure with its diagnosis."""
    lines = ["", "k     " + "".join(f"{mode:>22}" for mode in modes)]
    for k, row in summary.items():
        cells = "".join(
            f"{row[m]['identical']:>6}/{row[m]['total']:<4} {100 * (row[m]['rate'] or 0):6.1f} %   " for m in modes
        )
        lines.append(f"{k:<6}{cells}")
    for k, row in summary.items():
        for mode in modes:
            budget = row[mode].get("budget_chars")
            if budget:
                lines.append(
                    f"k={k} {mode}: max_total_tokens=N bought {100 * budget['mean']:.1f} % of the one-shot's "
                    f"characters (min {100 * budget['min']:.1f} %, max {100 * budget['max']:.1f} %, "
                    f"{budget['cases']} prompts)"
                )
    overall = summary.get("all", {})
    for mode in modes:
        if overall.get(mode, {}).get("causes"):
            causes = ", ".join(f"{n} {cause}" for cause, n in overall[mode]["causes"].items())
            lines.append(f"{mode} not identical: {causes}")
    failures = [c for r in runs for c in r.cases if not c.identical]
    lines.append("")
    lines.append(f"{len(failures)} failing (prompt, k, mode):")
    for case in failures:
        lines.append(
            f"- {case.prompt} k={case.k} {case.mode}: first difference at {case.first_difference} "
            f"(stop {case.stop_cause}, {case.rounds} rounds)"
        )
        lines.append(f"    expected: {case.expected!r}")
        lines.append(f"    got:      {case.got!r}")
        if case.diagnosis:
            d = case.diagnosis
            lines.append(f"    cause: {d.get('cause')}")
            if d.get("round"):
                lines.append(
                    f"    round {d['round']}: sent ...{d.get('sent_tail')!r} held {d.get('held')!r} "
                    f"reply {d.get('reply_head')!r} one-shot {d.get('expected_head')!r}"
                )
                lines.append(
                    f"    token boundary {d.get('on_token_boundary')}, same tokens {d.get('same_tokens')}, "
                    f"differing token {d.get('differing_token')!r} gap {d.get('gap')}, "
                    f"replay without prompt cache matches {d.get('replay_uncached_matches')}"
                )
    return "\n".join(lines)


def _write_results(
    path: Path,
    settings: dict[str, Any],
    runs: dict[str, Sequence[PromptRun]],
    ks: Sequence[int],
    modes: Sequence[str],
    seconds: float,
    *,
    complete: bool,
) -> None:
    """The results JSON (per model: the summary table and every case), written atomically."""
    results = {
        "settings": {**settings, "seconds": round(seconds, 1), "complete": complete},
        "summary": {model: summarize(model_runs, ks, modes) for model, model_runs in runs.items()},
        "prompts": {
            model: [
                {
                    "name": r.prompt.name,
                    "kind": r.prompt.kind,
                    "one_shot": {
                        "finish_reason": r.reference.finish_reason,
                        "completion_tokens": r.reference.completion_tokens,
                        "text": r.reference.text,
                    },
                    "cases": [asdict(c) for c in r.cases],
                }
                for r in model_runs
            ]
            for model, model_runs in runs.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def _interrupt(signum: int, frame: object) -> None:
    # Once only: `timeout` and process-group kills deliver the signal twice, and a second KeyboardInterrupt
    # would break the clean-up (stopping the server) that the first one started.
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report, write the results JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="one-shot max_tokens (default %(default)s)")
    parser.add_argument("--k", default=",".join(map(str, K_VALUES)), help="per-round max_tokens values")
    parser.add_argument("--modes", default=",".join(MODES), help=f"some of {', '.join(MODE_SETTINGS)}")
    parser.add_argument(
        "--prompts",
        default=",".join(TABLE_PROMPTS),
        help="comma-separated prompt names, or 'all' (default: the table's)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        # Default 1: two slots decoding in one batch, or a slot whose cache another prompt rewrote, can change the
        # numerics and so the text (a speed-up from 2 could not be measured on a busy 2-core machine).
        help="prompts run concurrently, one server slot each (default %(default)s)",
    )
    parser.add_argument("--dialect", default="auto", help="continuation dialect (default %(default)s: prefill)")
    parser.add_argument(
        "--model", default=",".join(MODELS), help=f"local models, some of {', '.join(MODELS)} (default: all)"
    )
    parser.add_argument(
        "--cache-prompt", choices=("default", "on", "off"), default="default", help="llama.cpp's cache_prompt"
    )
    parser.add_argument(
        "--engine-args", default="", help="further llama-server flags, e.g. '--ubatch-size 1' (split on spaces)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default %(default)s)")
    args = parser.parse_args(argv)
    ks = [int(v) for v in args.k.split(",") if v]
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODE_SETTINGS):
        parser.error(
            f"unknown modes: {sorted(set(modes) - set(MODE_SETTINGS))}; expected some of {sorted(MODE_SETTINGS)}"
        )
    models = [m for m in args.model.split(",") if m]
    if set(models) - set(MODELS):
        parser.error(f"unknown models: {sorted(set(models) - set(MODELS))}; expected some of {sorted(MODELS)}")
    wanted = {p for p in args.prompts.split(",") if p and p != "all"}
    prompts = [p for p in PROMPTS if not wanted or p.name in wanted]
    if wanted - {p.name for p in prompts}:
        parser.error(f"unknown prompts: {sorted(wanted - {p.name for p in prompts})}")
    extra_body = None if args.cache_prompt == "default" else {"cache_prompt": args.cache_prompt == "on"}

    # SIGTERM (a supervisor, `kill`, `timeout`) must unwind through the `with` below so the server is stopped; by
    # default it would kill this process and leave llama-server running, busy with the queued requests.
    signal.signal(signal.SIGTERM, _interrupt)
    settings = {
        "models": {key: MODELS[key].name for key in models},
        "n": args.n,
        "k": ks,
        "modes": modes,
        "workers": args.workers,
        "dialect": args.dialect,
        "cache_prompt": args.cache_prompt,
        "engine_args": args.engine_args.split(),
        "seed": DEFAULT_SEED,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    started = time.perf_counter()
    done: dict[str, list[PromptRun]] = {}
    lock = threading.Lock()
    for key in models:
        runs = done.setdefault(key, [])
        with LocalEngine(model=key, parallel=max(1, args.workers), extra_args=args.engine_args.split()) as eng:
            engine = Engine(eng.server_url)
            local = threading.local()

            def connect(eng: LocalEngine = eng, local: threading.local = local) -> tuple[openai.OpenAI, Recorder]:
                # One client (and recorder) per worker thread, reused across that worker's prompts.
                if not hasattr(local, "client"):
                    local.client = make_client(eng.base_url)
                pair: tuple[openai.OpenAI, Recorder] = local.client
                return pair

            def one(
                prompt: Prompt,
                key: str = key,
                eng: LocalEngine = eng,
                engine: Engine = engine,
                connect: Callable[[], tuple[openai.OpenAI, Recorder]] = connect,
                runs: list[PromptRun] = runs,
            ) -> PromptRun:
                run = run_prompt(
                    prompt,
                    connect=connect,
                    engine=engine,
                    model=eng.model,
                    n=args.n,
                    ks=ks,
                    modes=modes,
                    dialect=args.dialect,
                    extra_body=extra_body,
                )
                verdicts = " ".join(f"{c.k}{c.mode}{'=' if c.identical else 'X'}" for c in run.cases)
                print(f"{key} {prompt.name:<24} one-shot {run.reference.finish_reason:<6} {verdicts}", file=sys.stderr)
                with lock:
                    # Saved after every prompt: a run that is interrupted (or takes too long on a busy machine)
                    # still leaves what it measured.
                    runs.append(run)
                    _write_results(args.out, settings, done, ks, modes, time.perf_counter() - started, complete=False)
                return run

            pool = ThreadPoolExecutor(max_workers=max(1, args.workers))
            try:
                list(pool.map(one, prompts))
            finally:
                # On an interrupt, prompts not started are dropped instead of run to the end; the calls in flight
                # fail as soon as the server stops.
                pool.shutdown(wait=False, cancel_futures=True)
    elapsed = time.perf_counter() - started

    for key, runs in done.items():
        print(f"\n=== {key} ({MODELS[key].name})")
        print(render(summarize(runs, ks, modes), runs, modes))
    print(f"\n{len(prompts)} prompts, N={args.n}, k={ks}, {args.workers} worker(s), {elapsed:.1f} s")
    _write_results(args.out, settings, done, ks, modes, elapsed, complete=True)
    print(f"results: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # The engine was stopped on the way out; a traceback would say nothing more.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
