"""``autocontinue serve``: check the flags, start the local engine when there is no upstream, run uvicorn.

SIGTERM (and Ctrl-C) is uvicorn's graceful shutdown: the listening socket closes at once, so a load balancer moves
new requests elsewhere, and requests in flight, streams included, run to their end for up to ``--drain-timeout``
seconds; then the rest are cancelled (their upstream requests closed) and the process exits. The local engine, if
any, is stopped last.

With ``--workers N`` uvicorn runs N processes on one socket; each rebuilds the app from the settings passed in the
environment (:func:`app_from_environment`), and metrics are summed over them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from .config import ServeConfig, build_parser, config_from_args
from .errors import ServeUsageError

__all__ = ["CONFIG_ENV", "app_from_environment", "main"]

#: the environment variable that carries the settings to worker processes
CONFIG_ENV = "AUTOCONTINUE_SERVE_CONFIG"
PROG = "autocontinue serve"


def app_from_environment() -> object:
    """The app of one worker process (uvicorn's factory with ``--workers``)."""
    from .app import build_app

    return build_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))


@contextlib.contextmanager
def _upstream(url: str | None, model: str | None) -> Iterator[str]:
    """The base URL requests go to: the one given, or the local engine's for the ``with`` block."""
    if url:
        yield url
        return
    from ..local import LocalEngine, resolve_model

    spec = resolve_model(model)
    print(f"{PROG}: starting the local model (llama-server, {spec.name})", file=sys.stderr, flush=True)
    with LocalEngine(model=spec, parallel=4) as engine:
        yield engine.base_url


def _logging(level: str) -> None:
    """The library's logger (``autocontinue``) on stderr: the requests (info) and the library's call events."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("autocontinue")
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def _serve(uvicorn: Any, config: ServeConfig, args: argparse.Namespace) -> None:
    """Bind the port, say where the server is, and serve until SIGTERM or Ctrl-C (uvicorn's graceful shutdown)."""
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": False,  # ours (autocontinue.serve.request) counts rounds; a query string could carry a key
        "timeout_graceful_shutdown": args.drain_timeout,
        "timeout_keep_alive": args.keep_alive_timeout,
        "server_header": False,
        "backlog": 4096,
    }
    if args.workers > 1:
        os.environ[CONFIG_ENV] = config.to_json()
        uv_config = uvicorn.Config(
            "autocontinue.serve.main:app_from_environment", factory=True, workers=args.workers, **options
        )
    else:
        from .app import build_app

        uv_config = uvicorn.Config(build_app(config), **options)
    sock = uv_config.bind_socket()
    sock.listen(4096)  # connections made from now on wait in the backlog until the server accepts them
    host, port = sock.getsockname()[:2]
    print(
        f"{PROG}: running on http://{host}:{port} (clients: base URL http://{host}:{port}/v1)",
        file=sys.stderr,
        flush=True,
    )
    if args.workers > 1:
        from uvicorn.supervisors import Multiprocess

        with tempfile.TemporaryDirectory(prefix="autocontinue-metrics-") as metrics_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            Multiprocess(uv_config, sockets=[sock]).run()
    else:
        uvicorn.Server(uv_config).run(sockets=[sock])


class _Terminated(Exception):
    """SIGTERM, raised again by uvicorn once its graceful shutdown is over."""


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str]) -> int:
    """Run the server until SIGTERM or Ctrl-C; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        print(f"{PROG}: error: {exc.name} is missing: pip install 'autocontinue[serve]'", file=sys.stderr)
        return 2
    if not args.upstream and args.local_model is not None:
        from ..local import resolve_model

        try:
            resolve_model(args.local_model)
        except ValueError as exc:
            print(f"{PROG}: error: --local-model: {exc}", file=sys.stderr)
            return 2
    try:
        config_from_args(args, args.upstream or "http://127.0.0.1")  # every check before the engine starts
    except ServeUsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    _logging(args.log_level)
    from ..local import LocalEngineError

    # uvicorn handles SIGTERM and SIGINT while it serves (draining), then raises the signal again with the handlers
    # that were there before: ours turns SIGTERM into an exception, so the local engine's `with` block stops it.
    signal.signal(signal.SIGTERM, _terminated)

    try:
        with _upstream(args.upstream, args.local_model) as upstream:
            config = config_from_args(args, upstream)
            _serve(uvicorn, config, args)
    except LocalEngineError as exc:
        print(f"{PROG}: error: the local model could not be started: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except _Terminated:
        return 0  # a drained shutdown: what a supervisor asked for
    return 0
