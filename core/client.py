"""Sending tasks by name and reading their results, as ``host send`` and ``host result`` do."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.errors import ConfigError, HostError, ResultTimeout, ServiceUnavailable, TaskFailed, UsageError
from core.masking import mask_url

#: How often a waiting client asks the result store; the embedded store starts
#: faster than this and backs off to it.
POLL_INTERVAL = 0.05

#: The deepest nesting of lists and objects accepted in an argument. Task
#: arguments are data, not trees hundreds of levels deep; a prefork worker
#: pickles them for its pool, and deep enough nesting breaks that pickling.
MAX_NESTING = 64


def parse_json_args(values: Sequence[str]) -> list[Any]:
    """Each command-line ARG is one JSON value: ``'"Hello"'`` is a string, ``3`` a number."""
    return [
        _json_value(
            text,
            f"argument {position} ({_clip(text)})",
            hint=f"quote a string twice, once for the shell and once for JSON: '\"{_shorten(text)}\"'",
        )
        for position, text in enumerate(values, start=1)
    ]


def parse_json_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    hint = "write --kwargs '{\"name\": 1}'"
    kwargs = _json_value(text, f"--kwargs {_clip(text)}", hint=hint)
    if not isinstance(kwargs, dict):
        raise UsageError(f"--kwargs must be a JSON object, got {_clip(text)}", hint=hint)
    return kwargs


def _json_value(text: str, what: str, hint: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{what} is not a JSON value: {e}", hint=hint) from e
    except RecursionError:  # nesting deep enough to exhaust the parser's stack
        value, depth = None, MAX_NESTING + 1
    else:
        depth = nesting(value)
    if depth > MAX_NESTING:
        raise UsageError(
            f"{what} nests lists or objects more than {MAX_NESTING} levels deep",
            hint="pass flatter data, or a reference to it (a file name, a database id)",
        )
    return value


def nesting(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (a scalar is 0); not recursive."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_NESTING:
                return deepest
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _clip(text: str) -> str:
    """A user's argument, quoted and shortened for an error message."""
    return repr(_shorten(text))


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


def check_size(app: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Arguments larger than ``host.max_message_bytes`` are refused before they are sent.

    Workers reject such a message (core/consumer.py); refusing it here tells the
    sender at once. Measured as the JSON the message body will hold.
    """
    config = getattr(app, "host_config", None)
    limit = config.host.get("max_message_bytes", 0) if config is not None else 0
    if not limit or app.conf.task_serializer != "json":
        return
    try:
        size = len(json.dumps([list(args), dict(kwargs), {}]).encode("utf-8"))
    except (TypeError, ValueError):
        return  # not JSON at all: send() reports that with its own message
    if size > limit:
        raise UsageError(
            f"the arguments of {name} are {size} bytes, more than host.max_message_bytes = {limit}; "
            "workers would reject the message",
            hint="pass large data by reference (a path, a URL, a database id) instead of in the arguments",
        )


def send(
    app: Any, name: str, args: list[Any], kwargs: dict[str, Any], *, wait: bool = True, **options: Any
) -> Any:
    """Send one task by name; ``options`` are ``apply_async`` options (task_id, eta, queue...).

    With ``wait=False`` the result store is not told to expect a reply (an
    ``rpc://`` store would start listening for it). The worker stores the
    result all the same, for ``host result`` to read. A store that keeps
    results never delays a send (core/result_store.py).
    """
    from celery import _state
    from kombu.exceptions import EncodeError, OperationalError

    check_size(app, name, args, kwargs)
    options = {key: value for key, value in options.items() if value is not None}
    # Celery skips the reply set-up in processes where joining would block
    # (pool processes); this is Celery's own switch for it.
    previous = _state.task_join_will_block()
    _state._set_task_join_will_block(previous or not wait)
    try:
        return app.send_task(name, args=args, kwargs=kwargs, **options)
    except EncodeError as e:
        raise UsageError(
            f"the arguments of {name} cannot be serialised as {app.conf.task_serializer}: {e}",
            hint="pass plain data: strings, numbers, booleans, null, lists and objects",
        ) from e
    except OperationalError as e:
        raise ServiceUnavailable(
            f"the task was not sent: the broker at {mask_url(str(app.conf.broker_url))} "
            f"does not answer ({e})",
            hint="start the broker, or check celery.broker_url ('host config show' prints it)",
        ) from e
    finally:
        _state._set_task_join_will_block(previous)


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
