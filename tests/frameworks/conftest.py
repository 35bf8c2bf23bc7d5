"""Shared by the framework tests: each framework runs for real, through the real SDK, against the emulator.

Set before any framework is imported: litellm would fetch its price map from the internet at import, and the Agents
SDK would export traces to OpenAI.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
