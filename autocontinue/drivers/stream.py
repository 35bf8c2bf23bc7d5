"""The streaming drivers: one continuous stream of chunks across rounds.

They only move chunks: each upstream chunk goes to the core, and whatever the core releases goes to the caller.
Seams, budgets, retries and resumption after a dropped connection are the core's decisions.

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
from typing import Any

from openai.types.chat import ChatCompletionChunk

from ..core import Action, Continuation, Done, DoRequest, DoSleep
from ..trace import ContinuationTrace

__all__ = ["AsyncContinuedStream", "ContinuedStream"]


class ContinuedStream:
    """Used like the SDK's ``Stream``: iterate it, use it in ``with``, ``close()`` it.

    ``continuation`` holds the trace once the stream is exhausted.
    """

    def __init__(self, core: Continuation, send: Callable[[DoRequest], Any]) -> None:
        self._core = core
        self._send = send
        self._iterator: Generator[ChatCompletionChunk, None, None] = _empty()
        self._pending: Any = None  # the first upstream response, until the generator takes it over

    @classmethod
    def open(cls, core: Continuation, send: Callable[[DoRequest], Any]) -> ContinuedStream:
        """Send the first request (retrying as the core decides) and return the stream; an error before any text
        is raised here, as the SDK raises it from ``create(stream=True)``."""
        stream = cls(core, send)
        upstream, action = stream._advance(core.start())
        if upstream is None and not isinstance(action, Done) and not core.trace.rounds:
            raise action.error  # type: ignore[union-attr]
        stream._pending = upstream
        stream._iterator = stream._run(upstream, action)
        return stream

    @property
    def continuation(self) -> ContinuationTrace:
        """The rounds, stop cause and cost (complete once the stream is exhausted)."""
        return self._core.trace

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
        pending, self._pending = self._pending, None
        if pending is not None:  # closed before the first chunk was read: the generator never took it over
            pending.close()

    def prime(self) -> None:
        """Run the stream up to its first chunk, kept for the caller: the first request is then sent and its
        response received (a caller that wants the HTTP response reads it before iterating)."""
        try:
            first = next(self._iterator)
        except StopIteration:
            return
        self._iterator = _primed(first, self._iterator)

    def _advance(self, action: Action) -> tuple[Any, Action]:
        """Execute requests and sleeps until an upstream response is open, or the call is over (Done / Fail)."""
        core = self._core
        while True:
            if isinstance(action, DoRequest):
                try:
                    return self._send(action), action
                except Exception as error:
                    action = core.on_error(error)
            elif isinstance(action, DoSleep):
                time.sleep(action.seconds)
                action = core.resume()
            else:
                return None, action

    def _run(self, upstream: Any, action: Action) -> Generator[ChatCompletionChunk, None, None]:
        self._pending = None  # from here on, the finally below closes it
        core = self._core
        while upstream is not None:
            try:
                pull, feed = iter(upstream).__next__, core.on_chunk  # looked up once, not per chunk
                while True:
                    try:
                        chunk = pull()
                    except StopIteration:
                        action = core.on_stream_end()
                        yield from core.take_released()
                        break
                    except Exception as error:
                        action = core.on_error(error)
                        break
                    given = feed(chunk)
                    if given is not None:
                        yield given
                    if core.stop_reading:
                        action = core.on_stream_end()
                        yield from core.take_released()
                        break
            finally:
                upstream.close()
            upstream, action = self._advance(action)
        if isinstance(action, Done):
            yield from core.closing_chunks(action.completion)
            return
        yield from core.failing_chunks()
        raise action.error  # type: ignore[union-attr]


class AsyncContinuedStream:
    """The async twin of :class:`ContinuedStream`, used like the SDK's ``AsyncStream``."""

    def __init__(self, core: Continuation, send: Callable[[DoRequest], Awaitable[Any]]) -> None:
        self._core = core
        self._send = send
        self._iterator: AsyncGenerator[ChatCompletionChunk, None] = _nothing()
        self._pending: Any = None  # the first upstream response, until the generator takes it over

    @classmethod
    async def open(cls, core: Continuation, send: Callable[[DoRequest], Awaitable[Any]]) -> AsyncContinuedStream:
        """The async twin of :meth:`ContinuedStream.open`."""
        stream = cls(core, send)
        upstream, action = await stream._advance(core.start())
        if upstream is None and not isinstance(action, Done) and not core.trace.rounds:
            raise action.error  # type: ignore[union-attr]
        await stream._iterator.aclose()
        stream._pending = upstream
        stream._iterator = stream._run(upstream, action)
        return stream

    @property
    def continuation(self) -> ContinuationTrace:
        """The rounds, stop cause and cost (complete once the stream is exhausted)."""
        return self._core.trace

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
        pending, self._pending = self._pending, None
        if pending is not None:  # closed before the first chunk was read: the generator never took it over
            await pending.close()

    aclose = close

    async def prime(self) -> None:
        """Run the stream up to its first chunk, kept for the caller (see :meth:`ContinuedStream.prime`)."""
        try:
            first = await self._iterator.__anext__()
        except StopAsyncIteration:
            return
        self._iterator = _aprimed(first, self._iterator)

    async def _advance(self, action: Action) -> tuple[Any, Action]:
        core = self._core
        while True:
            if isinstance(action, DoRequest):
                try:
                    return await self._send(action), action
                except Exception as error:
                    action = core.on_error(error)
            elif isinstance(action, DoSleep):
                await asyncio.sleep(action.seconds)
                action = core.resume()
            else:
                return None, action

    async def _run(self, upstream: Any, action: Action) -> AsyncGenerator[ChatCompletionChunk, None]:
        self._pending = None  # from here on, the finally below closes it
        core = self._core
        while upstream is not None:
            try:
                pull, feed = upstream.__aiter__().__anext__, core.on_chunk  # looked up once, not per chunk
                while True:
                    try:
                        chunk = await pull()
                    except StopAsyncIteration:
                        action = core.on_stream_end()
                        for out in core.take_released():
                            yield out
                        break
                    except Exception as error:
                        action = core.on_error(error)
                        break
                    given = feed(chunk)
                    if given is not None:
                        yield given
                    if core.stop_reading:
                        action = core.on_stream_end()
                        for out in core.take_released():
                            yield out
                        break
            finally:
                await upstream.close()
            upstream, action = await self._advance(action)
        if isinstance(action, Done):
            for out in core.closing_chunks(action.completion):
                yield out
            return
        for out in core.failing_chunks():
            yield out
        raise action.error  # type: ignore[union-attr]


def _empty() -> Generator[ChatCompletionChunk, None, None]:
    return
    yield  # a generator with nothing in it


async def _nothing() -> AsyncGenerator[ChatCompletionChunk, None]:
    return
    yield  # an async generator with nothing in it


def _primed(first: ChatCompletionChunk, rest: Generator[ChatCompletionChunk, None, None]) -> Generator[Any, None, None]:
    yield first
    yield from rest  # close() reaches the rest, and with it the upstream response


async def _aprimed(
    first: ChatCompletionChunk, rest: AsyncGenerator[ChatCompletionChunk, None]
) -> AsyncGenerator[Any, None]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()
