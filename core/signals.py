"""Celery's worker and task signals, delivered to the plugins' lifecycle hooks.

Each hook is called for each plugin separately: one plugin raising is logged
with its name, and the others are still called. A signal is only connected
when some plugin implements its hook, so a host without such plugins runs
its tasks exactly as plain Celery does.

The failure emails of ``host.admin_emails`` (:mod:`core.notify`) are connected
here too, beside the ``host_task_failure`` hook: both are called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import signals

from core import notify

if TYPE_CHECKING:
    from celery import Celery

    from core.plugin_manager import HostPluginManager, Plugin

logger = logging.getLogger("host.plugins")

#: Celery signal -> the hook it calls.
HOOKS = {
    "worker_init": "host_worker_init",
    "worker_process_init": "host_worker_process_init",
    "worker_shutdown": "host_worker_shutdown",
    "task_success": "host_task_success",
    "task_failure": "host_task_failure",
}


def connect(app: Celery, pm: HostPluginManager) -> None:
    """Connect the signals whose hooks ``pm``'s plugins implement, for ``app`` only.

    Calling it again for the same app replaces the earlier connections.
    """
    for signal_name, hook in HOOKS.items():
        signal = getattr(signals, signal_name)
        uid = f"host:{id(app)}:{hook}"
        signal.disconnect(dispatch_uid=uid)
        callers = [(plugin, pm.caller(plugin, hook)) for plugin in pm.implementing(hook)]
        if callers:
            receiver = _RECEIVERS[signal_name](app, _notify(hook, callers))
            signal.connect(receiver, weak=False, dispatch_uid=uid)
    # Failure emails to host.admin_emails: beside the host_task_failure hook, not instead of it.
    notify.connect(app)


Notify = Callable[..., None]


def _notify(hook: str, callers: list[tuple[Plugin, Callable[..., Any]]]) -> Notify:
    def notify(**kwargs: Any) -> None:
        for plugin, call in callers:
            try:
                call(**kwargs)
            except Exception as e:
                logger.error(
                    "plugin %s: %s() raised %s", plugin.label, hook, plugin.describe(e), exc_info=True
                )

    return notify


def _worker_init(app: Celery, notify: Notify) -> Callable[..., None]:
    def receiver(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            notify(app=app)

    return receiver


def _worker_process_init(app: Celery, notify: Notify) -> Callable[..., None]:
    # Sent with the hostname as sender: a pool process belongs to the one
    # worker (and app) that forked it.
    def receiver(**_: Any) -> None:
        notify()

    return receiver


def _worker_shutdown(app: Celery, notify: Notify) -> Callable[..., None]:
    def receiver(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            notify()

    return receiver


def _task_success(app: Celery, notify: Notify) -> Callable[..., None]:
    def receiver(sender: Any = None, result: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            request = sender.request
            notify(task=sender, task_id=request.id, args=request.args, kwargs=request.kwargs, result=result)

    return receiver


def _task_failure(app: Celery, notify: Notify) -> Callable[..., None]:
    def receiver(
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        args: Any = None,
        kwargs: Any = None,
        einfo: Any = None,
        **_: Any,
    ) -> None:
        if getattr(sender, "app", None) is app:
            traceback = str(einfo.traceback) if einfo is not None else ""
            notify(
                task=sender,
                task_id=task_id,
                args=args,
                kwargs=kwargs,
                exception=exception,
                traceback=traceback,
            )

    return receiver


_RECEIVERS: dict[str, Callable[[Any, Notify], Callable[..., None]]] = {
    "worker_init": _worker_init,
    "worker_process_init": _worker_process_init,
    "worker_shutdown": _worker_shutdown,
    "task_success": _task_success,
    "task_failure": _task_failure,
}
