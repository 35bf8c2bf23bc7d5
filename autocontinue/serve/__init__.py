"""``autocontinue serve``: a continuing OpenAI-compatible proxy, for clients in any language.

Point any OpenAI client (the Python or npm SDK, curl, a coding agent, a chat front end) at this server instead of
its provider: every ``POST /v1/chat/completions`` is answered by :func:`autocontinue.acreate` against the upstream,
so a reply cut off by the output-token limit comes back whole, streamed or not. Every other ``/v1/*`` route is passed
through unchanged. Needs the ``serve`` extra (``pip install 'autocontinue[serve]'``: starlette, uvicorn,
prometheus-client); the library itself does not.

    autocontinue serve --upstream https://api.deepseek.com --port 8080
    autocontinue serve                       # no upstream: the embedded local engine

Modules: :mod:`.config` (the command's flags and the server's settings), :mod:`.options` (per-request overrides from
the body and ``X-Autocontinue-*`` headers), :mod:`.auth` (key modes), :mod:`.errors` (the OpenAI error shape),
:mod:`.metrics` (Prometheus), :mod:`.chat` (the continued route), :mod:`.app` (the ASGI app: routes, limits,
pass-through), :mod:`.main` (starting uvicorn, the local engine, draining on SIGTERM).
"""

from __future__ import annotations

from .app import build_app
from .config import ServeConfig

__all__ = ["ServeConfig", "build_app"]
