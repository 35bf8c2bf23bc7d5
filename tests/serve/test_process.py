"""``autocontinue serve`` as the real command in a subprocess: SIGTERM drains streams in flight, keys and message
text never reach the log, ``--workers`` shares one port and one set of metrics, the local engine with no upstream,
and the command line (``serve`` is a subcommand only as the whole first argument)."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest

from tests.support.common import TARGET, USER, add, eventually
from tests.support.emulator import Emulator, Fault, Script
from tests.support.serve import REPO_ROOT, ServeProcess, metric

pytestmark = pytest.mark.timeout(300)

LONG = " ".join(f"word{i}" for i in range(120))


def _stream_lines(proxy: ServeProcess, model: str) -> tuple[httpx2.Client, httpx2.Response]:
    http = httpx2.Client(timeout=60)
    body = {"model": model, "messages": [USER], "max_tokens": 500, "stream": True}
    request = http.build_request("POST", proxy.base_url + "/chat/completions", json=body)
    return http, http.send(request, stream=True)


def test_sigterm_drains_streams_in_flight(emu: Emulator) -> None:
    model = emu.add_script(Script(target=LONG, token_delay=0.02))  # about 5 s of stream
    with ServeProcess("--upstream", emu.base_url("deepseek-beta"), "--dialect", "prefix") as proxy:
        http, response = _stream_lines(proxy, model)
        lines = response.iter_lines()
        first = next(lines)
        assert first.startswith("data: ")
        proxy.signal(signal.SIGTERM)
        # The port closes at once: new requests go elsewhere (a load balancer's retry), ...
        assert eventually(lambda: _refused(proxy.url), timeout=5)
        # ... while the stream in flight runs to its end, whole.
        rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        text = "".join(
            (json.loads(line[6:])["choices"] or [{"delta": {}}])[0]["delta"].get("content") or ""
            for line in [first, *rest]
            if line.startswith("data: {")
        )
        assert text == LONG
        response.close()
        http.close()
        assert proxy.wait(20) == 0
        assert not emu.requests(model)[-1].get("cancelled")


def test_sigterm_closes_streams_still_running_after_the_drain_timeout(emu: Emulator) -> None:
    model = emu.add_script(Script(target=LONG * 4, token_delay=0.1))  # about 50 s of stream
    with ServeProcess("--upstream", emu.base_url("deepseek-beta"), "--dialect", "prefix", "--drain-timeout", "1") as p:
        http, response = _stream_lines(p, model)
        assert next(response.iter_lines()).startswith("data: ")
        started = time.monotonic()
        p.signal(signal.SIGTERM)
        assert p.wait(20) == 0
        assert time.monotonic() - started < 10
        assert eventually(lambda: bool(emu.requests(model)[-1].get("cancelled")), timeout=5)  # upstream closed
        http.close()


def _refused(url: str) -> bool:
    try:
        httpx2.get(url + "/health", timeout=1)
    except httpx2.ConnectError:
        return True
    except httpx2.HTTPError:
        return False
    return False


def _asks_again_after(proxy: ServeProcess, idle: float) -> bool:
    """Whether one connection, idle for ``idle`` seconds after an answer, carries the next request."""
    host, port = proxy.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for wait in (0.0, idle):
            time.sleep(wait)
            connection.request("GET", "/health")
            response = connection.getresponse()
            assert response.status == 200
            response.read()
        return True
    except (http.client.RemoteDisconnected, ConnectionError):
        return False
    finally:
        connection.close()


def test_an_idle_client_connection_stays_open_past_five_seconds(emu: Emulator) -> None:
    # A load balancer's pool (nginx's, AWS's: 60 s) keeps idle connections to the server for reuse. A server that
    # closes them first (uvicorn's default: 5 s) races the next request sent on one, which then fails with a reset.
    with ServeProcess("--upstream", emu.base_url("vllm")) as proxy:
        assert _asks_again_after(proxy, 6.0)
    with ServeProcess("--upstream", emu.base_url("vllm"), "--keep-alive-timeout", "1") as proxy:
        assert _asks_again_after(proxy, 0.2)
        assert not _asks_again_after(proxy, 2.0)


def test_keys_and_message_text_never_reach_the_log(emu: Emulator, tmp_path: Path) -> None:
    upstream_key, client_key, text = "sk-upstream-SECRET-1", "client-SECRET-2", "PURPLE ELEPHANT 3"
    keys = tmp_path / "client-keys"
    keys.write_text(f"# the service's clients\n{client_key}\n")
    ok, failing = add(emu, target=TARGET), add(emu, faults={n: Fault("status", status=500) for n in range(2, 6)})
    with ServeProcess(
        "--upstream", emu.base_url("deepseek-beta"), "--dialect", "prefix", "--upstream-key-env", "UPSTREAM_KEY",
        "--client-keys-file", str(keys), "--log-level", "debug", env={"UPSTREAM_KEY": upstream_key},
    ) as proxy:  # fmt: skip
        client = openai.OpenAI(base_url=proxy.base_url, api_key=client_key, max_retries=0)
        message = {"role": "user", "content": text}
        assert client.chat.completions.create(model=ok, messages=[message], max_tokens=9).choices[0].message.content
        stream = client.chat.completions.create(model=ok, messages=[message], max_tokens=9, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == TARGET
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=failing, messages=[message], max_tokens=9)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proxy.base_url, api_key=upstream_key, max_retries=0).chat.completions.create(
                model=ok, messages=[message]
            )
        assert {r["headers"]["authorization"] for r in emu.requests(ok)} == {f"Bearer {upstream_key}"}
        proxy.stop()
    log = proxy.log
    assert "status=200" in log and "status=401" in log and "status=502" in log and "stop_cause='natural'" in log
    assert "autocontinue.call" in log  # the library's own events, at debug
    for secret in (upstream_key, client_key, text, TARGET[:20], "ELEPHANT"):
        assert secret not in log


def test_workers_share_the_port_and_the_metrics(emu: Emulator) -> None:
    page = "http://localhost:5173"
    upstream = emu.base_url("deepseek-beta")
    with ServeProcess("--upstream", upstream, "--dialect", "prefix", "--workers", "2", "--cors-origin", page) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0)
        # The port is announced before the workers start; connections wait in its backlog until they do.
        assert httpx2.get(proxy.url + "/health", timeout=60).status_code == 200
        # Each worker rebuilds the settings: the CORS origin too.
        preflight = {"origin": page, "access-control-request-method": "POST"}
        for _ in range(4):
            answer = httpx2.options(proxy.base_url + "/chat/completions", headers=preflight)
            assert answer.headers["access-control-allow-origin"] == page
        for _ in range(6):
            reply = client.chat.completions.create(model=add(emu), messages=[USER], max_tokens=9)
            assert reply.choices[0].message.content == TARGET
        text = httpx2.get(proxy.url + "/metrics").text
        assert metric(text, "autocontinue_proxy_requests_total", route="chat", status="200") == 6
        # Both workers run (the second may start after the first has served all six on a loaded machine).
        assert eventually(lambda: proxy.log.count("Started server process") == 2, timeout=60)


def _command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autocontinue", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def test_the_command_line() -> None:
    assert _command("serve", "--help").returncode == 0
    wrong = _command("serve", "--upstream", "http://x", "--upstream-key-env", "SOME_KEY")
    assert wrong.returncode == 2 and "needs --client-keys-file" in wrong.stderr
    unset = _command("serve", "--upstream", "http://x", "--upstream-key-env", "NOT_SET_ANYWHERE",
                     "--client-keys-file", __file__)  # fmt: skip
    assert unset.returncode == 2 and "NOT_SET_ANYWHERE is not set" in unset.stderr
    assert _command("serve", "--client-keys-file", "/no/such/file").returncode == 2
    slash = _command("serve", "--upstream", "http://x", "--cors-origin", "http://localhost:5173/")
    assert slash.returncode == 2 and "no path or trailing slash" in slash.stderr
    # A prompt that starts with the word, given as one argument, is a prompt: the prompt's parser answers.
    prompt = _command("serve me a recipe", "--max-tokens", "0")
    assert prompt.returncode == 2 and "autocontinue: error: argument --max-tokens" in prompt.stderr
    after_dashes = _command("--max-tokens", "0", "--", "serve", "me")
    assert after_dashes.returncode == 2 and "autocontinue: error: argument --max-tokens" in after_dashes.stderr


def test_without_an_upstream_it_serves_the_local_engine() -> None:
    with ServeProcess(startup_timeout=240) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0)
        models = client.models.list()
        reply = client.chat.completions.create(
            model=models.data[0].id, messages=[USER], max_tokens=8, extra_body={"autocontinue": {"max_rounds": 3}}
        )
        assert reply.model_extra["continuation"]["rounds"]  # type: ignore[index]
        assert reply.choices[0].message.content
