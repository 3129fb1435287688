"""The beat tests' task (named by beat_plugin's host_task_imports hook)."""

import json

from core.celery_app import celery
from plugins import plugin_config


@celery.task(name="beattest.record", bind=True)
def record(self, label):
    """Append this run, with the ``host_beat`` header beat sent it with, to the runs file; return both."""
    run = {
        "id": self.request.id,
        "label": label,
        "beat": getattr(self.request, "host_beat", None),
        "queue": (self.request.delivery_info or {}).get("routing_key"),
        "hostname": self.request.hostname,
    }
    with open(plugin_config("beattest")["runs"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(run) + "\n")
    return {"label": label, "beat": run["beat"]}
