"""What ``host`` parses from its command line: click parameter types, and JSON Lines input.

Each type raises the host's own :class:`~core.errors.UsageError` (a click
exception with exit status 2), so that the message names the argument, says
what is wrong and what to type instead. Celery's own types
(``celery.bin.base``: ``JSON_ARRAY``, ``JSON_OBJECT``, ``ISO8601``) were
the starting point and do not fit as they are: their errors do not say which
argument or how to quote it, they accept nesting deep enough to break a
prefork worker, and ``ISO8601`` keeps a time without a zone naive, which
Celery then reads as UTC.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import click

from core.errors import UsageError

#: The deepest nesting of lists and objects accepted in an argument. Task
#: arguments are data, not trees hundreds of levels deep; a prefork worker
#: pickles them for its pool, and deep enough nesting breaks that pickling.
MAX_NESTING = 64
FLATTER = "pass flatter data, or a reference to it (a file name, a database id)"


class Seconds(click.ParamType):
    """A finite, non-negative number of seconds."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a number of seconds (0 or more)", param, ctx)
        return seconds


class JsonArgument(click.ParamType):
    """One positional task argument: ``'"Hello"'`` is a string, ``3`` a number, ``'[1, 2]'`` a list."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        # click converts the values of a variadic argument one by one, in order.
        position = _next_position(ctx, param)
        hint = f"quote a string twice, once for the shell and once for JSON: '\"{_shorten(value)}\"'"
        return json_value(value, f"argument {position} ({_clip(value)})", hint)


class JsonObject(click.ParamType):
    """Keyword arguments: a JSON object."""

    name = "json object"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dict):
            return value
        hint = "write --kwargs '{\"name\": 1}'"
        kwargs = json_value(value, f"--kwargs {_clip(value)}", hint)
        if not isinstance(kwargs, dict):
            raise UsageError(f"--kwargs must be a JSON object, got {_clip(value)}", hint=hint)
        return kwargs


class LocalIsoTime(click.ParamType):
    """An ISO 8601 time; one without a zone is local time, as the person typing it means."""

    name = "iso-8601"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            when = datetime.fromisoformat(value)
        except ValueError as e:
            raise UsageError(
                f"--eta {value!r} is not an ISO 8601 time", hint="write --eta 2030-01-31T09:00:00+00:00"
            ) from e
        return when if when.tzinfo else when.astimezone()


SECONDS = Seconds()
JSON_ARGUMENT = JsonArgument()
JSON_OBJECT = JsonObject()
ETA = LocalIsoTime()


def _next_position(ctx: click.Context | None, param: click.Parameter | None) -> int:
    if ctx is None:
        return 1
    key = f"host.position.{param.name if param else ''}"
    ctx.meta[key] = ctx.meta.get(key, 0) + 1
    return int(ctx.meta[key])


def json_value(text: str, what: str, hint: str) -> Any:
    """``text`` parsed as one JSON value, no deeper than :data:`MAX_NESTING`."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{what} is not a JSON value: {e}", hint=hint) from e
    except RecursionError:  # nesting deep enough to exhaust the parser's stack
        value, depth = None, MAX_NESTING + 1
    else:
        depth = nesting(value)
    if depth > MAX_NESTING:
        raise UsageError(f"{what} nests lists or objects more than {MAX_NESTING} levels deep", hint=FLATTER)
    return value


def nesting(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (a scalar is 0); not recursive."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_NESTING:
                return deepest
            stack.extend((child, depth + 1) for child in item)
    return deepest


def read_jsonl(lines: Iterable[str], source: str) -> Iterator[Any]:
    """The items of a JSON Lines file (``host send --many``): one JSON value per line; blank lines skipped.

    :raises UsageError: naming ``source`` and the line of a value that is not JSON.
    """
    from core.bulk import item_call

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise UsageError(
                f"{source}, line {number}: not a JSON value: {e}",
                hint='each line holds one item: [arg, ...] or {"args": [...], "kwargs": {...}}',
            ) from e
        if nesting(value) > MAX_NESTING:
            raise UsageError(
                f"{source}, line {number}: lists or objects nest more than {MAX_NESTING} levels deep",
                hint=FLATTER,
            )
        try:
            item_call(value, number)
        except UsageError as e:
            problem = e.message.removeprefix(f"item {number}: ")
            raise UsageError(f"{source}, line {number}: {problem}", hint=e.hint) from e
        yield value


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _clip(text: str) -> str:
    """A user's argument, quoted and shortened for an error message."""
    return repr(_shorten(text))
