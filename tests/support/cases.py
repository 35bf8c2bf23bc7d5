"""The property tests' cases: a target text, a provider flavour and its quirks, cut points, and the runs whose
right answer cannot be known from the replies alone (left out, each with its reason)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

from autocontinue._planning import MIN_RESTART_PROBE
from autocontinue._reading import MIN_UNCONFIRMED as MIN_OVERLAP
from autocontinue.core import Continuation
from autocontinue.stitch import RESTART_PROBE
from tests.support.drive import make_core
from tests.support.fakes import FLAVOURS, USER, Flavour, Provider, tokenize

FRAGMENTS = [
    "Hello",
    " world",
    ",",
    ".",
    "!",
    " the",
    " quick",
    " brown fox",
    "  ",
    "    ",
    "\n",
    "\n\n",
    "\n\n\n\n\n",
    "\t",
    "\r\n",
    " 😀",
    "👍🏽",
    "👨‍👩‍👧",
    "漢字",
    "日本語のテキストです",
    "。",
    "中文\uff0c标点\uff01",  # fullwidth comma and exclamation mark
    "def f(x):\n    return x ** 2\n",
    "    if a:\n        b()\n",
    '{"k": [1, 2, {"z": null}]}',
    "```python\n",
    "```",
    "e\u0301",
    " naïve",
    " —",
    "…",
    "|---|---|",
    "- item\n",
    "1. ",
]

whitespace_runs = st.builds(lambda c, n: c * n, st.sampled_from([" ", "\n", "\t", "\r\n", " \n"]), st.integers(1, 40))
targets = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8), whitespace_runs), min_size=0, max_size=30
).map("".join)


@dataclass(frozen=True)
class Case:
    flavour: Flavour
    target: str
    max_tokens: int
    heal: bool
    caller_prefix: int  # chars of target the caller gives as its own assistant prefix (0: none)
    echo_chunks: int
    echo_merge: bool
    overlap_min: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    flavour = FLAVOURS[draw(st.sampled_from(sorted(FLAVOURS)))]
    target = draw(targets)
    caller_prefix = 0
    if not flavour.restart and draw(st.booleans()):
        caller_prefix = draw(st.integers(1, max(1, len(target))))
    return Case(
        flavour=flavour,
        target=target,
        max_tokens=draw(st.integers(1, 20)),
        heal=draw(st.booleans()),
        caller_prefix=min(caller_prefix, len(target)),
        echo_chunks=draw(st.integers(1, 5)),
        echo_merge=draw(st.booleans()),
        overlap_min=draw(st.integers(MIN_OVERLAP, 24)),
    )


def setup_case(case: Case, *, stream: bool) -> tuple[Provider, Continuation]:
    messages: list[Any] = [dict(USER)]
    if case.caller_prefix:
        messages.append({"role": "assistant", "content": case.target[: case.caller_prefix]})
    provider = Provider(
        case.target,
        case.flavour,
        n_base=1,
        answer_start=case.caller_prefix,
        overlap_min=case.overlap_min,
        echo_chunks=case.echo_chunks,
        echo_merge=case.echo_merge,
    )
    core = make_core(provider, messages, heal=case.heal, stream=stream, max_tokens=case.max_tokens)
    return provider, core


def assume_unambiguous(case: Case, provider: Provider) -> None:
    """Leave out the runs whose right answer cannot be known from the replies alone (each documented below)."""
    # 1. A dialect whose echo is "maybe" (prefix, continue_final_message, prefill) cannot tell a non-echoing
    #    provider's new text that starts with the whole prefix (periodic text such as "--\n--\n") from an echo.
    #    (For DeepSeek, whose host is known never to echo, see test_deepseek_never_echoes.)
    assume(not provider.ambiguous_echo)
    # 2. The instruction dialect's model may repeat the tail it was shown. Only a repeated tail of at least
    #    MIN_OVERLAP (8) chars occurring once in the last OVERLAP_WINDOW (1024) chars of the prefix can be told
    #    from new text: a shorter or non-unique one could equally be the text's own next characters (in
    #    "ab ab ab" a repeated " ab" *is* the continuation). The overlap quirk only ever repeats such a tail
    #    (_unique_tail); runs where a reply is ambiguous anyway (new text that itself begins with a unique tail of
    #    the prefix, e.g. "00000:0:" continued by "00000:0:") are not counted.
    assume(not provider.ambiguous_overlap)
    #    Runs where the reader recorded a doubt are not left out: the quirk's tail, at least 8 characters and once
    #    in the window, is evidence by itself, and of two repeats that re-create the held text at most one is such
    #    (the shorter also occurs at the start of the longer), so the reader decides every reply this model sends.
    #    The replies it cannot decide (it keeps text and records the doubt) are pinned in test_instruction_seam.py.
    # 3. The prefill dialect never sends trailing whitespace (Anthropic refuses it). When the model's next
    #    max_tokens tokens after a whitespace-stripped prefix are all whitespace, the round can only re-emit the
    #    held whitespace: the same request would get the same reply forever, so "no_progress" is the right stop.
    assume(not provider.whitespace_only)
    # 4. Two rounds in a row cut after the same new text look exactly like a model stuck in a loop (the core's
    #    "no_progress" rule): text that genuinely repeats itself at round boundaries (" world world world", one
    #    token a round) is stopped by that rule by design.
    assume(not provider.repeated_round)
    if case.flavour.restart:
        # 5. A restart is recognised by the answer's opening RESTART_PROBE characters; a restarted reply too short
        #    to contain them is indistinguishable from new text that happens to begin like the answer.
        first = "".join(tokenize(case.target)[: case.max_tokens]).lstrip()
        assume(len(first) >= RESTART_PROBE)
    # 6. For the same reason, an answer that writes its own opening again later (periodic text such as
    #    "0:0:0:..."): a round whose new text begins there is, in every character the reply shows, a restart.
    answer = case.target[case.caller_prefix :].lstrip()
    opening = answer[:RESTART_PROBE]
    assume(len(opening) < MIN_RESTART_PROBE or answer.find(opening, 1) == -1)


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
