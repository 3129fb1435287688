"""The embedded broker and result store: Celery with no server at all.

``development.ini`` uses two URLs that this module makes known to kombu and
Celery under the scheme ``embedded``::

    celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
    celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite

Both are files on local disk in SQLite's WAL mode, shared by every process of
the host on this machine (the worker, its pool children, ``host send``, the
web application).

Why not kombu's own ``sqla+sqlite://`` transport as it is:

* it keeps every delivered message in the table (``visible = 0``), so the
  store grows without bound; this one deletes a message as it delivers it;
* it polls once a second, and hands every transport option to
  ``create_engine``, so ``polling_interval`` cannot even be set through it;
  this one polls every 20 ms (``broker_transport_options.polling_interval``);
* it takes a lock around a SELECT and an UPDATE; here a single
  ``DELETE ... RETURNING`` statement takes a message atomically;
* when the worker's prefetch window is full (every message it may hold is
  waiting for a pool process), kombu's virtual transport sleeps a whole
  polling interval before it looks again, which caps a busy worker at
  prefetch-count messages per interval; this one wakes as soon as a
  message is acknowledged;
* a worker asked to stop (SIGTERM) starts its warm shutdown at once instead
  of after Celery's 2-second drain timeout.

What it is not: a message is deleted when it is delivered to the worker, not
when the task finishes, so a worker that crashes (SIGKILL, power loss) loses
the tasks it had received but not finished. A warm shutdown (SIGTERM) puts
them back. Use RabbitMQ (``production.ini``) where that matters.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import sys
import threading
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import virtual

SCHEME = "embedded"
DEFAULT_POLLING_INTERVAL = 0.02
#: How long a writer waits for another process's write to finish.
BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS host_message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS host_message_queue ON host_message (queue, id);
CREATE TABLE IF NOT EXISTS host_message_undeliverable (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT NOT NULL,
    moved_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
"""

logger = logging.getLogger(__name__)


def register() -> None:
    """Make ``embedded+sqlite://`` known to kombu and Celery (idempotent)."""
    from celery.app.backends import BACKEND_ALIASES
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES.setdefault(SCHEME, "core.embedded:Transport")
    BACKEND_ALIASES.setdefault(SCHEME, "core.embedded_results:ResultBackend")


def sqlite_path(url: str) -> Path:
    """``sqlite:////abs/file.sqlite`` -> ``/abs/file.sqlite`` (SQLAlchemy's URL form)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(
            "the embedded broker needs a URL like embedded+sqlite:///%(here)s/data/broker.sqlite, "
            f"got {url!r}"
        )
    return Path(url[len(prefix) :])


def private_file(path: Path) -> None:
    """Create the store's folder (0700) and file (0600) if missing: readable by their owner only.

    Whoever can read a store sees every task's arguments and results; whoever
    can write to it can make a worker run a task. SQLite gives its ``-wal``
    and ``-shm`` files the mode of the database file. Existing files are left
    as they are: ``host doctor`` warns about them.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def loose_permissions(path: Path) -> list[str]:
    """What others than the owner may do with the store's file and folder (empty: nothing)."""
    found = []
    for item, private in ((path.parent, 0o700), (path, 0o600)):
        try:
            mode = item.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & ~private:
            found.append(f"{item} is {mode:o} (should be {private:o})")
    return found


def connect(path: Path) -> sqlite3.Connection:
    """Open a store in autocommit mode with WAL, creating it (private) if needed."""
    private_file(path)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL is safe against application crashes; only an OS crash
    # or power loss can drop the last commits.
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _worker_stopping() -> bool:
    """True in a Celery worker that has been asked to shut down (warm or cold)."""
    state = sys.modules.get("celery.worker.state")
    if state is None:
        return False
    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


class Channel(virtual.Channel):
    """A kombu virtual channel storing messages in one SQLite table."""

    _db: sqlite3.Connection | None = None
    _db_pid: int | None = None

    @property
    def db(self) -> sqlite3.Connection:
        # A connection must not cross fork(): pool children open their own.
        if self._db is None or self._db_pid != os.getpid():
            self._db = connect(sqlite_path(self.connection.client.hostname))
            self._db.executescript(_SCHEMA)
            self._db_pid = os.getpid()
        return self._db

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self.db.execute(
            "INSERT INTO host_message (queue, payload) VALUES (?, ?)", (queue, json.dumps(message))
        )

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        while True:
            row = self.db.execute(
                "DELETE FROM host_message WHERE id = ("
                " SELECT id FROM host_message WHERE queue = ? ORDER BY id LIMIT 1"
                ") RETURNING id, payload",
                (queue,),
            ).fetchone()
            if row is None:
                raise Empty()
            message = self._decode(queue, *row)
            if message is not None:
                return message

    def _decode(self, queue: str, row_id: int, payload: str) -> dict[str, Any] | None:
        """A stored message, or None when it is not one kombu wrote.

        Such a row would crash the worker's consumer; it is moved to
        ``host_message_undeliverable`` with the reason, kept for inspection.
        """
        try:
            message = json.loads(payload)
            properties = message.get("properties") if isinstance(message, dict) else None
            if not isinstance(properties, dict) or "delivery_tag" not in properties:
                raise ValueError("not a kombu message (a JSON object with 'properties' and a delivery tag)")
            if message.get("body"):  # what kombu's Message does next, where a failure would crash
                self.decode_body(message["body"], properties.get("body_encoding"))
        except (ValueError, TypeError, RecursionError) as e:
            error = f"{type(e).__name__}: {e}"
            self.db.execute(
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
        return message

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple=multiple)
        self._wake_transport()

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue=requeue)
        self._wake_transport()

    def _wake_transport(self) -> None:
        # The prefetch window has room again: drain_events need not finish its nap.
        wake = getattr(self.connection, "wake", None)
        if wake is not None:
            wake.set()

    def _size(self, queue: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM host_message WHERE queue = ?", (queue,)).fetchone()[0]

    def _purge(self, queue: str) -> int:
        return self.db.execute("DELETE FROM host_message WHERE queue = ?", (queue,)).rowcount

    def close(self) -> None:
        super().close()
        if self._db is not None and self._db_pid == os.getpid():
            self._db.close()
        self._db = None


class Transport(virtual.Transport):
    """kombu transport ``embedded+sqlite:///PATH``."""

    Channel = Channel
    can_parse_url = True
    driver_type = "sqlite"
    driver_name = "sqlite3"
    polling_interval = DEFAULT_POLLING_INTERVAL
    connection_errors = (sqlite3.OperationalError,)
    channel_errors = (sqlite3.OperationalError,)

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        #: Set when a message is acknowledged or rejected (see :meth:`drain_events`).
        self.wake = threading.Event()

    def driver_version(self) -> str:
        return sqlite3.sqlite_version

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """Deliver one message; between empty polls wait ``polling_interval``, or until an ack.

        kombu's version sleeps the whole interval also when a message is
        waiting but the prefetch window is full, which caps a busy worker at
        prefetch-count messages per interval.

        A worker asked to stop (SIGTERM) is told at once (``socket.timeout``,
        which is ``TimeoutError``) instead of at the end of Celery's 2-second
        ``timeout``, so that it starts its warm shutdown without taking
        another message.
        """
        started = monotonic()
        interval = self.polling_interval
        if timeout and interval and interval > timeout:
            interval = timeout
        while True:
            self.wake.clear()
            try:
                self.cycle.get(self._deliver, timeout=timeout)  # type: ignore[attr-defined]
            except Empty:
                if _worker_stopping() or (timeout is not None and monotonic() - started >= timeout):
                    raise TimeoutError() from None
                if interval is not None:
                    self.wake.wait(interval)
            else:
                return
