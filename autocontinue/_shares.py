"""Budgets of an ``n > 1`` call, shared by its choices.

A budget is per call, however many choices it asks for. The first request serves every choice, so its limit is
the budget's divided by ``n`` (each choice may write that many tokens) and its whole spend counts once. What it
leaves is split evenly: each choice continues as if it spent ``n`` times what it spends, so a choice stops when
its ``1/n`` share is used, and the call as a whole never exceeds the budget, whichever choice needs more. This is
done by projecting a choice's own state onto the call (:meth:`Share.project`), so every stop condition -
``max_rounds``, ``max_total_tokens``, ``max_cost`` or one of the caller's own - is shared the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .budget import BudgetState

__all__ = ["Share"]


@dataclass(frozen=True)
class Share:
    """The choices sharing a call's budgets, and what the first request (every choice's first reply) spent."""

    choices: int
    first_tokens: int  # completion tokens of the first request, all choices
    first_cost: float  # cost of the first request, all choices

    def project(self, own: BudgetState, own_first_tokens: int, own_first_cost: float) -> BudgetState:
        """The call-wide state a stop condition sees for one choice: the first request, plus ``n`` times what this
        choice spent after it (``own_first_*``: this choice's part of the first request, already in ``own``).

        ``rounds`` becomes ``n`` times the choice's rounds: with ``max_rounds(m)`` a choice goes on while
        ``n * rounds < m``, so the first request plus every choice's continuations stay within ``m`` requests.
        """
        n = self.choices
        return BudgetState(
            rounds=n * own.rounds,
            completion_tokens=self.first_tokens + n * (own.completion_tokens - own_first_tokens),
            cost_usd=self.first_cost + n * (own.cost_usd - own_first_cost),
            next_prompt_cost_usd=n * own.next_prompt_cost_usd,
            output_price_per_token=own.output_price_per_token,
            elapsed_s=own.elapsed_s,  # the call's time: the choices' rounds share the one clock
            longest_round_s=own.longest_round_s,
        )

    def tokens(self, left: int | None) -> int | None:
        """A choice's part of the tokens the call has left."""
        return None if left is None else left // self.choices
