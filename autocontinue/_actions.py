"""The actions :class:`~autocontinue.core.Continuation` answers with: what a driver does next. Kept apart from the
state machine, as h11 keeps its events apart from its connection; :mod:`autocontinue.core` exports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

__all__ = ["Action", "DoRequest", "DoSleep", "Done", "Fail"]


@dataclass(frozen=True)
class Action:
    """What to do next. ``emit``: while streaming, the chunks to hand to the reader before doing it (text released
    when a round ended; after :class:`Done`, the rest of the answer, its finish_reason and usage; before
    :class:`Fail`, the text kept in the error's partial that the reader has not seen yet)."""

    emit: tuple[ChatCompletionChunk, ...] = field(default=(), kw_only=True)


@dataclass(frozen=True)
class DoRequest(Action):
    """Send ``kwargs`` to ``chat.completions.create`` (to ``base_url`` when set)."""

    kwargs: dict[str, Any]
    base_url: str | None = None


@dataclass(frozen=True)
class DoSleep(Action):
    """Wait ``seconds``, then call :meth:`Continuation.resume`."""

    seconds: float


@dataclass(frozen=True)
class Done(Action):
    """The call is complete."""

    completion: ChatCompletion


@dataclass(frozen=True)
class Fail(Action):
    """The call failed; raise ``error``."""

    error: BaseException
