"""The OpenAI Agents SDK, run for real: an Agent on ``OpenAIChatCompletionsModel``: Runner.run_sync, Runner.run and
Runner.run_streamed."""

from __future__ import annotations

from typing import Any

import pytest
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner
from openai.types.responses import ResponseTextDeltaEvent

from tests.frameworks.support import ALL, CONTINUED, LIMIT, async_client, check, scope
from tests.support.common import add
from tests.support.emulator import Emulator

session_loop = pytest.mark.asyncio(loop_scope="session")


def agent(emu: Emulator, how: str, model: str) -> Agent[Any]:
    """The Agents SDK takes an AsyncOpenAI client (a plain one for the decorator)."""
    return Agent(
        name="storyteller",
        instructions="Tell the story.",
        model=OpenAIChatCompletionsModel(model=model, openai_client=async_client(emu, how)),
        model_settings=ModelSettings(max_tokens=LIMIT),
    )


@pytest.mark.parametrize("how", ALL)
def test_run_sync(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    with scope(how):
        result = Runner.run_sync(agent(emu, how, model), "Tell me the story.")
    check(result.final_output, how, emu, model, logs)


@pytest.mark.parametrize("how", ALL)
@session_loop
async def test_run(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    with scope(how):
        result = await Runner.run(agent(emu, how, model), "Tell me the story.")
    check(result.final_output, how, emu, model, logs)


@pytest.mark.parametrize("how", CONTINUED)
@session_loop
async def test_run_streamed(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    with scope(how):
        result = Runner.run_streamed(agent(emu, how, model), "Tell me the story.")
        deltas = [
            event.data.delta
            async for event in result.stream_events()
            if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent)
        ]
    check("".join(deltas), how, emu, model, logs)
    assert result.final_output == "".join(deltas)
