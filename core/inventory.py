"""What ``host plugins`` shows: every installed plugin and task extension, and what each adds.

Modelled on ``datasette plugins``: one entry per plugin (``host.plugins``
entry point) and per task extension (``host.celery_task`` entry point),
enabled or not, with its distribution and version, the hooks it implements,
the tasks, queues, periodic entries and commands it contributes, and its
error, if it has one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.discovery import Discovery
    from plugins.manager import HostPluginManager


def inventory(pm: HostPluginManager, found: Discovery) -> dict[str, list[dict[str, Any]]]:
    """``{"plugins": [...], "task_extensions": [...]}``, ready for JSON."""
    tasks_by_plugin: dict[str, list[str]] = {}
    errors_by_plugin: dict[str, str] = {}
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
    return {"plugins": plugins, "task_extensions": extensions}


def render(listing: dict[str, list[dict[str, Any]]]) -> str:
    """The text form: a block per plugin and per task extension."""
    lines = ["Plugins (entry point group host.plugins; enable them with host.plugins in the ini):"]
    if not listing["plugins"]:
        lines.append("  none installed")
    for p in listing["plugins"]:
        status = "enabled" if p["enabled"] else "not enabled"
        if p["error"]:
            status += ", BROKEN"
        source = f"{p['distribution']}=={p['version']}" if p["distribution"] else "not installed"
        lines.append(f"  {p['name']}  {source}  [{status}]")
        if p["entry_point"]:
            lines.append(f"    entry point: {p['entry_point']}")
        _details(lines, p)
    lines.append("Task extensions (entry point group host.celery_task):")
    if not listing["task_extensions"]:
        lines.append("  none installed")
    for e in listing["task_extensions"]:
        status = "enabled" if e["enabled"] else "disabled by host.celery_task.disabled"
        if e["error"]:
            status += ", BROKEN"
        lines.append(f"  {e['distribution']}=={e['version']}  [{status}]")
        lines.append(f"    entry point: {e['entry_point']}")
        _details(lines, e)
    return "\n".join(lines)


def _details(lines: list[str], item: dict[str, Any]) -> None:
    if item.get("hooks"):
        lines.append(f"    hooks:       {', '.join(item['hooks'])}")
    if item.get("tasks"):
        lines.append(f"    tasks:       {', '.join(item['tasks'])}")
    for queue, patterns in (item.get("queues") or {}).items():
        routed = f" <- {', '.join(patterns)}" if patterns else ""
        lines.append(f"    queue:       {queue}{routed}")
    if item.get("beat"):
        lines.append(f"    beat:        {', '.join(item['beat'])}")
    if item.get("commands"):
        lines.append(f"    commands:    {', '.join('host ' + c for c in item['commands'])}")
    if item.get("error"):
        first, *rest = item["error"].splitlines()
        lines.append(f"    error:       {first}")
        lines.extend(f"                 {line.strip()}" for line in rest)
