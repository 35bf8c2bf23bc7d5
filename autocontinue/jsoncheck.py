"""Checking a joined JSON reply: well-formed, and (for the common keywords) matching its schema.

Only ``json`` from the standard library: the runtime dependencies stay what they are. The schema check covers
``type``, ``properties``, ``required``, ``additionalProperties: false``, ``items``, ``enum`` and ``const`` (what
structured-output schemas use); a keyword it does not know is not checked rather than guessed at.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["check_json"]

_TYPES: Mapping[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def check_json(text: str, schema: Mapping[str, Any] | None = None) -> str | None:
    """``None`` when ``text`` is JSON (matching ``schema`` if given), else what is wrong with it."""
    try:
        value = json.loads(text)
    except ValueError as error:
        return f"invalid JSON: {error}"
    return _check(value, schema, "$") if schema is not None else None


def _check(value: Any, schema: Mapping[str, Any], path: str) -> str | None:
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        allowed = tuple(t for name in names for t in _TYPES.get(name, (object,)))
        is_bool = isinstance(value, bool)
        if not isinstance(value, allowed) or (is_bool and "boolean" not in names):
            return f"{path}: expected {'/'.join(names)}, got {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r} is not one of {schema['enum']!r}"
    if "const" in schema and value != schema["const"]:
        return f"{path}: expected {schema['const']!r}"
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                return f"{path}: missing required property {name!r}"
        properties = schema.get("properties") or {}
        for name, item in value.items():
            if name in properties:
                problem = _check(item, properties[name], f"{path}.{name}")
                if problem:
                    return problem
            elif schema.get("additionalProperties") is False:
                return f"{path}: unexpected property {name!r}"
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            problem = _check(item, schema["items"], f"{path}[{i}]")
            if problem:
                return problem
    return None
