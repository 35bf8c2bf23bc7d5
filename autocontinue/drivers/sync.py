"""The blocking driver: execute the core's actions with a blocking ``send``."""

from __future__ import annotations

import time
from collections.abc import Callable

from openai.types.chat import ChatCompletion

from ..core import Continuation, Done, DoRequest, DoSleep


def run(core: Continuation, send: Callable[[DoRequest], ChatCompletion]) -> ChatCompletion:
    """Run ``core`` to the end, sending each request with ``send``; return the joined completion."""
    action = core.start()
    while True:
        if isinstance(action, DoRequest):
            try:
                response = send(action)
            except Exception as error:  # the core decides: retry, fall back, or fail with the partial
                action = core.on_error(error)
            else:
                action = core.on_response(response)
        elif isinstance(action, DoSleep):
            time.sleep(action.seconds)
            action = core.resume()
        elif isinstance(action, Done):
            return action.completion
        else:
            raise action.error
