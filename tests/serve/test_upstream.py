"""The proxy's upstream client (``autocontinue/serve/upstream.py``) gives what the SDK's own client gives.

It takes two shorter ways from an upstream's bytes to reply objects (pydantic's strict validation, a direct cut of
single-line SSE events); these tests hold both to the SDK's results: the same request, streamed and not, over real
HTTP from a server that sends well-formed replies and replies of every wrong shape, read by ``openai.AsyncOpenAI``
and by ``UpstreamClient``, must give equal objects; and the decoder must give the SDK decoder's events for any
stream cut anywhere.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai._streaming import ServerSentEvent, SSEDecoder

from autocontinue._options import make_settings
from autocontinue.core import DoRequest
from autocontinue.serve.upstream import (
    _LONG_EVENT,
    JSONBodyTransport,
    UpstreamClient,
    _DataEvent,
    _SSEDecoder,
    sdk_hooks_present,
    upstream_client,
    upstream_http,
)
from tests.support.hostile import Hostile, Reply, Served, body, chunk, completion, event, sse

pytestmark = pytest.mark.timeout(60)

WORD = {"content": " word"}
#: chunks of every shape a provider has sent or might: the documented one, then ones pydantic's strict validation
#: refuses (the SDK's lenient construction must take those, and the two clients agree on what comes out)
CHUNKS: list[Any] = [
    chunk({"role": "assistant", "content": ""}),
    chunk(WORD),
    {**chunk(WORD), "system_fingerprint": "fp_1", "service_tier": "default", "x_provider": {"n": 1}},
    chunk({"content": " é", "reasoning_content": "thinking"}),
    chunk(WORD, choices=[{"index": 0, "delta": WORD, "finish_reason": None, "logprobs": {
        "content": [{"token": " word", "logprob": 0, "bytes": [32, 119], "top_logprobs": []}]}}]),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "f", "arguments": "{\"a\""}}]}),
    chunk(WORD, finish="eos"),  # a finish reason no type names
    {**chunk(WORD), "created": "1700000000"},  # a number sent as text
    {**chunk(WORD), "created": 1.7e9},  # a float where an int is typed
    chunk(None),  # no delta
    chunk(WORD, choices=None),
    chunk(WORD, choices="none"),
    chunk(WORD, usage={"prompt_tokens": 3, "completion_tokens": "5", "total_tokens": 8}),
    chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8,
                       "prompt_tokens_details": {"cached_tokens": 0}}, choices=[]),
    [1, 2, 3],  # not an object
    chunk(WORD, finish="length"),
]  # fmt: skip
REPLIES: list[Any] = [
    completion("The whole answer.", "stop", {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
    {**completion("Cut", "length", None), "x_provider": True, "created": "soon"},
    completion("Odd", "eos", None),
]


def _stream_of_every_shape(n: int, request: dict[str, Any], served: Served) -> Reply:
    events: list[Any] = [event(c) for c in CHUNKS]
    # SSE framing of other shapes among them: a comment, several data lines, an event name, an id, CRLF line ends
    events[2:2] = [b": keep-alive\n\n", b"id: 7\ndata: " + json.dumps(CHUNKS[1]).encode() + b"\n\n"]
    events[5:5] = [b"data: " + json.dumps(CHUNKS[1]).encode() + b"\r\n\r\n"]
    return sse(events)


@pytest.fixture(scope="module")
def server() -> Iterator[Hostile]:
    with Hostile() as hostile:
        yield hostile


def _shape(obj: Any) -> Any:
    """What a reply object is, for comparison: its class, its JSON as the proxy writes it, and every field."""
    if not isinstance(obj, openai.BaseModel):
        return obj
    return (type(obj).__name__, obj.model_dump_json(exclude_unset=True), repr(obj.model_dump(warnings=False)))


async def _read(client: openai.AsyncOpenAI, model: str, stream: bool) -> list[Any]:
    try:
        made = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], stream=stream
        )
        return [_shape(c) async for c in made] if stream else [_shape(made)]  # type: ignore[union-attr]
    finally:
        await client.close()


async def test_streamed_chunks_equal_the_sdk_clients(server: Hostile) -> None:
    model = server.add("", _stream_of_every_shape)
    ours = await _read(UpstreamClient(base_url=server.base_url, api_key="k", max_retries=0), model, True)
    sdks = await _read(openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0), model, True)
    assert ours == sdks
    assert len(ours) > len(CHUNKS)


@pytest.mark.parametrize("reply", REPLIES, ids=["documented", "extra-and-text-number", "unknown-finish"])
async def test_replies_equal_the_sdk_clients(server: Hostile, reply: dict[str, Any]) -> None:
    model = server.add("", lambda n, request, served: body(reply))
    ours = await _read(UpstreamClient(base_url=server.base_url, api_key="k", max_retries=0), model, False)
    sdks = await _read(openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0), model, False)
    assert ours == sdks


# ------------------------------------------------------------------------------------------------- the SSE decoder


def _stream(rng: random.Random) -> bytes:
    """An SSE stream with events of every shape, blank lines between and around, and sometimes an unended one."""
    parts: list[bytes] = []
    for i in range(rng.randint(0, 60)):
        data = json.dumps({"i": i, "text": rng.choice(["a", "é", "", "a b", "ü" * 3])}).encode()
        parts.append(rng.choice([
            b"data: " + data + b"\n\n",
            b"data:" + data + b"\n\n",
            b"data: " + data + b"\ndata: more\n\n",
            b"event: delta\ndata: " + data + b"\n\n",
            b"id: %d\ndata: " % i + data + b"\n\n",
            b"retry: 10\ndata: " + data + b"\n\n",
            b": comment\n\n",
            b"\n",
            b"data: [DONE]\n\n",
        ]))  # fmt: skip
    tail = rng.choice([b"", b"data: unended\n", b"data: unended", b"\n", b"id: 9\n"])
    stream = b"".join(parts) + tail
    if rng.random() < 0.15:  # CRLF or CR line ends from some point on
        at = rng.randrange(len(stream) + 1)
        stream = stream[:at] + stream[at:].replace(b"\n", rng.choice([b"\r\n", b"\r"]))
    return stream


def _cut(stream: bytes, rng: random.Random) -> list[bytes]:
    """``stream`` as the reads of a socket: anywhere, one byte to a few kilobytes at a time."""
    reads, at = [], 0
    while at < len(stream):
        size = rng.choice([1, 2, 5, 40, 300, 4096])
        reads.append(stream[at : at + size])
        at += size
    return reads


async def _decoded(decoder: SSEDecoder, reads: list[bytes]) -> list[tuple[Any, ...]]:
    async def source() -> AsyncIterator[bytes]:
        for read in reads:
            yield read

    return [(e.event, e.data, e.id, e.retry) async for e in decoder.aiter_bytes(source())]


def test_the_decoder_gives_the_sdk_decoders_events() -> None:
    async def compare() -> None:
        for seed in range(400):
            rng = random.Random(seed)
            reads = _cut(_stream(rng), rng)
            assert await _decoded(_SSEDecoder(), reads) == await _decoded(SSEDecoder(), reads), seed

    asyncio.run(compare())


def test_a_long_event_is_decoded_whole() -> None:
    """An event longer than the decoder keeps copying goes on through the SDK's decoder, and comes out whole."""
    data = json.dumps({"text": "x" * (3 * _LONG_EVENT)}).encode()
    stream = b"data: a\n\ndata: " + data + b"\n\ndata: b\n\n"
    reads = [stream[i : i + 1000] for i in range(0, len(stream), 1000)]
    events = asyncio.run(_decoded(_SSEDecoder(), reads))
    assert [e[1] for e in events] == ["a", data.decode(), "b"]


def test_the_installed_sdk_has_the_hooks_the_upstream_client_overrides() -> None:
    # Fails on an SDK that renamed or changed them: the proxy then runs on the SDK's own client, slower.
    assert sdk_hooks_present()
    assert type(upstream_client(base_url="http://127.0.0.1:9/v1", api_key="k")) is UpstreamClient


async def test_the_upstream_client_sends_through_aiohttp() -> None:
    # The serve extra installs the SDK's aiohttp extra: without it the proxy runs on httpx2's pool, slower.
    http = upstream_http()
    try:
        assert type(http) is openai.DefaultAioHttpClient
    finally:
        await http.aclose()


def test_an_sdk_without_the_hooks_gets_its_own_client() -> None:
    class Bare:
        pass

    class OtherArguments(openai.AsyncOpenAI):
        def _process_response_data(self, *, payload: object) -> Any:  # type: ignore[override]
            return payload

    assert not sdk_hooks_present(Bare, SSEDecoder)
    assert not sdk_hooks_present(OtherArguments, SSEDecoder)
    assert not sdk_hooks_present(openai.AsyncOpenAI, Bare)


#: texts an upstream's data line may hold: JSON of every kind of value, and texts pydantic's parser and the
#: standard library's read differently or refuse (a lone surrogate escape, invalid JSON of several kinds)
DATA_TEXTS = [
    '{"a":1e400}', '{"a":-1e400}', '{"a":NaN}', '{"a":Infinity}', '{"a":-Infinity}', '{"a":-0.0}', '{"a":1E5}',
    '{"a":123456789012345678901234567890}', '{"a":2.5e-324}', '{"a":1.7976931348623157e308}', '{"a":1,"a":2}',
    '{"a":"\\ud800"}', '{"a":"\\ud83d\\ude00"}', '{"\\u0065rror":{"message":"m"}}', '{"a":"\\u0000 é"}',
    '"text"', "null", "[]", " {} ", "[1,2", "", '{"a":1} x', '{"a":01}', '{"a":.5}', "{'a':1}", '{"a":1,}',
    '{"a":"\x01"}', "[DONE",
]  # fmt: skip


def _json_reading(text: str, reader: Any) -> tuple[str, Any]:
    try:
        value = reader(text)
    except json.JSONDecodeError as error:
        return "error", (type(error), error.msg, error.pos)
    return "value", (repr(value), type(value))


@pytest.mark.parametrize("text", DATA_TEXTS + [json.dumps(c) for c in CHUNKS] + [json.dumps(r) for r in REPLIES])
def test_a_data_event_reads_its_json_as_the_sdk_does(text: str) -> None:
    """Values, their types and repr (so -0.0, big ints, surrogates), and the error for text that is not JSON."""
    fast = _DataEvent(data=text)
    assert _json_reading(text, lambda _: fast.json()) == _json_reading(text, lambda t: ServerSentEvent(data=t).json())


def test_data_events_read_numbers_as_the_sdk_does() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        number = rng.choice(
            [rng.random() * 10 ** rng.randint(-320, 308), rng.randint(-(10**30), 10**30), rng.uniform(-1, 1)]
        )
        text = json.dumps({"n": number, "v": [number]})
        assert repr(_DataEvent(data=text).json()) == repr(json.loads(text)), text


# ------------------------------------------------------------------------------------------ the request's body


#: a coding agent's request, with every kind of field: content parts, tool calls and results, tools, a JSON
#: schema, nulls, nested objects, a provider's own field (in extra_body, as the proxy sends unknown fields)
RICH_REQUEST: dict[str, Any] = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "What is in it?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": "{\"path\": \"a.py\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "x = 1\n"},
        {"role": "user", "content": "Go on, é \u2028 \U0001f600."},
    ],
    "tools": [{"type": "function", "function": {"name": "read", "description": "Read a file.", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}],
    "tool_choice": "auto",
    "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
    "temperature": None,
    "stop": ["\n\n", "END"],
    "logit_bias": {"50256": -100},
    "metadata": {"k": "v"},
    "n": 2,
    "max_tokens": 40,
    "seed": 7,
    "extra_body": {"top_k": 5, "chat_template_kwargs": {"enable_thinking": False}},
    "extra_headers": {"X-Trace": "t1"},
}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
async def test_a_json_body_goes_upstream_as_the_sdks_create_sends_it(server: Hostile, stream: bool) -> None:
    seen: list[dict[str, Any]] = []

    def record(n: int, request: dict[str, Any], served: Served) -> Reply:
        seen.append(request)
        return sse([event(chunk(WORD, finish="stop"))]) if stream else body(completion("Hi", "stop", None))

    model = server.add("", record)
    kwargs = {**RICH_REQUEST, "model": model, "stream": stream}
    client = UpstreamClient(base_url=server.base_url, api_key="k", max_retries=0)
    try:
        transport = JSONBodyTransport(client, make_settings())
        ours = await transport.asend(DoRequest(kwargs={**kwargs, "user": openai.omit}))
        sdks = await client.chat.completions.create(**kwargs)
        if stream:
            assert [c async for c in ours] == [c async for c in sdks]
        else:
            assert ours == sdks
    finally:
        await client.close()
    assert len(seen) == 2
    assert seen[0] == seen[1]
    assert seen[0]["messages"] == RICH_REQUEST["messages"] and seen[0]["top_k"] == 5 and "user" not in seen[0]


async def test_a_body_without_messages_is_refused_as_the_sdk_refuses_it() -> None:
    client = UpstreamClient(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)
    try:
        with pytest.raises(TypeError) as ours:
            await JSONBodyTransport(client, make_settings()).asend(DoRequest(kwargs={"model": "m"}))
        with pytest.raises(TypeError) as sdks:
            await client.chat.completions.create(model="m")  # type: ignore[call-overload]
        assert str(ours.value) == str(sdks.value)
    finally:
        await client.close()
