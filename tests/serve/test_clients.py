"""Clients in other languages through ``autocontinue serve``: the official ``openai`` npm package and the Vercel AI
SDK under Node, and ``curl``; against the emulator and the real local engine, where the answer through the proxy
must be the answer the library gives for the same request.

The npm packages are installed by ``make test`` (``npm ci`` in tests/serve/node, from its lock file); these tests fail,
never skip, when it or ``node`` / ``curl`` is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import autocontinue
from autocontinue.local import LocalEngine
from tests.support.common import API_KEY, TARGET, USER, add, fast_retry
from tests.support.emulator import Emulator
from tests.support.serve import Proxy

pytestmark = pytest.mark.timeout(600)

NODE_DIR = Path(__file__).parent / "node"


def _run_node(script: str, package: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run tests/serve/node/``script`` (which imports ``package``) with ``spec``; its one line of JSON."""
    executable = shutil.which("node")
    assert executable is not None, "node is not installed (Node 20 is part of the test set-up)"
    assert (NODE_DIR / "node_modules" / package).is_dir(), "run `make test` (it runs npm ci in tests/serve/node)"
    done = subprocess.run(
        [executable, str(NODE_DIR / script), json.dumps(spec)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def node(spec: dict[str, Any]) -> dict[str, Any]:
    """The official ``openai`` npm client (client.mjs)."""
    return _run_node("client.mjs", "openai", spec)


def aisdk(spec: dict[str, Any]) -> dict[str, Any]:
    """The Vercel AI SDK's OpenAI-compatible provider (aisdk.mjs)."""
    return _run_node("aisdk.mjs", "ai", spec)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("curl")
    assert executable is not None, "curl is not installed"
    return subprocess.run([executable, "-sS", *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def proxy(emu: Emulator) -> Iterator[Proxy]:
    with Proxy(emu.base_url("deepseek-beta"), options={"dialect": "prefix", "retry": fast_retry()}) as running:
        yield running


@pytest.mark.parametrize("stream", [False, True])
def test_node_openai_client(emu: Emulator, proxy: Proxy, stream: bool) -> None:
    model = add(emu)
    spec = {"baseURL": proxy.base_url, "apiKey": API_KEY, "model": model, "messages": [USER], "max_tokens": 9}
    result = node({**spec, "stream": stream})
    assert result.get("error") is None, result
    assert result["text"] == TARGET
    assert result["finish_reason"] == "stop"
    rounds = len(emu.requests(model))
    assert rounds > 3
    assert result["continuation"]["stop_cause"] == "natural"
    assert len(result["continuation"]["rounds"]) == rounds
    if stream:
        assert len(result["ids"]) == 1  # one continuous stream
    else:
        assert int(result["rounds"]) == rounds
        assert result["stop_cause"] == "natural"


def test_node_client_sees_options_errors_and_failures(emu: Emulator, proxy: Proxy) -> None:
    model = add(emu)
    spec = {"baseURL": proxy.base_url, "apiKey": API_KEY, "model": model, "messages": [USER], "max_tokens": 5}
    limited = node({**spec, "headers": {"X-Autocontinue-Max-Rounds": "2"}})
    assert (limited["stop_cause"], limited["finish_reason"]) == ("max_rounds", "length")
    assert TARGET.startswith(limited["text"])
    bad = node({**spec, "body": {"autocontinue": {"max_rounds": -1}}})
    assert bad["error"]["status"] == 400 and bad["error"]["name"] == "BadRequestError"
    from tests.support.emulator import Fault

    failing = add(emu, faults={n: Fault("status", status=500, retry_after=0.01) for n in range(3, 7)})
    failed = node({**spec, "model": failing})
    assert failed["error"]["status"] == 502
    partial = failed["error"]["body"]["partial"]["choices"][0]["message"]["content"]
    assert len(partial) > 5 and TARGET.startswith(partial)
    streamed = node({**spec, "model": add(emu, faults={n: Fault("status", status=500, retry_after=0.01)
                                                       for n in range(3, 7)}), "stream": True})  # fmt: skip
    assert "characters generated were streamed" in streamed["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_vercel_ai_sdk(emu: Emulator, proxy: Proxy, stream: bool) -> None:
    """The AI SDK's OpenAI-compatible provider, as opencode and TypeScript apps use it: it checks every chunk
    against its schema, so this is also the test that the trace's extra field and the error event pass one."""
    model = add(emu)
    spec = {"baseURL": proxy.base_url, "apiKey": API_KEY, "model": model, "prompt": "Tell me.", "max_tokens": 9}
    result = aisdk({**spec, "stream": stream})
    assert result.get("error") is None, result
    assert (result["text"], result["finish_reason"], result["errors"]) == (TARGET, "stop", [])
    requests = emu.requests(model)
    assert len(requests) > 3
    assert result["continuation"]["stop_cause"] == "natural"
    assert len(result["continuation"]["rounds"]) == len(requests)
    assert result["output_tokens"] == sum(r["usage"]["completion_tokens"] for r in result["continuation"]["rounds"])
    # A failure after some rounds: the text so far, then the error, each as the AI SDK reports them.
    from tests.support.emulator import Fault

    failing = add(emu, faults={n: Fault("status", status=500, retry_after=0.01) for n in range(3, 7)})
    failed = aisdk({**spec, "model": failing, "stream": stream})
    if stream:
        assert len(failed["text"]) > 5 and TARGET.startswith(failed["text"])
        assert any("characters generated were streamed" in e for e in failed["errors"]), failed
    else:
        assert (failed["error"]["name"], failed["error"]["status"]) == ("AI_APICallError", 502), failed
        partial = failed["error"]["body"]["error"]["partial"]["choices"][0]["message"]["content"]
        assert len(partial) > 5 and TARGET.startswith(partial)  # the text so far is in the error, not lost


def test_curl(emu: Emulator, proxy: Proxy) -> None:
    model = add(emu)
    body = json.dumps({"model": model, "messages": [USER], "max_tokens": 9})
    url = proxy.base_url + "/chat/completions"
    done = curl("-D", "-", url, "-H", "content-type: application/json", "-d", body)
    head, _, payload = done.stdout.partition("\n\n")  # text mode reads CRLF as LF
    assert json.loads(payload)["choices"][0]["message"]["content"] == TARGET
    assert f"x-autocontinue-rounds: {len(emu.requests(model))}" in head
    model = add(emu)
    streamed = json.dumps({"model": model, "messages": [USER], "max_tokens": 9, "stream": True})
    done = curl("-N", url, "-H", "content-type: application/json", "-H", "X-Autocontinue-Max-Rounds: 3",
                "-d", streamed)  # fmt: skip
    events = [e for e in done.stdout.split("\n\n") if e.startswith("data: {")]
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events
                   if json.loads(e[6:])["choices"])  # fmt: skip
    assert TARGET.startswith(text) and len(emu.requests(model)) == 3
    assert done.stdout.rstrip().endswith("data: [DONE]")
    trace = json.loads(events[-1][6:])["continuation"]
    assert (trace["stop_cause"], len(trace["rounds"])) == ("max_rounds", 3)
    bad = curl("-w", "%{http_code}", url, "-d", "{not json")
    assert bad.stdout.endswith("400") and '"invalid_json"' in bad.stdout


# ------------------------------------------------------------------------------------------- the real engine


QUESTION = {"role": "user", "content": "Name three colours of the rainbow and say one thing about each."}


@pytest.mark.parametrize("stream", [False, True])
def test_real_engine_answer_through_the_proxy_is_the_librarys(engine: LocalEngine, stream: bool) -> None:
    request = {"model": engine.model, "messages": [QUESTION], "max_tokens": 12, "temperature": 0, "seed": 7}
    with openai.OpenAI(base_url=engine.base_url, api_key="unused", max_retries=0) as direct:
        expected = autocontinue.create(direct, **request, max_rounds=4)
    assert len(expected.continuation.rounds) == 4  # several seams, cut by the budget
    with Proxy(engine.base_url, options={"max_rounds": 4}) as proxy:
        if stream:
            result = node({"baseURL": proxy.base_url, "apiKey": "k", "stream": True, **request,
                           "body": {"temperature": 0, "seed": 7}})  # fmt: skip
            assert result.get("error") is None, result
            assert result["text"] == expected.choices[0].message.content
        else:
            client = openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0)
            reply = client.chat.completions.create(**request)
            assert reply.choices[0].message.content == expected.choices[0].message.content
            trace = reply.model_extra["continuation"]  # type: ignore[index]
            assert [r["seam"] for r in trace["rounds"]] == [list(r.seam) for r in expected.continuation.rounds]
            assert [r["usage"]["completion_tokens"] for r in trace["rounds"]] == [
                r.usage.completion_tokens for r in expected.continuation.rounds
            ]
            assert trace["stop_cause"] == expected.continuation.stop_cause == "max_rounds"
            # Other routes reach llama-server unchanged.
            assert [m.id for m in client.models.list()]
