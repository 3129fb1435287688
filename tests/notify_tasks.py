"""Tasks for tests/test_notify.py, each failing its own way.

Installed for those tests as the distribution ``notify-tasks`` (a real
``*.dist-info`` folder): its ``host.celery_task`` entry point is
:func:`task_imports`; its ``host.plugins`` entry point ``notifyrec`` is
tests/notify_plugin.py.
"""

import time

from core.celery_app import celery


def task_imports():
    """The modules holding these tasks (the ``host.celery_task`` entry point)."""
    return ["notify_tasks"]


class Boom(Exception):
    """What the failing tasks raise."""


@celery.task(name="notify.exhausts", bind=True)
def exhausts(self, url, options, api_token=None):
    """Fail every attempt; retry twice, then fail for good with the third attempt's error."""
    try:
        raise Boom(f"attempt {self.request.retries + 1} of 3 failed")
    except Boom as e:
        raise self.retry(exc=e, countdown=0.2, max_retries=2) from e


@celery.task(name="notify.fails")
def fails(n):
    """Fail at once, with no retry."""
    raise Boom(f"failure number {n}")


@celery.task(name="notify.hooked")
def hooked():
    """Fail at once: a task name of its own, so that no other test's email throttles it."""
    raise Boom("for the hook")


@celery.task(name="notify.hangs", time_limit=2)
def hangs():
    """Outlive the hard time limit: the main process kills the pool process and reports the failure."""
    time.sleep(120)
