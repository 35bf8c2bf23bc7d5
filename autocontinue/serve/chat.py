"""``POST /v1/chat/completions``: one continued call through the library's public API, streamed or not.

The request body becomes :func:`autocontinue.acreate`'s keyword arguments: the fields the OpenAI SDK's ``create()``
names go as they are, any other field (a provider's own, such as vLLM's ``top_k``) in ``extra_body``, so it reaches
the upstream unchanged. The answer is the library's, byte for byte what a Python caller of ``acreate`` gets:

- not streamed: the ``ChatCompletion`` JSON with its trace under ``continuation`` and in ``x-autocontinue-*``
  headers;
- streamed: the library's continued stream as SSE, one ``data:`` event per chunk, the last chunk carrying the trace
  under ``continuation``, then ``data: [DONE]``. Nothing but ``data:`` events: many clients' SSE readers take every
  line for a ``data:`` line and fail on a comment (OpenRouter's keep-alive comments broke langchaingo, ms-swift and
  others). An error before any text is a plain HTTP error (the library raises it from ``acreate``, as the SDK
  does); after the first bytes, a ``data: {"error": ...}`` event, which the OpenAI SDKs raise.

A caller that goes away cancels its call: the upstream request is closed at once, streamed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from typing import Any

import openai
from openai.resources.chat.completions import AsyncCompletions
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .._cli_output import trace_to_dict
from .._options import make_settings
from ..client import run_async, transport_for
from ..trace import ContinuationTrace
from ._ready import ready_batches
from .errors import ServeError, completion_payload, failure, stream_error_event, trace_headers
from .options import BODY_FIELD, request_options
from .upstream import JSONBodyTransport, timed_out

__all__ = ["ChatRoute"]

#: create() arguments that are not body fields: a body key of that name goes in extra_body like any other
_NOT_BODY = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})
#: told of each finished request: route, status, start time, streamed, trace, upstream error kind
Observer = Callable[[str, int, float, bool, ContinuationTrace | None, str | None], None]
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@lru_cache(maxsize=1)
def _sdk_fields() -> frozenset[str]:
    """Body fields the installed SDK's ``chat.completions.create`` takes as keyword arguments."""
    return frozenset(inspect.signature(AsyncCompletions.create).parameters) - {"self"} - _NOT_BODY


def sdk_arguments(body: dict[str, Any]) -> dict[str, Any]:
    """``acreate`` keyword arguments for a request body (without its ``autocontinue`` object)."""
    fields = _sdk_fields()
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in body.items():
        if key in fields:
            kwargs[key] = value
        else:
            extra[key] = value
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


class ChatRoute:
    """The continued route of one app: the upstream client, the server's options, metrics and the access log."""

    def __init__(
        self, client: openai.AsyncOpenAI, defaults: dict[str, Any], *, server_pays: bool, observe: Observer
    ) -> None:
        self._client = client
        self._defaults = defaults
        self._server_pays = server_pays
        self._observe = observe

    async def handle(self, request: Request, body: Any, headers: dict[str, str]) -> Response:
        """Answer one chat completion request; ``body`` is its parsed JSON, ``headers`` those to send upstream."""
        started = time.perf_counter()
        if not isinstance(body, dict):
            raise ServeError(
                400, "The request body must be a JSON object.", "invalid_request_error", code="invalid_json"
            )
        body = dict(body)
        stream = body.get("stream") is True
        options = request_options(
            self._defaults, body.pop(BODY_FIELD, None), request.headers, server_pays=self._server_pays, stream=stream
        )
        kwargs = sdk_arguments(body)
        if headers:
            kwargs["extra_headers"] = headers
        call = self._continued(kwargs, options)
        try:
            result = await _unless_disconnected(call, request)
        except BaseException as exc:
            status, payload, extra = failure(exc)
            self._observe("chat", status, started, stream, _trace_of_failure(exc), _error_kind(exc))
            return Response(payload, status_code=status, headers=extra, media_type="application/json")
        if result is None:  # the caller went away: nobody to answer
            self._observe("chat", 499, started, stream, None, None)
            return Response(status_code=499)
        if stream:
            return StreamingResponse(
                self._events(result, started), media_type="text/event-stream", headers=_SSE_HEADERS
            )
        trace = getattr(result, "continuation", None)
        self._observe("chat", 200, started, False, trace, None)
        return JSONResponse(completion_payload(result), headers=trace_headers(trace))

    async def _continued(self, kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
        """``acreate(client, **kwargs, **options)``, its rounds sent by :class:`JSONBodyTransport`."""
        settings = make_settings(**options)
        transport = transport_for(self._client, settings, JSONBodyTransport)
        return await run_async(self._client, settings, kwargs, transport=transport)

    async def _events(self, stream: Any, started: float) -> AsyncIterator[bytes]:
        """The SSE body of a continued stream. Cancelled when the caller disconnects (Starlette listens for it):
        the ``finally`` then closes the upstream response at once."""
        status, kind = 200, None
        held = None  # a chunk that may be the stream's last, kept until the next one or the end shows which
        try:
            # Chunks that were ready at once (one upstream read) go out in one write: see _ready.
            async for batch in ready_batches(stream):
                if held is not None:
                    batch.insert(0, held)
                    held = None
                if _may_be_last(batch[-1]):
                    held = batch.pop()
                if batch:
                    yield b"".join([_event(c) for c in batch])
            if held is not None:
                yield _event(held, continuation=trace_to_dict(stream.continuation))
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception as exc:
            status, kind = 502, _error_kind(exc)
            try:
                event = stream_error_event(exc)
            except Exception:
                raise exc from None
            yield (b"" if held is None else _event(held)) + event  # the text held back, then the error
        finally:
            await stream.close()
            self._observe("chat", status, started, True, getattr(stream, "continuation", None), kind)


def _may_be_last(chunk: Any) -> bool:
    """Whether a chunk of the library's stream can be its last: the library ends every stream with a chunk that has
    a finish reason (or, after it, the usage chunk, which has no choices), and an interim ``length`` never reaches
    the caller. Only such a chunk waits for the next one; text goes out as it comes."""
    return not chunk.choices or any(choice.finish_reason is not None for choice in chunk.choices)


def _event(chunk: Any, continuation: dict[str, Any] | None = None) -> bytes:
    """One SSE ``data:`` event; the stream's last carries the call's trace as one more field, ``continuation``,
    which every OpenAI client keeps or ignores as it does a provider's own fields."""
    data = _chunk_json(chunk)
    if continuation is not None:  # once per stream: read back, so that the field replaces any of that name
        fields = json.loads(data)
        fields["continuation"] = continuation
        data = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    return b"data: " + data + b"\n\n"


def _chunk_json(chunk: Any) -> bytes:
    """A chunk as the JSON bytes ``model_dump_json(exclude_unset=True)`` gives, from the model's serializer directly
    (the public ``__pydantic_serializer__``: bytes at once, without a str made and encoded again)."""
    data: bytes = type(chunk).__pydantic_serializer__.to_json(chunk, exclude_unset=True)
    return data


async def _unless_disconnected(call: Awaitable[Any], request: Request) -> Any:
    """``await call``, unless the caller disconnects first: then the call is cancelled (closing its upstream
    request) and ``None`` returned. The body has been read, so the next ASGI message can only be the disconnect."""
    task = asyncio.ensure_future(call)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _trace_of_failure(exc: BaseException) -> ContinuationTrace | None:
    trace = getattr(getattr(exc, "partial", None), "continuation", None)
    return trace if isinstance(trace, ContinuationTrace) else None


def _error_kind(exc: BaseException) -> str | None:
    """The upstream error that ended a request, as a metric label; ``None`` for the proxy's own refusals."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, openai.APIStatusError):
        return str(cause.status_code)
    if timed_out(cause):
        return "timeout"
    if isinstance(cause, openai.APIConnectionError):
        return "connection"
    if isinstance(cause, openai.OpenAIError):
        return "malformed"
    return None
