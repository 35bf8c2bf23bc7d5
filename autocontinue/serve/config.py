"""The ``serve`` command's flags and the server's settings (:class:`ServeConfig`).

The continuation flags mirror the ``autocontinue`` command's and the library's options (``--max-rounds``,
``--max-total-tokens``, ``--max-cost``, ``--max-round-tokens``, ``--dialect``, ``--no-heal``, ``--no-repeat-stop``,
``--reasoning-retry``); they are the defaults that a request may override (:mod:`autocontinue.serve.options`).
Everything is checked before the server (or the local engine) starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from .._cli_options import positive_int, positive_number, price
from ..cli import build_options
from ..client import DEFAULT_MAX_ROUNDS
from ..dialects import DIALECTS
from .auth import load_client_keys
from .errors import ServeUsageError

__all__ = ["ServeConfig", "ServeUsageError", "build_parser", "config_from_args"]

#: request bodies above this many bytes get a 413 (a long conversation with images inlined stays below it)
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
#: requests in flight at once (streams included); one more gets a 429
DEFAULT_MAX_CONCURRENCY = 1024
#: seconds SIGTERM waits for requests in flight (streams included) before closing them
DEFAULT_DRAIN_TIMEOUT = 30.0
#: seconds an idle client connection stays open: above the 60 s after which nginx's upstream pool and most cloud
#: load balancers (AWS's, ingress-nginx) drop an idle connection, so that they close it, never the server under
#: them. A server that closes first races the client's next request on that connection, which then fails with a
#: reset (uvicorn's own default, 5 s, is httpx's pool expiry too: seen as ReadErrors under sustained load).
DEFAULT_KEEP_ALIVE_TIMEOUT = 75.0


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What the server needs: where to send requests, how callers authenticate, limits, default options.

    ``upstream`` is a base URL as the OpenAI SDK takes it (``https://api.openai.com/v1``, ``https://api.deepseek.com``):
    the proxy's ``/v1/<path>`` goes to ``<upstream>/<path>``. ``upstream_key`` is the key the server holds (``None``:
    each caller's ``Authorization`` is forwarded); ``client_keys``, when set, are the keys callers must present.
    ``options`` are the library's options (``max_rounds``, ``dialect``, ...), each request's defaults.
    """

    upstream: str
    upstream_key: str | None = None
    client_keys: frozenset[str] | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    #: seconds the upstream may take to answer one request (the SDK's timeout)
    upstream_timeout: float = 600.0
    #: origins whose web pages may call the server from a browser (CORS); ``"*"``: any; empty: none (the default)
    cors_origins: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The settings as JSON, for worker processes (``--workers``) that rebuild them with :meth:`from_json`."""
        data = dataclasses.asdict(self)
        data["client_keys"] = sorted(self.client_keys) if self.client_keys is not None else None
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """The inverse of :meth:`to_json`."""
        data = json.loads(text)
        keys = data.pop("client_keys")
        origins = tuple(data.pop("cors_origins"))
        return cls(**data, client_keys=frozenset(keys) if keys is not None else None, cors_origins=origins)


def build_parser() -> argparse.ArgumentParser:
    """``autocontinue serve``'s flags."""
    parser = argparse.ArgumentParser(
        prog="autocontinue serve",
        description="An OpenAI-compatible proxy that continues every reply cut off by the output-token limit. "
        "Point any OpenAI client's base URL at http://HOST:PORT/v1.",
        epilog="Without --upstream the embedded local engine (llama-server with a small model) is started and "
        "served. A request may override the continuation options with an 'autocontinue' object in its body or "
        "X-Autocontinue-* headers (see the README).",
    )
    where = parser.add_argument_group("upstream")
    where.add_argument(
        "--upstream",
        metavar="URL",
        default=os.environ.get("AUTOCONTINUE_UPSTREAM") or None,
        help="an OpenAI-compatible base URL, as the OpenAI SDK takes it (e.g. https://api.openai.com/v1); "
        "default: $AUTOCONTINUE_UPSTREAM, else the embedded local engine",
    )
    where.add_argument("--local-model", default=None, help="the local engine's model when there is no --upstream")
    where.add_argument(
        "--upstream-timeout", type=positive_number, default=600.0, metavar="S", help="seconds per upstream request"
    )
    keys = parser.add_argument_group("keys")
    keys.add_argument(
        "--upstream-key-env",
        metavar="NAME",
        help="the environment variable holding the upstream API key; the server then uses it for every request "
        "(needs --client-keys-file)",
    )
    keys.add_argument(
        "--client-keys-file",
        metavar="PATH",
        help="a file of keys clients must present (one per line, # comments); others get a 401",
    )
    serving = parser.add_argument_group("serving")
    serving.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    serving.add_argument("--port", type=int, default=8080, help="port to listen on (default %(default)s; 0: any)")
    serving.add_argument("--workers", type=positive_int, default=1, help="worker processes (default %(default)s)")
    serving.add_argument(
        "--max-concurrency",
        type=positive_int,
        default=DEFAULT_MAX_CONCURRENCY,
        help="requests in flight per worker; more get a 429 (default %(default)s)",
    )
    serving.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body; larger get a 413 (default %(default)s)",
    )
    serving.add_argument(
        "--drain-timeout",
        type=positive_number,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="S",
        help="on SIGTERM, seconds to let requests in flight finish (default %(default)s)",
    )
    serving.add_argument(
        "--keep-alive-timeout",
        type=positive_number,
        default=DEFAULT_KEEP_ALIVE_TIMEOUT,
        metavar="S",
        help="seconds an idle client connection stays open; keep it above the idle timeout of the load balancer "
        "in front (default %(default)s)",
    )
    serving.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        type=cors_origin,
        metavar="ORIGIN",
        help="let web pages of ORIGIN (e.g. http://localhost:5173; * for any) call the server from a browser "
        "(repeatable; default: none)",
    )
    serving.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    cont = parser.add_argument_group("continuation (defaults; a request may override them)")
    cont.add_argument("--max-rounds", type=positive_int, default=DEFAULT_MAX_ROUNDS, help="requests per answer")
    cont.add_argument("--max-total-tokens", type=positive_int, help="output tokens over all rounds")
    cont.add_argument("--max-cost", type=positive_number, metavar="USD", help="money per answer (needs a price)")
    cont.add_argument(
        "--max-seconds",
        type=positive_number,
        metavar="S",
        help="time per answer: no round starts that would end past it (a non-streamed request from an OpenAI SDK "
        "also gets most of the client's own timeout)",
    )
    cont.add_argument("--max-round-tokens", type=positive_int, metavar="N", help="most one raised round asks for")
    cont.add_argument("--dialect", default="auto", choices=["auto", *sorted(DIALECTS)], help="how the prefix is sent")
    cont.add_argument("--no-heal", dest="heal", action="store_false", help="no token-boundary healing")
    cont.add_argument("--no-repeat-stop", dest="stop_on_repeat", action="store_false", help="let loops run on")
    cont.add_argument("--reasoning-retry", action="store_true", help="retry a round cut inside the reasoning once")
    cont.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="MODEL=IN,OUT",
        help="a model's price in USD per 1M input and output tokens (repeatable), for --max-cost and the trace",
    )
    # The prompt command's option builder reads these; a model's price is --price here.
    parser.set_defaults(price_in=None, price_out=None)
    return parser


#: an origin as a browser sends it: scheme://host[:port], nothing after (http, https, chrome-extension, app, ...)
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")


def cors_origin(text: str) -> str:
    """A ``--cors-origin`` value: ``*`` or an origin. A browser's ``Origin`` never ends in a slash or has a path, so
    such a value would never match: it is refused, not left to fail in the browser."""
    if text == "*" or _ORIGIN.fullmatch(text):
        return text
    raise argparse.ArgumentTypeError(
        f"must be * or an origin as a browser sends it, scheme://host[:port] with no path or trailing slash "
        f"(e.g. http://localhost:5173), got {text!r}"
    )


def _prices(specs: Sequence[str]) -> dict[str, tuple[float, float]]:
    prices: dict[str, tuple[float, float]] = {}
    for spec in specs:
        model, _, pair = spec.partition("=")
        amounts = pair.split(",")
        if not model or len(amounts) != 2:
            raise ServeUsageError(f"--price must look like MODEL=IN,OUT (USD per 1M tokens), got {spec!r}")
        try:
            prices[model] = (price(amounts[0]), price(amounts[1]))
        except argparse.ArgumentTypeError as exc:
            raise ServeUsageError(f"--price {spec!r}: {exc}") from None
    return prices


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The library options the flags set (unset ones keep the library's defaults), as the prompt command reads
    its own, plus ``reasoning_retry`` and the ``--price`` table."""
    options = build_options(args, model="")
    options["reasoning_retry"] = args.reasoning_retry
    prices = _prices(args.price)
    if prices:
        options["prices"] = prices
    return options


def config_from_args(args: argparse.Namespace, upstream: str) -> ServeConfig:
    """The server's settings from its flags, ``upstream`` being the base URL chosen (given, or the local engine's)."""
    upstream_key = None
    if args.upstream_key_env:
        if not args.client_keys_file:
            raise ServeUsageError(
                "--upstream-key-env needs --client-keys-file: without client keys, anyone who reaches the port "
                "spends the key"
            )
        upstream_key = os.environ.get(args.upstream_key_env) or None
        if upstream_key is None:
            raise ServeUsageError(f"--upstream-key-env: the environment variable {args.upstream_key_env} is not set")
    client_keys = load_client_keys(args.client_keys_file) if args.client_keys_file else None
    return ServeConfig(
        upstream=upstream,
        upstream_key=upstream_key,
        client_keys=client_keys,
        options=options_from_args(args),
        max_body_bytes=args.max_body_bytes,
        max_concurrency=args.max_concurrency,
        upstream_timeout=args.upstream_timeout,
        cors_origins=tuple(dict.fromkeys(args.cors_origin)),
    )
