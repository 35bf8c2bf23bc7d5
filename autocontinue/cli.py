"""The ``autocontinue`` command: ask a model, and get the whole answer even when it needs several rounds.

    autocontinue "Explain in three paragraphs why the sea is salty."
    echo "Write a haiku about rain." | autocontinue --max-tokens 8
    autocontinue --base-url https://api.example.com/v1 --api-key KEY --model some-model "..."
    autocontinue --json --max-tokens 16 "List three primes." | jq .continuation.stop_cause

The answer goes to stdout as it is generated, round after round; a short trace of the rounds (tokens, finish
reason, what the seam did, latency) and the totals go to stderr, so stdout holds the answer alone and can be piped.

Where it sends requests: with ``--base-url`` or an API key (``--api-key``, or ``OPENAI_BASE_URL`` /
``OPENAI_API_KEY`` in the environment) to that OpenAI-compatible API; with neither (or ``--local``) to the
embedded local model, a ``llama-server`` running SmolLM2-135M-Instruct that is built or fetched on first use
(see :mod:`autocontinue.local`).

Every option is checked before anything starts (the local engine included), so a wrong value costs no wait.

Exit codes: 0 the answer is complete (it ended by itself, or in a tool call), 1 the request failed (API error, a
round failed after text was generated, the local engine could not start), 2 the command or its options are wrong,
3 the answer is incomplete (``max_rounds``, a budget, no progress, the context window, a content filter, ...: the
text so far is printed, and a one-line notice on stderr says why, even with ``-q``), 130 interrupted (the trace of
the rounds done is printed). Errors are one line on stderr; when a round fails after others succeeded, the text
generated so far is still printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import openai

from ._cli_options import DEFAULT_MAX_TOKENS, PROG, build_parser
from ._cli_output import Output, completion_to_json, format_trace, incomplete_notice, trace_to_dict
from ._options import make_settings
from .budget import Price, PriceTable
from .client import _begin, create, trace_of
from .drivers import sync as sync_driver
from .errors import ConfigurationError, ContinuationFailed
from .local import LocalEngine, LocalEngineError, resolve_model
from .trace import ContinuationTrace

__all__ = ["DEFAULT_MAX_TOKENS", "format_trace", "main", "trace_to_dict"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130


class _UsageError(Exception):
    """The command line is wrong in a way argparse cannot see (e.g. an empty prompt)."""


def read_prompt(words: Sequence[str], stdin: TextIO) -> str:
    """The prompt: the words on the command line, else all of stdin."""
    if words:
        prompt = " ".join(words)
    else:
        if stdin.isatty():
            print(f"{PROG}: reading the prompt from stdin (end it with Ctrl-D)", file=sys.stderr)
        prompt = stdin.read()
    if not prompt.strip():
        raise _UsageError("the prompt is empty: give it as an argument or on stdin")
    return prompt


# ---------------------------------------------------------------------------------------------------- endpoint


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where requests go."""

    base_url: str | None  # None: the SDK's default (api.openai.com)
    api_key: str
    model: str
    local: bool


def _where(args: argparse.Namespace) -> tuple[str | None, str | None, bool]:
    """(base URL, API key, local): the API given on the command line or in the environment, else the local model."""
    base_url = args.base_url or os.environ.get("OPENAI_BASE_URL") or None
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY") or None
    return base_url, api_key, bool(args.local or (base_url is None and api_key is None))


def check_options(args: argparse.Namespace) -> None:
    """Every check that needs no server, made before anything starts (a first local run builds the engine)."""
    _, _, local = _where(args)
    if not local and not args.model:
        raise _UsageError("--model is required when an API is given (--base-url, --api-key or the environment)")
    if (args.price_in is None) != (args.price_out is None):
        raise _UsageError("--price-in and --price-out go together (USD per 1M input and output tokens)")
    model = args.model
    if local:
        try:
            model = resolve_model(args.model).name
        except ValueError as error:
            raise _UsageError(f"--model: {error}") from None
    options = build_options(args, model)
    try:
        make_settings(**options)
    except ConfigurationError as exc:
        raise _UsageError(_one_line(exc)) from None
    if args.max_cost is not None and PriceTable(options.get("prices")).lookup(model) is None:
        raise _UsageError(
            f"--max-cost needs the price of model {model!r}, which is not built in: "
            "give --price-in and --price-out (USD per 1M tokens)"
        )


@contextlib.contextmanager
def open_endpoint(args: argparse.Namespace, *, quiet: bool) -> Iterator[Endpoint]:
    """The API given on the command line or in the environment, or else the local engine, for the ``with`` block."""
    base_url, api_key, local = _where(args)
    if local:
        try:
            spec = resolve_model(args.model)
        except ValueError as error:
            raise _UsageError(f"--model: {error}") from None
        if not quiet:
            print(f"{PROG}: starting the local model (llama-server, {spec.name})", file=sys.stderr)
        with LocalEngine(model=spec) as engine:
            yield Endpoint(engine.base_url, "unused", engine.model, local=True)
        return
    # A server on the caller's own network (llama.cpp, vLLM, Ollama) often needs no key, but the SDK wants one.
    yield Endpoint(base_url, api_key or "unused", args.model, local=False)


def build_sdk_request(args: argparse.Namespace, prompt: str, model: str) -> dict[str, Any]:
    """The SDK's own keyword arguments of the request."""
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": prompt})
    request: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": args.max_tokens}
    # Unset options stay out of the request, so the server's defaults apply.
    optional = {"temperature": args.temperature, "seed": args.seed}
    request.update({name: value for name, value in optional.items() if value is not None})
    return request


def build_options(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """autocontinue's options (``make_settings``'s keyword arguments); unset ones keep the library's defaults."""
    options: dict[str, Any] = {
        "max_rounds": args.max_rounds,
        "dialect": args.dialect,
        "heal": args.heal,
        "stop_on_repeat": args.stop_on_repeat,
    }
    optional = {
        "max_total_tokens": args.max_total_tokens,
        "max_cost_usd": args.max_cost,
        "max_seconds": args.max_seconds,
        "max_round_tokens": args.max_round_tokens,
    }
    options.update({name: value for name, value in optional.items() if value is not None})
    if args.price_in is not None and args.price_out is not None:
        options["prices"] = {model: Price(input=args.price_in, output=args.price_out)}
    return options


# ------------------------------------------------------------------------------------------------------- main


class _Call:
    """The call in progress: its trace is readable as soon as the call has begun, so an interrupt can print it."""

    def __init__(self) -> None:
        self.trace: ContinuationTrace | None = None
        self.url: str | None = None


def run(args: argparse.Namespace, prompt: str, out: Output, call: _Call) -> ContinuationTrace:
    """Send the request and print the answer; returns the trace."""
    with open_endpoint(args, quiet=args.quiet) as endpoint:
        call.url = endpoint.base_url or "https://api.openai.com/v1"
        # SDK retries off: autocontinue's own retry policy (per round, keeping the text so far) replaces them.
        client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0)
        with client:
            request = build_sdk_request(args, prompt, endpoint.model)
            options = build_options(args, endpoint.model)
            if args.stream:
                with create(client, stream=True, **request, **options) as stream:
                    call.trace = stream.continuation
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            out.write(chunk.choices[0].delta.content)
                    out.end()
                    streamed: ContinuationTrace = stream.continuation
                    return streamed
            # The call's core is made here rather than by create(), only so that its trace is at hand on Ctrl-C.
            core, transport = _begin(client, make_settings(**options), request, None)
            call.trace = core.trace
            completion = sync_driver.run(core, transport.send)
            if args.json:
                out.write(completion_to_json(completion) + "\n")
            else:
                out.write(completion.choices[0].message.content or "")
                out.end()
            return trace_of(completion) or core.trace


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (the console script passes it to ``sys.exit``).

    ``autocontinue serve ...`` runs the proxy (:mod:`autocontinue.serve`): only when ``serve`` is the whole first
    argument, so a prompt given as one quoted argument ("serve me a recipe") is a prompt; a prompt of several words
    whose first is ``serve`` goes after ``--`` (``autocontinue -- serve me a recipe``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:
        from .serve.main import main as serve

        return serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (`kill`, `timeout`, a supervisor) unwinds like Ctrl-C, so the local engine's `with` stops the
    # llama-server it started; by default the signal would kill us and leave the server running.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.json:
        args.stream = False
    if args.verbose:
        _log_to_stderr()
    out = Output(sys.stdout)
    call = _Call()
    try:
        check_options(args)
        prompt = read_prompt(args.prompt, sys.stdin)
        trace = run(args, prompt, out, call)
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ContinuationFailed as exc:
        # The text was generated (and paid for): print what the stream has not shown yet, then the error.
        text = exc.text
        if args.json:
            out.write(completion_to_json(exc.partial) + "\n")
        else:
            out.write(text[len(out.written) :] if text.startswith(out.written) else text)
            out.end()
        partial_trace = trace_of(exc.partial)
        if partial_trace is not None and not args.quiet:
            _print_trace(partial_trace)
        return _fail(f"{_one_line(exc)}{_at(exc.cause, call)} (kept {len(text)} characters)", EXIT_FAILED)
    except ConfigurationError as exc:
        return _fail(_one_line(exc), EXIT_USAGE)
    except openai.APIConnectionError as exc:
        # "Connection error." alone does not say where: a wrong --base-url or a server that is down.
        return _fail(f"{type(exc).__name__}: {_one_line(exc)}{_at(exc, call)}", EXIT_FAILED)
    except openai.APIError as exc:
        return _fail(f"{type(exc).__name__}: {_one_line(exc)}", EXIT_FAILED)
    except openai.OpenAIError as exc:
        return _fail(_one_line(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        out.end()
        if call.trace is not None and call.trace.rounds and not args.quiet:
            # The rounds done so far (paid for): what they produced and cost. The round in flight is not in it.
            _print_trace(call.trace, stop="interrupted")
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): nothing left to say. Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except LocalEngineError as exc:
        return _fail(f"the local model could not be started: {_one_line(exc)}", EXIT_FAILED)
    if not args.quiet:
        _print_trace(trace)
    notice = incomplete_notice(trace)
    if notice is not None:
        # The text printed is all there is, but not all there was to say: a script must be able to tell.
        print(f"{PROG}: {notice}", file=sys.stderr, flush=True)
        return EXIT_INCOMPLETE
    return 0


def _interrupt(signum: int, frame: object) -> None:
    # Once only: `timeout` and process-group kills deliver the signal twice, and a second KeyboardInterrupt
    # would break the clean-up (stopping the server) that the first one started.
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt


def _print_trace(trace: ContinuationTrace, *, stop: str | None = None) -> None:
    print(format_trace(trace, stop=stop), file=sys.stderr, flush=True)


def _at(error: BaseException | None, call: _Call) -> str:
    """ " (URL)" for a connection error: the URL of the request that failed, else the endpoint's."""
    if not isinstance(error, openai.APIConnectionError):
        return ""
    request = getattr(error, "request", None)
    url = str(request.url) if request is not None else call.url
    return f" ({url})" if url else ""


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


def _one_line(exc: BaseException) -> str:
    # Server errors and LocalEngineError quote logs over many lines; the first says what happened.
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _log_to_stderr() -> None:
    """--verbose: show the library's per-round and per-call events.

    Only the ``autocontinue`` logger of the standard library is configured, and only in this command: the library
    itself never configures logging (it is the application's choice, and here the command is the application).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    logger = logging.getLogger("autocontinue")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
