"""Headless control of the workers and queues: inspect, status, revoke, purge, queue counts.

``host inspect``, ``host status``, ``host revoke``, ``host purge`` and
``host queues`` call these, and so do the toolkit's ``inspect_workers``,
``worker_status``, ``revoke``, ``purge`` and ``queue_info`` (for a web
application that should not shell out). Each takes the configured app and
returns plain data.

Workers are asked through Celery's remote control (a broadcast on the
site's control exchange, replies collected for ``timeout`` seconds, or until
every worker named has answered). Queues are counted without any worker: on
RabbitMQ by a passive ``queue_declare`` of each queue (it creates nothing), its
type (classic, quorum, stream) probed by declares that change nothing
(:func:`_queue_type`); on the embedded broker from its SQLite store
(:func:`core.embedded_store.read_report`).

A queue is named as plugins and ``-Q`` name it; ``host.site_id``'s prefix is
added on the way to the broker and taken off on the way back
(:func:`core.settings.queue_name`). A broker that does not answer is a
:class:`~core.errors.ServiceUnavailable` naming it, password masked.
"""

from __future__ import annotations

import signal as signals
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import HostError, UsageError
from core.masking import mask, mask_url
from core.sending import broker_unavailable, login_refused
from core.settings import queue_name, queue_prefix

#: What ``host inspect`` can ask, each one of Celery's ``Inspect`` methods.
INSPECTIONS = ("registered", "active", "scheduled", "reserved", "stats", "ping")
DEFAULT_TIMEOUT = 1.0
#: Signals worth a mention when a name is wrong.
COMMON_SIGNALS = ("SIGTERM", "SIGKILL", "SIGINT", "SIGUSR1")


class RevokeRefused(HostError):
    """A worker answered a revoke with an error: the task was not terminated."""

    exit_code = 1


class NoWorkerAnswered(HostError):
    """No worker answered a remote-control request in time: none runs, or all are too busy."""

    exit_code = 1


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as ``host status`` shows it."""

    worker: str
    #: The queues it consumes, as plugins and ``-Q`` name them (no site prefix).
    queues: list[str]
    #: How many tasks it is running now.
    active: int
    #: Its pool: ``prefork``, ``solo``, ``threads``...; and how many tasks it runs at once.
    pool: str | None
    concurrency: int | None
    uptime: int | None
    pid: int | None
    #: Tasks it has started since it started, all names together (Celery's stats ``total``).
    tasks_started: int


@dataclass(frozen=True)
class Revoked:
    """What ``host revoke`` sent, and what each worker answered."""

    task_ids: list[str]
    terminate: bool
    signal: str | None
    #: worker -> its answer (``terminate: ID``, ``tasks {...} flagged as revoked``...)
    replies: dict[str, str]


@dataclass(frozen=True)
class QueueInfo:
    """A queue and its counts; ``waiting`` is None for a queue the broker does not have."""

    name: str
    broker_name: str
    waiting: int | None
    consumers: int | None
    #: Delivered to a worker and not yet acknowledged (known on the embedded broker only).
    held: int | None = None
    #: ``classic``, ``quorum`` or ``stream`` on RabbitMQ; None on the embedded broker, for a
    #: queue the broker does not have, and when no probe matched (:func:`_queue_type`).
    type: str | None = None


@dataclass(frozen=True)
class Purged:
    """How many waiting messages ``host purge`` removed from one queue (None: no such queue)."""

    name: str
    broker_name: str
    removed: int | None


# -- asking the workers ----------------------------------------------------------------------


def inspect(
    app: Any, what: str, timeout: float = DEFAULT_TIMEOUT, workers: Sequence[str] = ()
) -> dict[str, Any]:
    """Celery's ``inspect WHAT``: worker -> its answer; empty when no worker answered.

    :param what: one of :data:`INSPECTIONS`.
    :param workers: ask only these (node names); the answer comes as soon as
        all of them have answered.
    Task arguments in the answers are masked (:func:`core.masking.mask`).
    """
    if what not in INSPECTIONS:
        raise UsageError(f"cannot inspect {what!r}", hint=f"ask for one of: {', '.join(INSPECTIONS)}")
    with _broker(app, "the workers were not asked") as connection:
        asked = app.control.inspect(connection=connection, timeout=timeout, **_destination(workers))
        replies = getattr(asked, what)() or {}
    return {worker: _masked(what, reply) for worker, reply in sorted(replies.items())}


def worker_status(
    app: Any, timeout: float = DEFAULT_TIMEOUT, workers: Sequence[str] = ()
) -> list[WorkerStatus]:
    """Each worker that answered within ``timeout``: its queues, running tasks, pool and uptime.

    One broadcast finds the workers; the two that follow ask only those and
    end as soon as each has answered.
    """
    with _broker(app, "the workers were not asked") as connection:
        stats = app.control.inspect(connection=connection, timeout=timeout, **_destination(workers)).stats()
        if not stats:
            return []
        found = app.control.inspect(connection=connection, timeout=timeout, **_destination(sorted(stats)))
        queues, active = found.active_queues() or {}, found.active() or {}
    prefix = queue_prefix(app.host_config) if app.host_config is not None else ""
    return [_status(name, stats[name], queues.get(name), active.get(name), prefix) for name in sorted(stats)]


def revoke(
    app: Any,
    task_ids: Sequence[str],
    *,
    terminate: bool = False,
    signal: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    workers: Sequence[str] = (),
) -> Revoked:
    """Revoke tasks on every worker (or on ``workers``): a task waiting in a queue or held by a
    worker is discarded, never run; with ``terminate`` a running one is ended with ``signal``
    (default SIGTERM). The result store marks each REVOKED.

    The workers keep the revoked ids in memory (a worker starting beside
    them learns them at start-up, Celery's "mingle"): when no worker answers,
    nobody keeps the revoke, and the tasks will run when a worker takes them.

    :raises core.errors.UsageError: for an unknown signal, or a signal without ``terminate``.
    """
    if not task_ids:
        raise UsageError(
            "no task id given", hint="give the ids `host send` printed, or see `host inspect active`"
        )
    if signal is not None and not terminate:
        raise UsageError(
            f"--signal {signal} is the signal --terminate sends to a running task",
            hint="add --terminate, or leave out --signal",
        )
    name = signal_name(signal) if terminate else None
    with _broker(app, "nothing was revoked") as connection:
        replies = app.control.revoke(
            list(task_ids),
            terminate=terminate,
            signal=name or "SIGTERM",
            reply=True,
            timeout=timeout,
            connection=connection,
            **_destination(workers),
        )
    answers = {worker: _answer(reply) for each in replies or [] for worker, reply in each.items()}
    return Revoked(list(task_ids), terminate, name, dict(sorted(answers.items())))


def signal_name(name: str | None) -> str:
    """``term``, ``TERM``, ``SIGTERM`` or ``15`` -> ``SIGTERM``; an unknown one is a UsageError."""
    if name is None:
        return "SIGTERM"
    if name.strip().isdigit():
        try:
            return signals.Signals(int(name)).name
        except ValueError:
            raise UsageError(
                f"--signal {name} is not a signal number of this system",
                hint=f"give a name such as {', '.join(COMMON_SIGNALS)}",
            ) from None
    wanted = name.strip().upper()
    wanted = wanted if wanted.startswith("SIG") else f"SIG{wanted}"
    if wanted not in signals.Signals.__members__:
        raise UsageError(
            f"--signal {name!r} is not a signal name",
            hint=f"give a name such as {', '.join(COMMON_SIGNALS)} (SIG may be left out)",
        )
    return wanted


def no_worker(app: Any, timeout: float, workers: Sequence[str] = (), what: str = "") -> NoWorkerAnswered:
    """The error for a request no worker answered: which broker was asked, and how to start a worker."""
    asked = f"worker {', '.join(workers)}" if workers else "worker"
    url = mask_url(str(app.conf.broker_url))
    config = app.host_config
    ini = _shown_path(config.path) if config is not None else "FILE"
    return NoWorkerAnswered(
        f"no {asked} answered within {timeout:g} s (broker {url}){what}",
        hint=f"start one: host celeryd --config {ini} (busy workers may need a longer --timeout)",
    )


# -- the queues ---------------------------------------------------------------------------------


def known_queues(app: Any) -> list[str]:
    """The queues a worker on this configuration consumes: the default queue and the plugins'.

    Read from the settings, not from ``app.amqp.queues``, which also gains
    every queue this process has sent to.
    """
    configured = app.conf.task_queues
    if not configured:
        return [app.conf.task_default_queue]
    return [str(getattr(queue, "name", queue)) for queue in configured]


def queue_info(app: Any, queues: Iterable[str] | None = None) -> list[QueueInfo]:
    """Each queue with its waiting messages and consumers; no worker is needed.

    :param queues: queue names as plugins and ``-Q`` give them (default: the
        app's queues). On the embedded broker, every other queue of the site
        that holds messages is listed too (a task sent to a queue no worker
        consumes shows there).
    """
    names = _broker_names(app, queues)
    path = _embedded_path(app)
    if path is not None:
        return _embedded_queues(app, path, names, everything=queues is None)
    found = []
    with _broker(app, "the queues were not counted") as connection:
        for name in names:
            declared = _declared(connection, name)
            if declared is None:
                found.append(QueueInfo(_short(app, name), name, None, None))
                continue
            kind = _queue_type(connection, name, _configured(app, name))
            found.append(QueueInfo(_short(app, name), name, *declared, type=kind))
    return found


def purge(app: Any, queues: Iterable[str] | None = None) -> list[Purged]:
    """Delete the messages waiting in each queue (default: the app's queues); returns the counts.

    Messages a worker holds (running, or reserved with late acks) stay: a
    worker that dies returns them to the queue.

    :raises core.errors.UsageError: for a queue named in ``queues`` that the
        broker does not have (nothing is purged then).
    """
    names = _broker_names(app, queues)
    with _broker(app, "nothing was purged") as connection:
        missing = [name for name in names if _declared(connection, name) is None]
        if queues is not None and missing:
            raise UsageError(
                f"no queue {', '.join(_short(app, m) for m in missing)} on the broker "
                f"{mask_url(str(app.conf.broker_url))}",
                hint=f"`host queues` lists the queues; this configuration's are "
                f"{', '.join(_short(app, q) for q in known_queues(app))}",
            )
        purged = []
        for name in names:
            removed = None
            if name not in missing:
                with connection.channel() as channel:
                    removed = int(channel.queue_purge(name) or 0)
            purged.append(Purged(_short(app, name), name, removed))
    return purged


# -- helpers ------------------------------------------------------------------------------------


@contextmanager
def _broker(app: Any, what: str) -> Iterator[Any]:
    """A connection to the broker, open; a broker that does not answer is ServiceUnavailable."""
    from kombu.exceptions import OperationalError

    timeout = float(app.conf.broker_connection_timeout or 4.0)
    connection = app.connection_for_write(connect_timeout=timeout)
    errors = (OperationalError, *connection.connection_errors)
    try:
        with connection:
            try:
                connection.ensure_connection(
                    max_retries=1, interval_start=0, interval_step=0, timeout=timeout
                )
            except connection.channel_errors as e:  # py-amqp's AccessRefused: a wrong user or password
                raise login_refused(app, e) from e
            yield connection
    except errors as e:
        raise broker_unavailable(app, what, e) from e


def _destination(workers: Sequence[str]) -> dict[str, Any]:
    """Ask only ``workers``, and stop waiting once each has answered."""
    return {"destination": list(workers), "limit": len(workers)} if workers else {}


def _masked(what: str, reply: Any) -> Any:
    """Task arguments in an ``active``, ``reserved`` or ``scheduled`` answer, secrets masked."""
    if what not in ("active", "reserved", "scheduled") or not isinstance(reply, list):
        return reply
    return [_masked_request(item) for item in reply]


def _masked_request(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    if isinstance(item.get("request"), dict):  # scheduled: {"eta": ..., "request": {...}}
        return {**item, "request": _masked_request(item["request"])}
    return {**item, **{key: mask(item[key]) for key in ("args", "kwargs") if key in item}}


def _answer(reply: Any) -> str:
    """A worker's answer: its ``ok`` text, or ``error: ...``."""
    if isinstance(reply, dict):
        if reply.get("error"):
            return f"error: {reply['error']}"
        return str(reply.get("ok") or reply)
    return str(reply)


def _status(name: str, stats: dict[str, Any], queues: Any, active: Any, prefix: str) -> WorkerStatus:
    pool = stats.get("pool") or {}
    return WorkerStatus(
        worker=name,
        queues=[_strip(prefix, q.get("name", "")) for q in queues or [] if isinstance(q, dict)],
        active=len(active or []),
        pool=pool_kind(pool),
        concurrency=pool.get("max-concurrency"),
        uptime=stats.get("uptime"),
        pid=stats.get("pid"),
        tasks_started=sum((stats.get("total") or {}).values()),
    )


def pool_kind(pool: dict[str, Any]) -> str | None:
    """A worker's pool from its stats: ``celery.concurrency.prefork:TaskPool`` -> ``prefork``."""
    implementation = str(pool.get("implementation") or "")
    return implementation.partition(":")[0].rpartition(".")[2] or None


def _strip(prefix: str, name: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def _short(app: Any, name: str) -> str:
    """A queue's name on the broker -> as plugins and ``-Q`` name it."""
    config = app.host_config
    return _strip(queue_prefix(config), name) if config is not None else name


def _broker_names(app: Any, queues: Iterable[str] | None) -> list[str]:
    if queues is None:
        return known_queues(app)
    config = app.host_config
    names = [queue_name(config, q) if config is not None else q for q in queues]
    return list(dict.fromkeys(names))


def _declared(connection: Any, name: str) -> tuple[int, int] | None:
    """``(waiting, consumers)`` by a passive declare (it creates nothing); None: no such queue."""
    from kombu.exceptions import ChannelError  # amqp's, raised by py-amqp and kombu's virtual transports

    # RabbitMQ closes the channel on NOT_FOUND, so each queue gets a channel of its own.
    with connection.channel() as channel:
        try:
            ok = channel.queue_declare(name, passive=True)
        except (ChannelError, *connection.channel_errors) as e:
            if getattr(e, "code", None) == 404 or "NOT_FOUND" in str(e):
                return None
            raise
    return int(ok.message_count), int(ok.consumer_count)


#: RabbitMQ's queue types, as its ``x-queue-type`` argument names them.
QUEUE_TYPES = ("classic", "quorum", "stream")


def _queue_type(connection: Any, name: str, configured: Any) -> str | None:
    """The type of the queue ``name``, which exists, by declares that change nothing; None if none matched.

    AMQP 0-9-1 cannot ask a queue's type, and the management API may not be
    enabled. But RabbitMQ refuses a declare of an existing queue whose
    arguments differ from the queue's own (PRECONDITION_FAILED, 406,
    "inequivalent arg 'x-queue-type'"), and accepts, changing nothing, one
    that matches. So each type is tried with a declare carrying it: the type
    the configuration declares first (Celery's ``x-queue-type``, else
    classic), which on a broker that matches the configuration is the one
    probe. On RabbitMQ 3.10 a queue declared without the argument is classic
    and matches ``x-queue-type = classic``. A refusal closes its channel, so
    each probe has a channel of its own. RabbitMQ compares the other
    arguments too, so the probe repeats the configured ones
    (``x-max-priority``...); a queue declared with arguments the
    configuration does not have matches no probe. A user without the
    configure permission on the queue is refused every probe (403): None too.

    A declare creates a queue that does not exist: call this only after
    :func:`_declared` found it.
    """
    from kombu.exceptions import ChannelError

    arguments = dict(getattr(configured, "queue_arguments", None) or {})
    first = str(arguments.get("x-queue-type") or "classic")
    for kind in dict.fromkeys((first, *QUEUE_TYPES)):
        with connection.channel() as channel:
            try:
                channel.queue_declare(
                    name,
                    durable=getattr(configured, "durable", True),
                    exclusive=False,
                    auto_delete=getattr(configured, "auto_delete", False),
                    arguments={**arguments, "x-queue-type": kind},
                )
            except (ChannelError, *connection.channel_errors) as e:
                if getattr(e, "code", None) == 406:  # not this type (or another argument differs)
                    continue
                return None
        return kind
    return None


def _configured(app: Any, name: str) -> Any:
    """The configuration's declaration of the queue ``name`` (a kombu ``Queue``), or None."""
    # dict.get: Celery's Queues would create a declaration for a name it lacks.
    return dict.get(app.amqp.queues, name)


def _embedded_path(app: Any) -> Path | None:
    from core.embedded import SCHEME, sqlite_path

    url = str(app.conf.broker_url or "")
    return sqlite_path(url.partition("+")[2]) if url.startswith(f"{SCHEME}+") else None


def _embedded_queues(app: Any, path: Path, names: list[str], everything: bool) -> list[QueueInfo]:
    """Counts read from the embedded store, without creating it; a queue it lacks is empty."""
    from core.embedded_store import read_report

    report = read_report(path)
    counts = report.queues if report is not None else {}
    if everything:
        prefix = queue_prefix(app.host_config) if app.host_config is not None else ""
        names = names + [
            q for q in counts if q not in names and q.startswith(prefix) and not _internal(app, q)
        ]
    found = []
    for name in names:
        waiting, held, consumers = counts.get(name, (0, 0, 0))
        found.append(QueueInfo(_short(app, name), name, waiting, consumers, held))
    return found


def _internal(app: Any, queue: str) -> bool:
    """A queue of Celery's remote control (``NODE.celery.pidbox``, replies) or events (``celeryev.ID``)."""
    return queue.endswith(f"{app.conf.control_exchange}.pidbox") or queue.startswith(
        f"{app.conf.event_exchange}."
    )


def _shown_path(path: Path) -> str:
    """The ini's path relative to the current folder when it is inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
