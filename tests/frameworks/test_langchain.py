"""langchain-openai's ChatOpenAI, run for real: invoke, ainvoke, stream, astream and with_structured_output.

ChatOpenAI sends every non-streamed call through ``chat.completions.with_raw_response.create`` (structured output:
``with_raw_response.parse``) and streams through ``create(stream=True)``.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_openai import ChatOpenAI

from tests.frameworks.support import (
    ALL,
    CONTINUED,
    LIMIT,
    PERSONA,
    STORY,
    Story,
    async_client,
    check,
    scope,
    sync_client,
)
from tests.support.common import API_KEY, add
from tests.support.emulator import Emulator

session_loop = pytest.mark.asyncio(loop_scope="session")


def chat_model(emu: Emulator, how: str, model: str) -> ChatOpenAI:
    """A wrapped client is handed over as ChatOpenAI's clients; otherwise ChatOpenAI makes its own."""
    settings: dict[str, Any] = {"model": model, "max_tokens": LIMIT, "api_key": API_KEY}
    if how == "wrap":
        sync, aio = sync_client(emu, how), async_client(emu, how)
        clients = {"client": sync.chat.completions, "root_client": sync}
        clients |= {"async_client": aio.chat.completions, "root_async_client": aio}
        return ChatOpenAI(**settings, **clients)
    return ChatOpenAI(**settings, base_url=emu.base_url(PERSONA))


@pytest.mark.parametrize("how", ALL)
def test_invoke(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    llm = chat_model(emu, how, model)
    with scope(how):
        reply = llm.invoke("Tell me the story.")
    check(reply.content, how, emu, model, logs)


@pytest.mark.parametrize("how", ALL)
@session_loop
async def test_ainvoke(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    llm = chat_model(emu, how, model)
    with scope(how):
        reply = await llm.ainvoke("Tell me the story.")
    check(reply.content, how, emu, model, logs)


@pytest.mark.parametrize("how", CONTINUED)
def test_stream(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    llm = chat_model(emu, how, model)
    with scope(how):
        text = "".join(str(chunk.content) for chunk in llm.stream("Tell me the story."))
    check(text, how, emu, model, logs)


@pytest.mark.parametrize("how", CONTINUED)
@session_loop
async def test_astream(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    llm = chat_model(emu, how, model)
    with scope(how):
        text = "".join([str(chunk.content) async for chunk in llm.astream("Tell me the story.")])
    check(text, how, emu, model, logs)


@pytest.mark.parametrize("how", CONTINUED)
def test_with_structured_output(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu, STORY)
    structured = chat_model(emu, how, model).with_structured_output(Story)
    with scope(how):
        story = structured.invoke("Tell me the story as JSON.")
    check(story, how, emu, model, logs, target=Story.model_validate_json(STORY))


@pytest.mark.parametrize("how", CONTINUED)
@session_loop
async def test_with_structured_output_async(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu, STORY)
    structured = chat_model(emu, how, model).with_structured_output(Story)
    with scope(how):
        story = await structured.ainvoke("Tell me the story as JSON.")
    check(story, how, emu, model, logs, target=Story.model_validate_json(STORY))
