"""The streaming drivers: one continuous stream of chunks across rounds.

They only move chunks: each upstream chunk goes to the core, and whatever the core hands back goes to the reader
(:meth:`~autocontinue.core.Continuation.on_chunk` returns a chunk, or the action that ends the round; every
action's ``emit`` is handed on before it is done). Seams, budgets, retries and resumption after a dropped
connection are the core's decisions.

The first request is sent when the stream is made (:meth:`ContinuedStream.open`), as the SDK's ``create(stream=True)``
does, so an error before any text (a 401, a 429 after the retries) is raised by ``create()`` itself. The upstream
response is closed when a round ends, when the core stops reading mid-round, when the caller closes the stream
(``close()``, ``with``), and when the stream is freed: a ``for`` loop over a stream nothing else refers to closes it
as soon as the loop is left (CPython frees it on the spot; an ``async for``'s at the event loop's next step). A
``break`` alone cannot close a stream the caller still holds: Python tells an iterator nothing when a loop stops
using it, and the stream may be read on (``next(stream)`` after a ``break`` goes on where it stopped, as with the
SDK's own ``Stream``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from types import TracebackType
from typing import Any, cast

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ..core import Action, Continuation, Done, DoRequest, DoSleep, Fail
from ..trace import ContinuationTrace

__all__ = ["AsyncContinuedStream", "ContinuedStream", "achunks", "chunks"]


def chunks(
    core: Continuation, send: Callable[[DoRequest], Any], *, sleep: Callable[[float], object] = time.sleep
) -> Generator[ChatCompletionChunk | None, None, ChatCompletion]:
    """Run ``core`` to the end, streaming: yield the reader's chunks, and ``None`` once, when the first upstream
    response is open; return the joined completion (or raise the call's error)."""
    action = core.start()
    opened = False
    while True:
        yield from action.emit
        if isinstance(action, DoRequest):
            try:
                upstream = send(action)
            except Exception as error:  # the core decides: retry, fall back, or fail with the partial
                action = core.on_error(error)
                continue
            try:
                if not opened:
                    opened = True
                    yield None
                action = yield from _read(core, upstream)
            finally:
                upstream.close()
        elif isinstance(action, DoSleep):
            sleep(action.seconds)
            action = core.resume()
        elif isinstance(action, Done):
            return action.completion
        else:
            raise cast(Fail, action).error


def _read(core: Continuation, upstream: Any) -> Generator[ChatCompletionChunk, None, Action]:
    """One round's upstream response: its chunks through the core, until the round ends."""
    pull, feed = iter(upstream).__next__, core.on_chunk  # looked up once, not per chunk
    while True:
        try:
            chunk = pull()
        except StopIteration:
            return core.on_stream_end()
        except Exception as error:
            return core.on_error(error)
        given = feed(chunk)
        if isinstance(given, Action):
            return given
        if given is not None:
            yield given


async def achunks(
    core: Continuation,
    send: Callable[[DoRequest], Awaitable[Any]],
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> AsyncGenerator[ChatCompletionChunk | None, None]:
    """The async twin of :func:`chunks` (an async generator returns nothing: the completion is not given)."""
    action = core.start()
    opened = False
    while True:
        for out in action.emit:
            yield out
        if isinstance(action, DoRequest):
            try:
                upstream = await send(action)
            except Exception as error:
                action = core.on_error(error)
                continue
            try:
                if not opened:
                    opened = True
                    yield None
                pull, feed = upstream.__aiter__().__anext__, core.on_chunk
                while True:
                    try:
                        chunk = await pull()
                    except StopAsyncIteration:
                        action = core.on_stream_end()
                        break
                    except Exception as error:
                        action = core.on_error(error)
                        break
                    given = feed(chunk)
                    if isinstance(given, Action):
                        action = given
                        break
                    if given is not None:
                        yield given
            finally:
                await upstream.close()
        elif isinstance(action, DoSleep):
            await sleep(action.seconds)
            action = core.resume()
        elif isinstance(action, Done):
            return
        else:
            raise cast(Fail, action).error


class _Continued:
    """What the two streams share: the core they run, and its trace."""

    def __init__(self, core: Continuation) -> None:
        self._core = core

    @property
    def continuation(self) -> ContinuationTrace:
        """The rounds, stop cause and cost (complete once the stream is exhausted)."""
        return self._core.trace


class ContinuedStream(_Continued):
    """Used like the SDK's ``Stream``: iterate it, use it in ``with``, ``close()`` it.

    ``continuation`` holds the trace once the stream is exhausted.
    """

    def __init__(self, core: Continuation, iterator: Generator[ChatCompletionChunk, None, Any]) -> None:
        super().__init__(core)
        self._iterator = iterator

    @classmethod
    def open(
        cls, core: Continuation, send: Callable[[DoRequest], Any], *, sleep: Callable[[float], object] = time.sleep
    ) -> ContinuedStream:
        """Send the first request (retrying as the core decides) and return the stream; an error before any text
        is raised here, as the SDK raises it from ``create(stream=True)``."""
        steps = chunks(core, send, sleep=sleep)
        first = next(steps, None)  # the first response is open (or the call ended before one was)
        rest = cast(Generator[ChatCompletionChunk, None, Any], steps)
        return cls(core, rest if first is None else _primed(first, rest))

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self._iterator

    def __next__(self) -> ChatCompletionChunk:
        return next(self._iterator)

    def __enter__(self) -> ContinuedStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the stream and close the upstream response."""
        self._iterator.close()

    def prime(self) -> None:
        """Run the stream up to its first chunk, kept for the caller: the first request is then sent and its
        response received (a caller that wants the HTTP response reads it before iterating)."""
        try:
            first = next(self._iterator)
        except StopIteration:
            return
        self._iterator = _primed(first, self._iterator)


class AsyncContinuedStream(_Continued):
    """The async twin of :class:`ContinuedStream`, used like the SDK's ``AsyncStream``."""

    def __init__(self, core: Continuation, iterator: AsyncGenerator[ChatCompletionChunk, None]) -> None:
        super().__init__(core)
        self._iterator = iterator

    @classmethod
    async def open(
        cls,
        core: Continuation,
        send: Callable[[DoRequest], Awaitable[Any]],
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> AsyncContinuedStream:
        """The async twin of :meth:`ContinuedStream.open`."""
        steps = achunks(core, send, sleep=sleep)
        first = await anext(steps, None)
        rest = cast(AsyncGenerator[ChatCompletionChunk, None], steps)
        return cls(core, rest if first is None else _aprimed(first, rest))

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self._iterator

    async def __anext__(self) -> ChatCompletionChunk:
        return await self._iterator.__anext__()

    async def __aenter__(self) -> AsyncContinuedStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the stream and close the upstream response."""
        await self._iterator.aclose()

    aclose = close

    async def prime(self) -> None:
        """Run the stream up to its first chunk, kept for the caller (see :meth:`ContinuedStream.prime`)."""
        try:
            first = await self._iterator.__anext__()
        except StopAsyncIteration:
            return
        self._iterator = _aprimed(first, self._iterator)


def _primed(first: ChatCompletionChunk, rest: Generator[ChatCompletionChunk, None, Any]) -> Generator[Any, None, Any]:
    yield first
    return (yield from rest)  # close() reaches the rest, and with it the upstream response


async def _aprimed(
    first: ChatCompletionChunk, rest: AsyncGenerator[ChatCompletionChunk, None]
) -> AsyncGenerator[Any, None]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()
