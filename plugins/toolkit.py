"""The toolkit for plugins and task modules: configuration, options, sending.

Re-exported by :mod:`plugins`; import it from there::

    from plugins import plugin_config, send_task

Nothing here is imported until called: ``import plugins`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from celery.result import AsyncResult

    from core.app import HostCelery
    from core.config import HostConfig

F = TypeVar("F", bound=Callable[..., Any])


def _app() -> HostCelery:
    from core.celery_app import celery

    return celery


def host_config() -> HostConfig:
    """The host's validated configuration (configuring the app from ``$HOST_CONFIG`` if needed)."""
    return _app().configure_from_environment()


def plugin_config(name: str) -> dict[str, Any]:
    """The validated options of plugin ``name``'s ``[plugin:NAME]`` section.

    Within a hook (``host_beat_schedule``, say), the options of the plugins
    being loaded; elsewhere those of the configured app (configuring it from
    ``$HOST_CONFIG`` if nothing has yet).

    :raises KeyError: when the plugin is not enabled.
    """
    from core.plugin_manager import calling

    plugins = calling()
    if plugins is None:
        host_config()
        plugins = _app().host_plugins
    if plugins is None or name not in plugins.options:
        enabled = ", ".join(plugins.options) if plugins else "none"
        raise KeyError(f"plugin {name!r} is not enabled in host.plugins (enabled: {enabled})")
    return plugins.options[name]


def send_task(
    name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
) -> AsyncResult:
    """Send task ``name`` by name, routed as the plugins' queues say; returns its AsyncResult.

    ``options`` are those of Celery's ``send_task`` (``countdown``, ``eta``,
    ``task_id``...). A ``queue`` given by name is the queue as plugins and
    ``-Q`` call it: ``host.site_id``'s prefix is added, as ``host send --queue``
    does.

    :raises core.errors.UsageError: when the arguments are larger than
        ``host.max_message_bytes`` or cannot be serialised.
    :raises core.errors.ServiceUnavailable: when the broker does not answer.
    """
    from core.sending import send

    app = _app()
    app.configure_from_environment()
    return send(app, name, args, kwargs or {}, **options)


def send_many(name: str, items: Iterable[Any], **options: Any) -> list[str]:
    """Send task ``name`` once per item, over one connection; returns the task ids in order.

    Each item is a list of positional arguments, or a mapping with ``args``,
    ``kwargs`` and optionally ``task_id``, ``countdown`` or ``queue``.
    ``options`` (``queue``, ``countdown``...) apply to every message. Each
    message is exactly what :func:`send_task` sends; with RabbitMQ publisher
    confirms the broker has confirmed every one when this returns. Several
    times faster than a loop of ``send_task`` (bench/RESULTS.md, row 6).

    :raises core.bulk.BulkSendError: for an item that is not valid; the
        items before it were sent, and ``error.sent`` holds their ids.
    """
    from core.bulk import send_many as send

    app = _app()
    app.configure_from_environment()
    return send(app, name, items, **options)


def exclusive_task(lock_id: str | None = None, **options: Any) -> Callable[[F], F]:
    """Make a task exclusive: at most one run at a time per lock id (put it under ``@celery.task``).

    ::

        @celery.task(name="myext.reindex")
        @exclusive_task(lock_id="dataset-{dataset_id}")
        def reindex(dataset_id): ...

    ``lock_id`` is a :meth:`str.format` template over the task's arguments by
    name (default: the task's name). A call finding the lock held succeeds at
    once with ``{"status": "already running", "holder": TASK_ID, ...}``
    (``on_locked="retry"``: it is retried later). ``expires`` (default
    ``host.locks.expires``), ``on_unavailable`` (``"retry"`` or ``"fail"``),
    ``countdown`` and seed 001's ``task_name`` are the other options; see
    :func:`core.exclusive.exclusive_task` and docs/extensions.md.
    """
    from core.exclusive import exclusive_task as make

    return make(lock_id, **options)
