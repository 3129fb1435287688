"""The plain Celery app the host is compared with: ``celery -A plain_app worker``.

Its settings are exactly the host's for the same ini: the benchmark reads the
ini with the host's own loader and hands the resulting Celery settings over
in ``$BENCH_PLAIN_SETTINGS`` (JSON), so both sides run with identical
settings and the comparison measures the framework, not a configuration
difference. Run it with ``bench/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os

from celery import Celery

app = Celery("plain_app")
app.conf.update(json.loads(os.environ.get("BENCH_PLAIN_SETTINGS", "{}")))


@app.task(name="bench.noop")
def noop(*args, **kwargs):
    return None


@app.task(name="bench.add")
def add(x, y):
    return x + y


def settings_for(ini: str) -> dict:
    """The Celery settings the host derives from ``ini``, for ``$BENCH_PLAIN_SETTINGS``.

    The host's own worker_consumer (which guards message size) is the one
    setting left out: it is part of what the host costs.
    """
    from core.config import load_config
    from core.startup import settings_for as host_settings

    settings = host_settings(load_config(ini, environ={}))
    settings.pop("worker_consumer", None)
    return json.loads(json.dumps(settings, default=str))
