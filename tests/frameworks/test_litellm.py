"""litellm, run for real: ``completion`` and ``acompletion``, streamed and not, on an ``openai/`` model.

litellm's OpenAI handler sends ``client.post("/chat/completions", ...)`` with the raw-response header and reads
the headers and ``.parse()`` of what comes back; with ``client=`` it uses the client it is given.
"""

from __future__ import annotations

from typing import Any

import litellm
import pytest

from tests.frameworks.support import ALL, CONTINUED, LIMIT, Run
from tests.support.common import API_KEY, add
from tests.support.emulator import Emulator

session_loop = pytest.mark.asyncio(loop_scope="session")
# litellm's own models warn about pydantic features they use; not ours to act on
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
MESSAGES = [{"role": "user", "content": "Tell me the story."}]


def request(run: Run, client: Any) -> dict[str, Any]:
    """A wrapped client goes in as ``client=``; otherwise litellm makes its own for ``api_base``."""
    where = {"client": client} if run.how == "wrap" else {"api_base": run.base_url, "api_key": API_KEY}
    return {"model": f"openai/{run.model}", "messages": MESSAGES, "max_tokens": LIMIT, **where}


@pytest.mark.parametrize("run", ALL, indirect=True)
def test_completion(run: Run) -> None:
    with run.scope():
        reply = litellm.completion(**request(run, run.sync_client()))
    run.check(reply.choices[0].message.content)


@pytest.mark.parametrize("run", ALL, indirect=True)
@session_loop
async def test_acompletion(run: Run) -> None:
    with run.scope():
        reply = await litellm.acompletion(**request(run, run.async_client()))
    run.check(reply.choices[0].message.content)


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
def test_completion_streaming(run: Run) -> None:
    with run.scope():
        chunks = list(litellm.completion(**request(run, run.sync_client()), stream=True))
    run.check("".join(chunk.choices[0].delta.content or "" for chunk in chunks))


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
@session_loop
async def test_acompletion_streaming(run: Run) -> None:
    with run.scope():
        stream = await litellm.acompletion(**request(run, run.async_client()), stream=True)
        chunks = [chunk async for chunk in stream]
    run.check("".join(chunk.choices[0].delta.content or "" for chunk in chunks))


def test_router_under_the_decorator(emu: Emulator, logs: list[dict[str, Any]]) -> None:
    """A Router makes and keeps its own clients: the decorator reaches them."""
    run = Run("decorator", emu, logs, add(emu))
    params = {"model": f"openai/{run.model}", "api_base": run.base_url, "api_key": API_KEY}
    router = litellm.Router(model_list=[{"model_name": "storyteller", "litellm_params": params}])
    with run.scope():
        reply = router.completion(model="storyteller", messages=MESSAGES, max_tokens=LIMIT)
    run.check(reply.choices[0].message.content)
