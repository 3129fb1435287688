"""Tasks for tests/test_embedded_broker.py: each run appends a line to a file, so no server is needed.

Installed for those tests as the task extension ``embedded-tasks`` (a real
``*.dist-info`` folder whose ``host.celery_task`` entry point is
:func:`task_imports`). A line is one ``write()`` to a file opened with
``O_APPEND``, which no concurrent writer on the same machine can split, so
every run of every task is one whole line: counting lines counts runs.
"""

import os
import time
from pathlib import Path

from core.celery_app import celery


def task_imports():
    """The modules holding these tasks (the ``host.celery_task`` entry point)."""
    return ["embedded_tasks"]


def record(path, *fields):
    """Append one line, ``fields`` separated by spaces, to the file ``path``."""
    line = " ".join(str(f) for f in fields) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@celery.task(name="embedded.mark", bind=True)
def mark(self, folder, token):
    """Record one run of ``token``, and the node that ran it, in ``folder/done``."""
    record(Path(folder) / "done", token, self.request.hostname)
    return token


@celery.task(name="embedded.sleep", bind=True)
def sleep(self, folder, token, seconds):
    """Record the start in ``folder/started``, sleep, record the end in ``folder/done``."""
    record(Path(folder) / "started", token, self.request.hostname)
    time.sleep(seconds)
    record(Path(folder) / "done", token, self.request.hostname)
    return token
