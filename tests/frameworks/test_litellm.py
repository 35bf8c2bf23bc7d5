"""litellm, run for real: ``completion`` and ``acompletion``, streamed and not, on an ``openai/`` model.

litellm's OpenAI handler sends ``client.post("/chat/completions", ...)`` with the raw-response header and reads
the headers and ``.parse()`` of what comes back; with ``client=`` it uses the client it is given.
"""

from __future__ import annotations

from typing import Any

import litellm
import pytest

from tests.frameworks.support import ALL, CONTINUED, LIMIT, PERSONA, async_client, check, scope, sync_client
from tests.support.common import API_KEY, add
from tests.support.emulator import Emulator

session_loop = pytest.mark.asyncio(loop_scope="session")
# litellm's own models warn about pydantic features they use; not ours to act on
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
MESSAGES = [{"role": "user", "content": "Tell me the story."}]


def request(emu: Emulator, how: str, model: str, client: Any) -> dict[str, Any]:
    """A wrapped client goes in as ``client=``; otherwise litellm makes its own for ``api_base``."""
    where = {"client": client} if how == "wrap" else {"api_base": emu.base_url(PERSONA), "api_key": API_KEY}
    return {"model": f"openai/{model}", "messages": MESSAGES, "max_tokens": LIMIT, **where}


@pytest.mark.parametrize("how", ALL)
def test_completion(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    with scope(how):
        reply = litellm.completion(**request(emu, how, model, sync_client(emu, how)))
    check(reply.choices[0].message.content, how, emu, model, logs)


@pytest.mark.parametrize("how", ALL)
@session_loop
async def test_acompletion(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    with scope(how):
        reply = await litellm.acompletion(**request(emu, how, model, async_client(emu, how)))
    check(reply.choices[0].message.content, how, emu, model, logs)


@pytest.mark.parametrize("how", CONTINUED)
def test_completion_streaming(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    with scope(how):
        chunks = list(litellm.completion(**request(emu, how, model, sync_client(emu, how)), stream=True))
    check("".join(chunk.choices[0].delta.content or "" for chunk in chunks), how, emu, model, logs)


@pytest.mark.parametrize("how", CONTINUED)
@session_loop
async def test_acompletion_streaming(how: str, emu: Emulator, logs: list[dict[str, Any]]) -> None:
    model = add(emu)
    with scope(how):
        stream = await litellm.acompletion(**request(emu, how, model, async_client(emu, how)), stream=True)
        chunks = [chunk async for chunk in stream]
    check("".join(chunk.choices[0].delta.content or "" for chunk in chunks), how, emu, model, logs)


def test_router_under_the_decorator(emu: Emulator, logs: list[dict[str, Any]]) -> None:
    """A Router makes and keeps its own clients: the decorator reaches them."""
    model = add(emu)
    params = {"model": f"openai/{model}", "api_base": emu.base_url(PERSONA), "api_key": API_KEY}
    router = litellm.Router(model_list=[{"model_name": "storyteller", "litellm_params": params}])
    with scope("decorator"):
        reply = router.completion(model="storyteller", messages=MESSAGES, max_tokens=LIMIT)
    check(reply.choices[0].message.content, "decorator", emu, model, logs)
