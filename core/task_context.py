"""What a running task knows and tells: its context, its own log, outcome and progress.

Every task of the host's app is a :class:`HostTask` (the app's ``task_cls``),
so a task declared with ``bind=True``, or a class-based task, has
``self.context``::

    @celery.task(name="example.ingest", bind=True)
    def ingest(self, items):
        ctx = self.context
        ctx.log.info("ingesting %d items", len(items))
        for n, item in enumerate(items, 1):
            ...
            ctx.progress(n, len(items), f"ingested {item}")
        if bad:
            ctx.fail("%d items failed their checksum", len(bad))

Celery's SUCCESS says only that the task *ran* (seed 000, earkweb). What the
task logs through ``ctx.log`` (INFO and up; errors kept apart from the rest),
whether its own work succeeded (:attr:`TaskContext.outcome`), its progress
and its run time form its :class:`Report`, which is stored with its result by
the result backend (:mod:`core.result_store`) and so outlives the worker:
``host result ID`` shows it. The report is bounded by
``host.task_log.max_bytes``; lines beyond it are counted, not kept.

Cost: a task that never touches ``self.context`` pays for one small object
per run; its report (start time and run time) rides in the write Celery makes
anyway.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import cache, cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.utils.log import get_task_logger

from core.masking import mask_text

if TYPE_CHECKING:
    from core.config import HostConfig

#: Where a task's report travels: the request attribute, the result meta key, the SQL column.
REPORT = "host_report"
#: The state a task is in while it reports progress (Celery's convention).
PROGRESS = "PROGRESS"
#: A report is written at most this often for progress (the last step always is).
PROGRESS_INTERVAL = 0.2
#: ...and at most this often for log lines, while the task runs.
LOG_INTERVAL = 1.0
#: The default of ``host.task_log.max_bytes``.
MAX_BYTES = 64 * 1024
#: The longest single line kept; the rest of it is cut and marked.
MAX_LINE = 4000


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Report:
    """One run's own account: log lines, outcome, progress, start and run time.

    Log lines are kept in two lists, ``info`` (INFO and WARNING) and
    ``errors`` (ERROR and up), each with half of ``max_bytes``, so that a
    chatty task cannot push its errors out. Lines past the budget are counted
    in ``cut``.
    """

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.started = _now()
        self._clock = time.monotonic()
        self.budget = max_bytes // 2
        self.info: list[dict[str, str]] = []
        self.errors: list[dict[str, str]] = []
        self.used = {"info": 0, "errors": 0}
        self.cut = {"info": 0, "errors": 0}
        self.failed = False
        self.progress: dict[str, Any] | None = None
        self.runtime: float | None = None

    def full(self, level: int) -> bool:
        return self.used[_kind(level)] >= self.budget

    def add(self, level: int, message: str) -> None:
        """Keep one line (already cut and masked), or count it when its half of the budget is spent."""
        kind = _kind(level)
        entry = {"time": _now(), "level": logging.getLevelName(level), "message": message}
        # What the line costs in the stored JSON, so the report stays within max_bytes.
        size = len(json.dumps(entry, ensure_ascii=False).encode("utf-8", "replace")) + 2
        if self.used[kind] + size > self.budget:
            self.cut[kind] += 1
            self.used[kind] = max(self.used[kind], self.budget)  # later (shorter) lines are cut too
            return
        self.used[kind] += size
        getattr(self, kind).append(entry)

    def finish(self) -> None:
        if self.runtime is None:
            self.runtime = round(time.monotonic() - self._clock, 6)

    def as_dict(self, state: str) -> dict[str, Any]:
        """The report as stored: plain JSON, ``outcome`` decided once the task is done."""
        from celery import states

        if state in states.READY_STATES:
            self.finish()
            outcome = "failed" if (self.failed or self.errors or self.cut["errors"]) else "ok"
            if state != states.SUCCESS:
                outcome = "failed"
        else:
            outcome = None
        return {
            "started": self.started,
            "runtime": self.runtime,
            "outcome": outcome,
            "info": self.info,
            "errors": self.errors,
            "cut": dict(self.cut),
            "progress": self.progress,
        }


def _kind(level: int) -> str:
    return "errors" if level >= logging.ERROR else "info"


def cut_line(message: str) -> str:
    if len(message) > MAX_LINE:
        return f"{message[:MAX_LINE]}... [{len(message) - MAX_LINE} characters cut]"
    return message


def start_report(request: Any, app: Any) -> Report:
    """The report of the run ``request`` describes, made when it starts (the first stored state)."""
    report = report_of(request)
    if report is None:
        report = Report(_max_bytes(app))
        setattr(request, REPORT, report)
    return report


def report_of(request: Any) -> Report | None:
    return getattr(request, REPORT, None) if request is not None else None


class TaskLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A task's logger: each line goes to the worker's log and into the task's report.

    INFO and up are kept in the report whatever the logger's level, with
    secrets in URLs masked; an exception logged with ``exc_info`` keeps its
    last line (``ValueError: ...``).
    """

    def __init__(self, logger: logging.Logger, report: Report, on_line: Any = None) -> None:
        super().__init__(logger, {})
        self.report = report
        self.on_line = on_line

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.INFO:
            if self.report.full(level):
                self.report.cut[_kind(level)] += 1
            else:
                # Cut before masking: masking reads the whole line.
                self.report.add(level, mask_text(cut_line(_format(msg, args, kwargs.get("exc_info")))))
            if self.on_line is not None:
                self.on_line()
        super().log(level, msg, *args, **kwargs)


def _format(msg: object, args: tuple[Any, ...], exc_info: Any) -> str:
    text = str(msg)
    if args:
        try:
            text = text % (args[0] if len(args) == 1 and isinstance(args[0], Mapping) else args)
        except (TypeError, ValueError, KeyError):
            text = f"{text} {args!r}"
    if exc_info:
        import sys

        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if exc_info and exc_info[0] is not None:
            text = f"{text}: {exc_info[0].__name__}: {exc_info[1]}"
    return text


class TaskContext:
    """What a running task gets from the host (``self.context``)."""

    def __init__(self, task: HostTask, report: Report) -> None:
        self.task = task
        self.report = report
        self.log = TaskLog(get_task_logger(task.name), report, on_line=self._logged)
        self._written = 0.0

    @property
    def config(self) -> HostConfig:
        """The host's validated configuration."""
        config = getattr(self.task.app, "host_config", None)
        if config is None:
            config = self.task.app.configure_from_environment()
        return config  # type: ignore[no-any-return]

    @cached_property
    def plugin(self) -> str | None:
        """The enabled plugin this task belongs to (see :meth:`HostTask.plugin_name`), or None."""
        return self.task.plugin_name()

    @property
    def settings(self) -> Mapping[str, Any]:
        """The task's plugin's ``[plugin:NAME]`` options (read-only); empty without a plugin."""
        name = self.plugin
        plugins = getattr(self.task.app, "host_plugins", None)
        if name is None or plugins is None:
            return MappingProxyType({})
        return MappingProxyType(plugins.options.get(name, {}))

    @property
    def outcome(self) -> str:
        """``"failed"`` once the task called :meth:`fail` or logged an error; else ``"ok"``."""
        failed = self.report.failed or self.report.errors or self.report.cut["errors"]
        return "failed" if failed else "ok"

    def fail(self, message: str, *args: Any) -> None:
        """Record that the task's own work failed (its Celery state stays SUCCESS), with a reason."""
        self.report.failed = True
        self.log.error(message, *args)

    def progress(self, current: float, total: float | None = None, message: str = "") -> None:
        """Report how far the task is: ``current`` of ``total`` (None: unknown), and what it does.

        Stored as Celery's ``PROGRESS`` state with ``{"current", "total",
        "message"}`` as its info (what Flower and ``AsyncResult.info`` show),
        at most every :data:`PROGRESS_INTERVAL` seconds; the first and the
        last step are always stored.
        """
        if not isinstance(current, (int, float)) or isinstance(current, bool):
            raise TypeError(f"progress: current must be a number, not {type(current).__name__}")
        if total is not None and (not isinstance(total, (int, float)) or isinstance(total, bool)):
            raise TypeError(f"progress: total must be a number or None, not {type(total).__name__}")
        info = {"current": current, "total": total, "message": mask_text(cut_line(str(message)))}
        self.report.progress = {**info, "time": _now()}
        last = total is not None and current >= total
        self._store(PROGRESS_INTERVAL, force=last)

    def _logged(self) -> None:
        """A line was logged: stored with the state at most every :data:`LOG_INTERVAL` seconds,
        so that what a task logged survives it, even if it never reports progress."""
        self._store(LOG_INTERVAL)

    def _store(self, interval: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._written and now - self._written < interval:
            return
        self._written = now
        task, request = self.task, self.task.request
        if request.id is None or request.called_directly or not _stores(task, request):
            return
        progress = self.report.progress
        if progress is not None:
            info = {key: progress[key] for key in ("current", "total", "message")}
            task.update_state(task_id=request.id, state=PROGRESS, meta=info)
        else:  # Celery's own STARTED info
            info = {"pid": os.getpid(), "hostname": request.hostname}
            task.update_state(task_id=request.id, state="STARTED", meta=info)


def _stores(task: Task, request: Any) -> bool:
    """Whether states of this run can be stored: a result backend, and not an unstored eager run."""
    from celery.backends.base import DisabledBackend

    if isinstance(task.backend, DisabledBackend) or task.ignore_result:
        return False
    return not (getattr(request, "is_eager", False) and not task.app.conf.task_store_eager_result)


class HostTask(Task):
    """The host's task class: every task has ``self.context`` and a report.

    A task belongs to a plugin (for :attr:`TaskContext.settings`) when it
    says so (``@celery.task(bind=True, plugin="example")``), else when an
    enabled plugin comes from the distribution that holds the task's module,
    else when its name starts with an enabled plugin's name and a dot.
    """

    #: The plugin whose ``[plugin:NAME]`` options the task reads; None: found as above.
    plugin: str | None = None

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        # Usually made already, when STARTED was stored (core/result_store.py).
        start_report(self.request, self.app)

    @property
    def context(self) -> TaskContext:
        """This run's context (the same object for the whole run)."""
        request = self.request
        found = getattr(request, "host_context", None)
        if found is None:
            found = TaskContext(self, start_report(request, self.app))
            request.host_context = found
        return found  # type: ignore[no-any-return]

    def plugin_name(self) -> str | None:
        plugins = getattr(self.app, "host_plugins", None)
        if plugins is None:
            return self.plugin
        enabled = {p.name: p for p in plugins.active}
        if self.plugin is not None:
            return self.plugin
        distribution = _distribution_of(getattr(self.run, "__module__", None) or type(self).__module__)
        if distribution is not None:
            for p in enabled.values():
                if p.distribution and _normal(p.distribution) == _normal(distribution):
                    return p.name
        prefix = self.name.split(".", 1)[0] if self.name and "." in self.name else None
        return prefix if prefix in enabled else None


def _max_bytes(app: Any) -> int:
    config = getattr(app, "host_config", None)
    if config is None:
        return MAX_BYTES
    return max(0, int(config.host.get("task_log.max_bytes", MAX_BYTES)))


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@cache
def _distributions() -> Mapping[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def _distribution_of(module: str | None) -> str | None:
    if not module:
        return None
    found = _distributions().get(module.split(".", 1)[0])
    return found[0] if found else None
