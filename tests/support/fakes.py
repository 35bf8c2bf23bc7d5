"""A fake provider for the sans-IO tests: a deterministic model that answers each ``DoRequest`` the way a provider
of each dialect would (facts: ``/work/shared/reference/providers.md``), and the SDK objects it returns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from openai._models import construct_type
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from autocontinue._reading import MIN_UNCONFIRMED as MIN_OVERLAP
from autocontinue._reading import WINDOW as OVERLAP_WINDOW
from autocontinue.core import DoRequest
from tests.support.emulator.tokenizer import tokenize  # the emulator's: the same lossless GPT-2-like split

# ================================================================================================================
# The fake provider


MODEL = "fake-model"
USER: dict[str, Any] = {"role": "user", "content": "Write it."}


@dataclass(frozen=True)
class Flavour:
    """One provider's way of answering a continuation request (providers.md)."""

    name: str
    dialect: str  # the dialect option given to the core
    base_url: str
    shape: str  # the request shape it expects: "partial", "prefix", "cfm", "prefill", "instruction"
    echo: bool = False  # returns the prefix before the new text (Mistral, llama.cpp)
    refuses_trailing_ws: bool = False  # Anthropic: a prefix ending in whitespace is a 400
    overlap: bool = False  # instruction dialect: repeats the tail of the prefix before continuing
    restart: bool = False  # ignores a trailing assistant message and answers from the start (OpenAI-like)
    routed_to: str | None = None  # where continuation rounds must be sent (DeepSeek's /beta)


FLAVOURS: dict[str, Flavour] = {
    f.name: f
    for f in (
        # no echo
        Flavour("dashscope", "auto", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "partial"),
        Flavour("kimi", "partial", "https://api.moonshot.ai/v1", "partial"),
        Flavour("deepseek", "auto", "https://api.deepseek.com/v1", "prefix", routed_to="https://api.deepseek.com/beta"),
        Flavour("vllm", "continue_final_message", "http://127.0.0.1:8000/v1", "cfm"),
        # echo
        Flavour("mistral", "auto", "https://api.mistral.ai/v1", "prefix", echo=True),
        Flavour("llamacpp", "continue_final_message", "http://127.0.0.1:8080/v1", "cfm", echo=True),
        Flavour("llamacpp_prefill", "prefill", "http://127.0.0.1:8080/v1", "prefill", echo=True),
        # whitespace refusal
        Flavour("anthropic", "auto", "https://api.anthropic.com/v1/", "prefill", refuses_trailing_ws=True),
        # instruction, with and without the repeated tail
        Flavour("openai", "auto", "https://api.openai.com/v1", "instruction"),
        Flavour("openai_overlap", "instruction", "https://api.openai.com/v1", "instruction", overlap=True),
        # restart: an unknown host that ignores a trailing assistant message
        Flavour("openai_restart", "auto", "http://10.1.2.3:9000/v1", "prefill", restart=True),
    )
}


@dataclass
class Provider:
    """A deterministic model that wants to write ``target`` (the caller's own assistant prefix included).

    ``n_base`` is the number of the caller's messages before any prefix message. The reply to a request is the
    next ``max_tokens`` tokens of ``target`` after the prefix it was given, shaped by the flavour's quirk; finish
    is "length" when target goes on, else "stop".
    """

    target: str
    flavour: Flavour
    n_base: int = 1
    answer_start: int = 0  # where the answer begins in target (after the caller's own prefix)
    overlap_min: int = MIN_OVERLAP  # the shortest tail the overlap quirk repeats
    echo_chunks: int = 1  # streaming: the echo arrives split into this many deltas
    echo_merge: bool = False  # streaming: the last echo delta also carries the first new token (llama.cpp)
    requests: list[DoRequest] = field(default_factory=list)
    prefixes: list[str | None] = field(default_factory=list)
    calls: int = 0
    completion_tokens: int = 0  # new tokens emitted over all replies
    # Runs where the right answer cannot be known from the reply alone (see assume_unambiguous):
    ambiguous_echo: bool = False  # a non-echoing reply began with the whole prefix, under a "maybe echo" dialect
    ambiguous_overlap: bool = False  # an instruction reply whose repeated tail cannot be told from new text
    whitespace_only: bool = False  # a prefill request was answered, cut, with whitespace only
    repeated_round: bool = False  # two rounds in a row were cut after the same new text
    last_new: str | None = None

    # -- request parsing ------------------------------------------------------------------------------------------

    def prefix_of(self, action: DoRequest) -> tuple[str, str | None]:
        """(request shape, prefix) of a request; checks the request's shape on the way."""
        kwargs = action.kwargs
        messages = kwargs["messages"]
        extra = kwargs.get("extra_body") or {}
        if len(messages) == self.n_base:
            return "first", None
        if len(messages) == self.n_base + 2 and messages[-1]["role"] == "user":
            assert messages[-2]["role"] == "assistant", messages
            assert "Continue it from exactly that point" in messages[-1]["content"], messages[-1]
            return "instruction", messages[-2]["content"]
        assert len(messages) == self.n_base + 1, f"unexpected messages: {messages}"
        last = messages[-1]
        assert last["role"] == "assistant", messages
        assert isinstance(last["content"], str)
        if last.get("partial"):
            return "partial", last["content"]
        if last.get("prefix"):
            return "prefix", last["content"]
        if extra.get("continue_final_message"):
            assert extra.get("add_generation_prompt") is False, extra  # vLLM: always both keys (providers.md §6)
            return "cfm", last["content"]
        return "prefill", last["content"]

    # -- the reply ------------------------------------------------------------------------------------------------

    def reply(self, action: DoRequest) -> tuple[list[str], list[str], str, int]:
        """(lead pieces that are not new tokens, new tokens, finish_reason, prompt tokens) of one request."""
        self.calls += 1
        self.requests.append(action)
        kwargs = action.kwargs
        shape, prefix = self.prefix_of(action)
        self.prefixes.append(prefix)
        flavour = self.flavour
        if shape not in ("first", flavour.shape):
            # The only legal change of shape: an unknown host falling back to the instruction dialect.
            assert flavour.restart and shape == "instruction", f"{flavour.name} got a {shape} request"
        if shape != "first" and flavour.routed_to is not None:
            assert action.base_url == flavour.routed_to, action.base_url
        limits = [kwargs[n] for n in ("max_tokens", "max_completion_tokens") if kwargs.get(n) is not None]
        limit = min(limits) if limits else None
        p = prefix or ""
        assert self.target.startswith(p), f"the prefix sent is not a prefix of the target: {p!r}"
        if flavour.refuses_trailing_ws and shape == "prefill" and p[-1:].isspace():
            raise bad_request("messages: final assistant content cannot end with trailing whitespace")
        restarting = flavour.restart and shape == "prefill"
        rest = self.target[self.answer_start :] if restarting else self.target[len(p) :]
        tokens = tokenize(rest)
        emitted = tokens if limit is None else tokens[:limit]
        finish = "length" if len(emitted) < len(tokens) else "stop"
        lead: list[str] = []
        if flavour.echo and shape != "first" and p:
            lead = _split(p, self.echo_chunks)
        elif flavour.overlap and shape == "instruction":
            k = _unique_tail(p, self.overlap_min)
            if k:
                lead = tokenize(p[-k:])
        new = "".join(emitted)
        if not flavour.echo and not restarting and shape in ("prefix", "cfm", "prefill") and p and new.startswith(p):
            self.ambiguous_echo = True
        if shape == "instruction" and _longest_unique_overlap(p, "".join(lead) + new) != len("".join(lead)):
            self.ambiguous_overlap = True
        if finish == "length" and not restarting:
            if new and new == self.last_new:
                self.repeated_round = True
            self.last_new = new
        if shape == "prefill" and finish == "length" and not new.strip():
            self.whitespace_only = True
        prompt = sum(len(tokenize(m.get("content") or "")) + 4 for m in kwargs["messages"]) + 3
        self.completion_tokens += len(emitted)
        return lead, emitted, finish, prompt

    def completion(self, action: DoRequest) -> ChatCompletion:
        lead, emitted, finish, prompt = self.reply(action)
        return make_completion(
            "".join(lead + emitted), finish, prompt=prompt, completion=len(emitted), id=f"chatcmpl-{self.calls}"
        )

    def chunks(self, action: DoRequest) -> list[ChatCompletionChunk]:
        lead, emitted, finish, prompt = self.reply(action)
        pieces, new = list(lead), list(emitted)
        if self.echo_merge and pieces and new:
            pieces[-1] += new.pop(0)
        cid = f"chatcmpl-stream-{self.calls}"
        out = [make_chunk(cid, role="assistant", content="")]
        out += [make_chunk(cid, content=piece) for piece in pieces + new]
        out.append(make_chunk(cid, finish_reason=finish))
        if (action.kwargs.get("stream_options") or {}).get("include_usage"):
            out.append(make_usage_chunk(cid, prompt, len(emitted)))
        return out


def _split(text: str, n: int) -> list[str]:
    n = max(1, min(n, len(text)))
    step = -(-len(text) // n)
    return [text[i : i + step] for i in range(0, len(text), step)]


def _longest_unique_overlap(prefix: str, reply: str) -> int:
    """What a reader knowing only the prefix and the reply would take as repeated: the longest tail of the
    prefix's window (at least MIN_OVERLAP chars, occurring once in it) that starts the reply."""
    window = prefix[-OVERLAP_WINDOW:]
    for k in range(min(len(reply), len(window)), MIN_OVERLAP - 1, -1):
        if window.endswith(reply[:k]) and window.find(reply[:k]) == len(window) - k:
            return k
    return 0


def _unique_tail(prefix: str, minimum: int) -> int:
    """The shortest tail of at least ``minimum`` chars occurring only once in the seam's window, or 0."""
    window = prefix[-OVERLAP_WINDOW:]
    for k in range(minimum, len(window) + 1):
        if window.find(window[-k:]) == len(window) - k:
            return k
    return 0


# ================================================================================================================
# SDK objects


def status_error(status: int, body: Any = None, *, message: str = "error", headers: Any = None) -> Any:
    """An SDK status error (RateLimitError for 429, ...), built exactly as ``OpenAI._make_status_error`` does."""
    request = httpx2.Request("POST", "https://example.invalid/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, json=body or {}, request=request)
    client = openai.OpenAI(api_key="x", base_url="https://example.invalid/v1")
    try:
        return client._make_status_error(message, body=body, response=response)
    finally:
        client.close()


def bad_request(message: str, status: int = 400) -> Any:
    return status_error(status, {"error": {"message": message}}, message=message)


def connection_error() -> openai.APIConnectionError:
    return openai.APIConnectionError(request=httpx2.Request("POST", "https://example.invalid/v1/chat/completions"))


def make_completion(
    content: str | None,
    finish: str,
    *,
    prompt: int = 10,
    completion: int = 1,
    id: str = "chatcmpl-1",
    tool_calls: list[Any] | None = None,
) -> ChatCompletion:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body = {
        "id": id,
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }
    if finish in ("stop", "length", "tool_calls", "content_filter", "function_call"):
        return ChatCompletion.model_validate(body)
    # Provider-specific finish reasons ("max_tokens", "model_length", ...) reach the caller as the SDK parses
    # them: constructed without validation.
    constructed: Any = construct_type(type_=ChatCompletion, value=body)
    return constructed  # type: ignore[no-any-return]


def make_chunk(
    cid: str,
    *,
    content: str | None = None,
    role: str | None = None,
    finish_reason: str | None = None,
    tool_calls: list[Any] | None = None,
) -> ChatCompletionChunk:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    return ChatCompletionChunk.model_validate(
        {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
    )


def make_usage_chunk(cid: str, prompt: int, completion: int) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(
        {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }
    )


def stream_of(cid: str, text_pieces: Iterable[str], finish: str, *, usage: tuple[int, int] | None = None) -> list[Any]:
    """A scripted upstream stream: role chunk, one chunk per piece, the finish chunk, optional usage chunk."""
    out = [make_chunk(cid, role="assistant", content="")]
    out += [make_chunk(cid, content=piece) for piece in text_pieces]
    out.append(make_chunk(cid, finish_reason=finish))
    if usage is not None:
        out.append(make_usage_chunk(cid, *usage))
    return out
