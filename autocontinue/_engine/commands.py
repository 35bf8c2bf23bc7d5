"""The external commands of the engine's build and fetch: what they need, running them, what failed.

A command's output goes to a log file; an error quotes its last lines, and a build's percentages are echoed to
stderr so that a compile of several minutes does not look like a hang.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Cap on how many output lines an error message quotes: enough to show a compiler
# error or a server's failure reason, short enough to read in a test report.
TAIL_LINES = 40


class LocalEngineError(RuntimeError):
    """Building, fetching or running the local engine failed.

    The message says what failed and, for external commands and the server, quotes
    the tail of their output so the cause is visible without digging for logs.
    """


def say(message: str) -> None:
    # Progress goes to stderr so that `python -m autocontinue.local build` keeps its
    # stdout for the machine-readable paths the Makefile consumes.
    print(f"[autocontinue.local] {message}", file=sys.stderr, flush=True)


def tail_of_file(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=lines)).rstrip()
    except OSError:
        return "(no output captured)"


# What building llama-server needs: (what, the commands that provide it, the environment variable naming one).
_BUILD_TOOLS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("cmake", ("cmake",), None),
    # cmake's default generator on POSIX is Unix Makefiles; CMAKE_GENERATOR may name another (Ninja).
    ("make", ("make", "gmake"), "CMAKE_GENERATOR"),
    ("a C compiler", ("cc", "gcc", "clang"), "CC"),
    ("a C++ compiler", ("c++", "g++", "clang++"), "CXX"),
)

#: where to get them, for the message
BUILD_TOOLS_HINT = (
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


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(seconds + 0.5), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


_PERCENT_RE = re.compile(r"^\[\s*(\d+)%\]")


def run(cmd: Sequence[str], *, what: str, log_path: Path, cwd: Path | None = None) -> None:
    """Run *cmd*, appending its combined output to *log_path*.

    Raises :class:`LocalEngineError` quoting the output's tail when the command is
    missing or exits non-zero. Build percentages are echoed to stderr in steps of
    10%, with the time elapsed and a rough estimate of the time left (cmake's
    percentage counts files, not seconds), so a several-minute compile does not
    look like a hang.
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
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
                f"(building llama-server needs cmake, make and a C/C++ compiler; {BUILD_TOOLS_HINT})"
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
                    say(f"{what}: {last_reported}% ({_duration(elapsed)} elapsed{estimate})")
            returncode = proc.wait()
    if returncode != 0:
        raise LocalEngineError(
            f"{what} failed with exit code {returncode}: {' '.join(cmd)}\n"
            f"--- last {len(tail)} lines of output (full log: {log_path}) ---\n" + "".join(tail).rstrip()
        )


def pip_download(args: Sequence[str], dest: Path, *, what: str, log_path: Path) -> None:
    # pip, not urllib: it honours the user's index configuration (mirrors, proxies,
    # certificates) exactly as their other installs do. sys.executable guarantees the
    # pip of the interpreter running us.
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "-d"]
    run([*cmd, str(dest), *args], what=what, log_path=log_path)


def single_file(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        names = ", ".join(p.name for p in folder.iterdir()) or "nothing"
        raise LocalEngineError(f"expected exactly one {what} ({pattern}) in {folder}, found: {names}")
    return found[0]
