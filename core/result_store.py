"""The result store as the host uses it: an outage costs no task and never blocks sending.

Celery's result backends get two changes, made once, where the app creates its
backend (:meth:`core.celery_app.HostCelery._get_backend`):

Sending does not subscribe to the result.
    Celery's Redis backend subscribes to a task's result channel as the task
    is sent (``on_task_call``). With the store down that subscription raises,
    after some 20 s of reconnecting, and the task is never sent although the
    broker is up. The host skips it, as Celery itself does in processes where
    waiting would block: ``AsyncResult.get()`` subscribes when someone waits,
    and reads the stored result first, so a result that arrived in between is
    not missed. Instead, at most every few seconds a send pings the store
    (a short timeout), and says once, at WARNING, when it stops answering:
    the task is sent, but its result cannot be awaited now; and once, at
    INFO, when it answers again. Backends whose replies are messages
    (``rpc://``) must listen before the task runs and are left alone.

A result that cannot be stored is logged once.
    The worker retries storing it (``celery.result_backend_always_retry``,
    bounded by ``celery.result_backend_max_retries``). When that gives up, the
    task has still run: the host logs one line naming the task and its id, in
    the ini's log format, and goes on, instead of a pool traceback and a
    second, main-process attempt to store a failure that blocks the worker.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from celery.app.task import Context
from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.base import BaseKeyValueStoreBackend
from celery.states import READY_STATES, STARTED

from core.masking import mask_url
from core.task_context import REPORT, report_of, start_report

logger = logging.getLogger("host.results")


def guard(backend: Any) -> Any:
    """Apply both changes to a newly created backend, and return it; stored results carry reports."""
    if isinstance(backend, AsyncBackendMixin) and isinstance(backend, BaseKeyValueStoreBackend):
        backend.on_task_call = _Watch(backend)
    _carry_reports(backend)
    store = backend.store_result

    def store_result(task_id: str, result: Any, state: str, *args: Any, **kwargs: Any) -> Any:
        if state not in READY_STATES:
            return _store_passing(backend, task_id, result, state, *args, **kwargs)
        try:
            return store(task_id, result, state, *args, **kwargs)
        except Exception as e:
            if not unreachable(backend, e):
                raise
            _log_lost(backend, task_id, state, kwargs.get("request"), e)
            return result

    backend.store_result = store_result
    return backend


def _store_passing(backend: Any, task_id: str, result: Any, state: str, *args: Any, **kwargs: Any) -> Any:
    """Store a passing state (STARTED, PROGRESS, RETRY) once, without Celery's retries.

    Retrying it would hold the task up for as long as the store is down (a
    minute with production.ini) before it even starts; the next state
    replaces it anyway. A store that does not answer costs the passing state
    only, said at DEBUG: the final state is retried and, if lost, logged.
    """
    request = kwargs.get("request")
    if state == STARTED and isinstance(request, Context):  # the run's own request, in the pool
        start_report(request, backend.app)
    try:
        backend._store_result(task_id, backend.encode_result(result, state), state, *args, **kwargs)
    except Exception as e:
        if not unreachable(backend, e):
            raise
        logger.debug("could not store the %s state of task %s: %s", state, task_id, e)
    return result


class _Watch:
    """A send's look at the result store, instead of a subscription: a ping every few seconds at most."""

    #: Seconds between two pings, and how long one may take.
    INTERVAL, TIMEOUT = 5.0, 0.25

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.url = mask_url(str(backend.app.conf.result_backend))
        self.checked = -self.INTERVAL
        self.down = False
        self.lock = threading.Lock()
        self.client: Any = None
        self.pid = 0

    def __call__(self, producer: Any, task_id: str) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.checked < self.INTERVAL:
                return
            self.checked = now
        try:
            self._ping()
        except Exception as e:
            if not self.down:
                self.down = True
                logger.warning(
                    "the result store at %s does not answer (%s): tasks are still sent, but their results "
                    "cannot be awaited until it answers; workers store them as soon as it does",
                    self.url,
                    " ".join(f"{type(e).__name__}: {e}".split()),
                )
        else:
            if self.down:
                self.down = False
                logger.info("the result store at %s answers again", self.url)

    def _ping(self) -> None:
        if self.client is None or self.pid != os.getpid():  # a connection must not cross fork()
            import redis

            timeouts = {"socket_connect_timeout": self.TIMEOUT, "socket_timeout": self.TIMEOUT}
            try:
                self.client = redis.Redis(**{**self.backend.connparams, **timeouts})
            except TypeError:  # not a single Redis server (Sentinel): no ping, sending as ever
                self.checked = float("inf")
                return
            self.pid = os.getpid()
        self.client.ping()


def unreachable(backend: Any, error: BaseException) -> bool:
    """``error`` (or the error behind Celery's final ``BackendStoreError``) means the store is down."""
    safe_to_retry = getattr(backend, "exception_safe_to_retry", None)
    if safe_to_retry is None:
        return False
    return any(e is not None and safe_to_retry(e) for e in (error, error.__context__, error.__cause__))


def _log_lost(backend: Any, task_id: str, state: str, request: Any, error: BaseException) -> None:
    name = getattr(request, "task", None) or getattr(request, "name", None) or "?"
    url = mask_url(str(backend.app.conf.result_backend))
    retries = backend.app.conf.result_backend_max_retries if getattr(backend, "always_retry", False) else 0
    cause = error.__context__ if error.__context__ is not None else error
    logger.error(
        "could not store the %s result of task %s[%s]: the result store at %s does not answer "
        "(%s: %s; %g retries); the task ran, its result is lost",
        state,
        name,
        task_id,
        url,
        type(cause).__name__,
        " ".join(str(cause).split()),
        retries,
    )


# -- the task's own report, stored with its result ----------------------------


def _carry_reports(backend: Any) -> None:
    """Store each task's report (:mod:`core.task_context`) in the same write as its state.

    * Key-value stores (Redis, ...) keep the whole meta: the report is its
      ``host_report`` key.
    * The embedded store writes its ``host_report`` column itself
      (:mod:`core.embedded_results`).
    * Celery's SQL backend (``db+...``) keeps only its own columns: the report
      goes to a ``host_report`` column added to ``celery_taskmeta``, in an
      UPDATE after Celery's own write.

    ``rpc://`` keeps no results, and no reports.
    """
    from celery.backends.database import DatabaseBackend

    if getattr(backend, "stores_reports", False):
        return
    if isinstance(backend, BaseKeyValueStoreBackend):
        meta_of, store = backend._get_result_meta, backend._store_result
        kept = threading.local()

        def _get_result_meta(result: Any, state: str, traceback: Any, request: Any, **kwargs: Any) -> Any:
            meta = meta_of(result, state, traceback, request, **kwargs)
            report = report_of(request)
            if report is not None:
                meta[REPORT] = report.as_dict(state)
            elif getattr(kept, "report", None) is not None:
                meta[REPORT] = kept.report
            return meta

        def _store_result(task_id: str, result: Any, state: str, *args: Any, **kwargs: Any) -> Any:
            # A state the worker's main process stores (REVOKED by terminate, a lost pool
            # process, a hard time limit) has no report: keep the one the task stored.
            if state in READY_STATES and report_of(kwargs.get("request")) is None:
                kept.report = _previous_report(backend, task_id)
            try:
                return store(task_id, result, state, *args, **kwargs)
            finally:
                kept.report = None

        backend._get_result_meta = _get_result_meta
        backend._store_result = _store_result
    elif isinstance(backend, DatabaseBackend):
        _SqlReports(backend).install()


def _previous_report(backend: Any, task_id: str) -> Any:
    try:
        return backend._get_task_meta_for(task_id).get(REPORT)
    except Exception:  # the write that follows reports an unreachable store
        return None


class _SqlReports:
    """Reports in a ``host_report`` column of Celery's ``celery_taskmeta`` table (``db+`` backends)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.ready: bool | None = None

    def install(self) -> None:
        store = self.backend._store_result

        def _store_result(task_id: str, result: Any, state: str, *args: Any, **kwargs: Any) -> Any:
            stored = store(task_id, result, state, *args, **kwargs)
            report = report_of(kwargs.get("request"))
            if report is not None and self.column():
                self.write(task_id, report.as_dict(state))
            return stored

        self.backend._store_result = _store_result

    def column(self) -> bool:
        """Add the column once per process if the table lacks it; False if that is refused."""
        if self.ready is None:
            try:
                self.ready = ensure_report_column(self.backend)
            except Exception as e:
                self.ready = False
                logger.warning(
                    "task reports (logs, outcome, progress) are not stored: could not add a host_report "
                    "column to %s in %s (%s: %s)",
                    self.backend.task_cls.__table__.name,
                    mask_url(str(self.backend.url)),
                    type(e).__name__,
                    e,
                )
        return self.ready

    def write(self, task_id: str, report: dict[str, Any]) -> None:
        from sqlalchemy import text

        table = _table_name(self.backend)
        session = self.backend.ResultSession()
        try:
            session.execute(
                text(f"UPDATE {table} SET host_report = :report WHERE task_id = :id"),
                {"report": json.dumps(report, default=str, ensure_ascii=False), "id": task_id},
            )
            session.commit()
        finally:
            session.close()


def ensure_report_column(backend: Any) -> bool:
    """``celery_taskmeta`` has a ``host_report`` column (added now if needed)."""
    from sqlalchemy import inspect, text

    table = backend.task_cls.__table__
    backend.ResultSession().close()  # Celery creates its tables on first use
    engine = backend.session_manager.get_engine(backend.url, **backend.engine_options)
    if REPORT in {c["name"] for c in inspect(engine).get_columns(table.name, schema=table.schema)}:
        return True
    name = _table_name(backend)
    try:
        with engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE {name} ADD COLUMN {REPORT} TEXT"))
    except Exception:
        # Another process may have added it in the meantime.
        if REPORT not in {c["name"] for c in inspect(engine).get_columns(table.name, schema=table.schema)}:
            raise
    return True


def stored_report(backend: Any, task_id: str, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The report stored with a task's result, if any (``meta`` as the backend returned it)."""
    from celery.backends.database import DatabaseBackend

    found = meta.get(REPORT)
    if (
        found is None
        and isinstance(backend, DatabaseBackend)
        and not getattr(backend, "stores_reports", False)
    ):
        found = _sql_report(backend, task_id)
    if isinstance(found, (str, bytes)):
        try:
            found = json.loads(found)
        except ValueError:
            return None
    return found if isinstance(found, dict) else None


def _table_name(backend: Any) -> str:
    """Celery's task table, with its schema when ``celery.database_table_schemas`` sets one."""
    table = backend.task_cls.__table__
    return f"{table.schema}.{table.name}" if table.schema else str(table.name)


def _sql_report(backend: Any, task_id: str) -> Any:
    from sqlalchemy import text

    table = _table_name(backend)
    session = backend.ResultSession()
    try:
        row = session.execute(
            text(f"SELECT {REPORT} FROM {table} WHERE task_id = :id"), {"id": task_id}
        ).fetchone()
    except Exception:  # no such column: nothing was ever stored
        return None
    finally:
        session.close()
    return row[0] if row else None
