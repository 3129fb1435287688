"""Convert ini text to the types of Celery's option table.

Used for ``celery.*`` settings, ``host.*`` keys and plugin options alike, so
each type reads the same everywhere: ints, floats, bools
(``true/false/yes/no/on/off/1/0``), lists (whitespace or comma separated, or
JSON), dicts and anything structured as JSON.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from typing import Any

from core.errors import ConfigError
from core.masking import SECRET_KEY, mask

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def celery_options() -> dict[str, str]:
    """Celery's option table as ``{setting: type name}``."""
    from celery.app.defaults import NAMESPACES, flatten

    types = {}
    for key, option in flatten(NAMESPACES):
        kind = option.type
        # Celery's table names one type by the class instead of its name
        # (beat_cron_starting_deadline uses type=int).
        types[key] = kind.__name__ if isinstance(kind, type) else kind
    # Typed "any" in Celery's table, but only a number works: Celery warns about
    # "two" and quietly falls back to the CPU count.
    types["worker_concurrency"] = "int"
    return types


@functools.cache
def cached_celery_options() -> dict[str, str]:
    return celery_options()


def convert_value(kind: str, value: str, *, path: str, section: str | None, key: str) -> Any:
    """Convert an ini value to ``kind`` (a type name of Celery's option table).

    :raises ConfigError: naming ``path``, ``section`` and ``key`` when it does not convert.
    """
    text = value.strip()
    if text == "" and kind != "string":
        return [] if kind in ("list", "tuple") else None
    try:
        return _CONVERTERS.get(kind, _to_any)(text)
    except (ValueError, TypeError) as e:
        # A value that may hold a secret is not quoted back.
        shown = "the value" if SECRET_KEY.search(text) else repr(mask(text, key))
        # A number below 0 is a number: say the rule it breaks, not that it is no number.
        problem = "is out of range" if isinstance(e, _OutOfRange) else f"is not {_EXPECTED.get(kind, kind)}"
        raise ConfigError(f"{shown} {problem}: {e}", path=path, section=section, key=key) from e


class _OutOfRange(ValueError):
    """A number, but one no Celery setting means anything by."""


def _number(kind: Callable[[str], Any], text: str, example: str) -> Any:
    try:
        number = kind(text)
    except ValueError:
        raise ValueError(f"write {example}") from None
    # No Celery setting means anything by nan or an infinite count or time...
    if not math.isfinite(number):
        raise ValueError(f"write {example}")
    # ... nor by a negative one.
    if number < 0:
        raise _OutOfRange("it must be 0 or more")
    return number


def _to_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("use true/false, yes/no, on/off or 1/0")


def _to_list(text: str) -> list[Any]:
    if text.startswith("["):
        parsed = _json(text)
        if not isinstance(parsed, list):
            raise ValueError("expected a JSON list")
        # Every list setting (accept_content, include, ...) holds names.
        if not all(isinstance(item, str) for item in parsed):
            raise ValueError("expected a JSON list of strings")
        return parsed
    return [item for item in re.split(r"[\s,]+", text) if item]


def _to_dict(text: str) -> dict[str, Any]:
    parsed = _json(text)
    if not isinstance(parsed, dict):
        raise ValueError('expected a JSON object such as {"key": 1}')
    return parsed


def _to_any(text: str) -> Any:
    """Structured values are JSON; anything else stays a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "string": str,
    "str": str,
    "int": lambda text: _number(int, text, "a whole number such as 4"),
    "float": lambda text: _number(float, text, "a number such as 2.5"),
    "bool": _to_bool,
    "list": _to_list,
    "tuple": _to_list,
    "dict": _to_dict,
    "bytes": str.encode,
    "any": _to_any,
}
_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "list": "a list (space or comma separated, or JSON)",
    "tuple": "a list (space or comma separated, or JSON)",
    "dict": "a JSON object",
}
