"""Continuation for every ``chat.completions.create`` call made inside a function or a block.

    @autocontinue.autocontinue(max_rounds=6, max_cost_usd=0.2)
    def summarize(doc): ...              # any OpenAI / AsyncOpenAI / Azure client, however deep in the call

    with autocontinue.enabled(max_rounds=4):
        client.chat.completions.create(...)

How: the request layer of the SDK's clients (``OpenAI.request`` / ``AsyncOpenAI.request``, which every call ends in
and which is looked up at call time) and, as a shorter path for the common call, ``Completions.create`` /
``AsyncCompletions.create`` are patched once by functions that read one :class:`~contextvars.ContextVar`. Outside
a scope the variable is ``None`` and the SDK's own methods run untouched; inside a scope a request to
``/chat/completions`` goes through the continuation engine with the scope's options, whichever way it was made:
``create``, ``parse``, their ``with_raw_response`` / ``with_streaming_response`` forms, ``client.post`` (litellm),
and bound methods a framework captured before the first scope existed. A scope is a context, not a thread or a
time window: it reaches what the decorated function runs, asyncio tasks it starts (they copy the context), and
threads it starts with ``contextvars.copy_context().run``; concurrent code outside is not affected.

The engine's own rounds are marked while they are sent (:func:`autocontinue.client.in_round`) and pass through
untouched, so a call is never continued twice: not by nested scopes (the innermost options win), and not when a
``wrap()``-ed client is used inside a scope. Not continued inside a scope: the SDK's ``chat.completions.stream()``
helper (it needs the raw stream's HTTP response, which a continued stream spanning several requests does not have).
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Mapping
from contextvars import ContextVar, Token
from typing import Any, TypeVar, cast, overload

import openai
from openai.resources.chat.completions import AsyncCompletions, Completions

from . import client as _client
from ._options import Settings, check_options
from .errors import ConfigurationError
from .raw import acontinue_request, continue_request, is_chat_request

__all__ = ["Scope", "active_settings", "autocontinue", "enabled", "install"]

F = TypeVar("F", bound=Callable[..., Any])

#: the options of the innermost active scope in this context, or None outside any scope
_ACTIVE: ContextVar[Settings | None] = ContextVar("autocontinue_active", default=None)
#: tokens of the ``with`` blocks entered in this context, innermost last: a Scope object can be shared (a module
#: constant used by many tasks or threads), so its tokens cannot live on the object itself
_WITH_TOKENS: ContextVar[tuple[Token[Settings | None], ...]] = ContextVar("autocontinue_with_tokens", default=())

# Headers by which the SDK marks a call whose caller wants the HTTP response (with_raw_response,
# with_streaming_response) and the helper method that made it.
_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"
_HELPER_HEADER = "X-Stainless-Helper-Method"

_install_lock = threading.Lock()
_installed = False


def active_settings() -> Settings | None:
    """The options of the innermost scope active in the current context, or ``None``."""
    return _ACTIVE.get()


def install() -> None:
    """Hook the SDK's request layer once (idempotent, thread-safe).

    Called when the first scope is made, not at import: importing autocontinue changes nothing in the SDK.
    """
    global _installed
    if _installed:  # the common case after the first scope: no lock taken
        return
    with _install_lock:
        if _installed:
            return
        # Patch over whatever is on the class now (the SDK's method, or another library's instrumentation of it),
        # so that outside a scope every request behaves exactly as before.
        # create() first, where the call's arguments are at hand (continuing it there spares the SDK's second
        # transformation of the request, about a fifth of a call's CPU); the request layer for every other way in.
        Completions.create = _patched_create(Completions.create)  # type: ignore[method-assign]
        AsyncCompletions.create = _patched_acreate(AsyncCompletions.create)  # type: ignore[method-assign]
        openai.OpenAI.request = _patched_request(openai.OpenAI.request)  # type: ignore[method-assign]
        openai.AsyncOpenAI.request = _patched_arequest(openai.AsyncOpenAI.request)  # type: ignore[method-assign,assignment]
        _installed = True


def _fast(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Whether a create() call in a scope is continued right there: not when it wants the HTTP response or is the
    stream() helper's (the request layer decides those), nor with positional arguments (the SDK's own TypeError)."""
    headers = kwargs.get("extra_headers")
    return not args and not (headers and (_RAW_RESPONSE_HEADER in headers or _HELPER_HEADER in headers))


def _patched_create(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)  # keeps the SDK's signature visible to inspect.signature (request.py reads it)
    def create(self: Completions, *args: Any, **kwargs: Any) -> Any:
        settings = _ACTIVE.get()
        if settings is None or not _fast(args, kwargs):
            return original(self, *args, **kwargs)
        return _client.run_sync(self._client, settings, kwargs)

    return create


def _patched_acreate(original: Callable[..., Any]) -> Callable[..., Any]:
    # A plain function returning an awaitable, like the SDK's own (its required_args wrapper is not async, and
    # functools.wraps keeps the __wrapped__ through which frameworks find the async def): outside a scope the caller
    # awaits the SDK's coroutine itself, with no frame of ours in between.
    @functools.wraps(original)
    def create(self: AsyncCompletions, *args: Any, **kwargs: Any) -> Any:
        settings = _ACTIVE.get()
        if settings is None or not _fast(args, kwargs):
            return original(self, *args, **kwargs)
        return _client.run_async(self._client, settings, kwargs)

    return create


def _patched_request(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        settings = _ACTIVE.get()
        if settings is None or not is_chat_request(options) or _client.in_round():
            return original(self, cast_to, options, *args, **kwargs)
        stream, stream_cls = kwargs.get("stream", False), kwargs.get("stream_cls")
        return continue_request(self, settings, cast_to, options, stream, stream_cls)

    return request


def _patched_arequest(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        settings = _ACTIVE.get()
        if settings is None or not is_chat_request(options) or _client.in_round():
            return await original(self, cast_to, options, *args, **kwargs)
        stream, stream_cls = kwargs.get("stream", False), kwargs.get("stream_cls")
        return await acontinue_request(self, settings, cast_to, options, stream, stream_cls)

    return request


# --------------------------------------------------------------------------------------------------------------
# Scopes


class Scope:
    """The options of an autocontinue scope; a decorator, and a context manager (``with`` and ``async with``).

    Made by :func:`autocontinue` and :func:`enabled`, with the options checked once, when it is made. One Scope can
    be applied to many functions and entered by many tasks and threads at once.
    """

    def __init__(self, settings: Settings) -> None:
        install()
        self.settings = settings

    # -- as a context manager: the scope is active in the current context until the block ends

    def __enter__(self) -> Scope:
        token = _ACTIVE.set(self.settings)
        _WITH_TOKENS.set((*_WITH_TOKENS.get(), token))
        return self

    def __exit__(self, *exc_info: object) -> None:
        tokens = _WITH_TOKENS.get()
        _WITH_TOKENS.set(tokens[:-1])
        _ACTIVE.reset(tokens[-1])

    async def __aenter__(self) -> Scope:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)

    # -- as a decorator: the scope is active while the function's own code runs

    def __call__(self, func: F) -> F:
        """Decorate ``func`` (a function, ``async`` function, generator or async generator)."""
        if not callable(func):
            raise ConfigurationError(f"autocontinue decorates a function, got {type(func).__name__}")
        wrapper: Callable[..., Any]
        if inspect.isasyncgenfunction(func):
            wrapper = _async_generator_wrapper(func, self.settings)
        elif inspect.isgeneratorfunction(func):
            wrapper = _generator_wrapper(func, self.settings)
        elif inspect.iscoroutinefunction(func):
            wrapper = _coroutine_wrapper(func, self.settings)
        else:
            wrapper = _function_wrapper(func, self.settings)
        return cast(F, functools.wraps(func)(wrapper))

    def __repr__(self) -> str:
        return f"<autocontinue.Scope stop={self.settings.stop!r}>"


def _function_wrapper(func: Callable[..., Any], settings: Settings) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _ACTIVE.set(settings)
        try:
            result = func(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)
        # A plain function may hand back code that runs later (e.g. it is itself a decorator's wrapper around a
        # generator or a coroutine function): that code is the function's too, so it runs in the scope as well.
        if isinstance(result, types.GeneratorType):
            return _generator_wrapper(lambda: result, settings)()
        if isinstance(result, types.CoroutineType):
            return _coroutine_wrapper(lambda: result, settings)()
        if isinstance(result, types.AsyncGeneratorType):
            return _async_generator_wrapper(lambda: result, settings)()
        return result

    return wrapper


def _coroutine_wrapper(
    func: Callable[..., Coroutine[Any, Any, Any]], settings: Settings
) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        # The coroutine runs in its awaiting task's context: set there, and reset when it returns. Tasks it starts
        # copy the context, so they are in the scope too.
        token = _ACTIVE.set(settings)
        try:
            return await func(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)

    return wrapper


def _generator_wrapper(func: Callable[..., Generator[Any, Any, Any]], settings: Settings) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        # The scope is active while the generator's body runs (each next/send/throw/close), never while the caller's
        # own code runs between items: the caller's calls are not ours to continue.
        inner = func(*args, **kwargs)
        step: Callable[[Any], Any] = inner.send
        value: Any = None
        while True:
            token = _ACTIVE.set(settings)
            try:
                item = step(value)
            except StopIteration as stop:
                return stop.value
            finally:
                _ACTIVE.reset(token)
            try:
                value = yield item
                step = inner.send
            except GeneratorExit:
                token = _ACTIVE.set(settings)
                try:
                    inner.close()
                finally:
                    _ACTIVE.reset(token)
                raise
            except BaseException as error:  # thrown in by the caller: the inner generator decides
                step, value = inner.throw, error

    return wrapper


def _async_generator_wrapper(
    func: Callable[..., AsyncGenerator[Any, Any]], settings: Settings
) -> Callable[..., AsyncGenerator[Any, Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        # As for generators: the scope is set around each asend/athrow/aclose, in the task that drives the step.
        inner = func(*args, **kwargs)
        step: Callable[[Any], Awaitable[Any]] = inner.asend
        value: Any = None
        while True:
            token = _ACTIVE.set(settings)
            try:
                item = await step(value)
            except StopAsyncIteration:
                return
            finally:
                _ACTIVE.reset(token)
            try:
                value = yield item
                step = inner.asend
            except GeneratorExit:
                token = _ACTIVE.set(settings)
                try:
                    await inner.aclose()
                finally:
                    _ACTIVE.reset(token)
                raise
            except BaseException as error:
                step, value = inner.athrow, error

    return wrapper


@overload
def autocontinue(func: F, /) -> F: ...


@overload
def autocontinue(func: None = None, /, **options: Any) -> Scope: ...


def autocontinue(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Continue every ``chat.completions.create`` call made while the decorated function runs.

    ``@autocontinue`` (defaults) or ``@autocontinue(max_rounds=6, max_cost_usd=0.2)``, with the options of
    :func:`autocontinue.wrap`; they are checked here, so a bad option fails at decoration time with
    :class:`~autocontinue.ConfigurationError`. Works on functions, ``async`` functions, generators and async
    generators; streaming calls (``stream=True``) are continued too.
    """
    scope = Scope(check_options(options))
    return scope if func is None else scope(func)


def enabled(**options: Any) -> Scope:
    """``with autocontinue.enabled(max_rounds=4): ...`` (or ``async with``): the decorator's scope as a block.

    Options as for :func:`autocontinue`, checked here. The result can also decorate functions.
    """
    return Scope(check_options(options))
