"""What the proxy sends: the OpenAI error shape with the right status, completions with their trace, SSE events.

Errors look like OpenAI's own (``{"error": {"message", "type", "param", "code"}}``), so every client's error handling
works unchanged:

- the proxy's own refusals (:class:`ServeError`): 400 bad JSON or options, 401 a missing or wrong client key, 413 a
  body too large, 429 too many requests in flight;
- an upstream error before any text: the upstream's status and body, passed on as they came;
- a failure after some rounds (:class:`~autocontinue.ContinuationFailed`): 502, and the body carries the partial
  completion (every character generated, the trace) under ``error.partial``: never lost;
- the upstream unreachable: 502; timed out: 504; a reply of the wrong shape: 502.

Messages name what was wrong, never the request's text or a key.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai

from .._cli_output import trace_to_dict
from ..errors import ConfigurationError, ContinuationFailed, MalformedResponse
from ..trace import ContinuationTrace
from .upstream import timed_out

__all__ = [
    "ServeError",
    "ServeUsageError",
    "completion_payload",
    "error_payload",
    "failure",
    "trace_headers",
]

#: upstream response headers passed on with an upstream error (what a client's retry logic reads)
_ERROR_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry", "x-request-id")


class ServeUsageError(Exception):
    """The ``serve`` command line is wrong in a way argparse cannot see."""


class ServeError(Exception):
    """A request the proxy refuses itself, answered with ``status`` and the OpenAI error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}


def error_payload(
    message: str, type_: str, *, code: str | None = None, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The OpenAI error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}


def completion_payload(completion: Any) -> dict[str, Any]:
    """A (continued) ``ChatCompletion`` as the OpenAI JSON, with its trace under ``continuation``."""
    data: dict[str, Any] = completion.model_dump(mode="json", exclude_none=True)
    trace = getattr(completion, "continuation", None)
    if isinstance(trace, ContinuationTrace):
        data["continuation"] = trace_to_dict(trace)
    return data


def trace_headers(trace: ContinuationTrace | None) -> dict[str, str]:
    """``x-autocontinue-rounds``, ``-stop-cause`` and ``-cost-usd`` (the last when the price is known)."""
    if trace is None:
        return {}
    headers = {"x-autocontinue-rounds": str(len(trace.rounds)), "x-autocontinue-stop-cause": trace.stop_cause}
    if trace.cost_usd is not None:
        headers["x-autocontinue-cost-usd"] = f"{trace.cost_usd:.6f}"
    return headers


def failure(exc: BaseException) -> tuple[int, bytes, dict[str, str]]:
    """The status, JSON body and headers that answer ``exc``; raises it again when it is not an expected failure."""
    if isinstance(exc, ServeError):
        body = error_payload(exc.message, exc.type, code=exc.code, param=exc.param)
        return exc.status, _dumps(body), exc.headers
    if isinstance(exc, ConfigurationError):
        return 400, _dumps(error_payload(str(exc), "invalid_request_error", code="invalid_request")), {}
    if isinstance(exc, ContinuationFailed):
        return _continuation_failed(exc)
    if isinstance(exc, openai.APIStatusError):
        return _upstream_status(exc)
    if timed_out(exc):  # the SDK's, or httpx2's when a stream's body read timed out (the SDK wraps only its start)
        return 504, _dumps(error_payload("The upstream timed out.", "upstream_error", code="upstream_timeout")), {}
    if isinstance(exc, openai.APIConnectionError):
        message = "The upstream could not be reached."
        return 502, _dumps(error_payload(message, "upstream_error", code="upstream_unreachable")), {}
    if isinstance(exc, MalformedResponse):
        return 502, _dumps(error_payload(str(exc), "upstream_error", code="upstream_malformed")), {}
    if isinstance(exc, httpx2.HTTPError):  # a stream's body broke off before the library had any text to keep
        message = "The upstream connection broke."
        return 502, _dumps(error_payload(message, "upstream_error", code="upstream_unreachable")), {}
    raise exc


def _continuation_failed(exc: ContinuationFailed) -> tuple[int, bytes, dict[str, str]]:
    """502 with every character generated before the failure, and the trace, in ``error.partial``."""
    cause = exc.cause
    extra: dict[str, Any] = {"partial": completion_payload(exc.partial)}
    if isinstance(cause, openai.APIStatusError):
        extra["upstream_status"] = cause.status_code
    code = _snake(type(exc).__name__)
    message = f"{exc} ({len(exc.text)} characters generated before the failure are in error.partial)"
    trace = getattr(exc.partial, "continuation", None)
    return 502, _dumps(error_payload(message, "upstream_error", code=code, **extra)), trace_headers(trace)


def _upstream_status(exc: openai.APIStatusError) -> tuple[int, bytes, dict[str, str]]:
    """The upstream's own error: its status, its body as it came (or the SDK's reading of it), its retry headers."""
    response = exc.response
    try:
        body = response.content
    except Exception:  # a streamed error body the SDK did not read: its parsed form is what there is
        body = _dumps(exc.body if isinstance(exc.body, dict) else error_payload(exc.message, "upstream_error"))
    if not body:
        body = _dumps(error_payload(exc.message, "upstream_error"))
    headers = {name: response.headers[name] for name in _ERROR_HEADERS if name in response.headers}
    headers["content-type"] = response.headers.get("content-type", "application/json")
    return response.status_code, body, headers


def stream_error_event(exc: BaseException) -> bytes:
    """A failure after a stream's first bytes: an SSE ``data: {"error": ...}`` event, as OpenAI sends one (the
    Python and npm SDKs raise it as an ``APIError``). The text was delivered chunk by chunk before it."""
    if isinstance(exc, ContinuationFailed):
        extra: dict[str, Any] = {"continuation": trace_to_dict(trace)} if (trace := _trace(exc)) else {}
        message = f"{exc} (the {len(exc.text)} characters generated were streamed before this error)"
        payload = error_payload(message, "upstream_error", code=_snake(type(exc).__name__), **extra)
    else:
        status, body, _ = failure(exc)
        payload = json.loads(body) if body.startswith(b"{") else error_payload(str(status), "upstream_error")
        if not isinstance(payload, dict) or "error" not in payload:
            payload = error_payload(f"upstream status {status}", "upstream_error")
    return b"data: " + _dumps(payload) + b"\n\n"


def _trace(exc: ContinuationFailed) -> ContinuationTrace | None:
    trace = getattr(exc.partial, "continuation", None)
    return trace if isinstance(trace, ContinuationTrace) else None


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
