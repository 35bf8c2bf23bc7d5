"""The CLI's output: the round trace for stderr, JSON for stdout, the notice of an incomplete answer."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TextIO

import pydantic

from .trace import ContinuationTrace

__all__ = ["COMPLETE", "Output", "completion_to_json", "format_trace", "incomplete_notice", "trace_to_dict"]

#: stop causes of a complete answer; any other exits with EXIT_INCOMPLETE
COMPLETE = frozenset({"natural", "tool_calls"})

#: what to say, after the stop cause, when an answer is incomplete
_INCOMPLETE_HINTS = {
    "max_rounds": "raise --max-rounds",
    "token_budget": "raise --max-total-tokens",
    "cost_budget": "raise --max-cost",
    "time_budget": "raise --max-seconds",
    "no_progress": "the model repeated itself or added nothing; --no-repeat-stop lets a repeating answer go on",
    "context_window": "the conversation no longer fits the model's context",
    "content_filter": "the provider's content filter ended the answer",
    "reasoning_truncated": "cut inside the model's reasoning; raise --max-tokens",
    "other": "the provider ended the answer for a reason of its own",
}


def incomplete_notice(trace: ContinuationTrace) -> str | None:
    """Why the answer is incomplete, in one line (``None`` when it is complete)."""
    if trace.stop_cause in COMPLETE:
        return None
    rounds = f"{len(trace.rounds)} round{'s' if len(trace.rounds) != 1 else ''}"
    hint = _INCOMPLETE_HINTS.get(trace.stop_cause)
    return f"incomplete answer: stopped by {trace.stop_cause} after {rounds}" + (f"; {hint}" if hint else "")


def format_trace(trace: ContinuationTrace, *, stop: str | None = None) -> str:
    """The round trace for stderr: one line per round, then the totals (``stop`` overrides the stop cause)."""
    lines = [f"{'round':>5} {'tokens':>7} {'finish':<10} {'latency':>8}  seam"]
    for r in trace.rounds:
        tokens = f"{'~' if r.usage_estimated else ''}{r.usage.completion_tokens}"
        seam = ", ".join(r.seam) if r.seam else "-"
        lines.append(f"{r.index:>5} {tokens:>7} {r.finish_reason or '-':<10} {r.latency_s:>7.2f}s  {seam}")
    completion = sum(r.usage.completion_tokens for r in trace.rounds)
    prompt = sum(r.usage.prompt_tokens for r in trace.rounds)
    cached = sum(
        (r.usage.prompt_tokens_details.cached_tokens or 0) if r.usage.prompt_tokens_details else 0 for r in trace.rounds
    )
    estimated = any(r.usage_estimated for r in trace.rounds)
    cost = f"${trace.cost_usd:.6f}" if trace.cost_usd is not None else "cost unknown"
    totals = (
        f"{len(trace.rounds)} round{'s' if len(trace.rounds) != 1 else ''}, "
        f"{'~' if estimated else ''}{completion} output tokens "
        f"({prompt} prompt tokens, {cached} cached), {cost}, stop: {stop or trace.stop_cause}"
    )
    if trace.fallbacks:
        totals += f", dialect fallback {', '.join(trace.fallbacks)}"
    lines.append(totals)
    return "\n".join(lines)


def trace_to_dict(trace: ContinuationTrace) -> dict[str, Any]:
    """The trace as plain JSON-able data (its usage objects are pydantic models, its seams tuples)."""
    data = _plain(trace)
    assert isinstance(data, dict)
    data["continued"] = trace.continued
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def completion_to_json(completion: Any) -> str:
    """The final ChatCompletion as JSON, with its trace under ``continuation``."""
    data = completion.model_dump(mode="json", exclude_none=True)
    trace = getattr(completion, "continuation", None)
    if trace is not None:
        data["continuation"] = trace_to_dict(trace)
    return json.dumps(data, ensure_ascii=False, indent=2)


class Output:
    """stdout for the answer, remembering what was written so a failure prints only the rest."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.written = ""

    def write(self, text: str) -> None:
        if text:
            self._stream.write(text)
            # Flushed per piece: the point of streaming is to see the answer as it is generated.
            self._stream.flush()
            self.written += text

    def end(self) -> None:
        # A terminal prompt must not be glued to the answer's last line; the text itself is unchanged.
        if self.written and not self.written.endswith("\n"):
            self._stream.write("\n")
            self._stream.flush()
