"""Sending tasks by name and reading their results, as ``host send`` and ``host result`` do."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.errors import ConfigError, ResultTimeout, TaskFailed, UsageError

#: How often a waiting client asks the result store; the embedded store starts
#: faster than this and backs off to it.
POLL_INTERVAL = 0.05


def parse_json_args(values: Sequence[str]) -> list[Any]:
    """Each command-line ARG is one JSON value: ``'"Hello"'`` is a string, ``3`` a number."""
    args = []
    for position, text in enumerate(values, start=1):
        try:
            args.append(json.loads(text))
        except ValueError as e:
            raise UsageError(
                f"argument {position} ({text!r}) is not a JSON value: {e}",
                hint=f"quote a string twice, once for the shell and once for JSON: '\"{text}\"'",
            ) from e
    return args


def parse_json_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--kwargs {text!r} is not JSON: {e}", hint="write --kwargs '{\"name\": 1}'") from e
    if not isinstance(kwargs, dict):
        raise UsageError(
            f"--kwargs must be a JSON object, got {text!r}", hint="write --kwargs '{\"name\": 1}'"
        )
    return kwargs


def parse_eta(text: str | None) -> datetime | None:
    """ISO 8601; a time without a zone is local time."""
    if not text:
        return None
    try:
        eta = datetime.fromisoformat(text)
    except ValueError as e:
        raise UsageError(
            f"--eta {text!r} is not an ISO 8601 time", hint="write --eta 2030-01-31T09:00:00+00:00"
        ) from e
    return eta if eta.tzinfo else eta.astimezone()


def check_task_name(name: str, known: Iterable[str], broken: Sequence[str] = ()) -> None:
    """An unknown name is an error listing the closest known names."""
    known = list(known)
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    message = f"unknown task {name!r}"
    if close:
        message += f"; did you mean {', '.join(close)}?"
    if broken:
        message += f" ({len(broken)} extension(s) failed to load and may hold it: {', '.join(broken)})"
    raise UsageError(message, hint="'host tasks' lists every task the installed extensions provide")


def send(app: Any, name: str, args: list[Any], kwargs: dict[str, Any], **options: Any) -> Any:
    """Send one task by name; ``options`` are ``apply_async`` options (task_id, eta, queue...)."""
    options = {key: value for key, value in options.items() if value is not None}
    return app.send_task(name, args=args, kwargs=kwargs, **options)


@dataclass
class Outcome:
    """What is known about a task: its state and its result or error."""

    task_id: str
    state: str
    result: Any = None
    traceback: str | None = None
    name: str | None = None

    def render(self) -> str:
        """The result as the shell should see it: strings bare, anything else as JSON."""
        if isinstance(self.result, str):
            return self.result
        return json.dumps(self.result, default=repr)


def require_backend(app: Any) -> None:
    from celery.backends.base import DisabledBackend

    if isinstance(app.backend, DisabledBackend):
        raise ConfigError(
            "no result backend is configured, so results cannot be read",
            key="celery.result_backend",
            hint="set celery.result_backend in the ini (development.ini uses embedded+sqlite://)",
        )


def outcome(app: Any, task_id: str, wait: bool = False, timeout: float | None = None) -> Outcome:
    """Read (or wait for) a task's result; a failed task raises :class:`TaskFailed`."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    require_backend(app)
    result = app.AsyncResult(task_id)
    if wait:
        try:
            result.get(timeout=timeout, propagate=False, interval=POLL_INTERVAL)
        except CeleryTimeout:
            raise ResultTimeout(
                f"task {task_id} is still {result.state} after {timeout:g} s",
                hint=f"it may still run: check later with 'host result {task_id}'",
            ) from None
    state = result.state
    name = getattr(result, "name", None)
    if state == "FAILURE":
        error = result.result
        raise TaskFailed(
            f"task {name or ''}[{task_id}] failed: {type(error).__name__}: {error}",
            hint=(result.traceback or "").strip().splitlines()[-1] if result.traceback else None,
        )
    value = result.result if state == "SUCCESS" else None
    return Outcome(task_id, state, value, result.traceback, name)
