"""Run the benchmarks in sequence and write ``benchmarks/results/summary.md``.

    python -m benchmarks                 # all of them (make bench)
    python -m benchmarks --quick         # a smoke run of all of them, about a minute: not a measurement
    python -m benchmarks overhead memory # some of them
    python -m benchmarks --summary       # rebuild summary.md from the results files, running nothing

Each benchmark runs in its own process (``python -m benchmarks.<name>``), so none inherits another's imports,
threads, connection pools or tracemalloc, and one that fails does not stop the others. Each writes
``benchmarks/results/<name>.json``; the summary table is built from those files.

Seam fidelity (``benchmarks.fidelity``) is owned separately and is skipped, with a message, if it is not there.
It runs its defaults (every prompt at five round sizes on the real engine: about six minutes on 2 idle cores);
``--fidelity-subset`` gives it one prompt of each kind, ``--quick`` one prompt at one round size.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ._common import REPO_ROOT, RESULTS_DIR, load_result, loadavg, machine_info, write_result

#: in the order they run; the numbers are the ones of the summary table
BENCHMARKS: tuple[tuple[str, str], ...] = (
    ("overhead", "1. Overhead of a wrapped create()"),
    ("engine", "2. Engine cost per round as the answer grows"),
    ("streaming", "3. Streaming: per-chunk overhead and the seam gap"),
    ("concurrency", "4. Concurrency: 500 calls x 4 rounds"),
    ("efficiency", "5. Token efficiency, budgets, prompt cache"),
    ("fidelity", "6. Seam fidelity (benchmarks.fidelity)"),
    ("memory", "7. Memory for a 1 M-character answer"),
    ("instruction_seam", "8. The instruction dialect's seam under 15 chat-model behaviours"),
    ("reliability", "9. Reliability against servers that misbehave"),
    ("proxy", "10. autocontinue serve vs the upstream called directly (and LiteLLM's proxy)"),
)
NAMES = tuple(name for name, _ in BENCHMARKS)
#: fidelity with --quick: one prompt, one round size, a short one-shot
FIDELITY_QUICK_ARGS = ("--k", "23", "--n", "48")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _fidelity_command(quick: bool, subset: bool) -> list[str] | None:
    """``python -m benchmarks.fidelity`` with its defaults; ``subset``: one prompt of each kind (its default k
    values and N); ``quick``: one prompt at one k and a short N."""
    if importlib.util.find_spec("benchmarks.fidelity") is None:
        return None
    command = [sys.executable, "-m", "benchmarks.fidelity"]
    if not (quick or subset):
        return command
    try:
        from .prompts import PROMPTS

        if quick:
            return [*command, "--prompts", PROMPTS[0].name, *FIDELITY_QUICK_ARGS]
        first_of_kind: dict[str, str] = {}
        for prompt in PROMPTS:
            first_of_kind.setdefault(prompt.kind, prompt.name)
        return [*command, "--prompts", ",".join(first_of_kind.values())]
    except Exception as error:  # the prompts module is the fidelity owner's: run its defaults then
        print(f"[bench] fidelity: prompts not found ({error}); running its defaults", flush=True)
        return command


def _run_one(name: str, quick: bool, fidelity_subset: bool = False) -> dict[str, Any]:
    if name == "fidelity":
        command = _fidelity_command(quick, fidelity_subset)
        if command is None:
            print("[bench] fidelity: SKIPPED - benchmarks/fidelity/ is not there (it is owned separately)", flush=True)
            return {"name": name, "status": "skipped", "seconds": 0.0, "detail": "benchmarks.fidelity not present"}
    else:
        command = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if quick else [])
    print(f"\n[bench] {name}: {' '.join(command[1:])}", flush=True)
    path = RESULTS_DIR / f"{name}.json"
    before = path.stat().st_mtime if path.exists() else None
    started = time.perf_counter()
    rc = subprocess.run(command, cwd=REPO_ROOT, env=_env(), check=False).returncode
    seconds = time.perf_counter() - started
    fresh = path.exists() and path.stat().st_mtime != before
    status = "ok" if rc == 0 and fresh else f"failed (exit {rc}{'' if fresh else ', no new results'})"
    print(f"[bench] {name}: {status}, {seconds:.1f} s", flush=True)
    return {"name": name, "status": status, "seconds": round(seconds, 1)}


def _fidelity_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Summary rows from the fidelity results file: per model, the healed seams against the naive one."""
    try:
        rows = []
        for model, summary in data["summary"].items():
            table = summary["all"]
            healed = [table[m] for m in ("healed", "healed-stream", "cfm", "cfm-stream") if m in table]
            same = sum(cell["identical"] for cell in healed)
            total = sum(cell["total"] for cell in healed)
            naive = table.get("naive")
            ratio = (same / total) / naive["rate"] if naive and naive.get("rate") and total else None
            rows.append(
                {
                    "benchmark": "fidelity",
                    "metric": f"{model}: joined answer identical to the one-shot answer, healed seams (prefill and "
                    "continue_final_message, streamed and not) vs naive",
                    "ours": f"{same}/{total} ({100 * same / total:.1f} %)" if total else "-",
                    "baseline": f"{naive['identical']}/{naive['total']} ({100 * (naive['rate'] or 0):.1f} %)"
                    if naive
                    else "-",
                    "ratio": round(ratio, 4) if ratio is not None else None,
                    "goal": "= 100 %",
                    "ok": same == total if total else None,
                }
            )
            default = table.get("default")
            if default:
                rows.append(
                    {
                        "benchmark": "fidelity",
                        "metric": f"{model}: with the default repeat stop: identical / stopped early at a loop (text "
                        "identical up to the stop)",
                        "ours": f"{default['identical']} / {default['stopped_early']} of {default['total']}",
                        "baseline": "-",
                        "ratio": None,
                        "goal": "info",
                        "ok": None,
                    }
                )
        return rows
    except (KeyError, TypeError, ZeroDivisionError, AttributeError):
        return [
            {
                "benchmark": "fidelity",
                "metric": "results in an unknown format: see fidelity.json",
                "ours": "-",
                "baseline": "-",
                "ratio": None,
                "goal": "info",
                "ok": None,
            }
        ]


def _emulator_note() -> str:
    return "tests.support.emulator in its own process (its connections have TCP_NODELAY)"


def _fmt_ratio(value: Any) -> str:
    return "" if value is None else f"{value:.3f}"


def _verdict(ok: Any) -> str:
    return {True: "ok", False: "**missed**", None: ""}[ok]


def _summary(
    runs: list[dict[str, Any]], info: dict[str, Any], quick: bool, total: float, summary_only: bool = False
) -> str:
    by_name = {r["name"]: r for r in runs}
    rows: list[dict[str, Any]] = []
    for name, _title in BENCHMARKS:
        if name not in by_name:
            continue
        run = by_name[name]
        data = load_result(name) if run["status"].startswith("ok") else None
        if data is None:
            rows.append(
                {
                    "benchmark": name,
                    "metric": run["status"],
                    "ours": "-",
                    "baseline": "-",
                    "ratio": None,
                    "goal": "-",
                    "ok": None if run["status"] == "skipped" else False,
                }
            )
            continue
        rows += _fidelity_rows(data) if name == "fidelity" else data.get("rows", [])
    load_end = loadavg()
    lines = [
        "# autocontinue benchmarks",
        "",
        f"{'Quick smoke run (not a measurement)' if quick else 'Full run'} of {len(runs)} benchmark(s) in "
        f"{total:.0f} s{' (sum of the runs below)' if summary_only else ''}, {info['date']}.",
        "",
        f"Machine: {info['platform']}; CPU {info['cpu_model']}, {info['cores']} cores "
        f"({info['cores_usable']} usable); Python {info['python']}; openai {info['openai']}, httpx2 "
        f"{info['httpx2']}; autocontinue {info['autocontinue']} at {info['commit']}. Load average at start "
        f"{info['loadavg_at_start']}, at end {load_end} (and at each benchmark's start below): on a shared machine, "
        "wall-clock numbers are noisier than the CPU-time ones next to them.",
        "",
        "Each ratio is ours / baseline, measured in the same run. A goal of `info` reports a number without a verdict.",
        "",
        "| # | benchmark | metric | ours | baseline | ratio | goal | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    numbers = {name: title.split(".")[0] for name, title in BENCHMARKS}
    for row in rows:
        lines.append(
            f"| {numbers.get(row['benchmark'], '')} | {row['benchmark']} | {row['metric']} | {row['ours']} | "
            f"{row['baseline']} | {_fmt_ratio(row['ratio'])} | {row['goal']} | {_verdict(row['ok'])} |"
        )
    lines += ["", "| benchmark | status | seconds | load average at its start |", "|---|---|---|---|"]
    for run in runs:
        data = load_result(run["name"]) if run["status"].startswith("ok") else None
        load = run.get("load") or ((data or {}).get("machine") or {}).get("loadavg_at_start") or "-"
        lines.append(f"| {run['name']} | {run['status']} | {run['seconds']} | {load} |")
    missed = [r for r in rows if r["ok"] is False]
    if missed:
        lines += ["", "Missed goals (the benchmark's JSON has the details, and a profile where one was taken):"]
        lines += [
            f"- {r['benchmark']}: {r['metric']}: {r['ours']} vs {r['baseline']} (goal {r['goal']})" for r in missed
        ]
    lines += [
        "",
        f"The emulator runs in its own process ({_emulator_note()}).",
        "",
    ]
    return "\n".join(lines)


def _from_files(names: list[str]) -> list[dict[str, Any]]:
    """The runs behind the results files already there (for ``--summary``): each with its own date and time."""
    runs = []
    for name in names:
        data = load_result(name)
        if data is None:
            runs.append({"name": name, "status": "no results", "seconds": 0.0})
            continue
        seconds = data.get("seconds", (data.get("settings") or {}).get("seconds", 0.0))
        date = (data.get("machine") or {}).get("date")
        if date is None:
            path = RESULTS_DIR / f"{name}.json"
            date = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(path.stat().st_mtime))
        quick = " quick" if data.get("quick") else ""
        runs.append({"name": name, "status": f"ok (from file:{quick} run of {date})", "seconds": seconds})
        runs[-1]["load"] = (data.get("machine") or {}).get("loadavg_at_start")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(NAMES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute (not a measurement)")
    parser.add_argument(
        "--fidelity-subset",
        action="store_true",
        help="run seam fidelity on one prompt of each kind instead of every prompt",
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="run nothing: rebuild summary.md from the results files already there",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; expected some of {', '.join(NAMES)}")
    wanted = [name for name in NAMES if not args.names or name in args.names]
    info = machine_info()
    started = time.perf_counter()
    if args.summary:
        runs = _from_files(wanted)
        total = sum(float(r["seconds"] or 0.0) for r in runs)
    else:
        runs = [_run_one(name, args.quick, args.fidelity_subset) for name in wanted]
        total = time.perf_counter() - started
    summary = _summary(runs, info, args.quick, total, args.summary)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "summary.md"
    path.write_text(summary, encoding="utf-8")
    write_result("summary", {"quick": args.quick, "seconds": round(total, 1), "machine": info, "runs": runs})
    print("\n" + summary)
    print(f"[bench] {len(runs)} benchmark(s) in {total:.0f} s; summary: {Path(path).relative_to(REPO_ROOT)}")
    failed = [r for r in runs if r["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
