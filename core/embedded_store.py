"""The embedded broker's store: its tables, the consumers' leases, and their wake-ups.

One SQLite file (WAL mode) holds everything a broker keeps, so that every
process of the host on this machine sees the same broker:

``host_message``
    one row per message in a queue. A delivered message stays, *held* by the
    consumer it was delivered to (``holder``), until that consumer
    acknowledges it (the row is deleted) or rejects it with requeue (it is
    released: ``holder`` is NULL again, at its place in the queue).
``host_queue``, ``host_exchange``, ``host_binding``
    what kombu declares. Bindings are here, not in one process's memory, so
    that a fanout published by ``celery inspect`` in one process reaches the
    pidbox queue of every worker, and replies find their way back.
``host_consumer``, ``host_subscription``
    every process that consumes, with its lease, and the queues it consumes.

Leases. A consumer renews its lease every third of ``lease_seconds`` (30 s by
default, ``celery.broker_transport_options = {"lease_seconds": 30}``) from a
thread of its own. A consumer that died without closing (SIGKILL, power loss)
stops renewing; the next sweep of any living consumer (once a second), or the
start of the next one, releases the messages it held, drops its
subscriptions, and deletes its auto-delete queues. Its messages are thus
deliverable again at most ``lease_seconds`` after it died; sooner when its
process was on this machine, where a sweep sees that the process is gone. A
consumer that stalled for longer than its lease (a suspended laptop) finds
its lease gone when it renews it, and its transport reports a lost
connection: Celery reconnects and declares its queues anew, as after a
RabbitMQ outage. kombu's Redis
transport gets there with a visibility timeout, which also redelivers the
message of a task that is merely slow (or waiting for its countdown); a lease
only ever redelivers a dead consumer's messages.

Wake-ups. Every consumer has a FIFO in ``<store>-wake/``. Publishing a message
writes a byte to the FIFO of each consumer of its queue, and a waiting
consumer ``select()``-s on its own FIFO, so a message is taken within a
fraction of a millisecond while an idle worker sleeps. Polling, once per
``polling_interval`` (1 s), is only the fallback.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import select
import socket
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.config import EMBEDDED_TRANSPORT_OPTIONS

logger = logging.getLogger("core.embedded")

#: How long a writer waits for another process's write to finish.
BUSY_TIMEOUT = 30.0
#: How long a dead consumer's messages stay held, at most (``lease_seconds``).
DEFAULT_LEASE_SECONDS = 30.0
#: How often a living consumer looks for dead ones, expired queues and messages.
SWEEP_INTERVAL = 1.0

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS host_message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    holder TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    expires_at REAL
);
CREATE TABLE IF NOT EXISTS host_message_undeliverable (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT NOT NULL,
    moved_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS host_queue (
    name TEXT PRIMARY KEY,
    auto_delete INTEGER NOT NULL DEFAULT 0,
    expires REAL,
    message_ttl REAL,
    consumed INTEGER NOT NULL DEFAULT 0,
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS host_exchange (
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS host_binding (
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    pattern TEXT NOT NULL,
    queue TEXT NOT NULL,
    PRIMARY KEY (exchange, routing_key, queue)
);
CREATE INDEX IF NOT EXISTS host_binding_queue ON host_binding (queue);
CREATE TABLE IF NOT EXISTS host_consumer (
    id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    wake TEXT NOT NULL,
    lease_until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS host_subscription (
    queue TEXT NOT NULL,
    consumer TEXT NOT NULL,
    PRIMARY KEY (queue, consumer)
);
CREATE INDEX IF NOT EXISTS host_subscription_consumer ON host_subscription (consumer);
"""

# Created after the columns they index exist (a version-1 store gains them first).
_INDEXES = """
DROP INDEX IF EXISTS host_message_queue;
CREATE INDEX IF NOT EXISTS host_message_ready ON host_message (queue, id) WHERE holder IS NULL;
CREATE INDEX IF NOT EXISTS host_message_held ON host_message (holder) WHERE holder IS NOT NULL;
CREATE INDEX IF NOT EXISTS host_message_expiring ON host_message (expires_at)
    WHERE expires_at IS NOT NULL;
"""

# Version 1 (the first embedded broker) deleted a message as it delivered it.
_MIGRATE_FROM_1 = """
ALTER TABLE host_message ADD COLUMN holder TEXT;
ALTER TABLE host_message ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE host_message ADD COLUMN expires_at REAL;
"""


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


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken at once (no upgrade from a read lock that could deadlock)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _create_schema(db: sqlite3.Connection) -> None:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version >= SCHEMA_VERSION:
        return
    with transaction(db):
        (version,) = db.execute("PRAGMA user_version").fetchone()  # another process may have done it
        if version >= SCHEMA_VERSION:
            return
        columns = {row[1] for row in db.execute("PRAGMA table_info(host_message)")}
        if columns and "holder" not in columns:
            for statement in _MIGRATE_FROM_1.strip().split(";\n"):
                db.execute(statement)
        for script in (_SCHEMA, _INDEXES):
            for statement in script.split(";\n"):
                if statement.strip():
                    db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class Store:
    """One process's handle on a broker store: a connection per thread.

    A connection must not cross ``fork()`` (pool children open their own), nor
    be shared by the worker's threads (the pool's result handler acknowledges
    messages while the main thread takes new ones).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.wake_folder = path.with_name(path.name + "-wake")
        self._local = threading.local()
        self._ready = False
        self._lock = threading.Lock()

    @property
    def db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path)
            if not self._ready:
                with self._lock:
                    if not self._ready:
                        _create_schema(db)
                        self._ready = True
            self._local.db = db
        return db

    # -- waking consumers ---------------------------------------------------

    def wake_consumers(self, queues: Iterable[str]) -> None:
        """Tell every consumer of these queues that a message is waiting."""
        queues = list(queues)
        if not queues:
            return
        marks = ", ".join("?" * len(queues))
        rows = self.db.execute(
            "SELECT DISTINCT c.wake FROM host_subscription s JOIN host_consumer c ON c.id = s.consumer "
            f"WHERE s.queue IN ({marks})",
            queues,
        ).fetchall()
        for (name,) in rows:
            notify(self.wake_folder / name)

    # -- what host doctor reports --------------------------------------------

    def report(self) -> StoreReport:
        """The store's size on disk and its messages per queue, read without changing anything."""
        size = sum(f.stat().st_size for f in _store_files(self.path))
        rows = self.db.execute(
            "SELECT queue, SUM(holder IS NULL), SUM(holder IS NOT NULL) FROM host_message GROUP BY queue"
        ).fetchall()
        consumers = dict(
            self.db.execute("SELECT queue, COUNT(*) FROM host_subscription GROUP BY queue").fetchall()
        )
        queues = {name: (waiting, held, consumers.pop(name, 0)) for name, waiting, held in rows}
        queues.update({name: (0, 0, count) for name, count in consumers.items()})
        (undeliverable,) = self.db.execute("SELECT COUNT(*) FROM host_message_undeliverable").fetchone()
        return StoreReport(size, dict(sorted(queues.items())), undeliverable)


@dataclass(frozen=True)
class StoreReport:
    size: int
    #: queue -> (waiting, held by a consumer, consumers)
    queues: dict[str, tuple[int, int, int]]
    undeliverable: int


def _store_files(path: Path) -> Iterator[Path]:
    for suffix in ("", "-wal", "-shm"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            yield candidate


_stores: dict[tuple[int, Path], Store] = {}
_stores_lock = threading.Lock()


def store_for(path: Path) -> Store:
    """This process's :class:`Store` for ``path`` (a forked child gets its own)."""
    key = (os.getpid(), path)
    store = _stores.get(key)
    if store is None:
        with _stores_lock:
            store = _stores.setdefault(key, Store(path))
    return store


def read_report(path: Path) -> StoreReport | None:
    """:meth:`Store.report` for a store that may not exist (None then); it is not created."""
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)) as db:
        try:
            db.execute("SELECT holder FROM host_message LIMIT 0")
        except sqlite3.OperationalError:
            return None  # not created yet, or a version-1 store no consumer has opened since
    return store_for(path).report()


# -- wake-ups -----------------------------------------------------------------


def notify(fifo: Path) -> None:
    """Write one byte to a consumer's FIFO; a consumer that is gone, or already woken, is no error."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: nobody reads it (its consumer died); ENOENT: it closed
        return
    try:
        os.write(fd, b"\0")
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EPIPE):
            raise
    finally:
        os.close(fd)


class Waker:
    """A consumer's FIFO: other processes write to it, the consumer waits on it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.mkfifo(path, 0o600)
        self.path = path
        # Read-write: opening never blocks, and the FIFO has a reader for as long as we live.
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self.fd, b"\0")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                pass

    def wait(self, timeout: float | None) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return bool(ready)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# -- consumers and their leases -----------------------------------------------

#: Every live consumer of this process, woken when the worker is asked to stop.
_live: weakref.WeakSet[Consumer] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """A process that exits closes its consumers: what they held is deliverable at once."""
    for consumer in list(_live):
        consumer.close()


def wake_all() -> None:
    """Wake every consumer waiting in this process (a worker was asked to stop)."""
    for consumer in list(_live):
        if consumer.pid == os.getpid():
            consumer.waker.set()


class Consumer:
    """A process that takes messages from the store, with its lease, FIFO and sweeps."""

    def __init__(self, store: Store, lease_seconds: float) -> None:
        least = EMBEDDED_TRANSPORT_OPTIONS["lease_seconds"]  # the ini's check says so first
        if lease_seconds < least:
            raise ValueError(f"lease_seconds must be {least:g} or more, got {lease_seconds!r}")
        self.store = store
        self.pid = os.getpid()
        self.id = f"{socket.gethostname()}.{self.pid}.{uuid.uuid4().hex[:12]}"
        self.lease_seconds = lease_seconds
        self.waker = Waker(store.wake_folder / self.id)
        self._stop = threading.Event()
        #: Another consumer took this one for dead: it must not be used any more.
        self.lost = False
        self._closed = False
        self._register()
        # A consumer that starts looks at once: its predecessor may have died a while ago.
        self.sweep(orphans=True)
        self._thread = threading.Thread(target=self._run, name="embedded-broker-lease", daemon=True)
        self._thread.start()
        _live.add(self)

    def _lease_until(self) -> float:
        # Dead at most lease_seconds after the last renewal, sweep delay included.
        return time.time() + self.lease_seconds - SWEEP_INTERVAL

    def _register(self) -> None:
        self.store.db.execute(
            "INSERT OR REPLACE INTO host_consumer (id, pid, hostname, wake, lease_until) "
            "VALUES (?, ?, ?, ?, ?)",
            (self.id, self.pid, socket.gethostname(), self.id, self._lease_until()),
        )

    @property
    def alive(self) -> bool:
        return not self._closed and not self.lost

    # -- subscriptions -------------------------------------------------------

    def subscribe(self, queue: str) -> None:
        db = self.store.db
        with transaction(db):
            db.execute(
                "INSERT OR IGNORE INTO host_subscription (queue, consumer) VALUES (?, ?)", (queue, self.id)
            )
            db.execute("UPDATE host_queue SET consumed = 1 WHERE name = ?", (queue,))

    def unsubscribe(self, queue: str) -> None:
        db = self.store.db
        with transaction(db):
            db.execute("DELETE FROM host_subscription WHERE queue = ? AND consumer = ?", (queue, self.id))
            _after_unsubscribe(db, [queue])

    # -- the lease thread ------------------------------------------------------

    def _run(self) -> None:
        renew_every = self.lease_seconds / 3
        renewed = time.monotonic()
        while not self._stop.wait(SWEEP_INTERVAL):
            try:
                if time.monotonic() - renewed >= renew_every:
                    self.renew()
                    renewed = time.monotonic()
                self.sweep()
            except sqlite3.Error as e:  # a busy or broken store: say so, and try again next time
                logger.warning("embedded broker: lease upkeep failed: %s", e)

    def renew(self) -> None:
        found = self.store.db.execute(
            "UPDATE host_consumer SET lease_until = ? WHERE id = ?", (self._lease_until(), self.id)
        ).rowcount
        if not found:
            # Another consumer took us for dead (we stalled for longer than the lease): what we
            # held was released, and our subscriptions, auto-delete queues and FIFO are gone.
            # The transport reports a lost connection, and Celery reconnects and declares anew.
            logger.warning(
                "embedded broker: consumer %s lost its lease (it stalled for over %s s); "
                "the messages it held were released and may run twice; reconnecting",
                self.id,
                self.lease_seconds,
            )
            self.lost = True
            self._stop.set()

    def sweep(self, orphans: bool = False) -> None:
        """Release dead consumers' messages; drop expired queues and messages (writes only if needed)."""
        db = self.store.db
        now = time.time()
        if orphans or self._dead(db, now):
            with transaction(db):
                # Again, under the write lock: another consumer may have swept, or one renewed.
                dead = self._dead(db, now)
                held, released, orphaned = _bury(db, [consumer_id for consumer_id, _, _ in dead])
            self._mourn(dead, held, released, orphaned)
        expired = "SELECT name FROM host_queue q WHERE expires IS NOT NULL AND last_used + expires < ? "
        expired += "AND NOT EXISTS (SELECT 1 FROM host_subscription s WHERE s.queue = q.name)"
        if db.execute(expired, (now,)).fetchone():
            with transaction(db):
                for (name,) in db.execute(expired, (now,)).fetchall():
                    delete_queue(db, name)
        if db.execute("SELECT 1 FROM host_message WHERE expires_at < ? LIMIT 1", (now,)).fetchone():
            db.execute("DELETE FROM host_message WHERE expires_at < ? AND holder IS NULL", (now,))

    def _dead(self, db: sqlite3.Connection, now: float) -> list[tuple[str, int, str]]:
        """Consumers whose lease ran out, or whose process on this machine is gone."""
        here = socket.gethostname()
        return [
            (consumer_id, pid, hostname)
            for consumer_id, pid, hostname, until in db.execute(
                "SELECT id, pid, hostname, lease_until FROM host_consumer WHERE id != ?", (self.id,)
            )
            if until < now or (hostname == here and not _running(pid))
        ]

    def _mourn(
        self, dead: list[tuple[str, int, str]], held: dict[str, int], released: set[str], orphaned: int
    ) -> None:
        for consumer_id, pid, hostname in dead:
            with contextlib.suppress(FileNotFoundError):
                (self.store.wake_folder / consumer_id).unlink()
            count = held.get(consumer_id, 0)
            logger.log(
                logging.WARNING if count else logging.DEBUG,
                "embedded broker: consumer %s (pid %s on %s) ended without closing; "
                "the %s unacknowledged message(s) it held are deliverable again",
                consumer_id,
                pid,
                hostname,
                count,
            )
        if orphaned:
            logger.warning(
                "embedded broker: %s message(s) held by no known consumer are deliverable again", orphaned
            )
        if released:
            self.store.wake_consumers(released)

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Release what this consumer holds, drop its subscriptions and lease, stop its thread."""
        if self._closed or self.pid != os.getpid():
            return
        self._closed = True
        self._stop.set()
        _live.discard(self)
        with contextlib.suppress(sqlite3.Error):
            db = self.store.db
            with transaction(db):
                released = [
                    q
                    for (q,) in db.execute(
                        "SELECT DISTINCT queue FROM host_message WHERE holder = ?", (self.id,)
                    )
                ]
                db.execute("UPDATE host_message SET holder = NULL WHERE holder = ?", (self.id,))
                queues = [
                    q
                    for (q,) in db.execute(
                        "SELECT queue FROM host_subscription WHERE consumer = ?", (self.id,)
                    )
                ]
                db.execute("DELETE FROM host_subscription WHERE consumer = ?", (self.id,))
                _after_unsubscribe(db, queues)
                db.execute("DELETE FROM host_consumer WHERE id = ?", (self.id,))
            self.store.wake_consumers(released)
        self.waker.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def _running(pid: int) -> bool:
    """A process of this pid exists on this machine (a zombie counts: its lease decides then)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _bury(db: sqlite3.Connection, ids: list[str]) -> tuple[dict[str, int], set[str], int]:
    """Release dead consumers' messages, drop their subscriptions and leases (in the caller's transaction).

    Also releases messages held by a consumer that is not registered at all
    (a store copied or restored from a backup). Returns the messages each dead
    consumer held, the queues with released messages, and how many messages
    had no known holder.
    """
    marks = ", ".join("?" * len(ids))
    held: dict[str, int] = {}
    released: set[str] = set()
    if ids:
        for holder, queue, count in db.execute(
            f"SELECT holder, queue, COUNT(*) FROM host_message WHERE holder IN ({marks}) "
            "GROUP BY holder, queue",
            ids,
        ).fetchall():
            held[holder] = held.get(holder, 0) + count
            released.add(queue)
        db.execute(f"UPDATE host_message SET holder = NULL WHERE holder IN ({marks})", ids)
        queues = [
            q for (q,) in db.execute(f"SELECT queue FROM host_subscription WHERE consumer IN ({marks})", ids)
        ]
        db.execute(f"DELETE FROM host_subscription WHERE consumer IN ({marks})", ids)
        _after_unsubscribe(db, queues)
        db.execute(f"DELETE FROM host_consumer WHERE id IN ({marks})", ids)
    orphaned = [
        q
        for (q,) in db.execute(
            "UPDATE host_message SET holder = NULL WHERE holder IS NOT NULL "
            "AND holder NOT IN (SELECT id FROM host_consumer) RETURNING queue"
        )
    ]
    released.update(orphaned)
    return held, released, len(orphaned)


def _after_unsubscribe(db: sqlite3.Connection, queues: Iterable[str]) -> None:
    """Queues that lost a consumer: an auto-delete queue with none left goes, as on RabbitMQ."""
    now = time.time()
    for queue in set(queues):
        db.execute("UPDATE host_queue SET last_used = ? WHERE name = ?", (now, queue))
        row = db.execute(
            "SELECT 1 FROM host_queue q WHERE name = ? AND auto_delete AND consumed "
            "AND NOT EXISTS (SELECT 1 FROM host_subscription s WHERE s.queue = q.name)",
            (queue,),
        ).fetchone()
        if row:
            delete_queue(db, queue)


def delete_queue(db: sqlite3.Connection, queue: str) -> int:
    """Delete a queue, its bindings and its messages (in the caller's transaction); messages deleted."""
    db.execute("DELETE FROM host_binding WHERE queue = ?", (queue,))
    db.execute("DELETE FROM host_queue WHERE name = ?", (queue,))
    return db.execute("DELETE FROM host_message WHERE queue = ?", (queue,)).rowcount
