"""The garbage collector in a worker: start-up's objects kept out of its way.

Start-up creates some 100,000 objects that live as long as the worker
(modules, tasks, settings) and little garbage; collecting while it runs cost
about 120 ms with 300 extensions, and every collection in a pool process
would write to those objects, unsharing the pages the process shares with
the main one (13 MiB with 300 extensions). Collection is off during start-up;
when the worker starts, and again before each pool process is forked, what
exists is frozen (``gc.freeze``): never traversed again, in either process.
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
    # _create_worker_process, celery issue #2927), which then has only what
    # was created since to look at.
    signals.worker_before_create_process.connect(_freeze, weak=False, dispatch_uid="host:gc-fork")


def _freeze_and_enable(**_: Any) -> None:
    gc.freeze()
    gc.enable()


def _freeze(**_: Any) -> None:
    gc.freeze()
