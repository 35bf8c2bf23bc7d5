"""deploy/nginx.conf, run for real: nginx in front of three replicas of the proxy, each started with the Compose
file's command (the server holds the upstream key, clients present theirs), as deploy/compose.yaml runs them.

The configuration is deploy/nginx.conf as written, with two changes for this machine: the replicas' addresses in
place of Docker's name for them (``server autocontinue:8080``), and a free local port in place of 8080. Around it,
the http block of the nginx image's own nginx.conf, in one process as the user running the tests
(``master_process off``), so that nginx needs no user of its own. nginx comes from the system (Debian's
``nginx-light``; ``make test`` installs it where it can); these tests fail without it, they are never skipped.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import openai
import pytest

from tests.serve.test_deploy import DEPLOY, compose_service
from tests.support.common import TARGET, USER, add
from tests.support.emulator import Emulator
from tests.support.emulator.server import stop_process
from tests.support.serve import ServeProcess, free_port, metric, nginx_command, wait_ready

CLIENT_KEY = "a-client-key"
HELD_KEY = "sk-held"


def site_config(replicas: list[str], port: int) -> str:
    """deploy/nginx.conf with the replicas' addresses and the listening port of this machine."""
    text = (DEPLOY / "nginx.conf").read_text()
    servers = "".join(f"    server {urlsplit(url).netloc};\n" for url in replicas)
    text, named = re.subn(r"^[ \t]*server autocontinue:8080;[^\n]*\n", servers, text, flags=re.MULTILINE)
    text, listening = re.subn(r"\blisten 8080;", f"listen 127.0.0.1:{port};", text)
    assert (named, listening) == (1, 1), "deploy/nginx.conf no longer has the lines this test replaces"
    return text


class Gateway:
    """nginx with deploy/nginx.conf in front of ``replicas``; ``base_url`` is what a client is given."""

    def __init__(self, replicas: list[str], directory: Path) -> None:
        port = free_port()
        (directory / "default.conf").write_text(site_config(replicas, port))
        # The http block of the nginx image's nginx.conf, which includes conf.d/default.conf (deploy/compose.yaml).
        command = nginx_command(directory, f"  keepalive_timeout 65;\n  include {directory}/default.conf;\n")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + "/v1"
        try:
            wait_ready(self.url + "/health", self.proc, 30)  # through to a replica: nginx says 502 until one answers
        except RuntimeError as error:
            error.add_note((directory / "error.log").read_text())
            stop_process(self.proc)
            raise

    def close(self) -> None:
        stop_process(self.proc)


def replica(emu: Emulator, keys: Path, *extra: str) -> ServeProcess:
    """One replica: the Compose file's command, the client-keys secret where this machine has it."""
    command = [
        str(keys) if str(arg) == "/run/secrets/client_keys" else str(arg) for arg in compose_service()["command"]
    ]
    env = {"AUTOCONTINUE_UPSTREAM": emu.base_url("deepseek-beta"), "UPSTREAM_API_KEY": HELD_KEY}
    return ServeProcess(*command, "--host", "127.0.0.1", "--dialect", "prefix", *extra, env=env)


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "client-keys.txt"
    path.write_text(f"{CLIENT_KEY}\n")
    return path


@pytest.fixture()
def deployment(emu: Emulator, keys: Path, tmp_path: Path) -> Iterator[tuple[Gateway, list[ServeProcess]]]:
    """Three replicas behind nginx; the first takes one request at a time (``--max-concurrency 1``)."""
    replicas = [replica(emu, keys, "--max-concurrency", "1"), replica(emu, keys), replica(emu, keys)]
    gateway = None
    try:
        gateway = Gateway([r.url for r in replicas], tmp_path)
        yield gateway, replicas
    finally:
        if gateway is not None:
            gateway.close()
        for each in replicas:
            each.stop()


def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=60)


def test_continued_answers_and_trace_come_through_nginx(
    deployment: tuple[Gateway, list[ServeProcess]], emu: Emulator
) -> None:
    gateway, _ = deployment
    model = add(emu)
    for _ in range(3):  # one request to each replica, round robin
        raw = client(gateway).chat.completions.with_raw_response.create(model=model, messages=[USER], max_tokens=20)
        assert raw.parse().choices[0].message.content == TARGET
        assert int(raw.headers["x-autocontinue-rounds"]) > 1
    assert {r["headers"]["authorization"] for r in emu.requests(model)} == {f"Bearer {HELD_KEY}"}
    refused = httpx2.post(gateway.base_url + "/chat/completions", json={"model": model, "messages": [USER]})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"


def test_a_stream_is_not_buffered_by_nginx(deployment: tuple[Gateway, list[ServeProcess]], emu: Emulator) -> None:
    gateway, _ = deployment
    # Rounds of 20 tokens (the Compose file allows 8), a token every 40 ms: the whole stream takes seconds.
    model = add(emu, token_delay=0.04)
    arrivals: list[float] = []
    text = ""
    stream = client(gateway).chat.completions.create(model=model, messages=[USER], max_tokens=20, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            text += chunk.choices[0].delta.content
    assert text == TARGET
    # Chunks reached the client as they were made, over the whole stream, not in one piece at its end.
    assert arrivals[-1] - arrivals[0] > 1.0
    assert len({round(t, 1) for t in arrivals}) > 10


def test_a_full_replica_answers_429_and_nginx_asks_another(
    deployment: tuple[Gateway, list[ServeProcess]], emu: Emulator
) -> None:
    gateway, replicas = deployment
    busy = replicas[0]
    slow = add(emu, token_delay=0.5)
    # Hold the first replica's one place with a slow stream sent to it directly.
    held = openai.OpenAI(base_url=busy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=60)
    holding = threading.Event()

    def hold() -> None:
        try:
            with held.chat.completions.create(model=slow, messages=[USER], max_tokens=200, stream=True) as stream:
                for _ in stream:
                    holding.set()
        except openai.APIConnectionError:
            pass  # the replica stopped at the end of the test, with the stream still going

    threading.Thread(target=hold, daemon=True).start()
    assert holding.wait(30)
    model = add(emu)
    for _ in range(6):  # round robin sends some of them to the full replica
        reply = client(gateway).chat.completions.create(model=model, messages=[USER], max_tokens=20)
        assert reply.choices[0].message.content == TARGET
    turned_away = metric(httpx2.get(busy.url + "/metrics").text, "autocontinue_proxy_requests_total",
                         route="chat", status="429")  # fmt: skip
    assert turned_away >= 1  # the full replica was asked, said 429, and the client never saw it


def test_a_draining_replica_loses_no_request(emu: Emulator, keys: Path, tmp_path: Path) -> None:
    replicas = [replica(emu, keys) for _ in range(3)]
    gateway = Gateway([r.url for r in replicas], tmp_path)
    try:
        model = add(emu)
        slow = add(emu, token_delay=0.05)
        # A stream in flight on every replica (round robin), then the first replica is stopped as an orchestrator
        # stops it in a rolling update: SIGTERM.
        streams = [
            client(gateway).chat.completions.create(model=slow, messages=[USER], max_tokens=20, stream=True)
            for _ in range(3)
        ]
        replicas[0].signal()
        answers = [
            client(gateway).chat.completions.create(model=model, messages=[USER], max_tokens=20)
            .choices[0].message.content
            for _ in range(12)
        ]  # fmt: skip
        assert answers == [TARGET] * 12  # each new request went to a replica still serving
        for stream in streams:  # and the streams in flight, the draining replica's included, ran to their end
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == TARGET
        assert replicas[0].wait(30) == 0
    finally:
        gateway.close()
        for each in replicas:
            each.stop()


def test_a_body_above_the_limit_is_refused_at_the_gateway(deployment: tuple[Gateway, list[ServeProcess]]) -> None:
    gateway, replicas = deployment
    body = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * (17 << 20) + b'"}]}'
    answer = httpx2.post(
        gateway.base_url + "/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"  # OpenAI's shape, as the proxy's own 413
    for each in replicas:  # no replica saw it
        seen = metric(httpx2.get(each.url + "/metrics").text, "autocontinue_proxy_requests_total",
                      route="chat", status="413")  # fmt: skip
        assert seen == 0
