"""The function form, ``create()`` and ``acreate()``, and what every way in shares: transports and drivers.

``wrap()`` (:mod:`autocontinue.wrapping`), the decorator and the request layer (:mod:`autocontinue.raw`) all run a
call with :func:`run_sync` / :func:`run_async`, whose rounds go through a :class:`Transport` and are marked as
autocontinue's own (:func:`in_round`), so that no hook continues them a second time.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import openai
from openai.resources.chat.completions import AsyncCompletions, Completions
from openai.types.chat import ChatCompletion

# DEFAULT_MAX_ROUNDS is named here too: the proxy (autocontinue.serve) and the tests read it from this module.
from ._options import DEFAULT_MAX_ROUNDS, Settings, make_settings, split_options
from .core import Continuation, DoRequest
from .drivers import aio, sync
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .drivers.stream import AsyncContinuedStream, ContinuedStream

__all__ = [
    "DEFAULT_MAX_ROUNDS",
    "RawRounds",
    "Transport",
    "acreate",
    "create",
    "in_round",
    "make_settings",
    "parse_request",
    "raw_rounds",
    "run_async",
    "run_sync",
    "trace_of",
    "transport_for",
    "unwrap",
]

# The SDK's own methods, captured before anything (such as the decorator) can patch them: our rounds must reach the
# network, not loop back into a continuation.
_SYNC_CREATE = Completions.create
_ASYNC_CREATE = AsyncCompletions.create

_DEFAULT = object()

#: True while one of our own rounds is being sent: request-layer hooks (the decorator's, a wrapped client's) let
#: such requests through untouched, so a call is never continued twice
_IN_ROUND: ContextVar[bool] = ContextVar("autocontinue_in_round", default=False)
#: how the SDK marks a request whose caller wants the HTTP response itself ("true": with_raw_response)
_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"


def in_round() -> bool:
    """Whether the current context is sending one of autocontinue's own rounds."""
    return _IN_ROUND.get()


class Transport:
    """Sends one round: through a copy of the client without SDK retries (ours replace them), routed per round."""

    def __init__(self, client: Any, settings: Settings) -> None:
        # With our retries, rounds go through a copy without the SDK's; without them, through the client itself, as
        # the caller may change it. Only weakly: transports are cached in a WeakKeyDictionary keyed by the client.
        self.retries = settings.retry is not None
        self._copy = client.with_options(max_retries=0) if self.retries else None
        self._client = weakref.ref(client)
        self._routes: dict[str, Any] = {}
        #: the client's base URL object this transport was made for, and its text (rendered once, not per call)
        self.url = _base_url_of(client)
        self.base_url = str(self.url)

    def _base(self) -> Any:
        if self._copy is not None:
            return self._copy
        client = self._client()
        assert client is not None, "the client is alive while a call made with it runs"
        return client

    def target(self, action: DoRequest) -> Any:
        if action.base_url is None:
            return self._base().chat.completions
        routed = self._routes.get(action.base_url)
        if routed is None:
            routed = self._routes[action.base_url] = self._base().with_options(base_url=action.base_url)
        return routed.chat.completions

    def send(self, action: DoRequest) -> Any:
        token = _IN_ROUND.set(True)
        try:
            return _SYNC_CREATE(self.target(action), **action.kwargs)
        finally:
            _IN_ROUND.reset(token)

    async def asend(self, action: DoRequest) -> Any:
        token = _IN_ROUND.set(True)
        try:
            return await _ASYNC_CREATE(self.target(action), **action.kwargs)
        finally:
            _IN_ROUND.reset(token)


def _asking_raw(action: DoRequest) -> DoRequest:
    """``action`` asking the SDK for the raw response (a ``LegacyAPIResponse``) instead of the parsed one."""
    headers = action.kwargs.get("extra_headers")
    kwargs = {**action.kwargs, "extra_headers": {**(headers or {}), _RAW_RESPONSE_HEADER: "true"}}
    return dataclasses.replace(action, kwargs=kwargs)


class RawRounds:
    """Sends a call's rounds through its transport as raw-response requests, keeping the latest HTTP response.

    For callers that asked for the response itself (``with_raw_response``, ``client.post``): its headers,
    ``request_id`` and ``http_response`` are those of the latest round. ``on_response`` is told of each new one.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self.base_url = transport.base_url
        self.response: Any = None
        self.on_response: Callable[[Any], None] | None = None

    def _keep(self, raw: Any) -> Any:
        self.response = raw.http_response
        if self.on_response is not None:
            self.on_response(raw.http_response)
        return raw.parse()

    def send(self, action: DoRequest) -> Any:
        return self._keep(self._transport.send(_asking_raw(action)))

    async def asend(self, action: DoRequest) -> Any:
        return self._keep(await self._transport.asend(_asking_raw(action)))


_transports: weakref.WeakKeyDictionary[Any, dict[tuple[type[Transport], bool], Transport]] = weakref.WeakKeyDictionary()


def transport_for(client: Any, settings: Settings, kind: type[Transport] = Transport) -> Transport:
    """The transport for ``client``: one per client, kind (the proxy sends its rounds through a subclass) and retry
    setting, made anew when the client's base URL changes."""
    url = _base_url_of(client)
    per_client = _transports.setdefault(client, {})
    key = (kind, settings.retry is not None)
    transport = per_client.get(key)
    # The SDK's base_url is the same URL object until it is set: a different object means the client was changed
    # (one that is merely equal, were the SDK to make a new object per read, would only cost a new transport).
    if transport is None or transport.url is not url:
        transport = per_client[key] = kind(client, settings)
    return transport


def _base_url_of(client: Any) -> Any:
    """The client's base URL object, read from the attribute the SDK keeps it in where there is one.

    Kept for speed, as benchmarks/overhead.py shows: the SDK's ``base_url`` property runs an import statement and a
    function on every read (about 2 us, a tenth of what a wrapped call adds). If the SDK renames ``_base_url``, the
    property is read instead: nothing breaks, a call costs those 2 us more.
    """
    url = vars(client).get("_base_url")
    return url if url is not None else client.base_url


def _check_client(client: Any, *, asynchronous: bool) -> None:
    expected = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    if not isinstance(client, expected):
        other = "acreate" if isinstance(client, openai.AsyncOpenAI) else "create"
        raise ConfigurationError(
            f"expected an {expected.__name__} client, got {type(client).__name__}"
            + (f"; use autocontinue.{other}()" if isinstance(client, openai.OpenAI | openai.AsyncOpenAI) else "")
        )


def _begin(
    client: Any, settings: Settings, kwargs: dict[str, Any], transport: Transport | RawRounds | None
) -> tuple[Continuation, Transport | RawRounds]:
    """The checked call's core and the transport its rounds go through (the sync and async drivers' shared start)."""
    if transport is None:
        transport = transport_for(unwrap(client), settings)
    return Continuation(kwargs, settings, base_url=transport.base_url), transport


def run_sync(
    client: Any, settings: Settings, kwargs: dict[str, Any], transport: Transport | RawRounds | None = None
) -> ChatCompletion | ContinuedStream:
    """One continued call on a sync client (streaming when ``stream=True``), through ``transport`` if given."""
    core, transport = _begin(client, settings, kwargs, transport)
    if kwargs.get("stream") is True:
        from .drivers.stream import ContinuedStream

        return ContinuedStream.open(core, transport.send)
    return sync.run(core, transport.send)


async def run_async(
    client: Any, settings: Settings, kwargs: dict[str, Any], transport: Transport | RawRounds | None = None
) -> ChatCompletion | AsyncContinuedStream:
    """One continued call on an async client (streaming when ``stream=True``), through ``transport`` if given."""
    core, transport = _begin(client, settings, kwargs, transport)
    if kwargs.get("stream") is True:
        from .drivers.stream import AsyncContinuedStream

        return await AsyncContinuedStream.open(core, transport.asend)
    return await aio.run(core, transport.asend)


def raw_rounds(client: Any, settings: Settings) -> RawRounds:
    """Rounds for a call on ``client`` (wrapped or not) that keep each round's HTTP response."""
    return RawRounds(transport_for(unwrap(client), settings))


def create(client: openai.OpenAI, **kwargs: Any) -> Any:
    """``client.chat.completions.create(**kwargs)``, continued until the reply is complete.

    Takes the SDK's keyword arguments plus autocontinue's options (``max_rounds``, ``max_total_tokens``,
    ``max_cost_usd``, ``max_seconds``, ``stop_when``, ``dialect``, ``retry``, ``prices``, ``heal``, ``log_text``,
    ``reasoning_retry``, ``stop_on_repeat``, ``max_round_tokens``). Returns a ``ChatCompletion`` (with
    ``.continuation``), or a stream when ``stream=True``.
    """
    _check_client(client, asynchronous=False)
    options, request = split_options(kwargs)
    return run_sync(client, make_settings(**options), request)


async def acreate(client: openai.AsyncOpenAI, **kwargs: Any) -> Any:
    """The async twin of :func:`create`, for ``AsyncOpenAI`` and ``AsyncAzureOpenAI`` clients."""
    _check_client(client, asynchronous=True)
    options, request = split_options(kwargs)
    return await run_async(client, make_settings(**options), request)


def parse_request(kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The create() arguments of a parse() call, and the function that turns the joined completion into the SDK's
    ``ParsedChatCompletion``. Uses the SDK's own parsing helpers, so results match ``parse()`` exactly."""
    from openai.lib._parsing._completions import (
        parse_chat_completion,
        type_to_response_format_param,
        validate_input_tools,
    )

    if kwargs.get("stream"):
        raise ConfigurationError("parse() does not stream; use create(stream=True)")
    response_format = kwargs.pop("response_format", openai.omit)
    tools = kwargs.get("tools", openai.omit)
    validate_input_tools(tools)
    request = dict(kwargs)
    request["response_format"] = type_to_response_format_param(response_format)

    def finish(completion: Any) -> Any:
        parsed = parse_chat_completion(response_format=response_format, input_tools=tools, chat_completion=completion)
        # Keep the trace reachable without making it a model field (it must not appear in model_dump()).
        object.__setattr__(parsed, "__autocontinue_trace__", getattr(completion, "continuation", None))
        return parsed

    return request, finish


def unwrap(client: Any) -> Any:
    """The caller's own client behind a wrapped one."""
    return vars(client).get("__wrapped__", client) if hasattr(client, "__dict__") else client


def trace_of(result: Any) -> Any:
    """The :class:`~autocontinue.trace.ContinuationTrace` of any continued result: a completion, a stream, a
    ``parse()`` result, or the ``partial`` of an error; ``None`` for anything else."""
    trace = getattr(result, "__autocontinue_trace__", None)
    if trace is not None:
        return trace
    return getattr(result, "continuation", None)
