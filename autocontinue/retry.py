"""Retrying a failed round, with tenacity's strategies.

autocontinue owns retries: it knows which text a failed round had already produced and continues from it, which
the SDK's own retry cannot. So the requests it sends use ``max_retries=0`` and a tenacity policy decides instead.
The caller may replace the policy with any ``tenacity.Retrying`` (its ``retry``, ``stop``, ``wait`` and
``before_sleep`` are used; the loop is ours, so one policy serves sync, async and streaming calls), or pass
``retry=None`` to disable our retries and leave the SDK's ``max_retries`` as the client has it.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from typing import Any

import openai
import tenacity
from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential, wait_random
from tenacity.wait import wait_base

from .errors import IncompleteStream, MalformedResponse

__all__ = [
    "RetryTracker",
    "default_retry",
    "is_transient",
    "retry_after_cap",
    "retry_after_seconds",
    "wait_retry_after",
]

#: the longest Retry-After we honour; beyond it the error is treated like any other
MAX_RETRY_AFTER = 60.0
#: attempts per round whatever the policy says, so that no policy makes a call unbounded
HARD_ATTEMPT_CAP = 20
_RETRYABLE_STATUS = frozenset({408, 409, 429})


def is_transient(error: BaseException) -> bool:
    """Connection errors, timeouts, 408/409/429, 5xx, bodies or streams cut short, replies of the wrong shape:
    worth another try. A server's ``x-should-retry: true`` / ``false`` decides for any status, as in the SDK."""
    if isinstance(error, openai.APIConnectionError | IncompleteStream | MalformedResponse):  # incl. APITimeoutError
        return True
    if isinstance(error, openai.APIStatusError):
        verdict = error.response.headers.get("x-should-retry")
        if verdict in ("true", "false"):
            return verdict == "true"
        return error.status_code in _RETRYABLE_STATUS or error.status_code >= 500
    if isinstance(error, openai.APIResponseValidationError | json.JSONDecodeError):
        # A body cut off in transit parses as invalid JSON: the same request can succeed.
        return True
    # A stream broken mid-body surfaces from the HTTP library itself.
    module = type(error).__module__ or ""
    return module.startswith(("httpx", "httpcore", "h11")) and isinstance(error, Exception)


def retry_after_seconds(error: BaseException | None) -> float | None:
    """The delay a 429/503 asked for, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return _finite(float(value), value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _finite(float(value), value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _finite(seconds: float, text: str) -> float:
    """A parsed delay. "inf"/"nan" written out are unusable (ValueError); a number too large for a float (``1e999``)
    is an excessive delay, as the SDK reads it, not a malformed one."""
    if math.isnan(seconds) or (math.isinf(seconds) and text.strip().lower().lstrip("+") in ("inf", "infinity")):
        raise ValueError(text)
    return max(0.0, seconds)


def retry_after_cap(policy: tenacity.BaseRetrying) -> float:
    """The longest Retry-After ``policy`` waits for: its ``wait_retry_after``'s maximum, else 60 s."""
    wait = policy.wait
    return wait.maximum if isinstance(wait, wait_retry_after) else MAX_RETRY_AFTER


class wait_retry_after(wait_base):
    """Wait as long as the server's Retry-After says (capped), else as ``fallback`` says."""

    def __init__(self, fallback: wait_base, maximum: float = MAX_RETRY_AFTER) -> None:
        self.fallback = fallback
        self.maximum = maximum

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        asked = retry_after_seconds(error)
        if asked is not None and asked <= self.maximum:
            return asked
        return float(self.fallback(retry_state))


def default_retry() -> tenacity.Retrying:
    """Four attempts per round; Retry-After honoured; otherwise exponential backoff with jitter (0.25 s → 8 s)."""
    return tenacity.Retrying(
        stop=stop_after_attempt(4),
        wait=wait_retry_after(wait_exponential(multiplier=0.25, max=8.0) + wait_random(0, 0.25)),
        retry=retry_if_exception(is_transient),
        reraise=True,
    )


class RetryTracker:
    """Applies a tenacity policy to the failures of one round at a time, without running tenacity's loop.

    tenacity's strategies are pure functions of a ``RetryCallState``; we keep one per round and ask them, exactly
    as ``BaseRetrying.iter`` would, whether to try again and how long to wait.
    """

    def __init__(self, policy: tenacity.BaseRetrying | None) -> None:
        self._policy = policy
        self._state: RetryCallState | None = None

    def reset(self) -> None:
        """A round succeeded: the next failure starts a fresh count."""
        self._state = None

    @property
    def attempts(self) -> int:
        """Failed attempts of the current round."""
        return 0 if self._state is None else self._state.attempt_number

    def decide(self, error: BaseException) -> float | None:
        """Seconds to wait before trying again, or ``None`` to give up on ``error``."""
        policy = self._policy
        if policy is None:
            return None
        state = self._state
        if state is None:
            state = self._state = RetryCallState(retry_object=policy, fn=None, args=(), kwargs={})
        else:
            state.attempt_number += 1
        state.outcome = tenacity.Future.construct(state.attempt_number, error, True)
        state.outcome_timestamp = time.monotonic()
        if not policy.retry(state):
            return None
        asked = retry_after_seconds(error)
        if asked is not None and asked > retry_after_cap(policy):
            # The server asked for a longer wait than the policy allows: like the SDK, do not retry sooner than
            # asked (that would only be refused again); the error ends the round.
            return None
        if policy.stop(state) or state.attempt_number >= HARD_ATTEMPT_CAP:
            return None
        seconds = float(policy.wait(state)) if policy.wait is not None else 0.0
        state.next_action = tenacity.RetryAction(seconds)
        state.idle_for += seconds
        state.upcoming_sleep = seconds
        if policy.before_sleep is not None:
            _call_hook(policy.before_sleep, state)
        return seconds


def _call_hook(hook: Any, state: RetryCallState) -> None:
    # A hook written for AsyncRetrying may be a coroutine function; it cannot be awaited here, so it is skipped
    # rather than leaving an un-awaited coroutine behind.
    import inspect

    if not inspect.iscoroutinefunction(hook):
        hook(state)
