"""The embedded result store: Celery's database backend on a local SQLite file.

Used as ``celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite``
(see :mod:`core.embedded`). Kept apart from the transport so that processes
which never read results do not import SQLAlchemy.

The tables are Celery's own (``celery_taskmeta``, ``celery_tasksetmeta``,
created by SQLAlchemy exactly as the ``db+sqlite://`` backend creates them), so
anything that reads them keeps working. The two hot paths do not go through
the SQLAlchemy ORM, though:

* storing a task's state is one ``INSERT ... ON CONFLICT DO UPDATE`` statement
  on a per-process ``sqlite3`` connection (the ORM path took a SELECT, a
  SELECT ... FOR UPDATE, an INSERT or UPDATE and a COMMIT, 2-4 ms of CPU per
  task, and made the result store the worker's bottleneck);
* reading a task's state is one SELECT on that connection. Celery's
  ``SessionManager`` builds a new engine and connection for every call in a
  process that was not forked (``host send``, a web application, a ``-P
  solo`` worker): ~5 ms per poll of ``result.get()`` and ~20 ms per stored
  result.

Everything else (groups, ``forget``, ``cleanup``) stays Celery's SQLAlchemy
code, with the engine cached per process.

Results expire: a process that stores results deletes those older than
``result_expires`` (Celery's default, one day) at most once a minute, so the
store stays bounded without ``celery beat``'s daily ``backend_cleanup``
(which works too).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

from celery.backends.database import DatabaseBackend
from celery.backends.database.session import SessionManager

from core.embedded import sqlite_path
from core.embedded_store import BUSY_TIMEOUT, connect, private_file
from core.task_context import REPORT, report_of

#: The longest nap between two looks at the store while waiting for a result.
#: A look is one indexed SELECT (tens of microseconds), so waiting callers
#: need not back off as far as Celery's default ``interval`` of 0.5 s.
MAX_POLL_INTERVAL = 0.05
#: A waiting caller looks every millisecond for this long, then backs off:
#: most tasks a caller waits for are done within a few milliseconds.
EAGER_POLLING = 0.02
#: How often a process that stores results deletes the expired ones.
CLEANUP_INTERVAL = 60.0

#: Connections inherited through fork() from the parent process. SQLite must
#: not use, nor close, a connection in the child that opened it in the parent,
#: so they are kept referenced here, never garbage collected.
_inherited: list[Any] = []


def _tune_sqlite(engine: Any) -> None:
    """Give every result-store connection WAL mode and a generous busy timeout."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


class _PerProcessSessionManager(SessionManager):
    """Celery's session manager, caching the engine in every process.

    Celery caches engines only after a fork (``forked``), and builds a new
    engine for every session otherwise. Here each process gets its own
    cached engine; after a fork the child drops (without closing) what the
    parent had and builds its own.
    """

    _engines: dict[str, Any]
    _sessions: dict[str, Any]

    def __init__(self, engine_callback: Any = None) -> None:
        super().__init__(engine_callback=engine_callback)
        self.forked = True
        self._pid = os.getpid()

    def _for_this_process(self) -> None:
        if self._pid != os.getpid():
            for engine in self._engines.values():
                engine.dispose(close=False)
            _inherited.append((self._engines, self._sessions))
            self._engines, self._sessions = {}, {}
            self._pid = os.getpid()
        self.forked = True

    def _after_fork(self) -> None:
        self._for_this_process()

    def get_engine(self, dburi: str, **kwargs: Any) -> Any:
        self._for_this_process()
        return super().get_engine(dburi, **kwargs)


class ResultBackend(DatabaseBackend):
    """Celery's database result backend on a local SQLite file, tuned for it.

    Waiting for a result polls with a short first interval that doubles up to
    the caller's ``interval``, at most :data:`MAX_POLL_INTERVAL` (Celery's
    default of 0.5 s would put half a second on many round trips).

    A task's report (:mod:`core.task_context`) is stored in the same statement
    as its state, in a ``host_report`` column added to Celery's table; a write
    without a report (a revoke stored by the worker's main process) keeps the
    report already there.
    """

    #: This backend stores reports itself (core/result_store.py leaves it alone).
    stores_reports = True

    def __init__(self, *args: Any, url: str | None = None, **kwargs: Any) -> None:
        self._path = sqlite_path(url) if url else None
        if self._path is not None:
            private_file(self._path)  # before SQLAlchemy creates it with the default mode
        kwargs.setdefault("engine_callback", _tune_sqlite)
        super().__init__(*args, url=url, **kwargs)
        # The callback as Celery resolved it (it may have been given by name).
        callback = self.session_manager.engine_callback  # type: ignore[has-type]  # set by Celery
        self.session_manager = _PerProcessSessionManager(engine_callback=callback)
        self._db: sqlite3.Connection | None = None
        self._db_pid: int | None = None
        table = self.task_cls.__table__
        self._table = table.name
        self._fast = table.schema is None and self._path is not None
        self._columns = [c.name for c in table.columns if c.name != "id"] + ([REPORT] if self._fast else [])
        self._next_cleanup = 0.0

    # -- the per-process sqlite3 connection --------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None or self._db_pid != os.getpid():
            if self._db is not None:
                _inherited.append(self._db)
            # Celery's SQLAlchemy code creates (or migrates) the tables once.
            self.ResultSession().close()
            assert self._path is not None
            db = connect(self._path)
            _add_report_column(db, self._table)
            self._db = db
            self._db_pid = os.getpid()
        return self._db

    # -- storing -----------------------------------------------------------

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Store a task's state in one statement; nothing replaces a stored SUCCESS."""
        if not self._fast:
            return super()._store_result(
                task_id, result, state, traceback=traceback, request=request, **kwargs
            )
        row = SimpleNamespace(children=None, stamps=None)
        # Celery's own code computes the column values (extended results, stamps...).
        self._update_result(row, result, state, traceback=traceback, request=request)
        row.task_id = task_id
        report = report_of(request)
        row.host_report = (
            None if report is None else json.dumps(report.as_dict(state), default=str, ensure_ascii=False)
        )
        db = self.db
        values = [_sqlite_value(getattr(row, name, None)) for name in self._columns]
        names = ", ".join(self._columns)
        updates = ", ".join(
            f"{name} = COALESCE(excluded.{name}, {name})" if name == REPORT else f"{name} = excluded.{name}"
            for name in self._columns
            if name != "task_id"
        )
        db.execute(
            f"INSERT INTO {self._table} ({names}) VALUES ({', '.join('?' * len(values))}) "
            f"ON CONFLICT (task_id) DO UPDATE SET {updates} WHERE {self._table}.status != 'SUCCESS'",
            values,
        )
        if time.monotonic() >= self._next_cleanup:
            self._delete_expired()
        return result

    def _delete_expired(self) -> None:
        """Delete results (and groups) stored longer ago than ``result_expires``."""
        self._next_cleanup = time.monotonic() + CLEANUP_INTERVAL
        if not self.expires:
            return
        expires = self.expires if isinstance(self.expires, timedelta) else timedelta(seconds=self.expires)
        cutoff = _sqlite_value(datetime.now(timezone.utc).replace(tzinfo=None) - expires)
        for table in (self._table, self.taskset_cls.__table__.name):
            self.db.execute(f"DELETE FROM {table} WHERE date_done < ?", (cutoff,))

    # -- reading -----------------------------------------------------------

    def _query_task(self, session: Any, task_id: str, for_update: bool = False) -> Any:
        """The task's row, read with one SELECT on the per-process connection.

        Celery's own ``_get_task_meta_for`` decodes it (result, arguments,
        stamps) exactly as it decodes a row the ORM read.
        """
        if not self._fast or for_update:
            return super()._query_task(session, task_id, for_update=for_update)
        found = self.db.execute(
            f"SELECT {', '.join(self._columns)} FROM {self._table} WHERE task_id = ?", (task_id,)
        ).fetchone()
        if found is None:
            return None
        row = dict(zip(self._columns, found, strict=True))
        if isinstance(row.get("date_done"), str):
            row["date_done"] = datetime.fromisoformat(row["date_done"])
        return _Row(row)

    def _task_result_exists(self, task_id: str) -> bool:
        if not self._fast:
            return super()._task_result_exists(task_id)
        return (
            self.db.execute(f"SELECT 1 FROM {self._table} WHERE task_id = ?", (task_id,)).fetchone()
            is not None
        )

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Any = None,
    ) -> dict[str, Any]:
        from celery import states
        from celery.exceptions import TimeoutError

        self._ensure_not_eager()
        deadline = None if timeout is None else time.monotonic() + timeout
        ceiling = min(interval, MAX_POLL_INTERVAL)
        started = time.monotonic()
        nap = min(0.001, ceiling)
        while True:
            meta = self.get_task_meta(task_id)
            if meta["status"] in states.READY_STATES:
                return meta
            if on_interval:
                on_interval()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("The operation timed out.")
                nap = min(nap, left)
            time.sleep(nap)
            if time.monotonic() - started > EAGER_POLLING:
                nap = min(nap * 2, ceiling)


def _add_report_column(db: sqlite3.Connection, table: str) -> None:
    """Celery's table gets a ``host_report`` column (once; older stores lack it)."""
    columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    if REPORT in columns:
        return
    try:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {REPORT} TEXT")
    except sqlite3.OperationalError:
        if REPORT not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            raise  # not "another process added it first"


class _Row:
    """A row as the ORM's model gives it to Celery: ``to_dict()`` with ``children``."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def to_dict(self) -> dict[str, Any]:
        return {"children": None, **self.values}


def _sqlite_value(value: Any) -> Any:
    """A column value as SQLAlchemy would store it in SQLite."""
    if isinstance(value, datetime):
        # SQLAlchemy's SQLite DateTime: naive, microseconds, the zone dropped (Celery stores UTC).
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, str) or value is None or isinstance(value, (bytes, int, float)):
        return value
    return str(value)
