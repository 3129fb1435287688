"""The embedded broker and result store: Celery with no server at all.

``development.ini`` uses two URLs that this module makes known to kombu and
Celery under the scheme ``embedded``::

    celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
    celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite

Both are files on local disk in SQLite's WAL mode, shared by every process of
the host on this machine (workers, their pool children, ``host send``,
``celery inspect``, Flower, the web application). :mod:`core.embedded_store`
holds the tables, the leases and the wake-ups; this module is the kombu
transport on top of them.

What it does as RabbitMQ does:

* direct, topic and fanout exchanges, with the bindings in the store, so
  Celery's remote control (``celery inspect``, ``control revoke``, ``status``)
  and its events (``-E``, ``celery events``, Flower) work across processes;
* a delivered message stays until it is acknowledged: rejected with requeue,
  or held by a consumer that closed or died (its lease ran out), it is
  delivered again, flagged ``redelivered``; ``no_ack`` consumers (remote
  control, events) take a message and delete it at once;
* auto-delete queues go when their last consumer does; queues with
  ``x-expires`` when unused that long; messages past their queue's
  ``x-message-ttl`` or their own ``expiration`` are dropped;
* several workers consume one queue, and each message goes to one of them.

Why not kombu's own ``sqla+sqlite://`` transport: it marks a message invisible
when it delivers it and never makes it visible again (a killed worker loses
it for good, and the table grows without bound); it has no fanout (no remote
control, no events); it polls once a second and takes a lock around a SELECT
and an UPDATE. Here a single ``UPDATE ... RETURNING`` statement takes a
message, and a publisher wakes waiting consumers through their FIFO.

A message that kombu did not write (it cannot be decoded) would crash the
worker's consumer: it is moved to the table ``host_message_undeliverable``,
with the reason, and logged.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import virtual

from core.embedded_store import (
    BUSY_TIMEOUT,
    DEFAULT_LEASE_SECONDS,
    Consumer,
    Store,
    connect,
    delete_queue,
    loose_permissions,
    private_file,
    store_for,
    transaction,
    wake_all,
)

__all__ = [
    "BUSY_TIMEOUT",
    "SCHEME",
    "Transport",
    "connect",
    "loose_permissions",
    "private_file",
    "register",
    "sqlite_path",
]

SCHEME = "embedded"
#: The fallback: how often a consumer looks at its queues when no wake-up came.
DEFAULT_POLLING_INTERVAL = 1.0
#: Messages delivered per turn of Celery's event loop before it does its other work.
EVENT_LOOP_BATCH = 64

logger = logging.getLogger(__name__)


def register() -> None:
    """Make ``embedded+sqlite://`` known to kombu and Celery (idempotent)."""
    from celery.app.backends import BACKEND_ALIASES
    from celery.signals import worker_shutting_down
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES.setdefault(SCHEME, "core.embedded:Transport")
    BACKEND_ALIASES.setdefault(SCHEME, "core.embedded_results:ResultBackend")
    # A worker asked to stop (SIGTERM, SIGINT) starts its warm shutdown at once,
    # not when its wait for a message times out.
    worker_shutting_down.connect(_wake_on_shutdown, weak=False, dispatch_uid="core.embedded")


def _wake_on_shutdown(**kwargs: Any) -> None:
    wake_all()


def sqlite_path(url: str) -> Path:
    """``sqlite:////abs/file.sqlite`` -> ``/abs/file.sqlite`` (SQLAlchemy's URL form)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(
            "the embedded broker needs a URL like embedded+sqlite:///%(here)s/data/broker.sqlite, "
            f"got {url!r}"
        )
    return Path(url[len(prefix) :])


def _worker_stopping() -> bool:
    """True in a Celery worker that has been asked to shut down (warm or cold)."""
    state = sys.modules.get("celery.worker.state")
    if state is None:
        return False
    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


def _seconds(arguments: dict[str, Any] | None, key: str) -> float | None:
    """An ``x-expires`` or ``x-message-ttl`` queue argument (milliseconds) in seconds."""
    value = (arguments or {}).get(key)
    return None if value is None else float(value) / 1000


class LeaseLost(ConnectionError):
    """This process's consumer was taken for dead (it stalled): the connection must be made anew."""


class QoS(virtual.QoS):
    """kombu's prefetch accounting, with acknowledgements and rejections kept in the store."""

    channel: Channel

    def ack(self, delivery_tag: Any) -> None:
        self.channel._settle(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if requeue:
            self.channel._release([delivery_tag])
        else:
            self.channel._settle(delivery_tag)
        self._quick_ack(delivery_tag)  # type: ignore[attr-defined]


class Channel(virtual.Channel):
    """A kombu virtual channel on the embedded store."""

    QoS = QoS
    supports_fanout = True
    connection: Transport

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        #: Queues consumed with no_ack: a message is deleted as it is taken.
        self._no_ack_queues: set[str] = set()

    @property
    def store(self) -> Store:
        return self.connection.store

    @property
    def db(self) -> sqlite3.Connection:
        return self.connection.store.db

    # -- exchanges, queues and bindings, in the store ---------------------------

    def exchange_declare(
        self,
        exchange: str | None = None,
        type: str = "direct",
        durable: bool = False,
        auto_delete: bool = False,
        arguments: Any = None,
        nowait: bool = False,
        passive: bool = False,
    ) -> None:
        type = type or "direct"
        exchange = exchange or f"amq.{type}"
        if passive and exchange not in self.state.exchanges:
            self._stored_exchange(exchange)  # found, or kombu's NOT_FOUND from the in-memory check
        super().exchange_declare(exchange, type, durable, auto_delete, arguments, nowait, passive)
        if not passive:
            self.db.execute(
                "INSERT OR IGNORE INTO host_exchange (name, type) VALUES (?, ?)", (exchange, type)
            )

    def _stored_exchange(self, exchange: str) -> bool:
        """Copy an exchange another process declared into this process's state."""
        row = self.db.execute("SELECT type FROM host_exchange WHERE name = ?", (exchange,)).fetchone()
        if row is None:
            return False
        self.state.exchanges.setdefault(
            exchange, {"type": row[0], "durable": True, "auto_delete": False, "arguments": {}, "table": []}
        )
        return True

    def exchange_delete(self, exchange: str, if_unused: bool = False, nowait: bool = False) -> None:
        with transaction(self.db) as db:
            db.execute("DELETE FROM host_binding WHERE exchange = ?", (exchange,))
            db.execute("DELETE FROM host_exchange WHERE name = ?", (exchange,))
        self.state.exchanges.pop(exchange, None)

    def typeof(self, exchange: str, default: str = "direct") -> Any:
        if exchange not in self.state.exchanges:
            self._stored_exchange(exchange)
        return super().typeof(exchange, default)

    def _new_queue(
        self,
        queue: str,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.db.execute(
            "INSERT INTO host_queue (name, auto_delete, expires, message_ttl, last_used) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET last_used = excluded.last_used",
            (
                queue,
                bool(auto_delete),
                _seconds(arguments, "x-expires"),
                _seconds(arguments, "x-message-ttl"),
                time.time(),
            ),
        )

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return self.db.execute("SELECT 1 FROM host_queue WHERE name = ?", (queue,)).fetchone() is not None

    def queue_declare(self, queue: str | None = None, passive: bool = False, **kwargs: Any) -> Any:
        declared = super().queue_declare(queue, passive=passive, **kwargs)
        (consumers,) = self.db.execute(
            "SELECT COUNT(*) FROM host_subscription WHERE queue = ?", (declared.queue,)
        ).fetchone()
        return declared._replace(consumer_count=consumers)

    def queue_bind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        exchange = exchange or "amq.direct"
        routing_key, pattern, queue = self.typeof(exchange).prepare_bind(
            queue, exchange, routing_key, arguments
        )
        self.db.execute(
            "INSERT OR IGNORE INTO host_binding (exchange, routing_key, pattern, queue) VALUES (?, ?, ?, ?)",
            (exchange, routing_key, pattern or "", queue),
        )

    def queue_unbind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        self.db.execute(
            "DELETE FROM host_binding WHERE exchange = ? AND routing_key = ? AND queue = ?",
            (exchange or "amq.direct", routing_key, queue),
        )

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any) -> Any:
        with transaction(self.db) as db:
            if (
                if_empty
                and db.execute("SELECT 1 FROM host_message WHERE queue = ? LIMIT 1", (queue,)).fetchone()
            ):
                return None
            if (
                if_unused
                and db.execute("SELECT 1 FROM host_subscription WHERE queue = ?", (queue,)).fetchone()
            ):
                return None
            db.execute("DELETE FROM host_subscription WHERE queue = ?", (queue,))
            return delete_queue(db, queue)

    def get_table(self, exchange: str) -> list[tuple[str, str, str]]:
        return self.db.execute(
            "SELECT routing_key, pattern, queue FROM host_binding WHERE exchange = ?", (exchange,)
        ).fetchall()

    def list_bindings(self) -> Any:
        return self.db.execute("SELECT queue, exchange, routing_key FROM host_binding").fetchall()

    # -- publishing ----------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self._put_many([queue], message)

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        self._put_many([queue for _, _, queue in self.get_table(exchange)], message)

    def _put_many(self, queues: list[str], message: dict[str, Any]) -> None:
        if not queues:
            return
        payload = json.dumps(message)
        expiration = message.get("properties", {}).get("expiration")
        now = time.time()
        db = self.db
        rows = []
        for queue in queues:
            ttl = self.connection.message_ttl(queue)
            if expiration is not None:
                ttl = min(ttl, float(expiration) / 1000) if ttl is not None else float(expiration) / 1000
            rows.append((queue, payload, None if ttl is None else now + ttl))
        if len(rows) == 1:
            db.execute("INSERT INTO host_message (queue, payload, expires_at) VALUES (?, ?, ?)", rows[0])
        else:
            with transaction(db):
                db.executemany("INSERT INTO host_message (queue, payload, expires_at) VALUES (?, ?, ?)", rows)
        self.store.wake_consumers(queues)

    # -- consuming -------------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        self.connection.consumer.subscribe(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._tag_to_queue.values():
            consumer = self.connection.existing_consumer()
            if consumer is not None:
                consumer.unsubscribe(queue)
        return result

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        try:
            message = self.Message(self._take(queue, no_ack), channel=self)
        except Empty:
            return None
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        return self._take(queue, queue in self._no_ack_queues)

    def _take(self, queue: str, no_ack: bool) -> dict[str, Any]:
        """The queue's first deliverable message: held by this consumer, or deleted when ``no_ack``.

        A read finds it and a write takes it if it is still there: in WAL mode
        reads take no lock, so an empty queue costs no write lock, which would
        make other processes' writers wait (SQLite's busy wait sleeps 1 ms and more).
        """
        db = self.db
        holder = None if no_ack else self.connection.consumer.id  # a consumer sweeps, once a second
        while True:
            found = db.execute(
                "SELECT id FROM host_message WHERE queue = ? AND holder IS NULL "
                "AND (expires_at IS NULL OR expires_at > ?) ORDER BY id LIMIT 1",
                (queue, time.time()),
            ).fetchone()
            if found is None:
                raise Empty()
            if no_ack:
                row = db.execute(
                    "DELETE FROM host_message WHERE id = ? AND holder IS NULL "
                    "RETURNING id, payload, deliveries + 1",
                    found,
                ).fetchone()
            else:
                row = db.execute(
                    "UPDATE host_message SET holder = ?, deliveries = deliveries + 1 "
                    "WHERE id = ? AND holder IS NULL RETURNING id, payload, deliveries",
                    (holder, *found),
                ).fetchone()
            if row is None:
                continue  # another consumer took it in between
            message = self._decode(queue, *row)
            if message is not None:
                return message

    def _decode(self, queue: str, row_id: int, payload: str, deliveries: int) -> dict[str, Any] | None:
        """A stored message, or None when it is not one kombu wrote.

        Such a row would crash the worker's consumer; it is moved to
        ``host_message_undeliverable`` with the reason, kept for inspection.
        The delivery tag becomes the row's id, which acknowledgements use.
        """
        try:
            message = json.loads(payload)
            properties = message.get("properties") if isinstance(message, dict) else None
            if not isinstance(properties, dict) or "delivery_tag" not in properties:
                raise ValueError("not a kombu message (a JSON object with 'properties' and a delivery tag)")
            if message.get("body"):  # what kombu's Message does next, where a failure would crash
                self.decode_body(message["body"], properties.get("body_encoding"))
        except (ValueError, TypeError, AttributeError, RecursionError) as e:
            error = f"{type(e).__name__}: {e}"
            with transaction(self.db) as db:
                db.execute("DELETE FROM host_message WHERE id = ?", (row_id,))
                db.execute(
                    "INSERT INTO host_message_undeliverable (queue, payload, error) VALUES (?, ?, ?)",
                    (queue, payload, error),
                )
            logger.error(
                "embedded broker: message %s in queue %r cannot be decoded (%s); "
                "moved to table host_message_undeliverable",
                row_id,
                queue,
                error,
            )
            return None
        properties["delivery_tag"] = row_id
        info = properties.setdefault("delivery_info", {})
        if isinstance(info, dict):
            info["redelivered"] = deliveries > 1
        return message

    # -- settling --------------------------------------------------------------------

    def _settle(self, delivery_tag: int) -> None:
        """An acknowledged (or dead-lettered) message is gone."""
        self.db.execute("DELETE FROM host_message WHERE id = ?", (delivery_tag,))
        self.connection.wake_self()  # the prefetch window has room again

    def _release(self, delivery_tags: list[int]) -> None:
        """Make held messages deliverable again, at their place in their queue."""
        consumer = self.connection.existing_consumer()
        if consumer is None or not delivery_tags:
            return
        marks = ", ".join("?" * len(delivery_tags))
        queues = [
            q
            for (q,) in self.db.execute(
                f"UPDATE host_message SET holder = NULL WHERE holder = ? AND id IN ({marks}) RETURNING queue",
                [consumer.id, *delivery_tags],
            ).fetchall()
        ]
        self.store.wake_consumers(set(queues))
        self.connection.wake_self()

    def _restore(self, message: Any) -> None:
        self._release([message.delivery_tag])

    def _size(self, queue: str) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM host_message WHERE queue = ? AND holder IS NULL", (queue,)
        ).fetchone()[0]

    def _purge(self, queue: str) -> int:
        return self.db.execute(
            "DELETE FROM host_message WHERE queue = ? AND holder IS NULL", (queue,)
        ).rowcount


class Transport(virtual.Transport):
    """kombu transport ``embedded+sqlite:///PATH``."""

    Channel = Channel
    can_parse_url = True
    driver_type = "sqlite"
    driver_name = "sqlite3"
    polling_interval = DEFAULT_POLLING_INTERVAL
    connection_errors = (sqlite3.OperationalError, LeaseLost)  # type: ignore[assignment]  # kombu says tuple[Any]
    channel_errors = (sqlite3.OperationalError,)
    # asynchronous: a worker waits in Celery's event loop (its hub), with the
    # asynchronous prefork pool, as on RabbitMQ and Redis.
    implements = virtual.Transport.implements.extend(
        asynchronous=True, exchange_type=frozenset(["direct", "topic", "fanout"])
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.store = store_for(sqlite_path(client.hostname))
        options = client.transport_options
        self.lease_seconds = float(options.get("lease_seconds", DEFAULT_LEASE_SECONDS))
        self._consumer: Consumer | None = None
        self._message_ttl: dict[str, float | None] = {}

    def driver_version(self) -> str:
        return sqlite3.sqlite_version

    @property
    def consumer(self) -> Consumer:
        """This process's consumer on the store, with its lease: made when first needed.

        A consumer that lost its lease is not replaced here: this connection's
        queues went with it, so the connection must be made anew (LeaseLost).
        """
        self._check_lease()
        consumer = self.existing_consumer()
        if consumer is None:
            # The store may be new to a process that only published so far.
            self.store = store_for(self.store.path)
            consumer = self._consumer = Consumer(self.store, self.lease_seconds)
        return consumer

    def existing_consumer(self) -> Consumer | None:
        consumer = self._consumer
        if consumer is None or not consumer.alive or consumer.pid != os.getpid():
            return None
        return consumer

    def _check_lease(self) -> None:
        consumer = self._consumer
        if consumer is not None and consumer.lost:
            raise LeaseLost(
                f"embedded broker: consumer {consumer.id} lost its lease (it stalled for over "
                f"{consumer.lease_seconds:g} s); reconnecting declares its queues anew"
            )

    def wake_self(self) -> None:
        consumer = self.existing_consumer()
        if consumer is not None:
            consumer.waker.set()

    def message_ttl(self, queue: str) -> float | None:
        """The queue's ``x-message-ttl`` in seconds (queues keep their arguments: cached)."""
        try:
            return self._message_ttl[queue]
        except KeyError:
            row = self.store.db.execute(
                "SELECT message_ttl FROM host_queue WHERE name = ?", (queue,)
            ).fetchone()
            if row is None:
                return None  # not declared (yet): ask again next time
            self._message_ttl[queue] = row[0]
            return row[0]

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Celery's event loop waits on this consumer's FIFO; polling is the fallback.

        The FIFO becomes readable when a message is published to one of its
        queues, when this process acknowledges a message (the prefetch window
        has room again), and when the worker is asked to stop.
        """
        waker = self.consumer.waker
        loop.add_reader(waker.fd, self._on_wake)
        self._loop, self._loop_fd = loop, waker.fd
        self._poll_timer = loop.call_repeatedly(self.polling_interval, self._on_wake)
        loop.call_soon(self._on_wake)

    def _on_wake(self) -> None:
        """Deliver what waits, a batch at a time, so that the loop's other work goes on between."""
        self._check_lease()
        consumer = self.existing_consumer()
        if consumer is None:
            return
        consumer.waker.clear()
        for _ in range(EVENT_LOOP_BATCH):
            try:
                self.cycle.get(self._deliver)  # type: ignore[attr-defined]
            except Empty:
                return
        consumer.waker.set()  # more may wait: back after the loop's other work

    def close_connection(self, connection: Any) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.remove_reader(self._loop_fd)
            self._poll_timer.cancel()
            self._loop = None
        super().close_connection(connection)
        consumer = self.existing_consumer()
        if consumer is not None:
            consumer.close()
        self._consumer = None

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """Deliver one message; between empty looks, wait for a wake-up (or the polling interval).

        A publisher wakes the consumers of its queue, and an acknowledgement
        wakes its own consumer (the prefetch window has room again). A worker
        asked to stop is told at once (``socket.timeout``, which is
        ``TimeoutError``), so that it starts its warm shutdown without
        taking another message.
        """
        self._check_lease()
        waker = self.consumer.waker
        started = monotonic()
        while True:
            self._check_lease()
            waker.clear()
            try:
                self.cycle.get(self._deliver, timeout=timeout)  # type: ignore[attr-defined]
            except Empty:
                waited = monotonic() - started
                if _worker_stopping() or (timeout is not None and waited >= timeout):
                    raise TimeoutError() from None
                nap = self.polling_interval
                if timeout is not None:
                    nap = min(nap, timeout - waited)
                waker.wait(nap)
            else:
                return
