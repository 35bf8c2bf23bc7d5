"""The exceptions autocontinue raises.

Two families: :class:`ConfigurationError` for a call that is wrong before anything is sent (no request is made),
and :class:`ContinuationFailed` for a call that failed after text had been generated; the latter always carries
what was generated so far, because that text was paid for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openai import OpenAIError

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion


class AutocontinueError(Exception):
    """Base class of every error raised by autocontinue itself."""


class IncompleteStream(AutocontinueError):
    """An upstream stream ended without a finish_reason (a connection closed early, a broken event): the round
    is resumed from the text received, like any transient failure."""


class ConfigurationError(AutocontinueError, ValueError):
    """The call or the options are invalid; raised before any request is sent."""


class UnknownPriceError(ConfigurationError):
    """A cost budget was set but the model's price is not known (pass ``prices=`` to add it)."""


class ContinuationFailed(AutocontinueError):
    """A round failed after earlier text was generated.

    ``partial`` is a complete ``ChatCompletion`` holding every character generated before the failure, with
    usage summed over the rounds that finished and ``.continuation`` describing them. The original error is
    ``__cause__`` (and ``cause``).
    """

    def __init__(self, message: str, *, partial: ChatCompletion, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.partial = partial
        self.cause = cause

    @property
    def text(self) -> str:
        """The text generated before the failure."""
        return self.partial.choices[0].message.content or ""


class TruncatedToolCallError(ContinuationFailed):
    """The reply was cut off inside a tool call; a cut call is never continued as text or returned as complete.

    ``tool_calls`` holds the partial calls as the provider returned them.
    """

    def __init__(
        self, message: str, *, partial: ChatCompletion, tool_calls: list[Any], cause: BaseException | None = None
    ) -> None:
        super().__init__(message, partial=partial, cause=cause)
        self.tool_calls = tool_calls


class InvalidJSONError(ContinuationFailed):
    """A JSON-mode reply (``response_format``) was continued, and the joined text is not valid JSON (or does not
    match the schema). ``text`` (and ``partial``) hold it."""


class MalformedResponse(AutocontinueError, OpenAIError, ValueError):
    """The provider answered with something no chat completion looks like: a JSON array or ``null`` for a body, a
    choice without a message, a stream chunk without a delta, a usage that is not a usage.

    It is retried like any transient failure (a proxy's hiccup); when retries run out it is raised as it is if
    nothing had been generated yet, else as the cause of :class:`ContinuationFailed`. It is an
    ``openai.OpenAIError`` (and a ``ValueError``), so ``except openai.OpenAIError`` catches it too. The message
    names what was wrong, never the text.
    """
