"""Reading ini files the PasteDeploy way: ``%(here)s``, ``[DEFAULT]``, ``use = config:base.ini``.

:func:`read_chain` reads the file passed and every base file it names through
``use``, merges them key by key, and remembers which file each key was written
in, so that an error can name that file. :mod:`core.config` turns the merged
``[app:main]`` into typed settings.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.masking import mask_text

APP_SECTION = "app:main"


def _read(ini: Path) -> configparser.ConfigParser:
    """The file passed: a valid ini with an ``[app:main]`` section."""
    parser = _parse(ini)
    if not parser.has_section(APP_SECTION):
        raise ConfigError(
            f"has no [{APP_SECTION}] section",
            path=str(ini),
            hint=f"put the host.* and celery.* settings under a [{APP_SECTION}] header",
        )
    return parser


def _parse(ini: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=configparser.BasicInterpolation())
    try:
        with ini.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except configparser.Error as e:
        raise ConfigError(
            f"not a valid ini file: {mask_text(one_line(e))}",
            path=str(ini),
            hint="fix the line named above; see docs/configuration.md for the format",
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"cannot be read: {e}", path=str(ini), hint="the file must be readable and saved as UTF-8"
        ) from e
    return parser


def interpolation_variables(ini: Path) -> dict[str, str]:
    """``%(here)s`` and ``%(__file__)s``, escaped: a folder may have a % in its name."""
    return {"here": str(ini.parent).replace("%", "%%"), "__file__": str(ini).replace("%", "%%")}


_INTERPOLATION_HINT = "use %(here)s for the ini's folder and write a literal % as %%"


def section_values(
    parser: configparser.ConfigParser, section: str, origin: Callable[[str, str], Path]
) -> dict[str, str]:
    """The keys written in ``section`` of a merged parser (:func:`read_chain`), interpolated.

    :param origin: ``(section, key)`` -> the file the key was written in, which
        an error names.
    """
    values = {}
    for key in _written_keys(parser, section):
        try:
            values[key] = parser.get(section, key)
        except configparser.Error as e:
            raise ConfigError(
                f"cannot interpolate the value: {_interpolation_problem(e, parser.defaults())}",
                path=str(origin(section, key)),
                section=section,
                key=key,
                hint=_INTERPOLATION_HINT,
            ) from e
    return values


def _written_keys(parser: configparser.ConfigParser, section: str) -> list[str]:
    # options() lists the [DEFAULT] names too; like PasteDeploy, a name defined
    # there is a variable, never a setting of the section.
    return [k for k in parser.options(section) if k not in parser.defaults()]


def _interpolation_problem(error: configparser.Error, defaults: Mapping[str, str]) -> str:
    # configparser's own messages quote the raw value, which may hold a password.
    if isinstance(error, configparser.InterpolationMissingOptionError):
        names = "here and __file__"
        if defaults:
            names = f"here, __file__ and the names in [DEFAULT]: {', '.join(sorted(defaults))}"
        return f"%({error.reference})s is not defined (the variables are {names})"
    if isinstance(error, configparser.InterpolationDepthError):
        return "the value refers to itself, directly or through other keys"
    return "a % must be followed by (name)s or by another %"


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


# -- one base file, thin files per environment (use = config:FILE) ----------

#: The ``[app:main]`` key naming the file this one builds on, as in PasteDeploy.
USE_KEY = "use"
#: The sections ``logging.config.fileConfig`` reads: taken whole from one file.
_LOGGING_SECTIONS = ("loggers", "handlers", "formatters")
_LOGGING_PREFIXES = ("logger_", "handler_", "formatter_")
#: ``%%`` (left alone) or a reference to ``here``/``__file__``; configparser
#: lower-cases the names it looks up, so ``%(HERE)s`` is the same variable.
_FILE_VARIABLE = re.compile(r"%%|%\((here|__file__)\)s", re.IGNORECASE)


@dataclass(frozen=True)
class IniChain:
    """The file passed, merged with the files it builds on through ``use = config:FILE``."""

    path: Path
    #: Every file's sections and ``[DEFAULT]``, a file's keys overriding its base's.
    parser: configparser.ConfigParser
    #: ``path``, then the file it uses, then that file's base...
    files: tuple[Path, ...]
    #: The file each key was written in, keyed ``(section, key)``.
    written_in: dict[tuple[str, str], Path]
    #: The first of ``files`` that has ``[loggers]``: its logging sections are used.
    logging_path: Path | None

    def origin(self, section: str, key: str) -> Path:
        return self.written_in.get((section, key), self.path)


def read_chain(ini: Path) -> IniChain:
    """Read ``ini`` and every file it builds on, and merge them.

    PasteDeploy's rules, which CKAN and Pyramid users know: the keys of a
    file's sections override its base's, key by key, and so do the names of
    its ``[DEFAULT]``; ``%(here)s`` and ``%(__file__)s`` are those of the file
    where they are written. Other names are looked up in the merged
    ``[DEFAULT]``, as CKAN 2.10 does, so that a thin file can move every path
    of its base by redefining one name. Logging sections are not merged: they
    come whole from the first file that has ``[loggers]``, since a handler of
    one file and a logger of another were never tested together.
    """
    return _merge(_read_files(ini))


def _read_files(ini: Path) -> list[tuple[Path, configparser.ConfigParser]]:
    """``ini``, then each file named by the last one's ``use``; a cycle is an error."""
    files = [(ini, _read(ini))]
    while (base := _base_of(*files[-1])) is not None:
        seen = [path for path, _ in files]
        if base in seen:
            cycle = " -> ".join(str(path) for path in [*seen[seen.index(base) :], base])
            raise _use_error(
                files[-1][0],
                f"the files use each other in a cycle: {cycle}",
                hint="a base file must not use, directly or through others, a file that uses it",
            )
        files.append((base, _read_base(base, files[-1][0])))
    return files


def _base_of(ini: Path, parser: configparser.ConfigParser) -> Path | None:
    """The file named by ``use = config:FILE`` in ``[app:main]``; None when there is no ``use``."""
    if USE_KEY not in _written_keys(parser, APP_SECTION):
        return None
    try:
        use = parser.get(APP_SECTION, USE_KEY, vars=interpolation_variables(ini)).strip()
    except configparser.Error as e:
        problem = _interpolation_problem(e, parser.defaults())
        raise _use_error(ini, f"cannot interpolate the value: {problem}", hint=_INTERPOLATION_HINT) from e
    if not use:  # an empty value means "not set", as everywhere in the file
        return None
    scheme, colon, rest = use.partition(":")
    target, _, name = (part.strip() for part in rest.partition("#"))
    usage = "write use = config:base.ini, a path relative to the folder of this file"
    if not colon or scheme.strip().lower() != "config":
        raise _use_error(
            ini,
            f"{mask_text(use)!r} is not a config: URI: only another ini file can be used",
            hint=f"{usage} (PasteDeploy's egg: and call: make no sense here)",
        )
    if name not in ("", "main"):
        raise _use_error(ini, f"#{name} names [app:{name}]: only [{APP_SECTION}] can be used", hint=usage)
    if not target:
        raise _use_error(ini, "config: names no file", hint=usage)
    return _existing_base(ini, Path(os.path.normpath(ini.parent / target)))


def _existing_base(ini: Path, base: Path) -> Path:
    try:
        is_dir, is_file = base.is_dir(), base.is_file()
    except OSError as e:  # is_file() is False only for a missing file; a name too long raises
        raise _use_error(ini, f"{base} cannot be opened: {e.strerror}", hint="check the path") from e
    if is_dir:
        raise _use_error(ini, f"{base} is a folder", hint="name the ini file inside it")
    if not is_file:
        raise _use_error(
            ini,
            f"{base} does not exist",
            hint=f"a relative path is taken from the folder of the file that says use ({ini.parent})",
        )
    return base.resolve()


def _read_base(base: Path, user: Path) -> configparser.ConfigParser:
    parser = _parse(base)
    if not parser.has_section(APP_SECTION):
        raise _use_error(
            user,
            f"{base} has no [{APP_SECTION}] section",
            hint=f"a base file holds its settings under [{APP_SECTION}] too",
        )
    return parser


def _use_error(ini: Path, message: str, *, hint: str) -> ConfigError:
    return ConfigError(message, path=str(ini), section=APP_SECTION, key=USE_KEY, hint=hint)


def _merge(files: list[tuple[Path, configparser.ConfigParser]]) -> IniChain:
    logging_path = next((path for path, parser in files if parser.has_section("loggers")), None)
    merged = configparser.ConfigParser(interpolation=_InterpolateOnRead())
    written_in: dict[tuple[str, str], Path] = {}
    for path, parser in reversed(files):  # the bases first: a file overrides what it uses
        for name, value in parser.defaults().items():
            merged.set(configparser.DEFAULTSECT, name, _pin_file_variables(value, path))
        for section in parser.sections():
            if _is_logging(section) and path != logging_path:
                continue
            if not merged.has_section(section):
                merged.add_section(section)
            for key in _written_keys(parser, section):
                if (section, key) != (APP_SECTION, USE_KEY):
                    merged.set(section, key, _pin_file_variables(parser.get(section, key, raw=True), path))
                    written_in[section, key] = path
    return IniChain(files[0][0], merged, tuple(path for path, _ in files), written_in, logging_path)


def _is_logging(section: str) -> bool:
    return section in _LOGGING_SECTIONS or section.startswith(_LOGGING_PREFIXES)


def _pin_file_variables(value: str, ini: Path) -> str:
    """``value`` with ``%(here)s`` and ``%(__file__)s`` replaced by ``ini``'s own, escaped.

    Merged, a value no longer knows its file; PasteDeploy gives each key the
    ``here`` of the file it was written in, so it is fixed before merging.
    """
    variables = interpolation_variables(ini)
    return _FILE_VARIABLE.sub(lambda m: variables[m[1].lower()] if m[1] else m[0], value)


class _InterpolateOnRead(configparser.BasicInterpolation):
    """Check a value's ``%`` syntax when it is read, not when it is merged in,
    where an error could not yet name the key (:func:`section_values` does)."""

    def before_set(self, parser: Any, section: str, option: str, value: str) -> str:
        return value
