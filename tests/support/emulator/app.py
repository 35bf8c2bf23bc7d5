"""The emulator's ASGI application: OpenAI-compatible chat completions plus a small control API.

Plain ASGI on purpose: the benchmark drives hundreds of concurrent streams through it, and a framework's
routing/middleware/response objects would dominate the cost of what is, per request, a regex split and a
few ``json.dumps`` calls. Everything runs on one event loop, so the shared state below needs no locks.

Routes:
    POST <persona prefix>/chat/completions   chat completions (see ``personas.ROUTES``)
    POST /_emulator/scripts                  register a Script (JSON) -> {"model": "emu-..."}
    GET  /_emulator/requests?model=NAME      requests received for a script, in order
    GET  /_emulator/stats                    counters (active_streams, open_connections, ...)
    GET  /_emulator/health                   liveness
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from .personas import ROUTES, Continuation, PersonaError, message_text, resolve
from .script import Fault, Script
from .tokenizer import tokenize

__all__ = ["PREFIX_NOT_IN_TARGET", "EmulatorApp"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Content a model emits when the client's prefix is not a prefix of the target: a client bug should fail
#: loudly in tests instead of producing plausible text.
PREFIX_NOT_IN_TARGET = "<<EMULATOR: prefix not in target>>"
#: Fixed text of the "identical" runaway mode.
IDENTICAL_RUNAWAY = "and so on "
#: How many earlier prompts per script the prefix-cache emulation compares against (bounds CPU/memory
#: when many clients share one script).
CACHE_HISTORY = 64
#: Streams without delays coalesce SSE events into writes of about this size (fewer syscalls; the SSE
#: framing the client parses is unchanged).
WRITE_BATCH = 16384
SYSTEM_FINGERPRINT = "fp_emulator"

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", None),
    409: ("conflict_error", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "overloaded"),
    504: ("server_error", "gateway_timeout"),
    529: ("overloaded_error", "overloaded"),
}


class _Disconnected(Exception):
    """The client went away while we were still reading its request."""


@dataclass
class _Reply:
    """What the model says in one choice: optional echo, reasoning tokens, new tokens, finish reason.

    With ``tool`` set (``{"id", "name"}``) the reply is a tool call and ``tokens`` are its arguments.
    """

    echo: str
    tokens: list[str]
    finish_reason: str
    reasoning: list[str] = field(default_factory=list)
    tool: dict[str, str] | None = None

    @property
    def content(self) -> str:
        return self.echo + "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        """New tokens, reasoning included (an echo is not generated, so not counted)."""
        return len(self.reasoning) + len(self.tokens)

    def message(self) -> dict[str, Any]:
        """The non-streamed ``message`` object."""
        if self.tool is not None:
            call = {
                "id": self.tool["id"],
                "type": "function",
                "function": {"name": self.tool["name"], "arguments": "".join(self.tokens)},
            }
            return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
        message: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        return message


def _logprob(token: str) -> dict[str, Any]:
    """A deterministic logprobs entry for one generated token (OpenAI's shape)."""
    return {"token": token, "logprob": -round(len(token) / 100, 4), "bytes": list(token.encode()), "top_logprobs": []}


class _ScriptState:
    """Per-script server state: the script, its request ordinal, log and prompt-cache history."""

    __slots__ = ("count", "history", "log", "model", "script")

    def __init__(self, model: str, script: Script) -> None:
        self.model = model
        self.script = script
        self.count = 0
        self.log: list[dict[str, Any]] = []
        self.history: deque[list[str]] = deque(maxlen=CACHE_HISTORY)

    def cached_tokens(self, prompt: list[str]) -> int:
        """Longest common token prefix with any earlier prompt, then remember this prompt."""
        best = 0
        for earlier in self.history:
            best = max(best, _common_prefix_len(prompt, earlier))
            if best == len(prompt):
                break
        self.history.append(prompt)
        return best


def _common_prefix_len(a: list[str], b: list[str]) -> int:
    """Length of the common prefix of two token lists.

    Binary search over slice equality: each comparison runs in C, so this is O(n log n) C work instead
    of an O(n) Python loop; prompts of thousands of tokens stay cheap under load.
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error object (the SDK reads ``error.message``/``type``/``code``)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _split_even(text: str, parts: int) -> list[str]:
    """Split ``text`` into at most ``parts`` non-empty, nearly equal pieces (in order)."""
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    pieces, pos = [], 0
    for i in range(parts):
        end = pos + size + (1 if i < extra else 0)
        pieces.append(text[pos:end])
        pos = end
    return pieces


class _ChunkWriter:
    """Builds ``chat.completion.chunk`` SSE events.

    The constant part of every chunk is serialised once; per token only the content string goes through
    ``json.dumps``, which keeps streaming cheap at hundreds of concurrent clients.
    """

    def __init__(self, cid: str, created: int, model: str, include_usage: bool) -> None:
        head = json.dumps(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
        )
        self._choices = b"data: " + head[:-1].encode() + b', "choices": [{"index": '
        self._head = self._choices + b'0, "delta": '
        self.index = 0  # the choice the next events belong to (n > 1 streams choice after choice)
        # OpenAI sends "usage": null on every chunk when include_usage is on.
        usage_null = b', "usage": null' if include_usage else b""
        self._tail = b', "logprobs": null, "finish_reason": null}]' + usage_null + b"}\n\n"
        self._logprobs_tail = b', "logprobs": %s, "finish_reason": null}]' + usage_null + b"}\n\n"
        self._finish_tail = b', "logprobs": null, "finish_reason": %s}]' + usage_null + b"}\n\n"
        self._usage_head = b"data: " + head[:-1].encode() + b', "choices": [], "usage": '

    def choice(self, index: int) -> None:
        """Make the following events belong to choice ``index``."""
        self.index = index
        self._head = self._choices + str(index).encode() + b', "delta": '

    def role(self) -> bytes:
        return self._head + b'{"role": "assistant", "content": ""}' + self._tail

    def content(self, text: str, logprobs: bool = False) -> bytes:
        tail = self._logprobs_tail % json.dumps({"content": [_logprob(text)]}).encode() if logprobs else self._tail
        return self._head + b'{"content": ' + json.dumps(text).encode() + b"}" + tail

    def reasoning(self, text: str) -> bytes:
        return self._head + b'{"content": null, "reasoning_content": ' + json.dumps(text).encode() + b"}" + self._tail

    def tool_call(self, tool: dict[str, str], arguments: str, first: bool) -> bytes:
        function: dict[str, str] = {"arguments": arguments}
        call: dict[str, Any] = {"index": 0, "function": function}
        if first:  # the first delta names the call, as OpenAI's do; later ones carry argument fragments
            call.update(id=tool["id"], type="function")
            function["name"] = tool["name"]
        return self._head + json.dumps({"content": None, "tool_calls": [call]}).encode() + self._tail

    def finish(self, reason: str) -> bytes:
        return self._head + b"{}" + self._finish_tail % json.dumps(reason).encode()

    def usage(self, usage: dict[str, Any]) -> bytes:
        return self._usage_head + json.dumps(usage).encode() + b"}\n\n"


class EmulatorApp:
    """ASGI app holding all emulator state. ``server`` is set by the launcher (see ``server.py``).

    The uvicorn server is needed for two things ASGI does not offer: counting open TCP connections
    (``server_state.connections``) and aborting a connection without any response (the "drop" fault).
    """

    def __init__(self) -> None:
        self.server: Any = None  # uvicorn.Server; typed loosely to keep uvicorn out of the import graph
        self.scripts: dict[str, _ScriptState] = {}
        self.requests_total = 0
        self.active_streams = 0
        self.max_active_streams = 0
        self.streams_cancelled = 0
        self.faults_injected = 0
        self.started_at = time.time()

    # ------------------------------------------------------------------ ASGI entry point

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        try:
            persona = ROUTES.get(path)
            if persona is not None:
                if scope["method"] != "POST":
                    await self._send_json(send, 405, error_body("Method not allowed", "invalid_request_error"))
                    return
                await self._chat(scope, receive, send, persona)
            elif path.startswith("/_emulator/"):
                await self._control(scope, receive, send, path)
            else:
                await self._send_json(
                    send, 404, error_body(f"Unknown path {path}", "invalid_request_error", "unknown_url")
                )
        except _Disconnected:
            return

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Only used if someone runs the app with lifespan on; nothing to set up.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ helpers

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        return b"".join(chunks)

    @staticmethod
    async def _send_json(send: Send, status: int, obj: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        body = json.dumps(obj).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(headers or [])],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _transport(self, scope: Scope) -> asyncio.Transport | None:
        """The TCP transport serving this request, found via uvicorn's connection set (by peer address)."""
        if self.server is None or scope.get("client") is None:
            return None
        client = tuple(scope["client"])
        for conn in self.server.server_state.connections:
            if getattr(conn, "client", None) == client:
                transport: asyncio.Transport = conn.transport
                return transport
        return None

    def _open_connections(self, exclude: Any = None) -> int:
        if self.server is None:
            return -1
        conns = self.server.server_state.connections
        if exclude is None:
            return len(conns)
        exclude = tuple(exclude)
        return sum(1 for c in conns if getattr(c, "client", None) != exclude)

    # ------------------------------------------------------------------ control API

    async def _control(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        if path == "/_emulator/scripts" and method == "POST":
            raw = await self._read_body(receive)
            try:
                script = Script.from_dict(json.loads(raw))
            except (ValueError, TypeError) as exc:
                await self._send_json(send, 400, error_body(f"bad script: {exc}", "invalid_request_error"))
                return
            model = "emu-" + os.urandom(8).hex()
            self.scripts[model] = _ScriptState(model, script)
            await self._send_json(send, 200, {"model": model})
        elif path == "/_emulator/requests" and method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode())
            model = (query.get("model") or [""])[0]
            state = self.scripts.get(model)
            if state is None:
                await self._send_json(send, 404, error_body(f"unknown model {model!r}", "invalid_request_error"))
                return
            await self._send_json(send, 200, {"model": model, "requests": state.log})
        elif path == "/_emulator/stats" and method == "GET":
            await self._send_json(send, 200, self.stats(exclude_client=scope.get("client")))
        elif path == "/_emulator/health":
            await self._send_json(send, 200, {"ok": True})
        else:
            await self._send_json(send, 404, error_body(f"Unknown control path {path}", "invalid_request_error"))

    def stats(self, exclude_client: Any = None) -> dict[str, Any]:
        """Counters. ``open_connections`` excludes the connection of the stats request itself."""
        return {
            "active_streams": self.active_streams,
            "max_active_streams": self.max_active_streams,
            "streams_cancelled": self.streams_cancelled,
            "open_connections": self._open_connections(exclude_client),
            "requests_total": self.requests_total,
            "faults_injected": self.faults_injected,
            "scripts": len(self.scripts),
            "uptime": time.time() - self.started_at,
        }

    # ------------------------------------------------------------------ chat completions

    async def _chat(self, scope: Scope, receive: Receive, send: Send, persona: str) -> None:
        raw = await self._read_body(receive)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            await self._send_json(
                send,
                400,
                error_body("We could not parse the JSON body of your request.", "invalid_request_error"),
            )
            return
        model = body.get("model")
        state = self.scripts.get(model) if isinstance(model, str) else None
        if state is None:
            await self._send_json(
                send,
                404,
                error_body(
                    f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    "model_not_found",
                ),
            )
            return

        self.requests_total += 1
        state.count += 1
        entry: dict[str, Any] = {
            "path": scope["path"],
            "body": body,
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        }
        state.log.append(entry)
        call = _Call(scope, receive, send, persona, state, body, entry, state.count)

        # Anything that sleeps gets a watcher that cancels this task when the client disconnects, so that
        # timed-out / closed-early requests stop promptly (and active_streams drops) instead of running on.
        script = state.script
        fault = call.fault
        needs_watch = (
            call.stream
            or script.first_token_delay > 0
            or script.token_delay > 0
            or (fault is not None and fault.kind == "delay")
        )
        task = asyncio.current_task()
        if needs_watch and task is not None:
            call.watcher = asyncio.create_task(self._watch(call, task))
        try:
            await self._answer(call)
        except asyncio.CancelledError:
            # Our watcher (client gone) or uvicorn's graceful-shutdown timeout: the response is over either
            # way. Swallow it (and uncancel) so uvicorn sees a normal return for a disconnected client.
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+; 3.10 has no cancel counting
            if uncancel is not None:
                uncancel()
            entry["cancelled"] = True
            if not call.client_gone:
                # Shutdown with the client still waiting: drop the connection (the server went away)
                # rather than let uvicorn turn the unfinished response into a 500.
                transport = self._transport(scope)
                if transport is not None:
                    transport.abort()
                    # Let connection_lost run, so uvicorn logs no missing response. The loop may be tearing
                    # down (thread mode), which cancels us again: nothing left to do then.
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.sleep(0)
                        await asyncio.sleep(0)
        finally:
            if call.watcher is not None and not call.watcher.done():
                call.watcher.cancel()

    @staticmethod
    async def _watch(call: _Call, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` when the client disconnects before the response is complete.

        After the request body is read, uvicorn's ``receive()`` blocks until the connection is lost or the
        response completes; ``call.finished`` (set just before the final send) tells the two apart.
        """
        message = await call.receive()
        if message["type"] == "http.disconnect" and not call.finished:
            call.client_gone = True
            task.cancel()

    async def _answer(self, call: _Call) -> None:
        script = call.state.script
        body = call.body
        fault = call.fault
        if fault is not None:
            self.faults_injected += 1
            call.entry["fault"] = fault.kind
            if fault.kind == "status":
                await self._send_status_fault(call.send, fault)
                return
            if fault.kind == "delay":
                await asyncio.sleep(fault.delay)

        # ---- validation (OpenAI-style 400s), then the persona's dialect
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            await self._send_persona_error(
                call.send,
                PersonaError(
                    "Invalid 'messages': expected a non-empty array of objects.",
                    code="invalid_value",
                    param="messages",
                ),
            )
            return
        requested = self._requested_max_tokens(body, script)
        if isinstance(requested, PersonaError):
            await self._send_persona_error(call.send, requested)
            return
        targets = self._targets(script, body, messages)
        try:
            cont = resolve(call.persona, body, messages, targets[0], script.overlap, call.ordinal)
        except PersonaError as exc:
            call.entry["error"] = exc.message
            await self._send_persona_error(call.send, exc)
            return
        call.entry["mode"] = cont.mode

        prompt = self._prompt_tokens(messages)
        prompt_tokens = len(prompt)
        window = script.context_window
        if window is not None and script.context_finish:
            # llama.cpp: generation stops where the context is full; only a prompt that fills it is refused.
            if prompt_tokens >= window:
                await self._send_persona_error(
                    call.send,
                    PersonaError(
                        "the request exceeds the available context size, try increasing it",
                        type_="exceed_context_size_error",
                    ),
                )
                return
            requested = min(requested, window - prompt_tokens)
        elif window is not None and prompt_tokens + requested > window:
            total = prompt_tokens + requested
            await self._send_persona_error(
                call.send,
                PersonaError(
                    f"This model's maximum context length is {script.context_window} tokens. However, you "
                    f"requested {total} tokens ({prompt_tokens} in the messages, {requested} in the "
                    "completion). Please reduce the length of the messages or completion.",
                    code="context_length_exceeded",
                    param="messages",
                ),
            )
            return
        cached = call.state.cached_tokens(prompt)

        cap = requested if script.output_cap is None else min(requested, script.output_cap)
        replies = [self._generate(script, cont, cap, target) for target in targets]
        for reply in replies:
            reply.finish_reason = script.finish_reasons.get(call.ordinal, reply.finish_reason)
        usage: dict[str, Any] | None = None
        if script.usage:
            completion_tokens = sum(reply.completion_tokens for reply in replies)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
            }
            if script.reasoning:
                reasoning_tokens = sum(len(reply.reasoning) for reply in replies)
                usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        logprobs = body.get("logprobs") is True
        if call.stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            await self._stream(call, cont, replies, usage if include_usage else None, include_usage, logprobs)
        else:
            await self._complete(call, cont, replies, usage, logprobs)

    @staticmethod
    def _targets(script: Script, body: dict[str, Any], messages: list[dict[str, Any]]) -> list[str]:
        """The answer of each choice (``n`` of them). One choice with several ``targets``: the target the
        text in the messages belongs to, because a continuation round of choice i carries choice i's text
        and asks for one choice."""
        given = script.targets or []
        n = body.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > 1:
            return [given[i] if i < len(given) else script.target for i in range(n)]
        if not given:
            return [script.target]
        written = ""
        if messages[-1].get("role") == "assistant":
            written = message_text(messages[-1])
        elif len(messages) >= 2 and messages[-2].get("role") == "assistant":
            written = message_text(messages[-2])  # the instruction pattern: [..., assistant, user]
        return [next((t for t in given if written and t.startswith(written)), given[0])]

    @staticmethod
    def _requested_max_tokens(body: dict[str, Any], script: Script) -> int | PersonaError:
        """``max_tokens``, else ``max_completion_tokens``, else the script default (invalid values: 400)."""
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                return PersonaError(
                    f"Invalid '{key}': integer below minimum value. Expected a value >= 1, but got {value!r} instead.",
                    code="integer_below_min_value",
                    param=key,
                )
            return value
        return script.default_max_tokens

    @staticmethod
    def _prompt_tokens(messages: list[dict[str, Any]]) -> list[str]:
        """Prompt as a token list: one role marker per message (the "+1 per message") then its content.

        The same list feeds ``prompt_tokens`` and the prefix-cache emulation, so cached <= prompt always.
        """
        tokens: list[str] = []
        for message in messages:
            tokens.append("\x00" + str(message.get("role")))
            tokens.extend(tokenize(message_text(message)))
        return tokens

    @staticmethod
    def _generate(script: Script, cont: Continuation, cap: int, target: str) -> _Reply:
        """The model proper: locate the prefix in the target and write the next ``cap`` tokens.

        Reasoning (when this reply thinks) comes first and shares the ``cap`` with the answer.
        """
        if script.tool_call is not None:
            tool = {"id": "call_" + os.urandom(6).hex(), "name": script.tool_call["name"]}
            arguments = tokenize(script.tool_call["arguments"])
            if len(arguments) > cap:
                return _Reply("", arguments[:cap], "length", tool=tool)
            return _Reply("", arguments, "tool_calls", tool=tool)
        if cont.broken is not None:
            return _Reply("", [cont.broken], "stop")
        echo = cont.prefix if cont.echo else ""
        thought: list[str] = []
        if cont.reasoning is not None and script.reasoning:
            if not script.reasoning.startswith(cont.reasoning):
                return _Reply(echo, [PREFIX_NOT_IN_TARGET], "stop")
            thought = tokenize(script.reasoning[len(cont.reasoning) :])
            if len(thought) >= cap:
                return _Reply(echo, [], "length", reasoning=thought[:cap])
            cap -= len(thought)
        if script.runaway is not None:
            # A degenerate model: always "length", never making progress (the echo contract still holds).
            if script.runaway == "empty":
                text = ""
            elif script.runaway == "identical":
                text = IDENTICAL_RUNAWAY
            else:  # "repeat"
                text = cont.prefix[-20:] if cont.prefix else script.target[:20]
            return _Reply(echo, tokenize(text)[:cap], "length")
        if not target.startswith(cont.prefix):
            return _Reply(echo, [PREFIX_NOT_IN_TARGET], "stop", reasoning=thought)
        rest = tokenize(cont.head + target[len(cont.prefix) + cont.drop :])
        if len(rest) > cap:
            return _Reply(echo, rest[:cap], "length", reasoning=thought)
        return _Reply(echo, rest, "stop", reasoning=thought)

    async def _send_status_fault(self, send: Send, fault: Fault) -> None:
        status = fault.status or 500
        default = ("server_error" if status >= 500 else "invalid_request_error", None)
        type_, code = _ERROR_TYPES.get(status, default)
        message = fault.message or f"Emulated HTTP {status} error."
        headers: list[tuple[bytes, bytes]] = []
        if fault.retry_after is not None:
            # Retry-After is whole seconds on the wire in theory, but fractional values are what tests want
            # to exercise; OpenAI also sends retry-after-ms, which the SDK prefers when present.
            ra = float(fault.retry_after)
            headers.append((b"retry-after", (str(int(ra)) if ra.is_integer() else repr(ra)).encode()))
            headers.append((b"retry-after-ms", str(round(ra * 1000)).encode()))
        await self._send_json(send, status, error_body(message, type_, code), headers)

    async def _send_persona_error(self, send: Send, exc: PersonaError) -> None:
        await self._send_json(send, exc.status, error_body(exc.message, exc.type, exc.code, exc.param))

    # ------------------------------------------------------------------ non-streaming reply

    async def _complete(
        self,
        call: _Call,
        cont: Continuation,
        replies: list[_Reply],
        usage: dict[str, Any] | None,
        logprobs: bool = False,
    ) -> None:
        script = call.state.script
        kind = call.fault.kind if call.fault is not None else None
        if kind == "drop":
            await self._abort(call)
            return
        # A non-streamed reply takes as long as streaming it would have.
        chunks = sum(self._content_chunks(script, cont, reply) for reply in replies)
        delay = script.first_token_delay + script.token_delay * chunks
        if delay > 0:
            await asyncio.sleep(delay)
        obj: dict[str, Any] = {
            "id": call.cid,
            "object": "chat.completion",
            "created": call.created,
            "model": call.model,
            "choices": [
                {
                    "index": index,
                    "message": reply.message(),
                    # One entry per generated answer token (not for an echo, reasoning or tool arguments).
                    "logprobs": {"content": [_logprob(t) for t in reply.tokens], "refusal": None}
                    if logprobs and reply.tool is None
                    else None,
                    "finish_reason": reply.finish_reason,
                }
                for index, reply in enumerate(replies)
            ],
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if usage is not None:
            obj["usage"] = usage
        data = json.dumps(obj).encode()
        if kind == "truncated_json":
            data = data[: len(data) // 2]
        call.finished = True
        await call.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(data)).encode()), call.request_id_header],
            }
        )
        await call.send({"type": "http.response.body", "body": data})

    @staticmethod
    def _content_chunks(script: Script, cont: Continuation, reply: _Reply) -> int:
        """Number of content-carrying stream events for this reply (drives the non-stream delay)."""
        echo_pieces = len(_split_even(reply.echo, script.echo_chunks)) if reply.echo else 0
        if cont.glue_echo and echo_pieces and reply.tokens:
            echo_pieces -= 1
        return echo_pieces + len(reply.reasoning) + len(reply.tokens)

    async def _abort(self, call: _Call) -> None:
        """Reset the connection without sending a response (non-stream "drop")."""
        transport = self._transport(call.scope)
        if transport is None:  # not launched by us: let uvicorn's error path close the connection
            raise RuntimeError("emulated drop")
        transport.abort()
        # Let connection_lost run (it is scheduled with call_soon) so uvicorn marks the request
        # disconnected and does not log "returned without starting response".
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    # ------------------------------------------------------------------ streaming reply

    @staticmethod
    def _events(
        writer: _ChunkWriter,
        script: Script,
        cont: Continuation,
        replies: list[_Reply],
        usage: dict[str, Any] | None,
        logprobs: bool = False,
    ) -> Iterator[tuple[bytes, bool]]:
        """The normal SSE event sequence as (event bytes, carries content) pairs, generated lazily so a
        long reply never sits in memory as a list of events. With ``n`` > 1, choice after choice."""
        for index, reply in enumerate(replies):
            writer.choice(index)
            yield writer.role(), False
            for piece in reply.reasoning:
                yield writer.reasoning(piece), True
            tokens = reply.tokens
            if reply.tool is not None:
                yield writer.tool_call(reply.tool, tokens[0] if tokens else "", first=True), True
                for token in tokens[1:]:
                    yield writer.tool_call(reply.tool, token, first=False), True
                yield writer.finish(reply.finish_reason), False
                continue
            first = 0
            if reply.echo:
                pieces = _split_even(reply.echo, script.echo_chunks)
                if cont.glue_echo and tokens:
                    # llama.cpp: the last echo piece and the first new token arrive in one delta.
                    pieces[-1] += tokens[0]
                    first = 1
                for piece in pieces:
                    yield writer.content(piece), True
            for i in range(first, len(tokens)):
                yield writer.content(tokens[i], logprobs), True
            yield writer.finish(reply.finish_reason), False
        if usage is not None:
            yield writer.usage(usage), False
        yield b"data: [DONE]\n\n", False

    async def _stream(
        self,
        call: _Call,
        cont: Continuation,
        replies: list[_Reply],
        usage: dict[str, Any] | None,
        include_usage: bool,
        logprobs: bool = False,
    ) -> None:
        script = call.state.script
        send = call.send
        kind = call.fault.kind if call.fault is not None else None
        limit = call.fault.after_chunks if call.fault is not None and kind in ("drop", "malformed_sse") else None
        writer = _ChunkWriter(call.cid, call.created, call.model, include_usage)
        await send({"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, call.request_id_header]})
        self.active_streams += 1
        self.max_active_streams = max(self.max_active_streams, self.active_streams)
        try:
            if script.first_token_delay > 0:
                await asyncio.sleep(script.first_token_delay)
            token_delay = script.token_delay
            buf = bytearray()
            events = self._events(writer, script, cont, replies, usage, logprobs)
            for sent, (event, is_content) in enumerate(events):
                if limit is not None and sent >= limit:
                    break
                if token_delay > 0 and is_content:
                    if buf:
                        await send({"type": "http.response.body", "body": bytes(buf), "more_body": True})
                        buf.clear()
                    await asyncio.sleep(token_delay)
                buf += event
                if len(buf) >= WRITE_BATCH:
                    await send({"type": "http.response.body", "body": bytes(buf), "more_body": True})
                    buf.clear()
            if kind == "drop":
                if buf:
                    await send({"type": "http.response.body", "body": bytes(buf), "more_body": True})
                call.finished = True
                await self._break_stream(call)
                return
            if kind == "malformed_sse":
                buf += b'data: {"id": "x", "choices": [\n\n'
            call.finished = True
            await send({"type": "http.response.body", "body": bytes(buf), "more_body": False})
        except asyncio.CancelledError:
            self.streams_cancelled += 1
            raise
        finally:
            self.active_streams -= 1

    async def _break_stream(self, call: _Call) -> None:
        """Close the connection mid-body (stream "drop").

        ``close()``, not ``abort()``: the events already written are flushed before the FIN, whereas an RST
        can make the client's kernel discard data it has not read yet (``after_chunks`` would be flaky).
        The client sees a body that ends without the terminating chunk.
        """
        if call.watcher is not None:
            call.watcher.cancel()
        transport = self._transport(call.scope)
        if transport is None:
            raise RuntimeError("emulated drop")
        transport.close()
        # Wait (briefly) until uvicorn has seen connection_lost (receive() then reports the disconnect), so
        # it does not log "returned without completing response" for a response we broke on purpose.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(call.receive(), timeout=2.0)


class _Call:
    """Everything about one chat-completion request, passed between the handler's stages."""

    __slots__ = (
        "body",
        "cid",
        "client_gone",
        "created",
        "entry",
        "fault",
        "finished",
        "model",
        "ordinal",
        "persona",
        "receive",
        "request_id_header",
        "scope",
        "send",
        "state",
        "stream",
        "watcher",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        persona: str,
        state: _ScriptState,
        body: dict[str, Any],
        entry: dict[str, Any],
        ordinal: int,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.persona = persona
        self.state = state
        self.body = body
        self.entry = entry
        self.ordinal = ordinal
        self.model: str = body["model"]
        self.fault: Fault | None = state.script.faults.get(ordinal)
        self.stream = body.get("stream") is True
        self.cid = "chatcmpl-" + os.urandom(12).hex()
        #: x-request-id of a successful reply: ``req-<ordinal>``, so a test can tell which request a response was
        self.request_id_header = (b"x-request-id", f"req-{ordinal}".encode())
        self.created = int(time.time())
        # Set just before the final send, so the watcher does not mistake completion for a disconnect.
        self.finished = False
        self.client_gone = False  # set by the watcher when it cancels us because the client left
        self.watcher: asyncio.Task[None] | None = None
