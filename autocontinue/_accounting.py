"""What a call has spent: usage, cost and one record per round (the trace and its log event), and the budget
state its stop conditions see.

A round's usage is the provider's when it reports one, else counted (``usage_estimated``). Cost needs a price:
without one, only tokens and rounds are counted. For a choice of an ``n > 1`` call the state is projected onto
the whole call (see ``_shares``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openai.types.completion_usage import CompletionUsage

from . import _log
from ._estimate import added_prompt_tokens
from ._options import Settings
from ._replies import cached_tokens
from ._round import Round
from ._shares import Share
from .budget import BudgetState
from .dialects import Dialect
from .trace import ContinuationTrace, RoundTrace

__all__ = ["Accounting"]


class Accounting:
    """The spend of one continued call (one choice of it, for ``n > 1``)."""

    def __init__(
        self, trace: ContinuationTrace, settings: Settings, *, model: str, messages: Sequence[Any], share: Share | None
    ) -> None:
        """The spend of a call to ``model`` whose prompt is ``messages``, under ``settings``'s budgets and prices (a
        budget that needs a price fails here without one)."""
        self.trace = trace
        needs_price = settings.stop.needs_price
        self.price = price = settings.prices.require(model) if needs_price else settings.prices.lookup(model)
        self.share = share  # n > 1: how this choice shares the call's budgets
        self.completion_tokens = 0
        # The next prompt, in tokens: counted only with a price (only the cost budget needs it).
        self._counter = counter = settings.counter
        self.prompt_tokens = counter.count_messages(messages) if price else 0
        self._stop = settings.stop
        self._log_text = settings.log_text
        self._overhead = (-1, 0)  # (text length, tokens) the dialect adds to the next prompt

    def usage_of(self, current: Round) -> tuple[CompletionUsage, bool]:
        """The round's usage, and whether it was counted here rather than reported by the provider."""
        if current.usage is not None:
            return current.usage, False
        counter = self._counter
        completion = counter.count("".join(current.pieces))
        prompt = counter.count_messages(current.kwargs.get("messages", []))
        return CompletionUsage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        ), True

    def cost_of(self, usage: CompletionUsage) -> float | None:
        """What ``usage`` cost (``None`` without a price)."""
        price = self.price
        return price.cost(usage.prompt_tokens, usage.completion_tokens, cached_tokens(usage)) if price else None

    def record(
        self,
        current: Round,
        *,
        chars_added: int,
        dialect: str,
        latency: float,
        retries: int,
        extra_seam: tuple[str, ...] = (),
    ) -> None:
        """Count the round (it is paid for, whether its text is kept or not) and add its record to the trace."""
        usage, estimated = self.usage_of(current)
        cost = self.cost_of(usage)
        self.completion_tokens += usage.completion_tokens
        # The next prompt is this one plus the text this round added, the dialect's additions counted apart.
        added = current.added
        overhead = self.added(added, current.sent) if added is not None and self.price else 0
        self.prompt_tokens = max(0, usage.prompt_tokens - overhead) + usage.completion_tokens
        record = RoundTrace(
            index=current.index,
            finish_reason=current.finish_reason,
            usage=usage,
            usage_estimated=estimated,
            chars_added=chars_added,
            seam=tuple(current.seam.actions) + extra_seam,
            dialect=dialect,
            latency_s=latency,
            retries=retries,
            cost_usd=cost,
        )
        trace = self.trace
        trace.rounds.append(record)
        if cost is not None:
            trace.cost_usd = (trace.cost_usd or 0.0) + cost
        if not _log.enabled("debug"):
            return
        fields: dict[str, Any] = {
            "round": record.index,
            "finish_reason": record.finish_reason,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cached_tokens": cached_tokens(usage),
            "usage_estimated": estimated,
            "cost_usd": cost,
            "seam": list(record.seam),
            "dialect": record.dialect,
            "chars_added": chars_added,
            "latency_ms": round(latency * 1000, 1),
        }
        if self._log_text:
            fields["seam_text"] = (current.sent[-40:], "".join(current.pieces)[:40])
        _log.emit("debug", "autocontinue.round", **fields)

    def state(
        self, overhead: int, *, rounds: int = 0, tokens: int = 0, cost: float = 0.0, elapsed: float = 0.0
    ) -> BudgetState:
        """The call so far (plus ``rounds``, ``tokens`` and ``cost`` not recorded yet), as the stop conditions see
        it; ``overhead``: prompt tokens the dialect adds to the next request (see :meth:`overhead`); ``elapsed``:
        seconds since the call started."""
        price = self.price
        trace = self.trace
        state = BudgetState(
            rounds=len(trace.rounds) + rounds,
            completion_tokens=self.completion_tokens + tokens,
            cost_usd=(trace.cost_usd or 0.0) + cost,
            next_prompt_cost_usd=((self.prompt_tokens + overhead) * price.input / 1e6) if price else 0.0,
            output_price_per_token=(price.output / 1e6) if price else None,
            elapsed_s=elapsed,
            longest_round_s=max((r.latency_s for r in trace.rounds), default=0.0),
        )
        share = self.share
        if share is None or not trace.rounds:
            return state
        first = trace.rounds[0]
        return share.project(state, first.usage.completion_tokens, first.cost_usd or 0.0)

    def tokens_left(self, state: BudgetState) -> int | None:
        """Completion tokens the next round may use (a choice's share of them in an ``n > 1`` call)."""
        left = self._stop.tokens_left(state)
        return left if self.share is None else self.share.tokens(left)

    def overhead(self, dialect: Dialect, text: str, template: Any) -> int:
        """Prompt tokens ``dialect`` will add around the prefix ``text`` in the next round (the prefix message's
        own overhead, an instruction turn); 0 before any text, or without a price (only the cost budget needs it)."""
        if self.price is None or not text:
            return 0
        known_length, tokens = self._overhead
        if known_length != len(text):
            tokens = self.added(dialect.messages((), text, template), text)
            self._overhead = (len(text), tokens)
        return tokens

    def added(self, messages: list[Any], prefix: str) -> int:
        """Prompt tokens of ``messages`` (what a dialect adds to the caller's) beyond the prefix text itself."""
        return added_prompt_tokens(messages, prefix, self._counter)

    def log_call(self, cause: str, *, finish_reason: str, chars: int) -> None:
        """The call's one log event (``chars``: characters of the answer)."""
        if not _log.enabled("info"):
            return
        trace = self.trace
        _log.emit(
            "info",
            "autocontinue.call",
            rounds=len(trace.rounds),
            stop_cause=cause,
            finish_reason=finish_reason,
            completion_tokens=self.completion_tokens,
            cost_usd=trace.cost_usd,
            dialect=trace.dialect,
            chars=chars,
            fallbacks=trace.fallbacks,
        )

    def log_retry(self, error: BaseException, *, round_index: int, attempt: int, seconds: float) -> None:
        """A failed request of round ``round_index`` is to be sent again after ``seconds``."""
        _log.emit(
            "info",
            "autocontinue.retry",
            round=round_index,
            attempt=attempt,
            wait_s=round(seconds, 3),
            error=type(error).__name__,
            status=getattr(error, "status_code", None),
        )
