"""Where the wrapped path spends its time.

The wrapped and the raw call make the same SDK request through the same client, so what the wrapped path adds
is the core's work around it. That work is CPU only and deterministic, so it is profiled on its own (driving a
``Continuation`` with a real reply) rather than by comparing two profiles of network calls, where I/O waits and
a loaded machine's noise swamp a few hundred microseconds.
"""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Callable
from typing import Any

__all__ = ["profile_calls", "render"]


def _name(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/", "lib/python3"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({func})"


def profile_calls(fn: Callable[[], Any], calls: int, top: int = 12, per: str = "call") -> dict[str, Any]:
    """cProfile ``calls`` runs of ``fn``: the functions with the most own time, and autocontinue's functions by
    cumulative time, in microseconds per run. cProfile inflates every function call, so absolute numbers are
    larger than without it; the ranking and the shares are what it tells."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    stats = pstats.Stats(profiler)
    table = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in table.values())
    own = [
        {
            "function": _name(key),
            "own_us": round(1e6 * tt / calls, 2),
            "share": round(tt / total, 3) if total else None,
            "calls": round(nc / calls, 2),
        }
        for key, (_cc, nc, tt, _ct, _callers) in table.items()
    ]
    own.sort(key=lambda r: r["own_us"], reverse=True)
    ours = [
        {
            "function": _name(key),
            "cumulative_us": round(1e6 * ct / calls, 2),
            "share": round(ct / total, 3) if total else None,
        }
        for key, (_cc, _nc, _tt, ct, _callers) in table.items()
        if "autocontinue/" in key[0]
    ]
    ours.sort(key=lambda r: r["cumulative_us"], reverse=True)
    return {
        "per": per,
        "runs": calls,
        "profiled_total_us": round(1e6 * total / calls, 1),
        "top_own_time": own[:top],
        "autocontinue_cumulative": ours[:top],
    }


def render(profile: dict[str, Any], limit: int = 10, title: str = "the core alone") -> str:
    per = profile["per"]
    lines = [
        f"  profile of {title}, per {per} ({profile['runs']} runs; cProfile inflates absolute times): "
        f"{profile['profiled_total_us']} us",
        "  most own time (us, share, calls):",
    ]
    for row in profile["top_own_time"][:limit]:
        lines.append(
            f"    {row['own_us']:>8.1f}  {100 * (row['share'] or 0):5.1f} %  x{row['calls']:<5} {row['function']}"
        )
    lines.append("  autocontinue functions by cumulative time (us, share):")
    for row in profile["autocontinue_cumulative"][:limit]:
        lines.append(f"    {row['cumulative_us']:>8.1f}  {100 * (row['share'] or 0):5.1f} %  {row['function']}")
    return "\n".join(lines)
