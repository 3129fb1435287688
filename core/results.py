"""Reading a task's result, as ``host result`` and ``host send --wait`` do.

:func:`describe` reads everything stored about a task: Celery's state and
result, the request fields of an extended result (name, arguments, worker,
queue), and the task's own report (:mod:`core.task_context`: its outcome,
log lines, progress and run time). :func:`watch` waits for a task, calling
back on each progress update. :func:`outcome` waits for the result alone and
raises for a failed task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from core.errors import ConfigError, HostError, ResultTimeout, ServiceUnavailable, TaskFailed
from core.masking import mask, mask_lines, mask_text, mask_url
from core.result_store import stored_report
from core.task_context import PROGRESS

#: How often a waiting client asks the result store; the embedded store starts
#: faster than this and backs off to it.
POLL_INTERVAL = 0.05


@dataclass
class Outcome:
    """What is known about a task: its state, its name if the store keeps it, and its result."""

    task_id: str
    state: str
    result: Any = None
    name: str | None = None

    def render(self) -> str:
        """The result as the shell should see it: strings bare, anything else as JSON."""
        if isinstance(self.result, str) and _encodable(self.result):
            return self.result
        return json.dumps(self.result, default=repr)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: print it escaped, as JSON
        return False
    return True


def require_backend(app: Any) -> None:
    """Results can be read: a result store is configured, and it answers."""
    from celery.backends.base import DisabledBackend

    try:
        backend = app.backend  # Celery's SQL backend connects as it is made, to create its tables
    except ModuleNotFoundError as e:  # a database driver (psycopg, pymysql...)
        config = getattr(app, "host_config", None)
        raise ConfigError(
            f"the result backend {mask_url(str(app.conf.result_backend))} needs the Python module "
            f"{e.name}, which is not installed",
            path=str(config.path) if config else None,
            key="celery.result_backend",
            hint=f"install the database driver that provides {e.name} in the host's environment",
        ) from e
    except HostError:
        raise
    except Exception as e:
        raise _store_unavailable(app, e) from e
    if isinstance(backend, DisabledBackend):
        config = getattr(app, "host_config", None)
        raise ConfigError(
            "no result backend is configured, so results cannot be read",
            path=str(config.path) if config else None,
            key="celery.result_backend",
            hint="set celery.result_backend in the ini (development.ini uses embedded+sqlite://)",
        )
    ping = getattr(getattr(backend, "client", None), "ping", None)
    if ping is not None:  # Redis: one round trip, instead of Celery's ~20 s of reconnecting
        try:
            ping()
        except Exception as e:
            raise _store_unavailable(app, e) from e


def _store_unavailable(app: Any, error: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"the result store at {mask_url(str(app.conf.result_backend))} does not answer "
        f"({type(error).__name__}: {error})",
        hint="start it, or check celery.result_backend ('host config show' prints it)",
    )


def outcome(app: Any, task_id: str, wait: bool = False, timeout: float | None = None) -> Outcome:
    """Read (or wait for) a task's result; a failed task raises :class:`TaskFailed`."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    require_backend(app)
    result = app.AsyncResult(task_id)
    try:
        if wait:
            try:
                result.get(timeout=timeout, propagate=False, interval=POLL_INTERVAL)
            except CeleryTimeout:
                raise ResultTimeout(
                    f"task {task_id} is still {result.state} after {timeout:g} s",
                    hint=f"it may still run: check later with 'host result {task_id}'",
                ) from None
        state, value, traceback = result.state, result.result, result.traceback
        name = getattr(result, "name", None)
    except HostError:
        raise
    except Exception as e:  # the store went away between the ping and the read
        raise _store_unavailable(app, e) from e
    finally:
        # Let go of the pending result now, not in __del__ at interpreter exit,
        # when the result store's modules may already be torn down.
        app.backend.remove_pending_result(result)
    if state == "FAILURE":
        raise TaskFailed(
            f"task {name or ''}[{task_id}] failed: {type(value).__name__}: {value}",
            hint=_raised_at(traceback),
        )
    if state == "REVOKED":
        raise TaskFailed(
            f"task {name or ''}[{task_id}] was revoked before it finished",
            hint=f"'host result {task_id}' shows what it logged until then",
        )
    return Outcome(task_id, state, value if state == "SUCCESS" else None, name)


def inline_outcome(result: Any) -> Outcome:
    """The outcome of a task that ran in this process (an ``EagerResult``); a failure raises."""
    name = getattr(result, "name", None)
    if result.state == "FAILURE":
        error = result.result
        raise TaskFailed(
            f"task {name or ''}[{result.id}] failed: {type(error).__name__}: {error}",
            hint=_raised_at(result.traceback),
        )
    return Outcome(result.id, result.state, result.result if result.state == "SUCCESS" else None, name)


def _raised_at(traceback: str | None) -> str | None:
    """Where the task raised: the innermost ``File ..., line N, in f`` of its traceback."""
    frames = [line.strip() for line in (traceback or "").splitlines() if line.strip().startswith("File ")]
    return f"raised at {frames[-1]}" if frames else None


@dataclass
class TaskView:
    """All that is stored about one task, secrets masked: what ``host result`` shows."""

    task_id: str
    state: str
    name: str | None = None
    args: Any = None
    kwargs: Any = None
    worker: str | None = None
    queue: str | None = None
    retries: int | None = None
    date_done: datetime | None = None
    #: SUCCESS: the return value; FAILURE: None (see ``error``); PROGRESS: the progress info.
    result: Any = None
    #: ``ExceptionType: message`` of a failed or revoked task.
    error: str | None = None
    #: Where a failed task raised (the innermost frame of its traceback).
    raised_at: str | None = None
    traceback: str | None = None
    #: The task's own report, or None when it kept none (a task not yet
    #: started, a result stored before the host kept reports, ``rpc://``).
    report: dict[str, Any] | None = field(default=None)

    @property
    def outcome(self) -> str | None:
        """The task's own outcome: "ok" or "failed" once done; None while running or unknown."""
        if self.state in ("FAILURE", "REVOKED"):  # also when stored by the worker's main process
            return "failed"
        return self.report.get("outcome") if self.report else None

    @property
    def progress(self) -> dict[str, Any] | None:
        if self.state == PROGRESS and isinstance(self.result, dict) and "current" in self.result:
            return self.result
        return self.report.get("progress") if self.report else None

    def render_result(self) -> str:
        return Outcome(self.task_id, self.state, self.result, self.name).render()

    def as_json(self) -> dict[str, Any]:
        report = self.report or {}
        return {
            "id": self.task_id,
            "state": self.state,
            "outcome": self.outcome,
            "name": self.name,
            "args": self.args,
            "kwargs": self.kwargs,
            "worker": self.worker,
            "queue": self.queue,
            "retries": self.retries,
            "started": report.get("started"),
            "date_done": self.date_done.isoformat() if self.date_done else None,
            "runtime": report.get("runtime"),
            "progress": self.progress,
            "log": {"info": report.get("info", []), "errors": report.get("errors", [])},
            "log_cut": report.get("cut", {"info": 0, "errors": 0}),
            "result": self.result,
            "error": self.error,
            "raised_at": self.raised_at,
            "traceback": self.traceback,
        }


def describe(app: Any, task_id: str) -> TaskView:
    """Everything the result store holds about ``task_id`` (PENDING when it holds nothing)."""
    require_backend(app)
    backend = app.backend
    if type(backend).__name__ == "RPCBackend":
        raise ConfigError(
            f"the result backend {mask_url(str(app.conf.result_backend))} keeps no results: rpc:// "
            "sends each result to the process that sent the task, which alone can read it",
            key="celery.result_backend",
            path=str(app.host_config.path) if getattr(app, "host_config", None) else None,
            hint="to read results from another process, use redis://, a db+ database, or embedded+sqlite://",
        )
    try:
        meta = backend.get_task_meta(task_id)
        report = stored_report(backend, task_id, meta)
    except HostError:
        raise
    except Exception as e:
        raise _store_unavailable(app, e) from e
    state = meta.get("status") or "PENDING"
    value = meta.get("result")
    view = TaskView(
        task_id,
        state,
        name=meta.get("name"),
        args=mask(_plain(meta.get("args"))),
        kwargs=mask(_plain(meta.get("kwargs"))),
        worker=meta.get("worker"),
        retries=meta.get("retries"),
        date_done=stored_time(app, meta.get("date_done")),
        queue=_unprefixed(app, meta.get("queue")),
        traceback=mask_lines(meta["traceback"]) if meta.get("traceback") else None,
        report=report,
    )
    if isinstance(value, BaseException):
        view.error = mask_text(f"{type(value).__name__}: {' '.join(str(value).split())}")
        view.raised_at = _raised_at(view.traceback)
    elif state == "SUCCESS":
        view.result = value  # the task's own output, as it returned it
    elif state not in ("STARTED", "PENDING") and value is not None:
        view.result = mask(value)  # PROGRESS, or the info of a state the task set itself
    return view


def _unprefixed(app: Any, queue: str | None) -> str | None:
    """A queue as plugins and ``-Q`` name it: without ``host.site_id``'s prefix."""
    from core.settings import queue_prefix

    config = getattr(app, "host_config", None)
    prefix = queue_prefix(config) if config is not None and queue else ""
    return queue[len(prefix) :] if queue and prefix and queue.startswith(prefix) else queue


def watch(
    app: Any,
    task_id: str,
    timeout: float | None,
    on_progress: Callable[[dict[str, Any]], None],
    interval: float = 0.1,
) -> None:
    """Wait until the task is done, calling ``on_progress(info)`` for each new progress it stored.

    Reads the task's state every ``interval`` seconds (one small read); the
    result itself is then read by :func:`outcome`.
    """
    from celery import states

    require_backend(app)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: Any = None
    while True:
        try:
            meta = app.backend.get_task_meta(task_id, cache=False)
        except Exception as e:
            raise _store_unavailable(app, e) from e
        state = meta.get("status")
        info = meta.get("result")
        if state == PROGRESS and isinstance(info, dict) and info != seen:
            seen = info
            on_progress(info)
        if state in states.READY_STATES:
            # The last steps may have been stored and replaced between two reads.
            last = (stored_report(app.backend, task_id, meta) or {}).get("progress")
            if isinstance(last, dict) and seen is not None:
                last = {key: last.get(key) for key in seen}
                if last != seen:
                    on_progress(last)
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise ResultTimeout(
                f"task {task_id} is still {state} after {timeout:g} s",
                hint=f"it may still run: check later with 'host result {task_id}'",
            )
        time.sleep(interval)


def _plain(value: Any) -> Any:
    """Arguments as stored: lists and dicts (a tuple from an eager run is a list)."""
    if isinstance(value, tuple):
        return list(value)
    return value


def stored_time(app: Any, value: Any) -> datetime | None:
    """A stored ``date_done`` in UTC: SQL stores keep it naive in the app's zone, Redis as ISO text."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=app.timezone)
    return value.astimezone(timezone.utc)
