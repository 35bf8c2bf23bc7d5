"""Seam fidelity on the real engine: is an answer written in rounds the same as the answer written at once?

Claim: at temperature 0 with a fixed seed, an answer produced in rounds of ``k`` tokens and joined by autocontinue
is identical to the one-shot answer under the same total limit. That holds only if every seam gives the model
exactly the context it had when it wrote the text in one go: the same tokens (the prefix must end where the
tokenizer splits the same way the model emitted it) and the same numbers (the engine must compute the same
logits for them).

Method, per model and prompt: a one-shot request with ``max_tokens=N``; then for each ``k`` the continued call
with ``max_tokens=k`` per round, once with ``heal=False`` ("naive": the echo is stripped, nothing else), then with
``heal=True`` in each dialect llama.cpp takes, streamed and not ("healed" and "healed-stream": a plain trailing
assistant message, the ``prefill`` that "auto" picks on a loopback URL; "cfm" and "cfm-stream":
``continue_final_message``), all with ``stop_on_repeat=False`` so that a model that loops goes on as it does in
one request, and once with the library's defaults ("default": healed, and a loop ends the call early). "Identical"
means the joined text equals the one-shot text when the one-shot ended by itself, or starts with it when the
one-shot was cut at ``N``. A continued call stops as soon as its text is longer than the
one-shot (a custom stop condition), so a small model that loops forever costs no more than needed.

Every failure is diagnosed automatically: the round whose reply first left the one-shot text, the prefix it was
sent, whether that prefix ends on one of the one-shot's own token boundaries and re-tokenizes to the same tokens,
the log-probability gap of the one-shot's choice at the first differing token, and whether replaying the round
without the prompt cache gives the one-shot text back.

The "budget" mode measures something else: what ``max_total_tokens=N`` buys in rounds of ``k`` with healing on
(a held word is written again each round, so its tokens are paid twice): the characters of the continued call's
text as a share of the one-shot's (``budget_chars``), one-shots that ended by themselves before N excluded.

    python -m benchmarks.fidelity                    # both models, all prompts: benchmarks/results/fidelity.json
    python -m benchmarks.fidelity --model gemma3 --prompts story_cat,zh_story --k 5,7 --modes healed,cfm
"""

from .cases import MODES, CaseResult, OneShot, Recorder, compare, make_client, run_case, run_oneshot

__all__ = ["MODES", "CaseResult", "OneShot", "Recorder", "compare", "make_client", "run_case", "run_oneshot"]
