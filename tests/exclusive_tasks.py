"""Exclusive tasks for tests/test_exclusive.py: each run appends a line to a file.

Installed for those tests as the task extension ``exclusive-tasks`` (a real
``*.dist-info`` folder whose ``host.celery_task`` entry point is
:func:`task_imports`). A line is one ``write()`` to a file opened with
``O_APPEND``, so concurrent runs never split one: counting lines counts runs.
"""

import os
import time
from pathlib import Path

from core.celery_app import celery
from plugins import exclusive_task

#: How long a run waits for its gate before giving up (a test that failed leaves none).
GATE_TIMEOUT = 300.0


def task_imports():
    """The modules holding these tasks (the ``host.celery_task`` entry point)."""
    return ["exclusive_tasks"]


def record(path, *fields):
    """Append one line, ``fields`` separated by spaces, to the file ``path``."""
    line = " ".join(str(f) for f in fields) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@celery.task(name="exclusive.hold", bind=True)
@exclusive_task(lock_id="hold-{key}")
def hold(self, key, folder):
    """Record ``started``, wait until the file ``folder/gate`` exists, record ``done``.

    The lock is ``hold-KEY``; the test decides when the run ends by creating the gate.
    """
    _hold(self, folder)
    return {"key": key, "pid": os.getpid()}


@celery.task(name="exclusive.wait_turn", bind=True, max_retries=None)
@exclusive_task(lock_id="hold-{key}", on_locked="retry", countdown=0.5)
def wait_turn(self, key, folder):
    """As ``hold``, on the same locks, but a call finding the lock held is retried, not skipped."""
    _hold(self, folder)
    return {"key": key, "retries": self.request.retries}


def _hold(task, folder):
    runs = Path(folder) / "runs"
    record(runs, "started", task.request.id, os.getpid())
    deadline = time.monotonic() + GATE_TIMEOUT
    while not (Path(folder) / "gate").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    record(runs, "done", task.request.id, os.getpid())
    return {"folder": folder}


class SeedHold(celery.Task):
    """Seed 001's form: a class-based task whose ``run`` is decorated, ``task_name`` included."""

    name = "exclusive.seed_hold"

    @exclusive_task(task_name="Seed hold", lock_id="seed-hold")
    def run(self, folder):
        return _hold(self, folder)


celery.register_task(SeedHold())
