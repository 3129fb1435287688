"""Sending tasks: the one path every sender takes.

``host send``, ``host send --many`` (:mod:`core.bulk`) and the plugin
toolkit (``plugins.send_task``, ``plugins.send_many``) all send through here,
so each gets the same three things:

* a queue given by name is the queue as plugins and ``-Q`` call it:
  ``host.site_id``'s prefix is added (:func:`core.settings.queue_name`, the
  rule the settings use too);
* arguments larger than ``host.max_message_bytes`` are refused before
  anything is sent, and arguments that do not serialise are a
  :class:`~core.errors.UsageError`;
* a broker that does not answer is a :class:`~core.errors.ServiceUnavailable`
  naming it, password masked.

The result store is never contacted to send (core/result_store.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from core.errors import ServiceUnavailable, UsageError
from core.masking import mask_url
from core.settings import queue_name

BROKER_HINT = "start the broker, or check celery.broker_url ('host config show' prints it)"
PLAIN_DATA = "pass plain data: strings, numbers, booleans, null, lists and objects"


def send(
    app: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], *, wait: bool = True, **options: Any
) -> Any:
    """Send one task by name and return its ``AsyncResult``.

    :param options: ``apply_async`` options (``task_id``, ``eta``, ``queue``...);
        ``None`` values are left out.
    :param wait: whether the caller may wait for the result; without it an
        ``rpc://`` result store is not asked to listen for a reply.
    """
    from kombu.exceptions import EncodeError, OperationalError

    check_size(app, name, args, kwargs)
    options = routed(app, {key: value for key, value in options.items() if value is not None})
    with replies(expected=wait):
        try:
            return app.send_task(name, args=list(args), kwargs=dict(kwargs), **options)
        except EncodeError as e:
            raise UsageError(f"the arguments of {name} {not_serialisable(app, e)}", hint=PLAIN_DATA) from e
        except OperationalError as e:
            raise broker_unavailable(app, "the task was not sent", e) from e


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
