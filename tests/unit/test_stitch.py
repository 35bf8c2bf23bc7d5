"""Tests of autocontinue.stitch: where a prefix is cut (hold_back_point) and how a reply is joined (Seam)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from autocontinue._cut import (
    HOLD_WINDOW,
    MAX_HOLD,
    REPLACEMENT_CHAR,
    _hold_back_point,
    hold_back_point,
    word_ends_before,
)
from autocontinue.stitch import Seam, SeamPlan

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cut(text: str, *, floor: int = 0, heal: bool = False, strip: bool = False) -> int:
    return hold_back_point(text, 0, floor=floor, heal=heal, strip_whitespace=strip)


# ================================================================================================================
# hold_back_point

# -- U+FFFD (a multi-byte character cut in two) is never sent


@pytest.mark.parametrize("heal", [False, True])
@pytest.mark.parametrize("strip", [False, True])
@pytest.mark.parametrize("garbage", [REPLACEMENT_CHAR, REPLACEMENT_CHAR * 3])
def test_replacement_char_is_never_sent(heal: bool, strip: bool, garbage: str) -> None:
    text = "Hello world" + garbage
    n = cut(text, heal=heal, strip=strip)
    assert REPLACEMENT_CHAR not in text[:n]
    assert n == (5 if heal else 11)


def test_replacement_char_after_whitespace_with_strip() -> None:
    assert cut("Hello \ufffd", strip=True) == 5
    assert cut("Hello \ufffd", strip=False) == 6


def test_replacement_char_inside_the_text_is_kept() -> None:
    # Only a trailing U+FFFD is a cut character; one inside the text is the text's own.
    assert cut("a\ufffdb") == 3


# -- trailing whitespace is held for prefill


@pytest.mark.parametrize("ws", [" ", "  ", "\n", "\n\n", "\t", " \n \t", "\r\n", "\u3000", "\u00a0"])
def test_trailing_whitespace_is_held_for_prefill(ws: str) -> None:
    text = "Hello world" + ws
    assert cut(text, strip=True) == 11
    assert cut(text, strip=False) == len(text)  # other dialects send it as it is
    assert cut(text, strip=True, heal=True) == 11


def test_all_whitespace_text_sends_nothing_for_prefill() -> None:
    assert cut("\n\n  ", strip=True) == 0
    assert cut("", strip=True) == 0
    assert cut("", heal=True) == 0


@pytest.mark.parametrize("length", [HOLD_WINDOW - 1, HOLD_WINDOW, HOLD_WINDOW + 1, 300])
@pytest.mark.parametrize("ws", [" ", "\n \n"])
def test_a_whitespace_run_longer_than_the_window_is_held_whole_for_prefill(length: int, ws: str) -> None:
    """BUG: with strip_whitespace, the whole trailing run must be held (Anthropic refuses any trailing
    whitespace). A run longer than HOLD_WINDOW (256) is only stripped inside the window: ``text =
    tail[-HOLD_WINDOW:]`` is all whitespace, ``ws_cut`` is 0, and the function returns ``base + 0``, a cut
    inside the run (for length=300: 44 instead of 1)."""
    text = "x" + (ws * length)[:length]
    assert cut(text, strip=True) == 1
    assert cut(text, strip=True, heal=True) == 1


# -- heal cuts where a word ends and something else follows: the model's own tokens always break there


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello world", "Hello"),
        ("Hello, world", "Hello"),  # the comma may share a token with what follows it; "Hello" never does
        ("Hello world.", "Hello world"),
        ("Hello world!!!", "Hello world"),
        ("Hello\n\nworld", "Hello"),
        ("Hello world  ", "Hello world"),
        ("The light.\n\n", "The light"),  # ".\n\n" can be one token: cut before it
        ("Luna'", "Luna"),  # "'s" is a token of its own: never cut inside it
        ("def f(x):\n    return", "def f(x"),
        ("日本語 テキスト", "日本語"),
        ("price: 42", "price"),
    ],
)
def test_heal_holds_the_last_word(text: str, expected: str) -> None:
    assert text[: cut(text, heal=True)] == expected


def test_heal_never_reaches_back_to_the_floor() -> None:
    text = "Hello world"
    assert cut(text, heal=True, floor=4) == 5
    assert cut(text, heal=True, floor=5) == 11  # would be the floor itself: no progress, so no heal
    assert cut(text, heal=True, floor=8) == 11
    assert cut("Hello world  ", heal=True, floor=11) == 13  # the held whitespace too
    # ...but the whitespace a prefill dialect must not send is held whatever the floor
    assert cut("Hello world  ", heal=True, floor=11, strip=True) == 11


def test_heal_holds_at_most_max_hold() -> None:
    word = "x" * (MAX_HOLD + 1)
    assert cut("Hello " + word, heal=True) == 6 + len(word)  # too long to hold: sent as it is
    word = "x" * (MAX_HOLD - 1)
    assert cut("Hello " + word, heal=True) == 5


def test_heal_of_a_single_word() -> None:
    assert cut("Hello", heal=True) == 5  # the cut would be 0 == floor: no heal


# -- offsets and bounded work


class HugeTail:
    """A virtual string of ``size`` characters ("ab ab ab ..." ending in ``end``) that records every slice
    taken of it, to show that hold_back_point reads only a bounded tail."""

    def __init__(self, size: int, end: str) -> None:
        self.size, self.end = size, end
        self.reads: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return self.size

    def char(self, i: int) -> str:
        j = i - (self.size - len(self.end))
        return self.end[j] if j >= 0 else "ab "[i % 3]

    def __getitem__(self, index: Any) -> str:
        assert isinstance(index, slice), "only slices expected"
        start, stop, step = index.indices(self.size)
        assert step == 1
        self.reads.append((start, stop))
        assert stop - start <= 4 * HOLD_WINDOW, "read more than a bounded tail"
        return "".join(self.char(i) for i in range(start, stop))

    def rstrip(self, *args: Any) -> Any:
        raise AssertionError("the whole text was scanned")

    def __iter__(self) -> Any:
        raise AssertionError("the whole text was iterated")


@pytest.mark.parametrize("heal", [False, True])
@pytest.mark.parametrize("strip", [False, True])
def test_only_a_bounded_tail_is_read(heal: bool, strip: bool) -> None:
    size = 10**12  # a terabyte of text: any scan of it would never finish
    tail = HugeTail(size, " the end of a very long answer  \ufffd")
    n = hold_back_point(tail, 0, floor=0, heal=heal, strip_whitespace=strip)  # type: ignore[arg-type]
    assert tail.reads
    assert all(start >= size - HOLD_WINDOW for start, _ in tail.reads)
    # U+FFFD is never sent; the trailing whitespace is held for prefill, and held alone by a heal
    assert n == (size - 1 if not (heal or strip) else size - 3)


text_alphabet = st.sampled_from([*"ab ,.\n\t日😀", REPLACEMENT_CHAR, "  ", "word", " x", "<code>", "</b"])
texts = st.lists(text_alphabet, max_size=400).map("".join)


@SETTINGS
@given(text=texts, data=st.data(), heal=st.booleans(), strip=st.booleans())
def test_offset_is_absolute(text: str, data: st.DataObject, heal: bool, strip: bool) -> None:
    """Passing the tail from any offset (leaving at least HOLD_WINDOW chars) gives the same absolute cut."""
    offset = data.draw(st.integers(0, max(0, len(text) - HOLD_WINDOW)))
    floor = data.draw(st.integers(0, len(text)))
    whole = hold_back_point(text, 0, floor=floor, heal=heal, strip_whitespace=strip)
    part = hold_back_point(text[offset:], offset, floor=floor, heal=heal, strip_whitespace=strip)
    assert whole == part


@SETTINGS
@given(text=texts, data=st.data(), heal=st.booleans(), strip=st.booleans())
def test_shortcut_agrees_with_general_rule(text: str, data: st.DataObject, heal: bool, strip: bool) -> None:
    """hold_back_point's shortcut for a word ending near the end gives exactly the general rule's answer."""
    offset = data.draw(st.integers(0, 1000))
    floor = data.draw(st.integers(0, offset + len(text)))
    fast = hold_back_point(text, offset, floor=floor, heal=heal, strip_whitespace=strip)
    assert fast == _hold_back_point(text, offset, floor=floor, heal=heal, strip_whitespace=strip)


@SETTINGS
@given(
    text=texts,
    piece=st.sampled_from(
        [
            *"ab ,.\n\t_日😀<>",
            REPLACEMENT_CHAR,
            " x",
            " word",
            "x ",
            ", and",
            "4",
            " a b",
            " ab.",
            ".x ",
            " \ufffd",
            "</",
        ]
    ),
)
def test_a_word_ending_before_the_last_piece_is_where_a_heal_cuts(text: str, piece: str) -> None:
    """word_ends_before, the shortcut for a streamed token, agrees with hold_back_point's rule."""
    assume(text)
    whole = text + piece
    expected = [hold_back_point(whole, 0, floor=0, heal=True, strip_whitespace=strip) for strip in (False, True)]
    if word_ends_before(text, piece):
        assert expected == [len(text), len(text)]


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("The JSON object is:\n\n<code>{", "The JSON object is"),
        ("1. <strong>Start with the basics</strong>.", "1. <strong>Start with the basics"),
        ("see <a href", "see"),
        ("a < b and c", "a < b and"),  # a comparison is no tag
    ],
)
def test_a_heal_never_cuts_inside_a_markup_tag(text: str, sent: str) -> None:
    # Gemma's tokenizer has whole tags ("<code>", "</strong>") as single tokens: the end of the word that opens a
    # tag is no token boundary, so the cut goes before the tag.
    for strip in (False, True):
        assert hold_back_point(text, 0, floor=0, heal=True, strip_whitespace=strip) == len(sent)
    assert not word_ends_before("x <code", ">")
    assert not word_ends_before("the </strong", ">.")
    assert word_ends_before("a < b", " and")


@SETTINGS
@given(text=texts, floor=st.integers(0, 400), heal=st.booleans(), strip=st.booleans())
def test_hold_back_invariants(text: str, floor: int, heal: bool, strip: bool) -> None:
    n = hold_back_point(text, 0, floor=floor, heal=heal, strip_whitespace=strip)
    assert 0 <= n <= len(text)
    # the cut character(s) at the very end are never sent (a U+FFFD inside the text is the text's own)
    assert n <= len(text.rstrip(REPLACEMENT_CHAR))
    plain = hold_back_point(text, 0, floor=floor, heal=False, strip_whitespace=strip)
    if heal:
        # a heal holds back more than the plain cut, never reaches the floor, and holds at most MAX_HOLD
        assert n <= plain
        assert n == plain or (n > floor and len(text.rstrip(REPLACEMENT_CHAR)) - n <= MAX_HOLD)
    else:
        assert text[n:].strip(REPLACEMENT_CHAR + " \n\t") == ""  # only garbage and whitespace held


whitespace_heavy = st.lists(st.sampled_from(["a", " ", "\n", "\t", " " * 100, "\n" * 100]), max_size=12).map("".join)


@SETTINGS
@given(text=whitespace_heavy, heal=st.booleans(), floor=st.integers(0, 1300))
def test_prefill_cut_never_ends_in_whitespace(text: str, heal: bool, floor: int) -> None:
    """Fails on the >HOLD_WINDOW whitespace-run bug above."""
    n = hold_back_point(text, 0, floor=floor, heal=heal, strip_whitespace=True)
    assert not text[:n][-1:].isspace()


# ================================================================================================================
# Seam


def join(plan: SeamPlan, pieces: list[str]) -> tuple[str, Seam]:
    seam = Seam(plan)
    out = "".join(seam.feed(piece) for piece in pieces)
    return out + seam.finish(), seam


def test_plain_round_passes_everything() -> None:
    out, seam = join(SeamPlan(), ["Hello", " world", ""])
    assert out == "Hello world"
    assert seam.actions == []


# -- echo


@pytest.mark.parametrize("mode", ["maybe", "always"])
def test_echo_split_across_pieces_is_stripped(mode: Any) -> None:
    plan = SeamPlan(sent="Hello", echo=mode)
    seam = Seam(plan)
    assert seam.feed("Hel") == ""
    assert seam.feed("lo wor") == " wor"
    assert seam.feed("ld!") == "ld!"
    assert seam.finish() == ""
    assert seam.actions == ["echo_stripped"]


def test_echo_and_first_token_in_one_piece() -> None:
    out, seam = join(SeamPlan(sent="Hello", echo="maybe"), ["Hello world"])
    assert out == " world"
    assert seam.actions == ["echo_stripped"]


def test_echo_divergence_releases_everything() -> None:
    seam = Seam(SeamPlan(sent="Hello", echo="maybe"))
    assert seam.feed("Hel") == ""
    assert seam.feed("p me") == "Help me"
    assert seam.actions == []


def test_maybe_echo_keeps_a_short_reply_that_matches_the_prefix() -> None:
    out, _ = join(SeamPlan(sent="Hello world", echo="maybe"), ["Hello"])
    assert out == "Hello"


def test_always_echo_drops_a_partial_echo() -> None:
    out, seam = join(SeamPlan(sent="Hello world", echo="always"), ["Hello"])
    assert out == ""
    assert seam.actions == ["echo_stripped"]


def test_never_echo_keeps_a_reply_equal_to_the_prefix() -> None:
    out, _ = join(SeamPlan(sent="ha", echo="never"), ["ha", " ha"])
    assert out == "ha ha"


# -- overlap


def test_repeated_tail_is_removed() -> None:
    sent = "The cat sat on the mat and then"
    out, seam = join(SeamPlan(sent=sent, remove_overlap=True), ["mat and", " then", " it slept."])
    assert out == " it slept."
    assert seam.actions == ["overlap_removed:12"]


def test_short_repeated_tail_is_kept() -> None:
    out, seam = join(SeamPlan(sent="The cat sat then", remove_overlap=True), [" then it slept."])
    assert out == " then it slept."
    out, seam = join(SeamPlan(sent="The cat sat then", remove_overlap=True), ["then it slept."])
    assert out == "then it slept."  # 4 chars, nothing held to confirm it: could be the text's own
    assert "doubt:repeat_kept:4" in seam.actions  # kept, and the doubt recorded


def test_non_unique_tail_is_kept() -> None:
    sent = "abcdefgh abcdefgh"
    out, seam = join(SeamPlan(sent=sent, remove_overlap=True), ["abcdefgh more"])
    assert out == "abcdefgh more"
    assert "doubt:repeat_kept:8" in seam.actions and not any(a.startswith("overlap") for a in seam.actions)


def test_overlap_only_in_the_instruction_dialect() -> None:
    sent = "The cat sat on the mat and then"
    out, _ = join(SeamPlan(sent=sent, remove_overlap=False), ["mat and then it slept."])
    assert out == "mat and then it slept."


def test_reply_entirely_inside_the_window_is_decided_at_the_end() -> None:
    sent = "one two three four five six"
    seam = Seam(SeamPlan(sent=sent, remove_overlap=True))
    assert seam.feed("two three") == ""  # could still grow into a repeat of the tail
    assert seam.finish() == "two three"  # not a tail: kept


# -- reconcile


@pytest.mark.parametrize(
    ("held", "pieces", "expected", "action"),
    [
        (" wor", [" world", " is"], " world is", "healed"),
        (" brown", [" bro", "wn fox"], " brown fox", "healed"),
        (" brown", [" red", " fox"], " red fox", "heal_diverged"),
        (" brown", [], " brown", "held_kept"),
        ("  ", ["Foo"], "  Foo", "whitespace_restored"),
        ("\n\n", ["\n\nFoo"], "\n\nFoo", None),
        ("\n\n", ["\n", "\nFoo"], "\n\nFoo", None),
        ("\n\n", ["\nFoo"], "\n\nFoo", "whitespace_restored"),
        ("\n", [], "\n", None),
        ("\n", ["\n"], "\n", None),
    ],
)
def test_reconcile(held: str, pieces: list[str], expected: str, action: str | None) -> None:
    out, seam = join(SeamPlan(sent="Hello", held=held), pieces)
    assert out == expected
    if action is not None:
        assert action in seam.actions


def test_abort_returns_the_held_text_not_yet_reemitted() -> None:
    seam = Seam(SeamPlan(sent="The quick", held=" brown"))
    assert seam.abort() == " brown"
    seam = Seam(SeamPlan(sent="The quick", held=" brown"))
    assert seam.feed(" bro") == " "
    assert seam.abort() == "brown"
    seam = Seam(SeamPlan(sent="The quick", held=" brown"))
    assert seam.feed(" brown fox") == " brown fox"
    assert seam.abort() == ""


# -- restart


@pytest.mark.parametrize("pieces", [["The answer is 42"], ["The ans", "wer is", " 42"], ["\n  The answer is"]])
def test_restart_is_recognised(pieces: list[str]) -> None:
    out, seam = join(SeamPlan(sent="The answer is 4", restart_probe="The answer is"), pieces)
    assert seam.restarted
    assert out == ""


def test_continuation_is_not_a_restart() -> None:
    out, seam = join(SeamPlan(sent="The answer is 4", restart_probe="The answer is"), ["2, because."])
    assert not seam.restarted
    assert out == "2, because."


FIRST = "Hello! How are you?\n\nI am fine."


def _splits(text: str) -> list[list[str]]:
    """The reply whole, in characters, and in pieces of 5."""
    return [[text], list(text), [text[i : i + 5] for i in range(0, len(text), 5)]]


@pytest.mark.parametrize("pieces", _splits(FIRST))
def test_round_one_reply_again_is_a_restart_under_greedy_decoding(pieces: list[str]) -> None:
    # A host that ignored the prefix writes round 1's reply again, whole (no echo: nothing was received).
    plan = SeamPlan(sent=FIRST + " And", held=" you", echo="maybe", restart_probe="Hello! How", restart_reply=FIRST)
    out, seam = join(plan, pieces)
    assert seam.restarted
    assert out == ""


@pytest.mark.parametrize("pieces", _splits("Hello! How are you?\n\nHello! How are you?\n\nI am"))
def test_the_opening_written_again_is_kept_when_the_reply_leaves_round_one(pieces: list[str]) -> None:
    # Greedy decoding, no echo: the reply begins with the opening but is not round 1's reply, so the host received
    # the prefix and the model, continuing, loops back to its opening. The text is the model's: kept.
    plan = SeamPlan(sent=FIRST + " And", held=" you", echo="maybe", restart_probe="Hello! How", restart_reply=FIRST)
    out, seam = join(plan, [" you.\n\n", *pieces])
    assert not seam.restarted
    assert out == " you.\n\n" + "".join(pieces)
    plan = SeamPlan(sent=FIRST + " And", echo="maybe", restart_probe="Hello! How", restart_reply=FIRST)
    out, seam = join(plan, pieces)
    assert not seam.restarted
    assert "opening_repeated" in seam.actions
    assert out == "".join(pieces)


@pytest.mark.parametrize("greedy", [False, True])
def test_an_echo_beyond_round_one_proves_the_prefix_was_received(greedy: bool) -> None:
    # llama.cpp echoes the prefix: the host received it, and the opening that follows is the model looping.
    sent = FIRST + " And you?"
    again = "\n\nHello! How are you?\n\nI am fine."
    plan = SeamPlan(sent=sent, echo="maybe", restart_probe="Hello! How", restart_reply=FIRST if greedy else "")
    for pieces in _splits(sent + again):
        out, seam = join(plan, pieces)
        assert not seam.restarted
        assert out == again
        assert seam.actions == ["echo_stripped", "opening_repeated"]


def test_an_echo_of_round_one_then_its_opening_again_is_kept_under_greedy_decoding() -> None:
    # Round 2 on llama.cpp: the prefix sent is round 1's reply without its held tail, so its echo alone could be
    # round 1's reply written again; the reply goes on past round 1's end, so the host received the prefix.
    sent, held = "Hello! How are you?", "\n\n"
    reply = sent + "\n\nHello! How are you?\n\nHello!"
    plan = SeamPlan(sent=sent, held=held, echo="maybe", restart_probe="Hello! How", restart_reply=sent + held)
    for pieces in _splits(reply):
        out, seam = join(plan, pieces)
        assert not seam.restarted
        assert out == "\n\nHello! How are you?\n\nHello!"
    # Without greedy decoding the echo alone is the evidence.
    out, seam = join(SeamPlan(sent=sent, held=held, echo="maybe", restart_probe="Hello! How"), [reply])
    assert not seam.restarted
    assert out == "\n\nHello! How are you?\n\nHello!"


def test_the_opening_in_place_of_a_held_word_is_a_restart() -> None:
    # A host that took the prefix for a finished turn and answered anew (greedy, but not round 1's reply): the
    # reply begins with the opening where a model continuing would have written the held word first.
    plan = SeamPlan(sent=FIRST + " And", held=" you", echo="maybe", restart_probe="Hello! How", restart_reply=FIRST)
    for pieces in _splits("Hello! How nice to see you."):
        out, seam = join(plan, pieces)
        assert seam.restarted
        assert out == ""


def test_without_evidence_the_opening_is_a_restart() -> None:
    # Not greedy, no echo: as before, a reply beginning with the answer's opening is taken for a restart.
    out, seam = join(SeamPlan(sent=FIRST + " And", echo="maybe", restart_probe="Hello! How"), ["Hello! How do"])
    assert seam.restarted
    assert out == ""


# -- the whole seam, any split of any reply


@st.composite
def seam_cases(draw: st.DrawFn) -> tuple[SeamPlan, list[str], str]:
    """(plan, reply pieces, expected output): the model continues sent + held exactly."""
    words = st.sampled_from(["a", "b", " c", "  ", "\n", "日本", "😀", ".", ",", " the", " end"])
    text = draw(st.lists(words, min_size=1, max_size=30).map("".join))
    new = draw(st.lists(words, max_size=20).map("".join))
    heal = draw(st.booleans())
    strip = draw(st.booleans())
    n = hold_back_point(text, 0, floor=0, heal=heal, strip_whitespace=strip)
    sent, held = text[:n], text[n:]
    echo = draw(st.sampled_from(["never", "maybe", "always"]))
    echoes = echo == "always" or (echo == "maybe" and draw(st.booleans()))
    reply = (sent if echoes else "") + held + new
    if echo == "maybe" and not echoes:
        assume(not (held + new).startswith(sent) or not sent)  # indistinguishable from an echo
    cuts = sorted(draw(st.lists(st.integers(0, len(reply)), max_size=6)))
    pieces = [reply[i:j] for i, j in zip([0, *cuts], [*cuts, len(reply)], strict=True)]
    return SeamPlan(sent=sent, held=held, echo=echo), pieces, held + new


@SETTINGS
@given(case=seam_cases())
def test_seam_joins_any_split(case: tuple[SeamPlan, list[str], str]) -> None:
    plan, pieces, expected = case
    out, _ = join(plan, pieces)
    assert out == expected
