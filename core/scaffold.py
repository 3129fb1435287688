"""``host new-extension``: a new extension's names checked, and its files rendered from a template.

The template is ``core/templates/extension/``, rendered with copier (the
``scaffold`` extra): every file ending in ``.jinja`` is rendered and loses the
suffix, any other is copied. It writes a complete, installable distribution:
``pyproject.toml`` with both entry points, ``celery_import.py``, a task, a
plugin with one option and one command, tests written with the test kit's
fixtures, and a README. Nothing here writes a file by hand.

:func:`plan` checks everything before anything is asked or written: a name
that cannot be a distribution and a package, and a folder that exists, are
errors (exit 2).
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from core.errors import HostError, UsageError

TEMPLATE = Path(__file__).resolve().parent / "templates" / "extension"
#: The extra of host-framework that installs the template library.
EXTRA = "scaffold"

#: A distribution name (PEP 508): letters, digits, '-', '_' and '.', a letter or digit at each end.
_DISTRIBUTION = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class NewExtension:
    """What ``host new-extension NAME`` writes, and where."""

    #: The distribution's name, as given (``hostext-weather``); also its folder's.
    distribution: str
    #: Its Python package (``hostext_weather``).
    package: str
    #: The plugin's name in ``host.plugins``, its ``[plugin:NAME]`` section and its tasks' prefix.
    plugin: str
    #: The folder it is written to; it does not exist yet.
    folder: Path


#: Package names the generated layout itself uses: the package would merge with its tests.
_LAYOUT = frozenset({"tests", "test", "docs"})


def plan(name: str, directory: Path, commands: frozenset[str] = frozenset()) -> NewExtension:
    """The extension ``name`` in ``directory/name``, every name checked.

    :param commands: the host's own commands: the plugin adds ``host PACKAGE``, which
        must not be one of them.
    :raises UsageError: when ``name`` cannot be a distribution and a package, or the folder exists.
    """
    package = _package(name)
    if package.replace("_", "-") in commands or package in commands:
        raise UsageError(
            f"{name!r} would name the plugin {package!r}, whose command `host {package}` would clash with "
            f"the host's own `host {package.replace('_', '-')}`",
            hint="choose another name, for example with a prefix: hostext-" + name,
        )
    folder = directory / name
    if folder.exists() or folder.is_symlink():
        raise UsageError(
            f"{folder} already exists: new-extension never writes into an existing folder",
            hint="choose another NAME or --dir, or remove that folder",
        )
    return NewExtension(distribution=name, package=package, plugin=package, folder=folder)


def _package(name: str) -> str:
    """The package of the distribution ``name``: ``hostext-weather`` -> ``hostext_weather``."""
    hint = "use letters, digits and '-' or '_', starting with a letter: weather, hostext-weather"
    if not _DISTRIBUTION.match(name):
        raise UsageError(
            f"{name!r} cannot be a distribution name: only letters, digits, '-', '_' and '.' may be used, "
            "with a letter or digit at each end",
            hint=hint,
        )
    package = re.sub(r"[-_.]+", "_", name).lower()
    if not package.isidentifier():
        raise UsageError(
            f"{name!r} cannot name a Python package ({package!r}): it starts with a digit", hint=hint
        )
    if keyword.iskeyword(package):
        raise UsageError(f"{name!r} cannot name a Python package: {package!r} is a Python keyword", hint=hint)
    if package in _LAYOUT:
        raise UsageError(
            f"{name!r} would name the package {package!r}, a folder of the extension's own layout",
            hint="choose another name, for example with a prefix: hostext-" + name,
        )
    taken = _importable(package)
    if taken:
        raise UsageError(
            f"{name!r} would name the package {package!r}, but {taken} already has that name: "
            "one of them would hide the other",
            hint="choose another name, for example with a prefix: hostext-" + name,
        )
    return package


def _importable(package: str) -> str | None:
    """What already answers to ``import package`` here, described; None when nothing does."""
    if package in sys.stdlib_module_names:
        return "a module of the standard library"
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return f"an installed module ({spec.origin or next(iter(spec.submodule_search_locations or []), '?')})"


def write(new: NewExtension, *, description: str = "", author: str = "") -> Path:
    """Render the template into ``new.folder``; that folder.

    :raises HostError: when copier, the template library, is not installed, or the folder cannot be written.
    """
    try:
        import copier
    except ModuleNotFoundError as e:
        raise HostError(
            "host new-extension renders its template with copier, which is not installed",
            hint=f"pip install 'host-framework[{EXTRA}]'",
        ) from e
    answers = {
        "distribution": new.distribution,
        "package": new.package,
        "plugin": new.plugin,
        "description": description,
        "author": author,
        "host_version": _host_version(),
    }
    try:
        copier.run_copy(str(TEMPLATE), str(new.folder), data=answers, defaults=True, quiet=True)
    except OSError as e:
        raise HostError(f"could not write {new.folder}: {e}", hint="choose a folder you can write to") from e
    return new.folder


def _host_version() -> str:
    try:
        return metadata.version("host-framework")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0.1.0"
