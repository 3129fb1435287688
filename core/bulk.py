"""Sending many tasks at once: one connection, one producer, confirms in flight together.

:func:`send_many` sends one task message per item through Celery's own
``send_task``, so every message is exactly what ``send_task`` produces (the
same headers, body, routing and queue declaration). What it saves is what a
loop of ``apply_async`` repeats for each message:

* a producer taken from the pool and given back;
* the result store's per-task set-up (a Redis store subscribes to each
  result; the worker stores the result all the same, for ``AsyncResult``
  and ``host result`` to read);
* with RabbitMQ publisher confirms (``confirm_publish``), a wait for the
  broker's confirmation after every message: here the messages of a batch
  are published back to back on a channel of their own, and the batch's
  confirmations are awaited together.

A message counts as sent once the broker confirmed it. When the connection
drops, the connection is re-established as ``celery.task_publish_retry_policy``
says and every message of the batch not yet confirmed is published again, so
none is lost; one the broker had already taken may then arrive twice, as
with any at-least-once delivery.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from kombu.exceptions import OperationalError

from core import availability
from core.errors import ServiceUnavailable, UsageError
from core.sending import (
    PLAIN_DATA,
    ArgumentCheck,
    apply_here,
    as_a_worker_gets_them,
    broker_unavailable,
    check_size,
    falls_back,
    inline_now,
    inline_task,
    not_serialisable,
    replies,
    routed,
)

#: Messages published before their confirmations are awaited together.
BATCH = 1000
#: How long the broker may take to confirm a batch.
CONFIRM_TIMEOUT = 30.0


class BulkSendError(UsageError):
    """An item could not be sent; ``sent`` holds the ids of the items before it, all sent."""

    def __init__(self, message: str, *, sent: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.sent = sent


def item_call(item: Any, position: int) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """``args``, ``kwargs`` and options of one item.

    An item is a list of positional arguments, or a mapping with ``args``,
    ``kwargs`` and optionally ``task_id``, ``countdown`` (seconds) or
    ``queue``.
    """
    if isinstance(item, (list, tuple)):
        return list(item), {}, {}
    if not isinstance(item, Mapping):
        raise UsageError(
            f"item {position}: {type(item).__name__} {_short(item)} is not a list of arguments or an object",
            hint=ITEM_HINT,
        )
    unknown = sorted(set(item) - set(ITEM_KEYS))
    if unknown:
        raise UsageError(
            f"item {position}: the key {unknown[0]!r} is not one of {', '.join(ITEM_KEYS)}",
            hint=ITEM_HINT,
        )
    args, kwargs = item.get("args", []), item.get("kwargs", {})
    for key, value in item.items():
        if not ITEM_KEYS[key](value):
            raise UsageError(
                f"item {position}: {key} is {_short(value)}, not {ITEM_TYPES[key]}", hint=ITEM_HINT
            )
    options = {k: v for k, v in item.items() if k not in ("args", "kwargs")}
    return list(args), dict(kwargs), options


ITEM_HINT = 'write each item as [arg, ...] or {"args": [...], "kwargs": {...}}'
#: The keys an item may have, and the check of each value.
ITEM_KEYS: dict[str, Callable[[Any], bool]] = {
    "args": lambda v: isinstance(v, (list, tuple)),
    "kwargs": lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v),
    "task_id": lambda v: isinstance(v, str) and bool(v),
    "countdown": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf"),
    "queue": lambda v: isinstance(v, str) and bool(v),
}
ITEM_TYPES = {
    "args": "a list",
    "kwargs": "an object",
    "task_id": "a non-empty string",
    "countdown": "a number of seconds (0 or more)",
    "queue": "a queue name",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def send_many(app: Any, name: str, items: Iterable[Any], **options: Any) -> list[str]:
    """Send task ``name`` once per item; return the task ids, in the order of the items.

    ``options`` apply to every message (``queue``, ``countdown``...); an
    item's own options override them. Items are read lazily, a batch at a
    time, so a generator of millions is fine.

    :raises BulkSendError: for an item that is not valid or cannot be
        serialised; the items before it were sent (their ids: ``error.sent``).
    :raises ServiceUnavailable: when the broker cannot be reached within the
        publish retry policy; ``error.sent`` holds the ids confirmed so far.

    With ``host.task_mode = eager`` every item runs here, in turn
    (:func:`run_many_inline`); so it does with ``host.fallback = eager`` when
    the broker cannot be reached before the first message is sent. (A broker
    lost after that is the ServiceUnavailable above: a message it had taken
    may still run, and running it here too would run it twice.)
    """
    if inline_now(app):
        return run_many_inline(app, name, items, **options)
    policy = {**DEFAULT_POLICY, **(app.conf.task_publish_retry_policy or {})}
    with replies(expected=False), app.connection_for_write() as connection:
        try:
            _connect(connection, policy, app)
        except ServiceUnavailable as e:
            if not falls_back(app):
                raise
            availability.send_failed(app, e.__cause__ or e)
        else:
            return _send_batches(app, connection, policy, name, items, options)
    return run_many_inline(app, name, items, **options)


def _send_batches(
    app: Any,
    connection: Any,
    policy: Mapping[str, Any],
    name: str,
    items: Iterable[Any],
    options: Mapping[str, Any],
) -> list[str]:
    from kombu.exceptions import EncodeError

    ids: list[str] = []
    publisher = _Publisher(app, connection, policy)
    fits = ArgumentCheck(app, name)
    try:
        position = 0
        for batch, problem in _batches(items, BATCH):
            calls = []
            for item in batch:
                try:
                    args, kwargs, own = item_call(item, position)
                    check_size(app, name, args, kwargs)
                    fits(args, kwargs, f"item {position}: ")
                except UsageError as e:
                    problem = e
                    break
                calls.append((args, kwargs, routed(app, {**options, **own}), position))
                position += 1
            try:
                ids += publisher.send(name, calls)
            except EncodeError as e:
                ids += publisher.sent_ids
                raise BulkSendError(
                    f"item {publisher.failed_at} of {name} {not_serialisable(app, e)}; {_before(ids)}",
                    sent=ids,
                    hint=PLAIN_DATA,
                ) from e
            if problem is not None:
                raise BulkSendError(
                    f"{problem.message}; {_before(ids)}", sent=ids, hint=problem.hint
                ) from problem
    except ServiceUnavailable as e:
        e.sent = ids  # type: ignore[attr-defined]
        raise
    finally:
        publisher.close()
    return ids


def _before(ids: Sequence[str], done: str = "sent") -> str:
    if not ids:
        return f"nothing was {done}"
    return (
        f"the item before it was {done}" if len(ids) == 1 else f"the {len(ids)} items before it were {done}"
    )


def run_many_inline(app: Any, name: str, items: Iterable[Any], **options: Any) -> list[str]:
    """Run task ``name`` here once per item, in order; the ids of their results.

    Each item is checked and serialised as :func:`send_many` does; a bad one
    ends the run with a :class:`BulkSendError` (``error.sent``: the items run).
    """
    task = inline_task(app, name)
    ids: list[str] = []
    fits = ArgumentCheck(app, name)
    position = 0
    for batch, problem in _batches(items, BATCH):
        for item in batch:
            try:
                args, kwargs, own = item_call(item, position)
                check_size(app, name, args, kwargs)
                fits(args, kwargs, f"item {position}: ")
                args, kwargs = as_a_worker_gets_them(app, f"item {position} of {name}", args, kwargs)
            except UsageError as e:
                problem = e
                break
            ids.append(apply_here(app, task, args, kwargs, routed(app, {**options, **own})).id)
            position += 1
        if problem is not None:
            raise BulkSendError(
                f"{problem.message}; {_before(ids, 'run')}", sent=ids, hint=problem.hint
            ) from problem
    return ids


DEFAULT_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def _batches(items: Iterable[Any], size: int) -> Iterator[tuple[list[Any], UsageError | None]]:
    """Batches of ``size`` items; a bad item read from the source ends the last batch early."""
    iterator = iter(items)
    while True:
        batch: list[Any] = []
        try:
            batch.extend(itertools.islice(iterator, size))
        except UsageError as e:  # read_jsonl found a bad line: what came before it is sent
            yield batch, e
            return
        if not batch:
            return
        yield batch, None


def _connect(connection: Any, policy: Mapping[str, Any], app: Any) -> None:
    try:
        connection.ensure_connection(
            max_retries=policy.get("max_retries") or 1,
            interval_start=policy.get("interval_start", 0),
            interval_step=policy.get("interval_step", 0.2),
            interval_max=policy.get("interval_max", 0.2),
        )
    except (OperationalError, *connection.connection_errors) as e:  # kombu re-raises as OperationalError
        raise broker_unavailable(app, "the tasks were not sent", e) from e


class _Publisher:
    """Publishes batches on one connection; with confirms, a batch's confirmations together."""

    def __init__(self, app: Any, connection: Any, policy: Mapping[str, Any]) -> None:
        self.app, self.connection, self.policy = app, connection, policy
        # py-amqp (RabbitMQ): frames written together, and confirms awaited per batch.
        self.amqp = getattr(connection.transport, "driver_type", "") == "amqp"
        # What is retried: connection losses (kombu re-raises them as OperationalError
        # within send_task), a channel closed by the broker, a nack, no confirmation.
        self.retryable: tuple[type[BaseException], ...] = (
            OperationalError,
            TimeoutError,
            _Nacked,
            *connection.connection_errors,
            *connection.channel_errors,
        )
        self.confirms = self.amqp and bool((connection.transport_options or {}).get("confirm_publish"))
        self.channel: Any = None
        self.producer: Any = None
        #: Publish calls of the current batch not yet confirmed: delivery tag -> (args, kwargs).
        self.pending: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self.tag = 0
        self.nacked = False
        self.declared = False
        self.writes: _Coalesced | None = None
        self.sent_ids: list[str] = []
        self.failed_at = 0

    # -- the channel ------------------------------------------------------------------

    def _open(self) -> None:
        self.channel = self.connection.channel()
        self.tag = 0
        self.declared = False
        if self.amqp:
            self.writes = _Coalesced(self.connection.connection.transport)
            self.channel.basic_publish = self._publish  # publish now, confirm later
        if self.confirms:
            self.channel.confirm_select()
            self.channel._confirm_selected = True
            self.channel.events["basic_ack"].add(self._on_ack)
            self.channel.events["basic_nack"].add(self._on_nack)
        self.producer = self.app.amqp.Producer(self.channel, auto_declare=False)

    def close(self) -> None:
        if self.channel is not None:
            with contextlib.suppress(Exception):  # closing a dead channel: nothing left to do
                self.flush()
                self.channel.close()
            self.channel = None

    def flush(self) -> None:
        if self.writes is not None:
            self.writes.flush()

    def _publish(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("confirm_timeout", None)
        if self.confirms:
            self.tag += 1
            self.pending[self.tag] = (args, kwargs)
        assert self.writes is not None
        with self.writes.coalescing():
            return self.channel._basic_publish(*args, **kwargs)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if not multiple:
            self.pending.pop(tag, None)
            return
        while self.pending and next(iter(self.pending)) <= tag:  # tags ascend in insertion order
            self.pending.pop(next(iter(self.pending)))

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self.nacked = True  # left pending, and so published again

    # -- a batch ------------------------------------------------------------------------

    def send(
        self, name: str, calls: Sequence[tuple[list[Any], dict[str, Any], dict[str, Any], int]]
    ) -> list[str]:
        """Send one batch; return its task ids once every message is confirmed."""
        from kombu.exceptions import EncodeError

        self.sent_ids = []
        failures = 0
        index = 0
        while True:
            try:
                if self.channel is None:
                    self._open()
                while index < len(calls):
                    args, kwargs, options, position = calls[index]
                    self.failed_at = position
                    # An id of our own, so that a message published again keeps it.
                    options.setdefault("task_id", str(uuid.uuid4()))
                    before = self.tag
                    # The queue is declared with the first message on this channel, as
                    # send_task does; kombu would only find it declared for the others.
                    declare: dict[str, Any] = (
                        {"declare": []} if self.declared and "queue" not in options else {}
                    )
                    try:
                        self.app.send_task(
                            name,
                            args=args,
                            kwargs=kwargs,
                            producer=self.producer,
                            add_to_parent=False,
                            retry=False,  # retried here, the whole unconfirmed batch at once
                            **options,
                            **declare,
                        )
                    except EncodeError:
                        self._await_confirms()  # what was sent before it is confirmed first
                        raise
                    except self.retryable:
                        if self.tag > before:  # it went out, unconfirmed: published again on recovery
                            index += 1
                            self.sent_ids.append(options["task_id"])
                        raise
                    index += 1
                    self.declared = True
                    self.sent_ids.append(options["task_id"])
                self._await_confirms()
                return self.sent_ids
            except self.retryable as e:
                failures += 1
                if failures > int(self.policy.get("max_retries") or 0):
                    raise broker_unavailable(
                        self.app,
                        f"{len(self.pending) or 'some'} tasks were not confirmed",
                        e,
                        hint="start the broker, or check celery.broker_url; earlier batches were confirmed",
                    ) from e
                time.sleep(self._interval(failures))
                self._recover()

    def _interval(self, failures: int) -> float:
        start = float(self.policy.get("interval_start") or 0)
        step = float(self.policy.get("interval_step") or 0)
        return min(start + step * (failures - 1), float(self.policy.get("interval_max") or 1))

    def _await_confirms(self) -> None:
        self.flush()
        if not self.confirms:
            return
        self.nacked = False
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while self.pending and not self.nacked:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the broker confirmed none of the last {len(self.pending)} messages")
            self.connection.drain_events(timeout=remaining)
        if self.nacked:
            raise _Nacked("the broker refused (nacked) a message")

    def _recover(self) -> None:
        """A new connection and channel; every unconfirmed message published again."""
        unconfirmed = [self.pending[t] for t in sorted(self.pending)]
        self.pending.clear()
        self.close()
        self.connection.close()
        _connect(self.connection, self.policy, self.app)
        self._open()
        for args, kwargs in unconfirmed:
            self._publish(*args, **kwargs)


class _Nacked(Exception):
    """The broker refused a message (basic.nack): it is published again."""


class _Coalesced:
    """The publish frames of a batch written to the socket together, not one system call each.

    py-amqp writes every frame with its own ``sendall``. While a publish is
    being framed, its writes are collected; they go out when enough have
    gathered, before any other write (so frames keep their order), and before
    the confirmations are awaited.
    """

    LIMIT = 256 * 1024

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.direct = transport._write
        self.buffer: list[bytes] = []
        self.size = 0
        self.collecting = False
        transport._write = self.write

    @contextlib.contextmanager
    def coalescing(self) -> Iterator[None]:
        self.collecting = True
        try:
            yield
        finally:
            self.collecting = False
        if self.size >= self.LIMIT:
            self.flush()

    def write(self, data: bytes) -> None:
        if self.collecting:
            self.buffer.append(bytes(data))  # py-amqp reuses the memory it hands over
            self.size += len(data)
            return
        self.flush()
        self.direct(data)

    def flush(self) -> None:
        if self.buffer:
            data = b"".join(self.buffer)
            self.buffer.clear()
            self.size = 0
            self.direct(data)
