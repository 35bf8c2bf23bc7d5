"""Launching the emulator (thread or subprocess) and talking to its control API.

The control API is plain HTTP (stdlib ``urllib``) in both modes, so a test cannot accidentally depend on
sharing memory with an in-thread server, and the client side has no dependency on the HTTP library the
code under test uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
import subprocess as _subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from .app import EmulatorApp
from .personas import PERSONA_PATHS
from .script import Script

__all__ = ["Emulator", "bind_socket", "build_server"]

#: The repository root, the working directory of ``python -m tests.support.emulator``.
REPO_ROOT = Path(__file__).resolve().parents[3]


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Bind the listening socket ourselves, so the real port is known even when ``port`` is 0."""
    # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every response written in two parts (headers, body) waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def stop_process(proc: _subprocess.Popen[Any], timeout: float = 10) -> None:
    """End a server process started for a test or a benchmark: SIGTERM, then SIGKILL if it is still there after
    ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except _subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def build_server(app: EmulatorApp, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server tuned for the emulator, wired back into ``app`` (see ``EmulatorApp.server``)."""
    config = uvicorn.Config(
        app,
        http="h11",
        ws="none",
        loop="asyncio",
        lifespan="off",
        log_level=log_level,
        access_log=False,
        server_header=False,
        # Benchmarks open hundreds of connections at once; keep idle keep-alive connections around long
        # enough for client pools to reuse them (and for open_connections to mean something).
        backlog=4096,
        timeout_keep_alive=30,
        # A client that leaves a request hanging must not block stop() for long.
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    app.server = server
    return server


class Emulator:
    """A running emulator. Use as a context manager, or call :meth:`start` / :meth:`stop`.

    ``subprocess=False`` serves from a background thread of this process (fast to start, easy to debug);
    ``subprocess=True`` runs ``python -m tests.support.emulator --port 0`` so the server has its own GIL (use this
    for benchmarks, where the client would otherwise compete with the server for the interpreter).
    """

    def __init__(self, subprocess: bool = False, host: str = "127.0.0.1", startup_timeout: float = 20.0) -> None:
        self.subprocess = subprocess
        self.host = host
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._proc: _subprocess.Popen[str] | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Emulator:
        """Start serving; returns once the server accepts connections."""
        if self.port is not None:
            raise RuntimeError("emulator already started")
        if self.subprocess:
            self._start_subprocess()
        else:
            self._start_thread()
        return self

    def _start_thread(self) -> None:
        sock = bind_socket(self.host)
        server = build_server(EmulatorApp())
        thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), name="emulator", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("emulator thread failed to start")
            time.sleep(0.005)
        self._server, self._thread = server, thread
        self.port = sock.getsockname()[1]

    def _start_subprocess(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        proc = _subprocess.Popen(
            [sys.executable, "-m", "tests.support.emulator", "--host", self.host, "--port", "0"],
            cwd=REPO_ROOT,
            env=env,
            stdin=_subprocess.DEVNULL,
            stdout=_subprocess.PIPE,
            text=True,
        )
        # Read the READY line in a helper thread: readline() has no timeout of its own.
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            line = ""
        if not line.startswith("READY "):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"emulator subprocess did not start (exit {proc.returncode}, said {line!r})")
        self._proc = proc
        self.port = urllib.parse.urlsplit(line.split()[1]).port

    def stop(self) -> None:
        """Stop serving (idempotent). Open client connections are closed by the server."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None
        if self._proc is not None:
            stop_process(self._proc)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        self.port = None

    # ------------------------------------------------------------------ URLs

    @property
    def url(self) -> str:
        """Server root, e.g. ``http://127.0.0.1:54321``."""
        if self.port is None:
            raise RuntimeError("emulator not started")
        return f"http://{self.host}:{self.port}"

    def base_url(self, persona: str) -> str:
        """The OpenAI-SDK ``base_url`` for ``persona`` (e.g. ``.../openai/v1``, ``.../deepseek/beta``)."""
        try:
            return self.url + PERSONA_PATHS[persona]
        except KeyError:
            raise ValueError(f"unknown persona {persona!r}; known: {sorted(PERSONA_PATHS)}") from None

    # ------------------------------------------------------------------ control API

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"emulator control {method} {path} -> {exc.code}: {detail}") from None

    def add_script(self, script: Script) -> str:
        """Register ``script``; returns the fresh model name that selects it."""
        model: str = self._call("POST", "/_emulator/scripts", script.to_dict())["model"]
        return model

    def requests(self, model: str) -> list[dict[str, Any]]:
        """Every chat request received for ``model``, in order: ``{"path", "body", "headers", ...}``.

        Extra keys the emulator adds: ``mode`` (how the persona read the request: "first", "restart",
        "prefill", "instruction"), ``error`` (persona 400 message), ``fault`` (injected fault kind),
        ``cancelled`` (the client went away mid-response).
        """
        query = urllib.parse.urlencode({"model": model})
        result: list[dict[str, Any]] = self._call("GET", f"/_emulator/requests?{query}")["requests"]
        return result

    def stats(self) -> dict[str, Any]:
        """Server counters: ``active_streams``, ``max_active_streams``, ``streams_cancelled``,
        ``open_connections`` (excluding the stats request's own), ``requests_total``, ``faults_injected``,
        ``scripts``, ``uptime``."""
        result: dict[str, Any] = self._call("GET", "/_emulator/stats")
        return result
