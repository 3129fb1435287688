"""Real ``host celeryd`` processes for end-to-end tests: the test kit's, and development.ini.

::

    with running_worker(tmp_path, INI_TEXT) as worker:
        ...                      # the worker logged "ready"
        worker.log               # everything it wrote so far
    worker.returncode            # after SIGTERM and a warm shutdown

The process helpers are those host-framework ships to extension authors
(core/testing/processes.py, behind the ``host_worker`` fixture); this module
adds what only this repository has: its development.ini. Every wait has a
timeout; none of them is an assertion about speed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from core.testing.processes import (
    BIN,
    HOST,
    READY,
    READY_TIMEOUT,
    STOP_TIMEOUT,
    Worker,
    host,
    host_env,
    running_worker,
    started,
    started_worker,
    wait_until,
    write_ini,
)

__all__ = [
    "BIN",
    "DEVELOPMENT",
    "HOST",
    "READY",
    "READY_TIMEOUT",
    "STOP_TIMEOUT",
    "Worker",
    "development_ini",
    "host",
    "on_rabbitmq",
    "host_env",
    "running_worker",
    "started",
    "started_worker",
    "wait_until",
    "write_ini",
]

#: The project's development.ini, which tests copy with keys of their own.
DEVELOPMENT = Path(__file__).resolve().parent.parent / "development.ini"


def development_ini(settings: Mapping[str, str] | None = None) -> str:
    """development.ini with these ``[app:main]`` keys set: replaced where it has them, else added."""
    lines = DEVELOPMENT.read_text(encoding="utf-8").splitlines(keepends=True)
    for key, value in (settings or {}).items():
        line = f"{key} = {value}\n"
        at = [n for n, text in enumerate(lines) if text.startswith(f"{key} =")]
        if at:
            lines[at[0]] = line
        else:
            lines.insert(lines.index("[app:main]\n") + 1, line)
    return "".join(lines)


def on_rabbitmq(site: str) -> dict[str, str]:
    """development.ini's keys for RabbitMQ with Redis results, as the site ``site`` (its own queues)."""
    from conftest import RABBITMQ_URL, REDIS_URL

    return {
        "celery.broker_url": RABBITMQ_URL,
        "celery.result_backend": REDIS_URL,
        "celery.broker_transport_options": '{"confirm_publish": true}',
        "host.site_id": site,
    }
