"""Log events, politely.

A library must not decide where its logs go. When the application has configured structlog, events go through the
application's pipeline; otherwise they go to the standard ``logging`` logger ``"autocontinue"``, which prints
nothing unless the application enables it (structlog's unconfigured default would print every event to stdout).
Events carry counts, names and timings only: never message text or credentials, unless ``log_text`` is set.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

_stdlib = logging.getLogger("autocontinue")
_stdlib.addHandler(logging.NullHandler())
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def enabled(level: str) -> bool:
    """Whether an event at ``level`` would go anywhere (so that building it can be skipped)."""
    return structlog.is_configured() or _stdlib.isEnabledFor(_LEVELS[level])


def emit(level: str, event: str, **fields: Any) -> None:
    """Emit one event at ``level`` ("debug", "info", "warning") with key/value fields."""
    if structlog.is_configured():
        getattr(structlog.get_logger("autocontinue"), level)(event, **fields)
        return
    numeric = _LEVELS[level]
    if _stdlib.isEnabledFor(numeric):
        rendered = " ".join(f"{key}={value!r}" for key, value in fields.items())
        _stdlib.log(numeric, "%s %s", event, rendered, extra={"autocontinue": fields})
