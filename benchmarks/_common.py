"""What every benchmark shares: machine facts, the results file, summary rows, statistics, synthetic text.

Each benchmark module has ``run(quick: bool) -> dict`` (the results, including ``rows`` for the summary table)
and ``main()`` (``python -m benchmarks.<name> [--quick]``), which runs it and writes
``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "REPO_ROOT",
    "RESULTS_DIR",
    "Row",
    "cli",
    "load_result",
    "loadavg",
    "machine_info",
    "median",
    "percentile",
    "synthetic_text",
    "write_result",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    """One line of the summary table: a measurement of ours against its baseline, and the goal it is held to.

    ``ratio`` is ours / baseline unless the benchmark says otherwise in ``metric``; ``ok`` is None when there is no
    goal (a number reported for information).
    """

    benchmark: str
    metric: str
    ours: str
    baseline: str
    ratio: float | None
    goal: str
    ok: bool | None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.ratio is not None:
            data["ratio"] = round(self.ratio, 4)
        return data


# ------------------------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg", encoding="utf-8") as handle:
            return [float(x) for x in handle.read().split()[:3]]
    except OSError:
        return None


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "autocontinue"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        commit = out.stdout.strip() or None
        if commit and dirty.stdout.strip():
            commit += "+dirty"
        return commit
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    """Where and when a result was measured. The load average tells whether other work shared the machine."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "openai": _version("openai"),
        "httpx2": _version("httpx2"),
        "autocontinue": _version("autocontinue"),
        "commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_at_start": loadavg(),
    }


# ------------------------------------------------------------------------------------------------- results


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_result(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError):
        return None


def cli(name: str, run: Callable[[bool], dict[str, Any]], argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.<name> [--quick]``: run, print the rows, write the results JSON."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions: a smoke run, not a measurement")
    args = parser.parse_args(argv)
    info = machine_info()
    started = time.perf_counter()
    data = run(args.quick)
    elapsed = time.perf_counter() - started
    result = {
        "benchmark": name,
        "quick": args.quick,
        "seconds": round(elapsed, 2),
        "machine": {**info, "loadavg_at_end": loadavg()},
        **data,
    }
    path = write_result(name, result)
    print(f"\n{name}: {elapsed:.1f} s, results: {path.relative_to(REPO_ROOT)}")
    for row in data.get("rows", []):
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.3f}"
        verdict = {True: "ok", False: "MISSED", None: ""}[row["ok"]]
        print(
            f"  {row['metric']}: ours {row['ours']} | baseline {row['baseline']} | {ratio} | goal {row['goal']}",
            verdict,
        )
    return 0


# ---------------------------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# --------------------------------------------------------------------------------------------------- text

_WORDS = (
    *("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "river", "city", "light", "north", "garden"),
    *("stone", "paper", "winter", "model", "answer", "continue", "token", "window", "budget", "seam", "prefix"),
    *("round", "engine", "memory", "stream", "chunk", "value", "table", "code", "function", "return", "because"),
    *("although", "however", "therefore", "meanwhile"),
)


def synthetic_text(n_chars: int, seed: int = 1) -> str:
    """Deterministic prose-like text of exactly ``n_chars`` characters: words, punctuation, line breaks."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    sentence = 0
    while size < n_chars:
        word = rng.choice(_WORDS)
        if sentence == 0:
            word = word.capitalize()
        sentence += 1
        piece = word
        if sentence > 8 and rng.random() < 0.2:
            piece += rng.choice((".", "!", "?", ";"))
            sentence = 0
            piece += "\n\n" if rng.random() < 0.15 else " "
        elif rng.random() < 0.08:
            piece += ", "
        else:
            piece += " "
        parts.append(piece)
        size += len(piece)
    return "".join(parts)[:n_chars]
