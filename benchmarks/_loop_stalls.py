"""What holds the event loop during a concurrency run: a 1 ms sleeper's lateness (``LoopMonitor``), the longest
single task step (asyncio's debug timing of each callback), and the longest single call of the core's entry points
(which never await, so each call holds the loop for its whole length)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from autocontinue.core import Continuation

from ._common import median, percentile

#: the name prefix of the tasks whose steps are timed: the calls', not the benchmark's nor the monitor's
CALL_TASK = "call-"


class LoopMonitor:
    """Sleeps 1 ms in a loop and records how late each wake-up is."""

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lateness.append(time.perf_counter() - start - 0.001)

    def __enter__(self) -> LoopMonitor:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def summary(self) -> dict[str, float]:
        values = self.lateness or [0.0]
        return {
            "max_ms": round(1000 * max(values), 3),
            "p99_ms": round(1000 * percentile(values, 0.99), 3),
            "median_ms": round(1000 * median(values), 3),
            "samples": len(self.lateness),
        }


async def time_core_steps(run: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """``run()`` with the core's entry points timed: the longest time the library holds the event loop."""
    durations: dict[str, list[float]] = {"start": [], "on_response": []}
    cpu: dict[str, list[float]] = {"start": [], "on_response": []}
    originals = {name: getattr(Continuation, name) for name in durations}

    def timed(name: str) -> Any:
        original = originals[name]

        def wrapper(self: Continuation, *args: Any) -> Any:
            c0, t0 = time.thread_time(), time.perf_counter()
            try:
                return original(self, *args)
            finally:
                durations[name].append(time.perf_counter() - t0)
                cpu[name].append(time.thread_time() - c0)

        return wrapper

    for name in durations:
        setattr(Continuation, name, timed(name))
    try:
        await run()
    finally:
        for name, original in originals.items():
            setattr(Continuation, name, original)
    return {
        name: {
            "max_ms": round(1000 * max(values), 3),
            "max_cpu_ms": round(1000 * max(cpu[name]), 3),
            "p99_ms": round(1000 * percentile(values, 0.99), 3),
            "median_us": round(1e6 * median(values), 1),
            "count": len(values),
        }
        for name, values in durations.items()
    }


class _SlowCallbacks(logging.Handler):
    """Collects asyncio debug mode's "Executing <callback> took N seconds" reports."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.durations: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        # Only the calls' own tasks: not the benchmark's task nor the monitor.
        if (
            record.msg.startswith("Executing")
            and isinstance(args, tuple)
            and len(args) == 2
            and f"name='{CALL_TASK}" in str(args[0])
        ):
            self.durations.append((float(args[1]), str(args[0])[:300]))


async def longest_callbacks(run: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Run ``run()`` with asyncio's debug timing of every callback (task step); the longest ones. A task step is
    what holds the loop: from a task's resumption to its next ``await``."""
    loop = asyncio.get_running_loop()
    collector = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(collector)
    propagate, logger.propagate = logger.propagate, False
    loop.slow_callback_duration = 0.001
    loop.set_debug(True)
    try:
        await run()
    finally:
        loop.set_debug(False)
        await asyncio.sleep(0)  # the step that switched debug off is still timed: let it finish first
        logger.removeHandler(collector)
        logger.propagate = propagate
    ranked = sorted(collector.durations, reverse=True)
    values = [v for v, _ in ranked]
    return {
        "longest_ms": round(1000 * values[0], 3) if values else 0.0,
        "top5_ms": [round(1000 * v, 3) for v in values[:5]],
        "longest_step": ranked[0][1] if ranked else None,
        "over_1ms": len(values),
        "over_5ms": sum(v > 0.005 for v in values),
    }
