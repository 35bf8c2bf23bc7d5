"""``autocontinue serve`` under faults: callers that go away, a full server, connections reset mid-stream, an
upstream that sends a whole reply at once, the pass-through of other routes, and 500 streams at once."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import tests.support.hostile as H
from autocontinue.serve._ready import FIRST_BATCH, MOST_BATCH
from autocontinue.serve.upstream import UPSTREAM_KEEPALIVE_EXPIRY
from tests.support.common import API_KEY, TARGET, USER, eventually, fast_retry
from tests.support.emulator import Emulator, Script
from tests.support.hostile import Hostile, Reply, Served
from tests.support.serve import Proxy, ServeProcess, ThreadServer, metric

pytestmark = pytest.mark.timeout(180)

LONG = " ".join(f"word{i}" for i in range(400))


@pytest.fixture
def proxy(emu: Emulator) -> Iterator[Proxy]:
    with Proxy(emu.base_url("deepseek-beta"), options={"dialect": "prefix", "retry": fast_retry()}) as running:
        yield running


def _cancelled(emu: Emulator, model: str) -> bool:
    requests = emu.requests(model)
    return bool(requests) and bool(requests[-1].get("cancelled"))


def test_client_disconnect_mid_stream_closes_the_upstream_request(emu: Emulator, proxy: Proxy) -> None:
    model = emu.add_script(Script(target=LONG, token_delay=0.05))
    body = {"model": model, "messages": [USER], "max_tokens": 400, "stream": True}
    with httpx2.Client() as http, http.stream("POST", proxy.base_url + "/chat/completions", json=body) as response:
        lines = response.iter_lines()
        events = [line for line in (next(lines) for _ in range(6)) if line.startswith("data:")]
        assert not _cancelled(emu, model)
        assert len(events) >= 2
    # Gone after a few chunks of a 20-second answer: the upstream request is closed within a second.
    assert eventually(lambda: _cancelled(emu, model), timeout=3)
    assert eventually(lambda: proxy.in_flight == 0, timeout=3)
    assert len(emu.requests(model)) == 1  # and no further round was started


def test_client_disconnect_while_waiting_closes_the_upstream_request(emu: Emulator, proxy: Proxy) -> None:
    model = emu.add_script(Script(target=TARGET, first_token_delay=10))
    client = openai.OpenAI(base_url=proxy.base_url, api_key=API_KEY, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=model, messages=[USER], max_tokens=9)
    assert eventually(lambda: _cancelled(emu, model), timeout=3)
    assert eventually(lambda: proxy.in_flight == 0, timeout=3)


def test_a_full_server_answers_429_at_once(emu: Emulator) -> None:
    model = emu.add_script(Script(target=LONG[:300], token_delay=0.02))
    settings = {"dialect": "prefix", "retry": fast_retry()}
    with Proxy(emu.base_url("deepseek-beta"), options=settings, max_concurrency=2) as proxy, httpx2.Client() as http:
        body = {"model": model, "messages": [USER], "max_tokens": 400, "stream": True}
        url = proxy.base_url + "/chat/completions"
        with http.stream("POST", url, json=body) as first, http.stream("POST", url, json=body) as second:
            # One line iterator per response, kept: a discarded one closes its connection when collected.
            readers = [first.iter_lines(), second.iter_lines()]
            assert all(next(reader).startswith("data: ") for reader in readers)
            busy = http.post(url, json={**body, "stream": False})
            assert busy.status_code == 429
            assert busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["code"] == "server_busy"
            assert http.get(proxy.base_url + "/models").status_code == 429  # the pass-through counts too
            assert len(emu.requests(model)) == 2  # the refused request never went upstream
            for reader in readers:
                assert _sse_text(reader) == LONG[:300]
        assert eventually(lambda: proxy.in_flight == 0)
        assert http.post(url, json={**body, "stream": False}).status_code == 200


def _sse_text(lines: Iterator[str]) -> str:
    text = ""
    for line in lines:
        if line.startswith("data: {"):
            chunk = json.loads(line[len("data: ") :])
            if chunk["choices"]:
                text += chunk["choices"][0]["delta"].get("content") or ""
    return text


# ------------------------------------------------------------------------------------------- resets mid-stream


def _reset_after_two_events(n: int, request: dict[str, Any], served: Served, *, every: bool) -> Reply:
    reply = H.good(TARGET, 40, request, served)
    if n >= 2 and (every or n == 2) and request.get("stream"):
        return Reply([*reply.steps[:3], ("reset", 0)])  # the head, two events, then an RST
    return reply


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    with Hostile() as server:
        yield server


def _hostile_proxy(server: Hostile) -> Proxy:
    return Proxy(server.base_url, options={"dialect": "partial", "retry": fast_retry(), "max_rounds": 50})


def test_reset_mid_stream_is_resumed_exactly(hostile: Hostile) -> None:
    model = hostile.add(TARGET, lambda n, r, s: _reset_after_two_events(n, r, s, every=False))
    with _hostile_proxy(hostile) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key=API_KEY, max_retries=0)
        stream = client.chat.completions.create(model=model, messages=[USER], max_tokens=16, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == TARGET


def _body_frames(base_url: str, request: dict[str, Any]) -> list[bytes]:
    """A streamed reply's HTTP/1.1 chunked body as the proxy framed it: one frame per write."""
    host, port = base_url.split("//")[1].split("/")[0].split(":")
    payload = json.dumps(request).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nConnection: close\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + payload)
        data = b""
        while part := sock.recv(65536):
            data += part
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head_bytes.lower(), head_bytes
    frames = []
    while (size := int(rest.partition(b"\r\n")[0], 16)) > 0:
        start = rest.index(b"\r\n") + 2
        frames.append(rest[start : start + size])
        rest = rest[start + size + 2 :]
    return frames


def test_an_upstream_connection_idle_near_the_servers_keep_alive_timeout_is_not_reused() -> None:
    """uvicorn (vLLM, SGLang, LiteLLM's proxy) and Node close a connection idle for 5 s; a request sent on it as
    it closes meets a reset. The proxy's pool drops an idle connection after 4 s, and reuses it before."""
    with Hostile() as server, Proxy(server.base_url, options={"dialect": "partial", "retry": None}) as proxy:
        model = server.add(TARGET, lambda n, request, served: H.good(TARGET, 400, request, served))
        client = openai.OpenAI(base_url=proxy.base_url, api_key=API_KEY, max_retries=0)

        def ask() -> str:
            reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=400)
            return reply.choices[0].message.content or ""

        assert ask() == TARGET
        time.sleep(1)
        assert ask() == TARGET
        assert server.connections == 1  # idle 1 s: the same connection
        time.sleep(UPSTREAM_KEEPALIVE_EXPIRY + 0.5)
        assert ask() == TARGET
        assert server.connections == 2  # idle 4.5 s: a new one, not the one the server is about to close


def test_a_reply_sent_at_once_reaches_the_caller_in_growing_writes(hostile: Hostile) -> None:
    """A fast upstream sends the whole reply in one write: the proxy's first write holds its first chunks, not all
    of them after the proxy has handled the last (the caller would idle meanwhile), and no write holds more than
    ``MOST_BATCH``; the text arrives whole."""
    words = [f" w{i}" for i in range(300)]
    chunks = [H.chunk({"role": "assistant", "content": ""})] + [H.chunk({"content": w}) for w in words]
    reply = b"".join(H.event(c) for c in [*chunks, H.chunk({}, finish="stop")]) + b"data: [DONE]\n\n"
    model = hostile.add("", lambda n, r, s: H.body(None, raw=reply, headers={"content-type": "text/event-stream"}))
    with _hostile_proxy(hostile) as proxy:
        frames = _body_frames(proxy.url, {"model": model, "messages": [USER], "stream": True})
    events = [[json.loads(line[6:]) for line in f.split(b"\n") if line.startswith(b"data: {")] for f in frames]
    counts = [len(e) for e in events if e]
    assert 0 < counts[0] <= FIRST_BATCH and max(counts) <= MOST_BATCH, counts
    assert len(counts) < len(chunks) / 4, counts  # still batched: a handful of writes, not one per chunk
    text = "".join(c["choices"][0]["delta"].get("content") or "" for e in events for c in e if c.get("choices"))
    assert text == "".join(words)


def test_reset_mid_stream_every_time_delivers_every_character_then_an_error(hostile: Hostile) -> None:
    model = hostile.add(TARGET, lambda n, r, s: _reset_after_two_events(n, r, s, every=True))
    with _hostile_proxy(hostile) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key=API_KEY, max_retries=0)
        received = ""
        with pytest.raises(openai.APIError, match="characters generated were streamed"):
            for chunk in client.chat.completions.create(model=model, messages=[USER], max_tokens=16, stream=True):
                received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        # Round 1 whole, then what each reset round had sent before its RST.
        sent = "".join(s.sent for s in hostile.served(model)[:1])
        assert received.startswith(sent) and TARGET.startswith(received) and len(received) > len(sent)
        assert eventually(lambda: proxy.in_flight == 0)


# ------------------------------------------------------------------------------------------- pass-through


class _Upstream:
    """A small OpenAI-compatible upstream for the routes that are not chat completions."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self.server = ThreadServer(
            Starlette(
                routes=[
                    Route("/v1/models", self.models, methods=["GET"]),
                    Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                    Route("/v1/slow", self.slow, methods=["GET"]),
                ]
            )
        )
        self.base_url = self.server.url + "/v1"

    async def models(self, request: Request) -> Response:
        self.seen.append({"headers": dict(request.headers), "query": dict(request.query_params)})
        return JSONResponse({"object": "list", "data": [{"id": "m1", "object": "model"}]}, headers={"x-up": "1"})

    async def embeddings(self, request: Request) -> Response:
        body = await request.json()
        if body.get("input") == "fail":
            return JSONResponse({"error": {"message": "no", "type": "invalid_request_error"}}, status_code=404)
        return JSONResponse({"object": "list", "data": [{"embedding": [0.5, 0.25], "index": 0}], "model": "e"})

    async def slow(self, request: Request) -> Response:
        async def parts() -> AsyncIterator[bytes]:
            try:
                for i in range(200):
                    yield f"part {i}\n".encode()
                    await asyncio.sleep(0.05)
            finally:
                self.closed.set()

        return StreamingResponse(parts(), media_type="text/plain")


def test_other_routes_are_passed_through_unchanged() -> None:
    upstream = _Upstream()
    try:
        with Proxy(upstream.base_url) as proxy:
            client = openai.OpenAI(base_url=proxy.base_url, api_key="callers-key", max_retries=0)
            assert [m.id for m in client.models.list()] == ["m1"]
            assert upstream.seen[-1]["headers"]["authorization"] == "Bearer callers-key"
            embedding = client.embeddings.create(model="e", input="hello", encoding_format="float")
            assert embedding.data[0].embedding == [0.5, 0.25]
            with pytest.raises(openai.NotFoundError):
                client.embeddings.create(model="e", input="fail")
            with httpx2.Client() as http:
                response = http.get(proxy.base_url + "/models", params={"a": "1"})
                assert response.headers["x-up"] == "1"
                assert upstream.seen[-1]["query"] == {"a": "1"}
                assert http.get(proxy.base_url + "/nowhere").status_code == 404  # the upstream's own 404
                # Streamed as it comes, and closed upstream when the caller goes away.
                with http.stream("GET", proxy.base_url + "/slow") as slow:
                    assert next(slow.iter_lines()) == "part 0"
            assert upstream.closed.wait(3)
            assert eventually(lambda: proxy.in_flight == 0)
    finally:
        upstream.server.close()


# ------------------------------------------------------------------------------------------- 500 streams


async def test_500_concurrent_streams_are_each_exact() -> None:
    # The emulator and the proxy (the real command) each in their own process, so the 500 clients have this one.
    with Emulator(subprocess=True) as emu:
        targets = [f"Answer {i}: " + TARGET[: 60 + i % 40] for i in range(500)]
        # A token every 20 ms, as a fast model writes: the 500 streams are open at the same time.
        models = [emu.add_script(Script(target=t, token_delay=0.02)) for t in targets]
        with ServeProcess("--upstream", emu.base_url("deepseek-beta"), "--dialect", "prefix") as proxy:
            limits = httpx2.Limits(max_connections=600, max_keepalive_connections=600)
            http = httpx2.AsyncClient(limits=limits, timeout=120)
            client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=API_KEY, max_retries=0, http_client=http)

            async def one(model: str) -> str:
                stream = await client.chat.completions.create(model=model, messages=[USER], max_tokens=12, stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

            try:
                texts = await asyncio.gather(*(one(m) for m in models))
            finally:
                await client.close()
            assert texts == targets
            assert all(len(emu.requests(m)) >= 2 for m in models[:20])  # each answer took rounds
            assert emu.stats()["max_active_streams"] >= 250  # and at least half of them ran at once
            with httpx2.Client() as check:
                metrics = check.get(proxy.url + "/metrics").text
            assert metric(metrics, "autocontinue_proxy_requests_total", route="chat", status="200") == 500
            assert metric(metrics, "autocontinue_proxy_in_flight") == 0


def test_reset_before_any_text_every_time_is_an_openai_error(hostile: Hostile) -> None:
    def reset_at_once(n: int, request: dict[str, Any], served: Served) -> Reply:
        return Reply([*H.good(TARGET, 40, request, served).steps[:2], ("reset", 0)])  # head, role chunk, RST

    model = hostile.add(TARGET, reset_at_once)
    with _hostile_proxy(hostile) as proxy, httpx2.Client(timeout=60) as http:
        body = {"model": model, "messages": [USER], "max_tokens": 16, "stream": True}
        response = http.post(proxy.base_url + "/chat/completions", json=body)
        if response.status_code == 200:  # the error came after the stream's head: the last event carries it
            events = [e for e in response.text.split("\n\n") if e.startswith("data: ")]
            error = json.loads(events[-1][len("data: ") :])["error"]
        else:
            error = response.json()["error"]
            assert response.status_code == 502
        assert error["type"] == "upstream_error"
        assert len(hostile.served(model)) == 4  # the library's retries


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_that_does_not_answer_is_a_504_one_that_is_not_there_a_502(hostile: Hostile, stream: bool) -> None:
    """A timeout and a refused connection are told apart, in the status, the error code and the metric, whichever
    HTTP client the proxy sends through (aiohttp's transport reports both as httpx2's ``ConnectTimeout``)."""
    model = hostile.add("", lambda n, r, s: Reply([("sleep", 5.0)]))
    with (
        Proxy(hostile.base_url, upstream_timeout=0.5, options={"retry": None}) as slow,
        Proxy("http://127.0.0.1:9/v1", options={"retry": None}) as missing,
    ):
        for proxy, status, code, kind in ((slow, 504, "upstream_timeout", "timeout"),
                                          (missing, 502, "upstream_unreachable", "connection")):  # fmt: skip
            client = openai.OpenAI(base_url=proxy.base_url, api_key=API_KEY, max_retries=0)
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model=model, messages=[USER], stream=stream)
            assert caught.value.status_code == status
            assert caught.value.body["code"] == code  # type: ignore[index]
            assert metric(proxy.metrics(), "autocontinue_proxy_upstream_errors_total", kind=kind) == 1
