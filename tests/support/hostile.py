"""A hostile OpenAI-compatible server: raw HTTP/1.1 on a loopback socket, every byte of each reply scripted.

The provider emulator (tests/support/emulator) is a well-behaved server with injected faults; this one answers whatever
a test tells it to, below the level any web framework would let it: a body of the wrong shape, SSE framing a
parser must cope with, headers, a stall, a reset (RST), a connection closed mid-body, a broken status line.

A *script* is a function ``reply(n, request) -> Reply`` (``n`` counts the script's requests from 1). The good
reply a model would give is :func:`good`: the script's ``target`` continued from the prefix the request sends (the
last assistant message, the ``partial`` dialect's way) by ``size`` characters, with ``"length"`` while text
remains. Everything the server sent as answer text is logged per request (``sent``), so a test can say exactly
which characters a client received.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Hostile", "Reply", "Served", "body", "good", "sse"]

Step = bytes | tuple[str, float]  # bytes to write, ("sleep", s), ("reset", 0), ("close", 0)


@dataclass
class Reply:
    """What to write on the socket, in order, and the answer text and usage those bytes carry."""

    steps: list[Step]
    text: str = ""  # answer text a client can read from these bytes
    usage: dict[str, int] | None = None  # usage these bytes report, if a client can read it
    keep_alive: bool = True


@dataclass
class Served:
    """One request as the server saw it, and what it answered."""

    request: dict[str, Any]
    prefix: str
    sent: str = ""
    usage: dict[str, int] | None = None


Script = Callable[[int, dict[str, Any], "Served"], Reply]


@dataclass
class _Entry:
    target: str
    size: int
    script: Script
    served: list[Served] = field(default_factory=list)


def usage_of(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def prefix_of(request: dict[str, Any]) -> str:
    """The text so far a request asks to continue: its trailing assistant message, or the assistant message before
    a trailing user turn (the instruction dialect); "" on a first request."""
    messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
    if len(messages) >= 2 and messages[-1].get("role") == "user" and messages[-2].get("role") == "assistant":
        messages = messages[:-1]  # the instruction dialect: the text so far, then a user turn asking to go on
    last = messages[-1] if messages else {}
    if last.get("role") == "assistant" and isinstance(last.get("content"), str):
        return str(last["content"])
    return ""


def body(obj: Any, *, status: int = 200, headers: dict[str, str] | None = None, raw: bytes | None = None) -> Reply:
    """A whole response: ``obj`` as JSON (or ``raw`` bytes as they are) with a Content-Length."""
    payload = raw if raw is not None else json.dumps(obj).encode()
    head = {"content-type": "application/json", **(headers or {})}
    return Reply([_head(status, head, len(payload)) + payload])


def sse(events: list[bytes | str | tuple[str, float]], *, status: int = 200, headers: dict[str, str] | None = None,
        done: bool = True, end: bool = True) -> Reply:  # fmt: skip
    """A chunked SSE response: each event (a JSON-able dict, raw ``bytes`` or a string line) in its own HTTP chunk.

    ``done`` appends ``data: [DONE]``; ``end=False`` leaves the chunked body unterminated (the caller adds a step).
    """
    head = {"content-type": "text/event-stream", "cache-control": "no-cache", **(headers or {})}
    steps: list[Step] = [_head(status, head, None)]
    for event in [*events, b"data: [DONE]\n\n"] if done else events:
        if isinstance(event, tuple):
            steps.append(event)
            continue
        data = event if isinstance(event, bytes) else event.encode()
        steps.append(b"%x\r\n%s\r\n" % (len(data), data))
    if end:
        steps.append(b"0\r\n\r\n")
    return Reply(steps)


def event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def completion(text: str, finish: str | None, usage: dict[str, int] | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "hostile",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
        ],
        "usage": usage,
    }


def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None, *, choices: Any = ...) -> Any:
    if choices is ...:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "hostile",
        "choices": choices,
        "usage": usage,
    }


def good(target: str, size: int, request: dict[str, Any], served: Served, *, crlf: bool = False,
         pieces: int = 3) -> Reply:  # fmt: skip
    """The honest reply: ``size`` characters of ``target`` after the request's prefix (as JSON or as SSE)."""
    prefix = served.prefix
    if not target.startswith(prefix):
        return body({"error": {"message": "hostile: prefix is not a prefix of the target"}}, status=400)
    text = target[len(prefix) : len(prefix) + size]
    finish = "length" if len(prefix) + len(text) < len(target) else "stop"
    usage = usage_of(10 + len(prefix) // 4, max(1, len(text) // 4))
    if not request.get("stream"):
        reply = body(completion(text, finish, usage))
    else:
        step = max(1, -(-len(text) // pieces))
        events: list[bytes | str | tuple[str, float]] = [event(chunk({"role": "assistant", "content": ""}))]
        events += [event(chunk({"content": text[i : i + step]})) for i in range(0, len(text), step)]
        events.append(event(chunk({}, finish)))
        if (request.get("stream_options") or {}).get("include_usage"):
            events.append(event(chunk(None, usage=usage, choices=[])))
        if crlf:
            events = [e.replace(b"\n", b"\r\n") if isinstance(e, bytes) else e for e in events]
        reply = sse(events)
    reply.text, reply.usage = text, usage
    return reply


def _head(status: int, headers: dict[str, str], length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Status'}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Hostile:
    """The server: ``add(target, script)`` registers a model; ``base_url`` for the client; ``served(model)``."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.connections = 0  # accepted so far: a client that reuses its connections opens few
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True, name="hostile-accept").start()

    def add(self, target: str, script: Script, *, size: int = 40) -> str:
        with self._lock:
            model = f"hostile-{len(self._entries)}"
            self._entries[model] = _Entry(target, size, script)
        return model

    def served(self, model: str) -> list[Served]:
        with self._lock:
            return list(self._entries[model].served)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            for conn in list(self._open):
                conn.close()

    def __enter__(self) -> Hostile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small SSE writes go out at once
            with self._lock:
                self._open.add(conn)
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                request, buffer = _read_request(conn, buffer)
                if request is None:
                    return
                if not self._answer(conn, request):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def _answer(self, conn: socket.socket, request: dict[str, Any]) -> bool:
        with self._lock:
            entry = self._entries.get(str(request.get("model")))
            if entry is not None:
                served = Served(request, prefix_of(request))
                entry.served.append(served)
                n = len(entry.served)
        if entry is None:
            conn.sendall(body({"error": {"message": "unknown model"}}, status=404).steps[0])  # type: ignore[arg-type]
            return True
        reply = entry.script(n, request, served)
        served.sent, served.usage = reply.text, reply.usage
        for step in reply.steps:
            if isinstance(step, bytes):
                conn.sendall(step)
            elif step[0] == "sleep":
                time.sleep(step[1])
            elif step[0] == "reset":  # an RST instead of a FIN: the peer sees "connection reset"
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return False
            else:  # "close"
                return False
        return reply.keep_alive


def _read_request(conn: socket.socket, buffer: bytes) -> tuple[dict[str, Any] | None, bytes]:
    while b"\r\n\r\n" not in buffer:
        data = conn.recv(65536)
        if not data:
            return None, b""
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return None, b""
        rest += data
    payload, buffer = rest[:length], rest[length:]
    try:
        request = json.loads(payload or b"{}")
    except ValueError:
        request = {}
    return (request if isinstance(request, dict) else {}), buffer
