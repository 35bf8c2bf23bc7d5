"""Seam fidelity on the real engine: is an answer written in rounds the same as the answer written at once?

Claim: at temperature 0 with a fixed seed, an answer produced in rounds of ``k`` tokens and joined by autocontinue
is identical to the one-shot answer under the same total limit. That holds only if every seam gives the model
exactly the context it had when it wrote the text in one go: the same tokens (the prefix must end where the
tokenizer splits the same way the model emitted it) and the same numbers (the engine must compute the same
logits for them).

Method, per prompt: a one-shot request with ``max_tokens=N``; then for each ``k`` the continued call with
``max_tokens=k`` per round, once with ``heal=False`` ("naive": the echo is stripped, nothing else), once with
``heal=True`` ("healed"), both with ``stop_on_repeat=False`` so that a model that loops goes on as it does in one
request, and once with the library's defaults ("default": healed, and a loop ends the call early). "Identical"
means the joined text equals the one-shot text when the one-shot ended by itself, or starts with it when the
one-shot was cut at ``N``. A continued call stops as soon as its text is longer than the
one-shot (a custom stop condition), so a small model that loops forever costs no more than needed.

Every failure is diagnosed automatically: the round whose reply first left the one-shot text, the prefix it was
sent, whether that prefix ends on one of the one-shot's own token boundaries and re-tokenizes to the same tokens,
the log-probability gap of the one-shot's choice at the first differing token, and whether replaying the round
without the prompt cache gives the one-shot text back.

    python -m benchmarks.fidelity                    # all prompts, writes benchmarks/results/fidelity.json
    python -m benchmarks.fidelity --prompts story_cat,zh_story --k 5,7 --workers 1
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
from autocontinue.local import DEFAULT_SEED, LocalEngine

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

K_VALUES = (5, 7, 13, 23, 64)
#: mode -> (dialect, heal, stop_on_repeat). "naive" is continue_final_message without healing: the echo is stripped
#: and nothing else is done (prefill would still hold back trailing whitespace). "healed" uses the dialect under
#: test (the default, "auto", resolves to prefill on the loopback URL). Both let a model that loops go on as it
#: would in one request, so that they measure the seam alone; "default" is "healed" with the library's defaults,
#: whose repeat stop ends such a call early. "naive-prefill" (not run by default) isolates the effect of holding
#: back trailing whitespace alone.
MODE_SETTINGS: dict[str, tuple[str | None, bool, bool]] = {
    "naive": ("continue_final_message", False, False),
    "healed": (None, True, False),
    "default": (None, True, True),
    "naive-prefill": ("prefill", False, False),
}
MODES = ("naive", "healed", "default")
#: one-shot limit: long enough for several seams at every k, short enough for 30+ prompts in minutes
DEFAULT_N = 96
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
    mode_dialect, heal, stop_on_repeat = MODE_SETTINGS[mode]
    recorder.reset()
    started = time.perf_counter()
    reply = autocontinue.create(
        client,
        **request_args(model, prompt, extra_body),
        max_tokens=k,
        # Enough rounds and tokens for the whole one-shot even when every round regenerates a held word.
        max_rounds=10 * n,
        max_total_tokens=4 * n + 4 * k,
        stop_when=Covered(recorder, reference.text),
        dialect=mode_dialect or dialect,
        heal=heal,
        stop_on_repeat=stop_on_repeat,
        retry=None,
    )
    seconds = time.perf_counter() - started
    text = reply.choices[0].message.content or ""
    trace = reply.continuation
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
            diagnosis["cause"] = "no_progress: a round repeated the previous one's text and the call stopped early"
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
    extra = {key: value for key, value in request.items() if key not in _SDK_FIELDS}
    kwargs = {key: value for key, value in request.items() if key in _SDK_FIELDS}
    extra["cache_prompt"] = cache
    recorder.reset()
    reply = client.chat.completions.create(**kwargs, extra_body=extra)
    content = reply.choices[0].message.content or ""
    joined = content if content.startswith(sent) else sent + content
    common = _common_prefix(reference.text, joined)
    return common >= min(len(reference.text), len(joined))


_SDK_FIELDS = frozenset({"model", "messages", "max_tokens", "temperature", "seed", "stream"})


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
    runs: Sequence[PromptRun],
    ks: Sequence[int],
    modes: Sequence[str],
    seconds: float,
    *,
    complete: bool,
) -> None:
    """The results JSON, written atomically (a reader never sees half a file)."""
    results = {
        "settings": {**settings, "seconds": round(seconds, 1), "complete": complete},
        "summary": summarize(runs, ks, modes),
        "prompts": [
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
            for r in runs
        ],
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
    parser.add_argument("--prompts", default="", help="comma-separated prompt names (default: all)")
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
    wanted = {p for p in args.prompts.split(",") if p}
    prompts = [p for p in PROMPTS if not wanted or p.name in wanted]
    if wanted - {p.name for p in prompts}:
        parser.error(f"unknown prompts: {sorted(wanted - {p.name for p in prompts})}")
    extra_body = None if args.cache_prompt == "default" else {"cache_prompt": args.cache_prompt == "on"}

    # SIGTERM (a supervisor, `kill`, `timeout`) must unwind through the `with` below so the server is stopped; by
    # default it would kill this process and leave llama-server running, busy with the queued requests.
    signal.signal(signal.SIGTERM, _interrupt)
    settings = {
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
    done: list[PromptRun] = []
    lock = threading.Lock()
    with LocalEngine(parallel=max(1, args.workers), extra_args=args.engine_args.split()) as eng:
        engine = Engine(eng.server_url)
        local = threading.local()

        def connect() -> tuple[openai.OpenAI, Recorder]:
            # One client (and recorder) per worker thread, reused across that worker's prompts.
            if not hasattr(local, "client"):
                local.client = make_client(eng.base_url)
            pair: tuple[openai.OpenAI, Recorder] = local.client
            return pair

        def one(prompt: Prompt) -> PromptRun:
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
            verdicts = " ".join(f"{c.k}{c.mode[0]}{'=' if c.identical else 'X'}" for c in run.cases)
            print(f"{prompt.name:<24} one-shot {run.reference.finish_reason:<6} {verdicts}", file=sys.stderr)
            with lock:
                # Saved after every prompt: a run that is interrupted (or takes too long on a busy machine) still
                # leaves what it measured.
                done.append(run)
                _write_results(args.out, settings, done, ks, modes, time.perf_counter() - started, complete=False)
            return run

        pool = ThreadPoolExecutor(max_workers=max(1, args.workers))
        try:
            runs = list(pool.map(one, prompts))
        finally:
            # On an interrupt, prompts not started are dropped instead of run to the end; the calls in flight
            # fail as soon as the server stops.
            pool.shutdown(wait=False, cancel_futures=True)
    elapsed = time.perf_counter() - started

    print(render(summarize(runs, ks, modes), runs, modes))
    print(f"\n{len(prompts)} prompts, N={args.n}, k={ks}, {args.workers} worker(s), {elapsed:.1f} s")
    _write_results(args.out, settings, runs, ks, modes, elapsed, complete=True)
    print(f"results: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # The engine was stopped on the way out; a traceback would say nothing more.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
