"""The floor of any Python proxy hop: a relay that forwards each request and streams the upstream's bytes back.

    python -m benchmarks._relay --upstream http://127.0.0.1:8000/vllm/v1 --port 8081

The same stack as ``autocontinue serve`` (Starlette on uvicorn with uvloop and httptools, one process, the upstream
reached through the HTTP client the proxy's SDK sends with: httpx2 on the SDK's aiohttp transport), doing nothing
else: no JSON parsed, no SDK request path, no metrics, no log. The body goes upstream as it came, and the answer
comes back as the upstream's raw bytes, each read written on at once. Whatever this relay costs against the
upstream called directly, every proxy on this stack costs at least that.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import httpx2
import openai
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from autocontinue.serve.config import DEFAULT_KEEP_ALIVE_TIMEOUT
from autocontinue.serve.upstream import UPSTREAM_KEEPALIVE_EXPIRY

#: request and response headers that describe one hop, not the message
_HOP = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"})


def build_relay(upstream: str) -> Starlette:
    """A Starlette app that relays ``/v1/{path}`` to ``<upstream>/{path}``."""
    base = upstream.rstrip("/")
    limits = httpx2.Limits(
        max_connections=4096, max_keepalive_connections=256, keepalive_expiry=UPSTREAM_KEEPALIVE_EXPIRY
    )
    http = openai.DefaultAioHttpClient(timeout=httpx2.Timeout(300, connect=10), limits=limits)

    async def relay(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k not in _HOP]
        outgoing = http.build_request(
            request.method, f"{base}/{request.path_params['path']}", headers=headers, content=await request.body()
        )
        answer = await http.send(outgoing, stream=True)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for part in answer.aiter_raw():
                    yield part
            finally:
                await answer.aclose()

        back = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
        return StreamingResponse(body(), status_code=answer.status_code, headers=back)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await http.aclose()

    methods = ["GET", "POST"]
    return Starlette(
        routes=[Route("/v1/{path:path}", relay, methods=methods), Route("/health", health)], lifespan=lifespan
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        build_relay(args.upstream),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
        backlog=4096,
        timeout_keep_alive=DEFAULT_KEEP_ALIVE_TIMEOUT,  # as autocontinue serve's: no client sees its connection reset
    )


if __name__ == "__main__":
    main()
