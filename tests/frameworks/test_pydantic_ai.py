"""pydantic-ai, run for real: an Agent on ``OpenAIChatModel`` with an ``OpenAIProvider``: run_sync, run, run_stream,
and structured output (``output_type``)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.frameworks.support import ALL, CONTINUED, LIMIT, Run
from tests.support.common import API_KEY

session_loop = pytest.mark.asyncio(loop_scope="session")
SETTINGS: Any = {"max_tokens": LIMIT}


def agent(run: Run) -> Agent[None, str]:
    """pydantic-ai takes an AsyncOpenAI client; without one, its provider makes its own."""
    if run.how == "wrap":
        provider = OpenAIProvider(openai_client=run.async_client())
    else:
        provider = OpenAIProvider(base_url=run.base_url, api_key=API_KEY)
    return Agent(OpenAIChatModel(run.model, provider=provider))


@pytest.mark.parametrize("run", ALL, indirect=True)
def test_run_sync(run: Run) -> None:
    with run.scope():
        result = agent(run).run_sync("Tell me the story.", model_settings=SETTINGS)
    run.check(result.output)


@pytest.mark.parametrize("run", ALL, indirect=True)
@session_loop
async def test_run(run: Run) -> None:
    with run.scope():
        result = await agent(run).run("Tell me the story.", model_settings=SETTINGS)
    run.check(result.output)


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
@session_loop
async def test_run_stream(run: Run) -> None:
    with run.scope():
        async with agent(run).run_stream("Tell me the story.", model_settings=SETTINGS) as result:
            text = "".join([delta async for delta in result.stream_text(delta=True)])
    run.check(text)
