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
  ``DELETE ... RETURNING`` statement takes a message atomically.

What it is not: a message is deleted when it is delivered to the worker, not
when the task finishes, so a worker that crashes (SIGKILL, power loss) loses
the tasks it had received but not finished. A warm shutdown (SIGTERM) puts
them back. Use RabbitMQ (``production.ini``) where that matters.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from queue import Empty
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
"""


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
            f"the embedded broker needs a URL like embedded+sqlite:///%(here)s/data/broker.sqlite, got {url!r}"
        )
    return Path(url[len(prefix):])


def connect(path: Path) -> sqlite3.Connection:
    """Open a store in autocommit mode with WAL, creating its folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL is safe against application crashes; only an OS crash
    # or power loss can drop the last commits.
    db.execute("PRAGMA synchronous=NORMAL")
    return db


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
        row = self.db.execute(
            "DELETE FROM host_message WHERE id = ("
            " SELECT id FROM host_message WHERE queue = ? ORDER BY id LIMIT 1"
            ") RETURNING payload",
            (queue,),
        ).fetchone()
        if row is None:
            raise Empty()
        return json.loads(row[0])

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
    default_port = 0
    driver_type = "sqlite"
    driver_name = "sqlite3"
    polling_interval = DEFAULT_POLLING_INTERVAL
    connection_errors = (sqlite3.OperationalError,)
    channel_errors = (sqlite3.OperationalError,)

    def driver_version(self) -> str:
        return sqlite3.sqlite_version
