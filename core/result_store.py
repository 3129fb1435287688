"""The result store as the host uses it: an outage costs no task and never blocks sending.

Celery's result backends get two changes, made once, where the app creates its
backend (:meth:`core.celery_app.HostCelery._get_backend`):

Sending does not subscribe to the result.
    Celery's Redis backend subscribes to a task's result channel as the task
    is sent (``on_task_call``). With the store down that subscription raises,
    after some 20 s of reconnecting, and the task is never sent although the
    broker is up. The host skips it, as Celery itself does in processes where
    waiting would block: ``AsyncResult.get()`` subscribes when someone waits,
    and reads the stored result first, so a result that arrived in between is
    not missed. Instead, at most every few seconds a send pings the store
    (a short timeout), and says once, at WARNING, when it stops answering:
    the task is sent, but its result cannot be awaited now; and once, at
    INFO, when it answers again. Backends whose replies are messages
    (``rpc://``) must listen before the task runs and are left alone.

A result that cannot be stored is logged once.
    The worker retries storing it (``celery.result_backend_always_retry``,
    bounded by ``celery.result_backend_max_retries``). When that gives up, the
    task has still run: the host logs one line naming the task and its id, in
    the ini's log format, and goes on, instead of a pool traceback and a
    second, main-process attempt to store a failure that blocks the worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.base import BaseKeyValueStoreBackend

from core.masking import mask_url

logger = logging.getLogger("host.results")


def guard(backend: Any) -> Any:
    """Apply both changes to a newly created backend, and return it."""
    if isinstance(backend, AsyncBackendMixin) and isinstance(backend, BaseKeyValueStoreBackend):
        backend.on_task_call = _Watch(backend)
    store = backend.store_result

    def store_result(task_id: str, result: Any, state: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return store(task_id, result, state, *args, **kwargs)
        except Exception as e:
            if not unreachable(backend, e):
                raise
            _log_lost(backend, task_id, state, kwargs.get("request"), e)
            return result

    backend.store_result = store_result
    return backend


class _Watch:
    """A send's look at the result store, instead of a subscription: a ping every few seconds at most."""

    #: Seconds between two pings, and how long one may take.
    INTERVAL, TIMEOUT = 5.0, 0.25

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.url = mask_url(str(backend.app.conf.result_backend))
        self.checked = -self.INTERVAL
        self.down = False
        self.lock = threading.Lock()
        self.client: Any = None
        self.pid = 0

    def __call__(self, producer: Any, task_id: str) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.checked < self.INTERVAL:
                return
            self.checked = now
        try:
            self._ping()
        except Exception as e:
            if not self.down:
                self.down = True
                logger.warning(
                    "the result store at %s does not answer (%s): tasks are still sent, but their results "
                    "cannot be awaited until it answers; workers store them as soon as it does",
                    self.url,
                    " ".join(f"{type(e).__name__}: {e}".split()),
                )
        else:
            if self.down:
                self.down = False
                logger.info("the result store at %s answers again", self.url)

    def _ping(self) -> None:
        if self.client is None or self.pid != os.getpid():  # a connection must not cross fork()
            import redis

            timeouts = {"socket_connect_timeout": self.TIMEOUT, "socket_timeout": self.TIMEOUT}
            try:
                self.client = redis.Redis(**{**self.backend.connparams, **timeouts})
            except TypeError:  # not a single Redis server (Sentinel): no ping, sending as ever
                self.checked = float("inf")
                return
            self.pid = os.getpid()
        self.client.ping()


def unreachable(backend: Any, error: BaseException) -> bool:
    """``error`` (or the error behind Celery's final ``BackendStoreError``) means the store is down."""
    safe_to_retry = getattr(backend, "exception_safe_to_retry", None)
    if safe_to_retry is None:
        return False
    return any(e is not None and safe_to_retry(e) for e in (error, error.__context__, error.__cause__))


def _log_lost(backend: Any, task_id: str, state: str, request: Any, error: BaseException) -> None:
    name = getattr(request, "task", None) or getattr(request, "name", None) or "?"
    url = mask_url(str(backend.app.conf.result_backend))
    retries = backend.app.conf.result_backend_max_retries if getattr(backend, "always_retry", False) else 0
    cause = error.__context__ if error.__context__ is not None else error
    logger.error(
        "could not store the %s result of task %s[%s]: the result store at %s does not answer "
        "(%s: %s; %g retries); the task ran, its result is lost",
        state,
        name,
        task_id,
        url,
        type(cause).__name__,
        " ".join(str(cause).split()),
        retries,
    )
