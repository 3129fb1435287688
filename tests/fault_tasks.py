"""Tasks for the fault tests: each records in Redis that it started and that it finished.

Installed for the tests as the plugin ``faults`` (a real ``*.dist-info``
folder naming tests/fault_plugin.py); its option ``redis_url`` says where
to record. A count above 1 in ``done`` means the task ran to the end twice.
"""

import time

import redis

from core.celery_app import celery
from plugins import plugin_config

_client = None


def client():
    global _client
    if _client is None:
        _client = redis.Redis.from_url(plugin_config("faults")["redis_url"])
    return _client


@celery.task(name="faults.sleep")
def sleep(run, token, seconds):
    """Record the start, sleep, record the end: a task long enough to be interrupted."""
    client().hincrby(f"{run}:started", token, 1)
    time.sleep(seconds)
    client().hincrby(f"{run}:done", token, 1)
    return token


@celery.task(name="faults.mark")
def mark(run, token):
    """Count one run of task ``token``."""
    client().hincrby(f"{run}:done", token, 1)
