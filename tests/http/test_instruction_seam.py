"""The instruction dialect's seam: a chat model's answer to "continue" read as [junk][repeat][held][new].

Sans-IO tests of the reading (stitch.Seam with ``remove_overlap``), then a fast subset of the benchmark
``benchmarks.instruction_seam``: every chat-model behaviour persona of the emulator, over real HTTP with the real
``openai`` SDK, streamed and not.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autocontinue
from autocontinue.stitch import Seam, SeamPlan
from benchmarks.seam_texts import TEXTS
from tests.support.emulator import Emulator, Script
from tests.support.emulator.behaviours import BEHAVIOURS


def read(sent: str, held: str, pieces: list[str], answer_start: int = 0) -> tuple[str, list[str]]:
    seam = Seam(SeamPlan(sent=sent, held=held, remove_overlap=True, answer_start=answer_start))
    out = "".join(seam.feed(piece) for piece in pieces) + seam.finish()
    return out, seam.actions


# -- repeats confirmed by the held text, however short


@pytest.mark.parametrize(
    ("sent", "held", "reply", "new"),
    [
        # the three doublings of the issue: a one-letter word, a cut word rewritten, a few words
        ("It was kept in a", " ledg", "a ledger nobody read.", " ledger nobody read."),
        ("def merge(a, b", "):\n", "b):\n    out = []", "):\n    out = []"),
        ("    out = []\n    i = j", " = 0", "i = j = 0\n    while", " = 0\n    while"),
        # the current line again
        ("Intro.\n| Jan | 78 | 54", " | 12", "| Jan | 78 | 54 | 12 |\n", " | 12 |\n"),
        # a repeat starting at a space
        ("It was kept in a", " ledg", " a ledger.", " ledger."),
    ],
)
def test_a_repeat_the_held_text_confirms_is_removed(sent: str, held: str, reply: str, new: str) -> None:
    out, actions = read(sent, held, [reply])
    assert out == new
    assert any(a.startswith("overlap_removed:") for a in actions), actions


def test_a_word_the_text_really_repeats_is_kept() -> None:
    # "In a a way": the text's own doubled word, continued exactly - the held text says so.
    out, actions = read("whole town. In a", " a", [" a way, the ledger"])
    assert out == " a way, the ledger"
    assert not any(a.startswith("overlap_removed") for a in actions)


# -- junk


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("Sure! Continuing from where I left off:\n\n ledger nobody read.", "preamble"),
        ("Of course, here is the rest:\nin a ledger nobody read.", "preamble"),
        ("... ledger nobody read.", "ellipsis"),
        ("…a ledger nobody read.", "ellipsis"),
    ],
)
def test_junk_before_the_continuation_is_removed(reply: str, kind: str) -> None:
    out, actions = read("It was kept in a", " ledg", [reply])
    assert out == " ledger nobody read."
    assert f"junk_removed:{kind}" in actions


def test_a_preamble_cut_by_the_limit_is_removed_and_the_held_text_kept() -> None:
    out, actions = read("It was kept in a", " ledg", ["Sure! Continuing from where"])
    assert out == " ledg"
    assert "junk_removed:preamble" in actions and "held_kept" in actions


def test_a_fence_reopened_inside_a_code_block_is_removed() -> None:
    sent = "Code:\n\n```python\ndef f(x):\n    return x"
    out, actions = read(sent, " + 1\n", ["```python\n    return x + 1\n```\n"])
    assert out == " + 1\n```\n"
    assert "junk_removed:fence" in actions


def test_a_closing_fence_is_never_taken_for_junk() -> None:
    out, _ = read("```python\nx = 1\n", "", ["```\n\nDone."])
    assert out == "```\n\nDone."
    out, _ = read("Text.\n\n", "", ["```python\nx = 1\n"])  # not inside a block: a new one
    assert out == "```python\nx = 1\n"


def test_dots_the_text_may_have_are_kept_when_nothing_tells() -> None:
    out, _ = read("Hello", "", ["…"])
    assert out == "…"


# -- whitespace at the join, settled by the held text


@pytest.mark.parametrize(
    ("held", "reply", "new"),
    [
        (" ledg", "  ledger", " ledger"),  # a space added
        (" ledg", "ledger", " ledger"),  # a space dropped
        (" ledg", "\n ledger", " ledger"),  # a newline added
        (", and", " , and so", ", and so"),  # " ," after a healed cut
        ("\n\n", "\n\n\nThe", "\n\nThe"),  # a blank line added
        ("\n", "    out", "\n    out"),  # a newline dropped before an indentation
        ("\n   ", "    out", "\n    out"),  # cut inside an indentation
        ("\n", " \n    out", "\n    out"),  # a space added before the newline
    ],
)
def test_the_held_text_settles_the_whitespace(held: str, reply: str, new: str) -> None:
    out, _ = read("It was kept in a", held, [reply])
    assert out == new


# -- restarts


def test_a_restart_of_a_long_answer_keeps_only_the_new_part() -> None:
    answer = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))
    assert len(answer) > 4 * 1024  # far beyond the window a tail is looked for in
    sent, held = answer[:-10], answer[-10:]
    reply = answer + "Line 200: more."
    pieces = [reply[i : i + 7] for i in range(0, len(reply), 7)]
    out, actions = read(sent, held, pieces)
    assert out == held + "Line 200: more."
    assert any(a.startswith("restart_removed:") for a in actions), actions


def test_a_reply_cut_inside_a_restart_adds_nothing() -> None:
    answer = "The old harbour town kept its records in a ledger that nobody had opened for years."
    out, actions = read(answer[:-6], answer[-6:], [answer[:40]])
    assert out == answer[-6:]  # the held text is kept; the copy of the opening is not
    assert any(a.startswith("restart_removed:") for a in actions)


def test_after_the_callers_own_prefix_a_restart_is_of_the_answer() -> None:
    prefix = "Answer: "
    answer = "the old harbour town kept its records in a ledger, and nobody read it"
    sent = prefix + answer
    out, _ = read(sent, " for", [answer + " for years."], answer_start=len(prefix))
    assert out == " for years."


# -- two readings that re-create the held text equally well: text that repeats itself at the cut

PERIOD = "\u00a6~\u00b5\x8a\U00079591\x13\u00c60"


@pytest.mark.parametrize(
    ("sent", "held", "reply", "new"),
    [
        # The answer begun again (8 characters, once in the text) vs its last word "000" again: both are followed
        # by the held ":". The shorter repeat also occurs at the start of the longer one, so only the longer one is
        # evidence by itself.
        ("000::000", ":", "000::000:0", ":0"),
        ("Scores: 0-0, 0-0", ", 0", "0-0, 0-0, 0-0 final", ", 0-0 final"),
        # found by the state machine's property tests: a period of 8 characters, "Æ0" and "Æ0" + a period repeated
        (PERIOD * 2, PERIOD[:3], PERIOD[-2:] + PERIOD * 2, PERIOD),
    ],
)
def test_where_two_repeats_re_create_the_held_text_the_one_evident_by_itself_decides(
    sent: str, held: str, reply: str, new: str
) -> None:
    out, actions = read(sent, held, [reply])
    assert out == new
    assert not any(a.startswith("doubt:") for a in actions), actions
    streamed, _ = read(sent, held, list(reply))
    assert streamed == new


def test_where_neither_repeat_is_evident_the_text_is_kept_with_a_doubt() -> None:
    # "one" and "one one" both occur more than once: the model may have repeated either, or the text may say
    # "one" five times. Nothing tells; the shorter repeat is taken (text kept, never lost) and the doubt recorded.
    out, actions = read("one one one", " one", ["one one one two."])
    assert out == " one one two."
    assert "doubt:readings_tied" in actions


@pytest.mark.parametrize(
    ("sent", "held", "reply"),
    [
        # the reply ends inside a repeat of the last 60 characters; " |" also fits its start, with a space dropped
        (
            "| May | 55 | 196 | 0 |\n| Jun | 52 | 199 | 0 |\n| Jul | 49 | 211 | 0",
            " |",
            "| 55 | 196 | 0 |\n| Jun | 52 | 199 | 0 |\n| Jul | 49 | 211",
        ),
        # the reply ends right after the repeat; '": "' also follows its last word
        (
            '    {"sku": "A-100", "qty": 2},\n    {"sku": "A-101", "qty": 1},\n    {"sku',
            '": "',
            '{"sku": "A-101", "qty": 1},\n    {"sku',
        ),
    ],
)
def test_held_punctuation_does_not_outweigh_a_repeat_evident_by_itself(sent: str, held: str, reply: str) -> None:
    out, actions = read(sent, held, [reply])
    assert out == held  # the round ended before the model wrote anything new: the held text is kept
    assert "held_kept" in actions and any(a.startswith("overlap_removed:") for a in actions), actions


# -- where nothing can tell, text is kept and the doubt recorded


def test_an_unconfirmed_short_repeat_is_kept_with_a_doubt() -> None:
    out, actions = read("It was kept in a", "", ["a ledger."])
    assert out == "a ledger."
    assert any(a.startswith("doubt:repeat_kept") for a in actions)


def test_a_repeat_made_of_punctuation_is_kept() -> None:
    out, _ = read("Wait...", "", ["... and then."])
    assert out == "... and then."


# -- streaming: the start is held only while open, and nothing released is taken back


def test_a_stream_holds_the_start_only_while_it_is_open() -> None:
    seam = Seam(SeamPlan(sent="It was kept in a", held=" ledg", remove_overlap=True))
    assert seam.feed("a") == ""  # a repeat of "a", or new text: open
    assert seam.feed(" led") == ""  # still short of the held text
    assert seam.feed("ger and") == " ledger and"  # decided
    assert seam.feed(" more") == " more"  # passes through
    assert seam.finish() == ""


def test_what_the_model_said_covers_the_whole_streamed_reply() -> None:
    # The loop watch compares what the model said round after round: all of it, not only the first piece.
    seam = Seam(SeamPlan(sent="It was kept in a", held=" ledg", remove_overlap=True))
    for piece in ["a", " ledger", " nobody", " read", "."]:
        seam.feed(piece)
    seam.finish()
    assert seam.model_text == " ledger nobody read."


def test_an_exact_continuation_streams_at_once() -> None:
    seam = Seam(SeamPlan(sent="It was kept in a", held=" ledg", remove_overlap=True))
    assert seam.feed(" ledger") == " ledger"


REPLIES = [
    ("It was kept in a", " ledg", "a ledger nobody read, for years."),
    ("It was kept in a", " ledg", "Sure! Continuing:\n\nin a ledger nobody read."),
    ("Code:\n```python\ndef f(x):\n    return x", " + 1", "```python\n    return x + 1\n```\nDone."),
    ("It was kept in a", " ledg", "  ledger, kept."),
    ("The old harbour town kept its records in a", " ledg", "The old harbour town kept its records in a ledger."),
]


@settings(max_examples=150, deadline=None)
@given(case=st.sampled_from(REPLIES), cuts=st.lists(st.integers(1, 60), max_size=8))
def test_streamed_pieces_join_as_the_whole_reply(case: tuple[str, str, str], cuts: list[int]) -> None:
    sent, held, reply = case
    whole, _ = read(sent, held, [reply])
    points = sorted({c for c in cuts if c < len(reply)})
    pieces = [reply[a:b] for a, b in zip([0, *points], [*points, len(reply)], strict=True)]
    streamed, _ = read(sent, held, pieces)
    assert streamed == whole


# -- every behaviour over HTTP (a fast subset of benchmarks.instruction_seam)


def _continue(emu: Emulator, behaviour: str, target: str, stream: bool) -> tuple[str, Any]:
    model = emu.add_script(Script(target=target))
    client = openai.OpenAI(base_url=emu.base_url(f"chat-{behaviour}"), api_key="x", max_retries=0)
    try:
        reply = autocontinue.create(
            client,
            model=model,
            messages=[{"role": "user", "content": "Write it."}],
            max_tokens=64,
            dialect="instruction",
            max_rounds=100,
            stream=stream,
        )
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
        else:
            text = reply.choices[0].message.content or ""
        return text, reply.continuation
    finally:
        client.close()


#: what the seam trace shows for each behaviour (on the markdown text, which is cut inside its code block)
EXPECTED_ACTION = {
    "word": "overlap_removed:",
    "words": "overlap_removed:",
    "line": "overlap_removed:",
    "tail60": "overlap_removed:",
    "preamble": "junk_removed:preamble",
    "preamble-repeat": "junk_removed:preamble",
    "dots": "junk_removed:ellipsis",
    "ellipsis": "junk_removed:ellipsis",
    "fence": "junk_removed:fence",
    "rewrite": "overlap_removed:",
    "restart": "restart_removed:",
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_every_behaviour_is_joined_exactly(emu: Emulator, behaviour: str, stream: bool) -> None:
    for kind in ("markdown+code", "list"):
        target = TEXTS[kind]
        text, trace = _continue(emu, behaviour, target, stream)
        assert text == target, (kind, trace.rounds)
        assert trace.stop_cause == "natural"
        assert len(trace.rounds) > 2
        if kind == "markdown+code" and behaviour in EXPECTED_ACTION:
            actions = [a for r in trace.rounds for a in r.seam]
            assert any(a.startswith(EXPECTED_ACTION[behaviour]) for a in actions), actions


def test_the_instruction_quotes_the_tail_and_sets_no_spacing_rules(emu: Emulator) -> None:
    target = TEXTS["prose"]
    model = emu.add_script(Script(target=target))
    with openai.OpenAI(base_url=emu.base_url("chat-exact"), api_key="x", max_retries=0) as client:
        reply = autocontinue.create(
            client,
            model=model,
            messages=[{"role": "user", "content": "Write it."}],
            max_tokens=64,
            dialect="instruction",
        )
    assert reply.choices[0].message.content == target
    for request in emu.requests(model)[1:]:
        messages = request["body"]["messages"]
        so_far, instruction = messages[-2]["content"], messages[-1]["content"]
        assert "space" not in instruction and "newline" not in instruction
        quoted = json.loads(instruction.split("ends with: ", 1)[1].rsplit(". Continue", 1)[0])
        assert so_far.endswith(quoted) and 150 <= len(quoted) <= 200
        assert quoted[0] != " " and so_far[-len(quoted) - 1].isspace()  # quoted from where a word starts
        assert len(instruction) < 400
