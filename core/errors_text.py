"""Exceptions told in words, for the messages of plugin loading and discovery.

Both name what an extension's or a plugin's code raised, and where, and both
tell "not installed" from "broken inside" the same way. This module imports
nothing of the project.
"""

from __future__ import annotations

import os
import sys
import traceback


def exception_text(e: BaseException, within: str | None = None) -> str:
    """``ValueError: bad at /path/module.py, line 3``: the exception and where it was raised.

    ``within`` (a module name) picks the innermost frame in that module's
    top-level package, so a plugin's error points at the plugin's own line
    rather than at the library it called.
    """
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


def _where(e: BaseException, within: str | None) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return ""
    chosen = frames[-1]
    folder = _package_folder(within) if within else None
    if folder:
        chosen = next((f for f in reversed(frames) if f.filename.startswith(folder)), chosen)
    return f" at {chosen.filename}, line {chosen.lineno}"


def _package_folder(module: str) -> str | None:
    top = sys.modules.get(module.partition(".")[0])
    file = getattr(top, "__file__", None)
    if not file:
        return None
    # A package: its folder. A single-file module: the file itself.
    return os.path.dirname(file) + os.sep if os.path.basename(file) == "__init__.py" else file
