"""``autocontinue serve`` over real HTTP: the real ``openai`` SDK talks to the proxy, the proxy to the emulator.

The answer through the proxy must be the library's answer for the same request (text, usage, finish reason and
the trace, round for round), streamed or not, in every dialect; the proxy's own refusals come in the OpenAI error
shape before anything goes upstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
import structlog

import autocontinue
from autocontinue.serve.options import client_deadline, request_options
from tests.support.common import API_KEY, DIALECT_PERSONAS, TARGET, USER, add, eventually, fast_retry
from tests.support.emulator import Emulator, Fault
from tests.support.serve import Proxy, metric

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def proxies(emu: Emulator) -> Iterator[Any]:
    """``make(persona, **settings)`` -> a running proxy in front of that persona (closed at teardown)."""
    made: list[Proxy] = []

    def make(persona: str, **settings: Any) -> Proxy:
        settings.setdefault("options", {})
        settings["options"] = {"retry": fast_retry(), **settings["options"]}
        proxy = Proxy(emu.base_url(persona), **settings)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def sdk(proxy: Proxy, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)


def comparable(completion: dict[str, Any]) -> dict[str, Any]:
    """A completion's JSON without what differs between two runs of the same call (ids, times, latencies)."""
    data = {k: v for k, v in completion.items() if k not in ("id", "created")}
    trace = data.get("continuation")
    if trace is not None:
        data["continuation"] = {**trace, "rounds": [{**r, "latency_s": None} for r in trace["rounds"]]}
        data["continuation"]["per_choice"] = [
            {**c, "rounds": [{**r, "latency_s": None} for r in c["rounds"]]} for c in trace["per_choice"]
        ]
    return data


def library_answer(emu: Emulator, persona: str, request: dict[str, Any], **options: Any) -> dict[str, Any]:
    """The same request made with the library directly, as a completion's JSON with its trace."""
    from autocontinue.serve.errors import completion_payload

    with openai.OpenAI(base_url=emu.base_url(persona), api_key=API_KEY) as client:
        completion = autocontinue.create(client, **request, retry=fast_retry(), **options)
    return completion_payload(completion)


def twin_scripts(emu: Emulator, **script: Any) -> tuple[str, str]:
    # Two scripts with the same answer, one per run: the emulator's prompt cache is per script, so both runs see
    # the same cached-token counts.
    return add(emu, **script), add(emu, **script)


# ------------------------------------------------------------------------------------------- the same answer


@pytest.mark.parametrize(("persona", "dialect"), DIALECT_PERSONAS)
def test_non_streamed_answer_is_the_librarys(emu: Emulator, proxies: Any, persona: str, dialect: str) -> None:
    mine, theirs = twin_scripts(emu)
    proxy = proxies(persona, options={"dialect": dialect})
    request = {"messages": [USER], "max_tokens": 9}
    raw = sdk(proxy).chat.completions.with_raw_response.create(model=mine, **request)
    body = json.loads(raw.text)
    expected = library_answer(emu, persona, {"model": theirs, **request}, dialect=dialect)
    assert body["choices"][0]["message"]["content"] == TARGET
    assert comparable(body) == {**comparable(expected), "model": body["model"]}
    assert raw.headers["x-autocontinue-rounds"] == str(len(body["continuation"]["rounds"]))
    assert raw.headers["x-autocontinue-stop-cause"] == "natural"
    assert "x-autocontinue-cost-usd" not in raw.headers  # the emulator's models have no price
    # The SDK's own type, the trace kept as an extra field.
    assert raw.parse().choices[0].message.content == TARGET
    assert all("autocontinue" not in r["body"] for r in emu.requests(mine))


@pytest.mark.parametrize(("persona", "dialect"), DIALECT_PERSONAS)
def test_streamed_answer_is_the_librarys(emu: Emulator, proxies: Any, persona: str, dialect: str) -> None:
    mine, theirs = twin_scripts(emu)
    proxy = proxies(persona, options={"dialect": dialect})
    request = {"messages": [USER], "max_tokens": 9, "stream": True, "stream_options": {"include_usage": True}}
    with sdk(proxy).chat.completions.create(model=mine, **request) as stream:
        chunks = list(stream)
    client = openai.OpenAI(base_url=emu.base_url(persona), api_key=API_KEY)
    with client, autocontinue.create(client, model=theirs, **request, dialect=dialect, retry=fast_retry()) as direct:
        expected = list(direct)
    assert [c.choices[0].delta.content for c in chunks if c.choices] == [
        c.choices[0].delta.content for c in expected if c.choices
    ]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TARGET
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage == expected[-1].usage
    assert len({c.id for c in chunks}) == 1
    # The trace is a field of the last chunk only (the usage chunk here), the library's stream.continuation.
    assert [c for c in chunks if c.model_extra and "continuation" in c.model_extra] == [chunks[-1]]
    trace = chunks[-1].model_extra["continuation"]  # type: ignore[index]
    assert trace["stop_cause"] == direct.continuation.stop_cause == "natural"
    assert [r["dialect"] for r in trace["rounds"]] == [r.dialect for r in direct.continuation.rounds]


@pytest.mark.parametrize("usage", [False, True])
def test_stream_is_data_events_only_the_last_with_the_trace(emu: Emulator, proxies: Any, usage: bool) -> None:
    """What a strict SSE reader (every event one ``data:`` line of JSON, or ``[DONE]``) needs: no comment, no other
    field. Many readers fail on anything else (OpenRouter's keep-alive comments broke several clients)."""
    model = add(emu)
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    body: dict[str, Any] = {"model": model, "messages": [USER], "max_tokens": 9, "stream": True}
    if usage:
        body["stream_options"] = {"include_usage": True}
    with httpx2.Client() as http:
        response = http.post(proxy.base_url + "/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\ndata: [DONE]\n\n")
    events = [event for event in response.text.split("\n\n") if event]
    assert all(event.startswith("data: ") and "\n" not in event for event in events)
    chunks = [json.loads(event[len("data: ") :]) for event in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == TARGET
    assert [i for i, c in enumerate(chunks) if "continuation" in c] == [len(chunks) - 1]
    last = chunks[-1]
    assert (last["choices"] == []) is usage  # the usage chunk comes last when asked for, else the finish chunk
    if not usage:
        assert last["choices"][0]["finish_reason"] == "stop"
    trace = last["continuation"]
    assert len(trace["rounds"]) == len(emu.requests(model)) > 1
    assert trace["stop_cause"] == "natural"
    assert [r["dialect"] for r in trace["rounds"]][1:] == ["prefix"] * (len(trace["rounds"]) - 1)


def test_a_non_streamed_call_ends_before_the_clients_timeout(emu: Emulator, proxies: Any) -> None:
    """The Python SDK announces its timeout (``X-Stainless-Read-Timeout``): a non-streamed call ends within 90 % of
    it with the answer so far, where the client would otherwise time out, retry, and lose every round. A stream,
    whose timeout is the gap between its bytes, runs to its end."""
    proxy = proxies("deepseek-beta", options={"dialect": "prefix", "max_rounds": 100})
    model = add(emu, first_token_delay=0.15)  # each round at least 0.15 s; the whole answer needs more than 10
    client = openai.OpenAI(base_url=proxy.base_url, api_key=API_KEY, max_retries=0, timeout=1.0)
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=4)
    trace = reply.model_extra["continuation"]  # type: ignore[index]
    assert (trace["stop_cause"], reply.choices[0].finish_reason) == ("time_budget", "length")
    assert 1 <= len(trace["rounds"]) == len(emu.requests(model)) <= 6  # 0.9 s / 0.15 s
    assert TARGET.startswith(reply.choices[0].message.content or "-")
    model = add(emu, first_token_delay=0.15)
    with client.chat.completions.create(model=model, messages=[USER], max_tokens=4, stream=True) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TARGET
    assert chunks[-1].model_extra["continuation"]["stop_cause"] == "natural"  # type: ignore[index]
    assert len(emu.requests(model)) > 10


def test_the_clients_timeout_and_the_time_budget_options() -> None:
    assert client_deadline({"x-stainless-read-timeout": "600.0"}) == pytest.approx(540)  # the Python SDK's
    assert client_deadline({"x-stainless-timeout": "20"}) == pytest.approx(18)  # the Node SDK's, whole seconds
    assert client_deadline({}) is None
    assert client_deadline({"x-stainless-read-timeout": "None"}) is None
    assert client_deadline({"x-stainless-read-timeout": "-1"}) is None
    headers = {"x-stainless-read-timeout": "100"}
    assert request_options({}, None, headers, server_pays=False)["max_seconds"] == pytest.approx(90)
    assert "max_seconds" not in request_options({}, None, headers, server_pays=False, stream=True)
    lower = request_options({"max_seconds": 30.0}, None, headers, server_pays=False)  # the lower one holds
    assert lower["max_seconds"] == 30.0
    asked = request_options({}, {"max_seconds": 5}, headers, server_pays=False)
    assert asked["max_seconds"] == 5.0
    assert request_options({}, None, {"x-autocontinue-max-seconds": "7.5"}, server_pays=False)["max_seconds"] == 7.5


def test_n_choices_tools_and_json_mode(emu: Emulator, proxies: Any) -> None:
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    client = sdk(proxy)
    targets = ["First choice, long enough for rounds.", "Second choice is also long enough here."]
    model = add(emu, targets=targets)
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=4, n=2)
    assert [c.message.content for c in reply.choices] == targets
    assert len(reply.model_extra["continuation"]["per_choice"]) == 2  # type: ignore[index]
    document = '{"name": "fox", "colour": "brown", "speed": "quick", "legs": 4}'
    model = add(emu, target=document)
    reply = client.chat.completions.create(
        model=model, messages=[USER], max_tokens=5, response_format={"type": "json_object"}
    )
    assert json.loads(reply.choices[0].message.content or "") == json.loads(document)
    model = add(emu, tool_call={"name": "lookup", "arguments": '{"q": "fox"}'})
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=50, tools=tools)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.tool_calls[0].function.arguments == '{"q": "fox"}'  # type: ignore[index,union-attr]


def test_unknown_body_fields_reach_the_upstream(emu: Emulator, proxies: Any) -> None:
    model = add(emu)
    proxy = proxies("vllm", options={"dialect": "continue_final_message"})
    sdk(proxy).chat.completions.create(model=model, messages=[USER], max_tokens=50, extra_body={"top_k": 3})
    assert all(r["body"]["top_k"] == 3 for r in emu.requests(model))


# ------------------------------------------------------------------------------------------- options


def test_body_options_override_and_are_removed(emu: Emulator, proxies: Any) -> None:
    model = add(emu)
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    reply = sdk(proxy).chat.completions.create(
        model=model, messages=[USER], max_tokens=5, extra_body={"autocontinue": {"max_rounds": 2}}
    )
    assert reply.model_extra["continuation"]["stop_cause"] == "max_rounds"  # type: ignore[index]
    assert reply.choices[0].finish_reason == "length"
    assert len(emu.requests(model)) == 2
    assert all("autocontinue" not in r["body"] for r in emu.requests(model))


def test_header_options_override_the_body(emu: Emulator, proxies: Any) -> None:
    model = add(emu)
    proxy = proxies("deepseek-beta")  # dialect "auto" would pick prefill on a loopback URL; the header says prefix
    raw = sdk(proxy).chat.completions.with_raw_response.create(
        model=model,
        messages=[USER],
        max_tokens=5,
        extra_body={"autocontinue": {"max_rounds": 2, "heal": True}},
        extra_headers={
            "X-Autocontinue-Max-Rounds": "3",
            "X-Autocontinue-Dialect": "prefix",
            "x-autocontinue-heal": "false",
        },
    )
    assert raw.headers["x-autocontinue-rounds"] == "3"
    requests = emu.requests(model)
    assert len(requests) == 3
    assert requests[1]["body"]["messages"][-1].get("prefix") is True
    assert all(not k.lower().startswith("x-autocontinue") for k in requests[0]["headers"])


@pytest.mark.parametrize(
    ("body_options", "headers", "param"),
    [
        ({"max_rounds": 0}, {}, "autocontinue.max_rounds"),
        ({"max_rounds": "3"}, {}, "autocontinue.max_rounds"),
        ({"heal": "no"}, {}, "autocontinue.heal"),
        ({"max_cost_usd": -1}, {}, "autocontinue.max_cost_usd"),
        ({"log_text": True}, {}, "autocontinue.log_text"),
        ({"retry": None}, {}, "autocontinue.retry"),
        ({"prices": {"m": [1, 2]}}, {}, "autocontinue.prices"),
        ({}, {"X-Autocontinue-Max-Rounds": "many"}, "X-Autocontinue-max-rounds"),
        ({}, {"X-Autocontinue-Bogus": "1"}, "X-Autocontinue-bogus"),
        ("not an object", {}, "autocontinue"),
    ],
)
def test_bad_options_are_a_400_before_any_request(
    emu: Emulator, proxies: Any, body_options: Any, headers: dict[str, str], param: str
) -> None:
    model = add(emu)
    proxy = proxies("deepseek-beta")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(proxy).chat.completions.create(
            model=model, messages=[USER], extra_body={"autocontinue": body_options}, extra_headers=headers
        )
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param  # type: ignore[index]
    assert caught.value.body["code"] == "invalid_autocontinue_options"  # type: ignore[index]
    assert emu.requests(model) == []


def test_values_the_library_refuses_are_a_400(emu: Emulator, proxies: Any) -> None:
    model = add(emu)
    proxy = proxies("deepseek-beta")
    client = sdk(proxy)
    with pytest.raises(openai.BadRequestError, match="dialect"):
        client.chat.completions.create(model=model, messages=[USER], extra_body={"autocontinue": {"dialect": "x"}})
    with pytest.raises(openai.BadRequestError, match="price"):  # a cost budget needs the model's price
        client.chat.completions.create(model=model, messages=[USER], extra_headers={"X-Autocontinue-Max-Cost-Usd": "1"})
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=model, messages=[])
    with pytest.raises(openai.BadRequestError, match="stream"):  # n > 1 cannot stream in the library
        client.chat.completions.create(model=model, messages=[USER], n=2, stream=True)
    assert emu.requests(model) == []


def test_prices_give_a_cost_and_a_cost_header(emu: Emulator, proxies: Any) -> None:
    model = add(emu)
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    raw = sdk(proxy).chat.completions.with_raw_response.create(
        model=model,
        messages=[USER],
        max_tokens=9,
        extra_body={"autocontinue": {"prices": {model: {"input": 1.0, "output": 2.0}}, "max_cost_usd": 5}},
    )
    cost = raw.parse().model_extra["continuation"]["cost_usd"]  # type: ignore[index]
    assert cost > 0
    assert float(raw.headers["x-autocontinue-cost-usd"]) == pytest.approx(cost, abs=1e-6)


# ------------------------------------------------------------------------------------------- the proxy's refusals


def post(proxy: Proxy, content: bytes | str, headers: dict[str, str] | None = None) -> httpx2.Response:
    with httpx2.Client() as http:
        return http.post(proxy.base_url + "/chat/completions", content=content, headers=headers or {})


def test_bad_json_is_a_400_in_the_openai_shape(emu: Emulator, proxies: Any) -> None:
    proxy = proxies("openai")
    before = emu.stats()["requests_total"]
    for content in (b"{not json", b"[1, 2]", b""):
        response = post(proxy, content, {"content-type": "application/json"})
        assert response.status_code == 400
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert emu.stats()["requests_total"] == before


def test_oversized_body_is_a_413(emu: Emulator, proxies: Any) -> None:
    proxy = proxies("openai", max_body_bytes=1000)
    model = add(emu)
    big = json.dumps({"model": model, "messages": [{"role": "user", "content": "x" * 2000}]})
    assert post(proxy, big).status_code == 413

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield big[:500].encode()
        yield big[500:].encode()

    with httpx2.Client() as http:
        response = http.post(proxy.base_url + "/chat/completions", content=chunked())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert emu.requests(model) == []


def test_client_keys_401_before_anything_goes_upstream(emu: Emulator, proxies: Any) -> None:
    model = add(emu)
    proxy = proxies(
        "deepseek-beta", upstream_key="server-key", client_keys=_digests("client-key"), options={"dialect": "prefix"}
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(proxy, key="wrong-key").chat.completions.create(model=model, messages=[USER], max_tokens=9)
    assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    missing = post(proxy, json.dumps({"model": model, "messages": [USER]}))
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_api_key")
    with httpx2.Client() as http:
        assert http.get(proxy.base_url + "/models").status_code == 401  # the pass-through too
        assert http.post(proxy.base_url + "/chat/completions", content=b"{bad").status_code == 401
    assert emu.requests(model) == []
    billed = {"OpenAI-Organization": "org-other", "OpenAI-Project": "proj-other", "X-App": "mine"}
    reply = sdk(proxy, key="client-key").chat.completions.create(
        model=model, messages=[USER], max_tokens=9, extra_headers=billed
    )
    assert reply.choices[0].message.content == TARGET
    sent = [{k.lower(): v for k, v in r["headers"].items()} for r in emu.requests(model)]
    assert {h.get("authorization") for h in sent} == {"Bearer server-key"}  # the server's key, never the client's
    # Nor may a caller choose where the server's key is billed; its other headers go.
    assert all("openai-organization" not in h and "openai-project" not in h and h["x-app"] == "mine" for h in sent)


def test_the_callers_key_is_forwarded_by_default(emu: Emulator, proxies: Any) -> None:
    model = add(emu)
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    billed = {"OpenAI-Organization": "org-mine", "OpenAI-Project": "proj-mine"}
    sdk(proxy, key="callers-own-key").chat.completions.create(
        model=model, messages=[USER], max_tokens=9, extra_headers=billed
    )
    sent = [{k.lower(): v for k, v in r["headers"].items()} for r in emu.requests(model)]
    assert {h.get("authorization") for h in sent} == {"Bearer callers-own-key"}
    assert {(h.get("openai-organization"), h.get("openai-project")) for h in sent} == {("org-mine", "proj-mine")}
    model = add(emu)
    post(proxy, json.dumps({"model": model, "messages": [USER]}))  # no Authorization at all: none sent upstream
    assert [r["headers"].get("authorization") for r in emu.requests(model)] == [None]


def _digests(*keys: str) -> frozenset[str]:
    import hashlib

    return frozenset(hashlib.sha256(k.encode()).hexdigest() for k in keys)


def test_metrics_count_requests_rounds_and_stop_causes(emu: Emulator, proxies: Any) -> None:
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    model = add(emu)
    client = sdk(proxy)
    client.chat.completions.create(model=model, messages=[USER], max_tokens=9)
    rounds = len(emu.requests(model))
    client.chat.completions.create(
        model=add(emu), messages=[USER], max_tokens=9, extra_body={"autocontinue": {"max_rounds": 2}}
    )
    post(proxy, b"{bad")
    text = proxy.metrics()
    assert metric(text, "autocontinue_proxy_requests_total", route="chat", status="200") == 2
    assert metric(text, "autocontinue_proxy_requests_total", route="chat", status="400") == 1
    assert metric(text, "autocontinue_proxy_rounds_per_call_count") == 2
    assert metric(text, "autocontinue_proxy_rounds_per_call_sum") == rounds + 2
    assert metric(text, "autocontinue_proxy_stop_causes_total", stop_cause="natural") == 1
    assert metric(text, "autocontinue_proxy_stop_causes_total", stop_cause="max_rounds") == 1
    assert metric(text, "autocontinue_proxy_in_flight") == 0
    with httpx2.Client() as http:
        assert http.get(proxy.url + "/health").json() == {"status": "ok"}


# ------------------------------------------------------------------------------------------- upstream faults


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [429, 500, 503])
def test_upstream_error_before_text_is_passed_on(emu: Emulator, proxies: Any, status: int, stream: bool) -> None:
    faults = {n: Fault("status", status=status, retry_after=0.01) for n in range(1, 5)}  # every attempt
    model = add(emu, faults=faults)
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    with httpx2.Client() as http:
        body = {"model": model, "messages": [USER], "max_tokens": 9, "stream": stream}
        response = http.post(proxy.base_url + "/chat/completions", json=body)
    assert response.status_code == status
    assert "error" in response.json()
    assert response.headers["retry-after"] == "0.01"
    assert len(emu.requests(model)) == 4  # the library's retries, not the SDK's on top
    assert metric(proxy.metrics(), "autocontinue_proxy_upstream_errors_total", kind=str(status)) == 1


def test_transient_upstream_errors_are_retried_to_the_whole_answer(emu: Emulator, proxies: Any) -> None:
    faults = {1: Fault("status", status=429, retry_after=0.01), 3: Fault("status", status=502, retry_after=0.01)}
    model = add(emu, faults=faults)
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    reply = sdk(proxy).chat.completions.create(model=model, messages=[USER], max_tokens=9)
    assert reply.choices[0].message.content == TARGET
    assert metric(proxy.metrics(), "autocontinue_proxy_upstream_retries_total") == 2


def test_failure_after_some_rounds_is_a_502_with_the_partial_text(emu: Emulator, proxies: Any) -> None:
    faults = {n: Fault("status", status=500, retry_after=0.01) for n in range(3, 7)}
    model = add(emu, faults=faults)
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(proxy).chat.completions.create(model=model, messages=[USER], max_tokens=9)
    assert caught.value.status_code == 502
    error = caught.value.body
    assert error["code"] == "continuation_failed"  # type: ignore[index]
    partial = error["partial"]  # type: ignore[index]
    text = partial["choices"][0]["message"]["content"]
    assert len(text) > 10 and TARGET.startswith(text)
    assert partial["continuation"]["stop_cause"] == "error"
    assert error["upstream_status"] == 500  # type: ignore[index]
    assert caught.value.response.headers["x-autocontinue-rounds"] == "2"


def test_stream_failing_after_some_rounds_ends_with_an_error_event(emu: Emulator, proxies: Any) -> None:
    faults = {n: Fault("status", status=500, retry_after=0.01) for n in range(3, 7)}
    model = add(emu, faults=faults)
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    received = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in sdk(proxy).chat.completions.create(model=model, messages=[USER], max_tokens=9, stream=True):
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert len(received) > 10 and TARGET.startswith(received)  # every character generated was delivered
    assert "characters generated were streamed" in caught.value.message


def test_stream_dropped_mid_body_is_resumed_exactly(emu: Emulator, proxies: Any) -> None:
    model = add(emu, faults={2: Fault("drop", after_chunks=3)})
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    stream = sdk(proxy).chat.completions.create(model=model, messages=[USER], max_tokens=9, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == TARGET


def test_upstream_unreachable_is_a_502(proxies: Any) -> None:
    proxy = Proxy("http://127.0.0.1:9/v1", options={"retry": None})
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            sdk(proxy).chat.completions.create(model="m", messages=[USER])
        assert caught.value.status_code == 502
        assert caught.value.body["code"] == "upstream_unreachable"  # type: ignore[index]
    finally:
        proxy.close()


def test_a_request_is_an_event_of_the_library_logger(emu: Emulator, proxies: Any) -> None:
    """The proxy logs through the library's one logger: an application's structlog pipeline receives each request
    as ``autocontinue.serve.request`` beside the library's own events, with counts and names only."""
    key, text = "sk-proxy-SECRET-4", "PURPLE ELEPHANT 5"
    proxy = proxies("deepseek-beta", options={"dialect": "prefix"})
    message = {"role": "user", "content": text}
    try:
        with structlog.testing.capture_logs() as events:
            client = sdk(proxy, key=key)
            assert client.chat.completions.create(model=add(emu), messages=[message], max_tokens=9)
            stream = client.chat.completions.create(model=add(emu), messages=[message], max_tokens=9, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == TARGET

            def requests() -> list[tuple[Any, ...]]:
                found = [e for e in events if e["event"] == "autocontinue.serve.request"]
                return [(e["route"], e["status"], e["stream"], e["stop_cause"]) for e in found]

            assert eventually(lambda: len(requests()) == 2, timeout=10)
    finally:
        structlog.reset_defaults()
    assert sorted(requests()) == [("chat", 200, False, "natural"), ("chat", 200, True, "natural")]
    assert {"autocontinue.round", "autocontinue.call"} <= {e["event"] for e in events}
    for secret in (key, text, "ELEPHANT", TARGET[:20]):
        assert secret not in repr(events)
