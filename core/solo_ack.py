"""On the solo pool, acknowledge a task when it ends instead of through the event loop.

Celery hands each task's acknowledgement (and rejection) to the event loop:
5.7 through ``Consumer.call_soon_ack``, earlier versions through
``Consumer.call_soon``, both ``Hub.call_soon`` when there is a hub. kombu's
``Hub.create_loop`` takes the ready callbacks once per turn (``_pop_ready()``),
runs them, fires timers and tick callbacks, then polls; a callback queued by
any of those after the take waits in ``Hub._ready`` until the poll returns.
``Hub.call_soon`` (kombu 5.7) wakes the poller only when called from another
thread, so nothing shortens that poll: up to 10 s.

A solo worker runs each task inside the transport's read callback, which
re-queues itself with ``call_soon`` until the socket is empty. When such a
re-queued read runs from the ready set and finds a message already
delivered, the task runs there and its ack is queued after the take. Once
the acks of every message in the prefetch window are queued that way, the
broker (late acks) has nothing more to send, the socket stays quiet, and the
worker sleeps in ``epoll.poll`` with the acks unsent (bench/FINDINGS.md (row 1 solo)).

:class:`SoloAck` is a consumer bootstep that, for the solo pool only, makes
``call_soon_ack`` run the ack at once when it is called on the thread that
runs the consumer's loop -- the thread the solo pool runs every task on --
as Celery's own ``call_soon_ack`` does in workers without an event loop
(gevent, eventlet): an ack only writes one ``basic.ack`` frame to the
broker's socket, which kombu allows from within a message callback. From any
other thread it still defers through the hub, whose ``call_soon`` wakes the
loop then. Other pools do not need it: the prefork pool acks from the
callbacks of its result pipes, after which the loop looks at the ready set
before it polls, and the threads pool acks from its own threads.

Installed with ``app.steps["consumer"].add(SoloAck)``; it uses Celery's
bootstep API and ``Consumer.call_soon_ack``, nothing private of kombu. On
Celery < 5.7 (no ``call_soon_ack``) it does nothing.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from celery import bootsteps
from celery.concurrency.solo import TaskPool as SoloPool
from vine import ppartial

logger = logging.getLogger("host.solo_ack")


class SoloAck(bootsteps.StartStopStep):
    """Consumer step: on ``-P solo`` with an event loop, acks and rejects run when the task ends."""

    label = "solo ack"

    def include_if(self, c: Any) -> bool:
        # Celery < 5.7 has no call_soon_ack (acks go through call_soon, which
        # remote-control commands use too and must keep deferred): do nothing.
        return c.hub is not None and isinstance(c.pool, SoloPool) and hasattr(type(c), "call_soon_ack")

    def start(self, c: Any) -> None:
        # Consumer.start runs the steps, then the event loop (Evloop is always
        # last), on one thread: record it. Runs again after each reconnection.
        loop_thread = threading.get_ident()
        deferred = functools.partial(type(c).call_soon_ack, c)

        def call_soon_ack(p: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != loop_thread:
                return deferred(p, *args, **kwargs)
            p = ppartial(p, *args, **kwargs)
            try:
                p()
            except Exception:  # as Celery's call_soon_ack without a hub
                logger.exception("acknowledging the message failed")
            return p

        # Before Evloop.start builds the task handler, which reads it once.
        c.call_soon_ack = call_soon_ack
