"""The toolkit for plugins and task modules: configuration, options, sending.

Re-exported by :mod:`plugins`; import it from there::

    from plugins import plugin_config, send_task

Nothing here is imported until called: ``import plugins`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from celery.result import AsyncResult

    from core.app import HostCelery
    from core.availability import BrokerCheck
    from core.config import HostConfig
    from core.control import Purged, QueueInfo, Revoked, WorkerStatus
    from core.result_listing import ResultRow
    from core.results import TaskView

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
    :raises core.errors.ServiceUnavailable: when the broker does not answer
        (with ``host.fallback = eager`` the task runs here instead).

    With ``host.task_mode = eager`` the task runs here, now, and this returns
    its ``EagerResult`` (the same ``id``, ``state``, ``get()``).
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


def broker_available(timeout: float | None = None, *, max_age: float | None = None) -> BrokerCheck:
    """Whether the broker can be reached now: true or false, with what answered and how fast.

    ::

        if not broker_available():
            flash("Background tasks are paused; yours will run when the server is back.")

    No worker is needed: it asks the broker alone (a TCP connection; for the
    embedded broker, its store's folder), within ``timeout`` seconds (default
    ``host.broker_check.timeout``, 1 s). The answer is kept for ``max_age``
    seconds (default ``host.broker_check.cache_seconds``, 5 s; 0: ask now), so
    a web page may ask on every request. The result has ``up``, ``url``
    (password masked), ``detail``, ``seconds``, ``timeout`` and ``cached``.
    """
    from core.availability import check_broker

    app = _app()
    app.configure_from_environment()
    return check_broker(app, timeout=timeout, max_age=max_age)


def recent_results(
    state: str | None = None,
    task: str | None = None,
    since: datetime | timedelta | str | None = None,
    limit: int = 20,
) -> list[ResultRow]:
    """The newest results in the result store, newest first, as ``host results`` lists them.

    ::

        for row in recent_results(state="FAILURE", task="example.*", since="1d"):
            print(row.task_id, row.name, row.date_done, row.error)

    ``state`` is a Celery state or ``PROGRESS`` (any case); ``task`` a task
    name, ``*`` matching any characters; ``since`` a ``datetime``, a
    ``timedelta`` back from now, ISO 8601 text or a duration (``10m``,
    ``2h``, ``1d``). Each :class:`core.result_listing.ResultRow` has the
    task's id, state, name, ``date_done`` (UTC), worker, arguments and result
    (secrets masked), error, and its own ``outcome`` and ``runtime`` when it
    reported them. Works on the embedded store, ``db+`` databases and Redis
    (which it scans); no worker is needed.

    :raises core.errors.UsageError: for a state or time that cannot be.
    :raises core.errors.ConfigError: when the result backend keeps no list of results (``rpc://``).
    :raises core.errors.ServiceUnavailable: when the result store does not answer.
    """
    from core.result_listing import recent_results as listing

    app = _app()
    app.configure_from_environment()
    return listing(app, state=state, task=task, since=since, limit=limit)


def inspect_workers(what: str = "ping", timeout: float = 1.0, workers: Sequence[str] = ()) -> dict[str, Any]:
    """``host inspect WHAT``: each worker that answered within ``timeout`` -> its answer.

    ``what`` is ``registered``, ``active``, ``scheduled``, ``reserved``,
    ``stats`` or ``ping``; ``workers`` (node names) asks only those, and
    returns once each has answered. Empty when no worker answered. Task
    arguments in the answers are masked.

    :raises core.errors.ServiceUnavailable: when the broker does not answer.
    """
    from core.control import inspect

    return inspect(_configured(), what, timeout=timeout, workers=workers)


def worker_status(timeout: float = 1.0, workers: Sequence[str] = ()) -> list[WorkerStatus]:
    """``host status``: each worker, its queues, how many tasks it runs, its pool and uptime ([] if none)."""
    from core.control import worker_status as status

    return status(_configured(), timeout=timeout, workers=workers)


def revoke(
    task_ids: str | Sequence[str],
    *,
    terminate: bool = False,
    signal: str | None = None,
    timeout: float = 1.0,
    workers: Sequence[str] = (),
) -> Revoked:
    """``host revoke``: a waiting task is never run; with ``terminate`` a running one gets ``signal``
    (default SIGTERM). ``.replies`` holds each worker's answer: empty, no worker heard it.

    :raises core.errors.UsageError: for an unknown signal name.
    """
    from core.control import revoke as send_revoke

    ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
    return send_revoke(
        _configured(), ids, terminate=terminate, signal=signal, timeout=timeout, workers=workers
    )


def purge(queues: Iterable[str] | None = None) -> list[Purged]:
    """``host purge --yes``: delete the tasks waiting in ``queues`` (as plugins and ``-Q`` name them;
    default: the configuration's queues); returns how many each lost. Nothing asks first."""
    from core.control import purge as purge_queues

    return purge_queues(_configured(), None if queues is None else list(queues))


def queue_info(queues: Iterable[str] | None = None) -> list[QueueInfo]:
    """``host queues``: each queue's waiting tasks and consumers (no worker needed)."""
    from core.control import queue_info as info

    return info(_configured(), None if queues is None else list(queues))


def task_result(task_id: str, *, wait: bool = False, timeout: float | None = None) -> TaskView:
    """``host result ID``: all that is stored about a task, secrets masked.

    The Celery state, the task's own ``outcome`` ("ok", "failed", or None
    while it runs), name, arguments, worker, its log lines, progress and run
    time (``.report``), and its result or error; ``.as_json()`` gives it as
    one dictionary, for a web page. ``wait`` waits until the task has
    finished (at most ``timeout`` seconds). A task the store knows nothing of
    is PENDING.

    :raises core.errors.ResultTimeout: when ``wait`` gave up.
    :raises core.errors.ConfigError: when no result backend is configured.
    :raises core.errors.ServiceUnavailable: when the result store does not answer.
    """
    from core.results import describe, watch

    app = _configured()
    if wait:
        watch(app, task_id, timeout, lambda info: None)
    return describe(app, task_id)


def _configured() -> HostCelery:
    app = _app()
    app.configure_from_environment()
    return app


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
