"""The caller's request, checked before anything is sent.

Every mistake we can see up front becomes a :class:`~autocontinue.errors.ConfigurationError` naming the argument,
so no request (and no cost) is made for a call that cannot work. The caller's objects are never modified: the
messages are copied shallowly and each round builds its own list.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple

import openai
from openai.resources.chat.completions import Completions

from ._limits import NAMES
from .errors import ConfigurationError

__all__ = ["NOT_GIVEN_MARKERS", "CallRequest"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: the SDK's markers for "argument not given" (``NOT_GIVEN``, ``omit``), as the installed version has them
NOT_GIVEN_MARKERS: tuple[type, ...] = tuple(
    marker for marker in (getattr(openai, "NotGiven", None), getattr(openai, "Omit", None)) if isinstance(marker, type)
)


@lru_cache(maxsize=1)
def create_parameters() -> frozenset[str]:
    """Keyword arguments the installed SDK's ``chat.completions.create`` accepts."""
    return frozenset(inspect.signature(Completions.create).parameters) - {"self"}


#: the request's per-round output limits (both spellings the SDK accepts)
#: what ``messages`` must not be, although each is iterable
_NOT_A_LIST = (str, bytes, Mapping)
_NO_TEMPLATE: Mapping[str, Any] = MappingProxyType({})


def _given(value: Any) -> bool:
    return value is not None and not isinstance(value, NOT_GIVEN_MARKERS)


class CallRequest(NamedTuple):
    """A checked ``chat.completions.create`` call, split into what every round shares and the caller's prefix."""

    # A named tuple: immutable like a frozen dataclass, and several times cheaper to make (one per call).

    kwargs: dict[str, Any]  # the caller's keyword arguments (messages replaced per round)
    model: str
    messages: tuple[Any, ...]  # the caller's messages without a trailing assistant prefix
    prefix: str  # the caller's own assistant prefix ("" when the last message is not an assistant message)
    prefix_template: Mapping[str, Any]  # that message's other keys (e.g. "name"), reused for the prefix message
    has_prefix: bool
    stream: bool
    stream_options: dict[str, Any] | None = None
    n: int = 1
    json_mode: bool = False  # response_format asks for JSON: the joined reply is checked
    json_schema: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, kwargs: Mapping[str, Any]) -> CallRequest:
        """Check ``kwargs`` and split them; raises ``ConfigurationError`` on anything that cannot work."""
        parameters = create_parameters()
        if not parameters.issuperset(kwargs):
            unknown = sorted(set(kwargs) - parameters)
            raise ConfigurationError(f"chat.completions.create() got unexpected keyword argument(s): {unknown}")
        # What the caller gave: None and the SDK's NOT_GIVEN / omit mean "not given". One pass, and the checks
        # below look only at what is there (this runs before every call, so it is kept lean).
        given = {k: v for k, v in kwargs.items() if v is not None and not isinstance(v, NOT_GIVEN_MARKERS)}
        model = given.get("model")
        if not isinstance(model, str) or not model:
            raise ConfigurationError("model must be a non-empty string")
        messages = given.get("messages")
        if messages.__class__ is not list and (
            messages is None or isinstance(messages, _NOT_A_LIST) or not hasattr(messages, "__iter__")
        ):
            raise ConfigurationError("messages must be a list of message dicts")
        messages = list(messages)
        if not messages:
            raise ConfigurationError("messages must not be empty")
        for i, message in enumerate(messages):
            _check_message(i, message)
        for name in NAMES:
            value = given.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        # stream and stream_options are the driver's to set, round by round.
        stream = given.pop("stream", False)
        if not isinstance(stream, bool):
            raise ConfigurationError(f"stream must be True or False, got {stream!r}")
        stream_options = given.pop("stream_options", None)
        if stream_options is not None and not isinstance(stream_options, Mapping):
            raise ConfigurationError("stream_options must be a mapping, such as {'include_usage': True}")
        n = given.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"n must be a positive integer, got {n!r}")
        if n > 1 and stream:
            raise ConfigurationError("stream=True with n > 1 is not supported: stream one choice per call")
        if "extra_body" in given and not isinstance(given["extra_body"], Mapping):
            raise ConfigurationError("extra_body must be a mapping")
        last = messages[-1]
        template: Mapping[str, Any] = _NO_TEMPLATE
        has_prefix = _role(last) == "assistant"
        if has_prefix:
            content = last.get("content") if isinstance(last, Mapping) else None
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise ConfigurationError(
                    "the last message is an assistant message to be continued, so its content must be a string"
                )
            if getattr(last, "get", lambda _k: None)("tool_calls"):
                raise ConfigurationError("a trailing assistant message with tool_calls cannot be continued as text")
            if len(messages) == 1:
                raise ConfigurationError("messages must contain more than the assistant prefix to continue")
            base, template, prefix = tuple(messages[:-1]), dict(last), content
        else:
            base, prefix = tuple(messages), ""
        response_format = given.get("response_format")
        if response_format is not None and not isinstance(response_format, Mapping | type):
            raise ConfigurationError("response_format must be a dict, such as {'type': 'json_object'}")
        json_mode, json_schema = _json_format(response_format) if response_format is not None else (False, None)
        return cls(
            kwargs=given,
            model=model,
            messages=base,
            prefix=prefix,
            prefix_template=template,
            has_prefix=has_prefix,
            stream=stream,
            stream_options=dict(stream_options)
            if stream_options is not None and isinstance(stream_options, Mapping)
            else None,
            n=n,
            json_mode=json_mode,
            json_schema=json_schema,
        )


def _json_format(response_format: Any) -> tuple[bool, Mapping[str, Any] | None]:
    if not isinstance(response_format, Mapping):
        if _given(response_format) and isinstance(response_format, type):
            raise ConfigurationError(
                "response_format got a class: that is for chat.completions.parse(); create() takes a dict"
            )
        return False, None
    kind = response_format.get("type")
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return True, schema if isinstance(schema, Mapping) else None
    return False, None


def _role(message: Any) -> Any:
    if message.__class__ is dict or isinstance(message, Mapping):
        return message.get("role")
    return getattr(message, "role", None)


def _check_message(index: int, message: Any) -> None:
    # `__class__ is dict` first: messages are nearly always plain dicts, and an ABC check costs ten times more.
    if message.__class__ is not dict and not isinstance(message, Mapping):
        kind = type(message).__name__
        raise ConfigurationError(f"messages[{index}] must be a dict with 'role' and 'content', got {kind}")
    role = message.get("role")
    if role not in _ROLES:
        raise ConfigurationError(f"messages[{index}] has role {role!r}; expected one of {sorted(_ROLES)}")
    content = message.get("content")
    if content is not None and not isinstance(content, str | list | tuple):
        raise ConfigurationError(f"messages[{index}].content must be a string or a list of parts")
    if content.__class__ is list and not all(isinstance(part, Mapping) for part in content):
        raise ConfigurationError(f"messages[{index}].content is a list, so each part must be a dict")
    if content is None and role in ("user", "system", "developer"):
        raise ConfigurationError(f"messages[{index}] ({role}) has no content")
