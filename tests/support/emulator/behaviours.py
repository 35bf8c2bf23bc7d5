"""How a chat model without prefill answers "continue where you stopped": one persona per behaviour.

Asked in a new user turn to continue its cut-off reply ``A``, a real chat model does not always start at the next
character. Each behaviour below is one thing real models were reported doing, and is served as its own persona
(``chat-<name>``, base path ``/chat-<name>/v1``). Under every one of them the model knows the whole answer
(the script's ``target``) and writes, within the output limit, ``head`` (junk and/or a repeat of the end of ``A``)
followed by the target's text after ``A`` (less ``drop`` characters of it).

Reports the behaviours are based on:

- repeating the tail or the whole answer: SillyTavern#1957 (continue repeats the last message), ChungusHub#6
  ("it just copied the message again"), neo-chat#44 (asked to "continue", the model "gives the complete code from
  the beginning"), Open WebUI #21564 (OpenAI-style backends generate "a completely new response");
- a preamble ("Sure! Continuing:"), a leading "..." / "…": the no-preamble wording every continuing tool adds to its
  prompt (LiteLLM, Hermes, Claude Code's "no apology, no recap", peers-2026.md) exists because models do this;
- a code block split at the cut and reopened: continuedev/continue#2980 ("code blocks to be split"), obiscr/ChatGPT
  #234 ("2 pieces of code that I have to concat");
- a space added or dropped at the join: SillyTavern#4549 ("John left the store . Mary stayed."), the
  ``continue_postfix`` "coping mechanism for OAI spacing" (peers.md §4);
- the cut word written again whole, the last few words / the current line / the quoted tail repeated: c4h's
  "explicit overlap" (peers.md §7) and the "do not repeat" in every continuation prompt.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BEHAVIOURS", "Answer", "answer"]


@dataclass(frozen=True)
class Answer:
    """What the model writes: ``head``, then the target from ``len(A) + drop`` (or from 0 when ``restart``)."""

    head: str = ""
    drop: int = 0
    restart: bool = False


def _exact(a: str, rest: str, ordinal: int) -> Answer:
    return Answer()


def _word(a: str, rest: str, ordinal: int) -> Answer:
    """The last whitespace-delimited word of A (with what follows it) again: ``in a`` -> ``a ledger``."""
    match = re.search(r"\S+\s*$", a)
    return Answer(head=match.group(0) if match else "")


def _words(a: str, rest: str, ordinal: int) -> Answer:
    """The last three words again."""
    match = re.search(r"(?:\S+\s+){2}\S+\s*$", a) or re.search(r"\S+\s*$", a)
    return Answer(head=match.group(0) if match else "")


def _line_start(a: str) -> int:
    body = a.rstrip("\n")
    return body.rfind("\n") + 1


def _line(a: str, rest: str, ordinal: int) -> Answer:
    """The current line again (the previous one when A ends with a newline); in a paragraph written as one long
    line, its last sentence (a model going back a whole paragraph is the restart behaviour)."""
    start = _line_start(a)
    if len(a) - start > 160:
        sentence = max(a.rfind(". ", start, len(a) - 1), a.rfind("。", start, len(a) - 1))
        start = sentence + (2 if a[sentence] == "." else 1) if sentence != -1 else start
    return Answer(head=a[start:])


def _tail60(a: str, rest: str, ordinal: int) -> Answer:
    """About the last 60 characters again, from the first word that starts in them."""
    if len(a) <= 60:
        return Answer(head=a)
    start = len(a) - 60
    while start < len(a) and not (a[start - 1].isspace() and not a[start].isspace()):
        start += 1
    return Answer(head=a[start:])


def _preamble(a: str, rest: str, ordinal: int) -> Answer:
    return Answer(head="Sure! Continuing from where I left off:\n\n")


def _preamble_repeat(a: str, rest: str, ordinal: int) -> Answer:
    return Answer(head="Of course, here is the rest:\n" + _words(a, rest, ordinal).head)


def _dots(a: str, rest: str, ordinal: int) -> Answer:
    return Answer(head="...")


def _ellipsis(a: str, rest: str, ordinal: int) -> Answer:
    """ "…" and the last word again."""
    return Answer(head="…" + _word(a, rest, ordinal).head)


def _space_added(a: str, rest: str, ordinal: int) -> Answer:
    return Answer(head=" ")


def _newline_added(a: str, rest: str, ordinal: int) -> Answer:
    return Answer(head="\n")


def _space_dropped(a: str, rest: str, ordinal: int) -> Answer:
    """The space or newline that should come first is left out."""
    return Answer(drop=1 if rest[:1].isspace() else 0)


_FENCE = re.compile(r"^```([\w+-]*)[^\n]*$", re.MULTILINE)


def _fence(a: str, rest: str, ordinal: int) -> Answer:
    """Cut inside a code block: the block is opened again (same language) and the current line written again."""
    fences = _FENCE.findall(a)
    if len(fences) % 2 == 0:
        return Answer()
    return Answer(head="```" + fences[-1] + "\n" + a[_line_start(a) :])


def _rewrite(a: str, rest: str, ordinal: int) -> Answer:
    """The word A ends in written again whole (``def merge(a, b`` -> ``b):``)."""
    match = re.search(r"\w+$", a)
    return Answer(head=match.group(0) if match else "")


def _restart(a: str, rest: str, ordinal: int) -> Answer:
    """Every third request, the answer begun again from the start, verbatim; otherwise an exact continuation."""
    return Answer(restart=ordinal % 3 == 0)


#: behaviour name -> what the model writes, given A, the target after A and the request's ordinal
BEHAVIOURS: dict[str, Callable[[str, str, int], Answer]] = {
    "exact": _exact,
    "word": _word,
    "words": _words,
    "line": _line,
    "tail60": _tail60,
    "preamble": _preamble,
    "preamble-repeat": _preamble_repeat,
    "dots": _dots,
    "ellipsis": _ellipsis,
    "space-added": _space_added,
    "newline-added": _newline_added,
    "space-dropped": _space_dropped,
    "fence": _fence,
    "rewrite": _rewrite,
    "restart": _restart,
}


def answer(behaviour: str, a: str, target: str, ordinal: int) -> Answer:
    """What a model with ``behaviour`` writes when asked to continue ``a`` (a prefix of ``target``)."""
    return BEHAVIOURS[behaviour](a, target[len(a) :], ordinal)
