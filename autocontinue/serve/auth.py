"""Key modes: whose key reaches the upstream, and who may use the server.

- **Forwarding** (the default): the caller's ``Authorization`` header goes upstream with its request and nowhere
  else: it is never stored or logged.
- **Server-held key** (``--upstream-key-env NAME`` with ``--client-keys-file PATH``): the server sends its own key
  upstream, and a caller must present one of the client keys (``Authorization: Bearer KEY``); a missing or wrong
  one gets a 401 before anything is read or sent. The caller's key is never forwarded.
- **Client keys alone** (``--client-keys-file``, e.g. in front of the local engine or an upstream that needs none):
  callers are checked the same way and no key goes upstream.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path

from .errors import ServeError, ServeUsageError

__all__ = ["check_client", "load_client_keys", "upstream_headers"]

#: headers that describe one hop of the connection (RFC 9110 7.6.1) or that the proxy sets itself: never copied
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)


#: what a browser adds to a page's request, for the server it talks to (the proxy) and no other: an upstream that
#: enforces CORS itself refuses a request with a foreign ``Origin`` (Ollama answers 403), and the cookies are the
#: proxy's site's, not the upstream's
BROWSER_HEADERS = frozenset({"origin", "cookie"})
_BROWSER_PREFIXES = ("sec-fetch-", "sec-ch-", "access-control-request-")


#: what says whose account a request is billed to: the caller's only when its key is what goes upstream (with a
#: server-held key, an organization or project header of the caller's would pick where the server's key is billed)
_CREDENTIALS = frozenset({"authorization", "api-key", "openai-organization", "openai-project"})


def load_client_keys(path: str) -> frozenset[str]:
    """The keys in ``path``: one per line; blank lines and ``#`` comments are skipped. Kept as SHA-256 digests, so
    the server's memory holds no key a caller could reuse upstream."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ServeUsageError(f"--client-keys-file: cannot read {path}: {exc.strerror}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ServeUsageError(f"--client-keys-file: {path} holds no key")
    return frozenset(_digest(key) for key in keys)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value is not None:
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    # Azure-style clients send the key in an api-key header.
    return headers.get("api-key") or None


def check_client(client_keys: frozenset[str] | None, headers: Mapping[str, str]) -> None:
    """Raise a 401 unless the request presents one of ``client_keys`` (nothing to check when there are none)."""
    if client_keys is None:
        return
    presented = _bearer(headers)
    if presented is None:
        raise ServeError(
            401, "Missing API key: send 'Authorization: Bearer <key>'.", "invalid_request_error", code="missing_api_key"
        )
    digest = _digest(presented)
    # Compare against every key in constant time, so the time taken says nothing about which prefix matched.
    if not any(hmac.compare_digest(digest, known) for known in client_keys):
        raise ServeError(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")


def upstream_headers(headers: Mapping[str, str], *, forward_key: bool, through_sdk: bool) -> dict[str, str]:
    """The caller's headers to send upstream: all but hop-by-hop ones, ours, a browser's, and keys not to pass on.

    The caller's key, and the organization and project it names, are forwarded only in the forwarding mode
    (``forward_key``): a client key is ours, and with a server-held key that one is sent. ``through_sdk``: the
    OpenAI SDK sends the request and sets its own ``content-type``, ``accept`` and ``user-agent``; the SDK's markers
    (``x-stainless-*``) of the caller's own SDK are dropped there, since one of them (``x-stainless-raw-response``)
    would change what our SDK returns.
    """
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_HEADERS or lower.startswith("x-autocontinue-"):
            continue
        if lower in BROWSER_HEADERS or lower.startswith(_BROWSER_PREFIXES):
            continue
        if through_sdk and lower.startswith("x-stainless-"):
            continue
        if lower in _CREDENTIALS and not forward_key:
            continue
        if through_sdk and lower in ("content-type", "content-encoding", "accept", "user-agent"):
            continue
        kept[lower] = value
    return kept
