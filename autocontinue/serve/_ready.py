"""The items of an async iterator in batches of those that were ready at once, so that a stream writes them together.

An upstream read often holds many SSE events (a fast upstream, a slow reader): the SDK and the library then hand
on one chunk after another without waiting. Written one by one, each costs a pass through the ASGI server's send
path and a socket write, on the proxy and again on the reader's side; written together, once. Nothing waits for a
batch to fill: a batch ends as soon as taking the next item would wait, so each item goes out as early as it would
alone.

Whether taking the next item waits is seen by starting its ``__anext__()`` awaitable by hand (``send(None)`` to its
``__await__()`` iterator, as a task does): it either finishes at once (``StopIteration``: the item was ready) or
hands up the future it waits for. In the second case the batch so far is yielded, and the awaitable is then awaited
to its end through :class:`_Rest`, which passes each future up to the task and each wake-up (or cancellation) down
to it, as ``await`` itself does. Only the awaitable protocol is used (``__await__`` and its ``send``, ``throw``,
``close``), so it works under any event loop whose tasks drive coroutines, asyncio's and uvloop's alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Generator
from typing import Any, Generic, TypeVar

__all__ = ["ready_batches"]

T = TypeVar("T")


class _Rest(Generic[T]):
    """The rest of an awaitable's iterator that has started and handed up ``first`` (what it waits for)."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Generator[Any, Any, T], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, T]:
        coro, waiting = self._coro, self._first
        while True:
            try:
                sent = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as error:  # thrown in by the task (cancellation): the coroutine decides
                try:
                    waiting = coro.throw(error)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]  # StopIteration.value is Any
                continue
            try:
                waiting = coro.send(sent)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]


async def ready_batches(source: AsyncIterable[T]) -> AsyncIterator[list[T]]:
    """The items of ``source`` in order, as lists of the items that were ready one after another without waiting.

    An error from ``source`` comes after the items taken before it have been yielded.
    """
    items = source.__aiter__()
    batch: list[T] = []
    while True:
        step = items.__anext__().__await__()
        try:
            waiting = step.send(None)
        except StopIteration as done:  # ready at once
            batch.append(done.value)
            continue
        except StopAsyncIteration:
            break
        except Exception:
            if batch:
                yield batch
            raise
        if batch:  # the next item is not there yet: what is ready goes out now
            yield batch
            batch = []
        try:
            batch.append(await _Rest(step, waiting))
        except StopAsyncIteration:
            break
    if batch:
        yield batch
