"""Shared by the framework tests: each framework runs for real, through the real SDK, against the emulator; the ``run``
fixture is one test's set-up (tests/frameworks/support.py).

Set before any framework is imported: litellm would fetch its price map from the internet at import, and the Agents
SDK would export traces to OpenAI.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.frameworks.support import Run
from tests.support.common import add
from tests.support.emulator import Emulator

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")


@pytest.fixture
def run(request: pytest.FixtureRequest, emu: Emulator, logs: list[dict[str, Any]]) -> Run:
    """The set-up for ``request.param`` (how autocontinue is applied): a fresh script of the story, log events."""
    return Run(request.param, emu, logs, add(emu))
