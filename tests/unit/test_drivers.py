"""The drivers execute the core's actions and nothing else: the waits they make are the ones the core decides, through
the ``sleep`` they are given (no test copies a driver to avoid waiting; nothing is patched, as the emulator's
server thread in the same process sleeps too); a stream's reader gets what the actions
carry; and the options every way in accepts come from one list, the one the README documents."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import tenacity

from autocontinue import max_total_tokens
from autocontinue._options import OPTION_NAMES
from autocontinue.core import Action, Done, DoRequest
from autocontinue.drivers import aio, sync
from autocontinue.drivers import stream as stream_driver
from autocontinue.retry import is_transient
from tests.support.drive import make_core
from tests.support.fakes import connection_error, make_completion, stream_of

#: the wait the policy asks for between attempts, in seconds
WAIT = 7.0


def _policy() -> tenacity.Retrying:
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_fixed(WAIT),
        retry=tenacity.retry_if_exception(is_transient),
        reraise=True,
    )


def _flaky(reply: Any) -> tuple[list[DoRequest], Any]:
    """A send that fails once with a dropped connection, then returns ``reply``; and the requests it was given."""
    sent: list[DoRequest] = []

    def send(action: DoRequest) -> Any:
        sent.append(action)
        if len(sent) == 1:
            raise connection_error()
        return reply

    return sent, send


def test_sync_driver_waits_through_the_sleep_it_is_given() -> None:
    core = make_core(None, retry=_policy())
    sent, send = _flaky(make_completion("Hello.", "stop"))
    waits: list[float] = []
    result = sync.run(core, send, sleep=waits.append)
    assert result.choices[0].message.content == "Hello."
    assert waits == [WAIT]
    assert len(sent) == 2


def test_async_driver_waits_through_the_sleep_it_is_given() -> None:
    core = make_core(None, retry=_policy())
    sent, send = _flaky(make_completion("Hello.", "stop"))
    waits: list[float] = []

    async def asend(action: DoRequest) -> Any:
        return send(action)

    async def asleep(seconds: float) -> None:
        waits.append(seconds)

    result = asyncio.run(aio.run(core, asend, sleep=asleep))
    assert result.choices[0].message.content == "Hello."
    assert waits == [WAIT]
    assert len(sent) == 2


class _Upstream:
    def __init__(self, chunks: list[Any]) -> None:
        self._chunks = iter(chunks)
        self.closed = False

    def __iter__(self) -> _Upstream:
        return self

    def __next__(self) -> Any:
        return next(self._chunks)

    def close(self) -> None:
        self.closed = True


def test_stream_driver_waits_through_the_sleep_it_is_given_and_closes_each_response() -> None:
    core = make_core(None, stream=True, retry=_policy())
    upstreams: list[_Upstream] = []
    _, send = _flaky(None)

    def open_stream(action: DoRequest) -> _Upstream:
        send(action)
        upstreams.append(_Upstream(stream_of("c", ["Hello", " there."], "stop")))
        return upstreams[-1]

    waits: list[float] = []
    steps = stream_driver.chunks(core, open_stream, sleep=waits.append)
    items: list[Any] = []
    with pytest.raises(StopIteration) as end:
        while True:
            items.append(next(steps))
    assert items[0] is None  # the first response is open: create(stream=True) returns here
    assert None not in items[1:]
    text = "".join(c.choices[0].delta.content or "" for c in items[1:] if c.choices)
    assert text == "Hello there."
    assert end.value.value.choices[0].message.content == "Hello there."
    assert waits == [WAIT]
    assert [u.closed for u in upstreams] == [True]


def test_a_chunk_past_the_budget_is_the_action_that_ends_the_round() -> None:
    """A server that ignores the request's limit: the chunk that would pass the token budget is not the reader's,
    and on_chunk returns the action that ends the call there (the driver closes the response, hands on the
    action's chunks and does it)."""
    core = make_core(None, stream=True, stop=max_total_tokens(2), max_tokens=2)
    assert isinstance(core.start(), DoRequest)
    outcomes: list[Any] = []
    for chunk in stream_of("c", ["One", " two", " three", " four"], "length"):
        outcomes.append(core.on_chunk(chunk))
        if isinstance(outcomes[-1], Action):
            break
    assert len(outcomes) == 4  # the role chunk, "One", " two"; " three" would pass the budget
    done = outcomes[3]
    assert isinstance(done, Done)
    assert done.completion.choices[0].message.content == "One two"
    handed = [c for c in outcomes[:3] if c is not None and not isinstance(c, Action)] + list(done.emit)
    assert "".join(c.choices[0].delta.content or "" for c in handed if c.choices) == "One two"
    assert done.emit[-1].choices[0].finish_reason == "length"


def test_the_options_are_the_ones_the_readme_documents() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Options", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.M))
    assert rows <= OPTION_NAMES
    assert all(name in rows or f"`{name}=" in section for name in OPTION_NAMES)
