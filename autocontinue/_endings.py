"""How a call ends: the completion it returns, or the error it raises instead. Every such error that follows a
round carries the answer so far as ``partial``, so that no text already generated is lost.

Each function records the stop cause in the trace and builds the completion (``result.completion_of``); the core
decides which ending applies.
"""

from __future__ import annotations

from typing import Any

from openai.types.chat import ChatCompletion

from . import _log
from ._answer import Answer
from .errors import ContinuationFailed, InvalidJSONError, TruncatedToolCallError
from .jsoncheck import check_json
from .request import CallRequest
from .result import completion_of
from .trace import ContinuationTrace

__all__ = ["completed", "failed", "tool_call_cut"]


def completed(
    call: CallRequest,
    answer: Answer,
    trace: ContinuationTrace,
    *,
    cause: str,
    finish_reason: str,
    tool_calls: list[Any] | None = None,
) -> ChatCompletion | InvalidJSONError:
    """The completion of a call that stopped for ``cause``; in JSON mode, an answer joined from several rounds that
    is not valid JSON is an error instead (its partial: that completion)."""
    trace.stop_cause = cause
    completion = completion_of(call, answer, finish_reason=finish_reason, trace=trace, tool_calls=tool_calls or [])
    if call.json_mode and len(trace.rounds) > 1:
        problem = check_json(completion.choices[0].message.content or "", call.json_schema)
        if problem is not None:
            return InvalidJSONError(
                f"the joined reply is not valid JSON ({problem}); stop cause: {cause}", partial=completion
            )
    return completion


def failed(
    error: BaseException, call: CallRequest, answer: Answer, trace: ContinuationTrace, *, round_index: int
) -> ContinuationFailed:
    """Round ``round_index`` failed with ``error`` for good, after earlier rounds had produced text."""
    trace.stop_cause = "error"
    partial = completion_of(call, answer, finish_reason="length", trace=trace, tool_calls=[])
    _log.emit("warning", "autocontinue.failed", rounds=len(trace.rounds), error=type(error).__name__)
    failure = ContinuationFailed(
        f"round {round_index} failed after {len(trace.rounds)} round(s) had produced "
        f"{len(partial.choices[0].message.content or '')} characters: {type(error).__name__}: {error}",
        partial=partial,
        cause=error,
    )
    failure.__cause__ = error
    return failure


def tool_call_cut(
    call: CallRequest, answer: Answer, trace: ContinuationTrace, tool_calls: list[Any]
) -> TruncatedToolCallError:
    """The reply was cut inside a tool call (``tool_calls``, as far as they came) and could not be retried."""
    trace.stop_cause = "tool_call_truncated"
    partial = completion_of(call, answer, finish_reason="length", trace=trace, tool_calls=tool_calls)
    return TruncatedToolCallError(
        "the reply was cut off by the output limit inside a tool call, and there was no room to retry it "
        "with a larger limit; a cut call is never continued as text",
        partial=partial,
        tool_calls=tool_calls,
    )
