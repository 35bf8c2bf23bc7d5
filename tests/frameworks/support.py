"""What the framework tests share: the three ways to run a framework, and the checks of a continued answer.

``how`` is ``"wrap"`` (the framework is handed ``autocontinue.wrap(client)``), ``"decorator"`` (the framework makes
its own client, before the scope, and the call runs inside ``autocontinue.enabled()``), or ``"plain"`` (no
autocontinue: the baseline, which must come back cut after one request, so the tests can tell the difference).
A test takes the ``run`` fixture (tests/frameworks/conftest.py) parametrized with the ways it runs in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pydantic

import autocontinue
from tests.support.common import API_KEY, TARGET, add
from tests.support.emulator import Emulator

PERSONA = "openrouter"  # a plain prefill host: what dialect="auto" picks on a loopback URL
LIMIT = 6  # max_tokens per round: TARGET takes about fifteen rounds
OPTIONS: dict[str, Any] = {"max_rounds": 40}
CONTINUED = ("wrap", "decorator")
ALL = ("plain", *CONTINUED)


class Story(pydantic.BaseModel):
    """A structured answer that takes several rounds at LIMIT tokens each."""

    title: str
    words: list[str]


STORY = '{"title": "The fox", "words": ["quick", "brown", "lazy", "dog"]}'


def calls(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in logs if event["event"] == "autocontinue.call"]


@dataclass
class Run:
    """One framework test's set-up (the ``run`` fixture, parametrized with ``how``): the script the emulator serves
    (``model``; ``add`` serves another), the clients, the scope and the check for ``how``."""

    how: str
    emu: Emulator
    logs: list[dict[str, Any]]
    model: str

    def add(self, target: str = TARGET, **script: Any) -> str:
        """Serve ``target`` (and ``script``'s options) instead; its model name."""
        self.model = add(self.emu, target, **script)
        return self.model

    @property
    def base_url(self) -> str:
        return self.emu.base_url(PERSONA)

    def sync_client(self) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.base_url, api_key=API_KEY)
        return autocontinue.wrap(client, **OPTIONS) if self.how == "wrap" else client

    def async_client(self) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=API_KEY)
        return autocontinue.wrap(client, **OPTIONS) if self.how == "wrap" else client

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """The decorator's scope for ``"decorator"``, nothing otherwise."""
        if self.how == "decorator":
            with autocontinue.enabled(**OPTIONS):
                yield
        else:
            yield

    def check(self, text: Any, target: Any = TARGET) -> None:
        """Continued: the exact answer, in one continued call whose rounds are the requests the server received.
        Plain: the answer cut by the limit after one request."""
        requests = len(self.emu.requests(self.model))
        if self.how == "plain":
            assert text != target
            assert requests == 1
            assert calls(self.logs) == []
            return
        assert text == target
        assert requests > 1
        assert [call["rounds"] for call in calls(self.logs)] == [requests]
