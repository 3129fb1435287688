"""What ``host plugins`` shows: every installed plugin and task extension, and what each adds.

Modelled on ``datasette plugins``: one entry per plugin (``host.plugins``
entry point) and per task extension (``host.celery_task`` entry point),
enabled or not, with its distribution and version, the hooks it implements,
the tasks, queues, periodic entries and commands it contributes, and its
error, if it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.discovery import Discovery
    from core.errors import HostError
    from core.plugin_manager import HostPluginManager


def inventory(
    pm: HostPluginManager,
    found: Discovery,
    reserved: set[str],
    beat_problems: Sequence[tuple[str, HostError]] = (),
) -> dict[str, list[Any]]:
    """``{"plugins": [...], "task_extensions": [...], "errors": [...]}``, ready for JSON.

    :param reserved: the commands ``host`` has itself; a plugin's command that
        takes one of those names is that plugin's error.
    :param beat_problems: periodic entries whose task nobody provides: a
        plugin's is that plugin's error; an ini entry's is listed in ``errors``.
    """
    from core.errors import PluginError

    pm.commands(reserved)  # each plugin's record lists the commands it adds
    tasks_by_plugin: dict[str, list[str]] = {}
    errors_by_plugin: dict[str, str] = {}
    for _, problem in beat_problems:
        if isinstance(problem, PluginError):
            errors_by_plugin.setdefault(problem.plugin, str(problem))
    for ext in found.extensions:
        if ext.plugin is not None:
            tasks_by_plugin[ext.plugin] = sorted(ext.tasks)
            if ext.error is not None:
                errors_by_plugin[ext.plugin] = str(ext.error)
    plugins = [
        {
            "name": p.name,
            "enabled": p.enabled,
            "distribution": p.distribution,
            "version": p.version,
            "entry_point": p.entry_point,
            "hooks": p.hooks,
            "tasks": tasks_by_plugin.get(p.name, []),
            "queues": p.queues,
            "beat": p.beat,
            "commands": p.commands,
            "error": str(p.error) if p.error else errors_by_plugin.get(p.name),
        }
        for p in sorted(pm.records, key=lambda p: (not p.enabled, p.name))
    ]
    extensions = [
        {
            "distribution": e.distribution,
            "version": e.version,
            "entry_point": e.entry_point,
            "enabled": not e.disabled,
            "modules": e.modules,
            "tasks": sorted(e.tasks),
            "error": str(e.error) if e.error else None,
        }
        for e in found.extensions
        if e.plugin is None
    ]
    errors = [str(problem) for _, problem in beat_problems if not isinstance(problem, PluginError)]
    return {"plugins": plugins, "task_extensions": extensions, "errors": errors}


def task_listing(found: Discovery, errors: list[Any]) -> dict[str, Any]:
    """``host tasks --json``: every task, every extension, every problem."""
    return {
        "tasks": found.task_rows(),
        "extensions": [
            {
                "distribution": e.distribution,
                "version": e.version,
                "entry_point": e.entry_point,
                "modules": e.modules,
                "disabled": e.disabled,
                "error": str(e.error) if e.error else None,
            }
            for e in found.extensions
        ],
        "errors": [str(e) for e in errors],
    }
