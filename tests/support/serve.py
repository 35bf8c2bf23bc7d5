"""Running ``autocontinue serve`` for tests: in a thread of the test process (fast), or as the real command in a
subprocess (signals, workers, logs), always on a free loopback port, always over real HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx2
import uvicorn

from autocontinue.serve import ServeConfig, build_app
from tests.support.emulator.server import bind_socket, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port free now, for a server another program starts (nginx, a benchmark's proxy)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[Any], timeout: float) -> None:
    """Wait until ``url`` answers below 500 (a server another program started), or raise ``RuntimeError`` when
    ``proc`` exits or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx2.get(url, timeout=2).status_code < 500:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def nginx_binary() -> str | None:
    """nginx on the PATH, or where Debian puts it (``/usr/sbin`` is not on every user's PATH); ``None`` if neither."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def nginx_command(directory: Path, http: str) -> list[str]:
    """Write ``directory``/nginx.conf, an nginx of one process run as the current user (no user of its own to
    switch to), everything it writes kept in ``directory``, with ``http`` in its http block; the command that runs
    it in the foreground."""
    nginx = nginx_binary()
    assert nginx, "nginx is not installed: `make test` installs Debian's nginx-light, or install nginx yourself"
    conf = directory / "nginx.conf"
    conf.write_text(
        f"daemon off;\nmaster_process off;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {directory}/body;\n"
        f"  proxy_temp_path {directory}/proxy;\n{http}}}\n"
    )
    return [nginx, "-p", str(directory), "-e", f"{directory}/error.log", "-c", str(conf)]


class ThreadServer:
    """An ASGI app on uvicorn in a background thread, on a free loopback port (``url``)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        sock = bind_socket()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, http="h11", log_level="warning", access_log=False, backlog=4096, timeout_graceful_shutdown=2
            )
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[sock])), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.005)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Proxy(ThreadServer):
    """The proxy's app in a background thread; ``base_url`` is what a client is given."""

    def __init__(self, upstream: str, **settings: Any) -> None:
        self.config = ServeConfig(upstream=upstream, **settings)
        super().__init__(build_app(self.config))
        self.base_url = self.url + "/v1"

    @property
    def in_flight(self) -> int:
        return int(self.app.state.proxy.in_flight)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            return str(response.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        sample_name, _, rest = sample.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample_name == name and got == wanted:
            return float(value)
    return 0.0


class ServeProcess:
    """``python -m autocontinue serve ARGS --port 0`` as a subprocess; its stderr is collected in ``log``."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, startup_timeout: float = 60.0) -> None:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            # --port 0 last: it wins over a --port among args (the Dockerfile's command has one)
            [sys.executable, "-m", "autocontinue", "serve", *args, "--port", "0"],
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(startup_timeout):
            self.stop()
            raise RuntimeError(f"autocontinue serve did not start:\n{self.log}")
        self.base_url = self.url + "/v1"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r"running on (http://\S+)", line)
            if found and not self._ready.is_set():
                self.url = found.group(1)
                self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc, timeout=20)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
