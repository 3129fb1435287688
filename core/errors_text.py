"""Exceptions told in words, for the messages of plugin loading and discovery.

Both name what an extension's or a plugin's code raised, and where, and both
tell "not installed" from "broken inside" the same way. This module imports
nothing of the project.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


def exception_text(e: BaseException, within: str | None = None) -> str:
    """``ValueError: bad at /path/module.py, line 3``: the exception and where it was raised.

    ``within`` (a module name) picks the innermost frame in that module's
    top-level package, so a plugin's error points at the plugin's own line
    rather than at the library it called.
    """
    if isinstance(e, SyntaxError) and e.filename:
        # Raised by the import system: where it was raised is importlib's
        # frozen code; the author's file and line are the error's own.
        return f"{type(e).__name__}: {e.msg} at {e.filename}, line {e.lineno}"
    text = str(e)
    return (f"{type(e).__name__}: {text}" if text else type(e).__name__) + _where(e, within)


def explain_import_error(e: Exception, module: str) -> tuple[str, bool]:
    """Why importing ``module`` failed, and whether it is simply not installed.

    Tells "not installed" (the module itself, or a package holding it, is
    missing) from "broken inside" (it raised, or imports something missing).
    """
    missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
    if missing and (module == missing or module.startswith(missing + ".")):
        return "it is not installed", True
    if missing:
        return f"it imports {missing}, which is not installed", False
    return f"it raised {exception_text(e)}", False


def near(name: str, known: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The names of ``known`` closest to ``name`` (difflib), ``name`` itself left out."""
    return difflib.get_close_matches(name, [k for k in known if k != name], n=n, cutoff=cutoff)


def did_you_mean(name: str, known: Iterable[str], render: str = "{}") -> str | None:
    """``did you mean X?`` for the closest of ``known``, or None."""
    close = near(name, known)
    return f"did you mean {render.format(close[0])}?" if close else None


@dataclass(frozen=True)
class MissingModule:
    """A module path that names nothing, where the package it is in, or its distribution, is there.

    Not "not installed": a typo in the path (an entry point, or what
    ``task_imports()`` returned), told with what is there instead.
    """

    #: The first part of the path that does not exist (``myext.celery_imports``).
    missing: str
    #: Its package, which imported fine (``myext``); None for a top-level name.
    package: str | None
    #: The package's folder, or the folder the distribution is installed in.
    folder: str | None
    #: The modules of that package (or the distribution's top-level names).
    siblings: list[str] = field(default_factory=list)
    #: The same name inside one of the distribution's packages (``myext.tasks`` for ``tasks``).
    inside: str | None = None

    def suggestion(self, module: str) -> str | None:
        """``module`` with its missing part replaced by the closest existing name, if any."""
        if self.inside is not None:
            return self.inside + module[len(self.missing) :]
        close = near(self.missing.rpartition(".")[2], self.siblings)
        if not close:
            return None
        fixed = f"{self.package}.{close[0]}" if self.package else close[0]
        return fixed + module[len(self.missing) :]

    def what(self) -> str:
        """``package myext (/site/myext) has no module celery_imports``."""
        name = self.missing.rpartition(".")[2]
        if self.inside is not None:
            return f"no top-level module {name} is installed: a module path starts at its top-level package"
        if self.package is None:
            return f"no package or module {name} is installed"
        if not self.siblings and self.folder is None:
            return f"{self.package} is a module, not a package: it has no module {name}"
        return f"package {self.package} ({self.folder}) has no module {name}"


def missing_module(
    e: BaseException, module: str, top_level: Iterable[str] = (), folder: str | None = None
) -> MissingModule | None:
    """When importing ``module`` failed because a part of its path does not exist, and that
    looks like a typo rather than a missing installation: what is there instead. Else None.

    A missing submodule of a package that imported is always a typo (or a file
    the distribution does not ship). A missing top-level name is a typo only
    when the distribution has a top-level name close to it (``top_level``, read
    from its files); otherwise the distribution's code is simply not installed.
    """
    missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
    if not missing or not (module == missing or module.startswith(missing + ".")):
        return None
    package, _, name = missing.rpartition(".")
    if package:
        parent = sys.modules.get(package)
        path = getattr(parent, "__path__", None)
        if path is None:
            return MissingModule(missing, package, None)
        siblings = sorted(info.name for info in pkgutil.iter_modules(path))
        return MissingModule(missing, package, os.pathsep.join(path), siblings)
    tops = sorted(set(top_level))
    inside = [top for top in tops if _submodule_exists(top, name)]
    if inside:
        # A bare ``tasks`` for ``myext.tasks``: the distribution's package has it.
        return MissingModule(missing, None, folder, tops, inside=f"{inside[0]}.{name}")
    if not near(name, tops):
        return None
    return MissingModule(missing, None, folder, tops)


def _submodule_exists(package: str, name: str) -> bool:
    """Whether the installed package ``package`` has the module ``name`` (nothing is imported but it)."""
    parent = sys.modules.get(package)
    if parent is None:
        try:
            parent = importlib.import_module(package)
        except Exception:  # a broken package is reported on its own when it is imported
            return False
    path = getattr(parent, "__path__", None)
    return path is not None and any(info.name == name for info in pkgutil.iter_modules(path))


def raised_at(e: BaseException, within: str | None = None) -> str | None:
    """``/path/module.py, line 3``: where ``e`` was raised (in ``within``'s package, if given)."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return None
    chosen = frames[-1]
    folder = _package_folder(within) if within else None
    if folder:
        chosen = next((f for f in reversed(frames) if f.filename.startswith(folder)), chosen)
    return f"{chosen.filename}, line {chosen.lineno}"


def _where(e: BaseException, within: str | None) -> str:
    at = raised_at(e, within)
    return f" at {at}" if at else ""


def _package_folder(module: str) -> str | None:
    top = sys.modules.get(module.partition(".")[0])
    file = getattr(top, "__file__", None)
    if not file:
        return None
    # A package: its folder. A single-file module: the file itself.
    return os.path.dirname(file) + os.sep if os.path.basename(file) == "__init__.py" else file


def hookimpls_beside(module: str) -> list[tuple[str, int]]:
    """The modules of ``module``'s top-level package with ``@hookimpl`` functions, and how many.

    Read from their source, not imported: a module of tasks registers its tasks
    when imported, and a message must change nothing.
    """
    top = sys.modules.get(module.partition(".")[0])
    found = []
    for folder in getattr(top, "__path__", None) or []:
        for file in sorted(Path(folder).rglob("*.py")):
            count = _hookimpl_count(file)
            if count:
                parts = file.relative_to(folder).with_suffix("").parts
                name = ".".join((top.__name__, *parts))  # type: ignore[union-attr]  # top has a __path__
                found.append((name.removesuffix(".__init__"), count))
    return [(name, count) for name, count in found if name != module]


def _hookimpl_count(file: Path) -> int:
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except (OSError, SyntaxError, ValueError):
        return 0
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return sum(1 for f in functions if any(_is_hookimpl(d) for d in f.decorator_list))


def _is_hookimpl(decorator: ast.expr) -> bool:
    """``@hookimpl``, ``@plugins.hookimpl``, ``@hookimpl(tryfirst=True)``."""
    if isinstance(decorator, ast.Call):
        decorator = decorator.func
    name = decorator.attr if isinstance(decorator, ast.Attribute) else getattr(decorator, "id", None)
    return name == "hookimpl"
