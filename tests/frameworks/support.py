"""What the framework tests share: the three ways to run a framework, and the checks of a continued answer.

``how`` is ``"wrap"`` (the framework is handed ``autocontinue.wrap(client)``), ``"decorator"`` (the framework makes
its own client, before the scope, and the call runs inside ``autocontinue.enabled()``), or ``"plain"`` (no
autocontinue: the baseline, which must come back cut after one request, so the tests can tell the difference).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import openai
import pydantic

import autocontinue
from tests.support.common import API_KEY, TARGET
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


def sync_client(emu: Emulator, how: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=emu.base_url(PERSONA), api_key=API_KEY)
    return autocontinue.wrap(client, **OPTIONS) if how == "wrap" else client


def async_client(emu: Emulator, how: str) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=emu.base_url(PERSONA), api_key=API_KEY)
    return autocontinue.wrap(client, **OPTIONS) if how == "wrap" else client


@contextlib.contextmanager
def scope(how: str) -> Iterator[None]:
    """The decorator's scope for ``"decorator"``, nothing otherwise."""
    if how == "decorator":
        with autocontinue.enabled(**OPTIONS):
            yield
    else:
        yield


def calls(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in logs if event["event"] == "autocontinue.call"]


def check(text: Any, how: str, emu: Emulator, model: str, logs: list[dict[str, Any]], target: Any = TARGET) -> None:
    """Continued: the exact answer, in one continued call whose rounds are the requests the server received.
    Plain: the answer cut by the limit after one request."""
    requests = len(emu.requests(model))
    if how == "plain":
        assert text != target
        assert requests == 1
        assert calls(logs) == []
        return
    assert text == target
    assert requests > 1
    assert [call["rounds"] for call in calls(logs)] == [requests]
