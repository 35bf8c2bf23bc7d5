"""Provider "dialects": how each persona reads the text-so-far (P) from a request.

Each persona is a URL path prefix. Given a chat request, :func:`resolve` decides where in the script's
``target`` the model continues and whether the reply echoes P, or raises :class:`PersonaError` with the
provider's documented 400 message. The rules follow /work/shared/reference/providers.md; they are kept in
one pure function so the HTTP layer stays small and the rules are easy to audit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .behaviours import BEHAVIOURS, answer

__all__ = [
    "KIMI_JSON_PARTIAL",
    "PERSONA_PATHS",
    "ROUTES",
    "Continuation",
    "PersonaError",
    "message_text",
    "resolve",
]

#: Persona name -> base path (what ``Emulator.base_url`` appends to the server URL).
PERSONA_PATHS: dict[str, str] = {
    "openai": "/openai/v1",
    "claude46": "/claude46/v1",
    "anthropic": "/anthropic/v1",
    "dashscope": "/dashscope/compatible-mode/v1",
    "kimi": "/kimi/v1",
    "deepseek": "/deepseek",
    "deepseek-beta": "/deepseek/beta",
    "mistral": "/mistral/v1",
    "vllm": "/vllm/v1",
    "sglang": "/sglang/v1",
    "llamacpp": "/llamacpp/v1",
    "openrouter": "/openrouter/v1",
    "ollama": "/ollama/v1",
}
# Chat models without prefill, one per way of answering "continue" (behaviours.py): like "openai", but the reply to
# the instruction pattern is written the way that behaviour says.
PERSONA_PATHS.update({f"chat-{name}": f"/chat-{name}/v1" for name in BEHAVIOURS})

#: Exact request path -> persona. A dict lookup keeps routing O(1) in the hot path.
ROUTES: dict[str, str] = {base + "/chat/completions": name for name, base in PERSONA_PATHS.items()}
# DeepSeek documents both https://api.deepseek.com and .../v1 as base URLs (both non-beta).
ROUTES["/deepseek/v1/chat/completions"] = "deepseek"


class PersonaError(Exception):
    """A request the real provider rejects; rendered as an OpenAI-style error body."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type_
        self.code = code
        self.param = param


@dataclass(frozen=True)
class Continuation:
    """Where the model picks up.

    prefix:    text already written; the model continues ``target`` right after it.
    echo:      the reply content starts with ``prefix`` (Mistral, llama.cpp); echoed text is not counted
               as completion tokens.
    glue_echo: streaming only: the last echo piece shares a delta with the first new token (llama.cpp).
    mode:      why ("first", "restart", "prefill", "instruction"); recorded in the request log for tests.
    reasoning: the reasoning already done when the model thinks in this reply (it writes the rest of the
               script's ``reasoning`` before the answer; "" = all of it), ``None`` when it does not think.
    broken:    a fixed reply (finish "stop") for a request the real provider mishandles.
    head:      written before the continuation (a chat persona's preamble or repeated tail; counted as tokens).
    drop:      characters of the continuation left out at its start (a chat persona dropping a space).
    """

    prefix: str = ""
    echo: bool = False
    glue_echo: bool = False
    mode: str = "first"
    reasoning: str | None = None
    broken: str | None = None
    head: str = ""
    drop: int = 0


#: A fresh answer thinks first (when the script has reasoning); continuations do not, unless resumed.
FIRST = Continuation(reasoning="")
RESTART = Continuation(mode="restart", reasoning="")
#: Kimi's documented pitfall: "Do not mix Partial Mode with response_format=json_object".
KIMI_JSON_PARTIAL = "<<EMULATOR: partial with json_object>>"


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: a string, ``None``, or a list of OpenAI content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _instruction(
    messages: list[dict[str, Any]], target: str, overlap: int, behaviour: str | None = None, ordinal: int = 1
) -> Continuation:
    """No-prefill fallback: ``[..., assistant A, user "continue"]`` continues from A if A is in target.

    ``overlap`` models a model that repeats the tail of A: it restarts ``overlap`` chars before the end of A,
    so the repeated chars are generated (and counted) like any other text.
    """
    if len(messages) >= 2 and messages[-1].get("role") == "user" and messages[-2].get("role") == "assistant":
        partial = message_text(messages[-2])
        if partial and target.startswith(partial):
            if behaviour is not None:
                said = answer(behaviour, partial, target, ordinal)
                if said.restart:
                    return Continuation(prefix="", mode="instruction")
                return Continuation(prefix=partial, mode="instruction", head=said.head, drop=said.drop)
            return Continuation(prefix=partial[: max(0, len(partial) - overlap)], mode="instruction")
    return FIRST


def resolve(
    persona: str, body: dict[str, Any], messages: list[dict[str, Any]], target: str, overlap: int, ordinal: int = 1
) -> Continuation:
    """Apply ``persona``'s dialect to a validated request; raise :class:`PersonaError` for its 400s.

    Reasoning: a fresh answer (first, restart) thinks; a prefilled or instructed continuation continues the
    answer without thinking, except DeepSeek (beta), whose prefix message may carry ``reasoning_content``:
    with empty content that resumes the reasoning from there. DashScope thinks unless ``enable_thinking``
    is false, and refuses ``partial`` when ``enable_thinking`` is true.
    """
    cont = _resolve(persona, body, messages, target, overlap, ordinal)
    if persona == "dashscope" and body.get("enable_thinking") is False and cont.reasoning is not None:
        cont = replace(cont, reasoning=None)
    return cont


def _resolve(
    persona: str, body: dict[str, Any], messages: list[dict[str, Any]], target: str, overlap: int, ordinal: int
) -> Continuation:
    last = messages[-1]
    trailing = last.get("role") == "assistant"
    partial = message_text(last) if trailing else ""
    cfm = body.get("continue_final_message") is True
    agp = body.get("add_generation_prompt")

    if persona.startswith("chat-"):
        return RESTART if trailing else _instruction(messages, target, overlap, persona[len("chat-") :], ordinal)
    if persona == "openai":
        # No prefill: a trailing assistant message is accepted but the model starts over.
        return RESTART if trailing else _instruction(messages, target, overlap)
    if persona == "claude46":
        if trailing:
            raise PersonaError(
                "This model does not support assistant message prefill. The conversation must end with a user message."
            )
        return _instruction(messages, target, overlap)
    if not trailing:
        # Kimi is a chat model that follows an explicit "continue" instruction (the library's dialect for
        # Kimi + json_object); the other prefill personas answer such a request from scratch.
        return _instruction(messages, target, overlap) if persona == "kimi" else FIRST

    if persona == "anthropic":
        if partial != partial.rstrip():
            raise PersonaError("messages: final assistant content cannot end with trailing whitespace")
        return Continuation(prefix=partial, mode="prefill")
    if persona in ("dashscope", "kimi"):
        if last.get("partial") is not True:
            return RESTART
        if persona == "dashscope" and body.get("enable_thinking") is True:
            raise PersonaError("Partial mode is not supported when enable_thinking is true.")
        response_format = body.get("response_format")
        if persona == "kimi" and isinstance(response_format, dict) and response_format.get("type") == "json_object":
            return Continuation(prefix=partial, mode="prefill", broken=KIMI_JSON_PARTIAL)
        return Continuation(prefix=partial, mode="prefill")
    if persona in ("deepseek", "deepseek-beta"):
        if last.get("prefix") is not True:
            return RESTART
        if persona == "deepseek":
            raise PersonaError(
                'prefix is only available when using beta api (set base_url="https://api.deepseek.com/beta")'
            )
        thought = last.get("reasoning_content")
        if isinstance(thought, str) and thought and not partial:
            # Thinking mode (beta): the chain of thought on the prefix message is continued, then the answer.
            return Continuation(prefix="", mode="prefill", reasoning=thought)
        return Continuation(prefix=partial, mode="prefill")
    if persona == "mistral":
        if last.get("prefix") is not True:
            raise PersonaError(
                "Expected last role User or Tool (or Assistant with prefix True) for serving but got assistant"
            )
        return Continuation(prefix=partial, echo=True, mode="prefill")
    if persona == "vllm":
        if not cfm:
            return RESTART
        if agp is True:
            raise PersonaError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        if "add_generation_prompt" not in body:
            # vLLM defaults add_generation_prompt to True and transformers then refuses the combination.
            raise PersonaError("continue_final_message and add_generation_prompt are not compatible")
        return Continuation(prefix=partial, mode="prefill")
    if persona == "sglang":
        # Without the flag SGLang turns a trailing assistant message into a user message: a new answer.
        return Continuation(prefix=partial, mode="prefill") if cfm else RESTART
    if persona == "llamacpp":
        if cfm and agp is True:
            raise PersonaError("continue_final_message and add_generation_prompt are mutually exclusive")
        if len(messages) >= 2 and messages[-2].get("role") == "assistant":
            raise PersonaError("Cannot have 2 or more assistant messages at the end of the list.")
        # Prefill is automatic; measured llama-server echoes P, first delta = P + first new token.
        return Continuation(prefix=partial, echo=True, glue_echo=True, mode="prefill")
    if persona in ("openrouter", "ollama"):
        return Continuation(prefix=partial, mode="prefill")
    raise PersonaError(f"unknown persona {persona!r}", status=404, code="not_found")
