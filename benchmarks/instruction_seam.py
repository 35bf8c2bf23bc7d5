"""The instruction dialect's seam under every way a chat model answers "continue": joined exactly, or not?

    python -m benchmarks.instruction_seam [--quick]

Every behaviour of ``tests/support/emulator/behaviours.py`` (a chat model that continues exactly, repeats a word, a few
words, the line or the quoted tail, opens with a preamble or "...", adds or drops a space, reopens a code fence,
rewrites the cut word, starts the answer again) x six kinds of text (``seam_texts.py``) x three round sizes x
streamed and not, each a real ``openai`` client over HTTP to the emulator with ``dialect="instruction"`` and the
default options. A case is **exact** when the caller gets the whole answer, character for character. Otherwise it
is classified: **doubled** (every character of the answer is there, with text added: a repeat or junk kept),
**lost** (characters of the answer are missing or changed), **short** (the call ended before the answer did).
"""

from __future__ import annotations

import difflib
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import openai

import autocontinue
from tests.support.emulator import Emulator, Script
from tests.support.emulator.behaviours import BEHAVIOURS

from ._common import Row, cli, load_result
from .seam_texts import TEXTS

__all__ = ["classify", "run", "run_case"]

#: tokens per round (the emulator's GPT-2-like tokens): small, medium, large. At the smallest, a repeated line, the
#: last 60 characters or a restart often fill the whole round; such a round is sent again with a larger limit (the
#: per-round limit rule), which is what gets the call past the repeat.
ROUND_SIZES = (24, 64, 160)


def classify(target: str, got: str) -> str:
    """``exact``, ``doubled`` (nothing missing, something added) or ``lost``."""
    if got == target:
        return "exact"
    matcher = difflib.SequenceMatcher(None, target, got, autojunk=False)
    missing = any(tag in ("delete", "replace") for tag, *_ in matcher.get_opcodes())
    return "lost" if missing else "doubled"


def run_case(emu: Emulator, behaviour: str, kind: str, size: int, stream: bool) -> dict[str, Any]:
    """One continued call; returns its outcome and, when not exact, where the text first differs."""
    target = TEXTS[kind]
    model = emu.add_script(Script(target=target))
    client = openai.OpenAI(base_url=emu.base_url(f"chat-{behaviour}"), api_key="x", max_retries=0)
    try:
        reply = autocontinue.create(
            client,
            model=model,
            messages=[{"role": "user", "content": "Write it."}],
            max_tokens=size,
            dialect="instruction",
            max_rounds=400,
            stream=stream,
        )
        if stream:
            text = ""
            for chunk in reply:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
            trace = reply.continuation
        else:
            text = reply.choices[0].message.content or ""
            trace = reply.continuation
    finally:
        client.close()
    outcome = classify(target, text)
    if outcome == "lost" and target.startswith(text):
        outcome = "short"
    case: dict[str, Any] = {
        "behaviour": behaviour,
        "kind": kind,
        "size": size,
        "stream": stream,
        "outcome": outcome,
        "rounds": len(trace.rounds),
        "stop_cause": trace.stop_cause,
        "doubts": sum(1 for r in trace.rounds for a in r.seam if a.startswith("doubt")),
    }
    if outcome != "exact":
        at = next(
            (i for i, (a, b) in enumerate(zip(target, text, strict=False)) if a != b), min(len(target), len(text))
        )
        case["diff_at"] = at
        case["expected"] = target[max(0, at - 30) : at + 30]
        case["got"] = text[max(0, at - 30) : at + 30]
        case["seams"] = [list(r.seam) for r in trace.rounds]
    return case


def run(quick: bool = False) -> dict[str, Any]:
    """Every case (``quick``: one text and one round size); the table behaviour x exact/total."""
    kinds = ["markdown+code"] if quick else list(TEXTS)
    sizes = ROUND_SIZES[1:2] if quick else ROUND_SIZES
    cases = []
    with Emulator() as emu:
        for behaviour in BEHAVIOURS:
            for kind in kinds:
                for size in sizes:
                    for stream in (False, True):
                        cases.append(run_case(emu, behaviour, kind, size, stream))
    by_behaviour: dict[str, Counter[str]] = defaultdict(Counter)
    for case in cases:
        by_behaviour[case["behaviour"]][case["outcome"]] += 1
    table = {name: dict(counts) for name, counts in by_behaviour.items()}
    total = len(cases)
    exact = sum(1 for c in cases if c["outcome"] == "exact")
    damaged = sum(1 for c in cases if c["outcome"] in ("lost", "doubled"))
    short = sum(1 for c in cases if c["outcome"] == "short")
    before = load_result("instruction_seam_before")  # the previous seam on the same cases, measured once
    baseline = f"{before['exact']}/{before['total']}" if before and not quick else ""
    rows = [
        Row(
            "instruction_seam",
            f"instruction dialect, {len(BEHAVIOURS)} chat-model behaviours x {len(kinds)} texts x {len(sizes)} round"
            " sizes x streamed/not: joined exactly (baseline: the previous seam)",
            f"{exact}/{total}",
            baseline,
            exact / before["exact"] if baseline and before else None,
            ">= 97 %",
            exact >= 0.97 * total,
        ),
        Row("instruction_seam", "cases that lose or double text", str(damaged), "", None, "0", damaged == 0),
        Row(
            "instruction_seam",
            "cases stopped early (no_progress) because the model's repeat fills the round; exact up to there",
            str(short),
            "",
            None,
            "info",
            None,
        ),
    ]
    return {
        "cases": cases,
        "table": table,
        "exact": exact,
        "total": total,
        "damaged": damaged,
        "short": short,
        "rows": [row.as_dict() for row in rows],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.instruction_seam [--quick]``."""
    return cli("instruction_seam", run, argv)


if __name__ == "__main__":
    sys.exit(main())
