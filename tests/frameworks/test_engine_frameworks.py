"""Frameworks on the real engine (llama-server, SmolLM2-135M): an answer continued in short rounds through the
framework is, character for character, the answer the model writes in one request with a large limit, where it
ends by itself (greedy decoding; the engine evaluates prompts batch-invariant, see the README's *Seam fidelity*)."""

from __future__ import annotations

from typing import Any, NamedTuple

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

# A prompt whose answer ends by itself after a few dozen tokens: short, because the engine is slow on two busy
# cores, and a natural end, so the whole answer is compared.
PROMPT = "Erkläre auf Deutsch, wie ein Kühlschrank funktioniert."
OPTIONS: dict[str, Any] = {"max_rounds": 40}
GREEDY: dict[str, Any] = {"temperature": 0, "seed": DEFAULT_SEED}


class OneShot(NamedTuple):
    text: str
    round_tokens: int  # max_tokens per round for the continued calls: about a quarter of the answer


@pytest.fixture(scope="module")
def one_shot(engine: LocalEngine) -> OneShot:
    """The answer in one request with a limit it does not reach."""
    with openai.OpenAI(base_url=engine.base_url, api_key="unused") as client:
        reply = client.chat.completions.create(
            model=engine.model, messages=[{"role": "user", "content": PROMPT}], max_tokens=512, **GREEDY
        )
    assert reply.choices[0].finish_reason == "stop"
    text, usage = reply.choices[0].message.content, reply.usage
    assert text is not None and usage is not None and usage.completion_tokens >= 8
    return OneShot(text, usage.completion_tokens // 4)


def test_langchain_invoke_wrapped(engine: LocalEngine, one_shot: OneShot) -> None:
    client = autocontinue.wrap(openai.OpenAI(base_url=engine.base_url, api_key="unused"), **OPTIONS)
    clients = {"client": client.chat.completions, "root_client": client}
    llm = ChatOpenAI(model=engine.model, max_tokens=one_shot.round_tokens, api_key="unused", **clients, **GREEDY)
    assert llm.invoke(PROMPT).content == one_shot.text


def test_litellm_streaming_under_the_decorator(engine: LocalEngine, one_shot: OneShot) -> None:
    with autocontinue.enabled(**OPTIONS):
        stream = litellm.completion(
            model=f"openai/{engine.model}",
            api_base=engine.base_url,
            api_key="unused",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=one_shot.round_tokens,
            stream=True,
            **GREEDY,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == one_shot.text


@session_loop
async def test_pydantic_ai_wrapped(engine: LocalEngine, one_shot: OneShot) -> None:
    client = autocontinue.wrap(openai.AsyncOpenAI(base_url=engine.base_url, api_key="unused"), **OPTIONS)
    agent = PydanticAgent(OpenAIChatModel(engine.model, provider=OpenAIProvider(openai_client=client)))
    result = await agent.run(PROMPT, model_settings={"max_tokens": one_shot.round_tokens, **GREEDY})  # type: ignore[typeddict-item]
    assert result.output == one_shot.text


@session_loop
async def test_agents_sdk_under_the_decorator(engine: LocalEngine, one_shot: OneShot) -> None:
    model = OpenAIChatCompletionsModel(
        model=engine.model, openai_client=openai.AsyncOpenAI(base_url=engine.base_url, api_key="unused")
    )
    # No instructions: the prompt must be the one the one-shot answer was written for.
    agent = Agent(name="a", model=model, model_settings=ModelSettings(max_tokens=one_shot.round_tokens, temperature=0))
    async with autocontinue.enabled(**OPTIONS):
        result = await Runner.run(agent, PROMPT)
    assert result.final_output == one_shot.text
