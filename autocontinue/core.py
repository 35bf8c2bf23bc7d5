"""The continuation state machine: every decision of a continued call, and no I/O.

:class:`Continuation` is fed what the network returned and answers with what to do next, in the manner of
tenacity's ``BaseRetrying.iter`` and h11's ``Connection``:

- :meth:`Continuation.start` → the first :class:`DoRequest`;
- a whole reply → :meth:`Continuation.on_response`; a streamed reply → :meth:`Continuation.on_chunk` per chunk
  (it returns the chunk for the reader, if any, or the next action when the round must end early), then
  :meth:`Continuation.on_stream_end`;
- a failed request → :meth:`Continuation.on_error`; after a :class:`DoSleep`, :meth:`Continuation.resume`.

Each returns the next action: :class:`DoRequest` (send this), :class:`DoSleep` (wait, then resume), :class:`Done`
(here is the result) or :class:`Fail` (raise this); while streaming, an action also carries the chunks to hand to
the reader first (:attr:`Action.emit`), in the manner of openai-python's ``ChatCompletionStreamState``. The drivers
in ``autocontinue.drivers`` only execute actions, so the sync, async and streaming calls share every rule written
here.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import tenacity
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta, ChoiceLogprobs
from openai.types.completion_usage import CompletionUsage

from . import _limits, _log
from ._estimate import added_prompt_tokens
from ._progress import Progress, repeat_removed
from ._shape import completion_problem, finish_problem, usage_problem
from ._shares import Share
from .budget import BudgetState, Price, PriceTable, StopCondition
from .dialects import Dialect, DialectChoice, Instruction, Partial, resolve_dialect
from .errors import (
    ConfigurationError,
    ContinuationFailed,
    IncompleteStream,
    InvalidJSONError,
    MalformedResponse,
    TruncatedToolCallError,
)
from .jsoncheck import check_json
from .request import CallRequest
from .result import build_completion, reuse_completion
from .retry import RetryTracker
from .stitch import (
    HOLD_WINDOW,
    MAX_HOLD,
    RESTART_PROBE,
    EchoMode,
    PlainSeam,
    Seam,
    SeamPlan,
    hold_back_point,
    word_ends_before,
)
from .tokens import TokenCounter, default_counter
from .trace import ContinuationTrace, RoundTrace

__all__ = [
    "Action",
    "Continuation",
    "DoRequest",
    "DoSleep",
    "Done",
    "Fail",
    "Settings",
]

#: finish reasons that mean "the output limit was hit" (OpenAI-compatible, Anthropic-compatible, Gemini)
LENGTH_STOPS = frozenset({"length", "max_tokens", "MAX_TOKENS"})
#: finish reasons that mean "the context window is full": continuing cannot help
CONTEXT_STOPS = frozenset({"model_length", "model_context_window_exceeded"})
#: finish reasons after which a round's text is not simply the end of the answer
_NOT_AN_ENDING = LENGTH_STOPS | CONTEXT_STOPS
#: the shortest answer whose opening is used to recognise a restart
MIN_RESTART_PROBE = 12


@dataclass(frozen=True)
class Settings:
    """The options of a continued call (built by ``wrap()`` / ``create()`` from their keyword arguments)."""

    stop: StopCondition
    dialect: str | Dialect = "auto"
    retry: tenacity.BaseRetrying | None = None
    prices: PriceTable = field(default_factory=PriceTable)
    heal: bool = True
    counter: TokenCounter = field(default_factory=default_counter)
    log_text: bool = False
    #: retry a round cut inside the reasoning phase once with a larger limit (where it cannot be continued)
    reasoning_retry: bool = False
    #: end the call (``no_progress``) when a round repeats itself; off, only a round that adds nothing ends it
    stop_on_repeat: bool = True
    #: the most tokens a round may ask for when its limit is raised above the caller's (see ``_limits``)
    max_round_tokens: int | None = None


@dataclass(frozen=True)
class Action:
    """What to do next. ``emit``: while streaming, the chunks to hand to the reader before doing it (text released
    when a round ended; after :class:`Done`, the rest of the answer, its finish_reason and usage; before
    :class:`Fail`, the text kept in the error's partial that the reader has not seen yet)."""

    emit: tuple[ChatCompletionChunk, ...] = field(default=(), kw_only=True)


@dataclass(frozen=True)
class DoRequest(Action):
    """Send ``kwargs`` to ``chat.completions.create`` (to ``base_url`` when set)."""

    kwargs: dict[str, Any]
    base_url: str | None = None


@dataclass(frozen=True)
class DoSleep(Action):
    """Wait ``seconds``, then call :meth:`Continuation.resume`."""

    seconds: float


@dataclass(frozen=True)
class Done(Action):
    """The call is complete."""

    completion: ChatCompletion


@dataclass(frozen=True)
class Fail(Action):
    """The call failed; raise ``error``."""

    error: BaseException


@dataclass(slots=True)
class _Round:
    """The round in flight."""

    index: int
    sent: str  # the prefix sent ("" for an ordinary first request)
    held: str  # text after ``sent`` that was held back for the model to regenerate
    seam: Seam
    kwargs: dict[str, Any]
    started: float
    pieces: list[str] = field(default_factory=list)
    length: int = 0  # characters in pieces
    unreleased: str = ""  # the end of pieces not yet handed to a stream
    skip: int = 0  # leading characters of this round's text that were already released
    raw_chars: int = 0  # characters of reply text received
    finish_reason: str | None = None
    usage: CompletionUsage | None = None
    message: Any = None
    tail: str = ""  # the end of sent + pieces, for hold-back decisions without joining
    content_chunks: int = 0  # pieces of reply text received (streamed: chunks that carried text)
    raw_head: str = ""  # the first characters of the raw reply, to recognise the same reply twice
    tool_calls: list[Any] = field(default_factory=list)  # streamed tool-call deltas
    released_at_start: int = 0
    reasoning: list[str] = field(default_factory=list)  # reasoning text of this round
    # Token logprobs wait here until the text they cover is released, so that those of held-back text (which
    # the model writes again) are dropped with it and a stream carries each entry with its own text.
    logprob_queue: deque[Any] = field(default_factory=deque)
    logprob_credit: int = 0  # released characters not yet matched to queued entries
    fresh_logprobs: list[Any] = field(default_factory=list)  # entries released by the last chunk
    overhead: int = 0  # prompt tokens the dialect added around the prefix (counted only with a price)


class Continuation:
    """One continued chat completion: feed it responses, it tells you what to do next.

    ``kwargs`` are the keyword arguments of ``chat.completions.create``; ``base_url`` is the client's (it decides
    the dialect under "auto" and where DeepSeek's continuation rounds go). ``clock`` is only read, to time rounds.
    """

    # State that starts out the same in every call is declared here rather than assigned in __init__: most calls
    # are one round, and a call should cost next to nothing beyond its request.
    _floor = 0  # length of the prefix sent last round: a heal never reaches back past it
    _first: ChatCompletion | ChatCompletionChunk | None = None
    _round: _Round | None = None
    _completion_tokens = 0
    _echo_learned: EchoMode | None = None
    _stalls = 0  # rounds in a row that could only regenerate held-back text
    _round_index = 0
    _stream_id: str | None = None
    _role_sent = False
    _round_limit: int | None = None
    _flush = ""  # text released when a round ended, not yet handed to the stream
    _limit_override: int | None = None  # a larger limit for a retried round
    _enlarged = False  # a round is retried with a larger limit at most once per call
    _progress: Progress | None = None  # made when a round is cut, as only then can a call stall or loop
    _share: Share | None = None  # n > 1: how this choice shares the call's budgets
    _malformed: MalformedResponse | None = None  # a streamed chunk of the wrong shape ended the round
    _overhead: tuple[int, int] = (-1, 0)  # (text length, tokens) the dialect adds to the next prompt
    _first_reply = ""  # round 1's reply, kept while a fallback dialect waits: evidence against a restart
    _stop_reading = False  # a streamed round must end before its reply does (a budget is reached)

    def __init__(
        self,
        kwargs: Mapping[str, Any],
        settings: Settings,
        *,
        base_url: str,
        clock: Callable[[], float] = time.monotonic,
        seed: ChatCompletion | None = None,
        share: Share | None = None,
    ) -> None:
        self._call = call = CallRequest.parse(kwargs)
        # n > 1: the first request asks for every choice; this object continues choice 0, and one seeded object
        # per other choice (see take_siblings) continues that choice from the same first reply.
        self._seed = seed
        self._share = share
        self._siblings: list[ChatCompletion] = []
        self._settings = settings
        self._base_url = base_url
        self._clock = clock
        choice: DialectChoice = resolve_dialect(settings.dialect, base_url)
        self._dialect = choice.dialect
        self._fallback = choice.fallback
        needs_price = settings.stop.needs_price
        self._price: Price | None = (
            settings.prices.require(call.model) if needs_price else settings.prices.lookup(call.model)
        )
        self._retry = RetryTracker(settings.retry)
        self.trace = ContinuationTrace(dialect=self._dialect.name)
        # The text so far (the caller's own prefix, if any, included) and what of it was handed to a stream.
        self._text = call.prefix
        self._released = len(call.prefix)
        self._last_prompt_tokens = settings.counter.count_messages(call.messages) if self._price else 0
        # Streaming: ask upstream for usage (budgets need it) unless the server refuses the option.
        self._stream = self._upstream_usage = call.stream
        self._flush_logprobs: list[Any] = []
        self._last_queue: deque[Any] = deque()  # logprobs of the last round's unreleased text
        # Reasoning text over all rounds, kept apart from the answer; logprobs in order.
        self._reasoning: list[str] = []
        self._logprobs: list[Any] = []
        if call.json_mode and isinstance(self._dialect, Partial) and _is_kimi(base_url):
            # Kimi: "Do not mix Partial Mode with response_format=json_object".
            self._dialect = Instruction()
            self.trace.dialect = self._dialect.name
        if needs_price:
            left = self._tokens_left(self._budget_state())
            if left is not None and left <= 0:
                raise ConfigurationError(
                    f"the cost budget does not cover the prompt of this call (about {self._last_prompt_tokens} "
                    f"tokens of {call.model!r})"
                )

    # ----------------------------------------------------------------------------------------------------------
    # Actions in

    def start(self) -> Action:
        """The first request (for a seeded object: the decision on the reply it was seeded with)."""
        action = self._begin_round()
        if self._seed is not None:
            return self.on_response(self._seed)
        return action

    def take_siblings(self) -> list[Continuation]:
        """After the first reply of an ``n > 1`` call: one object per further choice, to be run like this one."""
        if not self._siblings:
            return []
        seeds, self._siblings = self._siblings, []
        kwargs = {**self._call.kwargs, "n": None}
        return [
            Continuation(
                kwargs, self._settings, base_url=self._base_url, clock=self._clock, seed=seed, share=self._share
            )
            for seed in seeds
        ]

    def resume(self) -> Action:
        """After a :class:`DoSleep`: send the round again, continuing from the text so far."""
        return self._begin_round()

    def on_response(self, completion: ChatCompletion) -> Action:
        """A whole (non-streamed) reply arrived."""
        current = self._current()
        problem = completion_problem(completion)
        if problem is not None:
            return self._on_error(MalformedResponse(f"the provider's reply is malformed: {problem}"))
        if self._first is None:
            self._first = completion
        if len(completion.choices) > 1:
            completion = self._split_choices(completion)
        choice = completion.choices[0]
        content = choice.message.content or ""
        current.message = choice.message
        current.usage = completion.usage
        current.finish_reason = choice.finish_reason
        reasoning = _reasoning_of(choice.message)
        if reasoning:
            current.reasoning.append(reasoning)
        if choice.logprobs is not None and choice.logprobs.content:
            current.logprob_queue.extend(choice.logprobs.content)
        finish = choice.finish_reason
        if current.seam.__class__ is PlainSeam and finish is not None and finish not in _NOT_AN_ENDING:
            # An ordinary first request that ended by itself (most calls): nothing to join and nothing to hold
            # back, so the reply is committed as it is - what _end_round would conclude, without its seam work.
            if content:
                current.pieces.append(content)
                current.length = len(content)
            self._commit(current, content)
            tool_calls = list(getattr(choice.message, "tool_calls", None) or ())
            return self._done(_cause_of(finish), finish_reason=finish, tool_calls=tool_calls)
        self._feed(current, content)
        return self._end_round()

    def _split_choices(self, completion: ChatCompletion) -> ChatCompletion:
        """Keep choice 0 here and the others for sibling objects; the reported usage is shared between them
        (prompt to choice 0, completion tokens in proportion to each choice's text) so that sums stay exact."""
        choices = sorted(completion.choices, key=lambda c: c.index)
        usage = completion.usage
        counts = [self._settings.counter.count(c.message.content or "") for c in choices]
        shares = _split_tokens(usage.completion_tokens if usage is not None else 0, counts)
        singles = []
        for i, choice in enumerate(choices):
            part = None
            if usage is not None:
                prompt = usage.prompt_tokens if i == 0 else 0
                part = CompletionUsage(
                    prompt_tokens=prompt,
                    completion_tokens=shares[i],
                    total_tokens=prompt + shares[i],
                    prompt_tokens_details=usage.prompt_tokens_details if i == 0 else None,
                )
            singles.append(
                completion.model_copy(update={"choices": [choice.model_copy(update={"index": 0})], "usage": part})
            )
        self._siblings = singles[1:]
        counter = self._settings.counter
        if usage is not None:
            first_tokens, prompt, cached = usage.completion_tokens, usage.prompt_tokens, _cached(usage)
        else:
            first_tokens, prompt, cached = sum(counts), counter.count_messages(self._call.messages), 0
        cost = self._price.cost(prompt, first_tokens, cached) if self._price else 0.0
        self._share = Share(choices=len(choices), first_tokens=first_tokens, first_cost=cost)
        return singles[0]

    def on_chunk(self, chunk: ChatCompletionChunk) -> ChatCompletionChunk | Action | None:
        """One streamed chunk arrived. Returns the chunk the reader should see now (or None), and reading goes on;
        or, when the round must end before its reply does (a budget is reached, a chunk of the wrong shape), the
        next :class:`Action`: close the upstream response, hand on the action's ``emit`` and do it.
        """
        # This runs for every chunk of every stream: fields are read from the models' dicts, and the common case
        # (a piece of text and nothing else) takes no detour. A chunk of the wrong shape (the SDK does not validate
        # them) fails a lookup or a check below: the round then ends as a failed one (see _reject), its text kept.
        current = self._round or self._current()
        try:
            # The chunk object is ours alone (fresh from the SDK's parser): it is reused rather than copied, and
            # written through its dicts, as pydantic's __setattr__ would cost more than the rest of its handling.
            head = chunk.__dict__
            choices = head["choices"]
            usage = head["usage"]
            if self._first is None:
                if not isinstance(chunk, ChatCompletionChunk):
                    raise TypeError("not a chunk")
                self._first = chunk
                self._stream_id = chunk.id or "chatcmpl-autocontinue"
            if usage is not None:
                problem = usage_problem(usage)
                if problem is not None:
                    raise TypeError(problem)
                current.usage = usage
                head["usage"] = None
            head["id"] = self._stream_id
            if not choices:
                if choices is None or choices == []:
                    return None
                raise TypeError("choices is not a list")
            choice = choices[0]
            top = choice.__dict__
            delta = top["delta"]
            fields = delta.__dict__
            given = self._on_choice(current, chunk, top, delta, fields)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as error:
            self._reject(current, error)
            given = None
        if not self._stop_reading:
            return given
        action = self.on_stream_end()
        return replace(action, emit=(given, *action.emit)) if given is not None else action

    def _reject(self, current: _Round, error: BaseException) -> None:
        """A streamed chunk of the wrong shape: the round stops here, as if its stream had broken."""
        detail = str(error) if isinstance(error, TypeError) and str(error).startswith(("a ", "usage", "the ")) else ""
        self._malformed = MalformedResponse(
            "the provider sent a malformed stream chunk" + (f": {detail}" if detail else f" ({type(error).__name__})")
        )
        current.finish_reason = None
        self._stop_reading = True

    def _on_choice(
        self, current: _Round, chunk: ChatCompletionChunk, top: dict[str, Any], delta: Any, fields: dict[str, Any]
    ) -> ChatCompletionChunk | None:
        if top["finish_reason"] is not None:
            finish = top["finish_reason"]
            if finish.__class__ is not str:
                raise TypeError(finish_problem(finish))
            current.finish_reason = finish
            top["finish_reason"] = None  # interim finish reasons are swallowed; the last chunk carries the final one
        if fields.get("tool_calls"):
            current.tool_calls.extend(fields["tool_calls"])
        if delta.__pydantic_extra__ or _DELTA_HAS_REASONING:  # else there is nowhere for reasoning to be
            reasoning = _reasoning_of(delta)
            if reasoning:
                current.reasoning.append(reasoning)
        if top["logprobs"] is not None:
            current.logprob_queue.extend(top["logprobs"].content or ())
            top["logprobs"] = None
        content = fields.get("content")
        if content.__class__ is not str and content is not None:
            raise TypeError(f"a delta's content is a {type(content).__name__}, not text")
        limit = self._round_limit
        if (
            content
            and limit is not None
            and current.content_chunks - current.seam.echo_pieces >= max(1, limit)
            and (current.seam.echo_pieces < current.content_chunks or current.raw_chars >= len(current.sent))
        ):
            # A server that ignores the request's limit: every content chunk carries at least one token, so this
            # one would go past the budget. It is not fed (nor delivered): the round ends before it.
            current.finish_reason = "length"
            self._stop_reading = True
            return None
        released = self._feed(current, content) if content else ""
        if current.fresh_logprobs:
            top["logprobs"] = ChoiceLogprobs.model_construct(content=current.fresh_logprobs, refusal=None)
            current.fresh_logprobs = []
        fields["content"] = released or None
        if self._role_sent:
            fields["role"] = None
        elif fields.get("role") is not None or released:
            fields["role"] = "assistant"
            self._role_sent = True
        keep = released or fields["role"] or top["logprobs"] is not None or _has_payload(delta)
        # The request's own limit already stops the server at the budget. Closing early is for servers that ignore
        # it: every content chunk carries at least one token, so more chunks than the limit prove an overrun
        # (a tokenizer-based estimate would not: ours and the server's differ).
        if self._round_limit is not None and current.content_chunks - current.seam.echo_pieces > self._round_limit:
            current.finish_reason = "length"
            self._stop_reading = True
        return chunk if keep else None

    def on_stream_end(self) -> Action:
        """The upstream stream ended."""
        current = self._current()
        if self._malformed is not None:
            error, self._malformed = self._malformed, None
            return self.on_error(error)
        if current.finish_reason is None:
            return self.on_error(IncompleteStream("the stream ended without a finish_reason"))
        return self._emitting(self._end_round())

    def _emitting(self, action: Action) -> Action:
        """``action`` with the chunks a stream's reader is to see before it is done (see :attr:`Action.emit`)."""
        if not self._stream:
            return action
        chunks = self._take_released()
        if isinstance(action, Done):
            chunks += self._closing_chunks(action.completion)
        elif isinstance(action, Fail):
            chunks += self._failing_chunks()
        return replace(action, emit=tuple(chunks)) if chunks else action

    def _take_released(self) -> list[ChatCompletionChunk]:
        """Text decided when a round ended (the seam's last held characters), as a chunk for the stream."""
        if not self._flush:
            return []
        text, self._flush = self._flush, ""
        chunk = self._make_chunk({"content": text}, None)
        if self._flush_logprobs:
            chunk.choices[0].logprobs = ChoiceLogprobs.model_construct(content=self._flush_logprobs, refusal=None)
            self._flush_logprobs = []
        return [chunk]

    def _failing_chunks(self) -> list[ChatCompletionChunk]:
        """Before a :class:`Fail` is raised to a stream's reader: the text kept in the error's partial that the
        stream had not delivered yet (held back at the seam), so the reader has seen exactly the partial."""
        self._flush = ""
        rest = self._text[self._released :]
        self._released = len(self._text)
        return [self._make_chunk({"content": rest}, None)] if rest else []

    def _closing_chunks(self, completion: ChatCompletion) -> list[ChatCompletionChunk]:
        """After :class:`Done` while streaming: the rest of the text, the final finish_reason, and the usage."""
        self._flush = ""
        rest = self._text[self._released :]
        self._released = len(self._text)
        chunks = [self._make_chunk({"content": rest} if rest else {}, completion.choices[0].finish_reason)]
        tail_logprobs = self._flush_logprobs + list(self._last_queue)
        if tail_logprobs:
            chunks[0].choices[0].logprobs = ChoiceLogprobs.model_construct(content=tail_logprobs, refusal=None)
        options = self._call.stream_options or {}
        if options.get("include_usage") and completion.usage is not None:
            usage_chunk = self._make_chunk({}, None)
            usage_chunk.choices = []
            usage_chunk.usage = completion.usage
            chunks.append(usage_chunk)
        return chunks

    def _make_chunk(self, delta: dict[str, Any], finish_reason: str | None) -> ChatCompletionChunk:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        first = self._first
        return ChatCompletionChunk.model_construct(
            id=self._stream_id or (first.id if first is not None else "chatcmpl-autocontinue"),
            object="chat.completion.chunk",
            created=first.created if first is not None else int(time.time()),
            model=first.model if first is not None else self._call.model,
            system_fingerprint=first.system_fingerprint if first is not None else None,
            choices=[
                Choice.model_construct(
                    index=0, delta=ChoiceDelta.model_construct(**delta), finish_reason=finish_reason, logprobs=None
                )
            ],
            usage=None,
        )

    def on_error(self, error: BaseException) -> Action:
        """The request (or the stream of its reply) failed with ``error``."""
        return self._emitting(self._on_error(error))

    def _on_error(self, error: BaseException) -> Action:
        current = self._round
        continuing = current is not None and (current.sent != "" or self._call.has_prefix)
        if continuing and self._fallback is not None and self._dialect.refuses(error):
            self._round = None
            self._switch_dialect(f"refused: {type(error).__name__}")
            return self._begin_round()
        if current is not None and self._upstream_usage and _mentions(error, "stream_options"):
            # A server that does not know stream_options: ask again without it and count tokens ourselves.
            self._round = None
            self._upstream_usage = False
            return self._begin_round()
        if current is not None:
            self._keep_partial(current)
        if self.trace.rounds and _is_context_overflow(error):
            # The prompt plus the text so far no longer fits: continuing cannot help, and the text is kept.
            self._round = None
            return self._done("context_window", finish_reason="length")
        seconds = self._retry.decide(error)
        if seconds is None:
            return self._give_up(error)
        _log.emit(
            "info",
            "autocontinue.retry",
            round=self._round_index,
            attempt=self._retry.attempts,
            wait_s=round(seconds, 3),
            error=type(error).__name__,
            status=getattr(error, "status_code", None),
        )
        return DoSleep(seconds)

    # ----------------------------------------------------------------------------------------------------------
    # Rounds

    def _begin_round(self) -> Action:
        self._round_index = len(self.trace.rounds) + 1
        text = self._text
        call = self._call
        reasoning = "".join(self._reasoning) if self._reasoning else ""
        seam: Seam
        pieces: list[str] = []
        overhead = 0
        if text == "" and not call.has_prefix and not reasoning:
            sent, held = "", ""
            messages: list[Any] = list(call.messages)
            kwargs = dict(call.kwargs)
            base_url = None
            seam = PlainSeam(pieces)  # the round's pieces are what the model said
        else:
            heal = self._settings.heal and len(text) > len(call.prefix)
            offset = max(0, len(text) - 2 * HOLD_WINDOW)
            while offset > 0 and text[offset:].isspace():
                offset = max(0, offset - 8 * HOLD_WINDOW)  # a long whitespace run: look back to where it starts
            cut = hold_back_point(
                text[offset:],
                offset,
                floor=max(self._floor, len(call.prefix)) if heal else 0,
                heal=heal,
                strip_whitespace=self._dialect.strips_trailing_whitespace,
            )
            if self._released > len(call.prefix):
                cut = max(cut, self._released)  # never take back what a stream has already delivered
            sent, held = text[:cut], text[cut:]
            messages = self._dialect.messages(call.messages, sent, call.prefix_template, reasoning)
            overhead = self._dialect_overhead(messages[len(call.messages) :], sent) if self._price else 0
            kwargs = dict(call.kwargs)
            kwargs.pop("n", None)
            extra = self._dialect.extra_body(call.kwargs.get("extra_body"), reasoning)
            if extra is not None:
                kwargs["extra_body"] = extra
            base_url = self._dialect.base_url(self._base_url)
            seam = Seam(
                SeamPlan(
                    sent=sent,
                    held=held,
                    echo=self._echo_mode(),
                    remove_overlap=self._dialect.repeats_tail,
                    restart_probe=self._restart_probe(),
                    answer_start=len(call.prefix),
                    restart_reply=self._first_reply if self._call.kwargs.get("temperature") == 0 else "",
                )
            )
        kwargs["messages"] = messages
        if self._stream:
            kwargs["stream"] = True
            if self._upstream_usage:
                kwargs["stream_options"] = {**(self._call.stream_options or {}), "include_usage": True}
            elif self._call.stream_options:
                kwargs["stream_options"] = dict(self._call.stream_options)
        self._clamp(kwargs)
        self._stop_reading = False
        self._round = _Round(
            index=self._round_index,
            sent=sent,
            held=held,
            seam=seam,
            pieces=pieces,
            kwargs=kwargs,
            started=self._clock(),
            tail=sent[-2 * HOLD_WINDOW :],
            unreleased=sent[self._released :] if self._released < len(sent) else "",
            skip=max(0, self._released - len(sent)),
            released_at_start=self._released,
            logprob_queue=self._carry_logprobs(len(sent)) if self._last_queue else deque(),
            overhead=overhead,
        )
        return DoRequest(kwargs, base_url)

    def _echo_mode(self) -> EchoMode:
        """The dialect's echo behaviour; where it is only "maybe", what this provider was seen to do."""
        return self._dialect.echo if self._dialect.echo != "maybe" else (self._echo_learned or "maybe")

    def _learn_echo(self, current: _Round) -> None:
        # A prefix this long that the reply begins with is an echo, and one the reply does not begin with proves
        # there is none; either way later rounds (whose short prefixes could be ambiguous) know.
        if self._echo_learned is None and self._dialect.echo == "maybe" and len(current.sent) >= ECHO_EVIDENCE:
            self._echo_learned = "always" if "echo_stripped" in current.seam.actions else "never"

    def _restart_probe(self) -> str:
        if self._fallback is None:
            return ""
        answer = self._text[len(self._call.prefix) : len(self._call.prefix) + 4 * RESTART_PROBE].lstrip()
        return answer[:RESTART_PROBE] if len(answer) >= MIN_RESTART_PROBE else ""

    def _clamp(self, kwargs: dict[str, Any]) -> None:
        """Keep the caller's per-round limit (or a retried round's larger one), lowered to what budgets allow."""
        left = self._tokens_left(self._budget_state())
        if left is not None and self._first is None and self._seed is None and self._call.kwargs.get("n", 1) > 1:
            # The first request of an n > 1 call: every choice may write the limit, so each gets its share.
            left //= self._call.kwargs["n"]
        self._round_limit = left
        override = self._limit_override
        if left is None and override is None:
            return  # the caller's own limit (or none) stands
        self._limit_override = None
        names = [n for n in ("max_tokens", "max_completion_tokens") if kwargs.get(n) is not None]
        for name in names or [self._dialect.limit_parameter]:
            kwargs[name] = _limits.capped(override if override is not None else kwargs.get(name), left=left)

    def _round_limit_of(self, kwargs: Mapping[str, Any]) -> int | None:
        limits = [kwargs[n] for n in ("max_tokens", "max_completion_tokens") if kwargs.get(n) is not None]
        return min(limits) if limits else None

    def _larger_limit(self, current: _Round) -> int | None:
        """A doubled limit for retrying ``current`` once, if the budgets leave room for more than it had."""
        if self._enlarged:
            return None
        had = self._round_limit_of(current.kwargs)
        if had is None:
            return None
        # The round just spent counts (it is paid for) before deciding whether another one fits.
        usage, _ = self._usage_of(current)
        cost = self._price.cost(usage.prompt_tokens, usage.completion_tokens, _cached(usage)) if self._price else 0.0
        after = self._budget_state(rounds=1, tokens=usage.completion_tokens, cost=cost)
        if self._settings.stop(after) is not None:
            return None
        return _limits.doubled(had, left=self._tokens_left(after), cap=self._settings.max_round_tokens)

    def _feed(self, current: _Round, delta: str) -> str:
        """Pass reply text through the seam; return the text now safe to hand to a stream."""
        current.content_chunks += 1
        if len(current.raw_head) < RAW_HEAD:
            current.raw_head += delta[: RAW_HEAD - len(current.raw_head)]
        current.raw_chars += len(delta)
        seam = current.seam
        return self._append(current, delta if seam.plain else seam.feed(delta))

    def _append(self, current: _Round, text: str) -> str:
        """Add decided text to the round; return the part of it (and of earlier text) that can no longer change:
        all but what a cut here would hold back for the model to regenerate."""
        if not text:
            return ""
        current.pieces.append(text)
        current.length += len(text)
        if current.skip:
            # The start of this round's text re-creates held text that is not to be streamed (the caller's own).
            skipped = text[: current.skip]
            current.skip -= len(skipped)
            text = text[len(skipped) :]
        tail = current.tail + text
        if len(tail) > 4 * HOLD_WINDOW:  # trimmed now and then, not on every chunk
            tail = tail[-2 * HOLD_WINDOW :]
        current.tail = tail
        # The floor this round was planned with, not its prefix: a round that only wrote its held text again may be
        # followed by the same cut with a larger limit, and must not have released that text.
        floor, total = max(self._floor, len(self._call.prefix)), len(current.sent) + current.length
        size = len(text)
        if (
            size <= MAX_HOLD
            and total - size > floor
            and len(tail) > size
            and self._settings.heal
            and word_ends_before(tail[-size - MAX_HOLD - 2 : -size], text)
        ):
            # Most streamed tokens: the cut is just before this one, so all that was unreleased is released.
            out, current.unreleased = current.unreleased, text
            if not out:
                return ""
            self._released = total - size
        else:
            unreleased = current.unreleased + text
            end = hold_back_point(
                tail,
                total - len(tail),
                floor=floor,
                heal=self._settings.heal,
                strip_whitespace=self._dialect.strips_trailing_whitespace,
            )
            released = self._released
            if end <= released:
                current.unreleased = unreleased
                return ""
            # Unreleased text is only ever the last few characters of the round: this never touches the whole
            # answer.
            count = end - released
            out, current.unreleased = unreleased[:count], unreleased[count:]
            self._released = end
        if current.logprob_queue:
            self._take_logprobs(current, len(out))
        return out

    def _carry_logprobs(self, sent_length: int) -> deque[Any]:
        """Entries of the last round that cover text being sent but not yet released; the rest covered held-back
        text, which the model writes again, so they are dropped."""
        queue, self._last_queue = self._last_queue, deque()
        room = sent_length - self._released
        carried: deque[Any] = deque()
        while queue and room > 0 and len(queue[0].token) <= room:
            entry = queue.popleft()
            room -= len(entry.token)
            carried.append(entry)
        return carried

    def _take_logprobs(self, current: _Round, chars: int) -> None:
        current.logprob_credit += chars
        queue = current.logprob_queue
        while queue and len(queue[0].token) <= current.logprob_credit:
            entry = queue.popleft()
            current.logprob_credit -= len(entry.token)
            self._logprobs.append(entry)
            current.fresh_logprobs.append(entry)

    def _end_round(self) -> Action:
        current = self._current()
        self._flush += self._append(current, current.seam.finish())
        self._flush_logprobs += current.fresh_logprobs
        current.fresh_logprobs = []
        if current.seam.restarted:
            return self._restarted(current)
        finish = current.finish_reason
        cut = finish in LENGTH_STOPS
        tool_calls = list(getattr(current.message, "tool_calls", None) or []) or _merge_tool_deltas(current.tool_calls)
        if cut and tool_calls:
            return self._cut_tool_call(current, tool_calls)
        in_reasoning = cut and current.raw_chars == 0 and bool(current.reasoning)
        if in_reasoning and not self._dialect.resumes_reasoning:
            return self._cut_reasoning(current)
        new_text = "".join(current.pieces)
        before, floor = len(self._text), self._floor
        self._commit(current, new_text)
        if not cut:
            return self._done(_cause_of(finish), finish_reason=_final_finish(finish), tool_calls=tool_calls)
        state = self._budget_state()
        cause = self._settings.stop(state)
        if cause is None and self._tokens_left(state) == 0:
            cause = "token_budget"
        if cause is not None:
            return self._done(cause, finish_reason="length")
        progress = self._progress = self._progress or Progress(self._settings.stop_on_repeat)
        stalled = len(self._text) <= before and not in_reasoning
        verdict = progress.judge(
            stalled=stalled,
            # what the model wrote beyond an echo of the prefix (a restart or a repeat the seam removed counts)
            said=current.raw_chars - (len(current.sent) if "echo_stripped" in current.seam.actions else 0),
            raw=(current.raw_chars, current.raw_head),
            held=bool(current.held),
            text=self._text,
            repeated=repeat_removed(current.seam.actions)
            and _limits.filled(current.usage, self._round_limit_of(current.kwargs)),
        )
        if verdict in ("grow", "widen") and self._after_stall(current, wider=verdict == "widen"):
            # The whole round went into regenerating the text held back from the prefix (a healed word, whitespace
            # a provider refuses; tiny rounds): the next one can do better (see _after_stall) instead of stopping.
            # A repeat that filled the round: the same cut again with room, the held text still the reader's evidence.
            self._floor = floor if verdict == "widen" else self._floor
            return self._begin_round()
        if not stalled:
            self._stalls = 0
        # A restart on a host that ignores the prefix reproduces the reply of round 1 exactly (and looks like an
        # echo of the text so far): that, or a round that adds nothing, calls for the fallback dialect; a model
        # repeating itself in new words does not.
        if (stalled or progress.same_reply) and self._fallback is not None and current.sent:
            self._switch_dialect("no progress")
            self._progress = None
            return self._begin_round()
        if verdict != "go":
            return self._done("no_progress", finish_reason="length")
        return self._begin_round()

    def _after_stall(self, current: _Round, *, wider: bool = False) -> bool:
        """Whether a round that only regenerated held-back text (or, ``wider``, only repeated known text) is
        followed by one that can add to the answer.

        A held word: the next round holds back less at the same limit, as a heal never reaches back past the
        prefix this round sent. Held whitespace the dialect may not send, or a repeat that filled the round: only a
        larger limit helps (see _limits).
        """
        if self._stalls >= _limits.MAX_STALLS:
            return False
        if wider or (current.held.isspace() and self._dialect.strips_trailing_whitespace):
            left = self._tokens_left(self._budget_state())
            larger = _limits.doubled(
                self._round_limit_of(current.kwargs), left=left, cap=self._settings.max_round_tokens
            )
            if larger is None:
                return False
            self._limit_override = larger
        self._stalls += 1
        return True

    def _commit(self, current: _Round, new_text: str, *, extra_seam: tuple[str, ...] = ()) -> None:
        """Make the round's text (and reasoning and logprobs) part of the answer, and record the round."""
        if current.sent:
            self._learn_echo(current)
        before = len(self._text)
        self._text = current.sent + new_text
        self._floor = len(current.sent)
        if current.index == 1 and self._fallback is not None:
            self._first_reply = new_text
        if current.reasoning:
            self._reasoning.extend(current.reasoning)
        self._last_queue = current.logprob_queue
        self._record(current, chars_added=len(self._text) - before, extra_seam=extra_seam)
        self._round = None
        self._retry.reset()

    def _discard(self, current: _Round, action: str) -> None:
        """Record a round whose output is not kept (it is paid for, so its usage counts)."""
        self._released = current.released_at_start
        self._record(current, chars_added=0, extra_seam=(action,))
        self._round = None
        self._retry.reset()

    def _cut_tool_call(self, current: _Round, tool_calls: list[Any]) -> Action:
        """A tool call cut by the limit is never continued as text: retry once with room, else fail closed."""
        # While streaming, the call's deltas have already reached the caller: a second attempt would garble them.
        larger = None if self._stream else self._larger_limit(current)
        if larger is not None:
            self._discard(current, "tool_call_retry")
            self._enlarged, self._limit_override = True, larger
            return self._begin_round()
        self._commit(current, "".join(current.pieces), extra_seam=("tool_call_cut",))
        self.trace.stop_cause = "tool_call_truncated"
        partial = self._completion("length", tool_calls=tool_calls)
        return Fail(
            TruncatedToolCallError(
                "the reply was cut off by the output limit inside a tool call, and there was no room to retry it "
                "with a larger limit; a cut call is never continued as text",
                partial=partial,
                tool_calls=tool_calls,
            )
        )

    def _cut_reasoning(self, current: _Round) -> Action:
        """Cut inside the reasoning phase where the dialect cannot resume it: stop, or retry once if asked to."""
        larger = self._larger_limit(current) if self._settings.reasoning_retry and not self._stream else None
        if larger is not None:
            self._discard(current, "reasoning_retry")
            self._enlarged, self._limit_override = True, larger
            return self._begin_round()
        self._commit(current, "".join(current.pieces))
        return self._done("reasoning_truncated", finish_reason="length")

    def _restarted(self, current: _Round) -> Action:
        """The model began the answer again: the round is discarded and the fallback dialect takes over."""
        self._record(current, chars_added=0, extra_seam=("restart_discarded",))
        self._round = None
        self._switch_dialect("restart")
        cause = self._settings.stop(self._budget_state())
        if cause is not None:
            return self._done(cause, finish_reason="length")
        return self._begin_round()

    def _switch_dialect(self, reason: str) -> None:
        assert self._fallback is not None
        change = f"{self._dialect.name}->{self._fallback.name}"
        _log.emit("info", "autocontinue.dialect_fallback", change=change, reason=reason)
        self.trace.fallbacks.append(change)
        self._dialect, self._fallback = self._fallback, None
        self._echo_learned = None
        self.trace.dialect = self._dialect.name

    def _keep_partial(self, current: _Round) -> None:
        """A reply broke off: keep every decided character, as if the round had been cut there."""
        decided = "".join(current.pieces)
        text = current.sent + decided + current.seam.abort()
        self._reasoning.extend(current.reasoning)
        self._round = None
        if decided or text != self._text:
            current.finish_reason = "error"
            self._record(current, chars_added=len(text) - len(self._text))  # it was paid for
        if text == self._text:
            # Nothing new was decided (typically the request itself failed): the floor stays where it was, so the
            # retry plans the very same request - the same cut, the same heal - and a transient error leaves no
            # mark on the answer.
            return
        self._text = text
        self._floor = len(current.sent)

    def _record(self, current: _Round, *, chars_added: int, extra_seam: tuple[str, ...] = ()) -> None:
        usage, estimated = self._usage_of(current)
        cost = self._price.cost(usage.prompt_tokens, usage.completion_tokens, _cached(usage)) if self._price else None
        self._completion_tokens += usage.completion_tokens
        # The next prompt is this one plus the text this round added, the dialect's additions counted apart.
        self._last_prompt_tokens = max(0, usage.prompt_tokens - current.overhead) + usage.completion_tokens
        latency = self._clock() - current.started
        record = RoundTrace(
            index=current.index,
            finish_reason=current.finish_reason,
            usage=usage,
            usage_estimated=estimated,
            chars_added=chars_added,
            seam=tuple(current.seam.actions) + extra_seam,
            dialect=self._dialect.name if current.sent or current.index > 1 else "first",
            latency_s=latency,
            retries=self._retry.attempts,
            cost_usd=cost,
        )
        self.trace.rounds.append(record)
        if cost is not None:
            self.trace.cost_usd = (self.trace.cost_usd or 0.0) + cost
        if not _log.enabled("debug"):
            return
        fields: dict[str, Any] = {
            "round": record.index,
            "finish_reason": record.finish_reason,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cached_tokens": _cached(usage),
            "usage_estimated": estimated,
            "cost_usd": cost,
            "seam": list(record.seam),
            "dialect": record.dialect,
            "chars_added": chars_added,
            "latency_ms": round(latency * 1000, 1),
        }
        if self._settings.log_text:
            fields["seam_text"] = (current.sent[-40:], "".join(current.pieces)[:40])
        _log.emit("debug", "autocontinue.round", **fields)

    def _usage_of(self, current: _Round) -> tuple[CompletionUsage, bool]:
        if current.usage is not None:
            return current.usage, False
        counter = self._settings.counter
        completion = counter.count("".join(current.pieces))
        prompt = counter.count_messages(current.kwargs.get("messages", []))
        return CompletionUsage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        ), True

    def _budget_state(self, *, rounds: int = 0, tokens: int = 0, cost: float = 0.0) -> BudgetState:
        """The call so far (plus ``rounds``, ``tokens`` and ``cost`` not recorded yet), as the stop conditions see
        it: for a choice of an ``n > 1`` call, projected onto the whole call (see ``_shares``)."""
        price = self._price
        state = BudgetState(
            rounds=len(self.trace.rounds) + rounds,
            completion_tokens=self._completion_tokens + tokens,
            cost_usd=(self.trace.cost_usd or 0.0) + cost,
            next_prompt_cost_usd=((self._last_prompt_tokens + self._next_overhead()) * price.input / 1e6)
            if price
            else 0.0,
            output_price_per_token=(price.output / 1e6) if price else None,
        )
        share = self._share
        if share is None or not self.trace.rounds:
            return state
        first = self.trace.rounds[0]
        return share.project(state, first.usage.completion_tokens, first.cost_usd or 0.0)

    def _tokens_left(self, state: BudgetState) -> int | None:
        """Completion tokens the next round may use (a choice's share of them in an ``n > 1`` call)."""
        left = self._settings.stop.tokens_left(state)
        return left if self._share is None else self._share.tokens(left)

    def _next_overhead(self) -> int:
        """Prompt tokens the dialect will add around the prefix in the next round (the prefix message's own
        overhead, an instruction turn); 0 before any text, or without a price (only the cost budget needs it)."""
        if self._price is None or not self._text:
            return 0
        known_length, tokens = self._overhead
        if known_length != len(self._text):
            added = self._dialect.messages((), self._text, self._call.prefix_template)
            tokens = self._dialect_overhead(added, self._text)
            self._overhead = (len(self._text), tokens)
        return tokens

    def _dialect_overhead(self, added: list[Any], prefix: str) -> int:
        return added_prompt_tokens(added, prefix, self._settings.counter)

    # ----------------------------------------------------------------------------------------------------------
    # Endings

    def _done(self, cause: str, *, finish_reason: str, tool_calls: list[Any] | None = None) -> Action:
        self.trace.stop_cause = cause
        completion = self._completion(finish_reason, tool_calls=tool_calls)
        if self._call.json_mode and len(self.trace.rounds) > 1:
            problem = check_json(completion.choices[0].message.content or "", self._call.json_schema)
            if problem is not None:
                return Fail(
                    InvalidJSONError(
                        f"the joined reply is not valid JSON ({problem}); stop cause: {cause}", partial=completion
                    )
                )
        if not _log.enabled("info"):
            return Done(completion)
        _log.emit(
            "info",
            "autocontinue.call",
            rounds=len(self.trace.rounds),
            stop_cause=cause,
            finish_reason=finish_reason,
            completion_tokens=self._completion_tokens,
            cost_usd=self.trace.cost_usd,
            dialect=self.trace.dialect,
            chars=len(self._text) - len(self._call.prefix),
            fallbacks=self.trace.fallbacks,
        )
        return Done(completion)

    def _completion(self, finish_reason: str, *, tool_calls: list[Any] | None = None) -> ChatCompletion:
        first = self._first
        if (
            isinstance(first, ChatCompletion)
            and len(self.trace.rounds) == 1
            and not self._call.has_prefix
            and len(first.choices) == 1
            and first.choices[0].finish_reason == finish_reason
        ):
            # One round that ended by itself (the common case): the provider's own reply is the answer. Reuse its
            # validated fields instead of validating a copy, so an untruncated call costs next to nothing extra.
            return reuse_completion(first, self.trace)
        logprobs = self._logprobs + list(self._last_queue)
        extra: dict[str, Any] = {}
        if self._reasoning:
            extra["reasoning_content"] = "".join(self._reasoning)
        if tool_calls:
            extra["tool_calls"] = [_plain(call) for call in tool_calls]
        return build_completion(
            first=self._first,
            model=self._call.model,
            content=self._text[len(self._call.prefix) :],
            finish_reason=finish_reason,
            rounds=self.trace.rounds,
            trace=self.trace,
            message_extra=extra,
            logprobs=[_plain(item) for item in logprobs] if logprobs else None,
        )

    def _give_up(self, error: BaseException) -> Action:
        self._round = None
        if not self.trace.rounds:
            # Nothing was generated, so nothing can be lost: the SDK's own error keeps the call a drop-in.
            return Fail(error)
        self.trace.stop_cause = "error"
        partial = self._completion("length")
        _log.emit("warning", "autocontinue.failed", rounds=len(self.trace.rounds), error=type(error).__name__)
        failure = ContinuationFailed(
            f"round {self._round_index} failed after {len(self.trace.rounds)} round(s) had produced "
            f"{len(partial.choices[0].message.content or '')} characters: {type(error).__name__}: {error}",
            partial=partial,
            cause=error,
        )
        failure.__cause__ = error
        return Fail(failure)

    def _current(self) -> _Round:
        if self._round is None:
            raise RuntimeError("no request is in flight: call start() or resume() first")
        return self._round


def _cached(usage: CompletionUsage) -> int:
    details = usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details is not None else 0


def _cause_of(finish_reason: str | None) -> str:
    if finish_reason in (None, "stop", "end_turn", "stop_sequence", "STOP"):
        return "natural"
    if finish_reason in CONTEXT_STOPS:
        return "context_window"
    if finish_reason in ("content_filter", "tool_calls"):
        return finish_reason
    return "other"


def _final_finish(finish_reason: str | None) -> str:
    if finish_reason is None:
        return "stop"
    if finish_reason in CONTEXT_STOPS:
        return "length"
    return finish_reason


def _mentions(error: BaseException, word: str) -> bool:
    return getattr(error, "status_code", None) in (400, 422) and word in str(error)


def _has_payload(delta: Any) -> bool:
    """Whether a delta carries anything besides text and role (tool calls, a refusal, audio, a provider's extras)."""
    fields = delta.__dict__
    if fields.get("tool_calls") or fields.get("function_call") or fields.get("refusal") or fields.get("audio"):
        return True
    extra = delta.__pydantic_extra__
    return bool(extra) and any(value for value in extra.values())


#: where providers put reasoning text: ``reasoning_content`` (DeepSeek, DashScope, vLLM) or ``reasoning``
_REASONING_FIELDS = ("reasoning_content", "reasoning")
#: whether the installed SDK's delta type has a reasoning field (none has yet: such text arrives as an extra)
_DELTA_HAS_REASONING = not set(ChoiceDelta.model_fields).isdisjoint(_REASONING_FIELDS)


def _reasoning_of(message: Any) -> str:
    """Reasoning text of a message or delta: ``reasoning_content`` (DeepSeek, DashScope, vLLM) or ``reasoning``."""
    # Not fields of the SDK's types: they arrive as pydantic extras. Read the dicts directly (this runs per chunk,
    # and attribute access on a missing field is slow).
    fields = getattr(message, "__dict__", {})
    extra = getattr(message, "__pydantic_extra__", None) or {}
    if not extra and fields.keys().isdisjoint(_REASONING_FIELDS):
        return ""  # the common case, settled with one look
    for name in _REASONING_FIELDS:
        value = extra.get(name) or fields.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


# Phrases of the errors servers give when the prompt no longer fits (OpenAI, vLLM, llama.cpp, Anthropic, Mistral).
_CONTEXT_MARKERS = (
    "context length",
    "context_length",
    "context window",
    "context size",
    "exceed_context_size",
    "prompt is too long",
    "too many tokens",
)


def _is_context_overflow(error: BaseException) -> bool:
    if getattr(error, "status_code", None) not in (400, 413, 422):
        return False
    text = f"{error} {getattr(error, 'body', '')} {getattr(error, 'code', '')}".lower()
    return any(marker in text for marker in _CONTEXT_MARKERS)


def _is_kimi(base_url: str) -> bool:
    lowered = base_url.lower()
    return "moonshot" in lowered or "kimi" in lowered


def _plain(item: Any) -> Any:
    dump = getattr(item, "model_dump", None)
    return dump(exclude_none=True) if dump is not None else item


def _split_tokens(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder), summing exactly to ``total``."""
    weight = sum(weights)
    if weight <= 0:
        return [total] + [0] * (len(weights) - 1)
    exact = [total * w / weight for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _merge_tool_deltas(deltas: list[Any]) -> list[dict[str, Any]]:
    """Streamed tool-call fragments, joined by index into whole calls (arguments concatenated in order)."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        call = calls.setdefault(
            delta.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if delta.id:
            call["id"] = delta.id
        if delta.type:
            call["type"] = delta.type
        function = delta.function
        if function is not None:
            if function.name:
                call["function"]["name"] += function.name
            if function.arguments:
                call["function"]["arguments"] += function.arguments
    return [calls[index] for index in sorted(calls)]


#: a prefix at least this long tells, from one reply, whether the provider echoes
ECHO_EVIDENCE = 16
#: characters of each raw reply kept to recognise the same reply twice
RAW_HEAD = 64
