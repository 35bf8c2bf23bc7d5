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
from typing import Any, Literal

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from . import _limits, _log
from ._accounting import Accounting
from ._answer import Answer
from ._choices import split_choices
from ._chunks import StreamOut, malformed_chunk, take_choice
from ._cut import Release
from ._options import Settings
from ._planning import Planner
from ._progress import Progress, repeat_removed
from ._replies import (
    LENGTH_STOPS,
    NOT_AN_ENDING,
    cause_of,
    final_finish,
    is_context_overflow,
    mentions,
    merge_tool_deltas,
    reasoning_of,
)
from ._round import Round
from ._shape import completion_problem, usage_problem
from ._shares import Share
from .budget import BudgetState
from .dialects import for_json_mode, resolve_dialect
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
from .result import completion_of
from .retry import RetryTracker
from .trace import ContinuationTrace

__all__ = [
    "Action",
    "Continuation",
    "DoRequest",
    "DoSleep",
    "Done",
    "Fail",
]


#: where a call is: "ready" (``start()``, or after a :class:`DoSleep` ``resume()``, comes next), "awaiting" (a request
#: is in flight: its reply, its chunks or its error come next) or "finished" (:class:`Done` or :class:`Fail` was
#: returned)
Phase = Literal["ready", "awaiting", "finished"]


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


#: the StreamOut of every call that does not stream (never read or written: every use is behind ``_stream``)
_NOT_STREAMING = StreamOut("")


class Continuation:
    """One continued chat completion: feed it responses, it tells you what to do next.

    ``kwargs`` are the keyword arguments of ``chat.completions.create``; ``base_url`` is the client's (it decides
    the dialect under "auto" and where DeepSeek's continuation rounds go). ``clock`` is only read, to time rounds.
    """

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
        self._phase: Phase = "ready"
        self._first: ChatCompletion | ChatCompletionChunk | None = None  # the first reply: the result's template
        self._round: Round | None = None  # the round in flight
        self._round_index = 0
        self._limits = _limits.RoundLimits(settings.max_round_tokens)
        self._progress: Progress | None = None  # made when a round is cut, as only then can a call stall or loop
        self._malformed: MalformedResponse | None = None  # a streamed chunk of the wrong shape ended the round
        self._stop_reading = False  # a streamed round must end before its reply does (a budget is reached)
        # n > 1: the first request asks for every choice; this object continues choice 0, and one seeded object
        # per other choice (see take_siblings) continues that choice from the same first reply.
        self._seed = seed
        self._siblings: list[ChatCompletion] = []
        self._settings = settings
        self._base_url = base_url
        self._clock = clock
        choice = resolve_dialect(settings.dialect, base_url)
        dialect = for_json_mode(choice.dialect, base_url) if call.json_mode else choice.dialect
        self._plan = Planner(call, dialect=dialect, fallback=choice.fallback, base_url=base_url, heal=settings.heal)
        needs_price = settings.stop.needs_price
        price = settings.prices.require(call.model) if needs_price else settings.prices.lookup(call.model)
        self._retry = RetryTracker(settings.retry)
        self.trace = ContinuationTrace(dialect=dialect.name)
        # What a stream hands its reader: a call that does not stream never uses it, and shares one.
        self._out = StreamOut(call.model) if call.stream else _NOT_STREAMING
        self._spent = Accounting(
            self.trace,
            price=price,
            counter=settings.counter,
            stop=settings.stop,
            messages=call.messages,
            share=share,
            log_text=settings.log_text,
        )
        self._answer = Answer(call.prefix)
        # Streaming: ask upstream for usage (budgets need it) unless the server refuses the option.
        self._stream = self._upstream_usage = call.stream
        if needs_price:
            left = self._spent.tokens_left(self._budget_state())
            if left is not None and left <= 0:
                raise ConfigurationError(
                    f"the cost budget does not cover the prompt of this call (about {self._spent.prompt_tokens} "
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
                kwargs, self._settings, base_url=self._base_url, clock=self._clock, seed=seed, share=self._spent.share
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
        reasoning = reasoning_of(choice.message)
        if reasoning:
            current.reasoning.append(reasoning)
        if choice.logprobs is not None and choice.logprobs.content:
            current.logprob_queue.extend(choice.logprobs.content)
        finish = choice.finish_reason
        if current.seam.plain and finish is not None and finish not in NOT_AN_ENDING:
            # An ordinary first request that ended by itself (most calls): nothing to join and nothing to hold
            # back, so the reply is committed as it is - what _end_round would conclude, without its seam work.
            if content:
                current.pieces.append(content)
            self._commit(current, content)
            tool_calls = list(getattr(choice.message, "tool_calls", None) or ())
            return self._done(cause_of(finish), finish_reason=finish, tool_calls=tool_calls)
        self._feed(current, content)
        return self._end_round()

    def _split_choices(self, completion: ChatCompletion) -> ChatCompletion:
        """Keep choice 0 here and the others for sibling objects (see ``_choices``)."""
        spent = self._spent
        singles, spent.share = split_choices(completion, self._settings.counter, spent.price, self._call.messages)
        self._siblings = singles[1:]
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
            # The chunk object is ours alone (fresh from the SDK's parser): it is reused rather than copied, and read
            # and written through its dicts, as pydantic's __getattr__/__setattr__ would cost more than the rest of
            # its handling (benchmarks/streaming.py, per chunk). This relies on pydantic v2 keeping a model's fields
            # in its instance __dict__ and extras in __pydantic_extra__: were that to change, reading a chunk fails
            # here, and every stream fails as malformed (the suite's streaming tests catch it at once).
            head = chunk.__dict__
            choices = head["choices"]
            usage = head["usage"]
            if self._first is None:
                if not isinstance(chunk, ChatCompletionChunk):
                    raise TypeError("not a chunk")
                self._first = chunk
                self._out.id = chunk.id or "chatcmpl-autocontinue"
            if usage is not None:
                problem = usage_problem(usage)
                if problem is not None:
                    raise TypeError(problem)
                current.usage = usage
                head["usage"] = None
            head["id"] = self._out.id
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

    def _reject(self, current: Round, error: BaseException) -> None:
        """A streamed chunk of the wrong shape: the round stops here, as if its stream had broken."""
        self._malformed = malformed_chunk(error)
        current.finish_reason = None
        self._stop_reading = True

    def _on_choice(
        self, current: Round, chunk: ChatCompletionChunk, top: dict[str, Any], delta: Any, fields: dict[str, Any]
    ) -> ChatCompletionChunk | None:
        content = take_choice(current, top, delta, fields)
        limit = self._limits.current
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
        given = self._out.pass_on(chunk, top, delta, fields, released, current.fresh_logprobs)
        if current.fresh_logprobs:
            current.fresh_logprobs = []
        # The request's own limit already stops the server at the budget. Closing early is for servers that ignore
        # it: every content chunk carries at least one token, so more chunks than the limit prove an overrun
        # (a tokenizer-based estimate would not: ours and the server's differ).
        if limit is not None and current.content_chunks - current.seam.echo_pieces > limit:
            current.finish_reason = "length"
            self._stop_reading = True
        return given

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
        out, first = self._out, self._first
        chunks = out.take_held(first)
        if isinstance(action, Done | Fail):
            rest = self._answer.text[self._answer.released :]
            self._answer.released = len(self._answer.text)
            if isinstance(action, Done):
                usage = bool((self._call.stream_options or {}).get("include_usage"))
                chunks += out.closing(rest, action.completion, list(self._answer.logprobs.last), usage, first)
            else:
                chunks += out.failing(rest, first)
        return replace(action, emit=tuple(chunks)) if chunks else action

    def on_error(self, error: BaseException) -> Action:
        """The request (or the stream of its reply) failed with ``error``."""
        return self._emitting(self._on_error(error))

    def _on_error(self, error: BaseException) -> Action:
        current = self._round
        continuing = current is not None and (current.sent != "" or self._call.has_prefix)
        if continuing and self._plan.fallback is not None and self._plan.dialect.refuses(error):
            self._round = None
            self._plan.switch(f"refused: {type(error).__name__}", self.trace)
            return self._begin_round()
        if current is not None and self._upstream_usage and mentions(error, "stream_options"):
            # A server that does not know stream_options: ask again without it and count tokens ourselves.
            self._round = None
            self._upstream_usage = False
            return self._begin_round()
        if current is not None:
            self._keep_partial(current)
        if self.trace.rounds and is_context_overflow(error):
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
        self._phase = "ready"
        return DoSleep(seconds)

    # ----------------------------------------------------------------------------------------------------------
    # Rounds

    def _begin_round(self) -> Action:
        self._round_index = len(self.trace.rounds) + 1
        answer = self._answer
        plan = self._plan.plan(
            answer.text,
            floor=answer.floor,
            released=answer.released,
            reasoning="".join(answer.reasoning) if answer.reasoning else "",
            stream=self._stream,
            upstream_usage=self._upstream_usage,
        )
        kwargs, sent = plan.kwargs, plan.sent
        self._clamp(kwargs)
        self._stop_reading = False
        self._phase = "awaiting"
        self._round = Round(
            index=self._round_index,
            sent=sent,
            held=plan.held,
            seam=plan.seam,
            kwargs=kwargs,
            started=self._clock(),
            # A whole reply that needs no seam (most calls) releases nothing to anyone: see _feed.
            release=self._release_of(sent) if self._stream or plan.added is not None else None,
            released_at_start=answer.released,
            logprob_queue=answer.logprobs.carry(len(sent), answer.released) if answer.logprobs.last else deque(),
            overhead=self._spent.added(plan.added, sent) if plan.added is not None and self._spent.price else 0,
        )
        return DoRequest(kwargs, plan.base_url)

    def _release_of(self, sent: str) -> Release:
        heal, strip = self._settings.heal, self._plan.dialect.strips_trailing_whitespace
        return self._answer.release_of(sent, len(self._call.prefix), heal, strip)

    def _clamp(self, kwargs: dict[str, Any]) -> None:
        """Keep the caller's per-round limit (or a retried round's larger one), lowered to what budgets allow."""
        left = self._spent.tokens_left(self._budget_state())
        if left is not None and self._first is None and self._seed is None and self._call.kwargs.get("n", 1) > 1:
            # The first request of an n > 1 call: every choice may write the limit, so each gets its share.
            left //= self._call.kwargs["n"]
        self._limits.apply(kwargs, left=left, default_name=self._plan.dialect.limit_parameter)

    def _larger_limit(self, current: Round) -> int | None:
        """A doubled limit for retrying ``current`` once, if the budgets leave room for more than it had."""
        if not self._limits.may_retry(current.kwargs):
            return None
        # The round just spent counts (it is paid for) before deciding whether another one fits.
        usage, _ = self._spent.usage_of(current)
        cost = self._spent.cost_of(usage) or 0.0
        after = self._budget_state(rounds=1, tokens=usage.completion_tokens, cost=cost)
        if self._settings.stop(after) is not None:
            return None
        return _limits.larger(current.kwargs, left=self._spent.tokens_left(after), cap=self._settings.max_round_tokens)

    def _feed(self, current: Round, delta: str) -> str:
        """Pass reply text through the seam; return the text now safe to hand to a stream."""
        current.content_chunks += 1
        if len(current.raw_head) < RAW_HEAD:
            current.raw_head += delta[: RAW_HEAD - len(current.raw_head)]
        current.raw_chars += len(delta)
        if current.release is None:
            current.release = self._release_of(current.sent)
        seam = current.seam
        return self._answer.append(current, delta if seam.plain else seam.feed(delta))

    def _end_round(self) -> Action:
        current = self._current()
        released = self._answer.append(current, current.seam.finish())
        if self._stream:
            self._out.hold(released, current.fresh_logprobs)
        current.fresh_logprobs = []
        if current.seam.restarted:
            return self._restarted(current)
        finish = current.finish_reason
        cut = finish in LENGTH_STOPS
        tool_calls = list(getattr(current.message, "tool_calls", None) or []) or merge_tool_deltas(current.tool_calls)
        if cut and tool_calls:
            return self._cut_tool_call(current, tool_calls)
        in_reasoning = cut and current.raw_chars == 0 and bool(current.reasoning)
        if in_reasoning and not self._plan.dialect.resumes_reasoning:
            return self._cut_reasoning(current)
        new_text = "".join(current.pieces)
        before, floor = len(self._answer.text), self._answer.floor
        self._commit(current, new_text)
        if not cut:
            return self._done(cause_of(finish), finish_reason=final_finish(finish), tool_calls=tool_calls)
        state = self._budget_state()
        cause = self._settings.stop(state)
        if cause is None and self._spent.tokens_left(state) == 0:
            cause = "token_budget"
        if cause is not None:
            return self._done(cause, finish_reason="length")
        progress = self._progress = self._progress or Progress(self._settings.stop_on_repeat)
        stalled = len(self._answer.text) <= before and not in_reasoning
        verdict = progress.judge(
            stalled=stalled,
            # what the model wrote beyond an echo of the prefix (a restart or a repeat the seam removed counts)
            said=current.raw_chars - (len(current.sent) if "echo_stripped" in current.seam.actions else 0),
            raw=(current.raw_chars, current.raw_head),
            held=bool(current.held),
            text=self._answer.text,
            repeated=repeat_removed(current.seam.actions)
            and _limits.filled(current.usage, _limits.limit_of(current.kwargs)),
        )
        if verdict in ("grow", "widen") and self._limits.after_stall(
            current.kwargs,
            wider=verdict == "widen" or (current.held.isspace() and self._plan.dialect.strips_trailing_whitespace),
            left=lambda: self._spent.tokens_left(self._budget_state()),
        ):
            # The whole round went into regenerating the text held back from the prefix (a healed word, whitespace
            # a provider refuses; tiny rounds): the next one can do better (see _limits) instead of stopping.
            # A repeat that filled the round: the same cut again with room, the held text still the reader's evidence.
            if verdict == "widen":
                self._answer.floor = floor
            return self._begin_round()
        if not stalled:
            self._limits.progressed()
        # A restart on a host that ignores the prefix reproduces the reply of round 1 exactly (and looks like an
        # echo of the text so far): that, or a round that adds nothing, calls for the fallback dialect; a model
        # repeating itself in new words does not.
        if (stalled or progress.same_reply) and self._plan.fallback is not None and current.sent:
            self._plan.switch("no progress", self.trace)
            self._progress = None
            return self._begin_round()
        if verdict != "go":
            return self._done("no_progress", finish_reason="length")
        return self._begin_round()

    def _commit(self, current: Round, new_text: str, *, extra_seam: tuple[str, ...] = ()) -> None:
        """Make the round's text (and reasoning and logprobs) part of the answer, and record the round."""
        self._plan.committed(current, new_text)
        added = self._answer.commit(current, new_text)
        self._record(current, chars_added=added, extra_seam=extra_seam)
        self._round = None
        self._retry.reset()

    def _discard(self, current: Round, action: str) -> None:
        """Record a round whose output is not kept (it is paid for, so its usage counts)."""
        self._answer.released = current.released_at_start
        self._record(current, chars_added=0, extra_seam=(action,))
        self._round = None
        self._retry.reset()

    def _cut_tool_call(self, current: Round, tool_calls: list[Any]) -> Action:
        """A tool call cut by the limit is never continued as text: retry once with room, else fail closed."""
        # While streaming, the call's deltas have already reached the caller: a second attempt would garble them.
        larger = None if self._stream else self._larger_limit(current)
        if larger is not None:
            self._discard(current, "tool_call_retry")
            self._limits.retry_with(larger)
            return self._begin_round()
        self._commit(current, "".join(current.pieces), extra_seam=("tool_call_cut",))
        self.trace.stop_cause = "tool_call_truncated"
        partial = self._completion("length", tool_calls=tool_calls)
        return self._finished(
            TruncatedToolCallError(
                "the reply was cut off by the output limit inside a tool call, and there was no room to retry it "
                "with a larger limit; a cut call is never continued as text",
                partial=partial,
                tool_calls=tool_calls,
            )
        )

    def _cut_reasoning(self, current: Round) -> Action:
        """Cut inside the reasoning phase where the dialect cannot resume it: stop, or retry once if asked to."""
        larger = self._larger_limit(current) if self._settings.reasoning_retry and not self._stream else None
        if larger is not None:
            self._discard(current, "reasoning_retry")
            self._limits.retry_with(larger)
            return self._begin_round()
        self._commit(current, "".join(current.pieces))
        return self._done("reasoning_truncated", finish_reason="length")

    def _restarted(self, current: Round) -> Action:
        """The model began the answer again: the round is discarded and the fallback dialect takes over."""
        self._record(current, chars_added=0, extra_seam=("restart_discarded",))
        self._round = None
        self._plan.switch("restart", self.trace)
        cause = self._settings.stop(self._budget_state())
        if cause is not None:
            return self._done(cause, finish_reason="length")
        return self._begin_round()

    def _keep_partial(self, current: Round) -> None:
        """A reply broke off: keep every decided character (see :meth:`Answer.keep_partial`)."""
        self._round = None
        added = self._answer.keep_partial(current)
        if added is not None:
            current.finish_reason = "error"
            self._record(current, chars_added=added)  # it was paid for

    def _record(self, current: Round, *, chars_added: int, extra_seam: tuple[str, ...] = ()) -> None:
        self._spent.record(
            current,
            chars_added=chars_added,
            dialect=self._plan.dialect.name if current.sent or current.index > 1 else "first",
            latency=self._clock() - current.started,
            retries=self._retry.attempts,
            extra_seam=extra_seam,
        )

    def _budget_state(self, *, rounds: int = 0, tokens: int = 0, cost: float = 0.0) -> BudgetState:
        """The call so far as the stop conditions see it (see :meth:`Accounting.state`)."""
        spent = self._spent
        overhead = (
            spent.overhead(self._plan.dialect, self._answer.text, self._call.prefix_template) if spent.price else 0
        )
        return spent.state(overhead, rounds=rounds, tokens=tokens, cost=cost)

    # ----------------------------------------------------------------------------------------------------------
    # Endings

    def _done(self, cause: str, *, finish_reason: str, tool_calls: list[Any] | None = None) -> Action:
        self.trace.stop_cause = cause
        completion = self._completion(finish_reason, tool_calls=tool_calls)
        if self._call.json_mode and len(self.trace.rounds) > 1:
            problem = check_json(completion.choices[0].message.content or "", self._call.json_schema)
            if problem is not None:
                return self._finished(
                    InvalidJSONError(
                        f"the joined reply is not valid JSON ({problem}); stop cause: {cause}", partial=completion
                    )
                )
        if _log.enabled("info"):
            chars = len(self._answer.text) - len(self._call.prefix)
            self._spent.log_call(cause, finish_reason=finish_reason, chars=chars)
        self._phase = "finished"
        return Done(completion)

    def _completion(self, finish_reason: str, *, tool_calls: list[Any] | None = None) -> ChatCompletion:
        call = self._call
        return completion_of(
            first=self._first,
            own_prefix=call.has_prefix,
            model=call.model,
            answer=self._answer,
            answer_start=len(call.prefix),
            finish_reason=finish_reason,
            trace=self.trace,
            tool_calls=tool_calls or [],
        )

    def _give_up(self, error: BaseException) -> Action:
        self._round = None
        if not self.trace.rounds:
            # Nothing was generated, so nothing can be lost: the SDK's own error keeps the call a drop-in.
            return self._finished(error)
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
        return self._finished(failure)

    def _finished(self, error: BaseException) -> Fail:
        self._phase = "finished"
        return Fail(error)

    def _current(self) -> Round:
        if self._phase != "awaiting" or self._round is None:
            raise RuntimeError("no request is in flight: call start() or resume() first")
        return self._round


#: characters of each raw reply kept to recognise the same reply twice
RAW_HEAD = 64
