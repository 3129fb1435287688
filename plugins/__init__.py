"""What extension authors import: the hook marker and a small toolkit.

::

    from plugins import hookimpl, plugin_config, send_task

    @hookimpl
    def host_queues():
        return {"example": ["example.add"]}

The hooks are specified in :mod:`plugins.hookspecs` and documented in
``docs/plugins.md``. Importing this package is cheap: it does not import
Celery, load a plugin or read a configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from plugins.hookspecs import PROJECT

if TYPE_CHECKING:
    from celery.result import AsyncResult

    from core.celery_app import HostCelery
    from core.config import HostConfig

__all__ = ["celery", "host_config", "hookimpl", "plugin_config", "send_many", "send_task"]

#: Marks a function as the implementation of the hook with the same name.
hookimpl = pluggy.HookimplMarker(PROJECT)


def _app() -> HostCelery:
    from core.celery_app import celery

    return celery


def host_config() -> HostConfig:
    """The host's validated configuration (configuring the app from ``$HOST_CONFIG`` if needed)."""
    return _app().configure_from_environment()


def plugin_config(name: str) -> dict[str, Any]:
    """The validated options of plugin ``name``'s ``[plugin:NAME]`` section.

    :raises KeyError: when the plugin is not enabled.
    """
    host_config()  # configures the app, and so loads the plugins, when nothing has yet
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
        ``host.max_message_bytes``.
    """
    from core.client import check_size
    from core.settings import queue_name

    app = _app()
    config = app.configure_from_environment()
    check_size(app, name, args, kwargs or {})
    if isinstance(options.get("queue"), str):
        options["queue"] = queue_name(config, options["queue"])
    return app.send_task(name, args=list(args), kwargs=dict(kwargs or {}), **options)


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


def __getattr__(name: str) -> object:
    # Lazy, so that importing ``plugins`` does not import Celery.
    if name == "celery":
        return _app()
    raise AttributeError(f"module 'plugins' has no attribute {name!r}")
