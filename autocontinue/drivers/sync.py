"""The blocking driver: execute the core's actions with a blocking ``send``."""

from __future__ import annotations

import time
from collections.abc import Callable

from openai.types.chat import ChatCompletion

from ..core import Continuation, Done, DoRequest, DoSleep, Fail
from ..result import merge_choices


def run(
    core: Continuation,
    send: Callable[[DoRequest], ChatCompletion],
    *,
    sleep: Callable[[float], object] = time.sleep,
) -> ChatCompletion:
    """Run ``core`` to the end, sending each request with ``send`` and waiting with ``sleep``; return the joined
    completion.

    For ``n > 1`` the other choices are continued one after another once this one is done.
    """
    siblings: list[Continuation] = []
    action = core.start()
    while True:
        if isinstance(action, DoRequest):
            try:
                response = send(action)
            except Exception as error:  # the core decides: retry, fall back, or fail with the partial
                action = core.on_error(error)
            else:
                action = core.on_response(response)
                siblings += core.take_siblings()
        elif isinstance(action, DoSleep):
            sleep(action.seconds)
            action = core.resume()
        elif isinstance(action, Done):
            if not siblings:
                return action.completion
            return merge_choices([action.completion, *(run(sibling, send, sleep=sleep) for sibling in siblings)])
        else:
            assert isinstance(action, Fail)
            raise action.error
