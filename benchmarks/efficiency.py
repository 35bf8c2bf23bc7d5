"""5. Token efficiency: rounds and tokens spent against the least possible, budgets, and the engine's prompt cache.

Emulator (its own process, persona vLLM, dialect ``continue_final_message``):

- Rounds: an answer of N emulator tokens, continued at ``max_tokens`` = cap per round, against the least possible
  ⌈N / cap⌉, with healing (the default: each round holds back the last word for the model to regenerate, so a
  round adds a little less than cap) and without (every round adds exactly cap). Completion tokens paid over N is
  the price of healing.
- Budgets: an answer far longer than the budget, continued under ``max_total_tokens`` = B: the overshoot
  (completion tokens summed over rounds, minus B) must be 0, streamed or not.

Real engine (``LocalEngine``: llama-server with SmolLM2-135M, prompt cache on, one slot): for each continuation
round, the share of its prompt served from the cache (``usage.prompt_tokens_details.cached_tokens /
prompt_tokens``, per round, from ``.continuation.rounds``). The baseline is the first rounds' share, whose prompt
is new to the cache but for the chat template's opening.
"""

from __future__ import annotations

import math
import time
from typing import Any

import openai

import autocontinue

from ._common import Row, cli, median, synthetic_text

NS = (100, 500, 2000)
CAPS = (16, 64, 256)
BUDGETS = (1, 50, 64, 100, 257, 1000)
BUDGET_CAP = 64
BUDGET_TARGET_TOKENS = 3000
DIALECT = "continue_final_message"
MESSAGES = [{"role": "user", "content": "Write as much as you can."}]
#: continuation rounds should be served from the cache but for the last token or two
GOAL_CACHE_SHARE = 0.9
ENGINE_MAX_TOKENS = 16
ENGINE_PROMPTS = (
    "Write a short story about a cat who learns to fly.",
    "Explain photosynthesis to a ten-year-old.",
    "Give me a numbered list of 10 tips for learning to cook.",
)


def _target(tokens: list[str], n: int) -> str:
    return "".join(tokens[:n])


def _rounds(emu: Any, tokens: list[str], quick: bool) -> list[dict[str, Any]]:
    from tests.support.emulator import Script

    client = openai.OpenAI(base_url=emu.base_url("vllm"), api_key="x", max_retries=0, timeout=60)
    out = []
    ns = NS[:2] if quick else NS
    for n in ns:
        target = _target(tokens, n)
        model = emu.add_script(Script(target=target))
        for cap in CAPS:
            ideal = math.ceil(n / cap)
            for heal in (True, False):
                reply = autocontinue.create(
                    client,
                    model=model,
                    messages=MESSAGES,
                    max_tokens=cap,
                    max_rounds=10 * ideal + 10,
                    dialect=DIALECT,
                    heal=heal,
                )
                trace = reply.continuation
                assert reply.choices[0].message.content == target, f"N={n} cap={cap} heal={heal}: wrong text"
                assert trace.stop_cause == "natural", trace.stop_cause
                paid = sum(r.usage.completion_tokens for r in trace.rounds)
                out.append(
                    {
                        "n_tokens": n,
                        "cap": cap,
                        "heal": heal,
                        "rounds": len(trace.rounds),
                        "ideal_rounds": ideal,
                        "rounds_over_ideal": round(len(trace.rounds) / ideal, 4),
                        "completion_tokens": paid,
                        "tokens_over_n": round(paid / n, 4),
                    }
                )
    return out


def _budgets(emu: Any, tokens: list[str]) -> list[dict[str, Any]]:
    from tests.support.emulator import Script

    client = openai.OpenAI(base_url=emu.base_url("vllm"), api_key="x", max_retries=0, timeout=60)
    target = _target(tokens, BUDGET_TARGET_TOKENS)
    model = emu.add_script(Script(target=target))
    out = []
    for stream in (False, True):
        for budget in BUDGETS:
            kwargs: dict[str, Any] = {
                "model": model,
                "messages": MESSAGES,
                "max_tokens": BUDGET_CAP,
                "max_rounds": 1000,
                "max_total_tokens": budget,
                "dialect": DIALECT,
            }
            if stream:
                result = autocontinue.create(client, stream=True, **kwargs)
                text = "".join(c.choices[0].delta.content or "" for c in result if c.choices)
                trace = result.continuation
            else:
                reply = autocontinue.create(client, **kwargs)
                text = reply.choices[0].message.content or ""
                trace = reply.continuation
            assert target.startswith(text), "the budgeted text is not a prefix of the answer"
            paid = sum(r.usage.completion_tokens for r in trace.rounds)
            out.append(
                {
                    "stream": stream,
                    "budget": budget,
                    "completion_tokens": paid,
                    "overshoot": paid - budget,
                    "rounds": len(trace.rounds),
                    "stop_cause": trace.stop_cause,
                    "usage_estimated": any(r.usage_estimated for r in trace.rounds),
                }
            )
    return out


def _engine_cache(quick: bool) -> dict[str, Any]:
    from autocontinue.local import DEFAULT_SEED, LocalEngine

    prompts = ENGINE_PROMPTS[:1] if quick else ENGINE_PROMPTS[:2]
    rounds = 3
    started = time.perf_counter()
    per_round: list[dict[str, Any]] = []
    with LocalEngine(parallel=1) as engine:
        startup = time.perf_counter() - started
        client = openai.OpenAI(base_url=engine.base_url, api_key="x", max_retries=0, timeout=300)
        wrapped = autocontinue.wrap(client, max_rounds=rounds)
        for prompt in prompts:
            reply = wrapped.chat.completions.create(
                model=engine.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=ENGINE_MAX_TOKENS,
                temperature=0,
                seed=DEFAULT_SEED,
            )
            for r in reply.continuation.rounds:
                details = r.usage.prompt_tokens_details
                cached = (details.cached_tokens or 0) if details is not None else None
                per_round.append(
                    {
                        "prompt": prompt[:40],
                        "round": r.index,
                        "prompt_tokens": r.usage.prompt_tokens,
                        "cached_tokens": cached,
                        "share": round(cached / r.usage.prompt_tokens, 4) if cached is not None else None,
                        "seam": list(r.seam),
                    }
                )
    continued = [r for r in per_round if r["round"] > 1 and r["share"] is not None]
    first = [r for r in per_round if r["round"] == 1 and r["share"] is not None]
    return {
        "engine_startup_s": round(startup, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "max_tokens": ENGINE_MAX_TOKENS,
        "rounds_per_call": rounds,
        "per_round": per_round,
        "continuation_share_median": round(median([r["share"] for r in continued]), 4) if continued else None,
        "continuation_share_min": min(r["share"] for r in continued) if continued else None,
        "continuation_uncached_tokens_median": (
            median([r["prompt_tokens"] - r["cached_tokens"] for r in continued]) if continued else None
        ),
        "first_round_share_median": round(median([r["share"] for r in first]), 4) if first else None,
    }


def run(quick: bool) -> dict[str, Any]:
    from tests.support.emulator import tokenize

    from ._emulator import start_emulator

    tokens = tokenize(synthetic_text(30_000, seed=51))
    with start_emulator() as emu:
        rounds = _rounds(emu, tokens, quick)
        budgets = _budgets(emu, tokens)
    for r in rounds:
        print(
            f"efficiency: N={r['n_tokens']:>5} cap={r['cap']:>4} heal={r['heal']!s:<5} rounds {r['rounds']:>4} "
            f"(ideal {r['ideal_rounds']:>4}), tokens paid {r['completion_tokens']} ({r['tokens_over_n']}x N)"
        )
    for b in budgets:
        print(
            f"efficiency: budget {b['budget']:>5} stream={b['stream']!s:<5} paid {b['completion_tokens']:>5} "
            f"overshoot {b['overshoot']:>3} ({b['rounds']} rounds, {b['stop_cause']})"
        )
    cache = _engine_cache(quick)
    print(
        f"efficiency: real engine, continuation rounds' prompt share from cache: median "
        f"{cache['continuation_share_median']}, min {cache['continuation_share_min']} (uncached tokens median "
        f"{cache['continuation_uncached_tokens_median']}); first rounds {cache['first_round_share_median']}"
    )

    healed = [r for r in rounds if r["heal"]]
    plain = [r for r in rounds if not r["heal"]]
    worst_healed = max(healed, key=lambda r: r["rounds_over_ideal"])
    worst_plain = max(plain, key=lambda r: r["rounds_over_ideal"])
    worst_tokens = max(healed, key=lambda r: r["tokens_over_n"])
    overshoot = {s: max(b["overshoot"] for b in budgets if b["stream"] == s) for s in (False, True)}
    share = cache["continuation_share_median"]
    rows = [
        Row(
            "efficiency",
            f"rounds used / ceil(N/cap), without healing, worst of N={sorted({r['n_tokens'] for r in plain})} x "
            f"cap={list(CAPS)}",
            f"{worst_plain['rounds']} rounds",
            f"{worst_plain['ideal_rounds']} rounds",
            worst_plain["rounds_over_ideal"],
            "= 1",
            all(r["rounds"] == r["ideal_rounds"] for r in plain),
        ).as_dict(),
        Row(
            "efficiency",
            f"rounds used / ceil(N/cap), with healing (default), worst (N={worst_healed['n_tokens']}, "
            f"cap={worst_healed['cap']})",
            f"{worst_healed['rounds']} rounds",
            f"{worst_healed['ideal_rounds']} rounds",
            worst_healed["rounds_over_ideal"],
            "info",
            None,
        ).as_dict(),
        Row(
            "efficiency",
            f"completion tokens paid / N, with healing, worst (N={worst_tokens['n_tokens']}, "
            f"cap={worst_tokens['cap']})",
            f"{worst_tokens['completion_tokens']} tokens",
            f"{worst_tokens['n_tokens']} tokens",
            worst_tokens["tokens_over_n"],
            "info",
            None,
        ).as_dict(),
    ]
    for stream in (False, True):
        rows.append(
            Row(
                "efficiency",
                f"budget overshoot (paid - max_total_tokens), worst of budgets {list(BUDGETS)}, "
                f"{'streamed' if stream else 'non-streamed'}",
                f"{overshoot[stream]} tokens",
                "0 tokens",
                None,
                "<= 0",
                overshoot[stream] <= 0,
            ).as_dict()
        )
    rows.append(
        Row(
            "efficiency",
            "real engine: share of a continuation round's prompt served from the prompt cache (median), "
            "vs first rounds",
            f"{share:.3f}" if share is not None else "n/a",
            f"{cache['first_round_share_median']:.3f}" if cache["first_round_share_median"] is not None else "n/a",
            None,
            f">= {GOAL_CACHE_SHARE}",
            share is not None and share >= GOAL_CACHE_SHARE,
        ).as_dict()
    )
    # A budget whose last round is left with fewer tokens than the held-back word needs cannot add text: that call
    # ends "no_progress" (still within the budget) after one more request than a "token_budget" stop would take.
    no_progress = [b for b in budgets if b["stop_cause"] == "no_progress"]
    if no_progress:
        print(
            "efficiency: note: budgets ending 'no_progress' instead of 'token_budget': "
            + ", ".join(f"{b['budget']} ({'stream' if b['stream'] else 'non-stream'})" for b in no_progress)
        )
    return {
        "dialect": DIALECT,
        "budgets_ending_no_progress": [{"budget": b["budget"], "stream": b["stream"]} for b in no_progress],
        "rounds": rounds,
        "budgets": budgets,
        "budget_cap": BUDGET_CAP,
        "engine_cache": cache,
        "rows": rows,
    }


def main() -> int:
    return cli("efficiency", run)


if __name__ == "__main__":
    raise SystemExit(main())
