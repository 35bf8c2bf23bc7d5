"""Runs the seam-fidelity benchmark: ``python -m benchmarks.fidelity`` (see the package's docstring)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

from autocontinue.local import DEFAULT_SEED, MODELS, LocalEngine

from ..prompts import PROMPTS, Prompt
from . import __doc__ as DESCRIPTION
from .cases import MODE_SETTINGS, MODES, CaseResult, Exchange, OneShot, Recorder, make_client, run_case, run_oneshot
from .diagnosis import Engine, diagnose
from .report import PromptRun, render, summarize, write_results

K_VALUES = (9,)
#: the prompts of the two-model table (24 of the 35: every kind, non-English, code, tables and blank lines included;
#: Gemma on a shared 2-core machine writes a few tokens a second, so the table is kept to what gives an answer)
TABLE_PROMPTS = (
    "story_cat",
    "explain_photosynthesis",
    "dialogue",
    "list_tips",
    "list_steps",
    "code_python",
    "code_js",
    "code_bash",
    "json_person",
    "json_list",
    "fr_story",
    "fr_explain",
    "de_explain",
    "es_story",
    "zh_story",
    "zh_explain",
    "ja_poem",
    "poem_stanzas",
    "blank_sections",
    "haiku_series",
    "table_fruits",
    "table_schedule",
    "markdown_readme",
    "math",
)
#: one-shot limit: long enough for several seams at every k, short enough for two models in well under an hour
DEFAULT_N = 48
RESULTS = Path(__file__).resolve().parents[1] / "results" / "fidelity.json"


def run_prompt(
    prompt: Prompt,
    *,
    connect: Callable[[], tuple[openai.OpenAI, Recorder]],
    engine: Engine,
    model: str,
    n: int,
    ks: Iterable[int],
    modes: Iterable[str],
    dialect: str,
    extra_body: dict[str, Any] | None,
) -> PromptRun:
    """The one-shot and every (k, mode) of one prompt, failures diagnosed."""
    client, recorder = connect()
    reference = run_oneshot(client, model, prompt, n, extra_body)
    cases: list[CaseResult] = []
    failures: list[tuple[CaseResult, list[Exchange]]] = []
    for k in ks:
        for mode in modes:
            result, exchanges = run_case(
                client,
                recorder,
                model,
                prompt,
                reference,
                k=k,
                mode=mode,
                n=n,
                dialect=dialect,
                extra_body=extra_body,
            )
            if not result.identical:
                failures.append((result, exchanges))
            cases.append(result)
    # Diagnoses replay requests, which changes what the server has cached: they must come after every measured
    # call of the prompt, or they would change the numbers of the calls after them.
    reference_ids = _reference_ids(engine, reference) if failures else None
    for result, exchanges in failures:
        result.diagnosis = diagnose(client, recorder, engine, reference, exchanges, result, reference_ids)
    return PromptRun(prompt, reference, cases)


def _reference_ids(engine: Engine, reference: OneShot) -> list[int] | None:
    # The one-shot's token ids are not in the logprobs; re-tokenizing the whole text gives them when the model's
    # tokens were canonical, which is checked by comparing the pieces' byte lengths.
    ids = engine.tokenize(reference.text)
    return ids if len(ids) == len(reference.tokens) else None


def _interrupt(signum: int, frame: object) -> None:
    # Once only: `timeout` and process-group kills deliver the signal twice, and a second KeyboardInterrupt
    # would break the clean-up (stopping the server) that the first one started.
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report, write the results JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fidelity", description=(DESCRIPTION or "").split("\n\n")[0]
    )
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="one-shot max_tokens (default %(default)s)")
    parser.add_argument("--k", default=",".join(map(str, K_VALUES)), help="per-round max_tokens values")
    parser.add_argument("--modes", default=",".join(MODES), help=f"some of {', '.join(MODE_SETTINGS)}")
    parser.add_argument(
        "--prompts",
        default=",".join(TABLE_PROMPTS),
        help="comma-separated prompt names, or 'all' (default: the table's)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        # Default 1: two slots decoding in one batch, or a slot whose cache another prompt rewrote, can change the
        # numerics and so the text (a speed-up from 2 could not be measured on a busy 2-core machine).
        help="prompts run concurrently, one server slot each (default %(default)s)",
    )
    parser.add_argument("--dialect", default="auto", help="continuation dialect (default %(default)s: prefill)")
    parser.add_argument(
        "--model", default=",".join(MODELS), help=f"local models, some of {', '.join(MODELS)} (default: all)"
    )
    parser.add_argument(
        "--cache-prompt", choices=("default", "on", "off"), default="default", help="llama.cpp's cache_prompt"
    )
    parser.add_argument(
        "--engine-args", default="", help="further llama-server flags, e.g. '--ubatch-size 1' (split on spaces)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default %(default)s)")
    args = parser.parse_args(argv)
    ks = [int(v) for v in args.k.split(",") if v]
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODE_SETTINGS):
        parser.error(
            f"unknown modes: {sorted(set(modes) - set(MODE_SETTINGS))}; expected some of {sorted(MODE_SETTINGS)}"
        )
    models = [m for m in args.model.split(",") if m]
    if set(models) - set(MODELS):
        parser.error(f"unknown models: {sorted(set(models) - set(MODELS))}; expected some of {sorted(MODELS)}")
    wanted = {p for p in args.prompts.split(",") if p and p != "all"}
    prompts = [p for p in PROMPTS if not wanted or p.name in wanted]
    if wanted - {p.name for p in prompts}:
        parser.error(f"unknown prompts: {sorted(wanted - {p.name for p in prompts})}")
    extra_body = None if args.cache_prompt == "default" else {"cache_prompt": args.cache_prompt == "on"}

    # SIGTERM (a supervisor, `kill`, `timeout`) must unwind through the `with` below so the server is stopped; by
    # default it would kill this process and leave llama-server running, busy with the queued requests.
    signal.signal(signal.SIGTERM, _interrupt)
    settings = {
        "models": {key: MODELS[key].name for key in models},
        "n": args.n,
        "k": ks,
        "modes": modes,
        "workers": args.workers,
        "dialect": args.dialect,
        "cache_prompt": args.cache_prompt,
        "engine_args": args.engine_args.split(),
        "seed": DEFAULT_SEED,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    started = time.perf_counter()
    done: dict[str, list[PromptRun]] = {}
    lock = threading.Lock()
    for key in models:
        runs = done.setdefault(key, [])
        with LocalEngine(model=key, parallel=max(1, args.workers), extra_args=args.engine_args.split()) as eng:
            engine = Engine(eng.server_url)
            local = threading.local()

            def connect(eng: LocalEngine = eng, local: threading.local = local) -> tuple[openai.OpenAI, Recorder]:
                # One client (and recorder) per worker thread, reused across that worker's prompts.
                if not hasattr(local, "client"):
                    local.client = make_client(eng.base_url)
                pair: tuple[openai.OpenAI, Recorder] = local.client
                return pair

            def one(
                prompt: Prompt,
                key: str = key,
                eng: LocalEngine = eng,
                engine: Engine = engine,
                connect: Callable[[], tuple[openai.OpenAI, Recorder]] = connect,
                runs: list[PromptRun] = runs,
            ) -> PromptRun:
                run = run_prompt(
                    prompt,
                    connect=connect,
                    engine=engine,
                    model=eng.model,
                    n=args.n,
                    ks=ks,
                    modes=modes,
                    dialect=args.dialect,
                    extra_body=extra_body,
                )
                verdicts = " ".join(f"{c.k}{c.mode}{'=' if c.identical else 'X'}" for c in run.cases)
                print(f"{key} {prompt.name:<24} one-shot {run.reference.finish_reason:<6} {verdicts}", file=sys.stderr)
                with lock:
                    # Saved after every prompt: a run that is interrupted (or takes too long on a busy machine)
                    # still leaves what it measured.
                    runs.append(run)
                    write_results(args.out, settings, done, ks, modes, time.perf_counter() - started, complete=False)
                return run

            pool = ThreadPoolExecutor(max_workers=max(1, args.workers))
            try:
                list(pool.map(one, prompts))
            finally:
                # On an interrupt, prompts not started are dropped instead of run to the end; the calls in flight
                # fail as soon as the server stops.
                pool.shutdown(wait=False, cancel_futures=True)
    elapsed = time.perf_counter() - started

    for key, runs in done.items():
        print(f"\n=== {key} ({MODELS[key].name})")
        print(render(summarize(runs, ks, modes), runs, modes))
    print(f"\n{len(prompts)} prompts, N={args.n}, k={ks}, {args.workers} worker(s), {elapsed:.1f} s")
    write_results(args.out, settings, done, ks, modes, elapsed, complete=True)
    print(f"results: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # The engine was stopped on the way out; a traceback would say nothing more.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
