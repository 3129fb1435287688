"""Sending tasks: the one path every sender takes.

``host send``, ``host send --many`` (:mod:`core.bulk`) and the plugin
toolkit (``plugins.send_task``, ``plugins.send_many``) all send through here,
so each gets the same three things:

* a queue given by name is the queue as plugins and ``-Q`` call it:
  ``host.site_id``'s prefix is added (:func:`core.settings.queue_name`, the
  rule the settings use too);
* arguments larger than ``host.max_message_bytes`` are refused before
  anything is sent, and arguments that do not serialise are a
  :class:`~core.errors.UsageError`; so are arguments that do not fit the
  task's signature, when the task is registered in the sending process
  (``host send`` imports every extension's tasks; nothing is imported for it);
* a broker that does not answer is a :class:`~core.errors.ServiceUnavailable`
  naming it, password masked;
* with ``host.task_mode = eager`` (Celery's ``task_always_eager``) the task
  runs here, in this process, and the caller gets its ``EagerResult``: the
  same API as an ``AsyncResult`` (``id``, ``state``, ``get()``), its result
  stored as a worker's would be when a result store is configured. (Celery's
  own ``send_task`` ignores eager mode: it warns ``AlwaysEagerIgnored`` and
  sends to the broker anyway.) With ``host.fallback = eager`` a task runs here
  when the broker cannot be reached (:mod:`core.availability`).

The result store is never contacted to send (core/result_store.py).
"""

from __future__ import annotations

import inspect
import json
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from core import availability
from core.errors import ConfigError, ExtensionError, ServiceUnavailable, UsageError
from core.errors_text import did_you_mean
from core.masking import mask_text, mask_url
from core.settings import queue_name

BROKER_HINT = "start the broker, or check celery.broker_url ('host config show' prints it)"
PLAIN_DATA = "pass plain data: strings, numbers, booleans, null, lists and objects"


def send(
    app: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], *, wait: bool = True, **options: Any
) -> Any:
    """Send one task by name and return its ``AsyncResult``; or run it here (``EagerResult``).

    It runs here, in this process, with ``host.task_mode = eager``, and with
    ``host.fallback = eager`` when the broker cannot be reached (see
    :func:`inline_now`).

    :param options: ``apply_async`` options (``task_id``, ``eta``, ``queue``...);
        ``None`` values are left out. A task run here starts at once: a
        ``countdown`` or ``eta`` is not waited for.
    :param wait: whether the caller may wait for the result; without it an
        ``rpc://`` result store is not asked to listen for a reply.
    """
    from kombu.exceptions import EncodeError, OperationalError

    check_size(app, name, args, kwargs)
    check_arguments(app, name, args, kwargs)
    options = routed(app, {key: value for key, value in options.items() if value is not None})
    if inline_now(app):
        return run_inline(app, name, args, kwargs, **options)
    with replies(expected=wait):
        try:
            return app.send_task(name, args=list(args), kwargs=dict(kwargs), **options)
        except EncodeError as e:
            raise UsageError(f"the arguments of {name} {not_serialisable(app, e)}", hint=PLAIN_DATA) from e
        except OperationalError as e:
            if not falls_back(app):
                raise broker_unavailable(app, "the task was not sent", e) from e
            availability.send_failed(app, e)
        except Exception as e:
            if refused_login(e):  # the broker answered: no fallback hides a wrong password
                raise login_refused(app, e) from e
            raise
    return run_inline(app, name, args, kwargs, **options)


# -- running here: eager mode, and the fallback ---------------------------------------


def eager_mode(app: Any) -> bool:
    """``host.task_mode = eager`` (or ``celery.task_always_eager``): every task runs where it is sent."""
    return bool(app.conf.task_always_eager)


def falls_back(app: Any) -> bool:
    """``host.fallback = eager``: a task runs here when the broker cannot be reached."""
    config = getattr(app, "host_config", None)
    return config is not None and config.host.get("fallback") == "eager"


def inline_now(app: Any) -> bool:
    """Whether the next task runs here: eager mode, or the fallback with the broker down.

    Only with ``host.fallback = eager`` is the broker checked first (an answer
    kept a few seconds, :func:`core.availability.check_broker`); the default
    send path checks nothing and costs what it did.
    """
    return eager_mode(app) or (falls_back(app) and not availability.fallback_check(app))


def run_inline(app: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], **options: Any) -> Any:
    """Run task ``name`` in this process, as a worker would; its ``EagerResult``.

    The arguments go through the task serializer and back, so the task gets
    what a worker would (JSON has lists, not tuples), and arguments a worker
    could not be sent are the same :class:`~core.errors.UsageError`. With a
    result store the result is stored (``task_store_eager_result``, set by
    :mod:`core.settings`), for ``host result`` to read later.
    """
    task = inline_task(app, name)
    return apply_here(app, task, *as_a_worker_gets_them(app, name, args, kwargs), options)


def apply_here(
    app: Any, task: Any, args: list[Any], kwargs: dict[str, Any], options: Mapping[str, Any]
) -> Any:
    """``task.apply``: the task runs now, in this thread; counted when the fallback ran it."""
    if not eager_mode(app):
        availability.ran_inline(app)
    task.backend  # noqa: B018 -- the result store opened first: the task's run time is its own
    return task.apply(args=args, kwargs=kwargs, **options)


def as_a_worker_gets_them(
    app: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """``args`` and ``kwargs`` serialised as a message would carry them, and read back."""
    from kombu.exceptions import EncodeError
    from kombu.serialization import dumps, loads

    try:
        content_type, encoding, body = dumps([list(args), dict(kwargs)], serializer=app.conf.task_serializer)
    except EncodeError as e:
        raise UsageError(f"the arguments of {name} {not_serialisable(app, e)}", hint=PLAIN_DATA) from e
    read_args, read_kwargs = loads(body, content_type, encoding, accept=[content_type])
    return list(read_args), dict(read_kwargs)


#: Apps whose task modules this process imported to run tasks here -> the extensions that failed.
_discovered: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()
_discovering = threading.Lock()


def inline_task(app: Any, name: str) -> Any:
    """The task ``name``, its module imported; an unknown name is the error ``host send`` gives.

    A process that only sends (a web application) has not imported the task
    modules: the first task run here imports them as a worker does (discovery:
    the ``host.celery_task`` entry points and the plugins' ``host_task_imports``).
    Never on the normal send path.
    """
    from core.discovery import check_task_name, discover

    if name not in app.tasks and getattr(app, "host_config", None) is not None:
        with _discovering:
            if app not in _discovered:
                found = discover(app, app.host_config, plugin_manager=app.host_plugins)
                _discovered[app] = [e.distribution for e in found.errors if isinstance(e, ExtensionError)]
    if name not in app.tasks:
        known = [task for task in app.tasks if not task.startswith("celery.")]
        check_task_name(name, known, broken=_discovered.get(app, []))
    return app.tasks[name]


def routed(app: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with a ``queue`` given by name turned into the site's queue."""
    config = getattr(app, "host_config", None)
    if config is not None and isinstance(options.get("queue"), str):
        options["queue"] = queue_name(config, options["queue"])
    return options


@contextmanager
def replies(expected: bool) -> Iterator[None]:
    """Whether the result store should get ready for replies while sending.

    Celery skips that set-up where joining would block (in pool processes);
    this is Celery's own switch for it.
    """
    from celery import _state

    previous = _state.task_join_will_block()
    _state._set_task_join_will_block(previous or not expected)
    try:
        yield
    finally:
        _state._set_task_join_will_block(previous)


def broker_unavailable(
    app: Any, what: str, error: BaseException, hint: str = BROKER_HINT
) -> ServiceUnavailable:
    """``what``: the broker at URL (password masked) does not answer."""
    return ServiceUnavailable(
        f"{what}: the broker at {mask_url(str(app.conf.broker_url))} does not answer ({error})", hint=hint
    )


def refused_login(error: BaseException) -> bool:
    """The broker refused the user or password (py-amqp's ACCESS_REFUSED, Redis' AUTH errors)."""
    names = {type(e).__name__ for e in (error, error.__cause__, error.__context__) if e is not None}
    return bool(names & {"AccessRefused", "AuthenticationError", "AuthenticationWrongNumberOfArgsError"})


def login_refused(app: Any, error: BaseException) -> ConfigError:
    """The broker answered, and refused the user or password of ``celery.broker_url`` (exit 2)."""
    config = getattr(app, "host_config", None)
    return ConfigError(
        f"the broker at {mask_url(str(app.conf.broker_url))} refused the login "
        f"({type(error).__name__}: {mask_text(' '.join(str(error).split()))})",
        path=str(config.path) if config else None,
        key="celery.broker_url",
        hint="check the user and password in celery.broker_url (or CELERY_BROKER_URL in the environment)",
    )


def not_serialisable(app: Any, error: BaseException) -> str:
    return f"cannot be serialised as {app.conf.task_serializer}: {error}"


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


def check_arguments(
    app: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], what: str = ""
) -> None:
    """Arguments that do not fit the task's signature are refused before they are sent.

    Only when the task is registered in this process: ``host send`` has imported
    every extension's tasks, and a web application has those it imported, once
    its app is finalized (Celery registers decorated tasks then; sending by name
    never finalizes it). Nothing is imported for the check, which costs a few
    microseconds (a task's signature is read once). What is checked is what
    Celery's ``apply_async`` checks (``Task.__header__``): a task whose
    ``typing`` is False (Celery's own switch for this check) and a class-based
    task (Celery builds no header for it) are not checked.
    A worker would fail the task with a TypeError instead, after the fact.

    :param what: what the arguments are, to start the message (``item 3: ``).
    """
    signature = task_signature(app, name)
    if signature is not None:
        _bind(signature, app, name, args, kwargs, what)


class ArgumentCheck:
    """:func:`check_arguments` for many calls of one task (``send_many``).

    Whether arguments fit depends only on their shape (how many positional
    ones, which keywords): each shape is bound once, the rest is a set lookup.
    """

    def __init__(self, app: Any, name: str) -> None:
        self.app, self.name = app, name
        self.signature = task_signature(app, name)
        self.fits: set[tuple[int, tuple[str, ...]]] = set()

    def __call__(self, args: Sequence[Any], kwargs: Mapping[str, Any], what: str = "") -> None:
        if self.signature is None:
            return
        shape = (len(args), tuple(kwargs))
        if shape not in self.fits:
            _bind(self.signature, self.app, self.name, args, kwargs, what)
            self.fits.add(shape)


def _bind(
    signature: inspect.Signature,
    app: Any,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    what: str,
) -> None:
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        params = signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = [key for key in kwargs if key not in params and not takes_any]
        close = did_you_mean(unknown[0], [n for n in params if n not in kwargs]) if unknown else None
        raise UsageError(
            f"{what}task {name}{signature} was given {_given(args, kwargs)}: {e}"
            + (f"; {unknown[0]!r} is not one of its arguments" if unknown else ""),
            hint=(f"{close} Send" if close else "send") + f" the arguments it takes{_defined_at(app, name)}",
        ) from e


def task_signature(app: Any, name: str) -> inspect.Signature | None:
    """The signature of task ``name``'s ``run`` (``self`` left out of a bound task), if it is
    registered here and can be read; None otherwise."""
    # The registry itself, as Celery's send_task reads it: app.tasks would
    # finalize the app merely to look.
    task = app._tasks.get(name)
    # Only what Celery's apply_async checks itself: a task with typing, built from a function
    # (@app.task gives it __header__; a Task subclass has none and is never checked).
    if task is None or not getattr(task, "typing", True) or not hasattr(task, "__header__"):
        return None
    try:
        return _signatures[task]
    except (KeyError, TypeError):
        pass
    try:
        # The signature Celery's head_from_fun reads: getfullargspec, which does not follow
        # __wrapped__; a functools.wraps decorator that supplies an argument takes fewer.
        signature: inspect.Signature | None = inspect.signature(task.run, follow_wrapped=False)
    except (TypeError, ValueError):  # a run that is not a Python function
        signature = None
    with suppress(TypeError):  # a task that cannot be weakly referenced: read each time
        _signatures[task] = signature
    return signature


#: Each task's signature, read once: reading it costs 15 us, binding 3 us.
_signatures: weakref.WeakKeyDictionary[Any, inspect.Signature | None] = weakref.WeakKeyDictionary()


def _given(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """``2 positional arguments and the keyword argument x``."""
    parts = []
    if args:
        parts.append(f"{len(args)} positional argument{'s' if len(args) != 1 else ''}")
    if kwargs:
        names = ", ".join(kwargs)
        parts.append(f"the keyword argument{'s' if len(kwargs) != 1 else ''} {names}")
    return " and ".join(parts) or "no arguments"


def _defined_at(app: Any, name: str) -> str:
    code = getattr(inspect.unwrap(app._tasks[name].run), "__code__", None)
    return f" ({name} is defined at {code.co_filename}, line {code.co_firstlineno})" if code else ""
