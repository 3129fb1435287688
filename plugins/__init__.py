"""What extension authors import: the hook marker and a small toolkit.

::

    from plugins import hookimpl, plugin_config, send_task

    @hookimpl
    def host_queues():
        return {"example": ["example.add"]}

The hooks are specified in :mod:`plugins.hookspecs` and documented in
``docs/plugins.md``; the toolkit is :mod:`plugins.toolkit`. Importing this
package is cheap: it does not import Celery, load a plugin or read a
configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from plugins.hookspecs import PROJECT

if TYPE_CHECKING:
    from celery import Task

    from plugins.toolkit import (
        broker_available,
        exclusive_task,
        host_config,
        inspect_workers,
        plugin_config,
        purge,
        queue_info,
        recent_results,
        revoke,
        send_many,
        send_task,
        task_result,
        worker_status,
    )

__all__ = [
    "broker_available",
    "celery",
    "exclusive_task",
    "host_config",
    "hookimpl",
    "inspect_workers",
    "plugin_config",
    "purge",
    "queue_info",
    "recent_results",
    "revoke",
    "send_many",
    "send_task",
    "Task",
    "task_result",
    "worker_status",
]

#: Marks a function as the implementation of the hook with the same name.
hookimpl = pluggy.HookimplMarker(PROJECT)


#: The toolkit's names (all of __all__ but what this module defines itself), imported when first used.
_TOOLKIT = frozenset(__all__) - {"Task", "celery", "hookimpl"}


def __getattr__(name: str) -> Any:
    # Lazy, so that importing ``plugins`` (or plugins.hookspecs, which the
    # framework does) imports neither the toolkit nor Celery.
    if name in _TOOLKIT:
        from plugins import toolkit

        return getattr(toolkit, name)
    if name == "celery":
        from core.celery_app import celery

        return celery
    if name == "Task":  # the base of class-based tasks: the app's task class, with self.context
        from core.celery_app import celery

        return celery.Task
    raise AttributeError(f"module 'plugins' has no attribute {name!r}")
