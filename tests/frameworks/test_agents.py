"""The OpenAI Agents SDK, run for real: an Agent on ``OpenAIChatCompletionsModel``: Runner.run_sync, Runner.run and
Runner.run_streamed."""

from __future__ import annotations

from typing import Any

import pytest
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner
from openai.types.responses import ResponseTextDeltaEvent

from tests.frameworks.support import ALL, CONTINUED, LIMIT, Run

session_loop = pytest.mark.asyncio(loop_scope="session")


def agent(run: Run) -> Agent[Any]:
    """The Agents SDK takes an AsyncOpenAI client (a plain one for the decorator)."""
    return Agent(
        name="storyteller",
        instructions="Tell the story.",
        model=OpenAIChatCompletionsModel(model=run.model, openai_client=run.async_client()),
        model_settings=ModelSettings(max_tokens=LIMIT),
    )


@pytest.mark.parametrize("run", ALL, indirect=True)
def test_run_sync(run: Run) -> None:
    with run.scope():
        result = Runner.run_sync(agent(run), "Tell me the story.")
    run.check(result.final_output)


@pytest.mark.parametrize("run", ALL, indirect=True)
@session_loop
async def test_run(run: Run) -> None:
    with run.scope():
        result = await Runner.run(agent(run), "Tell me the story.")
    run.check(result.final_output)


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
@session_loop
async def test_run_streamed(run: Run) -> None:
    with run.scope():
        result = Runner.run_streamed(agent(run), "Tell me the story.")
        deltas = [
            event.data.delta
            async for event in result.stream_events()
            if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent)
        ]
    run.check("".join(deltas))
    assert result.final_output == "".join(deltas)
