"""A deterministic, GPT-2-like toy tokenizer.

The emulator needs "tokens" only to decide where a reply is cut (``max_tokens``) and to count usage, so it
does not need a real BPE vocabulary; it needs a split that is fast, deterministic and lossless
(``"".join(tokenize(t)) == t`` for every string) and that behaves like real tokenizers at the places that
matter for continuation: a leading space belongs to the following word, newlines form their own tokens,
punctuation runs stay together.
"""

from __future__ import annotations

import re

__all__ = ["count_tokens", "tokenize"]

# Alternatives, tried in order at each position (GPT-2's pre-tokenizer, simplified):
#   ` ?\w+`            a run of letters/digits/underscore with at most one leading space
#   ` ?[^\s\w]+`       a run of punctuation/symbols with at most one leading space
#   `\n+`              a run of newlines (kept apart from other whitespace)
#   `[^\S\n]+(?!\S)`   a run of non-newline whitespace, leaving its last space to the next word
#   `[^\S\n]+`         the remaining non-newline whitespace (e.g. before a newline or at the end)
#   `.`                anything else, one char (DOTALL: cannot fail, so findall never skips a char
#                      and the split stays lossless)
_TOKEN_RE = re.compile(r" ?\w+| ?[^\s\w]+|\n+|[^\S\n]+(?!\S)|[^\S\n]+|.", re.DOTALL)


def tokenize(text: str) -> list[str]:
    """Split ``text`` into tokens whose concatenation is exactly ``text``."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` (without building more than the regex's own list)."""
    return len(_TOKEN_RE.findall(text)) if text else 0
