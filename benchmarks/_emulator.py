"""The provider emulator (tests/emulator) in its own process, with TCP_NODELAY on the server's connections.

:func:`start_emulator` returns ``tests.emulator.Emulator(subprocess=True)`` when the emulator's own
``bind_socket`` makes a socket that asyncio recognises as TCP, and otherwise :class:`BenchEmulator`. Why: a
listening socket created as ``socket.socket(AF_INET, SOCK_STREAM)`` has ``proto`` 0, and asyncio only sets
TCP_NODELAY on accepted connections whose socket says ``IPPROTO_TCP``. Without it, on a keep-alive connection the
response body waits behind the headers for the client's delayed ACK: every request after a connection's first
takes ~40 ms more, which drowns every client-side cost these benchmarks measure (a raw call took 56 ms instead of
~1.5 ms). :class:`BenchEmulator` starts the same server with the same code, only binding its socket with
``IPPROTO_TCP``.

    python -m benchmarks._emulator --port 0     # like python -m tests.emulator
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess as _subprocess
import sys
import threading
import urllib.parse

from tests.emulator import Emulator
from tests.emulator.server import REPO_ROOT

__all__ = ["BenchEmulator", "nodelay_bind_socket", "server_cpu_seconds", "server_pid", "start_emulator"]


def nodelay_bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """``tests.emulator.server.bind_socket``, but with ``proto=IPPROTO_TCP`` so asyncio sets TCP_NODELAY."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


class BenchEmulator(Emulator):
    """``Emulator(subprocess=True)`` whose server process runs ``python -m benchmarks._emulator``."""

    def __init__(self, startup_timeout: float = 30.0) -> None:
        super().__init__(subprocess=True, startup_timeout=startup_timeout)

    def _start_subprocess(self) -> None:
        # Same as Emulator._start_subprocess, with this module as the server's entry point.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        proc = _subprocess.Popen(
            [sys.executable, "-m", "benchmarks._emulator", "--host", self.host, "--port", "0"],
            cwd=REPO_ROOT,
            env=env,
            stdin=_subprocess.DEVNULL,
            stdout=_subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            line = ""
        if not line.startswith("READY "):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"emulator subprocess did not start (exit {proc.returncode}, said {line!r})")
        self._proc = proc
        self.port = urllib.parse.urlsplit(line.split()[1]).port


def _emulator_sets_nodelay() -> bool:
    from tests.emulator.server import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        return sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def start_emulator() -> Emulator:
    """The emulator in its own process (not started: use it as a context manager), with TCP_NODELAY."""
    if _emulator_sets_nodelay():
        return Emulator(subprocess=True, startup_timeout=30.0)
    return BenchEmulator()


def server_pid(emu: Emulator) -> int | None:
    """The emulator process's id (to read its CPU time), or None."""
    proc = getattr(emu, "_proc", None)
    return getattr(proc, "pid", None)


def server_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, ValueError, IndexError):
        return None


def _main() -> None:
    import tests.emulator.__main__ as entry

    entry.bind_socket = nodelay_bind_socket  # type: ignore[attr-defined]
    entry.main()


if __name__ == "__main__":
    _main()
