"""The worker's message consumer: bad messages are rejected with one clear log line each.

Celery already refuses what it cannot run; this consumer makes each refusal
say what, which message and what to do, without a traceback, and makes sure
the sender can learn of it:

* a body larger than ``host.max_message_bytes`` is rejected before it is
  decoded or handed to a pool process;
* a body that cannot be decoded, or whose content type the ini does not
  accept (pickle, unless ``celery.accept_content`` says so), is rejected;
* a task name no extension registered is rejected.

Each is marked failed in the result store when the message carries a task
id, so ``host result ID`` and ``AsyncResult.get()`` report it instead of
waiting forever. Rejected, not acknowledged: a RabbitMQ policy with a
``dead-letter-exchange`` keeps them for inspection. The worker goes on with
the next message.

It also waits out a broker outage, at start and while running, for as long
as ``celery.broker_connection_max_retries`` allows (the host's default: no
limit), trying again at most ``interval_max`` seconds apart (5 s unless
``celery.broker_transport_options`` says otherwise, the key kombu's own
fail-over uses). The outage is logged once at WARNING with the broker's URL,
password masked, and the recovery once at INFO, instead of Celery's ERROR line
for every attempt.

Installed as Celery's ``worker_consumer`` unless the ini names another.
"""

from __future__ import annotations

import difflib
import logging
import time
from typing import Any

from celery.exceptions import NotRegistered
from celery.worker.consumer import Consumer
from celery.worker.state import maybe_shutdown

from core.masking import mask_url

logger = logging.getLogger("host.consumer")

#: Seconds between reconnection attempts: the first, the step added each time, the longest.
RECONNECT_INTERVALS = {"interval_start": 1.0, "interval_step": 1.0, "interval_max": 5.0}


class RejectedMessage(Exception):
    """Stored as the result of a task whose message the worker refused."""


class MessageTooLarge(RejectedMessage):
    """The message body is larger than ``host.max_message_bytes``."""


class UndecodableMessage(RejectedMessage):
    """The message body cannot be decoded as its content type says."""


class ContentNotAccepted(RejectedMessage):
    """The message's content type is not in ``celery.accept_content``."""


class HostConsumer(Consumer):  # type: ignore[misc]
    #: When the broker stopped answering (monotonic clock), while it does not.
    _outage_since: float | None = None
    first_connection_attempt: bool  # Celery's own, set in Consumer.__init__

    def ensure_connected(self, conn: Any) -> Any:
        """Connect, retrying for as long as the settings allow; log the outage once.

        Celery's own version logs each failed attempt at ERROR and waits up to
        30 s between attempts (kombu's default). Whether to retry at all is
        decided as Celery decides it.
        """
        conf = self.app.conf
        on_startup = conf.broker_connection_retry_on_startup
        use_startup = self.first_connection_attempt and on_startup is not None
        if not (on_startup if use_startup else conf.broker_connection_retry):
            return super().ensure_connected(conn)
        options = conf.broker_transport_options or {}
        intervals = {key: options.get(key, default) for key, default in RECONNECT_INTERVALS.items()}
        limit = conf.broker_connection_max_retries
        url = mask_url(conn.as_uri())

        failed = 0

        def unreachable(exc: Exception, interval: float) -> None:
            nonlocal failed
            if self._outage_since is None:
                self._outage_since = time.monotonic()
            failed += 1
            if failed == 1:
                how_long = "for as long as it takes" if limit is None else f"{limit} times at most"
                logger.warning(
                    "the broker at %s does not answer (%s); trying again every %g s or sooner, %s; "
                    "tasks wait on the broker meanwhile",
                    url,
                    _one_line(exc),
                    intervals["interval_max"],
                    how_long,
                )

        try:
            conn = conn.ensure_connection(unreachable, limit, callback=maybe_shutdown, **intervals)
        except Exception as e:  # kombu re-raises the last attempt's error as its OperationalError
            if limit is not None and failed >= limit:  # the first attempt, then ``limit`` retries
                why = f"after {failed + 1} attempts (celery.broker_connection_max_retries = {limit})"
            else:  # not an error kombu retries: a refused login, say
                why = "at once: kombu does not retry this error"
            logger.error("giving up on the broker at %s %s: %s", url, why, _one_line(e))
            raise
        self.first_connection_attempt = False
        if self._outage_since is not None:
            down = time.monotonic() - self._outage_since
            logger.info("the broker at %s answers again after %.0f s; consuming", url, down)
            self._outage_since = None
        return conn

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        super().on_connection_error_after_connected(exc)

    def create_task_handler(self, promise: Any = None) -> Any:
        handle = super().create_task_handler() if promise is None else super().create_task_handler(promise)
        config = getattr(self.app, "host_config", None)
        limit = config.host.get("max_message_bytes", 0) if config is not None else 0
        if not limit:
            return handle

        def on_task_received(message: Any) -> Any:
            size = len(message.body or b"")
            if size > limit:
                return self._refuse(
                    message,
                    MessageTooLarge(
                        f"the message body is {size} bytes, more than host.max_message_bytes = {limit}"
                    ),
                    "pass large data by reference (a path, a URL, a database id) instead of in the arguments",
                )
            return handle(message)

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        error = UndecodableMessage(f"the body cannot be decoded as {message.content_type}: {exc}")
        self._refuse(message, error, "the sender must publish the task protocol's JSON body")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        accepted = ", ".join(sorted(self.app.conf.accept_content or []))
        if type(exc).__name__ == "ContentDisallowed":
            error: RejectedMessage = ContentNotAccepted(
                f"its content type {message.content_type} is not accepted "
                f"(celery.accept_content = {accepted})"
            )
            hint = "send JSON; accepting pickle lets whoever can publish run code on the worker"
        else:
            error = UndecodableMessage(f"it is not a valid task message: {exc}")
            hint = "the sender must follow Celery's task message protocol"
        self._refuse(message, error, hint)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = (message.headers or {}).get("task") or "?"
        known = [n for n in self.app.tasks if not n.startswith("celery.")]
        close = difflib.get_close_matches(str(name), known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "host tasks lists the tasks this worker has"
        reason = "no task of that name is registered on this worker"
        self._refuse(message, NotRegistered(name), hint, reason=reason, event=f"NotRegistered({name!r})")

    def _refuse(
        self, message: Any, error: Exception, hint: str, reason: str | None = None, event: str | None = None
    ) -> None:
        headers = message.headers or {}
        task_id, name = headers.get("id"), headers.get("task")
        logger.error(
            "rejected message%s%s: %s; nothing was run -> %s",
            f" {task_id}" if task_id else "",
            f" for task {name}" if name else "",
            reason or error,
            hint,
        )
        message.reject_log_error(logger, self.connection_errors)
        if task_id:
            self._mark_failed(task_id, name, headers, message, error)
            if self.event_dispatcher:
                self.event_dispatcher.send("task-failed", uuid=task_id, exception=event or repr(error))

    def _mark_failed(
        self, task_id: str, name: Any, headers: dict[str, Any], message: Any, error: Exception
    ) -> None:
        from celery.utils.collections import AttributeDict

        request = AttributeDict(
            id=task_id,
            task=name,
            name=name,
            chord=None,
            root_id=headers.get("root_id"),
            correlation_id=message.properties.get("correlation_id"),
            reply_to=message.properties.get("reply_to"),
            errbacks=None,
            ignore_result=False,
        )
        try:
            self.app.backend.mark_as_failure(task_id, error, request=request, call_errbacks=False)
        except Exception as e:  # the store being down must not stop the consumer
            logger.warning("could not record the rejection of %s in the result store: %s", task_id, e)


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())
