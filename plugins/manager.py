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

import difflib
import functools
import importlib
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import importlib_metadata
import pluggy

from core.discovery import describe, exception_text, explain_import_error, normalize
from core.errors import PluginError
from plugins import hookspecs

GROUP = "host.plugins"
HOOK_PREFIX = "host_"


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
        return self.caller(plugin, hook)(**kwargs)

    def caller(self, plugin: Plugin, hook: str) -> Callable[..., Any]:
        """A hook caller reaching only ``plugin`` (pluggy's subset caller)."""
        others = [p.obj for p in self.active if p is not plugin]
        caller = self.subset_hook_caller(hook, remove_plugins=others)
        return lambda **kwargs: _single(caller(**kwargs))

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


def plugin_entry_points() -> list[importlib_metadata.EntryPoint]:
    """The installed ``host.plugins`` entry points, in a stable order."""
    eps = importlib_metadata.entry_points(group=GROUP)
    return sorted(eps, key=lambda ep: (ep.name, normalize(ep.dist.name if ep.dist else "")))


def make_plugin_manager(
    names: Sequence[str], entry_points: Iterable[importlib_metadata.EntryPoint] | None = None
) -> HostPluginManager:
    """A fresh manager with the plugins ``names`` enables loaded and registered.

    :param names: the plugin names, in order (``host.plugins``).
    :param entry_points: for tests; default: the installed ``host.plugins`` ones.
    """
    pm = HostPluginManager()
    pm.order = {name: i for i, name in enumerate(names)}
    installed: dict[str, list[importlib_metadata.EntryPoint]] = {}
    for ep in plugin_entry_points() if entry_points is None else entry_points:
        installed.setdefault(ep.name, []).append(ep)
    for name, eps in installed.items():
        pm.records.append(_record(name, eps[0], enabled=name in pm.order))
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        plugin = pm.record(name)
        if plugin is None:
            pm.records.append(_not_installed(name, sorted(installed)))
        elif len(installed[name]) > 1:
            pm.fail(plugin, _provided_twice(plugin, installed[name]))
    # pluggy calls the last registered plugin first; registering in reverse
    # keeps a plain pm.hook call in host.plugins order too.
    for name in reversed(wanted):
        plugin = pm.record(name)
        if plugin is not None and plugin.error is None:
            _load(pm, plugin, installed[name][0])
    return pm


def _record(name: str, ep: importlib_metadata.EntryPoint, enabled: bool) -> Plugin:
    dist = ep.dist
    return Plugin(
        name,
        distribution=dist.name if dist is not None else "(unknown distribution)",
        version=dist.version if dist is not None else "?",
        entry_point=describe(ep),
        enabled=enabled,
    )


def _not_installed(name: str, installed: list[str]) -> Plugin:
    plugin = Plugin(name, enabled=True)
    close = difflib.get_close_matches(name, installed, n=1)
    listing = ", ".join(installed) if installed else "none"
    plugin.error = plugin.error_for(
        f"is named in host.plugins but no installed distribution provides it "
        f"(the installed plugins are: {listing})",
        not_installed=True,
        hint=f"did you mean {close[0]!r}?"
        if close
        else f"install the distribution that provides a {GROUP!r} entry point named {name!r}, "
        "or remove the name from host.plugins",
    )
    return plugin


def _provided_twice(plugin: Plugin, eps: list[importlib_metadata.EntryPoint]) -> PluginError:
    sources = " and ".join(f"{ep.dist.name if ep.dist else '?'} ({describe(ep)})" for ep in eps)
    return plugin.error_for(
        f"the plugin name is provided twice: by {sources}",
        hint="uninstall one of the distributions",
    )


def _load(pm: HostPluginManager, plugin: Plugin, ep: importlib_metadata.EntryPoint) -> None:
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
        pm.fail(
            plugin,
            plugin.error_for(
                f"module {ep.module} has no {ep.attr}",
                hint=f"correct the entry point in {plugin.distribution}'s setup.py or pyproject.toml",
            ),
        )
        return
    unmarked = _unmarked_hooks(pm, obj)
    if unmarked:
        message = f"{unmarked[0]} in {ep.value} is not marked as a hook implementation"
        pm.fail(
            plugin,
            plugin.error_for(message, hint="decorate it with @hookimpl (from plugins import hookimpl)"),
        )
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


def _import_failure(plugin: Plugin, ep: importlib_metadata.EntryPoint, e: Exception) -> PluginError:
    module = ep.module
    cause, not_installed = explain_import_error(e, module)
    if not_installed:
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


def _unknown_hook(plugin: Plugin, hook: str, pm: HostPluginManager) -> PluginError:
    known = [name for name in dir(hookspecs) if name.startswith(HOOK_PREFIX)]
    close = difflib.get_close_matches(hook, known, n=1)
    return plugin.error_for(
        f"implements {hook}, which is not a host hook",
        hint=f"did you mean {close[0]}?" if close else "the hooks are listed in docs/plugins.md",
    )
