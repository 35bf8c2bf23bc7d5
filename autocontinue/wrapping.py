"""``wrap()``: the caller's client, with chat completions continued however they are requested.

A wrapped client is a shallow copy of the caller's client, of a subclass of its class (so ``isinstance`` checks
hold): ``chat.completions`` (and ``beta.chat.completions``) continue ``create`` and ``parse``; their
``with_raw_response`` / ``with_streaming_response`` forms and ``client.post("/chat/completions", ...)`` reach the
client's request layer, which continues them too (:mod:`autocontinue.raw`). Every other attribute passes through
to the caller's client untouched.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import openai

from . import raw
from ._options import Settings, check_options
from .client import (
    in_round,
    parse_request,
    run_async,
    run_sync,
    unwrap,
)
from .errors import ConfigurationError

__all__ = ["wrap"]

ClientT = TypeVar("ClientT", openai.OpenAI, openai.AsyncOpenAI)


class _Proxy:
    """Passes every attribute through to the wrapped object, except those the subclass defines."""

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._target)) | set(super().__dir__()))


class _ContinuingCompletions(_Proxy):
    """``chat.completions`` of a wrapped sync client: ``create``, ``parse`` and their raw-response forms continue."""

    def __init__(self, target: Any, client: Any, settings: Settings) -> None:
        super().__init__(target)
        object.__setattr__(self, "_client", client)
        object.__setattr__(self, "_settings", settings)
        object.__setattr__(self, "_raw_resource", None)

    def _resource(self) -> Any:
        # The SDK's own resource class, bound to a wrapped client: its raw-response wrappers then send through that
        # client's request layer, which continues /chat/completions (see _wrapper_class).
        resource = self._raw_resource
        if resource is None:
            resource = type(self._target)(_wrapped(self._client, self._settings))
            object.__setattr__(self, "_raw_resource", resource)
        return resource

    @property
    def with_raw_response(self) -> Any:
        """The SDK's ``with_raw_response``, continued: ``.parse()`` of its result gives the joined reply; headers,
        ``request_id`` and ``http_response`` are the last round's."""
        return self._resource().with_raw_response

    @property
    def with_streaming_response(self) -> Any:
        """The SDK's ``with_streaming_response``, continued like :attr:`with_raw_response`."""
        return self._resource().with_streaming_response

    def create(self, **kwargs: Any) -> Any:
        """``chat.completions.create``, continued until the reply is complete (same arguments as the SDK)."""
        return run_sync(self._client, self._settings, kwargs)

    def parse(self, **kwargs: Any) -> Any:
        """``chat.completions.parse``, continued: the joined reply is parsed into ``response_format`` (a pydantic
        model) exactly as the SDK does, so a reply cut by the limit no longer raises ``LengthFinishReasonError``
        unless a budget ended it. The result's ``continuation`` is the trace."""
        request, finish = parse_request(kwargs)
        return finish(run_sync(self._client, self._settings, request))


class _AsyncContinuingCompletions(_ContinuingCompletions):
    """The async twin: ``create`` and ``parse`` are ``async def``, as frameworks check with
    ``inspect.iscoroutinefunction`` to tell an async client from a sync one."""

    async def create(self, **kwargs: Any) -> Any:
        """``chat.completions.create``, continued until the reply is complete (same arguments as the SDK)."""
        return await run_async(self._client, self._settings, kwargs)

    async def parse(self, **kwargs: Any) -> Any:
        """``chat.completions.parse``, continued (see the sync client's)."""
        request, finish = parse_request(kwargs)
        return finish(await run_async(self._client, self._settings, request))


class _ContinuingChat(_Proxy):
    def __init__(self, target: Any, completions: _ContinuingCompletions) -> None:
        super().__init__(target)
        object.__setattr__(self, "completions", completions)


class _ContinuingBeta(_Proxy):
    """``client.beta`` with its ``chat`` continued (the SDK keeps ``beta.chat.completions`` as a second way in)."""

    def __init__(self, target: Any, chat: _ContinuingChat) -> None:
        super().__init__(target)
        object.__setattr__(self, "chat", chat)


def _continuing_chat(chat: Any, client: Any, settings: Settings, asynchronous: bool) -> _ContinuingChat:
    kind = _AsyncContinuingCompletions if asynchronous else _ContinuingCompletions
    return _ContinuingChat(chat, kind(chat.completions, client, settings))


def wrap(client: ClientT, **options: Any) -> ClientT:
    """Return ``client`` with ``chat.completions.create`` continuing cut-off replies.

    Works for ``OpenAI``, ``AsyncOpenAI``, ``AzureOpenAI`` and ``AsyncAzureOpenAI``; every other attribute passes
    through. Options as for :func:`create`, checked now rather than at the first call.
    """
    if not isinstance(client, openai.OpenAI | openai.AsyncOpenAI):
        raise ConfigurationError(f"wrap() takes an OpenAI or AsyncOpenAI client, got {type(client).__name__}")
    return _wrapped(client, check_options(options, who="wrap() got "))


def _wrapped(client: ClientT, settings: Settings) -> ClientT:
    """A client of a subclass of ``client``'s class whose ``chat.completions`` continues.

    It shares the original's state (a shallow copy: same connection pool, same options), its resources are the
    original's very objects, and it passes ``isinstance`` checks; only ``chat`` differs.
    """
    original = unwrap(client)
    # A shallow copy made as an instance of the wrapper class: the SDK's clients keep their state in the instance
    # dict (as copy.copy assumes too), so the copy shares the connection pool and options.
    cls: Any = _wrapper_class(type(original))
    wrapped: Any = object.__new__(cls)
    vars(wrapped).update(vars(original))
    asynchronous = isinstance(original, openai.AsyncOpenAI)
    state = vars(wrapped)
    state["__wrapped__"] = original
    state["_autocontinue_chat"] = _continuing_chat(original.chat, original, settings, asynchronous)
    state["_autocontinue_settings"] = settings
    result: ClientT = wrapped
    return result


_wrapper_classes: dict[type, type] = {}


def _delegate(name: str) -> property:
    def get(self: Any) -> Any:
        return getattr(vars(self)["__wrapped__"], name)

    return property(get)


def _wrapper_class(cls: type) -> type:
    """``Continuing<Client>``: ``cls`` with ``chat`` continued, ``with_options``/``copy`` still wrapped, and every
    other resource delegated to the original client (so ``wrapped.models is client.models``)."""
    known = _wrapper_classes.get(cls)
    if known is not None:
        return known
    namespace: dict[str, Any] = {}
    for name in dir(cls):
        if name not in ("chat", "beta") and isinstance(
            inspect.getattr_static(cls, name, None), functools.cached_property
        ):
            namespace[name] = _delegate(name)
    if hasattr(cls, "beta"):
        # A property, not a cached_property: the wrapped client is a copy of the original, whose own cached
        # ``beta`` may be in the copied instance dict, and only a data descriptor takes precedence over it.
        namespace["beta"] = property(_continuing_beta, doc="beta, with beta.chat.completions continued")

    def with_options(self: Any, **kwargs: Any) -> Any:
        return _wrapped(vars(self)["__wrapped__"].with_options(**kwargs), vars(self)["_autocontinue_settings"])

    namespace["request"] = _async_request(cls) if issubclass(cls, openai.AsyncOpenAI) else _sync_request(cls)
    namespace.update(
        chat=property(lambda self: vars(self)["_autocontinue_chat"], doc="chat, with completions continued"),
        with_options=with_options,
        copy=with_options,
        __repr__=lambda self: f"autocontinue.wrap({vars(self)['__wrapped__']!r})",
        __module__=__name__,
    )
    subclass = type(f"Continuing{cls.__name__}", (cls,), namespace)
    _wrapper_classes[cls] = subclass
    return subclass


# The request layer of a wrapped client: what reaches /chat/completions on it without going through its
# chat.completions (client.post, as litellm sends it; the raw-response forms, routed here by _ContinuingCompletions)
# is continued too. Anything else goes to the client class's own request method, looked up at call time.


def _sync_request(cls: type) -> Callable[..., Any]:
    def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        if raw.is_chat_request(options) and not in_round():
            state = vars(self)
            stream, stream_cls = kwargs.get("stream", False), kwargs.get("stream_cls")
            settings = state["_autocontinue_settings"]
            return raw.continue_request(state["__wrapped__"], settings, cast_to, options, stream, stream_cls)
        return cls.request(self, cast_to, options, *args, **kwargs)  # type: ignore[attr-defined]

    return request


def _async_request(cls: type) -> Callable[..., Any]:
    async def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        if raw.is_chat_request(options) and not in_round():
            state = vars(self)
            stream, stream_cls = kwargs.get("stream", False), kwargs.get("stream_cls")
            settings = state["_autocontinue_settings"]
            return await raw.acontinue_request(state["__wrapped__"], settings, cast_to, options, stream, stream_cls)
        return await cls.request(self, cast_to, options, *args, **kwargs)  # type: ignore[attr-defined]

    return request


def _continuing_beta(self: Any) -> _ContinuingBeta | Any:
    """The original client's ``beta``, with ``beta.chat.completions`` continuing like ``chat.completions``."""
    state = vars(self)
    made = state.get("_autocontinue_beta")
    if made is not None:
        return made
    original, settings = state["__wrapped__"], state["_autocontinue_settings"]
    beta = original.beta
    chat = getattr(beta, "chat", None)
    if chat is None:
        return beta
    asynchronous = isinstance(original, openai.AsyncOpenAI)
    made = state["_autocontinue_beta"] = _ContinuingBeta(beta, _continuing_chat(chat, original, settings, asynchronous))
    return made
