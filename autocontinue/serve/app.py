"""The ASGI app: the routes, the limits every request meets, and the pass-through of other ``/v1/*`` routes.

    POST /v1/chat/completions   continued (:mod:`.chat`)
    *    /v1/{path}             passed through to ``<upstream>/{path}``, streaming both ways as it comes
    GET  /health                200 ``{"status": "ok"}`` (no upstream request)
    GET  /metrics               Prometheus text format (:mod:`.metrics`)

Every ``/v1`` request meets, in this order and before anything is read or sent upstream: the client key check (401),
the concurrency limit (429 with ``Retry-After: 1``), the body size limit (413), then JSON parsing (400).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import _log
from ..trace import ContinuationTrace
from .auth import check_client, upstream_headers
from .chat import ChatRoute
from .config import ServeConfig
from .errors import ServeError, error_payload, failure
from .metrics import Metrics
from .upstream import UPSTREAM_KEEPALIVE_EXPIRY, upstream_client, upstream_http

__all__ = ["build_app"]

#: upstream response headers not passed back: they describe the upstream hop, and the server sets its own
_NOT_BACK = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"})


class _Proxy:
    """The state of one app: settings, the upstream clients, the metrics, the requests in flight."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.in_flight = 0
        self.forward_key = config.upstream_key is None and config.client_keys is None
        timeout = httpx2.Timeout(config.upstream_timeout, connect=10.0)
        # Room for every request in flight to hold its own upstream connection.
        limits = httpx2.Limits(
            max_connections=config.max_concurrency + 16,
            max_keepalive_connections=256,
            keepalive_expiry=UPSTREAM_KEEPALIVE_EXPIRY,
        )
        self.http = httpx2.AsyncClient(timeout=timeout, limits=limits)
        self.sdk_http = upstream_http(timeout=timeout, limits=limits)
        # Without a key of the server's, the SDK's own Authorization header is left out of each request (the
        # caller's, if any, is forwarded in its place).
        self.sdk = upstream_client(
            base_url=config.upstream, api_key=config.upstream_key or "unused", http_client=self.sdk_http, max_retries=0
        )
        self.chat = ChatRoute(
            self.sdk, dict(config.options), server_pays=config.upstream_key is not None, observe=self.observe
        )

    def observe(
        self,
        route: str,
        status: int,
        started: float,
        stream: bool,
        trace: ContinuationTrace | None,
        error_kind: str | None,
    ) -> None:
        """Count a finished request and log it (``autocontinue.serve.request``): counts and names, no text, no key."""
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route, "true" if stream else "false").observe(elapsed)
        self.metrics.call(trace)
        if error_kind is not None:
            self.metrics.upstream_errors.labels(error_kind).inc()
        if _log.enabled("info"):
            fields: dict[str, Any] = {"route": route, "status": status, "stream": stream, "ms": round(elapsed * 1e3)}
            if trace is not None:
                fields.update(rounds=len(trace.rounds), stop_cause=trace.stop_cause)
            if error_kind is not None:
                fields["upstream_error"] = error_kind
            _log.emit("info", "autocontinue.serve.request", **fields)

    def sdk_headers(self, request: Request) -> dict[str, str]:
        headers = upstream_headers(request.headers, forward_key=self.forward_key, through_sdk=True)
        if self.config.upstream_key is None and "authorization" not in headers:
            headers["authorization"] = openai.omit  # type: ignore[assignment]  # the SDK's marker: send none
        return headers

    async def read_json(self, request: Request) -> Any:
        body = await _read_body(request, self.config.max_body_bytes)
        try:
            return json.loads(body)
        except ValueError:
            raise ServeError(
                400, "The request body is not valid JSON.", "invalid_request_error", code="invalid_json"
            ) from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, or a 413 as soon as it passes ``limit`` (announced or counted)."""
    too_large = ServeError(
        413, f"The request body is larger than {limit} bytes.", "invalid_request_error", code="request_too_large"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large
        parts.append(part)
    return b"".join(parts)


def _error_response(exc: BaseException) -> Response:
    status, payload, headers = failure(exc)
    return Response(payload, status_code=status, headers=headers, media_type="application/json")


@contextlib.contextmanager
def _admitted(proxy: _Proxy, request: Request) -> Any:
    """The checks every /v1 request passes before anything is read: client key (401), then capacity (429)."""
    check_client(proxy.config.client_keys, request.headers)
    if proxy.in_flight >= proxy.config.max_concurrency:
        raise ServeError(
            429,
            f"The server is handling {proxy.config.max_concurrency} requests; retry shortly.",
            "rate_limit_error",
            code="server_busy",
            headers={"retry-after": "1"},
        )
    proxy.in_flight += 1
    proxy.metrics.in_flight.inc()
    try:
        yield
    finally:
        proxy.in_flight -= 1
        proxy.metrics.in_flight.dec()


def build_app(config: ServeConfig) -> Starlette:
    """The proxy's ASGI app for ``config``."""
    proxy = _Proxy(config)

    async def chat(request: Request) -> Response:
        started = time.perf_counter()
        try:
            with _admitted(proxy, request):
                body = await proxy.read_json(request)
                response = await proxy.chat.handle(request, body, proxy.sdk_headers(request))
                if isinstance(response, StreamingResponse):
                    # The stream runs after this function returns: it keeps its place until its last byte.
                    return _holding(response, proxy)
                return response
        except ServeError as exc:
            proxy.observe("chat", exc.status, started, False, None, None)
            return _error_response(exc)

    async def passthrough(request: Request) -> Response:
        started = time.perf_counter()
        try:
            with _admitted(proxy, request):
                body = await _read_body(request, config.max_body_bytes)
                return await _pass(proxy, request, body, started)
        except ServeError as exc:
            proxy.observe("passthrough", exc.status, started, False, None, None)
            return _error_response(exc)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(proxy.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await proxy.http.aclose()
        await proxy.sdk_http.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    app = Starlette(
        middleware=_cors(config.cors_origins, methods),
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/{path:path}", passthrough, methods=methods),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.proxy = proxy
    return app


#: response headers a page may read: the trace, and what the OpenAI SDKs read (request id, when to retry)
_EXPOSED = [
    "x-autocontinue-rounds",
    "x-autocontinue-stop-cause",
    "x-autocontinue-cost-usd",
    "x-request-id",
    "retry-after",
]


def _cors(origins: tuple[str, ...], methods: list[str]) -> list[Middleware]:
    """CORS for web pages of ``origins`` (none: no CORS headers at all, and a browser keeps other origins out).

    Preflights are answered here, before the key check (a browser sends them without the key), and every request
    header asked for is allowed: the OpenAI SDKs send ``Authorization`` and their own ``x-stainless-*`` headers,
    and a fixed list that misses one fails every request (``Authorization`` cannot be allowed by a wildcard).
    Errors (401, 429, 502) carry the headers too, so that the page can read them."""
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=methods,
            allow_headers=["*"],
            expose_headers=_EXPOSED,
            max_age=600,
        )
    ]


def _holding(response: StreamingResponse, proxy: _Proxy) -> StreamingResponse:
    """``response`` counted as in flight until its body ends (the ``with _admitted`` block has been left by then)."""
    body = response.body_iterator
    proxy.in_flight += 1
    proxy.metrics.in_flight.inc()

    async def held() -> AsyncIterator[Any]:
        try:
            async for part in body:
                yield part
        finally:
            proxy.in_flight -= 1
            proxy.metrics.in_flight.dec()
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()

    response.body_iterator = held()
    return response


async def _pass(proxy: _Proxy, request: Request, body: bytes, started: float) -> Response:
    """Send the request to ``<upstream>/<path>`` and stream the answer back as it comes, status and headers
    included. A caller that disconnects cancels the body's iteration, which closes the upstream response."""
    url = proxy.config.upstream.rstrip("/") + "/" + request.path_params["path"]
    headers = upstream_headers(request.headers, forward_key=proxy.forward_key, through_sdk=False)
    if proxy.config.upstream_key is not None:
        headers["authorization"] = f"Bearer {proxy.config.upstream_key}"
    params: list[tuple[str, Any]] = list(request.query_params.multi_items())
    outgoing = proxy.http.build_request(request.method, url, params=params, headers=headers, content=body)
    try:
        upstream = await proxy.http.send(outgoing, stream=True)
    except httpx2.TimeoutException:
        proxy.observe("passthrough", 504, started, False, None, "timeout")
        return JSONResponse(error_payload("The upstream timed out.", "upstream_error", code="upstream_timeout"), 504)
    except httpx2.HTTPError:
        proxy.observe("passthrough", 502, started, False, None, "connection")
        message = "The upstream could not be reached."
        return JSONResponse(error_payload(message, "upstream_error", code="upstream_unreachable"), 502)
    back = {k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_BACK}

    async def relay() -> AsyncIterator[bytes]:
        status = upstream.status_code
        try:
            async for part in upstream.aiter_raw():
                yield part
        except httpx2.HTTPError:
            status = 502  # the upstream broke off mid-body: the caller's body ends short, as the upstream's did
        finally:
            await upstream.aclose()
            proxy.observe("passthrough", status, started, False, None, None if status < 500 else str(status))

    response = StreamingResponse(relay(), status_code=upstream.status_code, headers=back)
    return _holding(response, proxy)
