"""Run the emulator standalone: ``python -m tests.support.emulator --port 0``.

Prints exactly one line, ``READY http://HOST:PORT``, to stdout once the server accepts connections, then
serves until terminated (SIGTERM/SIGINT shut it down gracefully).
"""

from __future__ import annotations

import argparse
import asyncio

from .app import EmulatorApp
from .server import bind_socket, build_server


async def _serve(host: str, port: int, log_level: str) -> None:
    sock = bind_socket(host, port)
    server = build_server(EmulatorApp(), log_level=log_level)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():  # startup failed: surface the error
            await task
            return
        await asyncio.sleep(0.005)
    print(f"READY http://{host}:{sock.getsockname()[1]}", flush=True)
    await task


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until killed."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port (printed on the READY line)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.log_level))


if __name__ == "__main__":
    main()
