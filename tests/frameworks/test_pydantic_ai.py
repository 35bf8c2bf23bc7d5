"""pydantic-ai, run for real: an Agent on ``OpenAIChatModel`` with an ``OpenAIProvider``: run_sync, run, run_stream,
and structured output (``output_type``)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.frameworks.support import ALL, CONTINUED, LIMIT, PERSONA, async_client, check, scope
from tests.support.common import API_KEY, add
from tests.support.emulator import Emulator

session_loop = pytest.mark.asyncio(loop_scope="session")
SETTINGS: Any = {"max_tokens": LIMIT}


def agent(emu: Emulator, how: str, model: str) -> Agent[None, str]:
    """pydantic-ai takes an AsyncOpenAI client; without one, its provider makes its own."""
    if how == "wrap":
        provider = OpenAIProvider(openai_client=async_client(emu, how))
    else:
        provider = OpenAIProvider(base_url=emu.base_url(PERSONA), api_key=API_KEY)
    return Agent(OpenAIChatModel(model, provider=provider))


@pytest.mark.parametrize("how", ALL)
def test_run_sync(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    with scope(how):
        result = agent(emu, how, model).run_sync("Tell me the story.", model_settings=SETTINGS)
    check(result.output, how, emu, model, logs)


@pytest.mark.parametrize("how", ALL)
@session_loop
async def test_run(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    with scope(how):
        result = await agent(emu, how, model).run("Tell me the story.", model_settings=SETTINGS)
    check(result.output, how, emu, model, logs)


@pytest.mark.parametrize("how", CONTINUED)
@session_loop
async def test_run_stream(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    with scope(how):
        async with agent(emu, how, model).run_stream("Tell me the story.", model_settings=SETTINGS) as result:
            text = "".join([delta async for delta in result.stream_text(delta=True)])
    check(text, how, emu, model, logs)
