"""Driving the core without a server: the real drivers (``autocontinue.drivers.sync`` and ``.stream``) run it
against a fake provider, with a ``sleep`` that does not wait and a bound on the steps."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from autocontinue import max_rounds
from autocontinue._options import Settings
from autocontinue.budget import PriceTable, StopCondition
from autocontinue.core import Continuation, DoRequest
from autocontinue.drivers import stream as stream_driver
from autocontinue.drivers import sync as sync_driver
from autocontinue.tokens import TokenCounter
from tests.support.fakes import FLAVOURS, MODEL, USER, Provider

# ================================================================================================================
# Driving the core: the real drivers, the fake provider for I/O, no sleeping

COUNTER = TokenCounter()


def make_core(
    provider: Provider | None,
    messages: list[Any] | None = None,
    *,
    heal: bool = True,
    stop: StopCondition | None = None,
    stream: bool = False,
    retry: Any = None,
    dialect: Any = None,
    base_url: str | None = None,
    prices: Any = None,
    counter: TokenCounter | None = None,
    stop_on_repeat: bool = True,
    clock: Callable[[], float] = lambda: 0.0,
    **kwargs: Any,
) -> Continuation:
    flavour = provider.flavour if provider is not None else FLAVOURS["dashscope"]
    settings = Settings(
        stop_on_repeat=stop_on_repeat,
        stop=stop if stop is not None else max_rounds(2000),
        dialect=dialect if dialect is not None else flavour.dialect,
        retry=retry,
        heal=heal,
        counter=counter or COUNTER,
        prices=PriceTable(prices),
    )
    call: dict[str, Any] = {"model": MODEL, "messages": messages or [dict(USER)], **kwargs}
    if stream:
        call["stream"] = True
    return Continuation(call, settings, base_url=base_url or flavour.base_url, clock=clock)


class _ProviderAssertion(BaseException):
    """An AssertionError of the fake provider, carried past the driver's ``except Exception`` (which would hand it
    to the core as a failed request) so that it fails the test."""


class _Steps:
    """What a driver is given to send and sleep with: the fake provider's answers, no waiting, and at most
    ``max_steps`` requests and sleeps (a core that never finishes fails the test instead of hanging it)."""

    def __init__(self, send: Callable[[DoRequest], Any], max_steps: int) -> None:
        self._send = send
        self._left = max_steps

    def _step(self) -> None:
        self._left -= 1
        if self._left < 0:
            raise _ProviderAssertion(AssertionError("the core never finished"))

    def send(self, action: DoRequest) -> Any:
        self._step()
        try:
            return self._send(action)
        except AssertionError as error:
            raise _ProviderAssertion(error) from error

    def open(self, action: DoRequest) -> Upstream:
        return Upstream(self.send(action))

    def sleep(self, seconds: float) -> None:
        self._step()


class Upstream:
    """A scripted stream of chunks as the driver reads an upstream response: iterated, then closed."""

    def __init__(self, chunks: Iterable[ChatCompletionChunk]) -> None:
        self._chunks = iter(chunks)

    def __iter__(self) -> Upstream:
        return self

    def __next__(self) -> ChatCompletionChunk:
        try:
            return next(self._chunks)
        except AssertionError as error:
            raise _ProviderAssertion(error) from error

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def run(core: Continuation, send: Callable[[DoRequest], ChatCompletion], *, max_steps: int = 5000) -> ChatCompletion:
    """drivers.sync.run without sleeping; an AssertionError of the fake provider fails the test."""
    steps = _Steps(send, max_steps)
    try:
        return sync_driver.run(core, steps.send, sleep=steps.sleep)
    except _ProviderAssertion as escaped:
        raise escaped.args[0] from None


@dataclass
class StreamResult:
    chunks: list[ChatCompletionChunk]
    completion: ChatCompletion

    @property
    def text(self) -> str:
        return "".join(c.choices[0].delta.content or "" for c in self.chunks if c.choices)


def run_stream(
    core: Continuation, send: Callable[[DoRequest], Iterable[ChatCompletionChunk]], *, max_steps: int = 5000
) -> StreamResult:
    """drivers.stream.chunks without sleeping; returns every chunk handed to the reader, and the completion."""
    steps = _Steps(send, max_steps)
    out: list[ChatCompletionChunk] = []
    stream = stream_driver.chunks(core, steps.open, sleep=steps.sleep)
    try:
        while True:
            chunk = next(stream)
            if chunk is not None:
                out.append(chunk)
    except StopIteration as end:
        return StreamResult(out, end.value)
    except _ProviderAssertion as escaped:
        raise escaped.args[0] from None


def drive(core: Continuation, provider: Provider, *, stream: bool) -> ChatCompletion:
    """Run ``core`` against ``provider``, streaming or not; the stream's text must match the result's."""
    if not stream:
        return run(core, provider.completion)
    result = run_stream(core, provider.chunks)
    assert result.text == content_of(result.completion)
    return result.completion


def scripted(replies: list[Any], requests: list[DoRequest] | None = None) -> Callable[[DoRequest], Any]:
    """A provider that returns (or raises) the given replies in order, recording the requests."""
    queue = list(replies)

    def send(action: DoRequest) -> Any:
        if requests is not None:
            requests.append(action)
        assert queue, "more requests than scripted replies"
        reply = queue.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    return send


def content_of(completion: ChatCompletion) -> str:
    return completion.choices[0].message.content or ""


def prefix_sent(action: DoRequest) -> str | None:
    """The prefix a continuation request carries (None for a plain request)."""
    messages = action.kwargs["messages"]
    if messages[-1]["role"] == "assistant":
        return str(messages[-1]["content"])
    if len(messages) >= 2 and messages[-2]["role"] == "assistant":
        return str(messages[-2]["content"])
    return None
