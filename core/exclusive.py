"""Exclusive tasks: a task that never runs twice at once for the same lock id.

::

    from core.celery_app import celery
    from plugins import exclusive_task

    @celery.task(name="example.reindex")
    @exclusive_task(lock_id="dataset-{dataset_id}")
    def reindex(dataset_id):
        ...

Each run takes the lock ``lock_id`` (a :meth:`str.format` template over the
task's arguments, by name) from the lock store (:mod:`core.locks`), with a
token of its own and the task id as holder. A second call while the lock is
held does not run: its result is SUCCESS with :func:`already_running`'s value
naming the holder's task id, logged at INFO (``on_locked="retry"`` retries it
later instead). The lock is released, by compare-and-delete, when the task
ends, whatever way it ends.

While the task runs, a thread renews the lock every third of its expiry.
**Fail closed**: a task must never go on unguarded, so when the lock is lost
(another holder may exist now) or cannot be renewed before it would expire
(the store does not answer), the attempt is ended:

* in a worker whose task runs in its process's main thread (the prefork
  pool's child, the default; under ``-P solo`` that is the worker itself),
  and not eagerly or called directly, that process is sent SIGKILL
  a sixth of the expiry before the lock could expire. The worker's pool sees
  its child lost; with ``task_acks_late`` and ``task_reject_on_worker_lost``
  (``development.ini``, ``production.ini``) the message is delivered again
  and the task runs once the lock can be taken; without them it fails with
  ``WorkerLostError``. SIGKILL, not SIGTERM: no handler the task installed
  can delay it, and it is what Celery's own hard time limit sends.
* anywhere else (a thread pool, an eager call, a call outside a worker), the task's thread
  gets :class:`LockLost` raised in it asynchronously: Python checks for it
  between bytecodes, so a task blocked in C code is interrupted only when it
  returns to Python. This case is best effort; run exclusive tasks in the
  prefork pool.

When the store cannot be reached to take the lock, the task does not run: it
is retried in ``countdown`` seconds (``on_unavailable="retry"``, up to the
task's ``max_retries``) or fails at once with :class:`LockStoreUnavailable`
(``on_unavailable="fail"``). A killed holder (SIGKILL, a hard time limit)
releases nothing; its lock expires ``expires`` seconds after its last renewal.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import logging
import os
import signal
import string
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from celery import signals

from core.locks import LockStore, LockStoreUnavailable, default_expires, lease_clock, lock_store

if TYPE_CHECKING:
    from celery import Task

logger = logging.getLogger("host.exclusive")

#: What a skipped call's result says, as seed 001's ``exclusive_task`` did.
ALREADY_RUNNING = "already running"
#: Marks a function :func:`exclusive_task` wrapped; its value is the lock-id template.
MARK = "__host_exclusive__"
#: How often a renewal that failed because the store did not answer is tried again, at most.
RETRY_RENEWAL = 1.0

F = TypeVar("F", bound=Callable[..., Any])


class LockLost(RuntimeError):
    """Raised in an exclusive task's thread when it lost its lock (outside a process of its own)."""


class LockTemplateError(ValueError):
    """The ``lock_id`` template names something that is not an argument of the task."""


def already_running(task_name: str, lock_id: str, holder: str | None) -> dict[str, Any]:
    """The result of a call skipped because the lock is held.

    ``message`` is seed 001's value, ``"<task name> already running!"``.
    """
    return {
        "status": ALREADY_RUNNING,
        "message": f"{task_name} already running!",
        "lock_id": lock_id,
        "holder": holder,
    }


def exclusive_task(
    lock_id: str | None = None,
    *,
    expires: float | None = None,
    on_locked: Literal["skip", "retry"] = "skip",
    on_unavailable: Literal["retry", "fail"] = "retry",
    countdown: float = 10.0,
    task_name: str | None = None,
) -> Callable[[F], F]:
    """Make a task exclusive: at most one run at a time per lock id.

    Put it under ``@celery.task(...)``, or on the ``run`` method of a
    class-based task (seed 001's form, ``task_name=`` included).

    :param lock_id: the lock's id, a :meth:`str.format` template over the
        task's arguments by name (``"dataset-{dataset_id}"``); default: the task's name.
    :param expires: seconds a lock lives without renewal (default ``host.locks.expires``, 60).
    :param on_locked: ``"skip"``: a call finding the lock held succeeds at once
        with :func:`already_running`; ``"retry"``: it is retried in ``countdown`` seconds.
    :param on_unavailable: when the lock store does not answer: ``"retry"`` in
        ``countdown`` seconds (the task's ``max_retries`` apply), or ``"fail"`` now.
    :param task_name: the name a skipped call's message gives (default: the task's name).
    :raises LockTemplateError: when the template names no argument of the function.
    """
    if on_locked not in ("skip", "retry"):
        raise ValueError(f"on_locked={on_locked!r}: use 'skip' or 'retry'")
    if on_unavailable not in ("retry", "fail"):
        raise ValueError(f"on_unavailable={on_unavailable!r}: use 'retry' or 'fail'")
    if expires is not None and expires < 1:
        raise ValueError(f"expires={expires!r}: a lock must live at least 1 s")

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        if lock_id is not None:
            check_template(lock_id, signature, func)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            from celery import current_task

            task = current_task._get_current_object()
            if task is None:  # not run as a task at all: nothing to guard with
                raise RuntimeError(f"{func.__qualname__} is an exclusive task: call it as a Celery task")
            the_id = task.name if lock_id is None else format_lock_id(lock_id, signature, args, kwargs)
            guard = Guard(task, the_id, expires, on_locked, on_unavailable, countdown, task_name)
            return guard.run(lambda: func(*args, **kwargs))

        setattr(run, MARK, lock_id or "")
        return run  # type: ignore[return-value]

    return decorate


def check_template(template: str, signature: inspect.Signature, func: Callable[..., Any]) -> None:
    """Every name the template uses is a parameter of ``func`` (or ``func`` takes ``**kwargs``)."""
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as e:
        raise LockTemplateError(f"lock_id {template!r} of {func.__qualname__} is not a template: {e}") from e
    for field in fields:
        name = field.split(".")[0].split("[")[0]
        if name == "" or name.isdigit():
            raise LockTemplateError(
                f"lock_id {template!r} of {func.__qualname__}: name the argument ({{dataset_id}}), "
                "positions are not allowed"
            )
        if name not in signature.parameters and not takes_any:
            known = ", ".join(signature.parameters) or "none"
            raise LockTemplateError(
                f"lock_id {template!r} of {func.__qualname__} uses {{{name}}}, which is not one of "
                f"its arguments ({known})"
            )


def format_lock_id(template: str, signature: inspect.Signature, args: Any, kwargs: Any) -> str:
    """The lock id of one call: the template filled with the call's arguments, defaults included."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    values = dict(bound.arguments)
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            values.update(values.pop(parameter.name, {}))
    try:
        return template.format_map(values)
    except (KeyError, AttributeError, IndexError) as e:
        raise LockTemplateError(f"lock_id {template!r} cannot be filled from this call: {e!r}") from e


def is_exclusive(task: Task) -> bool:
    """The task's ``run`` was made exclusive by :func:`exclusive_task`."""
    run = getattr(task, "run", None)
    return hasattr(run, MARK) or hasattr(getattr(run, "__func__", None), MARK)


class Guard:
    """One run of an exclusive task: take the lock, run, keep it renewed, release it."""

    def __init__(
        self,
        task: Task,
        lock_id: str,
        expires: float | None,
        on_locked: str,
        on_unavailable: str,
        countdown: float,
        task_name: str | None,
    ) -> None:
        self.task, self.lock_id, self.on_locked = task, lock_id, on_locked
        self.on_unavailable, self.countdown = on_unavailable, countdown
        self.task_name = task_name or task.name
        self.store: LockStore = lock_store(task.app)
        config = task.app.configure_from_environment()
        self.expires = expires if expires is not None else default_expires(config)

    def run(self, call: Callable[[], Any]) -> Any:
        task_id = self.task.request.id
        holder = task_id or f"direct-{uuid.uuid4().hex[:12]}@{os.getpid()}"
        asked = lease_clock()  # the lock's expiry starts after this moment
        try:
            token = self.store.acquire(self.lock_id, holder, self.expires)
        except LockStoreUnavailable as e:
            if self.on_unavailable == "retry" and task_id and not self.task.request.called_directly:
                logger.warning(
                    "%s[%s]: lock %r not taken, the task did not run: %s; retrying in %g s",
                    self.task.name,
                    task_id,
                    self.lock_id,
                    e.message,
                    self.countdown,
                )
                raise self.task.retry(exc=e, countdown=self.countdown) from e
            raise
        if token is None:
            return self._locked(task_id)
        renewer = Renewer(self.store, self.lock_id, token, self.expires, self.task.name, holder, asked)
        request = self.task.request
        renewer.may_end_process = (
            _worker_process
            and renewer.task_thread is threading.main_thread()
            and not request.is_eager
            and not request.called_directly
        )
        renewer.start()
        try:
            return call()
        finally:
            renewer.stop()
            try:
                if not self.store.release(self.lock_id, token):
                    logger.warning(
                        "%s[%s]: lock %r was no longer ours to release", self.task.name, holder, self.lock_id
                    )
            except LockStoreUnavailable as e:
                logger.warning(
                    "%s[%s]: lock %r not released (%s); it expires within %g s",
                    self.task.name,
                    holder,
                    self.lock_id,
                    e.message,
                    self.expires,
                )

    def _locked(self, task_id: str | None) -> Any:
        try:
            current = self.store.holder(self.lock_id)
        except LockStoreUnavailable:
            current = None
        holder = current.holder if current is not None else None
        if holder is not None and holder == task_id and not self.task.request.called_directly:
            # Our own earlier attempt's lock (a retry published before its release, or the
            # redelivery after an attempt ended fail-closed): wait for it, never skip ourselves.
            wait = max(current.expires_in if current is not None else 0.0, 1.0)
            logger.info(
                "%s[%s]: lock %r is still held by this task's earlier attempt: retrying in %g s",
                self.task.name,
                task_id,
                self.lock_id,
                wait,
            )
            raise self.task.retry(countdown=wait)
        if self.on_locked == "retry" and task_id and not self.task.request.called_directly:
            logger.info(
                "%s[%s]: lock %r is held by %s: retrying in %g s",
                self.task.name,
                task_id,
                self.lock_id,
                holder,
                self.countdown,
            )
            raise self.task.retry(countdown=self.countdown)
        logger.info(
            "%s[%s]: lock %r is held by %s: skipped, %s",
            self.task.name,
            task_id,
            self.lock_id,
            holder,
            ALREADY_RUNNING,
        )
        return already_running(self.task_name, self.lock_id, holder)


class Renewer:
    """Keeps a lock renewed while its task runs, and ends the task before the lock could expire unrenewed.

    Two daemon threads: one renews every third of the expiry (and retries a
    failed renewal every second); the other, the watchdog, ends the attempt
    (:func:`fail_closed`) when the lock was lost, or when no renewal has
    succeeded for five sixths of the expiry. The watchdog never waits on the
    store, so a store that hangs cannot delay it.
    """

    def __init__(
        self,
        store: LockStore,
        lock_id: str,
        token: str,
        expires: float,
        task: str,
        holder: str,
        taken_at: float,
    ) -> None:
        self.store, self.lock_id, self.token, self.expires = store, lock_id, token, expires
        self.task, self.holder = task, holder
        #: The thread running the task: the one to interrupt outside a process of its own.
        self.task_thread = threading.current_thread()
        #: The task runs in a worker's task process, in its main thread: fail closed by ending it.
        self.may_end_process = False
        self._stopped = threading.Event()
        self._state = threading.Lock()
        #: When the last successful renewal (or the acquire) was sent: the lock
        #: expires ``expires`` seconds after a moment later than this one.
        self._renewed_at = taken_at
        self._lost: str | None = None
        self._changed = threading.Event()

    @property
    def deadline(self) -> float:
        """When the attempt must end if no renewal succeeds by then."""
        return self._renewed_at + self.expires * 5 / 6

    def start(self) -> None:
        for target, name in ((self._renew, "renewer"), (self._watch, "watchdog")):
            threading.Thread(target=target, name=f"lock-{name}-{self.lock_id}", daemon=True).start()

    def stop(self) -> None:
        with self._state:
            self._stopped.set()
            self._changed.set()

    def _renew(self) -> None:
        interval = self.expires / 3
        wait = interval
        while not self._stopped.wait(wait):
            started = lease_clock()
            try:
                ours = self.store.renew(self.lock_id, self.token, self.expires)
            except LockStoreUnavailable as e:
                logger.warning(
                    "%s[%s]: lock %r not renewed: %s", self.task, self.holder, self.lock_id, e.message
                )
                wait = min(RETRY_RENEWAL, interval)
                continue
            if not ours:
                self._lost = "it was released or taken by another holder"
                self._changed.set()
                return
            self._renewed_at = started
            wait = interval

    def _watch(self) -> None:
        while True:
            left = self.deadline - lease_clock()
            if self._lost is None and left > 0:
                self._changed.wait(min(left, self.expires / 6))
                self._changed.clear()
                if self._stopped.is_set():
                    return
                continue
            with self._state:
                if self._stopped.is_set():
                    return
                reason = self._lost or (
                    f"it could not be renewed for {lease_clock() - self._renewed_at:.1f} s "
                    f"(it expires after {self.expires:g} s)"
                )
                fail_closed(self, reason)
                return


def fail_closed(renewer: Renewer, reason: str) -> None:
    """End the attempt of a task that lost its lock (see the module's documentation)."""
    where = f"{renewer.task}[{renewer.holder}]: lock {renewer.lock_id!r} lost: {reason}"
    if renewer.may_end_process:
        logger.error(
            "%s; ending this process (pid %d) so that the task does not go on unguarded", where, os.getpid()
        )
        for handler in logging.getLogger().handlers + logger.handlers:
            with contextlib.suppress(Exception):  # a log handler must not stop the kill
                handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        return
    logger.error("%s; raising LockLost in the task's thread", where)
    ident = renewer.task_thread.ident
    if ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(LockLost))


#: This process runs a worker's tasks: a prefork pool child, or a ``-P solo`` worker.
_worker_process = False


@signals.worker_process_init.connect(weak=False)
@signals.worker_init.connect(weak=False)
def _mark_worker_process(**kwargs: Any) -> None:
    global _worker_process
    _worker_process = True
