"""How ``host`` shows things to people: tables and listings (``--json`` prints the data as it is)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.plugin_manager import HostPluginManager
    from core.result_listing import ResultRow


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


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """Aligned columns under a header line; a column of numbers is aligned right. None shows as ``-``."""
    cells = [[str(h) for h in head]] + [["-" if v is None else str(v) for v in row] for row in rows]
    numeric = [bool(rows) and all(isinstance(row[n], int | None) for row in rows) for n in range(len(head))]
    widths = [max(len(row[n]) for row in cells) for n in range(len(head))]
    return "\n".join(
        indent
        + "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ).rstrip()
        for row in cells
    )


def duration(seconds: float | None) -> str:
    """``45`` -> ``45s``, ``75`` -> ``1m15s``, ``3700`` -> ``1h01m``, ``90061`` -> ``1d01h``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def progress_line(info: dict[str, Any]) -> str:
    """One progress update as a plain line: ``progress: 3/10 (30%) item c``."""
    current, total = info.get("current"), info.get("total")
    shown = f"{_number(current)}/{_number(total)}" if total is not None else f"{_number(current)}"
    if total:
        shown += f" ({100 * (current or 0) / total:.0f}%)"
    message = info.get("message")
    return f"progress: {shown}" + (f" {message}" if message else "")


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _local(value: Any) -> str:
    """A stored time (ISO text or datetime, UTC) in the machine's local time."""
    from datetime import datetime

    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(value, datetime):
        return str(value)
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def task_view(view: Any) -> str:
    """``host result``: the state and the task's own outcome, the facts, the log, the result."""
    state, report = view.state, view.report or {}
    label = f" ({view.name})" if view.name else ""
    if state == "PENDING":
        return (
            f"PENDING{label}: the result store knows nothing of it: not started yet, an unknown task id, "
            "or a result the store could not take when the task finished (its worker then logged "
            f"'could not store the ... result of task ...[{view.task_id}]')"
        )
    head = f"{state}{label}"
    if view.outcome == "failed" and state == "SUCCESS":
        head += ": it ran to the end, but its own outcome is FAILED (see errors below)"
    elif view.outcome:
        head += f"; outcome: {view.outcome}"
    lines = [head, f"  id:        {view.task_id}"]
    if view.args is not None or view.kwargs:
        shown = [json.dumps(a, default=repr) for a in view.args or []]
        shown += [f"{k}={json.dumps(v, default=repr)}" for k, v in (view.kwargs or {}).items()]
        lines.append(f"  arguments: {', '.join(shown) if shown else '(none)'}")
    if view.worker:
        where = view.worker + (f", queue {view.queue}" if view.queue else "")
        if view.retries:
            where += f", retried {view.retries} times"
        lines.append(f"  worker:    {where}")
    if report.get("started"):
        ran = report.get("runtime")
        if isinstance(ran, (int, float)):
            timing = f", ran {ran:.3g} s"
        else:
            timing = "" if state in ("SUCCESS", "FAILURE", "REVOKED") else ", running"
        lines.append(f"  started:   {_local(report['started'])}{timing}")
    if view.date_done is not None:
        lines.append(f"  finished:  {_local(view.date_done)}")
    if view.progress:
        lines.append(f"  {progress_line(view.progress).replace('progress: ', 'progress:  ', 1)}")
    for kind, title in (("info", "log"), ("errors", "errors")):
        entries = report.get(kind) or []
        cut = (report.get("cut") or {}).get(kind, 0)
        if entries or cut:
            lines.append(f"{title}:")
            lines.extend(
                f"  {_local(e.get('time', ''))[11:19]} {e.get('level', ''):<7} {e.get('message', '')}"
                for e in entries
            )
            if cut:
                lines.append(f"  ... {cut} more lines not kept (host.task_log.max_bytes)")
    if view.error:
        lines.append(f"error: {view.error}")
        if view.raised_at:
            lines.append(f"  {view.raised_at}")
    elif state == "SUCCESS":
        lines.append("result:")
        lines.append(f"  {view.render_result()}")
    elif view.result is not None and view.result is not view.progress:
        # The info of a state the task set itself (update_state(state=..., meta=...)).
        lines.append("info:")
        lines.append(f"  {json.dumps(view.result, default=repr)}")
    return "\n".join(lines)


def results_table(rows: Sequence[ResultRow]) -> str:
    """``host results``: a row per result, times local; OUTCOME and RUNTIME when a task reported them."""
    head = ["TASK ID", "STATE", "TASK", "DATE DONE", "WORKER"]
    reported = any(r.outcome or r.runtime is not None for r in rows)
    if reported:
        head += ["OUTCOME", "RUNTIME"]
    cells = []
    for r in rows:
        done = r.date_done.astimezone().strftime("%Y-%m-%d %H:%M:%S") if r.date_done else None
        row = [r.task_id, r.state, r.name, done, r.worker]
        if reported:
            row += [r.outcome, _runtime(r.runtime)]
        cells.append(row)
    return table(head, cells)


def _runtime(seconds: float | None) -> str | None:
    """A task's run time: ``0.4 ms``, ``2.35 s``, ``12.3 s``, then as :func:`duration` writes it."""
    if seconds is None:
        return None
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s" if seconds < 60 else duration(seconds)
