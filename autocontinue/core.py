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
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ._accounting import Accounting
from ._actions import Action, Done, DoRequest, DoSleep, Fail
from ._answer import Answer
from ._choices import split_choices
from ._endings import completed, failed, tool_call_cut
from ._headroom import Headroom
from ._options import Settings
from ._planning import Planner
from ._progress import Progress
from ._replies import LENGTH_STOPS, NOT_AN_ENDING, cause_of, final_finish, is_context_overflow, mentions
from ._round import Round
from ._shape import completion_problem
from ._shares import Share
from ._streaming import StreamState
from .errors import IncompleteStream, InvalidJSONError, MalformedResponse
from .request import CallRequest
from .retry import RetryTracker
from .trace import ContinuationTrace

__all__ = ["Action", "Continuation", "DoRequest", "DoSleep", "Done", "Fail"]


#: where a call is: "ready" (``start()``, or after a :class:`DoSleep` ``resume()``, comes next), "awaiting" (a request
#: is in flight: its reply, its chunks or its error come next) or "finished" (:class:`Done` or :class:`Fail` was
#: returned)
Phase = Literal["ready", "awaiting", "finished"]


class Continuation:
    """One continued chat completion: feed it responses, it tells you what to do next.

    ``kwargs`` are the keyword arguments of ``chat.completions.create``; ``base_url`` is the client's (it decides
    the dialect under "auto" and where DeepSeek's continuation rounds go). ``clock`` is only read, to time rounds
    and the call (``max_seconds``); ``started`` is the call's start by it (now, unless given).
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
        started: float | None = None,
    ) -> None:
        self._call = call = CallRequest.parse(kwargs)
        self._phase: Phase = "ready"
        self._round: Round | None = None  # the round in flight
        self._round_index = 0
        self._progress: Progress | None = None  # made when a round is cut, as only then can a call stall or loop
        # n > 1: the first request asks for every choice; this object continues choice 0, and one seeded object
        # per other choice (see take_siblings) continues that choice from the same first reply.
        self._seed = seed
        self._siblings: list[ChatCompletion] = []
        self._settings = settings
        self._base_url = base_url
        self._clock = clock
        self._plan = Planner(call, settings.dialect, base_url=base_url, heal=settings.heal)
        self._retry = RetryTracker(settings.retry)
        self.trace = ContinuationTrace(dialect=self._plan.dialect.name)
        self._spent = Accounting(self.trace, settings, model=call.model, messages=call.messages, share=share)
        self._answer = answer = Answer(call.prefix)
        self._room = Headroom(
            self._spent,
            settings,
            call=call,
            plan=self._plan,
            answer=answer,
            clock=clock,
            started=clock() if started is None else started,  # a sibling's is its call's
        )
        # Streaming: what the reader is handed; and ask upstream for usage (budgets need it) unless it refuses.
        self._streaming = StreamState(call, answer, self._room.limits) if call.stream else None
        self._upstream_usage = call.stream

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
                kwargs,
                self._settings,
                base_url=self._base_url,
                clock=self._clock,
                seed=seed,
                share=self._spent.share,
                started=self._room.started,
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
        if self._answer.first is None:
            self._answer.first = completion
        if len(completion.choices) > 1:
            # Choice 0 is continued here, the others by sibling objects (see _choices).
            spent = self._spent
            singles, spent.share = split_choices(completion, self._settings.counter, spent.price, self._call.messages)
            completion, self._siblings = singles[0], singles[1:]
        content = current.take(completion)
        finish = current.finish_reason
        if current.seam.plain and finish is not None and finish not in NOT_AN_ENDING:
            # An ordinary first request that ended by itself (most calls): nothing to join and nothing to hold
            # back, so the reply is committed as it is - what _end_round would conclude, without its seam work.
            if content:
                current.pieces.append(content)
            self._commit(current, content)
            return self._done(cause_of(finish), finish_reason=finish, tool_calls=current.calls())
        if current.release is None:  # made only for a reply that has a seam to pass (see Planner.plan)
            current.release = self._plan.release_of(self._answer, current.sent)
        self._answer.feed(current, content)
        return self._end_round()

    def on_chunk(self, chunk: ChatCompletionChunk) -> ChatCompletionChunk | Action | None:
        """One streamed chunk arrived. Returns the chunk the reader should see now (or None), and reading goes on;
        or, when the round must end before its reply does (a budget is reached, a chunk of the wrong shape), the
        next :class:`Action`: close the upstream response, hand on the action's ``emit`` and do it.
        """
        streaming = self._streaming
        if streaming is None:
            raise RuntimeError("on_chunk() is for a call made with stream=True")
        given = streaming.take(self._round or self._current(), chunk)
        if not streaming.stop_reading:
            return given
        action = self.on_stream_end()
        return replace(action, emit=(given, *action.emit)) if given is not None else action

    def on_stream_end(self) -> Action:
        """The upstream stream ended."""
        current = self._current()
        streaming = self._streaming
        if streaming is not None and streaming.malformed is not None:
            error, streaming.malformed = streaming.malformed, None
            return self.on_error(error)
        if current.finish_reason is None:
            return self.on_error(IncompleteStream("the stream ended without a finish_reason"))
        return self._emitting(self._end_round())

    def _emitting(self, action: Action) -> Action:
        """``action`` with the chunks a stream's reader is to see before it is done (see :attr:`Action.emit`)."""
        if self._streaming is None:
            return action
        done = action.completion if isinstance(action, Done) else None
        chunks = self._streaming.handing_on(done=done, failed=isinstance(action, Fail))
        return replace(action, emit=tuple(chunks)) if chunks else action

    def on_error(self, error: BaseException) -> Action:
        """The request (or the stream of its reply) failed with ``error``."""
        return self._emitting(self._on_error(error))

    def _on_error(self, error: BaseException) -> Action:
        current = self._round
        continuing = current is not None and (current.sent != "" or self._call.has_prefix)
        if continuing and self._plan.fallback is not None and self._plan.dialect.refuses(error):
            self._plan.switch(f"refused: {type(error).__name__}", self.trace)
            return self._begin_round()
        if current is not None and self._upstream_usage and mentions(error, "stream_options"):
            # A server that does not know stream_options: ask again without it and count tokens ourselves.
            self._upstream_usage = False
            return self._begin_round()
        if current is not None:
            # The reply broke off: keep every decided character (see Answer.keep_partial).
            self._round = None
            added = self._answer.keep_partial(current)
            if added is not None:
                current.finish_reason = "error"
                self._record(current, chars_added=added)  # it was paid for
        if self.trace.rounds and is_context_overflow(error):
            # The prompt plus the text so far no longer fits: continuing cannot help, and the text is kept.
            return self._done("context_window", finish_reason="length")
        seconds = self._retry.decide(error)
        if seconds is None or self._room.out_of_time(after=seconds):
            return self._give_up(error)
        self._spent.log_retry(error, round_index=self._round_index, attempt=self._retry.attempts, seconds=seconds)
        self._phase = "ready"
        return DoSleep(seconds)

    # ----------------------------------------------------------------------------------------------------------
    # Rounds

    def _begin_round(self) -> Action:
        self._round_index = len(self.trace.rounds) + 1
        answer, streaming = self._answer, self._streaming
        current = self._plan.plan(
            answer,
            index=self._round_index,
            started=self._clock(),
            stream=streaming is not None,
            upstream_usage=self._upstream_usage,
        )
        self._room.limit(current.kwargs, first_of_n=answer.first is None and self._seed is None)
        if streaming is not None:
            streaming.stop_reading = False
        self._phase = "awaiting"
        self._round = current
        return DoRequest(current.kwargs, current.base_url)

    def _end_round(self) -> Action:
        current = self._current()
        released = self._answer.append(current, current.seam.finish())
        if self._streaming is not None:
            self._streaming.hold(released, current.fresh_logprobs)
        current.fresh_logprobs = []
        if current.seam.restarted:
            return self._restarted(current)
        finish = current.finish_reason
        cut = finish in LENGTH_STOPS
        tool_calls = current.calls()
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
        cause = self._room.exhausted()
        if cause is not None:
            return self._done(cause, finish_reason="length")
        progress = self._progress = self._progress or Progress(self._settings.stop_on_repeat)
        stalled = len(self._answer.text) <= before and not in_reasoning
        verdict = progress.judge(current, stalled=stalled, text=self._answer.text)
        if verdict in ("grow", "widen") and self._room.after_stall(
            current,
            wider=verdict == "widen" or (current.held.isspace() and self._plan.dialect.strips_trailing_whitespace),
        ):
            # The whole round went into regenerating the text held back from the prefix (a healed word, whitespace
            # a provider refuses; tiny rounds): the next one can do better (see _limits) instead of stopping.
            # A repeat that filled the round: the same cut again with room, the held text still the reader's evidence.
            if verdict == "widen":
                self._answer.floor = floor
            return self._begin_round()
        if not stalled:
            self._room.limits.progressed()
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

    def _cut_tool_call(self, current: Round, tool_calls: list[Any]) -> Action:
        """A tool call cut by the limit is never continued as text: retry once with room, else fail closed."""
        if self._retried_larger(current, "tool_call_retry"):
            return self._begin_round()
        self._commit(current, "".join(current.pieces), extra_seam=("tool_call_cut",))
        return self._finished(tool_call_cut(self._call, self._answer, self.trace, tool_calls))

    def _cut_reasoning(self, current: Round) -> Action:
        """Cut inside the reasoning phase where the dialect cannot resume it: stop, or retry once if asked to."""
        if self._settings.reasoning_retry and self._retried_larger(current, "reasoning_retry"):
            return self._begin_round()
        self._commit(current, "".join(current.pieces))
        return self._done("reasoning_truncated", finish_reason="length")

    def _retried_larger(self, current: Round, action: str) -> bool:
        """Whether ``current`` is sent again, once, with a doubled limit (if the budgets leave room). Its output is
        not kept; it is paid for, so it is recorded."""
        # While streaming, the round's deltas have already reached the caller: a second attempt would garble them.
        if self._streaming is not None or not self._room.retry_larger(current):
            return False
        self._answer.released = current.released_at_start
        self._record(current, chars_added=0, extra_seam=(action,))
        self._retry.reset()
        return True

    def _restarted(self, current: Round) -> Action:
        """The model began the answer again: the round is discarded and the fallback dialect takes over."""
        self._record(current, chars_added=0, extra_seam=("restart_discarded",))
        self._plan.switch("restart", self.trace)
        cause = self._room.stop_cause()
        if cause is not None:
            return self._done(cause, finish_reason="length")
        return self._begin_round()

    def _commit(self, current: Round, new_text: str, *, extra_seam: tuple[str, ...] = ()) -> None:
        """Make the round's text (and reasoning and logprobs) part of the answer, and record the round."""
        self._plan.committed(current, new_text)
        self._record(current, chars_added=self._answer.commit(current, new_text), extra_seam=extra_seam)
        self._retry.reset()

    def _record(self, current: Round, *, chars_added: int, extra_seam: tuple[str, ...] = ()) -> None:
        """The round is over: record it (it is paid for, whether its text is kept or not)."""
        self._round = None
        self._spent.record(
            current,
            chars_added=chars_added,
            dialect=self._plan.dialect.name if current.sent or current.index > 1 else "first",
            latency=self._clock() - current.started,
            retries=self._retry.attempts,
            extra_seam=extra_seam,
        )

    # ----------------------------------------------------------------------------------------------------------
    # Endings

    def _done(self, cause: str, *, finish_reason: str, tool_calls: list[Any] | None = None) -> Action:
        call, answer = self._call, self._answer
        result = completed(call, answer, self.trace, cause=cause, finish_reason=finish_reason, tool_calls=tool_calls)
        if isinstance(result, InvalidJSONError):
            return self._finished(result)
        self._spent.log_call(cause, finish_reason=finish_reason, chars=len(answer.text) - len(call.prefix))
        self._phase = "finished"
        return Done(result)

    def _give_up(self, error: BaseException) -> Action:
        if not self.trace.rounds:
            # Nothing was generated, so nothing can be lost: the SDK's own error keeps the call a drop-in.
            return self._finished(error)
        return self._finished(failed(error, self._call, self._answer, self.trace, round_index=self._round_index))

    def _finished(self, error: BaseException) -> Fail:
        self._phase = "finished"
        return Fail(error)

    def _current(self) -> Round:
        if self._phase != "awaiting" or self._round is None:
            raise RuntimeError("no request is in flight: call start() or resume() first")
        return self._round
