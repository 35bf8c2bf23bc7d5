"""The proxy's upstream client: the OpenAI SDK's ``AsyncOpenAI``, with a faster way from an upstream's bytes to reply
objects.

Profiled (``benchmarks/proxy.py``), most of the proxy's time per streamed chunk went into the SDK turning the
upstream's bytes into a ``ChatCompletionChunk``, before the library or the server did anything with it: its SSE
decoder walks each line in Python, and its ``construct_type`` builds each object by a recursive walk in Python over
the model's type hints (so that a reply of any shape is accepted), about 25 times pydantic's own validator (Rust) on
the same dict. This client changes both, and nothing else:

- a chat completion or chunk is built by ``model_validate(data, strict=True)`` first. Strict, so no value is
  converted (a string stays a string, a float is not made an int): for a well-formed reply the object is the one
  ``construct_type`` makes, field for field and byte for byte once serialized. A reply of any other shape (a finish
  reason no type names, a number sent as text) fails that validation and is built by the SDK's own path as before,
  so the library sees what it sees without the proxy, malformed chunks included;
- SSE events of the common shape (one ``data:`` line) are cut out of the bytes directly (:class:`_SSEDecoder`),
  and their JSON is read by pydantic's parser (``pydantic_core.from_json``, Rust, about three times the standard
  library's ``json.loads`` on a chunk). For any text that parser refuses (a lone surrogate escape, invalid JSON),
  ``json.loads`` reads it as the SDK does, so the values, and the errors, are the SDK's.

Both rely on the SDK's private hooks ``_process_response_data`` (every response and stream chunk passes through it)
and ``_make_sse_decoder`` (each stream's decoder), and on ``SSEDecoder`` (its ``decode``, ``_reset`` and
``_last_event_id``) and ``ServerSentEvent`` from ``openai._streaming``, as in openai 3.x. :func:`upstream_client`
checks all of them before it uses this client: an SDK where any is missing or takes other arguments gets the SDK's
own ``AsyncOpenAI``, slower but right (and ``tests/serve/test_upstream.py`` fails, so that the change is seen).

Requests go the other way through :class:`JSONBodyTransport`, on the SDK's public ``create()`` arguments only, and
both ways through :func:`upstream_http`, the SDK's aiohttp transport.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pydantic
import pydantic_core
from openai._streaming import ServerSentEvent, SSEDecoder
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ..client import Transport
from ..core import DoRequest
from ..request import NOT_GIVEN_MARKERS

__all__ = [
    "UPSTREAM_KEEPALIVE_EXPIRY",
    "JSONBodyTransport",
    "UpstreamClient",
    "sdk_hooks_present",
    "timed_out",
    "upstream_client",
    "upstream_http",
]

#: seconds an idle upstream connection is kept for the next request: under the 5 s after which the servers most
#: often behind the proxy close one (uvicorn's default: vLLM, SGLang, LiteLLM's proxy; Node's http server), so
#: that the proxy drops it first. Reusing one the server is closing at that moment fails the request with a reset
#: (a retry, at best); httpx's and aiohttp's own 5 s pool expiry is that race.
UPSTREAM_KEEPALIVE_EXPIRY = 4.0
#: the reply types built by validation; anything else (models, embeddings) takes the SDK's path
_VALIDATED: frozenset[type[Any]] = frozenset({ChatCompletion, ChatCompletionChunk})
#: bytes of one unfinished event past which the rest of the stream goes to the SDK's decoder, which does not copy
#: what it has kept on each read
_LONG_EVENT = 1 << 16


class UpstreamClient(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` that builds chat replies and chunks by pydantic's strict validation when they pass it
    (the same objects, faster), by the SDK's lenient construction otherwise, and decodes SSE with :class:`_SSEDecoder`.
    """

    def _process_response_data(self, *, data: object, cast_to: Any, response: Any) -> Any:
        if cast_to in _VALIDATED and type(data) is dict:
            try:
                return cast_to.model_validate(data, strict=True)
            except pydantic.ValidationError:
                pass  # not the documented shape: the SDK's lenient path below keeps whatever was sent
        return super()._process_response_data(data=data, cast_to=cast_to, response=response)

    def _make_sse_decoder(self) -> SSEDecoder:
        return _SSEDecoder()


class _DataEvent(ServerSentEvent):
    """An event of one ``data:`` line, whose JSON is read by pydantic's parser (the same values as ``json.loads``)."""

    def json(self) -> Any:
        try:
            return pydantic_core.from_json(self.data)
        except ValueError:
            return json.loads(self.data)  # the standard library's reading, or its error, as the SDK's


async def _chained(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for part in rest:
        yield part


class _SSEDecoder(SSEDecoder):
    """The SDK's SSE decoder, with a short way for the common event: one ``data: ...`` line, LF line ends.

    Each read's complete events are cut out of the bytes at once (``\\n\\n``), and an event of one ``data: `` line
    becomes its ``ServerSentEvent`` directly, where the SDK's decoder walks every line of it in Python. Any other
    event (several lines, other fields, a comment) goes through the SDK's own ``decode()`` line by line, and a
    stream with a CR in it, or an event too long to keep copying, is handed whole to the SDK's decoder from there
    on: the events are the same either way.
    """

    async def aiter_bytes(self, iterator: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
        pending = b""
        try:
            async for part in iterator:
                if b"\r" in part or len(pending) > _LONG_EVENT:
                    async for whole in super().aiter_bytes(_chained(pending + part, iterator)):
                        yield whole
                    return
                *events, pending = (pending + part).split(b"\n\n")
                for event in events:
                    if event.startswith(b"data: ") and b"\n" not in event:
                        yield _DataEvent(data=event[6:].decode("utf-8"), id=self._last_event_id)
                        continue
                    for sse in self._lines([*event.split(b"\n"), b""]):  # b"": the blank line that ended it
                        yield sse
            # The rest ends no event; its whole lines are decoded as the SDK's decoder does (a blank line first
            # still gives an event when an id was set), and the last line unless empty (it had no line end).
            *lines, last = pending.split(b"\n")
            for sse in self._lines([*lines, last] if last else lines):
                yield sse
        finally:
            self._reset()

    def _lines(self, lines: list[bytes]) -> Iterator[ServerSentEvent]:
        for line in lines:
            sse = self.decode(line.decode("utf-8"))
            if sse is not None:
                yield sse


def sdk_hooks_present(client_class: type[Any] = openai.AsyncOpenAI, decoder_class: type[Any] = SSEDecoder) -> bool:
    """Whether the SDK has the private hooks :class:`UpstreamClient` overrides, with the arguments it passes."""
    process = getattr(client_class, "_process_response_data", None)
    make_decoder = getattr(client_class, "_make_sse_decoder", None)
    if not callable(process) or not callable(make_decoder):
        return False
    if not {"data", "cast_to", "response"} <= set(inspect.signature(process).parameters):
        return False
    if not all(callable(getattr(decoder_class, name, None)) for name in ("aiter_bytes", "decode", "_reset")):
        return False
    try:
        return hasattr(decoder_class(), "_last_event_id")
    except Exception:
        return False


def upstream_http(**kwargs: Any) -> httpx2.AsyncClient:
    """The HTTP client the upstream client sends through: the SDK's aiohttp transport (``openai.DefaultAioHttpClient``,
    "for improved concurrency performance") where aiohttp is installed, else httpx2's own client.

    Profiled under 500 concurrent streams, httpx2's connection pool took a fifth of the proxy's CPU: it looks at
    every idle connection on each request and each release (httpcore's ``has_expired``, through anyio's typed
    attributes). Through aiohttp the proxy's CPU per call fell from 14.7 to 6.1 ms (``benchmarks/proxy.py``).
    """
    try:
        return openai.DefaultAioHttpClient(**kwargs)
    except RuntimeError:  # the SDK without its aiohttp extra
        return httpx2.AsyncClient(**kwargs)


def timed_out(exc: BaseException) -> bool:
    """Whether an upstream error is a timeout: the SDK's ``APITimeoutError`` or httpx2's ``TimeoutException``, unless
    a connection error that is not a timeout caused it. The aiohttp transport reports every connection error of
    aiohttp's (refused, reset, closed by the server) as httpx2's ``ConnectTimeout``, with aiohttp's as its cause."""
    if not isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return False
    # Only where aiohttp is in use (imported) can its errors be there.
    aiohttp_connection_error = getattr(sys.modules.get("aiohttp"), "ClientConnectionError", None)
    cause: BaseException | None = exc
    while aiohttp_connection_error is not None and cause is not None:
        if isinstance(cause, aiohttp_connection_error):
            return isinstance(cause, TimeoutError)  # aiohttp's timeouts are TimeoutErrors too
        cause = cause.__cause__
    return True


def upstream_client(**kwargs: Any) -> openai.AsyncOpenAI:
    """The proxy's upstream client: :class:`UpstreamClient` where the installed SDK has the hooks it overrides, else
    the SDK's own ``AsyncOpenAI`` (the same replies, built more slowly)."""
    return UpstreamClient(**kwargs) if sdk_hooks_present() else openai.AsyncOpenAI(**kwargs)


#: ``create()`` arguments a round keeps as arguments: those it requires or reads itself (``model``, ``stream``,
#: which picks the reply's type) and those that are not body fields
_ARGUMENTS = frozenset({"model", "stream", "extra_headers", "extra_query", "extra_body", "timeout"})


class JSONBodyTransport(Transport):
    """Sends each round with its body fields in ``extra_body``, for calls whose body came as JSON (the proxy's).

    The SDK's ``create()`` walks its arguments against its request types before it sends them (``maybe_transform``:
    aliased names, dates, models and iterables made JSON). For a body that was JSON already that walk changes
    nothing, and it costs: about 0.4 ms of CPU on a one-message request and 35 ms on a coding agent's 88 KB
    request, with the event loop, and every other stream, held that long (``benchmarks/proxy.py``, the agent-sized
    row). ``extra_body`` is merged into the JSON as given, over the arguments (documented: "the extra values given
    here take precedence"), so the same body is sent without the walk. ``messages=[]`` is only there because
    ``create()`` requires the argument: the merge replaces it, in its place.
    """

    def send(self, action: DoRequest) -> Any:
        return super().send(_body_as_extra(action))

    async def asend(self, action: DoRequest) -> Any:
        return await super().asend(_body_as_extra(action))


def _body_as_extra(action: DoRequest) -> DoRequest:
    arguments: dict[str, Any] = {}
    body: dict[str, Any] = {}
    for key, value in action.kwargs.items():
        if key in _ARGUMENTS:
            arguments[key] = value
        elif not isinstance(value, NOT_GIVEN_MARKERS):  # create() leaves these out of the body
            body[key] = value
    if "messages" in body:  # without it, create() refuses the call as it would have
        arguments["messages"] = []
    arguments["extra_body"] = {**body, **(arguments.get("extra_body") or {})}
    return dataclasses.replace(action, kwargs=arguments)
