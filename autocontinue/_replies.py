"""What a provider's reply means: finish reasons, stop causes, errors that name a cause, and the fields providers
add to a message (reasoning text, tool-call fragments, payloads besides text).

Pure functions over the SDK's types, shared by the core and the stream shaping; no state.
"""

from __future__ import annotations

from typing import Any

from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.completion_usage import CompletionUsage

__all__ = [
    "CONTEXT_STOPS",
    "DELTA_HAS_REASONING",
    "LENGTH_STOPS",
    "NOT_AN_ENDING",
    "cached_tokens",
    "cause_of",
    "final_finish",
    "has_payload",
    "is_context_overflow",
    "mentions",
    "merge_tool_deltas",
    "plain",
    "reasoning_of",
]

#: finish reasons that mean "the output limit was hit" (OpenAI-compatible, Anthropic-compatible, Gemini)
LENGTH_STOPS = frozenset({"length", "max_tokens", "MAX_TOKENS"})
#: finish reasons that mean "the context window is full": continuing cannot help
CONTEXT_STOPS = frozenset({"model_length", "model_context_window_exceeded"})
#: finish reasons after which a round's text is not simply the end of the answer
NOT_AN_ENDING = LENGTH_STOPS | CONTEXT_STOPS


def cached_tokens(usage: CompletionUsage) -> int:
    """Prompt tokens the provider served from its cache."""
    details = usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details is not None else 0


def cause_of(finish_reason: str | None) -> str:
    """The stop cause a call reports for a round that ended with ``finish_reason``."""
    if finish_reason in (None, "stop", "end_turn", "stop_sequence", "STOP"):
        return "natural"
    if finish_reason in CONTEXT_STOPS:
        return "context_window"
    if finish_reason in ("content_filter", "tool_calls"):
        return finish_reason
    return "other"


def final_finish(finish_reason: str | None) -> str:
    """The finish_reason the joined reply reports when its last round ended with ``finish_reason``."""
    if finish_reason is None:
        return "stop"
    if finish_reason in CONTEXT_STOPS:
        return "length"
    return finish_reason


def mentions(error: BaseException, word: str) -> bool:
    """Whether ``error`` is a request the server refused (400, 422) that names ``word``."""
    return getattr(error, "status_code", None) in (400, 422) and word in str(error)


def has_payload(delta: Any) -> bool:
    """Whether a delta carries anything besides text and role (tool calls, a refusal, audio, a provider's extras)."""
    fields = delta.__dict__
    if fields.get("tool_calls") or fields.get("function_call") or fields.get("refusal") or fields.get("audio"):
        return True
    extra = delta.__pydantic_extra__
    return bool(extra) and any(value for value in extra.values())


#: where providers put reasoning text: ``reasoning_content`` (DeepSeek, DashScope, vLLM) or ``reasoning``
_REASONING_FIELDS = ("reasoning_content", "reasoning")
#: whether the installed SDK's delta type has a reasoning field (none has yet: such text arrives as an extra)
DELTA_HAS_REASONING = not set(ChoiceDelta.model_fields).isdisjoint(_REASONING_FIELDS)


def reasoning_of(message: Any) -> str:
    """Reasoning text of a message or delta: ``reasoning_content`` (DeepSeek, DashScope, vLLM) or ``reasoning``."""
    # Not fields of the SDK's types: they arrive as pydantic extras. Read the dicts directly (this runs per chunk,
    # and attribute access on a missing field is slow).
    fields = getattr(message, "__dict__", {})
    extra = getattr(message, "__pydantic_extra__", None) or {}
    if not extra and fields.keys().isdisjoint(_REASONING_FIELDS):
        return ""  # the common case, settled with one look
    for name in _REASONING_FIELDS:
        value = extra.get(name) or fields.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


# Phrases of the errors servers give when the prompt no longer fits (OpenAI, vLLM, llama.cpp, Anthropic, Mistral).
_CONTEXT_MARKERS = (
    "context length",
    "context_length",
    "context window",
    "context size",
    "exceed_context_size",
    "prompt is too long",
    "too many tokens",
)


def is_context_overflow(error: BaseException) -> bool:
    """Whether ``error`` says the prompt no longer fits the context window."""
    if getattr(error, "status_code", None) not in (400, 413, 422):
        return False
    text = f"{error} {getattr(error, 'body', '')} {getattr(error, 'code', '')}".lower()
    return any(marker in text for marker in _CONTEXT_MARKERS)


def plain(item: Any) -> Any:
    """A model as the dict it dumps to (``None`` fields left out); anything else as it is."""
    dump = getattr(item, "model_dump", None)
    return dump(exclude_none=True) if dump is not None else item


def merge_tool_deltas(deltas: list[Any]) -> list[dict[str, Any]]:
    """Streamed tool-call fragments, joined by index into whole calls (arguments concatenated in order)."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        call = calls.setdefault(
            delta.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if delta.id:
            call["id"] = delta.id
        if delta.type:
            call["type"] = delta.type
        function = delta.function
        if function is not None:
            if function.name:
                call["function"]["name"] += function.name
            if function.arguments:
                call["function"]["arguments"] += function.arguments
    return [calls[index] for index in sorted(calls)]
