"""Beat that fires once per site, wherever it runs: ``host celerybeat`` and ``host celeryd -B``.

Celery's own beat has no election: two ``celery beat`` processes on one site
both send every entry, and so does every worker started with ``-B``.
:class:`HostScheduler`, the host's ``celery.beat_scheduler``, elects one
sender the way RedBeat does, inside :meth:`~HostScheduler.tick`:

**Election.** Every scheduler tries to take the lock ``host.beat`` (with a
site id, ``host.beat:SITE``) in the site's lock store (:mod:`core.locks`:
Redis with ``host.locks.url``, else the embedded SQLite store) for
``host.locks.expires`` seconds. The one that holds it is *active*: it renews
it every third of the expiry and sends the entries that are due. The others
are *standbys*: they tick, send nothing, and try to take the lock as often.
When the active one dies the lock expires, and a standby takes over within
the expiry (plus a third of it). ``host celerybeat`` stopped normally
(SIGTERM) releases the lock, and a standby takes over at its next try; a
worker's ``-B`` scheduler is terminated by its worker, and its lock expires.

**Fail closed.** The active scheduler sends only while its lease has at least
a third of the expiry left, measured on its own monotonic clock from the
moment its last renewal *started*, so it stops before the store could hand
the lock to another. A renewal that fails (another holds the lock) or raises
(the store does not answer: RedBeat #208, where a connection error left two
schedulers running) stops its sending at once; it sends again only once a
renewal or a new acquisition succeeds. A lock-store error never makes a
scheduler active.

**Shared state.** Each entry's last run (its time and the run count) is
written to the site's shared beat state *before* its task is sent, and a
scheduler that becomes active loads it: an entry due while no scheduler was
active fires once when one takes over, not once per missed slot nor once per
scheduler. The state lives beside the lock: a Redis hash (``host:beat:state``,
``host:SITE:beat:state``) with a Redis lock store, else a table in a SQLite
file under ``data/`` (``celery.beat_schedule_filename`` + ``.sqlite``). A
scheduler that cannot write it does not send.

Each message beat sends carries a ``host_beat`` header (``self.request.host_beat``
in the task): the entry, the scheduler that sent it, the run number and the
time of this run and of the previous one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from celery.beat import Scheduler
from celery.utils.time import maybe_make_aware

from core.errors import HostError, ServiceUnavailable
from core.locks import lease_clock

if TYPE_CHECKING:
    from core.beat_entries import Source
    from core.config import HostConfig
    from core.locks import LockStore

logger = logging.getLogger("host.beat")

#: The header each message beat sends carries (``self.request.host_beat``).
HEADER = "host_beat"
#: The state file's name is ``celery.beat_schedule_filename`` with this added.
STATE_SUFFIX = ".sqlite"


def lock_id(config: HostConfig) -> str:
    """``host.beat``, or ``host.beat:SITE`` with ``host.site_id``: one election per site."""
    site = config.host.get("site_id") or ""
    return f"host.beat:{site}" if site else "host.beat"


def holder_name() -> str:
    """``beat@HOST:PID``: who holds the lock, as ``host locks`` shows it."""
    return f"beat@{socket.gethostname()}:{os.getpid()}"


# -- the shared state -------------------------------------------------------------------------


class BeatStateUnavailable(ServiceUnavailable):
    """The shared beat state cannot be read or written: the scheduler does not send."""


class BeatState(Protocol):
    """Each entry's last run, shared by every scheduler of the site."""

    #: Where it lives, password masked.
    where: str

    def load(self) -> dict[str, tuple[float, int]]:
        """``{entry: (last run as a UNIX time, run count)}``."""
        ...

    def save(self, entry: str, last_run_at: float, total_run_count: int) -> None:
        """Record one run, before its task is sent."""
        ...


_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS host_beat_state (
    scope TEXT NOT NULL,
    entry TEXT NOT NULL,
    last_run_at REAL NOT NULL,
    total_run_count INTEGER NOT NULL,
    PRIMARY KEY (scope, entry)
)
"""


class SQLiteBeatState:
    """The state in a SQLite file shared by the processes of one machine (the embedded lock store's scope)."""

    def __init__(self, path: Path, scope: str) -> None:
        self.path, self.scope = path, scope
        self.where = str(path)
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        from core.embedded_store import connect

        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = connect(self.path)
            db.execute(_STATE_SCHEMA)
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def _call(self, what: str, sql: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            return self._db().execute(sql, params).fetchall()
        except (sqlite3.Error, OSError) as e:
            self._local.db = None
            raise BeatStateUnavailable(
                f"beat's state file {self.path} cannot be {what}: {type(e).__name__}: {e}",
                hint="check that the file and its folder are writable by the user beat runs as",
            ) from e

    def load(self) -> dict[str, tuple[float, int]]:
        if not self.path.exists():  # no scheduler has run yet: nothing to read, nothing to create
            return {}
        rows = self._call(
            "read",
            "SELECT entry, last_run_at, total_run_count FROM host_beat_state WHERE scope = ?",
            (self.scope,),
        )
        return {entry: (float(at), int(count)) for entry, at, count in rows}

    def save(self, entry: str, last_run_at: float, total_run_count: int) -> None:
        # Never backwards: a late write of an older run cannot undo a newer one.
        self._call(
            "written",
            "INSERT INTO host_beat_state (scope, entry, last_run_at, total_run_count) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (scope, entry) DO UPDATE SET last_run_at = excluded.last_run_at, "
            "total_run_count = excluded.total_run_count "
            "WHERE excluded.last_run_at > host_beat_state.last_run_at",
            (self.scope, entry, last_run_at, total_run_count),
        )


class RedisBeatState:
    """The state in a Redis hash beside the locks: shared by every machine of the site."""

    def __init__(self, url: str, key: str) -> None:
        import redis

        from core.locks import one_retry
        from core.masking import mask_url

        self.key = key
        self.where = f"{mask_url(url)} {key}"
        self._client = redis.Redis.from_url(
            url, socket_timeout=5.0, socket_connect_timeout=5.0, retry=one_retry()
        )

    def _call(self, what: str, call: Any) -> Any:
        import redis

        try:
            return call()
        except redis.exceptions.RedisError as e:
            raise BeatStateUnavailable(
                f"beat's state in {self.where} cannot be {what}: {type(e).__name__}: {e}",
                hint="start Redis, or check host.locks.url",
            ) from e

    def load(self) -> dict[str, tuple[float, int]]:
        raw = self._call("read", lambda: self._client.hgetall(self.key))
        state = {}
        for entry, value in raw.items():
            at, count = json.loads(value)
            state[entry.decode()] = (float(at), int(count))
        return state

    def save(self, entry: str, last_run_at: float, total_run_count: int) -> None:
        value = json.dumps([last_run_at, total_run_count])
        self._call("written", lambda: self._client.hset(self.key, entry, value))


def state_key(config: HostConfig) -> str:
    site = config.host.get("site_id") or ""
    return f"host:{site}:beat:state" if site else "host:beat:state"


def beat_state(app: Any) -> BeatState:
    """The shared state of the app's site: beside the lock store (Redis), else under ``data/``.

    :raises ConfigError: when the lock store is not configured (``host.locks.url``).
    """
    from core.locks import REDIS_SCHEMES, store_url

    config: HostConfig = app.configure_from_environment()
    url = store_url(config, str(app.conf.broker_url or ""))
    if url.startswith(REDIS_SCHEMES):
        return RedisBeatState(url, state_key(config))
    return SQLiteBeatState(Path(f"{app.conf.beat_schedule_filename}{STATE_SUFFIX}"), lock_id(config))


def check_election(app: Any) -> None:
    """Beat can elect: the lock store and the expiry are configured (``host celerybeat``, ``celeryd -B``).

    :raises ConfigError: naming ``host.locks.url`` or ``host.locks.expires``.
    """
    from core.locks import default_expires, lock_store

    config: HostConfig = app.configure_from_environment()
    if app.conf.beat_scheduler not in (f"{__name__}:HostScheduler", f"{__name__}.HostScheduler"):
        return  # the ini chose another scheduler: it elects nothing (docs/configuration.md)
    default_expires(config)
    lock_store(app)


# -- the scheduler ----------------------------------------------------------------------------


class HostScheduler(Scheduler):
    """Celery's in-memory scheduler, sending only while it holds the site's beat lock.

    See the module's documentation for the election, fail-closed and shared state rules.
    """

    def __init__(self, app: Any, *args: Any, schedule_filename: str | None = None, **kwargs: Any) -> None:
        from core.locks import default_expires

        config: HostConfig = app.configure_from_environment()
        self.schedule_filename = schedule_filename
        self.lock_id = lock_id(config)
        #: Seconds the lock lives unless renewed (``host.locks.expires``).
        self.expires = default_expires(config)
        #: Renewals, and a standby's attempts, come this often.
        self.renew_every = self.expires / 3
        self.active = False
        self.holder: str | None = None
        self._token: str | None = None
        #: When the last successful acquisition or renewal started (monotonic).
        self._lease_from = 0.0
        self._next_election = 0.0
        self._locks: LockStore | None = None
        self._state: BeatState | None = None
        #: What the last election found, so that each change is logged once.
        self._status = ""
        super().__init__(app, *args, **kwargs)

    # -- what Celery calls --

    def setup_schedule(self) -> None:
        """The configured entries, then Celery's own (``celery.backend_cleanup`` for a result store
        that does not expire results itself), in the order Celery's persistent scheduler uses:
        the base class installs its own first and then drops them again."""
        self.merge_inplace(self.app.conf.beat_schedule)
        self.install_default_entries(self.schedule)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Elect when it is time, then, if active, run Celery's tick: send at most one due entry."""
        if lease_clock() >= self._next_election or (self.active and not self._lease_left()):
            self.elect()
        if not self.active:
            return max(self._next_election - lease_clock(), 0.05)
        delay = super().tick(*args, **kwargs)
        return max(0.0, min(delay, self._next_election - lease_clock()))

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        """Record the run in the shared state, then send it; neither unless the lease is still ours."""
        if not (self.active and self._lease_left()):
            # The lease ran short within this tick: send nothing more now. Electing here would
            # reload the shared state over the entry Celery just reserved; the next tick elects.
            self._next_election = 0.0
            logger.warning(
                "beat: not sending %s now: this scheduler's hold on %s ran short", entry.name, self.lock_id
            )
            return
        current = self.schedule.get(entry.name, entry)  # Celery reserved it: its last_run_at is now
        last_run_at = self._timestamp(current.last_run_at)
        try:
            self._shared().save(entry.name, last_run_at, current.total_run_count)
        except Exception as e:
            self._fail_closed(e)
            logger.warning("beat: not sending %s: its run could not be recorded", entry.name)
            return
        if not self._lease_left():
            # Recording took long enough that another scheduler may hold the lock by now.
            self._next_election = 0.0
            logger.warning("beat: not sending %s: recording its run outlasted the lease margin", entry.name)
            return
        headers = dict(entry.options.get("headers") or {})
        headers[HEADER] = {
            "entry": entry.name,
            "scheduler": self.holder,
            "run": current.total_run_count,
            "this_run": _iso(last_run_at),
            "previous_run": _iso(self._timestamp(entry.last_run_at)) if entry.total_run_count else None,
        }
        stamped = self.Entry(**{**dict(entry), "options": {**entry.options, "headers": headers}})
        super().apply_entry(stamped, producer=producer)

    def close(self) -> None:
        """Stop: release the lock, so that a standby takes over at its next try rather than at expiry."""
        try:
            super().close()
        finally:
            token, self._token, self.active = self._token, None, False
            if token is not None and self._locks is not None:
                try:
                    self._locks.release(self.lock_id, token)
                    logger.info("beat: released %s", self.lock_id)
                except Exception as e:  # it expires on its own
                    logger.warning("beat: could not release %s (%s); it expires on its own", self.lock_id, e)

    @property
    def info(self) -> str:
        where = f"expires {self.expires:g} s"
        try:
            from core.locks import store_url

            where = f"{store_url(self.app.host_config, str(self.app.conf.broker_url or ''))}, {where}"
        except Exception:  # shown in the banner only; beat_or_fail checked it before
            pass
        return f"    . election -> lock {self.lock_id} ({where})"

    # -- the election --

    def elect(self) -> None:
        """Renew the lock held, or try to take it; become active or stand by accordingly."""
        started = lease_clock()
        self._next_election = started + self.renew_every
        try:
            store = self._lock_store()
            if self._token is not None:
                if store.renew(self.lock_id, self._token, self.expires):
                    self._lease_from = started
                    if not self.active:
                        self._activate()
                    return
                self._token = None
                if self.active:
                    self.active = False
                    self._log(
                        "lost",
                        logging.WARNING,
                        "beat: lost %s (it expired, or another scheduler took "
                        "it): stopped sending, standing by",
                        self.lock_id,
                    )
            self.holder = self.holder or holder_name()
            token = store.acquire(self.lock_id, self.holder, self.expires)
            if token is None:
                held = store.holder(self.lock_id)
                by = held.holder if held is not None else "another scheduler"
                self._log(
                    f"standby {by}",
                    logging.INFO,
                    "beat: standing by: %s is held by %s; trying again every %g s",
                    self.lock_id,
                    by,
                    self.renew_every,
                )
                return
        except Exception as e:
            self._fail_closed(e)
            return
        self._token, self._lease_from = token, started
        self._activate()

    def _activate(self) -> None:
        """Load the shared state into the schedule, then send: an entry due in the gap fires once."""
        try:
            state = self._shared().load()
        except Exception as e:
            self._fail_closed(e)
            return
        for name, entry in self.schedule.items():
            if name in state:
                at, count = state[name]
                entry.last_run_at = datetime.fromtimestamp(at, tz=self.app.timezone)
                entry.total_run_count = count
        self._heap = None  # Celery rebuilds it from the loaded times at the next tick
        self.active = True
        count = len(self.schedule)
        self._log(
            "active",
            logging.INFO,
            "beat: %s holds %s: sending the periodic tasks (%d %s)",
            self.holder,
            self.lock_id,
            count,
            "entry" if count == 1 else "entries",
        )

    def _fail_closed(self, error: Exception) -> None:
        was_active, self.active = self.active, False
        message = error.message if isinstance(error, HostError) else f"{type(error).__name__}: {error}"
        self._log(
            f"error {was_active}",
            logging.ERROR,
            "beat: not sending until the lock store and beat's state answer again (fail closed): %s",
            " ".join(message.split()),
        )

    def _lease_left(self) -> bool:
        """At least a third of the expiry is left of the lease, by this process's clock."""
        return lease_clock() - self._lease_from < self.expires * 2 / 3

    def _lock_store(self) -> LockStore:
        if self._locks is None:
            from core.locks import lock_store

            self._locks = lock_store(self.app)
        return self._locks

    def _shared(self) -> BeatState:
        if self._state is None:
            self._state = beat_state(self.app)
        return self._state

    def _timestamp(self, when: datetime) -> float:
        return maybe_make_aware(when, self.app.timezone).timestamp()

    def _log(self, status: str, level: int, message: str, *args: Any) -> None:
        if status != self._status:
            self._status = status
            logger.log(level, message, *args)


def _iso(timestamp: float) -> str:
    from datetime import timezone

    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


# -- host schedule --------------------------------------------------------------------------


def schedule_listing(app: Any, sources: Mapping[str, Source]) -> dict[str, Any]:
    """``host schedule``: each entry, its task and schedule, when it is next due, and where it came from.

    The next run counts from the entry's last run in the shared state when
    there is one (what an active scheduler would do), else from now (a fresh
    beat). ``state`` says where the last runs were read, or why they could not be.
    """
    from datetime import timedelta

    from celery.schedules import maybe_schedule

    from core.beat_entries import describe_schedule

    try:
        state_store = beat_state(app)
        state = state_store.load()
        state_note = state_store.where if state else f"{state_store.where} (no run recorded yet)"
    except Exception as e:
        state, state_note = {}, f"not read: {' '.join(str(e).split())}"
    now = app.now()
    entries = []
    for name, entry in sorted((app.conf.beat_schedule or {}).items()):
        schedule = maybe_schedule(entry["schedule"], entry.get("relative", False), app=app)
        last = state.get(name)
        basis = datetime.fromtimestamp(last[0], tz=app.timezone) if last else now
        remaining = max(schedule.remaining_estimate(basis), timedelta(0))
        due = now + remaining
        due = (due + timedelta(microseconds=500_000)).replace(microsecond=0)
        source = sources.get(name)
        entries.append(
            {
                "entry": name,
                "task": entry["task"],
                "schedule": describe_schedule(entry["schedule"]),
                "next_due": due.isoformat(),
                "last_run": datetime.fromtimestamp(last[0], tz=app.timezone).isoformat() if last else None,
                "runs": last[1] if last else 0,
                "source": source.label if source else None,
                "from": source.as_json() if source else None,
            }
        )
    return {"entries": entries, "state": state_note, "timezone": str(app.timezone)}
