"""Frameworks on the real engine (llama-server, SmolLM2-135M): an answer continued in short rounds through the
framework is, character for character, the answer the model writes in one request whose limit is the rounds' total
(greedy decoding; the engine evaluates prompts batch-invariant, see the README's *Seam fidelity*)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import litellm
import openai
import pytest
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner
from langchain_openai import ChatOpenAI
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import autocontinue
from autocontinue.local import DEFAULT_SEED, LocalEngine

# The first run on a fresh machine builds llama-server inside the engine fixture (minutes on 2 cores).
pytestmark = [
    pytest.mark.timeout(1200),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]
session_loop = pytest.mark.asyncio(loop_scope="session")

PROMPT = "Explain in three short paragraphs why the sea is salty."
ROUND = 12  # max_tokens per round
TOTAL = 48  # the one request's limit, and the continued call's token budget (the engine is slow on 2 busy cores)
OPTIONS: dict[str, Any] = {"max_rounds": 20, "max_total_tokens": TOTAL}
GREEDY: dict[str, Any] = {"temperature": 0, "seed": DEFAULT_SEED}


@pytest.fixture(scope="module")
def engine() -> Iterator[LocalEngine]:
    with LocalEngine() as eng:
        yield eng


@pytest.fixture(scope="module")
def one_shot(engine: LocalEngine) -> str:
    """The answer in one request with the whole limit."""
    with openai.OpenAI(base_url=engine.base_url, api_key="unused") as client:
        reply = client.chat.completions.create(
            model=engine.model, messages=[{"role": "user", "content": PROMPT}], max_tokens=TOTAL, **GREEDY
        )
    text = reply.choices[0].message.content
    assert text is not None and reply.usage is not None and reply.usage.completion_tokens > 3 * ROUND
    return text


def test_langchain_invoke_wrapped(engine: LocalEngine, one_shot: str) -> None:
    client = autocontinue.wrap(openai.OpenAI(base_url=engine.base_url, api_key="unused"), **OPTIONS)
    llm = ChatOpenAI(model=engine.model, max_tokens=ROUND, client=client.chat.completions, root_client=client, **GREEDY)
    assert llm.invoke(PROMPT).content == one_shot


def test_litellm_streaming_under_the_decorator(engine: LocalEngine, one_shot: str) -> None:
    with autocontinue.enabled(**OPTIONS):
        stream = litellm.completion(
            model=f"openai/{engine.model}",
            api_base=engine.base_url,
            api_key="unused",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=ROUND,
            stream=True,
            **GREEDY,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == one_shot


@session_loop
async def test_pydantic_ai_wrapped(engine: LocalEngine, one_shot: str) -> None:
    client = autocontinue.wrap(openai.AsyncOpenAI(base_url=engine.base_url, api_key="unused"), **OPTIONS)
    agent = PydanticAgent(OpenAIChatModel(engine.model, provider=OpenAIProvider(openai_client=client)))
    result = await agent.run(PROMPT, model_settings={"max_tokens": ROUND, **GREEDY})  # type: ignore[typeddict-item]
    assert result.output == one_shot


@session_loop
async def test_agents_sdk_under_the_decorator(engine: LocalEngine, one_shot: str) -> None:
    model = OpenAIChatCompletionsModel(
        model=engine.model, openai_client=openai.AsyncOpenAI(base_url=engine.base_url, api_key="unused")
    )
    # No instructions: the prompt must be the one the one-shot answer was written for.
    agent = Agent(name="a", model=model, model_settings=ModelSettings(max_tokens=ROUND, temperature=0))
    async with autocontinue.enabled(**OPTIONS):
        result = await Runner.run(agent, PROMPT)
    assert result.final_output == one_shot
