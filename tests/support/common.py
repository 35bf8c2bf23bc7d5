"""What the HTTP tests share besides fixtures: the texts and persona-dialect pairs, a retry policy that waits
little, the ``Recorder`` of every response the SDK receives, and small helpers (register a script, drain a stream,
wait for a condition)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx2
import tenacity
from tenacity import retry_if_exception, stop_after_attempt, wait_fixed

import autocontinue
from tests.support.emulator import Emulator, Script
from tests.support.emulator.personas import ROUTES

API_KEY = "test-key"


USER: dict[str, Any] = {"role": "user", "content": "Tell me the story, please."}


#: Long enough for several rounds at small max_tokens; punctuation, newlines, runs of spaces, digits.
TARGET = (
    "The quick brown fox jumps over the lazy dog. It was a sunny day, and the fox -- being quick -- "
    "ran off into the forest!\n\nThe end.\n\nEpilogue:  two  spaces,\ttabs,   and 12345 numbers; "
    '"quotes" (parens) [brackets] {braces}.'
)


#: Whitespace-heavy: every cut is likely to land right after whitespace (Anthropic refuses such prefixes).
SPACY = (
    "Line one   ends with spaces   \n\n   indented line two\n\n\n"
    "    four-space indent \t tab \n  trailing  \n\n"
    "last   words    here   .  \n"
)


#: (persona, dialect) pairs: every dialect against the personas that speak it.
DIALECT_PERSONAS: list[tuple[str, str]] = [
    ("dashscope", "partial"),
    ("kimi", "partial"),
    ("deepseek", "prefix"),
    ("deepseek-beta", "prefix"),
    ("mistral", "prefix"),
    ("vllm", "continue_final_message"),
    ("sglang", "continue_final_message"),
    ("llamacpp", "continue_final_message"),
    ("llamacpp", "prefill"),
    ("anthropic", "prefill"),
    ("openrouter", "prefill"),
    ("ollama", "prefill"),
    ("openai", "instruction"),
    ("claude46", "instruction"),
]


#: The dialect each persona needs (explicitly: on a loopback URL "auto" cannot tell providers apart).
PERSONA_DIALECT: dict[str, str] = {
    "dashscope": "partial",
    "kimi": "partial",
    "deepseek": "prefix",
    "deepseek-beta": "prefix",
    "mistral": "prefix",
    "vllm": "continue_final_message",
    "sglang": "continue_final_message",
    "llamacpp": "continue_final_message",
    "anthropic": "prefill",
    "openrouter": "prefill",
    "ollama": "prefill",
    "openai": "instruction",
    "claude46": "instruction",
}


def fast_retry(
    attempts: int = 4, *, wait: float = 0.01, max_retry_after: float = autocontinue.retry.MAX_RETRY_AFTER
) -> tenacity.Retrying:
    """The default policy's shape (``attempts`` per round, Retry-After honoured up to ``max_retry_after``
    seconds) with a short fallback ``wait``: the one policy of the HTTP, chaos and hostile suites, and, with
    ``wait=0``, of the sans-IO tests (their fake providers fail many times in a row)."""
    return tenacity.Retrying(
        stop=stop_after_attempt(attempts),
        wait=autocontinue.retry.wait_retry_after(wait_fixed(wait), maximum=max_retry_after),
        retry=retry_if_exception(autocontinue.retry.is_transient),
        reraise=True,
    )


class Recorder:
    """Every HTTP response the SDK receives (httpx event hooks): its status, reply text and usage, so tests can compare
    what autocontinue reports with what the "provider" actually said.

    Reading the body inside the hook buffers it (the SDK then iterates the buffered copy), so only use it where
    buffering cannot change the behaviour under test (no drops, no broken streams, no early closes).
    """

    def __init__(self) -> None:
        #: One record a response: {"status", "content" (the reply text, every choice), "usage" (the last one)}.
        self.responses: list[dict[str, Any]] = []
        #: Every usage object of a successful response (JSON or SSE), in order.
        self.usages: list[dict[str, Any]] = []

    def hook(self, response: httpx2.Response) -> None:
        response.read()
        self._parse(response)

    async def ahook(self, response: httpx2.Response) -> None:
        await response.aread()
        self._parse(response)

    def client(self) -> httpx2.Client:
        return httpx2.Client(event_hooks={"response": [self.hook]})

    def aclient(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(event_hooks={"response": [self.ahook]})

    def _parse(self, response: httpx2.Response) -> None:
        record: dict[str, Any] = {"status": response.status_code, "content": "", "usage": None}
        self.responses.append(record)
        if response.status_code != 200:
            return
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            objs = [
                json.loads(line[len("data: ") :])
                for line in response.text.splitlines()
                if line.startswith("data: ") and line != "data: [DONE]"
            ]
            for obj in objs:
                for choice in obj.get("choices") or []:
                    record["content"] += (choice.get("delta") or {}).get("content") or ""
        else:
            obj = response.json()
            objs = [obj]
            record["content"] = obj["choices"][0]["message"]["content"] or ""
        for obj in objs:
            if obj.get("usage"):
                record["usage"] = obj["usage"]
                self.usages.append(obj["usage"])

    def ok(self) -> list[dict[str, Any]]:
        """The records of the successful responses."""
        return [r for r in self.responses if r["status"] == 200]

    def total(self) -> dict[str, int]:
        """Summed usage, cached prompt tokens included."""
        return {
            "prompt_tokens": sum(u["prompt_tokens"] for u in self.usages),
            "completion_tokens": sum(u["completion_tokens"] for u in self.usages),
            "total_tokens": sum(u["total_tokens"] for u in self.usages),
            "cached_tokens": sum((u.get("prompt_tokens_details") or {}).get("cached_tokens", 0) for u in self.usages),
        }


def usage_dict(usage: Any) -> dict[str, int]:
    details = usage.prompt_tokens_details
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": (details.cached_tokens or 0) if details is not None else 0,
    }


def add(emu: Emulator, target: str = TARGET, **kwargs: Any) -> str:
    """Register a script; returns its model name."""
    return emu.add_script(Script(target=target, **kwargs))


def register_route(path: str, persona: str) -> None:
    """Serve ``path`` (a full request path) as ``persona``: for clients that build their own URLs (Azure)."""
    ROUTES[path] = persona


def collect(stream: Any) -> tuple[list[Any], str]:
    """Drain a (continued) stream: (chunks, joined content)."""
    chunks = list(stream)
    return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def acollect(stream: Any) -> tuple[list[Any], str]:
    chunks = [c async for c in stream]
    return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def aeventually(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def active_streams_zero(emu: Emulator) -> bool:
    return bool(emu.stats()["active_streams"] == 0)
