"""``ready_batches`` (``autocontinue/serve/_ready.py``): a streamed reply's chunks written together when they were
ready together, a burst's first ones at once, and nothing lost or reordered on an error or a cancellation."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from autocontinue.serve._ready import ready_batches

pytestmark = pytest.mark.timeout(30)


async def _source(groups: list[list[int]], fail: bool = False) -> AsyncIterator[int]:
    """``groups`` of items; each group after the first waits for the loop first (a new upstream read)."""
    for n, group in enumerate(groups):
        if n:
            await asyncio.sleep(0.001)
        for item in group:
            yield item
    if fail:
        raise ValueError("upstream broke off")


async def _batches(groups: list[list[int]], fail: bool = False, most: int = 100) -> list[list[int]]:
    return [batch async for batch in ready_batches(_source(groups, fail), first=most, most=most)]


async def test_items_ready_together_come_together() -> None:
    groups = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]]
    assert await _batches(groups) == groups
    assert await _batches([]) == []
    assert await _batches([[], [1], []]) == [[1]]


async def test_a_burst_goes_out_in_growing_batches_with_the_loop_run_between() -> None:
    """A burst's first items go out at once, in batches that double up to the most, and other tasks (the server's
    socket writes) run between them; after a wait the batches start small again."""
    ran: list[int] = []

    async def other_task() -> None:
        while True:
            ran.append(len(ran))
            await asyncio.sleep(0)

    burst = list(range(100))
    other = asyncio.ensure_future(other_task())
    await asyncio.sleep(0)
    try:
        seen = []
        async for batch in ready_batches(_source([burst, [100, 101, 102]]), first=2, most=16):
            seen.append((batch, len(ran)))
    finally:
        other.cancel()
    assert [len(batch) for batch, _ in seen] == [2, 4, 8, 16, 16, 16, 16, 16, 6, 2, 1]
    assert [item for batch, _ in seen for item in batch] == list(range(103))
    runs = [ran_before for _, ran_before in seen]
    assert all(later > earlier for earlier, later in itertools.pairwise(runs)), runs
    assert await _batches([burst], most=1) == [[n] for n in burst]


async def test_an_error_comes_after_the_items_before_it() -> None:
    seen: list[list[int]] = []
    with pytest.raises(ValueError, match="broke off"):
        async for batch in ready_batches(_source([[1, 2], [3, 4]], fail=True), first=8):
            seen.append(batch)
    assert seen == [[1, 2], [3, 4]]


async def test_a_batch_goes_out_before_the_next_item_is_there() -> None:
    """A batch is not held back until the next item arrives: it goes out while the source waits."""
    gate = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        yield 1
        yield 2
        await gate.wait()
        yield 3

    batches = ready_batches(source(), first=8)
    assert await batches.__anext__() == [1, 2]  # returned although item 3 is not there yet
    gate.set()
    assert await batches.__anext__() == [3]


async def test_cancelling_a_waiting_reader_closes_the_source() -> None:
    """A caller that goes away cancels the task reading: the cancellation reaches the source's wait, and its
    ``finally`` runs (the library closes the upstream response there)."""
    events: list[str] = []
    started = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            yield 1
            started.set()
            await asyncio.sleep(30)
            yield 2
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            events.append("closed")

    async def read() -> None:
        async for _batch in ready_batches(source()):
            pass

    task = asyncio.ensure_future(read())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["cancelled", "closed"]


async def test_cancelling_a_reader_between_a_bursts_batches_closes_the_source() -> None:
    """Cancelled in the pause between a burst's batches, where the source waits on nothing: it is closed at once."""
    events: list[str] = []
    got: list[list[int]] = []

    async def source() -> AsyncIterator[int]:
        try:
            for n in range(100):
                yield n
        finally:
            events.append("closed")

    async def read() -> None:
        async for batch in ready_batches(source(), first=2, most=4):
            got.append(batch)

    task = asyncio.ensure_future(read())
    while not got:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert got == [[0, 1]]
    assert events == ["closed"]


def test_under_uvloop() -> None:
    """The server's event loop (uvicorn takes uvloop when it is installed, as the serve extra does)."""
    uvloop = pytest.importorskip("uvloop")

    async def every_test() -> None:
        await test_items_ready_together_come_together()
        await test_an_error_comes_after_the_items_before_it()
        await test_a_batch_goes_out_before_the_next_item_is_there()
        await test_cancelling_a_waiting_reader_closes_the_source()
        await test_a_burst_goes_out_in_growing_batches_with_the_loop_run_between()
        await test_cancelling_a_reader_between_a_bursts_batches_closes_the_source()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(every_test())
