"""How a prefix is sent to each kind of provider: one small class per way.

A dialect turns "the caller's messages + the text so far" into the request of a continuation round, says whether
the provider echoes the prefix back, whether it refuses trailing whitespace, and whether an error means it does
not accept this way of continuing at all. Facts and sources: ``providers.md`` in the project's reference notes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .stitch import EchoMode

__all__ = [
    "DIALECTS",
    "ContinueFinalMessage",
    "Dialect",
    "Instruction",
    "Partial",
    "Prefill",
    "Prefix",
    "detect_dialect",
    "resolve_dialect",
]

Message = Mapping[str, Any]


class Dialect:
    """Base class: a continuation request is the caller's messages plus the prefix as a final assistant message."""

    name: ClassVar[str] = "base"
    #: does the reply start with the prefix it was given ("maybe": some servers of this kind do); an instance
    #: may be told what its provider does (``Prefix(echo="always")`` for Mistral)
    echo: EchoMode = "maybe"
    #: the provider rejects a prefix that ends in whitespace, so it is held back and restored
    strips_trailing_whitespace: ClassVar[bool] = False
    #: the model may repeat the tail of the text before continuing
    repeats_tail: ClassVar[bool] = False
    #: message keys to add to the prefix message
    message_flags: ClassVar[Mapping[str, Any]] = {}
    #: top-level body fields to add (sent through the SDK's extra_body)
    body_flags: ClassVar[Mapping[str, Any]] = {}
    #: when a request carries no output limit but one is needed, which parameter to set
    limit_parameter: ClassVar[str] = "max_tokens"
    #: a reply cut inside the reasoning phase can be continued (else the call stops: "reasoning_truncated")
    resumes_reasoning: ClassVar[bool] = False

    def __init__(self, *, echo: EchoMode | None = None) -> None:
        if echo is not None:
            if echo not in ("never", "maybe", "always"):
                raise ConfigurationError(f"echo must be 'never', 'maybe' or 'always', got {echo!r}")
            self.echo = echo

    def prefix_message(self, prefix: str, template: Message, reasoning: str = "") -> dict[str, Any]:
        """The assistant message that carries the prefix; keeps the caller's own keys (e.g. Kimi's ``name``)."""
        message = {k: v for k, v in template.items() if k not in _OWN_KEYS}
        message["role"] = "assistant"
        message["content"] = prefix
        message.update(self.message_flags)
        return message

    def messages(self, base: Sequence[Message], prefix: str, template: Message, reasoning: str = "") -> list[Any]:
        """The messages of a round that continues ``prefix``; ``base`` is never modified.

        ``reasoning`` is the reasoning text produced so far, for dialects that can carry it.
        """
        return [*base, self.prefix_message(prefix, template, reasoning)]

    def extra_body(self, caller_extra: Mapping[str, Any] | None, reasoning: str = "") -> dict[str, Any] | None:
        """The extra_body of a continuation round: the caller's, plus this dialect's flags."""
        if not self.body_flags:
            return dict(caller_extra) if caller_extra is not None else None
        return {**(caller_extra or {}), **self.body_flags}

    def base_url(self, base_url: str) -> str | None:
        """Where continuation rounds go, when not to the client's own base URL."""
        return None

    def refuses(self, error: BaseException) -> bool:
        """Whether ``error`` means the provider does not accept this way of continuing."""
        status = getattr(error, "status_code", None)
        if status not in (400, 422):
            return False
        text = str(getattr(error, "message", "") or error).lower()
        return any(marker in text for marker in _REFUSAL_MARKERS)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# Keys of the caller's prefix message that the dialect sets itself.
_OWN_KEYS = frozenset({"content", "partial", "prefix", "reasoning_content"})

# Phrases of the errors providers give for a prefix they will not take (providers.md §4, §5, §6, §7).
_REFUSAL_MARKERS = (
    "prefill",
    "final assistant content",
    "must end with a user message",
    "expected last role",
    "continue_final_message",
    "trailing whitespace",
    "assistant message",
    "prefix is only available",
)


class Partial(Dialect):
    """DashScope/Qwen and Kimi partial mode: ``"partial": true``; the reply holds only the new text."""

    name = "partial"
    echo: EchoMode = "never"
    message_flags: ClassVar[Mapping[str, Any]] = {"partial": True}
    resumes_reasoning = True

    def extra_body(self, caller_extra: Mapping[str, Any] | None, reasoning: str = "") -> dict[str, Any] | None:
        # DashScope does not take a partial prefix in thinking mode: continuation rounds switch thinking off; the
        # reasoning of round 1 is kept in the result.
        if reasoning or (caller_extra or {}).get("enable_thinking"):
            return {**(caller_extra or {}), "enable_thinking": False}
        return super().extra_body(caller_extra, reasoning)


class Prefix(Dialect):
    """DeepSeek and Mistral: ``"prefix": true``.

    DeepSeek accepts it only on its ``/beta`` base URL, so continuation rounds are routed there when the base URL
    is DeepSeek's; Mistral echoes the prefix, which the seam removes.
    """

    name = "prefix"
    echo: EchoMode = "maybe"
    message_flags: ClassVar[Mapping[str, Any]] = {"prefix": True}
    resumes_reasoning = True

    def prefix_message(self, prefix: str, template: Message, reasoning: str = "") -> dict[str, Any]:
        message = super().prefix_message(prefix, template, reasoning)
        if reasoning:
            # DeepSeek's thinking mode continues the chain of thought given on the prefix message (beta API).
            message["reasoning_content"] = reasoning
        return message

    def base_url(self, base_url: str) -> str | None:
        parts = urlsplit(base_url)
        if "deepseek" not in (parts.hostname or "") and "deepseek" not in parts.path:
            return None
        path = parts.path.rstrip("/")
        if path.endswith("/beta"):
            return None
        if path.endswith("/v1"):
            path = path[: -len("/v1")]
        return parts._replace(path=path + "/beta").geturl()


class ContinueFinalMessage(Dialect):
    """vLLM, SGLang, llama.cpp: ``continue_final_message`` with ``add_generation_prompt`` off (always both)."""

    name = "continue_final_message"
    echo: EchoMode = "maybe"
    body_flags: ClassVar[Mapping[str, Any]] = {"continue_final_message": True, "add_generation_prompt": False}


class Prefill(Dialect):
    """A plain trailing assistant message (llama.cpp, OpenRouter, Ollama, Anthropic-compatible).

    Trailing whitespace is refused by some of these providers, so it is never sent: it is held back and restored.
    """

    name = "prefill"
    echo: EchoMode = "maybe"
    strips_trailing_whitespace = True


class Instruction(Dialect):
    """For models without prefill (OpenAI): the text so far as an assistant turn, then a user turn asking to go on.

    The user turn quotes the tail and asks for the continuation; whatever the model does with it (a preamble, a
    repeated tail, a restart, a space added or dropped) is read off its reply by the seam.
    """

    name = "instruction"
    echo: EchoMode = "never"
    repeats_tail = True
    limit_parameter = "max_completion_tokens"
    #: characters of the tail quoted in the instruction
    quote_chars = 200

    def messages(self, base: Sequence[Message], prefix: str, template: Message, reasoning: str = "") -> list[Any]:
        message = {k: v for k, v in template.items() if k not in _OWN_KEYS}
        message["role"] = "assistant"
        message["content"] = prefix
        return [*base, message, {"role": "user", "content": self.instruction(prefix)}]

    def instruction(self, prefix: str) -> str:
        """The user turn asking the model to continue ``prefix``: the tail quoted (from where a word starts), and
        no rules about spacing (a model told to begin with a space writes `` ,``; the seam settles the join)."""
        tail = prefix[-self.quote_chars :]
        if len(tail) < len(prefix):
            # Quote from a word's start, so that a model repeating the quote repeats whole words.
            start = next((i + 1 for i, c in enumerate(tail[:40]) if c.isspace()), 0)
            tail = tail[start:]
        return (
            "Your previous reply was cut off by the output limit. It ends with: "
            + json.dumps(tail, ensure_ascii=False)
            + ". Continue it from exactly that point, without repeating anything or adding any preamble."
        )


DIALECTS: Mapping[str, type[Dialect]] = {
    cls.name: cls for cls in (Partial, Prefix, ContinueFinalMessage, Prefill, Instruction)
}

# Host suffix → dialect, for dialect="auto" (providers.md summary table).
_HOSTS: tuple[tuple[str, type[Dialect]], ...] = (
    ("dashscope.aliyuncs.com", Partial),
    ("dashscope-intl.aliyuncs.com", Partial),
    ("moonshot.ai", Partial),
    ("moonshot.cn", Partial),
    ("api.deepseek.com", Prefix),
    ("api.mistral.ai", Prefix),
    ("api.openai.com", Instruction),
    ("openai.azure.com", Instruction),
    ("cognitiveservices.azure.com", Instruction),
    ("generativelanguage.googleapis.com", Instruction),
    ("api.anthropic.com", Prefill),
    ("openrouter.ai", Prefill),
)


def detect_dialect(base_url: str) -> type[Dialect] | None:
    """The dialect known for ``base_url``'s host, or ``None`` for an unknown host."""
    host = (urlsplit(base_url).hostname or "").lower()
    for suffix, dialect in _HOSTS:
        if host == suffix or host.endswith("." + suffix):
            return dialect
    return None


@dataclass(frozen=True)
class DialectChoice:
    """The dialect to start with and, for unknown hosts, the one to fall back to when it fails."""

    dialect: Dialect
    fallback: Dialect | None = None


def resolve_dialect(spec: str | Dialect, base_url: str) -> DialectChoice:
    """Turn ``dialect=`` (a name, "auto" or an instance) into a :class:`DialectChoice`."""
    if isinstance(spec, str):
        return _resolve_name(spec, base_url)  # dialects hold no state: one choice per (name, URL) serves all calls
    if isinstance(spec, Dialect):
        return DialectChoice(spec)
    if isinstance(spec, type) and issubclass(spec, Dialect):
        return DialectChoice(spec())
    raise ConfigurationError(f"dialect must be a name or a Dialect, got {type(spec).__name__}")


def for_json_mode(dialect: Dialect, base_url: str) -> Dialect:
    """The dialect a call with ``response_format`` of JSON uses: Kimi's partial mode is not mixed with it ("Do not
    mix Partial Mode with response_format=json_object"), so the instruction takes its place there."""
    lowered = base_url.lower()
    if isinstance(dialect, Partial) and ("moonshot" in lowered or "kimi" in lowered):
        return Instruction()
    return dialect


@functools.lru_cache(maxsize=256)
def _resolve_name(spec: str, base_url: str) -> DialectChoice:
    if spec == "auto":
        known = detect_dialect(base_url)
        if known is not None:
            return DialectChoice(known(echo=_known_echo(base_url)))
        # Unknown host: a plain prefill works on most servers; if it is refused or the model restarts, the rest
        # of the call uses the instruction, which works everywhere.
        return DialectChoice(Prefill(), fallback=Instruction())
    if spec not in DIALECTS:
        raise ConfigurationError(f"unknown dialect {spec!r}; expected 'auto' or one of {sorted(DIALECTS)}")
    return DialectChoice(DIALECTS[spec](echo=_known_echo(base_url)))


# Hosts whose echo behaviour is documented (providers.md): knowing it, a reply that happens to begin with the
# prefix is never mistaken for an echo, and an echo is always removed.
_ECHOES: tuple[tuple[str, EchoMode], ...] = (
    ("api.deepseek.com", "never"),
    ("api.mistral.ai", "always"),
    ("moonshot.ai", "never"),
    ("moonshot.cn", "never"),
    ("aliyuncs.com", "never"),
)


def _known_echo(base_url: str) -> EchoMode | None:
    host = (urlsplit(base_url).hostname or "").lower()
    for suffix, echo in _ECHOES:
        if host == suffix or host.endswith("." + suffix):
            return echo
    return None
