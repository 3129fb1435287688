"""One schema for the options the host reads besides Celery's: ``host.*`` keys and plugin options.

An :class:`Option` has a type (as the ini converts it), a default, help text
and its checks; :meth:`Option.convert` turns the ini's text into the value,
or raises a :class:`~core.errors.ConfigError` naming file, section and key.
``celery.*`` settings are typed by Celery's own option table instead
(:mod:`core.convert`).

Plugins declare theirs with ``host_config_declarations`` and the
``declare`` callable :func:`declarer` makes, which checks each declaration.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.convert import convert_value
from core.errors import ConfigError

#: The types an option can have, as the ini converts them.
TYPES = ("string", "int", "float", "bool", "list", "dict", "any")
_NAME = re.compile(r"^[a-z][a-z0-9_.]*$")


@dataclass(frozen=True)
class Option:
    """One option: its name, type, default, help text and checks."""

    name: str
    type: str = "string"
    default: Any = None
    help: str = ""
    #: The values allowed; empty: any value of the type.
    choices: tuple[Any, ...] = ()
    #: The option must be given, and not empty.
    required: bool = False
    #: A regular expression the whole value must match, and what it means.
    pattern: tuple[str, str] | None = None
    #: For an int or float option, the smallest value allowed; None: no lower limit. 0 unless
    #: declared, as no count, size or time in seconds means anything below it.
    minimum: float | None = 0
    #: For an int or float option, the largest value allowed; None: no upper limit.
    maximum: float | None = None

    def convert(self, raw: str, *, path: str, section: str | None, key: str) -> Any:
        """The ini's text as this option's value, checked."""
        where = {"path": path, "section": section, "key": key}
        value: Any
        if self.type in _NUMBERS:
            value = self._number(raw, where)
        else:
            value = convert_value(self.type, raw, path=path, section=section, key=key)
        if self.required and value in ("", [], {}, None):
            raise ConfigError("this option is required and may not be empty", **where)
        if self.choices and value not in self.choices:
            allowed = ", ".join(str(choice) for choice in self.choices)
            raise ConfigError(f"{value!r} is not one of {allowed}", **where)
        if self.pattern and not re.fullmatch(self.pattern[0], value):
            raise ConfigError(f"{value!r} is not valid here: use {self.pattern[1]}", **where)
        return value

    def _number(self, raw: str, where: dict[str, Any]) -> int | float | None:
        text = raw.strip()
        if text == "":
            return None
        kind, expected, example = _NUMBERS[self.type]
        try:
            number = kind(text)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise ConfigError(f"{text!r} is not {expected}: write {example}", **where)
        if not self.in_range(number):
            raise ConfigError(f"{text!r} is out of range: {self.rule()}", **where)
        return number

    def in_range(self, number: float) -> bool:
        return (self.minimum is None or number >= self.minimum) and (
            self.maximum is None or number <= self.maximum
        )

    def rule(self) -> str:
        """``it must be 0 or more``, ``it must be between -90 and 90``: what :meth:`in_range` allows."""
        low, high = (_plain(limit) for limit in (self.minimum, self.maximum))
        if low is not None and high is not None:
            return f"it must be between {low} and {high}"
        return f"it must be {low} or more" if low is not None else f"it must be {high} or less"


#: The number types: how each converts, what it is called, an example.
_NUMBERS: dict[str, tuple[Callable[[str], Any], str, str]] = {
    "int": (int, "an integer", "a whole number such as 4"),
    "float": (float, "a number", "a number such as 2.5"),
}


def _plain(limit: float | None) -> str | None:
    """``0`` rather than ``0.0``; ``-90.5`` as it is."""
    if limit is None:
        return None
    return str(int(limit)) if float(limit).is_integer() else str(limit)


class BadDeclaration(Exception):
    """A plugin declared an option that cannot be (an invalid name, type or choices), and the fix."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


#: The parameters ``declare`` takes, in its order, for a message about one it does not.
_PARAMETERS = ("name", "type", "default", "help", "choices", "required", "minimum", "maximum")
#: Names other libraries give the types, for "did you mean".
_TYPE_ALIASES = {
    "str": "string",
    "integer": "int",
    "boolean": "bool",
    "number": "float",
    "dictionary": "dict",
}
#: What a default of each checked type must be: Python types, and how to write one.
_DEFAULTS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "a whole number such as default=3"),
    "float": ((int, float), "a number such as default=2.5"),
    "bool": ((bool,), "True or False"),
    "string": ((str,), 'a string such as default="text"'),
}


def declarer(options: dict[str, Option]) -> Callable[..., None]:
    """The ``declare`` callable a plugin's ``host_config_declarations`` gets; it fills ``options``."""

    def declare(
        name: str,
        *,
        type: str = "string",
        default: Any = None,
        help: str = "",
        choices: Sequence[Any] = (),
        required: bool = False,
        minimum: float | None | _Unset = _UNSET,
        maximum: float | None = None,
        **unknown: Any,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise BadDeclaration(f"declares the option {name!r}: use lower-case letters, digits, '_' and '.'")
        if unknown:
            _unknown_parameter(name, next(iter(unknown)))
        if name in options:
            raise BadDeclaration(f"declares the option {name!r} twice")
        if type not in TYPES:
            close = _TYPE_ALIASES.get(type) if isinstance(type, str) else None
            close = close or next(iter(difflib.get_close_matches(str(type), TYPES, n=1)), None)
            raise BadDeclaration(
                f"declares the option {name!r} with type {type!r}; use one of {', '.join(TYPES)}",
                hint=f'did you mean type="{close}"?' if close else None,
            )
        if isinstance(choices, str) or (choices and type in ("list", "dict")):
            raise BadDeclaration(
                f"declares the option {name!r} with choices {choices!r}: "
                "give a list of values, for a string, int, float, bool or any option"
            )
        low = _limits(name, type, minimum, maximum)
        option = Option(name, type, default, help, tuple(choices), required, minimum=low, maximum=maximum)
        _check_default(option)
        if type in _NUMBERS and isinstance(default, (int, float)) and not option.in_range(default):
            raise BadDeclaration(
                f"declares the option {name!r} with the default {default!r}, which is out of range: "
                + option.rule()
            )
        options[name] = option

    return declare


def _unknown_parameter(name: str, parameter: str) -> None:
    close = difflib.get_close_matches(parameter, _PARAMETERS, n=1)
    raise BadDeclaration(
        f"declares the option {name!r} with {parameter}=, which declare() does not take; it takes "
        + ", ".join(_PARAMETERS),
        hint=f"did you mean {close[0]}=?" if close else None,
    )


def _check_default(option: Option) -> None:
    """A default the option's own value could not be: of another type, or not one of its choices."""
    default, name = option.default, option.name
    if default is None:
        return
    kinds, example = _DEFAULTS.get(option.type, ((object,), ""))
    if isinstance(default, bool) and bool not in kinds or not isinstance(default, kinds):
        raise BadDeclaration(
            f"declares the {option.type} option {name!r} with the default {default!r}, which is not "
            f"{'an' if option.type == 'int' else 'a'} {option.type}",
            hint=f"give a default of the option's type, {example}, or None",
        )
    if option.choices and default not in option.choices:
        allowed = ", ".join(repr(choice) for choice in option.choices)
        raise BadDeclaration(
            f"declares the option {name!r} with the default {default!r}, which is not one of its "
            f"choices: {allowed}",
            hint="make the default one of the choices, or add it to them",
        )


class _Unset:
    """No minimum was declared: 0 for a number, as before bounds could be declared."""


_UNSET = _Unset()


def _limits(name: str, type: str, minimum: float | None | _Unset, maximum: float | None) -> float | None:
    """The declared minimum, checked with the maximum; 0 when a number option declares none."""
    if isinstance(minimum, _Unset):
        return 0 if type in _NUMBERS and (maximum is None or maximum >= 0) else None
    for what, limit in (("minimum", minimum), ("maximum", maximum)):
        if limit is None:
            continue
        if type not in _NUMBERS:
            raise BadDeclaration(
                f"declares the option {name!r} with a {what}: only int and float options have one"
            )
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit):
            raise BadDeclaration(
                f"declares the option {name!r} with the {what} {limit!r}: give a number, or None"
            )
    if minimum is not None and maximum is not None and minimum > maximum:
        raise BadDeclaration(
            f"declares the option {name!r} with a minimum ({minimum!r}) above its maximum ({maximum!r})"
        )
    return minimum
