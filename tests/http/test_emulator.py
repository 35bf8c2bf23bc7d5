"""Tests of the provider emulator (tests/support/emulator), driven through the real ``openai`` SDK.

These pin down the contract the library's own tests rely on: each persona's prefill dialect, streaming
shape, usage/cache accounting, and -- most importantly for the retry classifier -- which SDK exception a
client sees for each injected fault:

    Fault("status", 429)          -> openai.RateLimitError; Retry-After and retry-after-ms readable from
                                     exc.response.headers
    Fault("status", 500/503/...)  -> openai.InternalServerError (any status >= 500)
    Fault("status", 400)          -> openai.BadRequestError (other 4xx: the SDK's per-status subclasses)
    Fault("delay") + short timeout-> openai.APITimeoutError (subclass of APIConnectionError), from create()
    slow stream + short timeout   -> openai.APITimeoutError raised while iterating the stream
    Fault("drop") non-stream      -> openai.APIConnectionError, __cause__ httpx2.RemoteProtocolError
                                     ("Server disconnected without sending a response.")
    Fault("drop") stream          -> openai.APIConnectionError raised while iterating, after the first
                                     `after_chunks` events were delivered; __cause__
                                     httpx2.RemoteProtocolError ("peer closed connection without sending
                                     complete message body")
    Fault("malformed_sse")        -> json.JSONDecodeError (NOT an openai.* exception; a ValueError) raised
                                     while iterating, after `after_chunks` good events
    Fault("truncated_json")       -> json.JSONDecodeError (NOT an openai.* exception) raised by create()
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.common import eventually
from tests.support.emulator import PREFIX_NOT_IN_TARGET, Emulator, Fault, Script, tokenize

TARGET = (
    "The quick brown fox jumps over the lazy dog. It was a sunny day, and the fox -- being quick -- "
    "ran off into the forest!\n\nThe end."
)
USER: Any = {"role": "user", "content": "Tell me the story."}


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def make_client(emu: Emulator) -> Iterator[Callable[..., openai.OpenAI]]:
    """OpenAI clients for a persona, closed at teardown (so their connections do not leak into stats)."""
    clients: list[openai.OpenAI] = []

    def make(persona: str, **kwargs: Any) -> openai.OpenAI:
        client = openai.OpenAI(base_url=emu.base_url(persona), api_key="test", max_retries=0, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def collect_stream(stream: Any) -> tuple[list[Any], list[str | None], str | None, Any]:
    """(chunks, content deltas of choice 0, finish_reason, usage) from an SDK stream."""
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices]
    finish = next((c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason), None)
    usage = next((c.usage for c in chunks if c.usage is not None), None)
    return chunks, deltas, finish, usage


# ---------------------------------------------------------------------------------------------- tokenizer


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_tokenize_is_lossless(text: str) -> None:
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert all(tokens)


@given(st.text(alphabet=st.sampled_from(list(" \n\t\r.,!?-_aZ9é日\u00a0\u2028"))))
@settings(max_examples=300, deadline=None)
def test_tokenize_is_lossless_on_whitespace_and_punctuation(text: str) -> None:
    tokens = tokenize(text)
    assert "".join(tokens) == text
    # Newline runs are tokens of their own.
    assert all(set(t) == {"\n"} for t in tokens if "\n" in t)


def test_tokenize_examples() -> None:
    assert tokenize("Hello, world!  How") == ["Hello", ",", " world", "!", " ", " How"]
    assert tokenize("a\n\n b") == ["a", "\n\n", " b"]
    assert tokenize("") == []


# ---------------------------------------------------------------------------------------------- basics


def test_first_request_non_stream_shape_and_usage(emu: Emulator, make_client: Any) -> None:
    client = make_client("openai")
    model = emu.add_script(Script(target=TARGET))
    r = client.chat.completions.create(model=model, messages=[USER], max_tokens=4)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == model
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "The quick brown fox"
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].logprobs is None
    assert r.usage is not None
    assert r.usage.prompt_tokens == 1 + len(tokenize(USER["content"]))
    assert r.usage.completion_tokens == 4
    assert r.usage.total_tokens == r.usage.prompt_tokens + 4
    assert r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 0

    r = client.chat.completions.create(model=model, messages=[USER], max_tokens=1000)
    assert r.choices[0].message.content == TARGET
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.completion_tokens == len(tokenize(TARGET))


def test_stream_shape_with_and_without_include_usage(emu: Emulator, make_client: Any) -> None:
    client = make_client("openai")
    model = emu.add_script(Script(target=TARGET))
    stream = client.chat.completions.create(
        model=model, messages=[USER], max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    chunks, deltas, finish, usage = collect_stream(stream)
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content == ""
    assert deltas == ["", "The", " quick", " brown", None]  # role chunk, 3 tokens, finish chunk
    assert finish == "length"
    assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens == 3
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)

    stream = client.chat.completions.create(model=model, messages=[USER], max_tokens=3, stream=True)
    chunks, deltas, finish, usage = collect_stream(stream)
    assert usage is None and all(c.choices for c in chunks)
    assert "".join(d or "" for d in deltas) == "The quick brown"


def test_usage_false_omits_usage(emu: Emulator, make_client: Any) -> None:
    client = make_client("openai")
    model = emu.add_script(Script(target=TARGET, usage=False))
    r = client.chat.completions.create(model=model, messages=[USER], max_tokens=3)
    assert r.usage is None
    stream = client.chat.completions.create(
        model=model, messages=[USER], max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    chunks, _, _, usage = collect_stream(stream)
    assert usage is None and all(c.choices for c in chunks)


def test_unknown_model_and_path_are_404(emu: Emulator, make_client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        make_client("openai").chat.completions.create(model="nope", messages=[USER])
    assert info.value.code == "model_not_found"
    client = openai.OpenAI(base_url=emu.url + "/nowhere/v1", api_key="test", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=emu.add_script(Script(target="x")), messages=[USER])
    client.close()
    with pytest.raises(ValueError):
        emu.base_url("nowhere")


def test_requests_log(emu: Emulator, make_client: Any) -> None:
    client = make_client("vllm")
    model = emu.add_script(Script(target=TARGET))
    messages = [USER, {"role": "assistant", "content": "The quick"}]
    client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=2,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    (entry,) = emu.requests(model)
    assert entry["path"] == "/vllm/v1/chat/completions"
    assert entry["body"]["messages"] == messages
    assert entry["body"]["continue_final_message"] is True
    assert entry["headers"]["authorization"] == "Bearer test"
    assert entry["headers"]["content-type"] == "application/json"
    assert entry["mode"] == "prefill"


# ---------------------------------------------------------------------------------------------- personas

# persona -> (assistant message for prefix P, extra_body, reply echoes P)
PrefillSpec = tuple[Callable[[str], dict[str, Any]], dict[str, Any], bool]
PREFILL: dict[str, PrefillSpec] = {
    "anthropic": (lambda p: {"role": "assistant", "content": p}, {}, False),
    "dashscope": (lambda p: {"role": "assistant", "content": p, "partial": True}, {}, False),
    "kimi": (lambda p: {"role": "assistant", "content": p, "partial": True}, {}, False),
    "deepseek-beta": (lambda p: {"role": "assistant", "content": p, "prefix": True}, {}, False),
    "mistral": (lambda p: {"role": "assistant", "content": p, "prefix": True}, {}, True),
    "vllm": (
        lambda p: {"role": "assistant", "content": p},
        {"continue_final_message": True, "add_generation_prompt": False},
        False,
    ),
    "sglang": (lambda p: {"role": "assistant", "content": p}, {"continue_final_message": True}, False),
    "llamacpp": (lambda p: {"role": "assistant", "content": p}, {}, True),
    "llamacpp-flags": (
        lambda p: {"role": "assistant", "content": p},
        {"continue_final_message": True, "add_generation_prompt": False},
        True,
    ),
    "openrouter": (lambda p: {"role": "assistant", "content": p}, {}, False),
    "ollama": (lambda p: {"role": "assistant", "content": p}, {}, False),
}


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
@pytest.mark.parametrize("name", sorted(PREFILL))
def test_prefill_continuation_loop(emu: Emulator, make_client: Any, name: str, stream: bool) -> None:
    """A minimal continuation loop reassembles the target exactly, in every prefill dialect."""
    persona = name.split("-flags")[0]
    message, extra_body, echoes = PREFILL[name]
    client = make_client(persona)
    model = emu.add_script(Script(target=TARGET))
    text = ""
    for _ in range(20):
        messages = [USER, message(text)] if text else [USER]
        if stream:
            _, deltas, finish, _ = collect_stream(
                client.chat.completions.create(
                    model=model, messages=messages, max_tokens=7, stream=True, extra_body=extra_body
                )
            )
            content = "".join(d or "" for d in deltas)
        else:
            r = client.chat.completions.create(model=model, messages=messages, max_tokens=7, extra_body=extra_body)
            content, finish = r.choices[0].message.content or "", r.choices[0].finish_reason
        if echoes and text:
            assert content.startswith(text)
            content = content[len(text) :]
        elif text:
            assert not content.startswith(text[:10])  # continuation only
        text += content
        if finish == "stop":
            break
        assert finish == "length"
    assert text == TARGET
    log = emu.requests(model)
    assert [e["mode"] for e in log] == ["first"] + ["prefill"] * (len(log) - 1)


@pytest.mark.parametrize("persona", ["openai", "claude46"])
def test_instruction_continuation(emu: Emulator, make_client: Any, persona: str) -> None:
    client = make_client(persona)
    model = emu.add_script(Script(target=TARGET))
    partial = "The quick brown fox jumps"
    messages = [USER, {"role": "assistant", "content": partial}, {"role": "user", "content": "Continue."}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=3)
    assert r.choices[0].message.content == " over the lazy"
    # A previous assistant message that is not part of the target: a fresh answer.
    messages[1] = {"role": "assistant", "content": "Something else"}
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    assert r.choices[0].message.content == "The quick"
    assert [e["mode"] for e in emu.requests(model)] == ["instruction", "first"]


def test_instruction_continuation_with_overlap(emu: Emulator, make_client: Any) -> None:
    client = make_client("openai")
    model = emu.add_script(Script(target=TARGET, overlap=6))
    partial = "The quick brown fox jumps"
    messages = [USER, {"role": "assistant", "content": partial}, {"role": "user", "content": "Continue."}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=4)
    content = r.choices[0].message.content or ""
    assert content.startswith(" jumps")  # the last 6 chars of the partial, repeated
    assert TARGET.startswith(partial[:-6] + content)


@pytest.mark.parametrize(
    ("persona", "message", "extra_body"),
    [
        ("openai", {"role": "assistant", "content": "The quick"}, {}),
        ("dashscope", {"role": "assistant", "content": "The quick"}, {}),
        ("kimi", {"role": "assistant", "content": "The quick"}, {}),
        ("deepseek-beta", {"role": "assistant", "content": "The quick"}, {}),
        ("vllm", {"role": "assistant", "content": "The quick"}, {}),
        ("sglang", {"role": "assistant", "content": "The quick"}, {}),
    ],
)
def test_trailing_assistant_without_flag_restarts(
    emu: Emulator, make_client: Any, persona: str, message: dict[str, Any], extra_body: dict[str, Any]
) -> None:
    model = emu.add_script(Script(target=TARGET))
    r = make_client(persona).chat.completions.create(
        model=model,
        messages=[USER, message],
        max_tokens=3,
        extra_body=extra_body,
    )
    assert r.choices[0].message.content == "The quick brown"
    assert emu.requests(model)[0]["mode"] == "restart"


@pytest.mark.parametrize(
    ("persona", "message", "extra_body", "error"),
    [
        (
            "claude46",
            {"role": "assistant", "content": "The quick"},
            {},
            "This model does not support assistant message prefill. The conversation must end with a user message.",
        ),
        (
            "anthropic",
            {"role": "assistant", "content": "The quick "},
            {},
            "messages: final assistant content cannot end with trailing whitespace",
        ),
        (
            "deepseek",
            {"role": "assistant", "content": "The quick", "prefix": True},
            {},
            'prefix is only available when using beta api (set base_url="https://api.deepseek.com/beta")',
        ),
        (
            "mistral",
            {"role": "assistant", "content": "The quick"},
            {},
            "Expected last role User or Tool (or Assistant with prefix True) for serving but got assistant",
        ),
        (
            "vllm",
            {"role": "assistant", "content": "The quick"},
            {"continue_final_message": True},
            "continue_final_message and add_generation_prompt are not compatible",
        ),
        (
            "vllm",
            {"role": "assistant", "content": "The quick"},
            {"continue_final_message": True, "add_generation_prompt": True},
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
        ),
        (
            "llamacpp",
            {"role": "assistant", "content": "The quick"},
            {"continue_final_message": True, "add_generation_prompt": True},
            "continue_final_message and add_generation_prompt are mutually exclusive",
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
def test_persona_errors(
    emu: Emulator,
    make_client: Any,
    persona: str,
    message: dict[str, Any],
    extra_body: dict[str, Any],
    error: str,
    stream: bool,
) -> None:
    model = emu.add_script(Script(target=TARGET))
    with pytest.raises(openai.BadRequestError) as info:
        make_client(persona).chat.completions.create(
            model=model, messages=[USER, message], max_tokens=3, extra_body=extra_body, stream=stream
        )
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict)
    assert info.value.body["message"] == error
    assert info.value.body["type"] == "invalid_request_error"


def test_deepseek_paths(emu: Emulator) -> None:
    model = emu.add_script(Script(target=TARGET))
    for base in (emu.base_url("deepseek"), emu.url + "/deepseek/v1", emu.base_url("deepseek-beta")):
        assert base in (emu.url + "/deepseek", emu.url + "/deepseek/v1", emu.url + "/deepseek/beta")
        with openai.OpenAI(base_url=base, api_key="test", max_retries=0) as client:
            r = client.chat.completions.create(model=model, messages=[USER], max_tokens=2)
            assert r.choices[0].message.content == "The quick"


def test_llamacpp_stream_echo_glued_to_first_token(emu: Emulator, make_client: Any) -> None:
    client = make_client("llamacpp")
    prefix = "The quick brown fox"
    messages = [USER, {"role": "assistant", "content": prefix}]
    model = emu.add_script(Script(target=TARGET))
    _, deltas, _, _ = collect_stream(
        client.chat.completions.create(model=model, messages=messages, max_tokens=2, stream=True)
    )
    assert deltas == ["", prefix + " jumps", " over", None]

    model = emu.add_script(Script(target=TARGET, echo_chunks=3))
    _, deltas, _, usage = collect_stream(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert deltas == ["", "The qui", "ck bro", "wn fox jumps", " over", None]
    assert usage.completion_tokens == 2  # the echo is not counted
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_mistral_stream_echo_comes_first(emu: Emulator, make_client: Any) -> None:
    client = make_client("mistral")
    prefix = "The quick brown fox"
    messages = [USER, {"role": "assistant", "content": prefix, "prefix": True}]
    model = emu.add_script(Script(target=TARGET, echo_chunks=2))
    _, deltas, finish, _ = collect_stream(
        client.chat.completions.create(model=model, messages=messages, max_tokens=2, stream=True)
    )
    assert deltas == ["", "The quick ", "brown fox", " jumps", " over", None]
    assert finish == "length"
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    assert r.choices[0].message.content == prefix + " jumps over"
    assert r.usage is not None and r.usage.completion_tokens == 2


def test_cached_tokens_grow_across_rounds(emu: Emulator, make_client: Any) -> None:
    client = make_client("deepseek-beta")
    model = emu.add_script(Script(target=TARGET))
    text, cached, prompts = "", [], []
    for _ in range(4):
        messages = [USER, {"role": "assistant", "content": text, "prefix": True}] if text else [USER]
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=5)
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        cached.append(r.usage.prompt_tokens_details.cached_tokens)
        prompts.append(r.usage.prompt_tokens)
        text += r.choices[0].message.content or ""
    assert cached[0] == 0
    assert cached[1] == prompts[0]  # the whole first prompt is a prefix of the second
    assert cached[1] < cached[2] < cached[3]
    assert all(c < p for c, p in zip(cached, prompts, strict=True))
    # A different conversation on the same script only shares the role marker... and nothing else.
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Other"}], max_tokens=1)
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 1


# -------------------------------------------------------------------------------------- generation knobs


def test_token_limits(emu: Emulator, make_client: Any) -> None:
    client = make_client("openai")
    model = emu.add_script(Script(target=TARGET, output_cap=3, default_max_tokens=2))
    assert client.chat.completions.create(model=model, messages=[USER], max_tokens=10).usage.completion_tokens == 3
    assert client.chat.completions.create(model=model, messages=[USER], max_tokens=1).usage.completion_tokens == 1
    assert client.chat.completions.create(model=model, messages=[USER]).usage.completion_tokens == 2
    r = client.chat.completions.create(model=model, messages=[USER], max_completion_tokens=1)
    assert r.choices[0].message.content == "The"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=[USER], max_tokens=0)


def test_prefix_not_in_target_is_loud(emu: Emulator, make_client: Any) -> None:
    model = emu.add_script(Script(target=TARGET))
    r = make_client("deepseek-beta").chat.completions.create(
        model=model,
        messages=[USER, {"role": "assistant", "content": "Once upon", "prefix": True}],
        max_tokens=5,
    )
    assert r.choices[0].message.content == PREFIX_NOT_IN_TARGET
    assert r.choices[0].finish_reason == "stop"


def test_finish_reason_override(emu: Emulator, make_client: Any) -> None:
    client = make_client("openai")
    model = emu.add_script(Script(target=TARGET, finish_reasons={2: "content_filter"}))
    reasons = [client.chat.completions.create(model=model, messages=[USER], max_tokens=2) for _ in range(3)]
    assert [r.choices[0].finish_reason for r in reasons] == ["length", "content_filter", "length"]
    assert {r.choices[0].message.content for r in reasons} == {"The quick"}
    _, _, finish, _ = collect_stream(
        client.chat.completions.create(model=model, messages=[USER], max_tokens=2, stream=True)
    )
    assert finish == "length"


@pytest.mark.parametrize(
    ("mode", "persona", "prefix", "expected"),
    [
        ("empty", "deepseek-beta", "The quick brown fox jumps", ""),
        ("identical", "deepseek-beta", "The quick brown fox jumps", "and so on "),
        ("repeat", "deepseek-beta", "The quick brown fox jumps", "uick brown fox jumps"),
        ("repeat", "deepseek-beta", "The quick brown fox jumps over", "brown fox jumps over"),
        ("repeat", "deepseek-beta", "", "The quick brown fox "),
        ("empty", "mistral", "The quick", "The quick"),  # the echo contract still holds
        ("identical", "openai", "", "and so on "),
    ],
)
def test_runaway_modes(emu: Emulator, make_client: Any, mode: str, persona: str, prefix: str, expected: str) -> None:
    model = emu.add_script(Script(target=TARGET, runaway=mode))
    messages: list[Any] = [USER]
    if prefix:
        messages.append({"role": "assistant", "content": prefix, "prefix": True})
    client = make_client(persona)
    for _ in range(2):
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=50)
        assert r.choices[0].message.content == expected
        assert r.choices[0].finish_reason == "length"
    _, deltas, finish, _ = collect_stream(
        client.chat.completions.create(model=model, messages=messages, max_tokens=50, stream=True)
    )
    assert "".join(d or "" for d in deltas) == expected and finish == "length"


def test_context_window(emu: Emulator, make_client: Any) -> None:
    model = emu.add_script(Script(target=TARGET, context_window=100))
    client = make_client("openai")
    assert client.chat.completions.create(model=model, messages=[USER], max_tokens=50).choices
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=[USER], max_tokens=99)
    assert "This model's maximum context length is 100 tokens" in info.value.message
    assert info.value.code == "context_length_exceeded"


# ---------------------------------------------------------------------------------------------- faults


def test_fault_applies_to_its_ordinal_only(emu: Emulator, make_client: Any) -> None:
    client = make_client("openai")
    model = emu.add_script(Script(target=TARGET, faults={2: Fault("status", status=503)}))
    client.chat.completions.create(model=model, messages=[USER], max_tokens=1)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=model, messages=[USER], max_tokens=1)
    client.chat.completions.create(model=model, messages=[USER], max_tokens=1)
    assert [e.get("fault") for e in emu.requests(model)] == [None, "status", None]


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
def test_fault_429_retry_after(emu: Emulator, make_client: Any, stream: bool) -> None:
    model = emu.add_script(Script(target=TARGET, faults={1: Fault("status", status=429, retry_after=1.5)}))
    with pytest.raises(openai.RateLimitError) as info:
        make_client("openai").chat.completions.create(model=model, messages=[USER], stream=stream)
    headers = info.value.response.headers
    assert headers["retry-after"] == "1.5"
    assert headers["retry-after-ms"] == "1500"
    assert info.value.code == "rate_limit_exceeded"
    model = emu.add_script(Script(target=TARGET, faults={1: Fault("status", status=429, retry_after=2)}))
    with pytest.raises(openai.RateLimitError) as info:
        make_client("openai").chat.completions.create(model=model, messages=[USER], stream=stream)
    assert info.value.response.headers["retry-after"] == "2"


@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (500, openai.InternalServerError),
        (502, openai.InternalServerError),
        (503, openai.InternalServerError),
        (529, openai.InternalServerError),
    ],
)
def test_fault_status(emu: Emulator, make_client: Any, status: int, exc_type: type[Exception]) -> None:
    fault = Fault("status", status=status, message=f"boom {status}")
    model = emu.add_script(Script(target=TARGET, faults={1: fault}))
    with pytest.raises(exc_type) as info:
        make_client("openai").chat.completions.create(model=model, messages=[USER])
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict) and info.value.body["message"] == f"boom {status}"
    assert "retry-after" not in info.value.response.headers


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
def test_fault_delay_times_out(emu: Emulator, make_client: Any, stream: bool) -> None:
    model = emu.add_script(Script(target=TARGET, faults={1: Fault("delay", delay=5)}))
    client = make_client("openai", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError) as info:  # raised by create(), before any chunk
        client.chat.completions.create(model=model, messages=[USER], stream=stream)
    assert time.monotonic() - started < 2
    assert isinstance(info.value.__cause__, httpx2.ReadTimeout)
    # The server noticed the client leaving and stopped sleeping.
    assert eventually(lambda: emu.requests(model)[0].get("cancelled") is True, timeout=3.0)
    # The next request of the script is served normally.
    r = make_client("openai").chat.completions.create(model=model, messages=[USER], max_tokens=1)
    assert r.choices[0].message.content == "The"


def test_slow_stream_times_out_mid_stream(emu: Emulator, make_client: Any) -> None:
    model = emu.add_script(Script(target=TARGET, token_delay=1.0))
    client = make_client("openai", timeout=0.3)
    stream = client.chat.completions.create(model=model, messages=[USER], stream=True)
    with pytest.raises(openai.APITimeoutError):  # raised while iterating
        for _ in stream:
            pass
    stream.close()
    assert eventually(lambda: emu.stats()["active_streams"] == 0, timeout=3.0)


def test_fault_drop_non_stream(emu: Emulator, make_client: Any) -> None:
    model = emu.add_script(Script(target=TARGET, faults={1: Fault("drop")}))
    client = make_client("openai")
    with pytest.raises(openai.APIConnectionError) as info:
        client.chat.completions.create(model=model, messages=[USER])
    assert type(info.value) is openai.APIConnectionError
    assert isinstance(info.value.__cause__, httpx2.RemoteProtocolError)
    # The same client recovers on the next request (new connection).
    assert client.chat.completions.create(model=model, messages=[USER], max_tokens=1).choices


def test_fault_drop_stream(emu: Emulator, make_client: Any) -> None:
    model = emu.add_script(Script(target=TARGET, faults={1: Fault("drop", after_chunks=3)}))
    client = make_client("openai")
    stream = client.chat.completions.create(model=model, messages=[USER], stream=True)  # headers arrive fine
    received = []
    with pytest.raises(openai.APIConnectionError) as info:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "The", " quick"]  # role chunk + 2 tokens, then the connection breaks
    assert type(info.value) is openai.APIConnectionError
    assert isinstance(info.value.__cause__, httpx2.RemoteProtocolError)
    assert eventually(lambda: emu.stats()["active_streams"] == 0, timeout=3.0)


def test_fault_malformed_sse(emu: Emulator, make_client: Any) -> None:
    model = emu.add_script(Script(target=TARGET, faults={1: Fault("malformed_sse", after_chunks=2)}))
    stream = make_client("openai").chat.completions.create(model=model, messages=[USER], stream=True)
    received = []
    # The SDK json-decodes each event without wrapping errors: a bare json.JSONDecodeError (ValueError),
    # not an openai.APIError subclass.
    with pytest.raises(json.JSONDecodeError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "The"]


def test_fault_truncated_json(emu: Emulator, make_client: Any) -> None:
    model = emu.add_script(Script(target=TARGET, faults={1: Fault("truncated_json")}))
    # Likewise a bare json.JSONDecodeError from create(), not an openai.* exception.
    with pytest.raises(json.JSONDecodeError):
        make_client("openai").chat.completions.create(model=model, messages=[USER])


def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Fault("explode")
    with pytest.raises(ValueError):
        Fault("status")
    with pytest.raises(ValueError):
        Script(target="x", runaway="forever")
    script = Script(target="x", faults={3: Fault("drop", after_chunks=2)}, finish_reasons={1: "content_filter"})
    assert Script.from_dict(json.loads(json.dumps(script.to_dict()))) == script


# ---------------------------------------------------------------------------------------------- stats, modes


def test_active_streams_drop_to_zero_after_early_close(emu: Emulator, make_client: Any) -> None:
    model = emu.add_script(Script(target=TARGET * 5, token_delay=0.05))
    stream = make_client("openai").chat.completions.create(model=model, messages=[USER], stream=True)
    before = emu.stats()["streams_cancelled"]
    for i, _ in enumerate(stream):
        if i == 2:
            break
    assert emu.stats()["active_streams"] == 1
    stream.close()
    assert eventually(lambda: emu.stats()["active_streams"] == 0, timeout=3.0)
    stats = emu.stats()
    assert stats["active_streams"] == 0
    assert stats["streams_cancelled"] == before + 1
    assert emu.requests(model)[0]["cancelled"] is True


def test_open_connections_counts_keepalive() -> None:
    with Emulator() as emu:
        assert emu.stats()["open_connections"] == 0  # the stats request's own connection is excluded
        model = emu.add_script(Script(target=TARGET))
        client = openai.OpenAI(base_url=emu.base_url("openai"), api_key="test", max_retries=0)
        client.chat.completions.create(model=model, messages=[USER], max_tokens=1)
        assert emu.stats()["open_connections"] == 1  # idle keep-alive connection
        client.close()
        assert eventually(lambda: emu.stats()["open_connections"] == 0, timeout=3.0)
        stats = emu.stats()
        assert stats["open_connections"] == 0
        assert stats["requests_total"] == 1


def test_subprocess_mode() -> None:
    emu = Emulator(subprocess=True)
    with emu:
        proc = emu._proc  # `python -m tests.support.emulator --port 0`, port taken from its READY line
        assert proc is not None and proc.poll() is None
        assert emu.url == f"http://127.0.0.1:{emu.port}" and emu.port
        model = emu.add_script(Script(target=TARGET, faults={2: Fault("status", status=429, retry_after=0.25)}))
        with openai.OpenAI(base_url=emu.base_url("llamacpp"), api_key="test", max_retries=0) as client:
            messages = [USER, {"role": "assistant", "content": "The quick"}]
            _, deltas, _, _ = collect_stream(
                client.chat.completions.create(model=model, messages=messages, max_tokens=1, stream=True)
            )
            assert deltas == ["", "The quick brown", None]
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(model=model, messages=[USER])
            assert info.value.response.headers["retry-after-ms"] == "250"
        assert len(emu.requests(model)) == 2
        assert emu.stats()["requests_total"] == 2
    assert proc.wait(timeout=5) is not None
