"""autocontinue: LLM replies cut off by the output-token limit, continued until complete.

client = autocontinue.wrap(OpenAI(), max_rounds=8, max_total_tokens=20_000)
reply = client.chat.completions.create(model=..., messages=..., max_tokens=256)
reply.choices[0].message.content   # the whole answer
reply.continuation                 # rounds, stop cause, cost
"""

from .budget import Price, StopCondition, max_cost, max_rounds, max_total_tokens
from .client import acreate, create, trace_of
from .decorator import autocontinue, enabled
from .dialects import ContinueFinalMessage, Dialect, Instruction, Partial, Prefill, Prefix
from .errors import (
    AutocontinueError,
    ConfigurationError,
    ContinuationFailed,
    InvalidJSONError,
    MalformedResponse,
    TruncatedToolCallError,
    UnknownPriceError,
)
from .result import ContinuedChatCompletion
from .retry import default_retry, is_transient
from .trace import ContinuationTrace, RoundTrace
from .wrapping import wrap

__version__ = "0.1.0"

__all__ = [
    "AutocontinueError",
    "ConfigurationError",
    "ContinuationFailed",
    "ContinuationTrace",
    "ContinueFinalMessage",
    "ContinuedChatCompletion",
    "Dialect",
    "Instruction",
    "InvalidJSONError",
    "MalformedResponse",
    "Partial",
    "Prefill",
    "Prefix",
    "Price",
    "RoundTrace",
    "StopCondition",
    "TruncatedToolCallError",
    "UnknownPriceError",
    "__version__",
    "acreate",
    "autocontinue",
    "create",
    "default_retry",
    "enabled",
    "is_transient",
    "max_cost",
    "max_rounds",
    "max_total_tokens",
    "trace_of",
    "wrap",
]
