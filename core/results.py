"""Reading a task's result, as ``host result`` and ``host send --wait`` do."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError, HostError, ResultTimeout, ServiceUnavailable, TaskFailed
from core.masking import mask_url

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

    if isinstance(app.backend, DisabledBackend):
        config = getattr(app, "host_config", None)
        raise ConfigError(
            "no result backend is configured, so results cannot be read",
            path=str(config.path) if config else None,
            key="celery.result_backend",
            hint="set celery.result_backend in the ini (development.ini uses embedded+sqlite://)",
        )
    ping = getattr(getattr(app.backend, "client", None), "ping", None)
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
    return Outcome(task_id, state, value if state == "SUCCESS" else None, name)


def _raised_at(traceback: str | None) -> str | None:
    """Where the task raised: the innermost ``File ..., line N, in f`` of its traceback."""
    frames = [line.strip() for line in (traceback or "").splitlines() if line.strip().startswith("File ")]
    return f"raised at {frames[-1]}" if frames else None
