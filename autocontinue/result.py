"""Building the ``ChatCompletion`` a continued call returns.

The result is the SDK's own type (``isinstance(result, ChatCompletion)`` holds), so code written against the SDK
keeps working; it also carries ``.continuation``, the :class:`~autocontinue.trace.ContinuationTrace`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails

from ._answer import Answer
from ._replies import plain
from .request import CallRequest
from .trace import ContinuationTrace, RoundTrace

__all__ = [
    "ContinuedChatCompletion",
    "build_completion",
    "completion_of",
    "merge_choices",
    "reuse_completion",
    "sum_usage",
]


class ContinuedChatCompletion(ChatCompletion):
    """A ``ChatCompletion`` assembled from one or more rounds; ``continuation`` tells how."""

    _continuation: ContinuationTrace | None = pydantic.PrivateAttr(default=None)

    @property
    def continuation(self) -> ContinuationTrace:
        """The rounds, the stop cause and the total cost of this call."""
        assert self._continuation is not None
        return self._continuation


def sum_usage(usages: list[CompletionUsage]) -> CompletionUsage:
    """Usage summed over rounds, cached prompt tokens and reasoning tokens included."""
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    cached = sum((u.prompt_tokens_details.cached_tokens or 0) for u in usages if u.prompt_tokens_details is not None)
    reasoning = sum(
        (u.completion_tokens_details.reasoning_tokens or 0) for u in usages if u.completion_tokens_details is not None
    )
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
    )


def build_completion(
    *,
    first: ChatCompletion | ChatCompletionChunk | None,
    model: str,
    content: str,
    finish_reason: str,
    rounds: list[RoundTrace],
    trace: ContinuationTrace,
    message_extra: dict[str, Any] | None = None,
    logprobs: list[Any] | None = None,
) -> ContinuedChatCompletion:
    """One ``ChatCompletion`` for the whole call: the first reply's identity, the joined text, the summed usage."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if message_extra:
        message.update(message_extra)
    body: dict[str, Any] = {
        "id": first.id if first is not None else f"chatcmpl-ac-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": first.created if first is not None else int(time.time()),
        "model": first.model if first is not None else model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason,
                "logprobs": {"content": logprobs} if logprobs is not None else None,
            }
        ],
        "usage": sum_usage([r.usage for r in rounds]).model_dump() if rounds else None,
    }
    if first is not None and first.system_fingerprint is not None:
        body["system_fingerprint"] = first.system_fingerprint
    if first is not None and first.service_tier is not None:
        body["service_tier"] = first.service_tier
    # model_construct: the values come from validated SDK objects; finish_reason may be a provider's own value.
    completion = ContinuedChatCompletion.model_validate(body) if _standard(finish_reason) else _construct(body)
    completion._continuation = trace
    return completion


def completion_of(
    call: CallRequest, answer: Answer, *, finish_reason: str, trace: ContinuationTrace, tool_calls: list[Any]
) -> ChatCompletion:
    """The completion of ``call``: its ``answer`` after the caller's own prefix, the answer's reasoning text and
    logprobs, and ``tool_calls`` (the SDK's models or dicts); the first reply gives its id, model and time."""
    first = answer.first
    if (
        isinstance(first, ChatCompletion)
        and len(trace.rounds) == 1
        and not call.has_prefix
        and len(first.choices) == 1
        and first.choices[0].finish_reason == finish_reason
    ):
        # One round that ended by itself (the common case): the provider's own reply is the answer. Reuse its
        # validated fields instead of validating a copy, so an untruncated call costs next to nothing extra.
        return reuse_completion(first, trace)
    extra: dict[str, Any] = {}
    if answer.reasoning:
        extra["reasoning_content"] = "".join(answer.reasoning)
    if tool_calls:
        extra["tool_calls"] = [plain(tool) for tool in tool_calls]
    return build_completion(
        first=first,
        model=call.model,
        content=answer.text[len(call.prefix) :],
        finish_reason=finish_reason,
        rounds=trace.rounds,
        trace=trace,
        message_extra=extra,
        logprobs=[plain(item) for item in logprobs] if (logprobs := answer.logprobs.all()) else None,
    )


def reuse_completion(completion: ChatCompletion, trace: ContinuationTrace) -> ContinuedChatCompletion:
    """``completion`` itself as the result of a one-round call: the same object, retyped, with the trace.

    The object is fresh from the SDK's parser and ours alone. Changing its class (``ContinuedChatCompletion`` adds
    no field, so the layout is the same) keeps every validated field as it is, where building a copy would cost
    more than the rest of an untruncated call's handling: ``ContinuedChatCompletion.model_construct`` of a
    2,000-character reply takes about 70 us against under 1 us for this (the whole wrapped call adds about 60 us,
    benchmarks/overhead.py). It relies on pydantic v2 keeping private attributes in ``__pydantic_private__``:
    were that to change, ``.continuation`` of a one-round result would fail (every test of a result's trace
    catches it).
    """
    object.__setattr__(completion, "__class__", ContinuedChatCompletion)
    object.__setattr__(completion, "__pydantic_private__", {"_continuation": trace})
    return completion  # type: ignore[return-value]


def _standard(finish_reason: str) -> bool:
    return finish_reason in ("stop", "length", "tool_calls", "content_filter", "function_call")


def _construct(body: dict[str, Any]) -> ContinuedChatCompletion:
    from openai._models import construct_type

    constructed: Any = construct_type(type_=ContinuedChatCompletion, value=body)
    return constructed  # type: ignore[no-any-return]


def merge_choices(completions: list[ChatCompletion]) -> ContinuedChatCompletion:
    """One completion from the per-choice results of an ``n > 1`` call: choices in order, usage summed.

    ``continuation`` lists every round of every choice; ``continuation.per_choice[i]`` is choice i's own trace.
    """
    first = completions[0]
    traces = [getattr(c, "continuation", None) or ContinuationTrace() for c in completions]
    rounds = [r for trace in traces for r in trace.rounds]
    costs = [t.cost_usd for t in traces if t.cost_usd is not None]
    trace = ContinuationTrace(
        rounds=rounds,
        stop_cause=traces[0].stop_cause,
        cost_usd=sum(costs) if costs else None,
        dialect=traces[0].dialect,
        fallbacks=[f for t in traces for f in t.fallbacks],
        per_choice=traces,
    )
    choices = [c.choices[0].model_copy(update={"index": i}) for i, c in enumerate(completions)]
    usages = [c.usage for c in completions if c.usage is not None]
    merged = first.model_copy(update={"choices": choices, "usage": sum_usage(usages) if usages else None})
    result = ContinuedChatCompletion.model_construct(**dict(merged))
    result._continuation = trace
    return result
