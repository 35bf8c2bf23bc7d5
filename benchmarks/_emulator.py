"""The provider emulator (tests/support/emulator) in its own process, for benchmarks.

In its own process the server does not share the client's GIL, so what the client spends is the client's. The
emulator binds its listening socket as IPPROTO_TCP, so asyncio sets TCP_NODELAY on its connections (without it a
keep-alive response waits ~40 ms for the client's delayed ACK, which would drown every cost measured here).
"""

from __future__ import annotations

import os

from tests.support.emulator import Emulator

__all__ = ["server_cpu_seconds", "server_pid", "start_emulator"]


def start_emulator() -> Emulator:
    """The emulator in its own process (not started: use it as a context manager)."""
    return Emulator(subprocess=True, startup_timeout=30.0)


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
