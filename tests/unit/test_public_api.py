"""The public surface is what the README shows: the Public API paragraph names the top level exactly, and every
``autocontinue.<name>`` the README's code uses is there."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import autocontinue

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _public_api_paragraph() -> str:
    section = README.split("### Public API", 1)[1]
    return section.split("Everything else public lives in its module", 1)[0]


def test_the_public_api_paragraph_names_the_top_level_exactly() -> None:
    named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", _public_api_paragraph())) - {"autocontinue"}
    named.add("autocontinue")  # the decorator, named as `autocontinue` like the package
    assert named == set(autocontinue.__all__)


def test_every_top_level_name_the_readme_code_uses_exists() -> None:
    blocks = "\n".join(re.findall(r"```python\n(.*?)```", README, flags=re.S))
    used = set(re.findall(r"\bautocontinue\.([A-Za-z_][A-Za-z0-9_]*)\b", blocks))
    assert used, "the README's code shows no autocontinue.<name>"
    # A name is either at the top level or one of the package's public modules (autocontinue.local, ...).
    missing = sorted(
        name
        for name in used
        if name not in autocontinue.__all__
        and (name.startswith("_") or importlib.util.find_spec(f"autocontinue.{name}") is None)
    )
    assert not missing, missing
