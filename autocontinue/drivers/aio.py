"""The asyncio driver: the sync driver's loop, with ``await``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from openai.types.chat import ChatCompletion

from ..core import Continuation, Done, DoRequest, DoSleep, Fail
from ..result import merge_choices


async def run(
    core: Continuation,
    send: Callable[[DoRequest], Awaitable[ChatCompletion]],
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> ChatCompletion:
    """Run ``core`` to the end, awaiting ``send`` for each request and ``sleep`` for each wait; return the joined
    completion.

    For ``n > 1`` the other choices are continued concurrently, each in its own task.
    """
    siblings: list[asyncio.Task[ChatCompletion]] = []
    try:
        action = core.start()
        while True:
            if isinstance(action, DoRequest):
                try:
                    response = await send(action)
                except Exception as error:  # the core decides: retry, fall back, or fail with the partial
                    action = core.on_error(error)
                else:
                    action = core.on_response(response)
                    siblings += [asyncio.ensure_future(run(s, send, sleep=sleep)) for s in core.take_siblings()]
            elif isinstance(action, DoSleep):
                await sleep(action.seconds)
                action = core.resume()
            elif isinstance(action, Done):
                if not siblings:
                    return action.completion
                return merge_choices([action.completion, *await asyncio.gather(*siblings)])
            else:
                assert isinstance(action, Fail)
                raise action.error
    finally:
        for task in siblings:
            task.cancel()
