"""The garbage collector in a worker: start-up's objects kept out of its way.

Start-up creates some 100,000 objects that live as long as the worker
(modules, tasks, settings) and little garbage; collecting while it runs cost
about 120 ms with 300 extensions, and every collection in a pool process
would write to those objects, unsharing the pages the process shares with
the main one (13 MiB with 300 extensions). Collection is off during start-up;
when the worker starts, what exists is frozen (``gc.freeze``): never
traversed again, in either process. Start-up's few garbage cycles are
frozen with it (about 40 objects with 300 extensions), once: collecting them
first would cost a full collection of everything, about 50 ms. Before each
pool process is forked, what was made since is collected, which is quick,
and the rest frozen: pool processes are forked again for as long as the
worker runs (``--max-tasks-per-child``, a time limit's kill), and a cycle
frozen then would never be freed.
bench/FINDINGS.md (rows 3 and 8) has the measurements.
"""

from __future__ import annotations

import gc
from typing import Any


def hold_collection() -> None:
    """Collection off until the worker starts; frozen then, and before each fork. Idempotent."""
    from celery import signals

    gc.disable()
    signals.worker_init.connect(_freeze_and_enable, weak=False, dispatch_uid="host:gc-start")
    # Sent in the main process just before each pool process is created;
    # Celery collects right after it (celery/concurrency/asynpool.py,
    # _create_worker_process, celery issue #2927), which then has nothing left
    # to look at.
    signals.worker_before_create_process.connect(_freeze, weak=False, dispatch_uid="host:gc-fork")


def _freeze_and_enable(**_: Any) -> None:
    gc.freeze()
    gc.enable()


def _freeze(**_: Any) -> None:
    gc.collect()  # only what is not frozen yet: made since the worker started
    gc.freeze()


def release_collection() -> None:
    """Collection back on, for a worker that did not start (its configuration was refused)."""
    gc.enable()
