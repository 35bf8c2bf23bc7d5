"""A local OpenAI-compatible provider emulator for autocontinue's tests and benchmarks.

    with Emulator() as emu:                       # or Emulator(subprocess=True): own process, own GIL
        model = emu.add_script(Script(target="The quick brown fox."))
        client = openai.OpenAI(base_url=emu.base_url("deepseek-beta"), api_key="x", max_retries=0)
        client.chat.completions.create(model=model, messages=[...], max_tokens=2)
        emu.requests(model); emu.stats()

Model. A :class:`Script` knows the full answer ``target``. Given the text-so-far P (how P is read depends
on the persona), if ``target`` starts with P the reply is the next ``min(max_tokens or
max_completion_tokens or default_max_tokens, output_cap)`` tokens of ``tokenize(target[len(P):])``,
``finish_reason`` "length" while tokens remain, else "stop". If P is not a prefix of target the reply is
``PREFIX_NOT_IN_TARGET`` with "stop" (after the echo, for echo personas), so client bugs fail loudly.
``runaway`` ("empty" | "identical" | "repeat") always answers "length" without progress;
``finish_reasons[n]`` overrides request #n's reason. Requests are numbered per script from 1, at arrival.

More of the model (``Script`` fields): ``reasoning`` is thought first (``reasoning_content``; the output
limit covers reasoning + answer, so a cut can fall inside it: content "", "length"). Fresh answers think;
continuations do not, except a DeepSeek-beta prefix message with ``reasoning_content`` and empty content
(the reasoning resumes there); DashScope refuses ``partial`` with ``enable_thinking: true`` and does not
think with ``enable_thinking: false``. ``tool_call`` makes the reply a tool call, its arguments cut by
the limit ("length"). ``n`` > 1: choice i writes ``targets[i]``. ``logprobs: true``: one
``logprobs.content`` entry per generated answer token. ``context_window`` (+ ``context_finish``, the
llama.cpp way: cut at the window instead of a 400). Kimi + ``partial`` + ``json_object`` answers
``KIMI_JSON_PARTIAL`` (Kimi's documented "unexpected responses"); Kimi follows the instruction pattern.

Usage. prompt_tokens = tokens of every message's text + 1 per message; completion_tokens = new tokens
(echo not counted); ``prompt_tokens_details.cached_tokens`` = longest common token prefix with any of the
script's last 64 earlier prompts. ``usage=False`` omits usage everywhere; streams carry a usage chunk only
with ``stream_options={"include_usage": True}``.

Every successful reply carries ``x-request-id: req-<ordinal>``.

Streaming. role chunk (``{"role": "assistant", "content": ""}``), then one chunk per token (echo
personas: the echo first, in ``echo_chunks`` pieces; llama.cpp glues the last piece to the first token),
a finish chunk with an empty delta, the optional usage chunk (``choices: []``), ``data: [DONE]``.
``first_token_delay`` is slept after the headers, before the role chunk; ``token_delay`` before each
content chunk. A non-stream reply sleeps ``first_token_delay + token_delay * content chunks`` in one go.

Personas (``base_url(name)``; ``first`` = no trailing assistant message):
    openai      /openai/v1        no prefill: trailing assistant -> restart; [.., assistant A, user] with A
                                  a prefix of target -> continue from A (minus ``overlap`` chars)
    claude46    /claude46/v1      trailing assistant -> 400; instruction continuation as openai
    anthropic   /anthropic/v1     trailing assistant = prefill (no echo); P ending in whitespace -> 400
    dashscope   /dashscope/compatible-mode/v1, kimi /kimi/v1: ``"partial": true`` = prefill (no echo),
                                  without it -> restart
    deepseek    /deepseek (+ /deepseek/v1): ``"prefix": true`` -> 400 (beta only)
    deepseek-beta /deepseek/beta  ``"prefix": true`` = prefill (no echo)
    mistral     /mistral/v1       ``"prefix": true`` = prefill WITH echo; trailing assistant without it -> 400
    vllm        /vllm/v1          extra_body continue_final_message + add_generation_prompt=false = prefill;
                                  cfm alone or both true -> 400; no flag -> restart
    sglang      /sglang/v1        continue_final_message = prefill; without -> restart
    llamacpp    /llamacpp/v1      trailing assistant = prefill WITH echo (flags optional; cfm+agp true -> 400)
    openrouter  /openrouter/v1, ollama /ollama/v1: trailing assistant = prefill (no echo)
    chat-<behaviour> /chat-<behaviour>/v1: like openai, and the reply to the instruction pattern is written the
                                  way a chat model with that behaviour writes it (behaviours.py: exact, word,
                                  words, line, tail60, preamble, preamble-repeat, dots, ellipsis, space-added,
                                  newline-added, space-dropped, fence, rewrite, restart)
``emu.requests(model)[i]["mode"]`` records the decision: "first", "restart", "prefill", "instruction".

Faults (:class:`Fault`, keyed by request ordinal): "status" (JSON error; Retry-After + retry-after-ms when
``retry_after``), "delay" (sleep before answering), "drop" (non-stream: reset without response; stream:
``after_chunks`` events then the connection closes mid-body), "malformed_sse" (stream: ``after_chunks``
events then a broken JSON event), "truncated_json" (non-stream: 200 with half the JSON body).
Stream-only kinds are ignored for non-stream requests and vice versa.
"""

from .app import PREFIX_NOT_IN_TARGET, EmulatorApp
from .personas import KIMI_JSON_PARTIAL, PERSONA_PATHS
from .script import Fault, Script
from .server import Emulator
from .tokenizer import tokenize

__all__ = [
    "KIMI_JSON_PARTIAL",
    "PERSONA_PATHS",
    "PREFIX_NOT_IN_TARGET",
    "Emulator",
    "EmulatorApp",
    "Fault",
    "Script",
    "tokenize",
]
