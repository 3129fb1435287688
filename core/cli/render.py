"""How ``host`` shows things to people: tables and listings (``--json`` prints the data as it is)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.plugin_manager import HostPluginManager


def task_table(rows: list[dict[str, str]], title: str) -> str:
    if not rows:
        return f"{title}: none (install an extension with a host.celery_task entry point)"
    head = {"task": "TASK", "extension": "EXTENSION", "version": "VERSION", "module": "MODULE"}
    cols = list(head)
    widths = {c: max(len(head[c]), *(len(r[c]) for r in rows)) for c in cols}
    lines = [f"{title}:"] + [
        "  " + "  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in [head, *rows]
    ]
    return "\n".join(lines)


def plugins_line(pm: HostPluginManager) -> str:
    active = [p.label for p in pm.active]
    return f"Plugins: {', '.join(active)}" if active else "Plugins: none enabled (host.plugins)"


def setting_lines(path: str, settings: list[tuple[str, Any, str]]) -> list[str]:
    """``host config show``: ``key = value    # where it came from; what it means``."""
    lines = [f"# {path}"]
    for key, value, note in settings:
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        lines.append(f"{key} = {shown}    # {note}")
    return lines


def inventory(listing: dict[str, list[dict[str, Any]]]) -> str:
    """``host plugins``: a block per plugin and per task extension."""
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


def schedule_table(listing: dict[str, Any]) -> str:
    """``host schedule``: one row per periodic entry, then where the last runs were read."""
    rows = listing["entries"]
    if not rows:
        return "Periodic entries: none ([celerybeat:NAME] sections, celery.beat_schedule, host_beat_schedule)"
    head = {"entry": "ENTRY", "task": "TASK", "schedule": "SCHEDULE", "next_due": "NEXT DUE"}
    head["source"] = "FROM"
    cols = list(head)
    cells = [{c: str(r.get(c) or "") for c in cols} for r in rows]
    widths = {c: max(len(head[c]), *(len(r[c]) for r in cells)) for c in cols}
    lines = ["Periodic entries:"] + [
        "  " + "  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in [head, *cells]
    ]
    lines.append(f"Last runs from: {listing['state']} (times in {listing['timezone']})")
    return "\n".join(lines)
