"""autocontinue: LLM replies cut off by the output-token limit, continued until complete.

client = autocontinue.wrap(OpenAI(), max_rounds=8, max_total_tokens=20_000)
reply = client.chat.completions.create(model=..., messages=..., max_tokens=256)
reply.choices[0].message.content   # the whole answer
reply.continuation                 # rounds, stop cause, cost

The top level holds what the README's usage shows: the ways to call (``wrap``, ``create``, ``acreate``, the
``autocontinue`` decorator, ``enabled``), the trace (``trace_of``, ``ContinuationTrace``), budgets (``Price``,
``max_rounds``, ``max_cost``, ``max_total_tokens``, ``max_seconds``), the retry policy (``default_retry``) and the
errors a caller catches, with their base ``AutocontinueError``. The rest stays in its public module: the dialects in
:mod:`autocontinue.dialects`, the other errors in :mod:`autocontinue.errors`, ``RoundTrace`` in
:mod:`autocontinue.trace`, ``StopCondition`` in :mod:`autocontinue.budget`, ``is_transient`` in
:mod:`autocontinue.retry`, ``ContinuedChatCompletion`` in :mod:`autocontinue.result`.
"""

from .budget import Price, max_cost, max_rounds, max_seconds, max_total_tokens
from .client import acreate, create, trace_of
from .decorator import autocontinue, enabled
from .errors import (
    AutocontinueError,
    ConfigurationError,
    ContinuationFailed,
    InvalidJSONError,
    MalformedResponse,
    TruncatedToolCallError,
)
from .retry import default_retry
from .trace import ContinuationTrace
from .wrapping import wrap

__version__ = "0.1.0"

__all__ = [
    "AutocontinueError",
    "ConfigurationError",
    "ContinuationFailed",
    "ContinuationTrace",
    "InvalidJSONError",
    "MalformedResponse",
    "Price",
    "TruncatedToolCallError",
    "__version__",
    "acreate",
    "autocontinue",
    "create",
    "default_retry",
    "enabled",
    "max_cost",
    "max_rounds",
    "max_seconds",
    "max_total_tokens",
    "trace_of",
    "wrap",
]
