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

    def convert(self, raw: str, *, path: str, section: str | None, key: str) -> Any:
        """The ini's text as this option's value, checked."""
        value = convert_value(self.type, raw, path=path, section=section, key=key)
        where = {"path": path, "section": section, "key": key}
        if self.required and value in ("", [], {}):
            raise ConfigError("this option is required and may not be empty", **where)
        if self.choices and value not in self.choices:
            allowed = ", ".join(str(choice) for choice in self.choices)
            raise ConfigError(f"{value!r} is not one of {allowed}", **where)
        if self.pattern and not re.fullmatch(self.pattern[0], value):
            raise ConfigError(f"{value!r} is not valid here: use {self.pattern[1]}", **where)
        return value


class BadDeclaration(Exception):
    """A plugin declared an option that cannot be (an invalid name, type or choices)."""


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
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise BadDeclaration(f"declares the option {name!r}: use lower-case letters, digits, '_' and '.'")
        if name in options:
            raise BadDeclaration(f"declares the option {name!r} twice")
        if type not in TYPES:
            raise BadDeclaration(
                f"declares the option {name!r} with type {type!r}; use one of {', '.join(TYPES)}"
            )
        if isinstance(choices, str) or (choices and type in ("list", "dict")):
            raise BadDeclaration(
                f"declares the option {name!r} with choices {choices!r}: "
                "give a list of values, for a string, int, float, bool or any option"
            )
        options[name] = Option(name, type, default, help, tuple(choices), required)

    return declare
