"""The report of a seam-fidelity run: identical rates per k and mode, every failure with its diagnosis, and the
results JSON."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..prompts import Prompt
from .cases import CaseResult, OneShot


@dataclass
class PromptRun:
    """Everything measured for one prompt."""

    prompt: Prompt
    reference: OneShot
    cases: list[CaseResult]


def summarize(runs: Sequence[PromptRun], ks: Sequence[int], modes: Sequence[str]) -> dict[str, Any]:
    """Identical rates per k and mode, and overall."""
    table: dict[str, dict[str, Any]] = {}
    for k in [*ks, "all"]:
        row: dict[str, Any] = {}
        for mode in modes:
            cases = [c for r in runs for c in r.cases if c.mode == mode and (k == "all" or c.k == k)]
            same = sum(c.identical for c in cases)
            row[mode] = {
                "identical": same,
                "total": len(cases),
                "rate": round(same / len(cases), 4) if cases else None,
                "stopped_early": sum(c.stopped_early for c in cases),
                # why the others differ (the diagnosis' cause, up to its first colon)
                "causes": dict(
                    Counter(
                        ((c.diagnosis or {}).get("cause") or "undiagnosed").split(":")[0]
                        for c in cases
                        if not c.identical
                    ).most_common()
                ),
            }
            ratios = [c.budget_chars for c in cases if c.budget_chars is not None]
            if ratios:
                row[mode]["budget_chars"] = {
                    "mean": round(sum(ratios) / len(ratios), 4),
                    "min": min(ratios),
                    "max": max(ratios),
                    "cases": len(ratios),
                }
        table[str(k)] = row
    return table


def render(summary: dict[str, Any], runs: Sequence[PromptRun], modes: Sequence[str]) -> str:
    """The human-readable report: the table, then every failure with its diagnosis."""
    lines = ["", "k     " + "".join(f"{mode:>22}" for mode in modes)]
    for k, row in summary.items():
        cells = "".join(
            f"{row[m]['identical']:>6}/{row[m]['total']:<4} {100 * (row[m]['rate'] or 0):6.1f} %   " for m in modes
        )
        lines.append(f"{k:<6}{cells}")
    for k, row in summary.items():
        for mode in modes:
            budget = row[mode].get("budget_chars")
            if budget:
                lines.append(
                    f"k={k} {mode}: max_total_tokens=N bought {100 * budget['mean']:.1f} % of the one-shot's "
                    f"characters (min {100 * budget['min']:.1f} %, max {100 * budget['max']:.1f} %, "
                    f"{budget['cases']} prompts)"
                )
    overall = summary.get("all", {})
    for mode in modes:
        if overall.get(mode, {}).get("causes"):
            causes = ", ".join(f"{n} {cause}" for cause, n in overall[mode]["causes"].items())
            lines.append(f"{mode} not identical: {causes}")
    failures = [c for r in runs for c in r.cases if not c.identical]
    lines.append("")
    lines.append(f"{len(failures)} failing (prompt, k, mode):")
    for case in failures:
        lines.append(
            f"- {case.prompt} k={case.k} {case.mode}: first difference at {case.first_difference} "
            f"(stop {case.stop_cause}, {case.rounds} rounds)"
        )
        lines.append(f"    expected: {case.expected!r}")
        lines.append(f"    got:      {case.got!r}")
        if case.diagnosis:
            d = case.diagnosis
            lines.append(f"    cause: {d.get('cause')}")
            if d.get("round"):
                lines.append(
                    f"    round {d['round']}: sent ...{d.get('sent_tail')!r} held {d.get('held')!r} "
                    f"reply {d.get('reply_head')!r} one-shot {d.get('expected_head')!r}"
                )
                lines.append(
                    f"    token boundary {d.get('on_token_boundary')}, same tokens {d.get('same_tokens')}, "
                    f"differing token {d.get('differing_token')!r} gap {d.get('gap')}, "
                    f"replay without prompt cache matches {d.get('replay_uncached_matches')}"
                )
    return "\n".join(lines)


def write_results(
    path: Path,
    settings: dict[str, Any],
    runs: Mapping[str, Sequence[PromptRun]],
    ks: Sequence[int],
    modes: Sequence[str],
    seconds: float,
    *,
    complete: bool,
) -> None:
    """The results JSON (per model: the summary table and every case), written atomically."""
    results = {
        "settings": {**settings, "seconds": round(seconds, 1), "complete": complete},
        "summary": {model: summarize(model_runs, ks, modes) for model, model_runs in runs.items()},
        "prompts": {
            model: [
                {
                    "name": r.prompt.name,
                    "kind": r.prompt.kind,
                    "one_shot": {
                        "finish_reason": r.reference.finish_reason,
                        "completion_tokens": r.reference.completion_tokens,
                        "text": r.reference.text,
                    },
                    "cases": [asdict(c) for c in r.cases],
                }
                for r in model_runs
            ]
            for model, model_runs in runs.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
