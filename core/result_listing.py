"""Recent results from the result backend: ``host results`` and the toolkit's ``recent_results``.

Seed 002 (Arches) lists its tasks with ``select * from
django_celery_results_taskresult``; this is that query for every result
store that keeps results where they can be listed:

* SQL stores -- the embedded store of ``development.ini`` and Celery's
  ``db+`` URLs -- are one ``SELECT`` on Celery's ``celery_taskmeta`` table,
  filtered, ordered (newest first) and limited in SQL;
* Redis has no index: its ``celery-task-meta-*`` keys are scanned (``SCAN``,
  then ``MGET`` in batches), decoded, filtered and sorted here, keeping only
  the newest ``limit`` in memory. The work grows with the number of stored
  results (``celery.result_expires`` bounds it).

Other backends (``rpc://``, caches...) keep no list of results: asking them
is a configuration error naming ``celery.result_backend``.

Task names, arguments and workers are stored only with
``celery.result_extended = true``. Arguments, keyword arguments and results
are masked (:func:`core.masking.mask`, as failure emails mask them) before a
row leaves this module.
"""

from __future__ import annotations

import difflib
import functools
import heapq
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from core.beat_entries import BadSchedule, parse_schedule
from core.errors import ConfigError, ServiceUnavailable, UsageError
from core.masking import mask, mask_text, mask_url
from core.results import stored_time
from core.task_context import PROGRESS, REPORT

#: Rows with this status hold a report, not a task's result: never listed.
REPORT_STATE = "HOST_REPORT"
DEFAULT_LIMIT = 20
#: Redis keys read per ``MGET``, and asked for per ``SCAN`` step.
BATCH = 500

_LISTABLE = (
    "set celery.result_backend to a store that keeps results: "
    "embedded+sqlite:///%(here)s/data/results.sqlite (one machine), redis://HOST:6379/0, "
    "or a db+ URL such as db+postgresql://USER:PASSWORD@HOST/DB"
)


@dataclass(frozen=True)
class ResultRow:
    """One stored result, as listed: secrets in ``args``, ``kwargs`` and ``result`` already masked.

    ``name``, ``args``, ``kwargs``, ``worker``, ``queue`` and ``retries`` are
    ``None`` unless the result was stored with ``celery.result_extended``;
    ``outcome``, ``started`` and ``runtime`` come from the task's own report,
    when it has one. ``date_done`` is ``None`` until the task has finished.
    """

    task_id: str
    state: str
    name: str | None = None
    date_done: datetime | None = None
    worker: str | None = None
    queue: str | None = None
    retries: int | None = None
    args: Any = None
    kwargs: Any = None
    result: Any = None
    #: A failed (or retried, or revoked) task's exception: ``ZeroDivisionError: division by zero``.
    error: str | None = None
    outcome: str | None = None
    started: str | None = None
    runtime: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON data: times in ISO 8601, UTC."""
        data = asdict(self)
        data["date_done"] = self.date_done.isoformat() if self.date_done else None
        return data


@dataclass(frozen=True)
class _Query:
    state: str | None
    task: str | None
    since: datetime | None
    limit: int
    #: ``host:SITE:`` with a ``host.site_id``: only the site's own tasks (by their queue).
    site: str = ""

    def matches(self, row: ResultRow) -> bool:
        """The filters, for stores that cannot apply them (Redis)."""
        if row.state == REPORT_STATE or (self.state and row.state != self.state):
            return False
        if self.site and not (row.queue or "").startswith(self.site):
            return False
        if self.task and (row.name is None or not _glob(self.task).fullmatch(row.name)):
            return False
        return not self.since or (row.date_done is not None and row.date_done >= self.since)


def recent_results(
    app: Any,
    state: str | None = None,
    task: str | None = None,
    since: datetime | timedelta | str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[ResultRow]:
    """The newest results in ``app``'s result backend, newest first; unfinished tasks after them.

    :param state: only this state (any case): a Celery state or ``PROGRESS``.
    :param task: only this task name; ``*`` in it matches any characters (``example.*``).
    :param since: only results done at or after this time: a ``datetime`` (local time when naive),
        a ``timedelta`` back from now, or text: ISO 8601, or a duration (``10m``, ``2h``, ``1d``).
    :param limit: at most this many rows.
    :raises core.errors.UsageError: for a state, time or limit that cannot be.
    :raises core.errors.ConfigError: when the backend keeps no list of results (``rpc://``).
    :raises core.errors.ServiceUnavailable: when the result store does not answer.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise UsageError(f"limit {limit!r} is not a number of results", hint="give 1 or more")
    query = _Query(
        state=check_state(state) if state else None,
        task=task or None,
        since=since_time(since) if since not in (None, "") else None,
        limit=limit,
        site=_site(app),
    )
    backend = _backend(app)
    if _is(backend, "celery.backends.database", "DatabaseBackend"):
        return _from_sql(app, backend, query)
    if _is(backend, "celery.backends.redis", "RedisBackend"):
        return _from_redis(app, backend, query)
    raise unlistable(app)


# -- the filters --------------------------------------------------------------


def known_states() -> list[str]:
    from celery import states

    return sorted({*states.ALL_STATES, PROGRESS})


def check_state(state: str) -> str:
    """``failure`` -> ``FAILURE``.

    A task may set states of its own (``update_state(state="AUDITING")``), so
    any name is accepted, except one that looks like a typo of Celery's states
    (``FAILUR``), which would silently list nothing.
    """
    name = state.strip().upper()
    known = known_states()
    if name in known:
        return name
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    if close or not re.fullmatch(r"[A-Z_][A-Z0-9_-]*", name):
        hint = f"did you mean {close[0]}?" if close else f"Celery's states are {', '.join(known)}"
        raise UsageError(f"state {state!r} is not a task state", hint=hint)
    return name


def since_time(value: datetime | timedelta | str, what: str = "since") -> datetime:
    """When ``since`` begins: ISO 8601 text (local time without a zone), or a duration back from now.

    Durations are written as periodic entries' schedules are (:func:`core.beat_entries.parse_schedule`):
    ``90s``, ``10m``, ``2h``, ``1d``, ``1h30m``, or plain seconds.
    """
    now = datetime.now(timezone.utc)
    if isinstance(value, timedelta):
        return now - value
    if isinstance(value, datetime):
        return value if value.tzinfo else value.astimezone()
    text = str(value).strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        return when if when.tzinfo else when.astimezone()
    try:
        seconds = parse_schedule(text)
    except BadSchedule:
        seconds = None
    if not isinstance(seconds, float):  # nothing, or a crontab: not a time
        raise UsageError(
            f"{what} {text!r} is neither an ISO 8601 time nor a duration",
            hint=f"write {what} 2030-01-31T09:00 (local time unless it has a zone), or a duration back "
            "from now: 90s, 10m, 2h, 1d",
        )
    return now - timedelta(seconds=seconds)


@functools.cache
def _glob(pattern: str) -> re.Pattern[str]:
    """``example.*`` as a regular expression: ``*`` matches anything, every other character itself."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


# -- which backend ---------------------------------------------------------------


def _is(backend: Any, module: str, name: str) -> bool:
    """``backend`` is (a subclass of) Celery's ``module.name``; the module itself need not be imported."""
    return any((cls.__module__, cls.__name__) == (module, name) for cls in type(backend).__mro__)


def _backend(app: Any) -> Any:
    """``app.backend``, made now if need be (a missing driver or a dead store: a clear error)."""
    from core.results import require_backend

    require_backend(app)
    return app.backend


def unlistable(app: Any) -> ConfigError:
    """``rpc://``, a cache, ...: the error naming ``celery.result_backend`` and what to set instead."""
    config = getattr(app, "host_config", None)
    what = type(app.backend).__name__
    source = config.sources.get("celery.result_backend", "") if config else ""
    if source.startswith("env "):
        what += f", from ${source.removeprefix('env ')}"
    return ConfigError(
        f"the result backend {mask_url(str(app.conf.result_backend))} ({what}) keeps no listable "
        "results: they can be listed from the embedded store, a db+ database or Redis",
        path=str(config.path) if config else None,
        key="celery.result_backend",
        hint=_LISTABLE,
    )


def _unavailable(app: Any, error: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"the result store at {mask_url(str(app.conf.result_backend))} does not answer "
        f"({type(error).__name__}: {mask_text(' '.join(str(error).split()))})",
        hint="start it, or check celery.result_backend ('host config show' prints it)",
    )


# -- SQL: the embedded store and db+ URLs ----------------------------------------------


def _from_sql(app: Any, backend: Any, query: _Query) -> list[ResultRow]:
    """One SELECT on Celery's table; only the columns it has (older stores lack some)."""
    import sqlalchemy as sa

    table = backend.task_cls.__table__
    try:
        session = backend.ResultSession()
        try:
            present = {
                column["name"]
                for column in sa.inspect(session.get_bind()).get_columns(table.name, schema=table.schema)
            }
            statement = _select(table, present, query, app.timezone)
            found = [] if statement is None else session.execute(statement).mappings().all()
        finally:
            session.close()
    except sa.exc.SQLAlchemyError as e:
        raise _unavailable(app, e) from e
    return [_sql_row(app, backend, dict(values)) for values in found]


def _select(table: Any, present: set[str], query: _Query, zone: Any) -> Any:
    """The SELECT for ``query``, or ``None`` when no row can match (a name filter, no name column).

    ``zone`` is the app's: Celery stores ``date_done`` naive, in it (``app.now()``).
    """
    import sqlalchemy as sa

    columns = [column for column in table.c if column.name in present]
    if REPORT in present and REPORT not in table.c:
        columns.append(sa.column(REPORT, sa.Text))
    statement = sa.select(*columns).where(table.c.status != REPORT_STATE)
    if query.state:
        statement = statement.where(table.c.status == query.state)
    if query.task:
        if "name" not in present:
            return None
        name = table.c.name
        if "*" in query.task:  # LIKE (SQLite's ignores the case of ASCII letters), with % and _ escaped
            statement = statement.where(name.like(_like(query.task).replace("*", "%"), escape="\\"))
        else:
            statement = statement.where(name == query.task)
    if query.site:
        if "queue" not in present:
            return None
        statement = statement.where(table.c.queue.like(_like(query.site) + "%", escape="\\"))
    done = table.c.date_done
    if query.since:
        statement = statement.where(done >= query.since.astimezone(zone).replace(tzinfo=None))
    # Finished tasks newest first, then the unfinished ones (no date_done); NULLS LAST is not portable.
    unfinished = sa.case((done.is_(None), 1), else_=0)
    return statement.order_by(unfinished, done.desc(), table.c.id.desc()).limit(query.limit)


def _like(text: str) -> str:
    """``text`` for SQL LIKE: its ``%``, ``_`` and ``\\`` taken literally."""
    return re.sub(r"([\\%_])", r"\\\1", text)


def _site(app: Any) -> str:
    """The site's queue prefix: with a ``host.site_id``, its tasks are those of its queues."""
    from core.settings import queue_prefix

    config = getattr(app, "host_config", None)
    return queue_prefix(config) if config is not None else ""


def _sql_row(app: Any, backend: Any, values: dict[str, Any]) -> ResultRow:
    meta = {key: values.get(key) for key in ("task_id", "status", "name", "worker", "queue", "retries")}
    meta["date_done"] = values.get("date_done")
    meta["result"] = _decode(backend, values.get("result"))
    for key in ("args", "kwargs"):
        meta[key] = _decode(backend, values.get(key))
    meta[REPORT] = _report_column(values.get(REPORT))
    return _row(app, meta)


def _report_column(text: Any) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):  # not the report's JSON: no report
        return None


# -- Redis: SCAN and MGET ------------------------------------------------------------------


def _from_redis(app: Any, backend: Any, query: _Query) -> list[ResultRow]:
    prefix = backend.task_keyprefix  # with result_backend_transport_options' global_keyprefix
    if isinstance(prefix, str):
        prefix = prefix.encode()
    pattern = re.sub(rb"([\\*?\[\]])", rb"\\\1", prefix) + b"*"
    client = backend.client
    try:
        rows = (
            row
            for keys in _batches(client.scan_iter(match=pattern, count=BATCH), BATCH)
            for row in _redis_rows(app, backend, client.mget(keys))
            if query.matches(row)
        )
        return heapq.nlargest(query.limit, rows, key=_newest)
    except Exception as e:
        if not _redis_down(e):
            raise
        raise _unavailable(app, e) from e


def _redis_down(error: Exception) -> bool:
    import redis

    return isinstance(error, (redis.ConnectionError, redis.TimeoutError))


def _batches(keys: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for key in keys:
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _redis_rows(app: Any, backend: Any, payloads: list[Any]) -> Iterator[ResultRow]:
    for payload in payloads:
        if payload is None:  # expired between SCAN and MGET
            continue
        try:
            meta = backend.decode(payload)
        except Exception:  # not a result Celery wrote: not listed
            continue
        if isinstance(meta, dict) and meta.get("task_id") and meta.get("status"):
            yield _row(app, meta)


def _newest(row: ResultRow) -> tuple[int, float]:
    """Finished before unfinished, then by when."""
    return (1, row.date_done.timestamp()) if row.date_done else (0, 0.0)


# -- one row -----------------------------------------------------------------------------------


def _row(app: Any, meta: dict[str, Any]) -> ResultRow:
    """A row from a result's meta (decoded), whichever store it came from."""
    from celery import states

    state = str(meta["status"])
    result: Any = meta.get("result")
    error = None
    if state in states.EXCEPTION_STATES and isinstance(result, dict) and "exc_type" in result:
        result, error = None, _exception_text(result)
    found = meta.get(REPORT)
    report: dict[str, Any] = found if isinstance(found, dict) else {}
    runtime = report.get("runtime")
    return ResultRow(
        task_id=str(meta["task_id"]),
        state=state,
        name=meta.get("name"),
        date_done=stored_time(app, meta.get("date_done")),
        worker=meta.get("worker"),
        queue=meta.get("queue"),
        retries=meta.get("retries"),
        args=mask(meta.get("args")),
        kwargs=mask(meta.get("kwargs")),
        result=mask(result),
        error=error,
        outcome="failed" if state in ("FAILURE", "REVOKED") else report.get("outcome"),
        started=report.get("started"),
        runtime=float(runtime) if isinstance(runtime, (int, float)) else None,
    )


def _exception_text(exc: dict[str, Any]) -> str:
    message = exc.get("exc_message")
    if isinstance(message, (list, tuple)):
        message = ", ".join(str(part) for part in message)
    text = f"{exc['exc_type']}: {message}" if message not in (None, "") else str(exc["exc_type"])
    return mask_text(" ".join(text.split()))


def _decode(backend: Any, payload: Any) -> Any:
    if payload is None:
        return None
    try:
        return backend.decode(bytes(payload) if isinstance(payload, memoryview) else payload)
    except Exception as e:  # one bad row must not hide the others
        return f"<cannot decode: {type(e).__name__}>"
