"""Headroom: what a call's budgets leave it. The state its stop conditions see, whether it must stop, and the
output limit of each round within what is left.

The stop conditions themselves are ``budget``'s, what was spent ``_accounting``'s and the doubling rule for a
round's limit ``_limits``'s; this module puts them together for the core, with the prompt tokens the dialect adds
around the prefix counted in the next round's cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _limits
from ._accounting import Accounting
from ._answer import Answer
from ._options import Settings
from ._planning import Planner
from ._round import Round
from .budget import BudgetState, conditions_of
from .errors import ConfigurationError
from .request import CallRequest

__all__ = ["Headroom"]


class Headroom:
    """The budgets of one call (one choice of it, for ``n > 1``) as its rounds see them."""

    def __init__(
        self,
        spent: Accounting,
        settings: Settings,
        *,
        call: CallRequest,
        plan: Planner,
        answer: Answer,
        clock: Callable[[], float],
        started: float,
    ) -> None:
        """A cost budget that does not cover the prompt is a configuration error, raised here: nothing is sent.
        ``clock`` is read for the time since ``started`` (the call's start, by the same clock)."""
        self._spent = spent
        self._clock = clock
        #: when the call started, by ``clock``
        self.started = started
        self._stop = settings.stop
        self._cap = settings.max_round_tokens
        self._call = call
        self._plan = plan
        self._answer = answer
        self.limits = _limits.RoundLimits(settings.max_round_tokens)
        if settings.stop.needs_price:
            left = spent.tokens_left(self.state())
            if left is not None and left <= 0:
                raise ConfigurationError(
                    f"the cost budget does not cover the prompt of this call (about {spent.prompt_tokens} "
                    f"tokens of {call.model!r})"
                )

    def state(self, *, rounds: int = 0, tokens: int = 0, cost: float = 0.0) -> BudgetState:
        """The call so far as the stop conditions see it (see :meth:`Accounting.state`)."""
        spent = self._spent
        overhead = (
            spent.overhead(self._plan.dialect, self._answer.text, self._call.prefix_template) if spent.price else 0
        )
        elapsed = self._clock() - self.started
        return spent.state(overhead, rounds=rounds, tokens=tokens, cost=cost, elapsed=elapsed)

    def stop_cause(self) -> str | None:
        """Why the call must stop now, if a stop condition says so."""
        return self._stop(self.state())

    def out_of_time(self, *, after: float) -> bool:
        """Whether waiting ``after`` seconds (a retry's wait) would leave no time for the round: then the call ends
        now, with its error, rather than wait past a deadline such as a client's timeout."""
        state = self.state()
        later = state._replace(elapsed_s=state.elapsed_s + after)
        # Each condition on its own: another budget's cause, first in the composition, must not hide this one.
        return any(condition(later) == "time_budget" for condition in conditions_of(self._stop))

    def exhausted(self) -> str | None:
        """Why a call whose round was cut must stop now: a stop condition, or no completion tokens left."""
        state = self.state()
        cause = self._stop(state)
        if cause is None and self._spent.tokens_left(state) == 0:
            cause = "token_budget"
        return cause

    def limit(self, kwargs: dict[str, Any], *, first_of_n: bool) -> None:
        """Keep the caller's per-round limit (or a retried round's larger one), lowered to what budgets allow."""
        left = self._spent.tokens_left(self.state())
        n = self._call.kwargs.get("n", 1)
        if left is not None and first_of_n and n > 1:
            # The first request of an n > 1 call: every choice may write the limit, so each gets its share.
            left //= n
        self.limits.apply(kwargs, left=left, default_name=self._plan.dialect.limit_parameter)

    def retry_larger(self, current: Round) -> bool:
        """Whether ``current`` is retried once with a doubled limit: only if the budgets leave room for more than it
        had, the round just spent counted (it is paid for). The next round then asks for it."""
        if not self.limits.may_retry(current.kwargs):
            return False
        spent = self._spent
        usage, _ = spent.usage_of(current)
        after = self.state(rounds=1, tokens=usage.completion_tokens, cost=spent.cost_of(usage) or 0.0)
        if self._stop(after) is not None:
            return False
        larger = _limits.larger(current.kwargs, left=spent.tokens_left(after), cap=self._cap)
        if larger is None:
            return False
        self.limits.retry_with(larger)
        return True

    def after_stall(self, current: Round, *, wider: bool) -> bool:
        """Whether a round that only regenerated held-back text (or only repeated known text) is followed by one
        that can add to the answer (see :meth:`~autocontinue._limits.RoundLimits.after_stall`)."""
        return self.limits.after_stall(current.kwargs, wider=wider, left=lambda: self._spent.tokens_left(self.state()))
