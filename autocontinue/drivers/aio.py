"""The asyncio driver: the sync driver's loop, with ``await``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from openai.types.chat import ChatCompletion

from ..core import Continuation, Done, DoRequest, DoSleep


async def run(core: Continuation, send: Callable[[DoRequest], Awaitable[ChatCompletion]]) -> ChatCompletion:
    """Run ``core`` to the end, awaiting ``send`` for each request; return the joined completion."""
    action = core.start()
    while True:
        if isinstance(action, DoRequest):
            try:
                response = await send(action)
            except Exception as error:  # the core decides: retry, fall back, or fail with the partial
                action = core.on_error(error)
            else:
                action = core.on_response(response)
        elif isinstance(action, DoSleep):
            await asyncio.sleep(action.seconds)
            action = core.resume()
        elif isinstance(action, Done):
            return action.completion
        else:
            raise action.error
