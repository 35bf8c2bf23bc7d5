"""``--cors-origin``: web pages of the origins given may call the proxy from a browser, and no others.

Each exchange is judged by the Fetch standard's CORS check, as a browser makes it (:func:`browser_allows`), so that
every case is cheap to test; tests/serve/test_browser.py has a real browser (Chromium) make the same decisions for
the main ones. The check: the preflight's status and ``Access-Control-Allow-*`` headers for the method and every
header the page sends, then the answer's ``Access-Control-Allow-Origin``, and which headers the page may read. The
headers a page sends are those of the official ``openai`` npm client in a browser (``x-stainless-*`` included):
a server that allows a fixed list and misses one of them fails every request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from autocontinue.serve.auth import load_client_keys, upstream_headers
from tests.support.common import API_KEY, TARGET, USER, add, fast_retry
from tests.support.emulator import Emulator
from tests.support.serve import Proxy

PAGE = "http://localhost:5173"
#: what the openai npm client sends from a browser, besides Content-Type
SDK_HEADERS = {
    "authorization": f"Bearer {API_KEY}",
    "x-stainless-lang": "js",
    "x-stainless-package-version": "6.30.1",
    "x-stainless-os": "Unknown",
    "x-stainless-arch": "unknown",
    "x-stainless-runtime": "browser:chrome",
    "x-stainless-runtime-version": "142.0.0",
    "x-stainless-retry-count": "0",
    "x-stainless-timeout": "600",
}
#: request headers a page may send without asking (the Fetch standard's CORS-safelisted ones; JSON is not)
_SAFELISTED = {"accept", "accept-language", "content-language"}


def browser_allows(
    http: httpx2.Client, url: str, method: str, origin: str, headers: dict[str, str], body: Any = None
) -> tuple[bool, httpx2.Response | None]:
    """Whether a browser lets a page of ``origin`` make this request and read its answer (and the answer)."""
    sent = {**headers, "content-type": "application/json"} if body is not None else dict(headers)
    asked = sorted(name.lower() for name in sent if name.lower() not in _SAFELISTED)
    preflight = http.options(
        url,
        headers={
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": ",".join(asked),
        },
    )
    if not 200 <= preflight.status_code < 300 or not _origin_ok(preflight, origin):
        return False, None
    methods = {m.strip().upper() for m in preflight.headers.get("access-control-allow-methods", "").split(",")}
    if method not in {"GET", "HEAD", "POST"} and method not in methods and "*" not in methods:
        return False, None
    allowed = {h.strip().lower() for h in preflight.headers.get("access-control-allow-headers", "").split(",")}
    for name in asked:  # a wildcard never covers Authorization
        if name not in allowed and ("*" not in allowed or name == "authorization"):
            return False, None
    answer = http.request(method, url, headers={**sent, "origin": origin}, json=body)
    return _origin_ok(answer, origin), answer


def _origin_ok(response: httpx2.Response, origin: str) -> bool:
    return response.headers.get("access-control-allow-origin") in (origin, "*")


def readable(response: httpx2.Response, name: str) -> bool:
    """Whether a page may read the answer's header ``name`` (beyond the few every page may)."""
    exposed = {h.strip().lower() for h in response.headers.get("access-control-expose-headers", "").split(",")}
    return name.lower() in exposed or "*" in exposed


@pytest.fixture
def proxies(emu: Emulator) -> Iterator[Any]:
    made: list[Proxy] = []

    def make(**settings: Any) -> Proxy:
        proxy = Proxy(emu.base_url("deepseek-beta"), options={"dialect": "prefix", "retry": fast_retry()}, **settings)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_page_of_an_allowed_origin_gets_the_whole_answer(emu: Emulator, proxies: Any, stream: bool) -> None:
    proxy = proxies(cors_origins=(PAGE,))
    model = add(emu)
    body = {"model": model, "messages": [USER], "max_tokens": 9, "stream": stream}
    url = proxy.base_url + "/chat/completions"
    with httpx2.Client(timeout=60) as http:
        allowed, answer = browser_allows(http, url, "POST", PAGE, SDK_HEADERS, body)
    assert allowed and answer is not None and answer.status_code == 200
    assert "Origin" in answer.headers.get("vary", "")  # a cache must not give it to another origin
    if stream:
        events = [json.loads(e[6:]) for e in answer.text.split("\n\n") if e.startswith("data: {")]
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == TARGET
        assert events[-1]["continuation"]["stop_cause"] == "natural"
    else:
        assert answer.json()["choices"][0]["message"]["content"] == TARGET
        assert readable(answer, "x-autocontinue-rounds") and readable(answer, "x-autocontinue-stop-cause")
        assert int(answer.headers["x-autocontinue-rounds"]) == len(emu.requests(model)) > 1


def test_pass_through_routes_and_errors_reach_the_page(emu: Emulator, proxies: Any, tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("client-key\n")
    proxy = proxies(cors_origins=(PAGE,), client_keys=load_client_keys(str(keys)))
    good = {**SDK_HEADERS, "authorization": "Bearer client-key"}
    with httpx2.Client(timeout=60) as http:
        allowed, models = browser_allows(http, proxy.base_url + "/models", "GET", PAGE, good)
        direct = http.get(emu.base_url("deepseek-beta") + "/models")
        assert allowed and models is not None
        assert (models.status_code, models.content) == (direct.status_code, direct.content)  # the upstream's answer
        # The preflight carries no key and passes; the wrong key's 401 is readable by the page.
        body = {"model": add(emu), "messages": [USER], "max_tokens": 9}
        allowed, refused = browser_allows(http, proxy.base_url + "/chat/completions", "POST", PAGE, SDK_HEADERS, body)
        assert allowed and refused is not None and refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"


def test_other_origins_and_a_server_without_cors_are_kept_out(emu: Emulator, proxies: Any) -> None:
    body = {"model": add(emu), "messages": [USER], "max_tokens": 9}
    with httpx2.Client(timeout=60) as http:
        proxy = proxies(cors_origins=(PAGE,))
        url = proxy.base_url + "/chat/completions"
        assert browser_allows(http, url, "POST", "https://evil.example", SDK_HEADERS, body) == (False, None)
        assert browser_allows(http, url, "POST", PAGE + ":1", SDK_HEADERS, body) == (False, None)
        # Without the preflight (a page's plain form post), the server answers but the browser hides the answer.
        plain = http.post(url, json=body, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in plain.headers
        closed = proxies()
        url = closed.base_url + "/chat/completions"
        assert browser_allows(http, url, "POST", PAGE, SDK_HEADERS, body) == (False, None)
        answer = http.post(url, json=body, headers={"origin": PAGE})
        assert answer.status_code == 200 and not any(h.startswith("access-control-") for h in answer.headers)


def test_any_origin(emu: Emulator, proxies: Any) -> None:
    proxy = proxies(cors_origins=("*",))
    body = {"model": add(emu), "messages": [USER], "max_tokens": 9}
    with httpx2.Client(timeout=60) as http:
        for origin in (PAGE, "chrome-extension://abcdefghijklmnop", "app://obsidian.md"):
            allowed, answer = browser_allows(
                http, proxy.base_url + "/chat/completions", "POST", origin, SDK_HEADERS, body
            )
            assert allowed and answer is not None and answer.json()["choices"][0]["message"]["content"] == TARGET


def test_a_browsers_own_headers_stay_with_the_proxy(emu: Emulator, proxies: Any) -> None:
    """``Origin`` (an upstream that checks it, as Ollama does, refuses a page of another site with a 403), the
    proxy's cookies and the ``Sec-*`` headers are for the server the browser talks to, not for the upstream."""
    proxy = proxies(cors_origins=(PAGE,))
    model = add(emu)
    browser = {"origin": PAGE, "cookie": "session=proxy-site", "sec-fetch-mode": "cors", "sec-ch-ua": '"Chromium"'}
    body = {"model": model, "messages": [USER], "max_tokens": 9}
    with httpx2.Client(timeout=60) as http:
        answer = http.post(proxy.base_url + "/chat/completions", json=body, headers={**browser, "x-app": "mine"})
    assert answer.status_code == 200
    sent = [{k.lower() for k in r["headers"]} for r in emu.requests(model)]
    assert len(sent) > 1 and all("x-app" in names for names in sent)  # the caller's other headers still go
    assert all(not names & set(browser) for names in sent)
    # The pass-through keeps the same ones back.
    passed = upstream_headers({**browser, "x-app": "mine"}, forward_key=True, through_sdk=False)
    assert passed == {"x-app": "mine"}
