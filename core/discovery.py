"""Find the tasks installed extensions contribute (CKAN's ``celery_task`` pattern).

An extension's ``setup.py`` names a function in the entry-point group
``host.celery_task``::

    entry_points={"host.celery_task": ["tasks = example_ext.celery_import:task_imports"]}

:func:`discover` calls each such ``task_imports()``, imports every module it
returns, and records which task names each module registered on the app.
Every failure becomes an :class:`~core.errors.ExtensionError` that names the
distribution and version, the entry point, the module and the cause; nothing
is raised from here, so ``host tasks`` can show every problem at once.
"""

from __future__ import annotations

import difflib
import importlib
import itertools
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from core.config import APP_SECTION, ENVIRONMENT, HostConfig
from core.entrypoints import (
    TASK_GROUP,
    Installed,
    describe,
    fix_and_reinstall,
    identified,
    installed_entry_points,
    normalize,
    reinstall_command,
    top_level_names,
)
from core.errors import ConfigError, DuplicateTaskError, ExtensionError, HostError, UsageError
from core.errors_text import (
    did_you_mean,
    exception_text,
    explain_import_error,
    missing_module,
    near,
    raised_at,
)

if TYPE_CHECKING:
    from core.plugin_manager import HostPluginManager

GROUP = TASK_GROUP
_MODULE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass
class Extension:
    """One ``host.celery_task`` entry point and what it contributed."""

    distribution: str
    version: str
    entry_point: str
    modules: list[str] = field(default_factory=list)
    #: task name -> module that registered it
    tasks: dict[str, str] = field(default_factory=dict)
    error: ExtensionError | None = None
    disabled: bool = False
    #: How its modules are named, for messages: the entry point's function,
    #: or a plugin's ``host_task_imports`` hook.
    call: str = "task_imports()"
    #: The plugin name, when the modules come from a plugin's hook.
    plugin: str | None = None
    #: The installed distribution, for messages (its files, where it was installed from).
    dist: metadata.Distribution | None = field(default=None, repr=False, compare=False)
    #: The file (and line) of the function that named the modules, for messages.
    source: str | None = None
    #: Tasks its modules registered before it failed, removed again: no worker runs them.
    lost: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass
class Discovery:
    """The outcome of one discovery run."""

    extensions: list[Extension]
    #: Problems of the configuration discovery found (a misspelled ``host.celery_task.disabled``).
    problems: list[HostError] = field(default_factory=list)

    @property
    def errors(self) -> list[HostError]:
        return [*self.problems, *(ext.error for ext in self.extensions if ext.error is not None)]

    @property
    def modules(self) -> list[str]:
        return [m for ext in self.active for m in ext.modules]

    @property
    def active(self) -> list[Extension]:
        return [ext for ext in self.extensions if not ext.disabled and ext.error is None]

    def task_rows(self) -> list[dict[str, str]]:
        """One row per task: name, extension, distribution version, module."""
        return sorted(
            (
                {"task": task, "extension": ext.distribution, "version": ext.version, "module": module}
                for ext in self.active
                for task, module in ext.tasks.items()
            ),
            key=lambda row: row["task"],
        )

    @property
    def task_names(self) -> list[str]:
        return [row["task"] for row in self.task_rows()]


def _installed(group: str) -> tuple[list[Installed], list[Installed]]:
    """Each installed entry point of ``group`` with its distribution's name and version, sorted;
    and those declared in a near miss of the group's name."""
    scan = installed_entry_points([group])
    return _sorted(scan[group]), _sorted(scan.misgrouped.get(group, []))


def _sorted(found: Iterable[Installed]) -> list[Installed]:
    return sorted(found, key=lambda item: (item.sort_name, item.entry_point.name))


def _task_entry_points(
    entry_points: Iterable[metadata.EntryPoint] | None, pm: HostPluginManager | None
) -> tuple[list[Installed], list[Installed]]:
    """The entry points discovery goes through: given, else those plugin loading found, else
    installed; and the entry points of a misspelled group (none when they were given)."""
    if entry_points is not None:
        return identified(entry_points), []
    if pm is not None and pm.installed is not None:
        # The plugin manager's scan covered this group too: one look at the
        # installed distributions serves both (core/entrypoints.py).
        misgrouped = getattr(pm.installed, "misgrouped", {}).get(GROUP, [])
        return _sorted(pm.installed[GROUP]), _sorted(misgrouped)
    return _installed(GROUP)


def check_task_name(name: str, known: Iterable[str], broken: Sequence[str] = ()) -> None:
    """An unknown name is an error listing the closest known names."""
    known = list(known)
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    message = f"unknown task {name!r}"
    if close:
        message += f"; did you mean {', '.join(close)}?"
    if broken:
        message += f" ({len(broken)} extension(s) failed to load and may hold it: {', '.join(broken)})"
    raise UsageError(message, hint="'host tasks' lists every task the installed extensions provide")


def discover(
    app: Any,
    config: HostConfig,
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    plugin_manager: HostPluginManager | None = None,
) -> Discovery:
    """Import every enabled extension's task modules into ``app``.

    The modules come from the ``host.celery_task`` entry points, then from the
    ``host_task_imports`` hook of each active plugin; both go through the same
    checks. A module an earlier source already imported is not imported twice.

    :param app: the configured Celery app the task modules register on.
    :param config: supplies ``host.celery_task.disabled``.
    :param entry_points: for tests; default: the installed ``host.celery_task`` ones, as
        the plugin manager found them when it was made (one scan serves both), else as
        installed now.
    :param plugin_manager: the loaded plugins; default: the app's own.
    """
    pm = plugin_manager if plugin_manager is not None else getattr(app, "host_plugins", None)
    disabled = {normalize(name) for name in config.host["celery_task.disabled"]}
    # Until an app is finalized, @app.task only queues the task and registers
    # it on the next access to app.tasks; a duplicate name would then raise
    # there, outside the import of the module that caused it.
    app.finalize()
    extensions = []
    owners: dict[str, Extension] = {}
    index = _TaskIndex(app.tasks)
    installed, misgrouped = _task_entry_points(entry_points, pm)
    for ep, name, version in installed:
        ext = Extension(name, version, describe(ep), dist=ep.dist)
        extensions.append(ext)
        if normalize(ext.distribution) in disabled:
            ext.disabled = True
            continue
        try:
            _load(app, _import_entry_point(ep, ext), ext, owners, index)
        except ExtensionError as e:
            ext.error = e
            _unload(app, ext, index)
    for ep, name, version in misgrouped:
        ext = Extension(name, version, describe(ep), dist=ep.dist)
        extensions.append(ext)
        ext.disabled = normalize(ext.distribution) in disabled
        if not ext.disabled:
            ext.error = _misgrouped(ext, ep.group)
    for plugin in pm.implementing("host_task_imports") if pm is not None else []:
        assert pm is not None
        ext = Extension(
            plugin.distribution or "?",
            plugin.version or "?",
            plugin.entry_point or plugin.name,
            call="host_task_imports()",
            plugin=plugin.name,
            source=_defined_at(getattr(plugin.obj, "host_task_imports", None)),
        )
        extensions.append(ext)
        try:
            _load(app, pm.caller(plugin, "host_task_imports"), ext, owners, index)
        except ExtensionError as e:
            ext.error = e
            _unload(app, ext, index)
    return Discovery(extensions, _misspelled_disabled(config, extensions))


def _misspelled_disabled(config: HostConfig, extensions: list[Extension]) -> list[HostError]:
    """A name in ``host.celery_task.disabled`` close to an installed extension's, but not it.

    It disables nothing, silently; a name far from every installed one may be
    an extension installed elsewhere, and is left alone.
    """
    key = "host.celery_task.disabled"
    installed = {normalize(ext.distribution): ext.distribution for ext in extensions if ext.plugin is None}
    problems: list[HostError] = []
    for name in config.host["celery_task.disabled"]:
        close = near(normalize(name), installed, cutoff=0.8)
        if normalize(name) in installed or not close:
            continue
        source = config.sources.get(key, "file")
        where = (
            {"path": ENVIRONMENT, "section": None, "key": source.removeprefix("env ")}
            if source.startswith("env ")
            else {"path": str(config.origin(APP_SECTION, key)), "section": APP_SECTION, "key": key}
        )
        problems.append(
            ConfigError(
                f"{name!r} is no installed extension, so it disables nothing",
                **where,
                hint=f"did you mean {installed[close[0]]}?",
            )
        )
    return problems


def _load(
    app: Any,
    task_imports: Callable[[], Any],
    ext: Extension,
    owners: dict[str, Extension],
    index: _TaskIndex,
) -> None:
    modules = _call_task_imports(task_imports, ext)
    # A module another source imported stays that source's (an extension in
    # the middle of moving from the entry point to the plugin hook).
    ext.modules = [m for m in modules if m not in owners]
    for module in ext.modules:
        owners[module] = ext
        _import_task_module(app, module, ext, owners)
        ext.tasks.update((name, module) for name in index.defined_in(module))


def _defined_in(task: Any, module: str) -> bool:
    return getattr(task, "__module__", None) == module


class _TaskIndex:
    """The app's task names by the module that defined them, kept current as modules are imported.

    Looking through every registered task after each import made discovery
    quadratic in the number of extensions. The registry is a dict, so tasks a
    module registers are appended to it; only those are read after an import.
    """

    def __init__(self, tasks: dict[str, Any]) -> None:
        self.tasks = tasks
        self.by_module: dict[str, list[str]] = {}
        #: How many tasks are indexed, and the name of the newest of them.
        self.indexed = 0
        self.last: str | None = None
        self.update()

    def rebuild(self) -> None:
        """Index the registry from scratch (after tasks were removed from it)."""
        self.by_module, self.indexed, self.last = {}, 0, None
        self.update()

    def update(self) -> None:
        added = len(self.tasks) - self.indexed
        # The ``added`` newest entries and the one before them, newest first.
        newest = list(itertools.islice(reversed(self.tasks.items()), max(added, 0) + 1))
        before = newest[added][0] if 0 <= added < len(newest) else None
        if added < 0 or before != self.last:
            # Not only appended to since the last look (a task was removed): start again.
            self.rebuild()
            return
        for name, task in reversed(newest[:added]):
            self.by_module.setdefault(getattr(task, "__module__", None) or "", []).append(name)
        self.indexed = len(self.tasks)
        self.last = newest[0][0] if newest else None

    def defined_in(self, module: str) -> list[str]:
        """The names of the tasks defined in ``module``, in the order they were registered."""
        self.update()
        return self.by_module.get(module, [])


def _import_entry_point(ep: metadata.EntryPoint, ext: Extension) -> Any:
    module = ep.module
    try:
        loaded = importlib.import_module(module)
    except Exception as e:
        raise _import_failure(e, module, ext, what="its entry point") from e
    try:
        function = ep.load()
    except AttributeError as e:
        # A typo in setup.py: the module is fine, the name after ":" is not in it.
        functions = [n for n in dir(loaded) if not n.startswith("_") and callable(getattr(loaded, n))]
        close = did_you_mean(ep.attr.partition(".")[0], functions)
        raise _error(
            ext,
            f"module {module} (its entry point) has no {ep.attr}"
            + (f" ({loaded.__file__})" if getattr(loaded, "__file__", None) else ""),
            module=module,
            hint=fix_and_reinstall(ext.dist, ext.distribution, "the entry point", close),
        ) from e
    ext.source = _defined_at(function)
    return function


def _misgrouped(ext: Extension, group: str) -> ExtensionError:
    return _error(
        ext,
        f"its entry point is in the group {group}, which the host does not read: "
        "none of its tasks are loaded",
        hint=fix_and_reinstall(ext.dist, ext.distribution, "the group", f"did you mean {GROUP}?"),
    )


def _defined_at(function: Any) -> str | None:
    """``/path/celery_import.py, line 1``: where a function is defined, if known."""
    code = getattr(function, "__code__", None)
    return f"{code.co_filename}, line {code.co_firstlineno}" if code is not None else None


def _call_task_imports(task_imports: Any, ext: Extension) -> list[str]:
    call = ext.call
    hint = f"{call} must return module paths such as ['example_ext.tasks']"
    if not callable(task_imports):
        raise _error(ext, f"the entry point names {task_imports!r}, which is not a function", hint=hint)
    try:
        result = task_imports()
    except Exception as e:
        raise _error(ext, f"{call} raised {exception_text(e)}", hint=hint) from e
    if result is None and ext.plugin is not None:
        return []  # pluggy drops a None result: the hook has nothing to add
    if isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
        raise _error(ext, f"{call} returned {result!r}, not a list of module paths", hint=hint)
    modules = list(result)
    bad = [m for m in modules if not isinstance(m, str) or not _MODULE_PATH.match(m)]
    if bad:
        raise _error(ext, f"{call} returned {bad[0]!r}, which is not a module path", hint=hint)
    return list(dict.fromkeys(modules))


def _import_task_module(app: Any, module: str, ext: Extension, owners: dict[str, Extension]) -> None:
    try:
        importlib.import_module(module)
    except DuplicateTaskError as e:
        first = _owner_label(app.tasks[e.name].__module__, owners)
        at = raised_at(e, within=module)
        raise _error(
            ext,
            f"task name {e.name!r} in module {module}{f' ({at})' if at else ''} is already registered "
            f"by {first}: none of {ext.distribution}'s tasks are loaded",
            module=module,
            duplicate_task=e.name,
            hint="task names must be unique across extensions: rename one of the tasks, or disable one "
            f"of the extensions: host.celery_task.disabled = {ext.distribution}",
        ) from e
    except Exception as e:
        raise _import_failure(e, module, ext, what=f"a module {ext.call} returned") from e


def _owner_label(module: str, owners: dict[str, Extension]) -> str:
    owner = owners.get(module)
    return f"{owner.label} (module {module})" if owner else f"module {module}"


def _import_failure(e: Exception, module: str, ext: Extension, what: str) -> ExtensionError:
    cause, not_installed = explain_import_error(e, module)
    gone = missing_module(e, module, *top_level_names(ext.dist)) if not_installed else None
    if gone is not None:
        # The distribution is there; the path has a typo (or names a file it does not ship).
        suggestion = gone.suggestion(module)
        close = f"did you mean {suggestion}?" if suggestion else None
        if what == "its entry point":
            hint = fix_and_reinstall(ext.dist, ext.distribution, "the entry point", close)
        else:
            where = f" ({ext.source})" if ext.source else ""
            fix = f"fix the path {ext.call} returns{where}"
            hint = f"{close} {fix[0].upper()}{fix[1:]}" if close else fix
        return _error(
            ext,
            f"module {module} ({what}) does not exist: {gone.what()}",
            module=module,
            hint=hint,
        )
    if not_installed:
        return _error(
            ext,
            f"module {module} ({what}) is not installed",
            module=module,
            not_installed=True,
            hint=f"{reinstall_command(ext.dist, ext.distribution)}, or uninstall it",
        )
    if isinstance(e, ModuleNotFoundError):
        hint = f"install {e.name}, or the extra of {ext.distribution} that provides it"
    elif ext.plugin is not None:
        hint = f"fix the module, or remove {ext.plugin!r} from host.plugins"
    else:
        hint = f"fix the module, or disable the extension: host.celery_task.disabled = {ext.distribution}"
    return _error(ext, f"module {module} ({what}) is broken: {cause}", module=module, hint=hint)


def _error(
    ext: Extension,
    message: str,
    *,
    module: str | None = None,
    not_installed: bool = False,
    duplicate_task: str | None = None,
    hint: str | None = None,
) -> ExtensionError:
    return ExtensionError(
        message,
        distribution=ext.distribution,
        version=ext.version,
        entry_point=ext.entry_point,
        module=module,
        not_installed=not_installed,
        duplicate_task=duplicate_task,
        hint=hint,
    )


def _unload(app: Any, ext: Extension, index: _TaskIndex | None = None) -> None:
    """Leave nothing of a broken extension behind: its tasks and half-imported modules."""
    for module in ext.modules:
        for name in [n for n, t in app.tasks.items() if _defined_in(t, module)]:
            app.tasks.pop(name, None)
            ext.lost.append(name)
        sys.modules.pop(module, None)
    ext.tasks.clear()
    if index is not None:
        index.rebuild()
