"""Shared fixtures: one emulator and one real engine per session, real ``openai`` clients for the emulator's personas,
captured log events.

The HTTP tests talk to the emulator (tests/support/emulator) over real HTTP through the real ``openai`` SDK; nothing
is mocked. Their other shared helpers (texts, the ``Recorder``, ``add``, ``collect``...) are in tests/support/common.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest
import pytest_asyncio
import structlog

from autocontinue.local import LocalEngine
from tests.support.common import API_KEY, Recorder
from tests.support.emulator import Emulator


@pytest.fixture(scope="session")
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def engine() -> Iterator[LocalEngine]:
    """The real engine (llama-server and SmolLM2), started once for every test that runs on it."""
    with LocalEngine() as eng:
        yield eng


@pytest.fixture
def sync_client(emu: Emulator) -> Iterator[Callable[..., openai.OpenAI]]:
    """``make(persona, **kwargs)`` -> an ``openai.OpenAI`` for the persona; closed at teardown."""
    clients: list[openai.OpenAI] = []

    def make(persona: str, *, recorder: Recorder | None = None, **kwargs: Any) -> openai.OpenAI:
        if recorder is not None:
            kwargs["http_client"] = httpx2.Client(event_hooks={"response": [recorder.hook]})
        client = openai.OpenAI(base_url=emu.base_url(persona), api_key=API_KEY, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest_asyncio.fixture(loop_scope="function")
async def async_client(emu: Emulator) -> Any:
    """``make(persona, **kwargs)`` -> an ``openai.AsyncOpenAI`` for the persona; closed at teardown."""
    clients: list[openai.AsyncOpenAI] = []

    def make(persona: str, *, recorder: Recorder | None = None, **kwargs: Any) -> openai.AsyncOpenAI:
        if recorder is not None:
            kwargs["http_client"] = httpx2.AsyncClient(event_hooks={"response": [recorder.ahook]})
        client = openai.AsyncOpenAI(base_url=emu.base_url(persona), api_key=API_KEY, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """structlog events emitted during the test (structlog's defaults restored afterwards)."""
    with structlog.testing.capture_logs() as captured:
        yield captured
    structlog.reset_defaults()
