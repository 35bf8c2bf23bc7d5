"""Continuation at the SDK's request layer: ``with_raw_response``, ``with_streaming_response`` and ``client.post``.

Every chat-completion call of the SDK ends in ``client.request(cast_to, options, ...)`` with ``options.url ==
"/chat/completions"``, whatever way in the caller took: ``create``, ``parse``, their ``with_raw_response`` and
``with_streaming_response`` forms, or ``client.post("/chat/completions", ...)`` as litellm sends it. Frameworks hold
on to any of these (often as bound methods captured long before), so this is the one place that sees them all.

:func:`continue_request` (and :func:`acontinue_request`) turn such a request back into ``create()`` arguments, run
the continuation, and return what the SDK would have returned for it:

- a plain call: the joined ``ChatCompletion`` (``parse()``'s post-parser applied: a ``ParsedChatCompletion``), or
  the continued stream;
- the raw-response header ``"true"`` (``with_raw_response``, litellm): a ``LegacyAPIResponse``;
- ``"stream"`` (``with_streaming_response``): an ``APIResponse`` / ``AsyncAPIResponse``.

Those are the SDK's own classes (subclassed): ``.parse()`` gives the joined completion, the parsed result or the
continued stream; ``headers``, ``request_id`` and ``http_response`` are those of the latest round (for a stream,
the round being read). Reading the body itself (``.text``, ``.json()``, ``iter_bytes()``) reads that round's HTTP
body, not the joined answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

from openai import APIResponse, AsyncAPIResponse, NotGiven

# What with_raw_response returns; the SDK exports it from no public module. If it moves, this import breaks loudly.
from openai._legacy_response import LegacyAPIResponse

from . import client as _client
from ._options import Settings
from .request import create_parameters

__all__ = [
    "AsyncContinuedAPIResponse",
    "ContinuedAPIResponse",
    "ContinuedLegacyAPIResponse",
    "acontinue_request",
    "continue_request",
    "is_chat_request",
]

# The SDK's marker headers (openai._constants): the caller wants the HTTP response ("true": LegacyAPIResponse,
# "stream": APIResponse); a response type forced by the caller; the helper method that made the call.
_RAW = "x-stainless-raw-response"
_OVERRIDE_CAST_TO = "____stainless_override_cast_to"
_HELPER = "x-stainless-helper-method"
#: helpers that must reach the network as one plain request: chat.completions.stream() wraps the raw stream and
#: reads its HTTP response, which a continued stream spanning several requests does not have
_PASSTHROUGH_HELPERS = frozenset({"chat.completions.stream", "beta.chat.completions.stream"})
#: create() arguments that are not body fields: a body key of that name is sent in extra_body instead
_NOT_BODY = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


def _headers(options: Any) -> Mapping[str, Any]:
    headers = options.headers
    return headers if isinstance(headers, Mapping) else {}


def _header(headers: Mapping[str, Any], name: str) -> Any:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def is_chat_request(options: Any) -> bool:
    """Whether the SDK request ``options`` is a chat completion that autocontinue continues."""
    if options.url != "/chat/completions" or options.method.lower() != "post":
        return False
    # getattr: older SDK releases have no ``content`` option
    if not isinstance(options.json_data, Mapping) or options.files is not None:
        return False
    if getattr(options, "content", None) is not None:
        return False
    headers = _headers(options)
    if not headers:
        return True
    if _header(headers, _OVERRIDE_CAST_TO) is not None:  # a response type we do not know how to build
        return False
    return _header(headers, _HELPER) not in _PASSTHROUGH_HELPERS


def _call(options: Any) -> tuple[dict[str, Any], Any, Any]:
    """The ``create()`` keyword arguments of a chat request, its raw-response mode and its post-parser."""
    parameters = create_parameters()
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in options.json_data.items():
        if key in parameters and key not in _NOT_BODY:
            kwargs[key] = value
        else:  # a field this SDK's create() does not name (litellm sends provider fields in the body)
            extra[key] = value
    if options.extra_json:
        extra.update(options.extra_json)
    if extra:
        kwargs["extra_body"] = extra
    mode = None
    headers = {}
    for key, value in _headers(options).items():
        if key.lower() == _RAW:
            mode = value
        else:
            headers[key] = value
    if headers:
        kwargs["extra_headers"] = headers
    if options.params:
        kwargs["extra_query"] = dict(options.params)
    if not isinstance(options.timeout, NotGiven):
        kwargs["timeout"] = options.timeout
    post_parser = options.post_parser
    return kwargs, mode, None if isinstance(post_parser, NotGiven) else post_parser


def _finish(result: Any, post_parser: Any) -> Any:
    """``result`` through the request's post-parser (``parse()``'s), the trace kept reachable by ``trace_of``."""
    if post_parser is None:
        return result
    parsed = post_parser(result)
    if parsed is not result:
        object.__setattr__(parsed, "__autocontinue_trace__", getattr(result, "continuation", None))
    return parsed


def continue_request(client: Any, settings: Settings, cast_to: Any, options: Any, stream: bool, stream_cls: Any) -> Any:
    """Continue the chat request ``options`` made on the sync ``client``; returns what ``client.request`` would."""
    kwargs, mode, post_parser = _call(options)
    if not mode:
        return _finish(_client.run_sync(client, settings, kwargs), post_parser)
    rounds = _client.raw_rounds(client, settings)
    result: Any = _client.run_sync(client, settings, kwargs, rounds)
    if stream:
        result.prime()  # the first round's response must be there to hand back, as the SDK's is
    kind = ContinuedLegacyAPIResponse if mode == "true" else ContinuedAPIResponse
    return _respond(kind, rounds, result, post_parser, client, cast_to, options, stream, stream_cls)


async def acontinue_request(
    client: Any, settings: Settings, cast_to: Any, options: Any, stream: bool, stream_cls: Any
) -> Any:
    """The async twin of :func:`continue_request`, for ``AsyncOpenAI`` clients."""
    kwargs, mode, post_parser = _call(options)
    if not mode:
        return _finish(await _client.run_async(client, settings, kwargs), post_parser)
    rounds = _client.raw_rounds(client, settings)
    result: Any = await _client.run_async(client, settings, kwargs, rounds)
    if stream:
        await result.prime()
    kind = ContinuedLegacyAPIResponse if mode == "true" else AsyncContinuedAPIResponse
    return _respond(kind, rounds, result, post_parser, client, cast_to, options, stream, stream_cls)


def _respond(
    kind: type[Any],
    rounds: _client.RawRounds,
    result: Any,
    post_parser: Any,
    client: Any,
    cast_to: Any,
    options: Any,
    stream: bool,
    stream_cls: Any,
) -> Any:
    response = kind(
        raw=rounds.response, cast_to=cast_to, client=client, stream=stream, stream_cls=stream_cls, options=options
    )
    response.continued = _finish(result, post_parser)
    response.continued_stream = stream

    def latest(http_response: Any) -> None:
        response.http_response = http_response

    rounds.on_response = latest  # a stream's later rounds: headers and request_id follow the round being read
    return response


class _ParsesBody(Protocol):
    def parse(self, *, to: Any) -> Any: ...


class _ContinuedSync:
    """What both sync response classes add to the SDK's: ``parse()`` gives the continued result (the joined
    completion, the parsed result or the continued stream), and ``close()`` closes it with the HTTP response."""

    continued: Any
    continued_stream: bool
    http_response: Any  # the SDK's (declared by its classes; named here for close())

    def parse(self, *, to: Any = None) -> Any:
        """The continued result (with ``to``: the latest round's body parsed into that type, as the SDK does)."""
        if to is None:
            return self.continued
        return cast(_ParsesBody, super()).parse(to=to)  # the SDK class this one is mixed into

    def close(self) -> None:
        """Close the HTTP response, and the continued stream if it is one."""
        if self.continued_stream:
            self.continued.close()
        self.http_response.close()


class ContinuedLegacyAPIResponse(_ContinuedSync, LegacyAPIResponse[Any]):
    """The SDK's ``LegacyAPIResponse`` (what ``with_raw_response`` returns) for a continued call: ``parse()`` gives
    the joined completion, the parsed result or the continued stream; the HTTP parts are the latest round's."""


class ContinuedAPIResponse(_ContinuedSync, APIResponse[Any]):
    """The SDK's ``APIResponse`` (what ``with_streaming_response`` yields) for a continued call."""


class AsyncContinuedAPIResponse(AsyncAPIResponse[Any]):
    """The SDK's ``AsyncAPIResponse`` (what async ``with_streaming_response`` yields) for a continued call."""

    continued: Any
    continued_stream: bool

    async def parse(self, *, to: Any = None) -> Any:
        """The continued result (with ``to``: the latest round's body parsed into that type, as the SDK does)."""
        return self.continued if to is None else await super().parse(to=to)

    async def close(self) -> None:
        """Close the HTTP response, and the continued stream if it is one."""
        if self.continued_stream:
            await self.continued.close()
        await super().close()
