"""What a scripted "model" writes and which faults it injects: :class:`Script` and :class:`Fault`.

Both are plain dataclasses that round-trip through JSON, because scripts are registered over HTTP
(``POST /_emulator/scripts``) so that the same control API works whether the server runs in a thread of
the test process or in a subprocess.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAULT_KINDS", "RUNAWAY_MODES", "Fault", "Script"]

#: Fault kinds understood by the server (see :class:`Fault`).
FAULT_KINDS = frozenset({"status", "delay", "drop", "malformed_sse", "truncated_json"})
#: Runaway modes understood by the server (see :class:`Script`).
RUNAWAY_MODES = frozenset({"empty", "identical", "repeat"})


@dataclass
class Fault:
    """A failure injected into one request of a script.

    kind:
        ``"status"``: answer HTTP ``status`` with an OpenAI-style JSON error (``message`` overrides the
        default text); ``retry_after`` adds ``Retry-After``/``retry-after-ms`` headers.
        ``"delay"``: sleep ``delay`` seconds, then answer normally (lets a client timeout fire).
        ``"drop"``: non-stream: abort the connection without any response; stream: send ``after_chunks``
        SSE events of the normal stream, then close the connection mid-body (no ``[DONE]``, incomplete
        chunked encoding).
        ``"malformed_sse"``: stream: after ``after_chunks`` good events send a broken JSON event and end.
        ``"truncated_json"``: non-stream: a 200 ``application/json`` response cut to half its length.
    """

    kind: str
    status: int | None = None
    retry_after: float | None = None
    after_chunks: int = 0
    delay: float = 0.0
    message: str = ""

    def __post_init__(self) -> None:
        # Fail at construction (in the test) rather than as a confusing server-side 400 later.
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if self.kind == "status" and self.status is None:
            raise ValueError("a 'status' fault needs status=<HTTP code>")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build from the JSON form produced by :func:`dataclasses.asdict`."""
        return cls(**data)


@dataclass
class Script:
    """The full answer a scripted model writes, plus how it misbehaves.

    The model answers by locating the prefix it is given inside ``target`` and emitting the next
    ``min(max_tokens, output_cap)`` tokens (see the package docstring for the full semantics).
    ``faults`` and ``finish_reasons`` are keyed by the 1-based ordinal of the request for this script.

    runaway:            "empty" | "identical" | "repeat": always "length" with "" / "and so on " / the
                        last 20 chars of P (of the target start on a first request).
    usage:              False omits ``usage`` entirely.
    output_cap:         the provider's own per-reply cap, applied on top of max_tokens.
    default_max_tokens: used when the request sets neither max_tokens nor max_completion_tokens.
    echo_chunks:        echo personas, streaming: split the echoed P over this many deltas.
    overlap:            instruction continuations: restart this many chars before the end of the partial.
    preamble:           reserved, currently ignored.
    token_delay, first_token_delay: seconds (see the package docstring for where they apply).
    context_window:     prompt tokens + requested max tokens above this -> OpenAI's 400
                        "This model's maximum context length is N tokens...".
    context_finish:     with ``context_window``: llama.cpp's behaviour instead of that 400: the reply
                        stops with "length" where prompt + output reach the window; a prompt that alone
                        fills the window gets llama.cpp's 400 "the request exceeds the available context
                        size, try increasing it".
    reasoning:          the model first "thinks" this text (``reasoning_content``; counted in completion
                        tokens and ``completion_tokens_details.reasoning_tokens``), then writes the answer;
                        the output limit covers both, so a cut can fall inside the reasoning (content "").
                        Which requests think, and how a cut reasoning resumes: ``personas.resolve``.
    tool_call:          ``{"name": ..., "arguments": "<JSON text>"}``: the reply is this tool call (content
                        null, finish "tool_calls"); an output limit below the arguments' token count cuts
                        the arguments (finish "length"). ``target`` and ``reasoning`` are then unused.
    targets:            per-choice answers for ``n`` > 1 (choice i writes ``targets[i]``, ``target`` past
                        the list's end); an ``n`` = 1 continuation continues the target its prefix is in.
    """

    target: str
    faults: dict[int, Fault] = field(default_factory=dict)
    finish_reasons: dict[int, str] = field(default_factory=dict)
    runaway: str | None = None
    usage: bool = True
    output_cap: int | None = None
    default_max_tokens: int = 4096
    echo_chunks: int = 1
    overlap: int = 0
    preamble: str = ""
    token_delay: float = 0.0
    first_token_delay: float = 0.0
    context_window: int | None = None
    context_finish: bool = False
    reasoning: str = ""
    tool_call: dict[str, str] | None = None
    targets: list[str] | None = None

    def __post_init__(self) -> None:
        if self.runaway is not None and self.runaway not in RUNAWAY_MODES:
            raise ValueError(f"unknown runaway mode {self.runaway!r}; expected one of {sorted(RUNAWAY_MODES)}")
        if self.echo_chunks < 1:
            raise ValueError("echo_chunks must be >= 1")
        if self.overlap < 0:
            raise ValueError("overlap must be >= 0")
        if self.tool_call is not None and not {"name", "arguments"} <= set(self.tool_call):
            raise ValueError("tool_call needs 'name' and 'arguments'")
        # Accept dicts (from JSON) for faults, and str keys (JSON object keys are always strings).
        self.faults = {int(n): f if isinstance(f, Fault) else Fault.from_dict(f) for n, f in self.faults.items()}
        self.finish_reasons = {int(n): str(r) for n, r in self.finish_reasons.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (int keys become strings, as JSON requires)."""
        data = dataclasses.asdict(self)
        data["faults"] = {str(n): f for n, f in data["faults"].items()}
        data["finish_reasons"] = {str(n): r for n, r in data["finish_reasons"].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Script:
        """Inverse of :meth:`to_dict`; unknown keys are rejected so typos surface."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown Script fields: {sorted(unknown)}")
        return cls(**data)
