"""langchain-openai's ChatOpenAI, run for real: invoke, ainvoke, stream, astream and with_structured_output.

ChatOpenAI sends every non-streamed call through ``chat.completions.with_raw_response.create`` (structured output:
``with_raw_response.parse``) and streams through ``create(stream=True)``.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_openai import ChatOpenAI

from tests.frameworks.support import ALL, CONTINUED, LIMIT, STORY, Run, Story
from tests.support.common import API_KEY

session_loop = pytest.mark.asyncio(loop_scope="session")


def chat_model(run: Run) -> ChatOpenAI:
    """A wrapped client is handed over as ChatOpenAI's clients; otherwise ChatOpenAI makes its own."""
    settings: dict[str, Any] = {"model": run.model, "max_tokens": LIMIT, "api_key": API_KEY}
    if run.how == "wrap":
        sync, aio = run.sync_client(), run.async_client()
        clients = {"client": sync.chat.completions, "root_client": sync}
        clients |= {"async_client": aio.chat.completions, "root_async_client": aio}
        return ChatOpenAI(**settings, **clients)
    return ChatOpenAI(**settings, base_url=run.base_url)


@pytest.mark.parametrize("run", ALL, indirect=True)
def test_invoke(run: Run) -> None:
    llm = chat_model(run)
    with run.scope():
        reply = llm.invoke("Tell me the story.")
    run.check(reply.content)


@pytest.mark.parametrize("run", ALL, indirect=True)
@session_loop
async def test_ainvoke(run: Run) -> None:
    llm = chat_model(run)
    with run.scope():
        reply = await llm.ainvoke("Tell me the story.")
    run.check(reply.content)


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
def test_stream(run: Run) -> None:
    llm = chat_model(run)
    with run.scope():
        text = "".join(str(chunk.content) for chunk in llm.stream("Tell me the story."))
    run.check(text)


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
@session_loop
async def test_astream(run: Run) -> None:
    llm = chat_model(run)
    with run.scope():
        text = "".join([str(chunk.content) async for chunk in llm.astream("Tell me the story.")])
    run.check(text)


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
def test_with_structured_output(run: Run) -> None:
    run.add(STORY)
    structured = chat_model(run).with_structured_output(Story)
    with run.scope():
        story = structured.invoke("Tell me the story as JSON.")
    run.check(story, target=Story.model_validate_json(STORY))


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
@session_loop
async def test_with_structured_output_async(run: Run) -> None:
    run.add(STORY)
    structured = chat_model(run).with_structured_output(Story)
    with run.scope():
        story = await structured.ainvoke("Tell me the story as JSON.")
    run.check(story, target=Story.model_validate_json(STORY))
