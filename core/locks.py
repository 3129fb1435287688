"""Locks with a token and an expiry: exclusive tasks and the beat election take them here.

A lock is a row (or a Redis key) naming its *holder* (a task id, a scheduler)
and a *token* unique to the attempt that took it. It expires ``expires``
seconds after it was taken or last renewed, so a holder that died (SIGKILL, a
hard time limit, power loss) frees it within ``expires`` at the latest. Only
the holder renews and releases it, and only while its token is the one
stored: both are compare-and-set operations, so a holder whose lock expired,
and was taken by another, cannot release or extend the newer holder's lock.

Two stores, chosen by ``host.locks.url``:

``redis://HOST:PORT/DB`` (and ``rediss://``, ``unix://``)
    redis-py's :class:`redis.lock.Lock`: its Lua scripts compare the token and
    delete, or extend, atomically. Keys are ``host:lock:ID``, or
    ``host:SITE:lock:ID`` with ``host.site_id``. Needs the ``redis`` extra.
``embedded+sqlite:///PATH``
    a SQLite file (0600 in a 0700 folder) shared by every process on this
    machine: for ``development.ini`` and single-machine installs. Taking a
    lock is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <
    now`` statement. Its expiry is wall-clock time, as the embedded broker's
    leases are.

Empty ``host.locks.url``: ``locks.sqlite`` beside the embedded broker's store
when the broker is embedded; with any other broker it is a configuration
error, since an embedded store would give each machine of a multi-machine
site locks of its own.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from core.config import APP_SECTION, HostConfig
from core.embedded_store import connect, transaction
from core.errors import ConfigError, ServiceUnavailable
from core.masking import mask_url

if TYPE_CHECKING:
    from celery import Celery

    from core.health import Check

logger = logging.getLogger("host.locks")

URL_KEY = "host.locks.url"
EXPIRES_KEY = "host.locks.expires"
EMBEDDED_PREFIX = "embedded+sqlite:///"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
#: How long a Redis command may take before the store counts as unreachable.
REDIS_TIMEOUT = 5.0
_TOKEN_LENGTH = 32  # uuid4().hex


def lease_clock() -> float:
    """Seconds on a clock that goes on while the machine is suspended, as lock expiries do.

    Redis expires a key, and the embedded store compares ``expires_at``, in
    time that passes during a suspend; ``time.monotonic()`` stops then on
    Linux, so a holder that woke up would think it had time left. Linux's
    ``CLOCK_BOOTTIME`` does not stop; elsewhere ``time.monotonic()``.
    """
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def one_retry() -> Any:
    """redis-py's retry policy for the lock store: one retry at once (a dropped idle connection).

    redis-py retries a failed command several times with backoff by default, which can make one
    command last a minute: longer than a lease's safety margin.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 1)


class LockStoreUnavailable(ServiceUnavailable):
    """The lock store cannot be reached (exit status 1 in a command); the message names its masked URL."""


@dataclass(frozen=True)
class HeldLock:
    """A lock as the store holds it now."""

    lock_id: str
    #: Who holds it: a task id, or the scheduler that won the beat election.
    holder: str
    token: str
    #: Seconds until it expires unless its holder renews it.
    expires_in: float


class LockStore(Protocol):
    """Where locks live. Every method raises :class:`LockStoreUnavailable` when the store does not answer."""

    #: The store's URL, password masked.
    url: str

    def acquire(self, lock_id: str, holder: str, expires: float) -> str | None:
        """Take the lock for ``expires`` seconds: its new token, or None when another holds it."""
        ...

    def renew(self, lock_id: str, token: str, expires: float) -> bool:
        """Make the lock expire ``expires`` seconds from now; False when it is no longer ``token``'s."""
        ...

    def release(self, lock_id: str, token: str) -> bool:
        """Free the lock if ``token`` still holds it (compare-and-delete); False otherwise."""
        ...

    def holder(self, lock_id: str) -> HeldLock | None:
        """The lock, or None when nobody holds it."""
        ...

    def held(self) -> list[HeldLock]:
        """Every lock held, sorted by id."""
        ...

    def force_release(self, lock_id: str) -> bool:
        """Free the lock whoever holds it (``host locks release``); False when nobody did."""
        ...


def new_token(holder: str) -> str:
    """A token unique to one attempt; it carries the holder, so one value in Redis says both."""
    return f"{uuid.uuid4().hex}:{holder}"


def _holder_of(token: str) -> str:
    return token[_TOKEN_LENGTH + 1 :]


# -- configuration --------------------------------------------------------------------------


def store_url(config: HostConfig, broker_url: str | None = None) -> str:
    """``host.locks.url``, or the embedded default beside the embedded broker's store.

    :param broker_url: the broker the app uses (a plugin may have changed it);
        default: ``celery.broker_url`` from the configuration.
    :raises ConfigError: when it is empty and the broker is not embedded.
    """
    url = str(config.host.get("locks.url") or "").strip()
    if url:
        return url
    broker = str(broker_url if broker_url is not None else config.celery.get("broker_url") or "")
    if broker.startswith(EMBEDDED_PREFIX):
        folder = Path(broker[len(EMBEDDED_PREFIX) :]).parent
        return f"{EMBEDDED_PREFIX}{folder / 'locks.sqlite'}"
    raise ConfigError(
        "host.locks.url is empty and the broker is not embedded: exclusive tasks and the beat "
        "election need one lock store that every machine of the site shares",
        **_where(config, URL_KEY),
        hint="set host.locks.url = redis://HOST:6379/0 (pip install 'host-framework[redis]'), "
        "or HOST_LOCKS_URL; an embedded store would give each machine locks of its own",
    )


def default_expires(config: HostConfig) -> float:
    """``host.locks.expires``, checked: a number of seconds of at least 1."""
    value = config.host.get("locks.expires", 60.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
        raise ConfigError(
            f"{value!r} is not a number of seconds of at least 1",
            **_where(config, EXPIRES_KEY),
            hint="a lock is renewed every third of it; 60 (the default) suits most tasks",
        )
    return float(value)


def _where(config: HostConfig, key: str) -> dict[str, Any]:
    source = config.sources.get(key, "default")
    if source.startswith("env "):
        return {"path": "environment", "section": None, "key": source[len("env ") :]}
    return {"path": str(config.origin(APP_SECTION, key)), "section": APP_SECTION, "key": key}


def key_prefix(config: HostConfig) -> str:
    """``host:lock:``, or ``host:SITE:lock:`` so that sites sharing a Redis keep their locks apart."""
    site = config.host.get("site_id") or ""
    return f"host:{site}:lock:" if site else "host:lock:"


def open_store(url: str, *, prefix: str = "host:lock:", config: HostConfig | None = None) -> LockStore:
    """The store a URL names.

    :raises ConfigError: for an unknown scheme, or Redis without redis-py installed.
    """
    where = _where(config, URL_KEY) if config is not None else {"key": URL_KEY}
    if url.startswith(EMBEDDED_PREFIX) and len(url) > len(EMBEDDED_PREFIX):
        return SQLiteLockStore(Path(url[len(EMBEDDED_PREFIX) :]))
    if url.startswith(REDIS_SCHEMES):
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"{mask_url(url)}: a Redis lock store needs the Python package redis, which is not installed",
                **where,
                hint="pip install 'host-framework[redis]'",
            ) from None
        return RedisLockStore(url, prefix)
    raise ConfigError(
        f"{mask_url(url)}: not a lock store URL",
        **where,
        hint="use redis://HOST:PORT/DB or embedded+sqlite:///PATH (such as "
        "embedded+sqlite:///%(here)s/data/locks.sqlite)",
    )


_stores: weakref.WeakKeyDictionary[Any, tuple[str, LockStore]] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def lock_store(app: Celery) -> LockStore:
    """The lock store of a host app's configuration (configuring it from ``$HOST_CONFIG`` if needed).

    One store per app and URL, reused: its connections are per process and thread.

    :raises ConfigError: when ``host.locks.url`` is invalid, or empty on a site whose broker
        is not embedded.
    """
    config: HostConfig = app.configure_from_environment()  # type: ignore[attr-defined]
    url = store_url(config, str(app.conf.broker_url or ""))
    with _stores_lock:
        cached = _stores.get(app)
        if cached is not None and cached[0] == url:
            return cached[1]
        store = open_store(url, prefix=key_prefix(config), config=config)
        _stores[app] = (url, store)
        return store


# -- Redis --------------------------------------------------------------------------------


class RedisLockStore:
    """Locks in Redis through redis-py's :class:`~redis.lock.Lock` (its Lua scripts, not ours).

    The key's value is the token, which carries the holder; its TTL is the time left.
    """

    def __init__(self, url: str, prefix: str = "host:lock:") -> None:
        import redis

        self.url = mask_url(url)
        self.prefix = prefix
        self._client = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT, retry=one_retry()
        )

    def _lock(self, lock_id: str, expires: float | None = None, token: str | None = None) -> Any:
        from redis.lock import Lock

        lock = Lock(self._client, self.prefix + lock_id, timeout=expires, thread_local=False)
        if token is not None:
            lock.local.token = token.encode()
        return lock

    def _call(self, what: Callable[[], T]) -> T:
        import redis

        try:
            return what()
        except redis.exceptions.LockError:
            raise
        except redis.exceptions.RedisError as e:
            raise LockStoreUnavailable(
                f"the lock store {self.url} does not answer: {type(e).__name__}: {e}",
                hint="start Redis, or check host.locks.url",
            ) from e

    def acquire(self, lock_id: str, holder: str, expires: float) -> str | None:
        token = new_token(holder)
        lock = self._lock(lock_id, expires)
        taken = self._call(lambda: lock.acquire(blocking=False, token=token))
        if not taken:
            # SET NX is not safe to repeat: if a first attempt took the lock but its reply was
            # lost, the retry finds the key set -- by us.
            value = self._call(lambda: self._client.get(self.prefix + lock_id))
            taken = value is not None and value == token.encode()
        return token if taken else None

    def renew(self, lock_id: str, token: str, expires: float) -> bool:
        from redis.exceptions import LockError

        lock = self._lock(lock_id, expires, token)
        try:
            self._call(lambda: lock.extend(expires, replace_ttl=True))
        except LockError:  # LockNotOwnedError: expired, released, or another's now
            return False
        return True

    def release(self, lock_id: str, token: str) -> bool:
        from redis.exceptions import LockError

        lock = self._lock(lock_id, token=token)
        try:
            self._call(lock.release)
        except LockError:
            return False
        return True

    def holder(self, lock_id: str) -> HeldLock | None:
        found = self._read([self.prefix + lock_id])
        return found[0] if found else None

    def held(self) -> list[HeldLock]:
        keys = self._call(lambda: list(self._client.scan_iter(match=self.prefix + "*", count=500)))
        return sorted(self._read(keys), key=lambda lock: lock.lock_id)

    def _read(self, keys: list[Any]) -> list[HeldLock]:
        def read() -> list[Any]:
            with self._client.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.get(key)
                    pipe.pttl(key)
                return list(pipe.execute())

        values = self._call(read) if keys else []
        found = []
        for n, key in enumerate(keys):
            value, ttl = values[2 * n], values[2 * n + 1]
            if value is None or ttl is None or ttl < 0 and ttl != -1:
                continue  # gone between the scan and the read
            name = key.decode() if isinstance(key, bytes) else str(key)
            token = value.decode(errors="replace")
            left = float("inf") if ttl == -1 else ttl / 1000
            found.append(HeldLock(name[len(self.prefix) :], _holder_of(token), token, left))
        return found

    def force_release(self, lock_id: str) -> bool:
        return bool(self._call(lambda: self._client.delete(self.prefix + lock_id)))


T = TypeVar("T")


# -- embedded SQLite ------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS host_lock (
    lock_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS host_lock_expires ON host_lock (expires_at)
"""


class SQLiteLockStore:
    """Locks in a SQLite file (WAL), correct across the processes of one machine.

    Each statement is atomic on its own (autocommit); a connection per process
    and thread, never across ``fork()``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"{EMBEDDED_PREFIX}{path}"
        self._local = threading.local()
        self._schema_ready = False

    @property
    def _db(self) -> sqlite3.Connection:
        pid = os.getpid()
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != pid:
            db = connect(self.path)
            if not self._schema_ready:
                with transaction(db):
                    for statement in _SCHEMA.split(";\n"):
                        db.execute(statement)
                self._schema_ready = True
            self._local.db, self._local.pid = db, pid
        return db

    def _call(self, what: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return what(self._db)
        except sqlite3.Error as e:
            self._local.db = None
            raise LockStoreUnavailable(
                f"the lock store {self.url} cannot be used: {type(e).__name__}: {e}",
                hint="check that the file and its folder exist and are writable by this user",
            ) from e

    def acquire(self, lock_id: str, holder: str, expires: float) -> str | None:
        token = new_token(holder)
        now = time.time()
        rows = self._call(
            lambda db: db.execute(
                "INSERT INTO host_lock (lock_id, holder, token, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (lock_id) DO UPDATE SET holder = excluded.holder, token = excluded.token, "
                "expires_at = excluded.expires_at WHERE host_lock.expires_at <= ? RETURNING token",
                (lock_id, holder, token, now + expires, now),
            ).fetchall()
        )
        return token if rows else None

    def renew(self, lock_id: str, token: str, expires: float) -> bool:
        now = time.time()
        cursor = self._call(
            lambda db: db.execute(
                "UPDATE host_lock SET expires_at = ? WHERE lock_id = ? AND token = ? AND expires_at > ?",
                (now + expires, lock_id, token, now),
            )
        )
        return cursor.rowcount == 1

    def release(self, lock_id: str, token: str) -> bool:
        now = time.time()

        def delete(db: sqlite3.Connection) -> bool:
            with transaction(db):
                gone = db.execute(
                    "DELETE FROM host_lock WHERE lock_id = ? AND token = ? AND expires_at > ?",
                    (lock_id, token, now),
                ).rowcount
                # Expired rows of holders that died: the table stays as small as the locks held.
                db.execute("DELETE FROM host_lock WHERE expires_at <= ?", (now,))
            return gone == 1

        return self._call(delete)

    def holder(self, lock_id: str) -> HeldLock | None:
        found = self._select("WHERE lock_id = ? AND expires_at > ?", (lock_id,))
        return found[0] if found else None

    def held(self) -> list[HeldLock]:
        return self._select("WHERE expires_at > ? ORDER BY lock_id", ())

    def _select(self, where: str, params: tuple[Any, ...]) -> list[HeldLock]:
        now = time.time()
        if "lock_id = ?" not in where:
            values: tuple[Any, ...] = (now,)
        else:
            values = (*params, now)
        rows = self._call(
            lambda db: db.execute(
                f"SELECT lock_id, holder, token, expires_at FROM host_lock {where}", values
            ).fetchall()
        )
        return [
            HeldLock(lock_id, holder, token, expires_at - now) for lock_id, holder, token, expires_at in rows
        ]

    def force_release(self, lock_id: str) -> bool:
        now = time.time()
        cursor = self._call(
            lambda db: db.execute(
                "DELETE FROM host_lock WHERE lock_id = ? AND expires_at > ?", (lock_id, now)
            )
        )
        return cursor.rowcount == 1


# -- host doctor ------------------------------------------------------------------------------


def doctor_checks(app: Celery, needed: bool) -> Iterator[Check]:
    """``host doctor``: the lock store is configured and answers.

    :param needed: an exclusive task is installed; without one, a site with no
        ``host.locks.url`` on a non-embedded broker is fine.
    """
    from core.health import Check, from_error

    config: HostConfig = app.configure_from_environment()  # type: ignore[attr-defined]
    try:
        default_expires(config)
    except ConfigError as e:
        yield from_error("lock store", e)
        return
    try:
        store = lock_store(app)
    except ConfigError as e:
        broker = str(app.conf.broker_url or "")
        # memory:// lives in one process: a test's broker, not a site to share locks across.
        if config.host.get("locks.url") or (needed and not broker.startswith("memory://")):
            yield from_error("lock store", e)
        return
    if isinstance(store, SQLiteLockStore) and not store.path.exists():
        yield Check("lock store", True, f"{store.url} (created when first used)")
        return
    try:
        store.held()
    except LockStoreUnavailable as e:
        yield from_error("lock store", e, service=True)
        return
    yield Check("lock store", True, f"{store.url} answers")
