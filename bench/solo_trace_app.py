"""Diagnosis only: bench/plain_app.py with a consumer step that records each poll of kombu's hub.

``celery -A solo_trace_app worker -P solo ...`` (``bench/`` on ``PYTHONPATH``)
runs the plain app; the step wraps the hub's poller (kombu's private
``Hub._poller``; acceptable in a measurement, not in a fix) and, at exit,
writes ``$SOLO_TRACE`` (JSON): for each poll, its timeout, how long it
slept, how many callbacks were waiting in ``Hub._ready`` when it started, and
whether one of them was a deferred ack. It also records, for each ack that
``Consumer.call_soon_ack`` deferred, whether it was queued while the hub was
running its ready callbacks (``in_ready_pass``), i.e. after the loop's last
look at ``_ready`` and before it polls. ``bench.solo_stall --trace`` reads it; with ``$SOLO_TRACE_FIX`` set
(``--trace --fix``), the fix of core/solo_ack.py is installed too.
"""

from __future__ import annotations

import atexit
import json
import os
import time

from celery import bootsteps
from plain_app import app  # noqa: F401  (the app ``-A`` loads)

TRACE = os.environ.get("SOLO_TRACE", "")
#: Non-empty: the fix too (core.solo_ack.SoloAck), started before the recorder.
FIX = os.environ.get("SOLO_TRACE_FIX", "")


class PollTrace(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.polls: list[tuple[float, float, float, int, int]] = []
        self.acks = {"queued": 0, "in_ready_pass": 0}
        self.installed = False
        atexit.register(self.dump)

    def start(self, c):
        hub = c.hub
        if hub is None or self.installed:
            return
        self.installed = True
        acks: set[int] = set()
        keep: list[object] = []  # every ack promise stays alive, so that no other object gets its id
        state = {"in_ready_pass": False}
        polls, counts = self.polls, self.acks
        original_ack = c.call_soon_ack

        def call_soon_ack(p, *args, **kwargs):
            result = original_ack(p, *args, **kwargs)
            acks.add(id(result))
            keep.append(result)
            counts["queued"] += 1
            counts["in_ready_pass"] += state["in_ready_pass"]
            return result

        c.call_soon_ack = call_soon_ack  # before Evloop builds the task handler

        original_pop = hub._pop_ready

        def pop_ready():  # the loop's one look at _ready per iteration
            state["in_ready_pass"] = True
            return original_pop()

        hub._pop_ready = pop_ready
        real = hub.poller

        class Poller:
            def __getattr__(self, name):
                return getattr(real, name)

            def poll(self, timeout):
                state["in_ready_pass"] = False
                ready = hub._ready
                waiting = len(ready)
                with_ack = sum(1 for p in list(ready) if id(p) in acks)
                start = time.perf_counter()
                try:
                    return real.poll(timeout)
                finally:
                    polls.append((start, timeout, time.perf_counter() - start, waiting, with_ack))

        hub.poller = Poller()

    def dump(self):
        if TRACE:
            with open(TRACE, "w", encoding="utf-8") as out:
                json.dump({"polls": self.polls, "acks": self.acks}, out)


if FIX:
    from core.solo_ack import SoloAck

    PollTrace.requires = (*PollTrace.requires, SoloAck)
    app.steps["consumer"].add(SoloAck)
app.steps["consumer"].add(PollTrace)
