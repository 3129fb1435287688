"""The recorder plugin's tasks (named by its host_task_imports hook)."""

import os

from core.celery_app import celery


@celery.task(name="recorder.whoami", bind=True)
def whoami(self):
    """Which worker, process and queue ran this task."""
    return {
        "hostname": self.request.hostname,
        "pid": os.getpid(),
        "queue": self.request.delivery_info["routing_key"],
    }


@celery.task(name="recorder.echo")
def echo(value):
    return value


@celery.task(name="recorder.fail")
def fail(reason):
    raise ValueError(reason)
