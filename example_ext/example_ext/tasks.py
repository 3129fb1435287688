"""The example extension's tasks: the patterns the docs teach."""

import os
import time

from core.celery_app import celery
from example_ext.plugin import PROCESS_STATE
from plugins import exclusive_task


@celery.task(name="example.echo")
def echo(message):
    """Print the message in the worker's console and return it."""
    print(message)
    return message


@celery.task(name="example.add")
def add(x, y):
    return x + y


class TransientError(Exception):
    """A failure worth retrying: a timeout, a busy remote service."""


@celery.task(name="example.flaky", bind=True)
def flaky(self, failures, value="done"):
    """Fail ``failures`` times with a transient error, then succeed.

    Retries the way CKAN's guide shows: ``retry(exc=..., countdown=..., max_retries=...)``.
    """
    try:
        if self.request.retries < failures:
            raise TransientError(f"attempt {self.request.retries + 1} failed")
    except TransientError as e:
        # Retry in half a second, at most 10 times; then the task fails with e.
        raise self.retry(exc=e, countdown=0.5, max_retries=10)
    return {"value": value, "retries": self.request.retries}


class WordCount(celery.Task):
    """A class-based task: complex work gets a class, registered explicitly."""

    name = "example.word_count"

    def run(self, text):
        return len(text.split())


celery.register_task(WordCount())


@celery.task(name="example.process_info")
def process_info():
    """Which process ran this, and which one ran the plugin's per-process set-up."""
    return {"pid": os.getpid(), "initialised_in": PROCESS_STATE["initialised_in"]}


@celery.task(name="example.reindex")
@exclusive_task(lock_id="dataset-{dataset_id}")
def reindex(dataset_id, seconds=1.0):
    """Rebuild one dataset's index: never twice at once for the same dataset.

    A call while another runs for the same dataset does not run: it succeeds
    at once with {"status": "already running", "holder": <that task's id>, ...}.
    """
    time.sleep(seconds)
    return {"dataset_id": dataset_id, "reindexed": True}


@celery.task(name="example.sleep")
def sleep(seconds=30.0):
    """A long task: try `host inspect active` and `host revoke ID --terminate` on it."""
    time.sleep(seconds)
    return {"slept": seconds}


@celery.task(name="example.divide")
def divide(x, y):
    """Fails with ZeroDivisionError when y is 0: try `host results --state FAILURE`."""
    return x / y


@celery.task(name="example.ingest", bind=True)
def ingest(self, items, seconds_each=0.5):
    """Ingest items one by one: logs, progress and its own outcome (see `host result ID`).

    An item starting with "bad" fails its check: the task still runs to the
    end (Celery's SUCCESS), but its own outcome is "failed", with the reason.
    """
    ctx = self.context
    greeting = ctx.settings["greeting"]  # [plugin:example] greeting, from the ini
    ctx.log.info("ingesting %d items (greeting from [plugin:example]: %s)", len(items), greeting)
    ingested = []
    for n, item in enumerate(items, 1):
        time.sleep(seconds_each)
        if str(item).startswith("bad"):
            ctx.fail("item %r failed its check", item)
        else:
            ingested.append(item)
            ctx.log.info("ingested %r", item)
        ctx.progress(n, len(items), f"item {item}")
    return {"ingested": len(ingested), "failed": len(items) - len(ingested)}
