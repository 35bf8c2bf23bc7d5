"""Tests of autocontinue.local against the real llama-server + SmolLM2 engine.

Nothing here is mocked: the engine is built or fetched on first use (minutes the very
first time on a machine, then cached), and every test talks to a real server. The
facts pinned here (echo of a trailing assistant message, finish_reason on a cut, the
context-overflow error) are the ones the library's continuation logic builds on, so a
change of llama.cpp version that alters them fails here first.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from autocontinue import local
from autocontinue.local import LocalEngine, LocalEngineError

# The first run on a fresh machine compiles llama-server (~6 minutes on 2 cores) inside
# the first test's fixture setup; the project default of 300 s would cut it off.
pytestmark = pytest.mark.timeout(1200)

USER: ChatCompletionMessageParam = {
    "role": "user",
    "content": "Write a short story about a cat who learns to fly.",
}
CONTINUE_EXTRA: dict[str, object] = {"continue_final_message": True, "add_generation_prompt": False}


@pytest.fixture(scope="module")
def client(engine: LocalEngine) -> openai.OpenAI:
    # No retries: a failing request must fail the test, not be hidden by the SDK.
    return openai.OpenAI(base_url=engine.base_url, api_key="unused", max_retries=0)


def _http_get(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        return resp.status, resp.read()


def _with_prefix(prefix: str) -> list[ChatCompletionMessageParam]:
    return [USER, {"role": "assistant", "content": prefix}]


def _create(
    client: openai.OpenAI,
    engine: LocalEngine,
    messages: list[ChatCompletionMessageParam],
    max_tokens: int,
    extra_body: dict[str, object] | None = None,
) -> ChatCompletion:
    # Greedy decoding plus a fixed seed makes every answer below reproducible.
    return client.chat.completions.create(
        model=engine.model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        seed=42,
        extra_body=extra_body,
    )


def _stream(
    client: openai.OpenAI,
    engine: LocalEngine,
    messages: list[ChatCompletionMessageParam],
    max_tokens: int,
    extra_body: dict[str, object] | None = None,
) -> list[ChatCompletionChunk]:
    stream = client.chat.completions.create(
        model=engine.model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        seed=42,
        extra_body=extra_body,
        stream=True,
        stream_options={"include_usage": True},
    )
    return list(stream)


def _content_deltas(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


def _cut_reply(client: openai.OpenAI, engine: LocalEngine, max_tokens: int) -> str:
    resp = _create(client, engine, [USER], max_tokens)
    assert resp.choices[0].finish_reason == "length"
    content = resp.choices[0].message.content
    assert content
    return content


# ----------------------------------------------------------------------- paths


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AUTOCONTINUE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert local.cache_dir() == tmp_path / "xdg" / "autocontinue"
    monkeypatch.setenv("AUTOCONTINUE_CACHE", str(tmp_path / "mine"))
    assert local.cache_dir() == tmp_path / "mine"
    assert local.llama_server_path() == (
        tmp_path
        / "mine"
        / f"llama-server-{local.LLAMA_CPP_PYTHON_VERSION}-{local.BUILD_FLAVOUR}"
        / "bin"
        / "llama-server"
    )
    assert local.model_path() == tmp_path / "mine" / "models" / local.MODEL_FILENAME
    assert local.model_path("gemma3") == tmp_path / "mine" / "models" / "gemma-3-270m-q4_k_m.gguf"
    monkeypatch.delenv("AUTOCONTINUE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert local.cache_dir() == Path.home() / ".cache" / "autocontinue"


def test_cli_build_prints_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert local.main(["build"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"llama-server: {local.llama_server_path()}",
        *(f"model {key}: {local.model_path(key)}" for key in local.MODELS),
    ]
    assert local.llama_server_path().is_file()
    for key in local.MODELS:
        with local.model_path(key).open("rb") as fh:
            assert fh.read(4) == b"GGUF"
    # Gemma is joined from four wheels: the cached file is the published one, byte for byte.
    digest = hashlib.sha256(local.model_path("gemma3").read_bytes()).hexdigest()
    assert digest == local.MODELS["gemma3"].sha256


def test_models_are_named_by_key_or_name() -> None:
    assert local.resolve_model(None).key == local.DEFAULT_MODEL == "smollm2"
    assert local.resolve_model("gemma3") is local.resolve_model("gemma-3-270m") is local.MODELS["gemma3"]
    assert LocalEngine(model="gemma3").model == "gemma-3-270m"
    with pytest.raises(ValueError, match="unknown local model 'llama'"):
        LocalEngine(model="llama")
    # Only the base model without a template of its own is given one.
    command = LocalEngine(model="gemma3").command(8080)
    assert command[command.index("--chat-template") + 1] == local.GEMMA_CHAT_TEMPLATE
    assert "--chat-template" not in LocalEngine().command(8080)


# ------------------------------------------------------------------- lifecycle


def test_start_health_stop() -> None:
    eng = LocalEngine(ctx_size=1024)
    with pytest.raises(LocalEngineError):
        _ = eng.base_url  # not started yet
    eng.start()
    try:
        assert eng.running
        assert eng.base_url == f"http://127.0.0.1:{eng.port}/v1"
        status, body = _http_get(f"{eng.server_url}/health")
        assert status == 200
        assert json.loads(body) == {"status": "ok"}
        _, models = _http_get(f"{eng.base_url}/models")
        assert [m["id"] for m in json.loads(models)["data"]] == [eng.model]
        log_path = eng.log_path
        assert log_path is not None and log_path.is_file()
        assert "listening on" in eng.log_tail(200)
        with pytest.raises(LocalEngineError, match="already started"):
            eng.start()
        server_url = eng.server_url
    finally:
        eng.stop()
    assert not eng.running
    assert not log_path.exists()  # the default temporary log is removed on stop
    with pytest.raises(urllib.error.URLError):
        _http_get(f"{server_url}/health")
    eng.stop()  # idempotent


def test_parallel_slots_get_their_own_context(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with LocalEngine(parallel=2, ctx_size=1024, log_path=log) as eng:
        _, props = _http_get(f"{eng.server_url}/props")
        assert json.loads(props)["total_slots"] == 2
    # ctx_size is per slot: the server was given 2 * 1024 and splits it.
    assert "n_slots = 2, n_ctx_slot = 1024" in log.read_text()


@pytest.mark.parametrize("model", list(local.MODELS))
def test_batched_engine_starts_and_answers(model: str) -> None:
    """The batched configuration evaluates prompts in batches: on a CPU that lists an instruction set it cannot run
    (AMX on some virtual machines), a native build died with SIGILL there. The portable build must start and
    answer, prompt batches included."""
    with LocalEngine(model=model, batch_invariant=False, ctx_size=1024) as eng:
        assert "--ubatch-size" not in eng.command(eng.port)
        sdk = openai.OpenAI(base_url=eng.base_url, api_key="unused", max_retries=0)
        long_prompt = "Summarise this in one line: " + "the tide comes in and goes out again. " * 40
        reply = sdk.chat.completions.create(
            model=eng.model, messages=[{"role": "user", "content": long_prompt}], max_tokens=8, temperature=0
        )
        assert reply.usage is not None and reply.usage.prompt_tokens > 300  # evaluated in batches
        assert reply.choices[0].message.content
        assert reply.choices[0].finish_reason in ("length", "stop")
        assert eng.running


def test_failed_start_reports_server_output(tmp_path: Path) -> None:
    eng = LocalEngine(extra_args=["--no-such-flag"], startup_timeout=30, log_path=tmp_path / "server.log")
    with pytest.raises(LocalEngineError, match="exited with code") as info:
        eng.start()
    assert "no-such-flag" in str(info.value)  # the server's own complaint is quoted
    assert not eng.running


def test_startup_timeout_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    # A zero timeout expires at the first health probe, long before the model loads.
    eng = LocalEngine(startup_timeout=0, log_path=tmp_path / "server.log")
    with pytest.raises(LocalEngineError, match="did not become healthy"):
        eng.start()
    assert not eng.running
    eng.startup_timeout = 60
    eng.start()  # the engine is reusable after a failed start (its state was reset)
    try:
        assert eng.running
    finally:
        eng.stop()


# ----------------------------------------------------------- engine behaviour


def test_trailing_assistant_message_is_echoed(engine: LocalEngine, client: openai.OpenAI) -> None:
    prefix = _cut_reply(client, engine, 20)
    messages = _with_prefix(prefix)

    # Non-streaming: message.content is prefix + continuation, with or without the
    # explicit continue_final_message switch, and the same either way.
    contents = []
    for extra in (None, CONTINUE_EXTRA):
        content = _create(client, engine, messages, 10, extra).choices[0].message.content
        assert content is not None
        assert content.startswith(prefix) and len(content) > len(prefix)
        contents.append(content)
    assert contents[0] == contents[1]

    # Streaming, plain: the first content delta carries the whole prefix plus the
    # first new token.
    deltas = _content_deltas(_stream(client, engine, messages, 10))
    assert deltas[0].startswith(prefix) and len(deltas[0]) > len(prefix)
    assert "".join(deltas) == contents[0]

    # Streaming with continue_final_message: no echo, only the new text.
    deltas = _content_deltas(_stream(client, engine, messages, 10, CONTINUE_EXTRA))
    assert not deltas[0].startswith(prefix)
    assert prefix + "".join(deltas) == contents[0]


def test_continue_final_message_needs_add_generation_prompt_false(engine: LocalEngine, client: openai.OpenAI) -> None:
    # add_generation_prompt defaults to true on the server, and the two conflict.
    with pytest.raises(openai.BadRequestError, match="add_generation_prompt"):
        _create(client, engine, _with_prefix("Once upon"), 5, {"continue_final_message": True})


def test_continuation_round_trip_matches_uncut_reply(engine: LocalEngine, client: openai.OpenAI) -> None:
    total, cut = 60, 25
    full_text = _create(client, engine, [USER], total).choices[0].message.content
    assert full_text

    prefix = _cut_reply(client, engine, cut)
    assert full_text.startswith(prefix)
    resp = _create(client, engine, _with_prefix(prefix), total - cut)
    # Greedy decoding resumed from the prefilled prefix reproduces the uncut reply.
    assert resp.choices[0].message.content == full_text
    assert resp.usage is not None
    assert resp.usage.completion_tokens == total - cut
    # The prefix is served from the prompt cache of the previous request.
    assert resp.usage.prompt_tokens_details is not None
    assert (resp.usage.prompt_tokens_details.cached_tokens or 0) > 0


def test_a_prefix_sent_back_gets_the_logits_it_was_generated_with(engine: LocalEngine, client: openai.OpenAI) -> None:
    """Batch invariance (LocalEngine's default): the model's own tokens, sent back as a prefix and evaluated as a
    prompt (the prompt cache off, so nothing is reused), give the next token exactly the log-probability it had
    when the model generated them one by one. Seam fidelity stands on this."""
    assert engine.batch_invariant
    one_shot = client.chat.completions.create(
        model=engine.model, messages=[USER], max_tokens=64, temperature=0, seed=42, logprobs=True
    )
    assert one_shot.choices[0].logprobs is not None
    tokens = one_shot.choices[0].logprobs.content or []
    assert len(tokens) == 64
    # Cuts before a token that starts a word: there the text re-tokenizes into the model's own tokens. With batched
    # prompt evaluation (batch_invariant=False) most of these log-probabilities differ.
    cuts = [m for m in range(4, 63) if tokens[m].token.startswith(" ") and tokens[m - 1].token[-1:].isalpha()]
    assert len(cuts) >= 20, [t.token for t in tokens]
    for m in cuts[::2]:
        prefix = "".join(t.token for t in tokens[:m])
        reply = client.chat.completions.create(
            model=engine.model,
            messages=_with_prefix(prefix),
            max_tokens=1,
            temperature=0,
            seed=42,
            logprobs=True,
            extra_body={**CONTINUE_EXTRA, "cache_prompt": False},
        )
        assert reply.choices[0].logprobs is not None
        (following,) = reply.choices[0].logprobs.content or []
        assert (following.token, following.logprob) == (tokens[m].token, tokens[m].logprob), m


def test_stream_reports_length_and_usage(engine: LocalEngine, client: openai.OpenAI) -> None:
    chunks = _stream(client, engine, [USER], 5)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    # include_usage is honoured: a last chunk with no choices carries the usage.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_trailing_whitespace_in_prefix_is_kept(engine: LocalEngine, client: openai.OpenAI) -> None:
    prefix = _cut_reply(client, engine, 12) + "\n"
    content = _create(client, engine, _with_prefix(prefix), 5).choices[0].message.content
    assert content is not None and content.startswith(prefix)


def test_context_overflow_is_a_400(client: openai.OpenAI, engine: LocalEngine) -> None:
    too_long: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello " * (engine.ctx_size + 100)}]
    with pytest.raises(openai.BadRequestError) as info:
        _create(client, engine, too_long, 5)
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "exceed_context_size_error"
