"""A page in a real browser calls the proxy: Debian's Chromium (driven by playwright-core), the official ``openai`` npm
client loaded by the page from the package's own ES modules, the page served from one origin and the proxy on
another, as a chat front end in a browser calls an API. The browser makes every CORS decision itself.

Chromium comes from the system (Debian's ``chromium``; ``make test`` installs it where it can) and playwright-core
from tests/serve/node's lock file; these tests fail without them, they are never skipped.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from autocontinue.serve.auth import load_client_keys
from tests.serve.test_clients import NODE_DIR
from tests.support.common import API_KEY, TARGET, USER, add, fast_retry
from tests.support.emulator import Emulator
from tests.support.serve import Proxy

pytestmark = pytest.mark.timeout(300)


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Chromium is not installed: `make test` installs Debian's chromium, or install it yourself"
    return found


class _Files(http.server.SimpleHTTPRequestHandler):
    """The page's origin: tests/serve/node/node_modules as static files, ES modules as JavaScript."""

    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
    }

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page() -> Iterator[str]:
    """The URL of a page (the directory listing of node_modules) on an origin of its own."""
    assert (NODE_DIR / "node_modules" / "openai" / "index.mjs").is_file(), (
        "run `make test` (npm ci in tests/serve/node)"
    )
    handler = functools.partial(_Files, directory=str(NODE_DIR / "node_modules"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def in_browser(page: str, proxy: Proxy, model: str) -> dict[str, Any]:
    """The page's four calls through the npm client (browser.mjs): continued, streamed, passed through, wrong key."""
    assert (NODE_DIR / "node_modules" / "playwright-core").is_dir(), "run `make test` (npm ci in tests/serve/node)"
    node = shutil.which("node")
    assert node is not None, "node is not installed (Node 20 is part of the test set-up)"
    spec = {"chromium": chromium_binary(), "page": page, "baseURL": proxy.base_url, "apiKey": API_KEY,
            "model": model, "messages": [USER], "max_tokens": 9}  # fmt: skip
    done = subprocess.run([node, str(NODE_DIR / "browser.mjs"), json.dumps(spec)], capture_output=True, text=True,
                          timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def proxies(emu: Emulator, tmp_path: Path) -> Iterator[Any]:
    keys = tmp_path / "keys"
    keys.write_text(f"{API_KEY}\n")
    made: list[Proxy] = []

    def make(*origins: str) -> Proxy:
        proxy = Proxy(emu.base_url("deepseek-beta"), options={"dialect": "prefix", "retry": fast_retry()},
                      client_keys=load_client_keys(str(keys)), cors_origins=origins)  # fmt: skip
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def test_a_page_of_an_allowed_origin_gets_whole_answers(emu: Emulator, proxies: Any, page: str) -> None:
    proxy = proxies(page.rstrip("/"))
    model = add(emu)
    seen = in_browser(page, proxy, model)
    rounds = len(emu.requests(model)) // 2  # the continued call, then the streamed one
    assert rounds > 1
    assert seen["plain"] == {"text": TARGET, "rounds": str(rounds), "stop_cause": "natural"}, seen
    assert seen["stream"]["text"] == TARGET, seen
    assert len(seen["stream"]["ids"]) == 1 and seen["stream"]["continuation"]["stop_cause"] == "natural"
    assert len(seen["stream"]["continuation"]["rounds"]) == rounds
    # The pass-through route: the emulator has no /models, and its own 404 reaches the page as what it is.
    assert seen["models"] == {"error": {"name": "NotFoundError", "status": 404}}, seen
    # The wrong key's 401 reaches the page as the SDK's AuthenticationError, not as a network failure.
    assert seen["wrong_key"] == {"error": {"name": "AuthenticationError", "status": 401}}
    assert not [m for m in seen["console"] if "CORS" in m], seen["console"]


def test_pages_of_other_origins_are_kept_out_by_the_browser(emu: Emulator, proxies: Any, page: str) -> None:
    for proxy in (proxies("http://localhost:5173"), proxies()):  # another origin allowed; none
        model = add(emu)
        seen = in_browser(page, proxy, model)
        refused = {"error": {"name": "APIConnectionError", "status": None}}  # the SDK's name for a blocked fetch
        assert [seen[call] for call in ("plain", "stream", "models", "wrong_key")] == [refused] * 4, seen
        assert any("blocked by CORS policy" in m for m in seen["console"]), seen["console"]
        # The browser asked first (a preflight: JSON and a key are not a "simple" request), and nothing went on.
        assert emu.requests(model) == []
