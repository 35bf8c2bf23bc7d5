"""The streaming drivers: one continuous stream of chunks across rounds.

They only move chunks: each upstream chunk goes to the core, and whatever the core releases goes to the caller.
Seams, budgets, retries and resumption after a dropped connection are the core's decisions. The upstream response
is always closed: when a round ends, when the core stops reading mid-round, when the caller breaks out of the
loop, or when the caller closes the stream.
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
        self._iterator = self._run()

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

    def prime(self) -> None:
        """Run the stream up to its first chunk, kept for the caller: the first request is then sent and its
        response received (a caller that wants the HTTP response reads it before iterating)."""
        try:
            first = next(self._iterator)
        except StopIteration:
            return
        self._iterator = _primed(first, self._iterator)

    def _run(self) -> Generator[ChatCompletionChunk, None, None]:
        core = self._core
        action: Action = core.start()
        while True:
            if isinstance(action, DoRequest):
                try:
                    upstream = self._send(action)
                except Exception as error:
                    action = core.on_error(error)
                    continue
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
            elif isinstance(action, DoSleep):
                time.sleep(action.seconds)
                action = core.resume()
            elif isinstance(action, Done):
                yield from core.closing_chunks(action.completion)
                return
            else:
                yield from core.failing_chunks()
                raise action.error


class AsyncContinuedStream:
    """The async twin of :class:`ContinuedStream`, used like the SDK's ``AsyncStream``."""

    def __init__(self, core: Continuation, send: Callable[[DoRequest], Awaitable[Any]]) -> None:
        self._core = core
        self._send = send
        self._iterator = self._run()

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

    aclose = close

    async def prime(self) -> None:
        """Run the stream up to its first chunk, kept for the caller (see :meth:`ContinuedStream.prime`)."""
        try:
            first = await self._iterator.__anext__()
        except StopAsyncIteration:
            return
        self._iterator = _aprimed(first, self._iterator)

    async def _run(self) -> AsyncGenerator[ChatCompletionChunk, None]:
        core = self._core
        action: Action = core.start()
        while True:
            if isinstance(action, DoRequest):
                try:
                    upstream = await self._send(action)
                except Exception as error:
                    action = core.on_error(error)
                    continue
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
            elif isinstance(action, DoSleep):
                await asyncio.sleep(action.seconds)
                action = core.resume()
            elif isinstance(action, Done):
                for out in core.closing_chunks(action.completion):
                    yield out
                return
            else:
                for out in core.failing_chunks():
                    yield out
                raise action.error


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
