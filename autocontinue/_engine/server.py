"""``llama-server`` as a process: started on a free loopback port, waited for, stopped (also at exit)."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .build import ensure_llama_server, llama_server_path
from .commands import TAIL_LINES, LocalEngineError, tail_of_file
from .models import LocalModel, resolve_model
from .wheels import ensure_model, model_path

#: Fixed sampling seed so that runs are reproducible even if a test forgets
#: ``temperature=0``.
DEFAULT_SEED = 42

# llama.cpp reads every option also from LLAMA_ARG_* environment variables. We strip
# them from the server's environment so a developer's shell cannot silently change
# the engine the tests run against.
_LLAMA_ENV_PREFIX = "LLAMA_ARG_"

# What llama-server logs when its port was taken between our probe and its bind.
_BIND_FAILURE_MARKER = "couldn't bind"


# Engines still running at interpreter exit are stopped, so a test run that forgets
# stop() (or dies on an exception outside a `with`) does not leave servers behind.
_RUNNING: weakref.WeakSet[LocalEngine] = weakref.WeakSet()


@atexit.register
def _stop_running_engines() -> None:
    for engine in list(_RUNNING):
        engine.stop()


def _free_port() -> int:
    # Binding to port 0 lets the kernel pick a free port. There is a small window in
    # which another process could take it before llama-server binds; start() retries
    # with a new port when that happens.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# An opener without proxy handlers: a developer's http_proxy must not capture
# requests to our own loopback server.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _PortTaken(Exception):
    """The server could not bind its port (lost the race after :func:`_free_port`)."""


class LocalEngine:
    """A ``llama-server`` process serving a small local model on 127.0.0.1.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with LocalEngine() as eng:
            client = openai.OpenAI(base_url=eng.base_url, api_key="unused")
            client.chat.completions.create(model=eng.model, messages=[...])

    :meth:`start` builds or fetches the binary and the model on first use (see
    :func:`ensure_llama_server` and :func:`ensure_model`), starts the server on a
    free port and waits until ``GET /health`` answers 200. The server's output goes
    to a log file (:attr:`log_path`), never to the terminal.

    Args:
        model: Which model to serve: a key of :data:`MODELS` (``"smollm2"``, the default, or
            ``"gemma3"``), its announced name, or a :class:`LocalModel`.
        parallel: Number of server slots, i.e. requests decoded concurrently.
        ctx_size: Context size in tokens of *each* slot (the server is started with
            ``parallel * ctx_size``, as llama-server splits its context among the
            slots).
        batch_invariant: Evaluate prompts one token at a time (``--ubatch-size 1``), the
            way generated tokens are evaluated. Then the same tokens always give the same
            logits, whether they were generated or sent back as a prefix, and whatever else
            the server is doing. An answer continued in rounds is then the answer written in
            one request, bit for bit. Batched prompt evaluation sums in another order, and
            at a near-tie that can flip the next token. The cost is slower evaluation of
            long prompts.
        extra_args: Further llama-server flags, appended last so they can override
            the defaults.
        threads: CPU threads for decoding; defaults to 1. llama.cpp's threads wait for each other by spinning,
            and on a machine whose cores are busy with other work (a shared CI runner, parallel tests) a
            descheduled thread stalls the others: measured here under a load of 13 on 2 cores, a 64-token
            Gemma answer did not come within the SDK's 10-minute timeout with 2 threads, while with 1 thread
            48-token answers took well under a minute. These models are small enough for one thread.
        seed: Sampling seed (``--seed``).
        startup_timeout: Seconds to wait for the server to become healthy.
        log_path: Where to write the server's output. By default a temporary file
            that is deleted by :meth:`stop`; a given path is kept.
    """

    def __init__(
        self,
        *,
        model: str | LocalModel | None = None,
        parallel: int = 1,
        ctx_size: int = 4096,
        batch_invariant: bool = True,
        extra_args: Sequence[str] = (),
        threads: int | None = None,
        seed: int = DEFAULT_SEED,
        startup_timeout: float = 120.0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        if ctx_size < 16:
            raise ValueError(f"ctx_size must be >= 16, got {ctx_size}")
        self.spec = resolve_model(model)
        self.parallel = parallel
        self.ctx_size = ctx_size
        self.batch_invariant = batch_invariant
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.threads = threads if threads is not None else 1
        self.seed = seed
        self.startup_timeout = startup_timeout
        self._requested_log_path = Path(log_path) if log_path is not None else None
        self._log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # ---------------------------------------------------------------- properties

    @property
    def running(self) -> bool:
        """Whether the server process was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def port(self) -> int:
        """The TCP port the server listens on (only while started)."""
        if self._port is None:
            raise LocalEngineError("LocalEngine is not started")
        return self._port

    @property
    def server_url(self) -> str:
        """The server's root URL, e.g. ``http://127.0.0.1:PORT`` (for /health, /metrics)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL to give the SDK: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.server_url}/v1"

    @property
    def model(self) -> str:
        """The model name to pass as ``model=`` to the API (the server's ``--alias``)."""
        return self.spec.name

    @property
    def log_path(self) -> Path | None:
        """The file receiving the server's stdout and stderr, once started."""
        return self._log_path

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        """Return the last *lines* lines of the server's log."""
        if self._log_path is None:
            return ""
        return tail_of_file(self._log_path, lines)

    def command(self, port: int) -> list[str]:
        """Return the full llama-server command line used for *port* (for logs and reports)."""
        return [
            str(llama_server_path()),
            "--model",
            str(model_path(self.spec)),
            "--alias",
            self.spec.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ctx-size",
            str(self.ctx_size * self.parallel),
            "--parallel",
            str(self.parallel),
            "--threads",
            str(self.threads),
            "--threads-batch",
            str(self.threads),
            "--seed",
            str(self.seed),
            # CPU only: the tests must behave the same on machines with and without a GPU.
            "--n-gpu-layers",
            "0",
            # Never reach for the network (model downloads, HF lookups).
            "--offline",
            # The web UI is useless here; /metrics is handy for the benchmarks.
            "--no-webui",
            "--metrics",
            # The log is a file; colour escape codes would only clutter it.
            "--log-colors",
            "off",
            *(["--ubatch-size", "1"] if self.batch_invariant else []),
            *(["--chat-template", self.spec.chat_template] if self.spec.chat_template else []),
            *self.extra_args,
        ]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalEngine:
        """Start the server and wait until it is healthy; return ``self``.

        Raises:
            LocalEngineError: The binary or model could not be prepared, the server
                exited, or it was not healthy within ``startup_timeout`` seconds (the
                message quotes the tail of its log).
        """
        if self._proc is not None:
            raise LocalEngineError("LocalEngine is already started")
        ensure_llama_server()
        ensure_model(self.spec)
        attempts = 3
        for attempt in range(1, attempts + 1):
            port = _free_port()
            self._spawn(port)
            try:
                self._wait_healthy()
            except _PortTaken:
                self._terminate()
                if self._requested_log_path is None and self._log_path is not None:
                    self._log_path.unlink(missing_ok=True)  # the retry gets a fresh log
                if attempt == attempts:
                    self._discard_failed_start()
                    raise LocalEngineError(f"llama-server could not bind a port in {attempts} attempts") from None
                continue
            except BaseException:
                # Includes KeyboardInterrupt: never leave a half-started server behind.
                self._terminate()
                self._discard_failed_start()
                raise
            _RUNNING.add(self)
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM, wait up to *timeout* seconds, then SIGKILL.

        Safe to call several times, and on an engine that was never started.
        """
        _RUNNING.discard(self)
        self._terminate(timeout)
        if self._log_path is not None and self._requested_log_path is None:
            self._log_path.unlink(missing_ok=True)
        self._log_path = None
        self._port = None

    def __enter__(self) -> LocalEngine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        return f"LocalEngine({self.spec.key}, {where}, parallel={self.parallel}, ctx_size={self.ctx_size})"

    # ------------------------------------------------------------------ internals

    def _spawn(self, port: int) -> None:
        if self._requested_log_path is not None:
            log_path = self._requested_log_path
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = log_path.open("wb")
        else:
            fd, name = tempfile.mkstemp(prefix="autocontinue-llama-server-", suffix=".log")
            log_path = Path(name)
            log_file = os.fdopen(fd, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith(_LLAMA_ENV_PREFIX)}
        with log_file:
            # The child keeps its own copy of the descriptor, so ours can be closed.
            self._proc = subprocess.Popen(
                self.command(port),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                # Deliberately *not* a new session: the server stays in our process
                # group, so a Ctrl-C in the terminal or a CI timeout that kills the
                # group also ends it, even when we die too abruptly to run stop().
            )
        self._port = port
        self._log_path = log_path

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.server_url}/health"
        while True:
            returncode = self._proc.poll()
            if returncode is not None:
                tail = self.log_tail()
                if _BIND_FAILURE_MARKER in tail:
                    raise _PortTaken
                raise LocalEngineError(
                    f"llama-server exited with code {returncode} during startup\n"
                    f"--- last lines of {self._log_path} ---\n{tail}"
                )
            try:
                with _DIRECT.open(url, timeout=2.0) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                # 503 while the model loads; anything else is also worth waiting out
                # until the deadline, the log will tell.
                exc.close()
            except (urllib.error.URLError, OSError):
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise LocalEngineError(
                    f"llama-server did not become healthy within {self.startup_timeout:.0f}s\n"
                    f"--- last lines of {self._log_path} ---\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _discard_failed_start(self) -> None:
        # The log of a failed start is kept on disk (its path is in the error message)
        # so the failure can be investigated; only the bookkeeping is reset.
        self._log_path = None
        self._port = None
