"""Load the plugins the ini enables, and call their hooks one plugin at a time.

:func:`make_plugin_manager` builds a fresh :class:`HostPluginManager` each
time it is called; nothing is loaded at import time. It looks up each name in
``host.plugins`` among the installed ``host.plugins`` entry points, imports
it and registers it with pluggy. Every installed plugin is recorded as a
:class:`Plugin` (entry point, distribution and version), enabled or not, so
``host plugins`` can list them. Like discovery, loading raises nothing: each
failure becomes a :class:`~core.errors.PluginError` on its record, and the
command decides (``host.extensions.on_error``) whether that stops it.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import inspect
import re
import types
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from pluggy._hooks import varnames as pluggy_varnames  # how pluggy reads an implementation's arguments

from core.entrypoints import (
    HOST_GROUPS,
    PLUGIN_GROUP,
    Installed,
    describe,
    fix_and_reinstall,
    identified,
    installed_entry_points,
    top_level_names,
)
from core.errors import PluginError
from core.errors_text import (
    did_you_mean,
    exception_text,
    explain_import_error,
    hookimpls_beside,
    missing_module,
)
from core.options import BadDeclaration, Option, declarer
from plugins import hookspecs

GROUP = PLUGIN_GROUP
HOOK_PREFIX = "host_"

#: The manager whose hooks are being called, in this thread or task: a hook
#: that reads its options (``plugins.plugin_config``) reads this manager's,
#: without configuring an app in the middle of configuring one.
_calling: ContextVar[HostPluginManager | None] = ContextVar("host_plugins_calling", default=None)


def calling() -> HostPluginManager | None:
    """The manager calling a hook right now, if any."""
    return _calling.get()


@dataclass
class Plugin:
    """One plugin: where it comes from, whether it is enabled, what it contributed."""

    name: str
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None
    enabled: bool = False
    error: PluginError | None = None
    #: The loaded module or object, registered with pluggy.
    obj: Any = field(default=None, repr=False)
    #: Names of the hooks it implements.
    hooks: list[str] = field(default_factory=list)
    #: What it contributed, filled in as its hooks are called.
    queues: dict[str, list[str]] = field(default_factory=dict)
    beat: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    #: The installed distribution, for messages (its files, where it was installed from).
    dist: metadata.Distribution | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """``example (example-ext==0.1.0)``."""
        return f"{self.name} ({self.distribution}=={self.version})" if self.distribution else self.name

    @property
    def active(self) -> bool:
        return self.enabled and self.error is None and self.obj is not None

    @property
    def module(self) -> str | None:
        """The module the plugin was loaded from, once it is loaded."""
        obj = self.obj
        return (
            getattr(obj, "__name__", None)
            if isinstance(obj, types.ModuleType)
            else getattr(obj, "__module__", None)
        )

    def describe(self, e: BaseException) -> str:
        """``e`` and where in the plugin's own code it was raised."""
        return exception_text(e, within=self.module)

    def error_for(self, message: str, *, not_installed: bool = False, hint: str | None = None) -> PluginError:
        return PluginError(
            message,
            plugin=self.name,
            distribution=self.distribution,
            version=self.version,
            entry_point=self.entry_point,
            not_installed=not_installed,
            hint=hint,
        )


class HostPluginManager(pluggy.PluginManager):
    """A pluggy manager that knows every installed plugin and calls them one by one."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        #: Every installed plugin, then every enabled name nothing provides.
        self.records: list[Plugin] = []
        #: The values of each enabled plugin's ``[plugin:NAME]`` section.
        self.options: dict[str, dict[str, Any]] = {}
        #: Where each option value came from: ``file``, ``env NAME`` or ``default``.
        self.option_sources: dict[str, dict[str, str]] = {}
        #: The position of each enabled name in ``host.plugins``.
        self.order: dict[str, int] = {}
        #: The installed entry points of every host group, by group, as found when
        #: the plugins were loaded (None when the caller named the entry points).
        #: Discovery goes through the same ones: one scan of the installed
        #: distributions serves both.
        self.installed: dict[str, list[Installed]] | None = None

    @property
    def active(self) -> list[Plugin]:
        """The enabled plugins that loaded, in the order ``host.plugins`` names them."""
        return [p for p in self._enabled_in_order() if p.active]

    @property
    def errors(self) -> list[PluginError]:
        return [p.error for p in self._enabled_in_order() if p.error is not None]

    def _enabled_in_order(self) -> list[Plugin]:
        return sorted((p for p in self.records if p.enabled), key=lambda p: self.order.get(p.name, 0))

    def record(self, name: str) -> Plugin | None:
        return next((p for p in self.records if p.name == name), None)

    def call_each(self, hook: str, **kwargs: Any) -> list[tuple[Plugin, Any]]:
        """Call ``hook`` on each active plugin that implements it, one at a time.

        A plugin whose implementation raises gets the error on its record and
        is unregistered, so its later hooks are not called; the others go on.
        :return: ``(plugin, what it returned)`` for each plugin that succeeded.
        """
        results = []
        for plugin in self.implementing(hook):
            try:
                results.append((plugin, self.call_one(plugin, hook, **kwargs)))
            except Exception as e:
                self.raised(plugin, hook, e)
        return results

    def implementing(self, hook: str) -> list[Plugin]:
        return [p for p in self.active if hook in p.hooks]

    def call_one(self, plugin: Plugin, hook: str, **kwargs: Any) -> Any:
        """Call one plugin's implementation of ``hook``; exceptions propagate."""
        token = _calling.set(self)
        try:
            return self.caller(plugin, hook)(**kwargs)
        finally:
            _calling.reset(token)

    def caller(self, plugin: Plugin, hook: str) -> Callable[..., Any]:
        """A hook caller reaching only ``plugin`` (pluggy's subset caller)."""
        others = [p.obj for p in self.active if p is not plugin]
        caller = self.subset_hook_caller(hook, remove_plugins=others)
        return lambda **kwargs: _single(caller(**kwargs))

    # -- what the plugins contribute: each hook's result checked and recorded here --

    def queues(self) -> tuple[dict[str, list[str]], dict[str, tuple[str, str]]]:
        """Every plugin's queues, and the routes ``{pattern: (queue, plugin)}`` they ask for.

        Two plugins routing the same pattern to different queues is an error of
        the second one.
        """
        queues: dict[str, list[str]] = {}
        routes: dict[str, tuple[str, str]] = {}
        for plugin, declared in self.call_each("host_queues"):
            if declared is None:
                continue
            checked = _checked_queues(declared)
            if checked is None:
                self.returned(
                    plugin, "host_queues", declared, "a mapping of queue names to lists of task names"
                )
                continue
            clash = next(
                (
                    (p, routes[p])
                    for q, ps in checked.items()
                    for p in ps
                    if p in routes and routes[p][0] != q
                ),
                None,
            )
            if clash:
                pattern, (queue, owner) = clash
                message = (
                    f"routes {pattern!r} to a queue, but plugin {owner!r} already routes it to {queue!r}"
                )
                self.fail(plugin, plugin.error_for(message, hint="route each task name from one plugin only"))
                continue
            plugin.queues = checked
            for queue, patterns in checked.items():
                queues.setdefault(queue, [])
                for pattern in patterns:
                    if pattern not in routes:
                        queues[queue].append(pattern)
                        routes[pattern] = (queue, plugin.name)
        return queues, routes

    def beat_entries(self) -> dict[str, dict[str, Any]]:
        """Every plugin's periodic entries; on a name clash the first plugin's."""
        schedule: dict[str, dict[str, Any]] = {}
        for plugin, entries in self.call_each("host_beat_schedule"):
            if entries is None:
                continue
            if not _valid_schedule(entries):
                expected = 'a mapping of entry names to {"task": ..., "schedule": ...}'
                self.returned(plugin, "host_beat_schedule", entries, expected)
                continue
            plugin.beat = list(entries)
            for name, entry in entries.items():
                schedule.setdefault(name, dict(entry))
        return schedule

    def adjust_settings(self, settings: MutableMapping[str, Any], host_config: Any) -> dict[str, str]:
        """Let each plugin's ``host_celery_config`` change ``settings``; return which it changed.

        A plugin that raises leaves ``settings`` as it found them: half a
        change is worse than none.
        """
        changed_by: dict[str, str] = {}
        for plugin in self.implementing("host_celery_config"):
            before = copy.deepcopy(dict(settings))
            try:
                self.call_one(plugin, "host_celery_config", config=settings, host_config=host_config)
            except Exception as e:
                settings.clear()
                settings.update(before)
                self.raised(plugin, "host_celery_config", e)
                continue
            for key in set(settings) | set(before):
                if settings.get(key, _MISSING) != before.get(key, _MISSING):
                    changed_by[key] = f"plugin {plugin.name}"
        return changed_by

    def option_declarations(self) -> dict[str, dict[str, Option]]:
        """Every plugin's declared options, by plugin; a bad declaration fails that plugin."""
        declared: dict[str, dict[str, Option]] = {}
        for plugin in self.implementing("host_config_declarations"):
            options: dict[str, Option] = {}
            try:
                self.call_one(plugin, "host_config_declarations", declare=declarer(options))
            except BadDeclaration as e:
                hint = e.hint or "see host_config_declarations in docs/plugins.md"
                self.fail(plugin, plugin.error_for(str(e), hint=hint))
                continue
            except Exception as e:
                self.raised(plugin, "host_config_declarations", e)
                continue
            declared[plugin.name] = options
        return declared

    def commands(self, reserved: set[str]) -> dict[str, Any]:
        """The click commands the plugins add, each on a group of its own; a taken name fails the plugin."""
        import click

        commands: dict[str, Any] = {}
        for plugin in self.implementing("host_register_commands"):
            group = click.Group()
            try:
                self.call_one(plugin, "host_register_commands", cli=group)
            except Exception as e:
                self.raised(plugin, "host_register_commands", e)
                continue
            taken = sorted(set(group.commands) & (reserved | set(commands)))
            if taken:
                message = f"adds the command {taken[0]!r}, which host already has"
                self.fail(plugin, plugin.error_for(message, hint="give the plugin's command another name"))
                continue
            plugin.commands = sorted(group.commands)
            commands.update(group.commands)
        return commands

    def raised(self, plugin: Plugin, hook: str, e: Exception) -> None:
        """``plugin``'s ``hook`` raised ``e``: record it, naming where it was raised."""
        error = plugin.error_for(f"{hook}() raised {plugin.describe(e)}", hint=_fix(plugin))
        error.__cause__ = e
        self.fail(plugin, error)

    def returned(self, plugin: Plugin, hook: str, value: Any, expected: str) -> None:
        """``plugin``'s ``hook`` returned something unusable: record it."""
        message = f"{hook}() returned {_short(value)}, not {expected}"
        self.fail(plugin, plugin.error_for(message, hint=_fix(plugin)))

    def fail(self, plugin: Plugin, error: PluginError) -> None:
        """Record ``error`` on ``plugin`` and stop calling its hooks."""
        plugin.error = error
        if plugin.obj is not None and self.is_registered(plugin.obj):
            self.unregister(plugin.obj)


_MISSING = object()
_QUEUE_NAME = re.compile(r"^[^\s,]+$")


def _checked_queues(declared: Any) -> dict[str, list[str]] | None:
    if not isinstance(declared, Mapping):
        return None
    checked = {}
    for queue, patterns in declared.items():
        if not isinstance(queue, str) or not _QUEUE_NAME.match(queue):
            return None
        if isinstance(patterns, str) or not isinstance(patterns, Iterable):
            return None
        patterns = list(patterns)
        if not all(isinstance(p, str) and p for p in patterns):
            return None
        checked[queue] = patterns
    return checked


def _valid_schedule(entries: Any) -> bool:
    return isinstance(entries, Mapping) and all(
        isinstance(name, str)
        and isinstance(entry, Mapping)
        and isinstance(entry.get("task"), str)
        and entry.get("schedule") is not None
        for name, entry in entries.items()
    )


def _single(results: list[Any]) -> Any:
    # A subset caller over one plugin returns a list of at most one result
    # (pluggy leaves out None results).
    return results[0] if results else None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fix(plugin: Plugin) -> str:
    return f"fix the plugin, or remove {plugin.name!r} from host.plugins"


# -- loading ----------------------------------------------------------------------


def _sorted(found: Iterable[Installed]) -> list[Installed]:
    return sorted(found, key=lambda item: (item.entry_point.name, item.sort_name))


def make_plugin_manager(
    names: Sequence[str], entry_points: Iterable[metadata.EntryPoint] | None = None
) -> HostPluginManager:
    """A fresh manager with the plugins ``names`` enables loaded and registered.

    :param names: the plugin names, in order (``host.plugins``).
    :param entry_points: for tests; default: the installed ``host.plugins`` ones,
        found in one scan with every other host group (kept in ``pm.installed``).
    """
    pm = HostPluginManager()
    pm.order = {name: i for i, name in enumerate(names)}
    misgrouped: list[Installed] = []
    if entry_points is None:
        pm.installed = installed_entry_points(HOST_GROUPS)
        found = _sorted(pm.installed[GROUP])
        misgrouped = pm.installed.misgrouped.get(GROUP, [])
    else:
        found = identified(entry_points)
    installed: dict[str, list[Installed]] = {}
    for item in found:
        installed.setdefault(item.entry_point.name, []).append(item)
    for name, items in installed.items():
        pm.records.append(_record(name, items[0], enabled=name in pm.order))
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        plugin = pm.record(name)
        if plugin is None:
            pm.records.append(_not_installed(name, installed, misgrouped))
        elif len(installed[name]) > 1:
            pm.fail(plugin, _provided_twice(plugin, installed[name]))
    # pluggy calls the last registered plugin first; registering in reverse
    # keeps a plain pm.hook call in host.plugins order too.
    for name in reversed(wanted):
        plugin = pm.record(name)
        if plugin is not None and plugin.error is None:
            _load(pm, plugin, installed[name][0].entry_point)
    _register_in_process(pm)
    return pm


#: Plugin objects registered in this process, ``{name: object}``, enabled in every
#: manager made here: the test kit's ``host_plugin`` fixture (core/testing/), which
#: empties it after each test. Not installed, so no other process sees them.
registered: dict[str, Any] = {}


def _register_in_process(pm: HostPluginManager) -> None:
    """Enable each :data:`registered` object after the plugins ``host.plugins`` names.

    One with the name of an installed plugin takes its place.
    """
    for name in registered:
        pm.order.setdefault(name, len(pm.order))
    for name, obj in registered.items():
        if pm.has_plugin(name):
            pm.unregister(name=name)
        plugin = Plugin(name, entry_point="registered in-process", enabled=True, obj=obj)
        pm.records = [p for p in pm.records if p.name != name] + [plugin]
        pm.register(obj, name=name)
        plugin.hooks = sorted(caller.name for caller in pm.get_hookcallers(obj) or [])


def _record(name: str, item: Installed, enabled: bool) -> Plugin:
    return Plugin(
        name,
        distribution=item.distribution,
        version=item.version,
        entry_point=describe(item.entry_point),
        enabled=enabled,
        dist=item.entry_point.dist,
    )


def _not_installed(
    name: str, installed: Mapping[str, Sequence[Installed]], misgrouped: Sequence[Installed] = ()
) -> Plugin:
    plugin = Plugin(name, enabled=True)
    wrong = next((item for item in misgrouped if item.entry_point.name == name), None)
    if wrong is not None:
        # Installed, but declared in a misspelled group: the host never sees it.
        ep = wrong.entry_point
        plugin.error = plugin.error_for(
            f"is named in host.plugins, and {wrong.distribution}=={wrong.version} declares it in the group "
            f"{ep.group} ({describe(ep)}), which the host does not read",
            not_installed=True,
            hint=fix_and_reinstall(ep.dist, wrong.distribution, "the group", f"did you mean {GROUP}?"),
        )
        return plugin
    close = difflib.get_close_matches(name, sorted(installed), n=1)
    if close:
        plugin.error = _near_name(plugin, installed[close[0]][0])
        return plugin
    plugin.error = plugin.error_for(
        f"is named in host.plugins but no installed distribution provides it "
        f"(the installed plugins are: {', '.join(sorted(installed)) or 'none'})",
        not_installed=True,
        hint=f"install the distribution that provides a {GROUP!r} entry point named {name!r}, "
        "or remove the name from host.plugins",
    )
    return plugin


def _near_name(plugin: Plugin, near: Installed) -> PluginError:
    """A name in host.plugins close to an installed plugin's: one of the two is misspelled."""
    ep = near.entry_point
    fix = fix_and_reinstall(ep.dist, near.distribution, "the entry point's name", None)
    return plugin.error_for(
        "is named in host.plugins but no installed distribution provides it; "
        f"{near.distribution}=={near.version} provides the near name {ep.name!r} ({describe(ep)})",
        not_installed=True,
        hint=f"did you mean {ep.name!r}? Either host.plugins or {near.distribution}'s entry point is "
        f"misspelled: correct host.plugins, or {fix}",
    )


def _provided_twice(plugin: Plugin, items: list[Installed]) -> PluginError:
    sources = " and ".join(
        f"{item.distribution if item.entry_point.dist else '?'} ({describe(item.entry_point)})"
        for item in items
    )
    return plugin.error_for(
        f"the plugin name is provided twice: by {sources}",
        hint="uninstall one of the distributions",
    )


def _load(pm: HostPluginManager, plugin: Plugin, ep: metadata.EntryPoint) -> None:
    # The module is imported on its own first, so that an AttributeError raised
    # inside it reads as "broken", and only a missing attribute as "has no NAME".
    try:
        module = importlib.import_module(ep.module)
    except Exception as e:
        pm.fail(plugin, _import_failure(plugin, ep, e))
        return
    try:
        obj = functools.reduce(getattr, ep.attr.split("."), module) if ep.attr else module
    except AttributeError:
        pm.fail(plugin, _missing_attribute(plugin, ep, module))
        return
    unmarked = _unmarked_hooks(pm, obj)
    if unmarked:
        message = f"{unmarked[0]} in {ep.value} is not marked as a hook implementation"
        pm.fail(
            plugin,
            plugin.error_for(message, hint="decorate it with @hookimpl (from plugins import hookimpl)"),
        )
        return
    unfit = _unknown_arguments(pm, plugin, obj)
    if unfit is not None:
        pm.fail(plugin, unfit)
        return
    try:
        pm.register(obj, name=plugin.name)
    except (pluggy.PluginValidationError, ValueError) as e:
        pm.fail(plugin, plugin.error_for(f"does not fit the hook specs: {e}", hint=_fix(plugin)))
        return
    plugin.obj = obj
    plugin.hooks = sorted(caller.name for caller in pm.get_hookcallers(obj) or [])
    unknown = [hook for hook in plugin.hooks if getattr(pm.hook, hook).spec is None]
    if unknown:
        pm.fail(plugin, _unknown_hook(plugin, unknown[0], pm))
    elif not plugin.hooks:
        pm.fail(plugin, _no_hooks(plugin, ep))


def _no_hooks(plugin: Plugin, ep: metadata.EntryPoint) -> PluginError:
    """An entry point at an object with no ``@hookimpl`` function: the plugin would do nothing."""
    beside = hookimpls_beside(ep.module)
    close = None
    if beside:
        name, count = max(beside, key=lambda found: found[1])
        close = f"did you point the entry point at the wrong module? ({name} has {count})"
    fix = fix_and_reinstall(plugin.dist, plugin.distribution or plugin.name, "the entry point", close)
    return plugin.error_for(
        f"{ep.value} has no hook implementations (@hookimpl functions): the plugin would do nothing",
        hint=fix if close else f"mark its hook functions with @hookimpl, or {fix}",
    )


def _missing_attribute(plugin: Plugin, ep: metadata.EntryPoint, module: types.ModuleType) -> PluginError:
    """The entry point's ``:NAME`` is not in its module: a typo in setup.py, with the closest name."""
    names = [n for n in dir(module) if not n.startswith("_")]
    where = f" ({module.__file__})" if getattr(module, "__file__", None) else ""
    return plugin.error_for(
        f"module {ep.module} has no {ep.attr}{where}",
        hint=fix_and_reinstall(
            plugin.dist, plugin.distribution or plugin.name, "the entry point", did_you_mean(ep.attr, names)
        ),
    )


def _import_failure(plugin: Plugin, ep: metadata.EntryPoint, e: Exception) -> PluginError:
    module = ep.module
    cause, not_installed = explain_import_error(e, module)
    gone = missing_module(e, module, *top_level_names(plugin.dist)) if not_installed else None
    if gone is not None:
        # The distribution is there; the entry point's module path has a typo.
        suggestion = gone.suggestion(module)
        error = plugin.error_for(
            f"module {module} does not exist: {gone.what()}",
            hint=fix_and_reinstall(
                plugin.dist,
                plugin.distribution or plugin.name,
                "the entry point",
                f"did you mean {suggestion}?" if suggestion else None,
            ),
        )
    elif not_installed:
        error = plugin.error_for(
            f"module {module} is not installed",
            not_installed=True,
            hint=f"reinstall {plugin.distribution}, or remove {plugin.name!r} from host.plugins",
        )
    elif isinstance(e, ModuleNotFoundError):
        error = plugin.error_for(
            f"module {module} is broken: {cause}",
            hint=f"install {e.name}, or the extra of {plugin.distribution} that provides it",
        )
    else:
        error = plugin.error_for(f"module {module} is broken: {cause}", hint=_fix(plugin))
    error.__cause__ = e
    return error


def _unmarked_hooks(pm: HostPluginManager, obj: Any) -> list[str]:
    """Functions named like a hook but not marked: they would silently never be called."""
    names = [n for n in dir(obj) if n.startswith(HOOK_PREFIX) and callable(getattr(obj, n, None))]
    return [n for n in names if pm.parse_hookimpl_opts(obj, n) is None]


def _unknown_arguments(pm: HostPluginManager, plugin: Plugin, obj: Any) -> PluginError | None:
    """A hook implementation taking an argument its hook does not pass, told with the hook's own.

    pluggy refuses it too, in words of its own; this names the file and line,
    the hook's real arguments, and the closest one.
    """
    for name in sorted(dir(obj)):
        if not name.startswith(HOOK_PREFIX) or pm.parse_hookimpl_opts(obj, name) is None:
            continue
        caller = getattr(pm.hook, name, None)
        spec = getattr(caller, "spec", None)
        if spec is None:
            continue  # not a hook at all: reported after registration, with its closest name
        function = getattr(obj, name)
        required, _ = pluggy_varnames(function)
        known = (*spec.argnames, *spec.kwargnames)
        extra = [arg for arg in required if arg not in known]
        if extra:
            return _argument_error(plugin, name, function, extra[0], known)
    return None


def _argument_error(plugin: Plugin, hook: str, function: Any, arg: str, known: Sequence[str]) -> PluginError:
    try:
        signature = f"{hook}{inspect.signature(function)}"
    except (TypeError, ValueError):
        signature = hook
    code = getattr(function, "__code__", None)
    where = f" at {code.co_filename}, line {code.co_firstlineno}" if code is not None else ""
    passes = f"its arguments are: {', '.join(known)}" if known else "it passes no arguments"
    usage = f"def {hook}({', '.join(known)}):"
    fix = (
        f"take only the hook's arguments, by name (any of them): {usage}"
        if known
        else f"{hook} takes no arguments: {usage}"
    )
    close = did_you_mean(arg, known)
    return plugin.error_for(
        f"{signature}{where} takes {arg!r}, which the hook {hook} does not pass: {passes}",
        hint=f"{close} {fix[0].upper()}{fix[1:]}" if close else fix,
    )


def _unknown_hook(plugin: Plugin, hook: str, pm: HostPluginManager) -> PluginError:
    known = [name for name in dir(hookspecs) if name.startswith(HOOK_PREFIX)]
    close = difflib.get_close_matches(hook, known, n=1)
    code = getattr(getattr(plugin.obj, hook, None), "__code__", None)
    where = f" (at {code.co_filename}, line {code.co_firstlineno})" if code is not None else ""
    return plugin.error_for(
        f"implements {hook}{where}, which is not a host hook",
        hint=f"did you mean {close[0]}?" if close else "the hooks are listed in docs/plugins.md",
    )
