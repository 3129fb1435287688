"""The one send path: ``host send``, ``send_many`` and the plugin toolkit route and fail alike.

Each sends ``example.add`` to the queue ``reports`` of a site ``shop``; each
message must land in ``host:shop:reports``. Against a broker that does not
answer, each must raise (or print) the same host error.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import plugins
from core.celery_app import HostCelery
from core.config import load_config
from core.errors import ServiceUnavailable
from core.sending import BROKER_HINT
from core.startup import configure_app
from tests.worker import host, host_env, write_ini

SITE = "host.site_id = shop\n"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_send_path_lands_in_the_site_queue(fresh_app: HostCelery, tmp_path: Path) -> None:
    ini = write_ini(
        tmp_path, f"[app:main]\ncelery.broker_url = embedded+sqlite:///%(here)s/broker.sqlite\n{SITE}"
    )
    configure_app(fresh_app, load_config(ini, environ={}))

    from_python = plugins.send_task("example.add", args=[1, 2], queue="reports").id
    [from_bulk] = plugins.send_many("example.add", [[3, 4]], queue="reports")
    sent = host("send", "example.add", "5", "6", "--queue", "reports", "--config", str(ini), env=host_env())
    assert sent.returncode == 0, sent.stderr
    from_cli = sent.stdout.strip()

    received = {}
    with fresh_app.connection_for_read() as connection:
        queue = connection.SimpleQueue("host:shop:reports")
        for _ in range(3):
            message = queue.get(timeout=10)
            received[message.headers["id"]] = message.delivery_info["routing_key"]
            message.ack()
        queue.close()
    assert received == dict.fromkeys([from_python, from_bulk, from_cli], "host:shop:reports")


def test_every_send_path_turns_a_dead_broker_into_the_same_error(
    fresh_app: HostCelery, tmp_path: Path
) -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{closed_port()}//"
    ini = write_ini(
        tmp_path,
        f"[app:main]\ncelery.broker_url = {url}\n{SITE}"
        'celery.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0}\n',
    )
    configure_app(fresh_app, load_config(ini, environ={}))
    masked = url.replace("s3cret", "**")

    with pytest.raises(ServiceUnavailable) as from_python:
        plugins.send_task("example.add", args=[1, 2], queue="reports")
    with pytest.raises(ServiceUnavailable) as from_bulk:
        plugins.send_many("example.add", [[3, 4]], queue="reports")
    sent = host("send", "example.add", "5", "6", "--config", str(ini), env=host_env(), cwd=tmp_path)

    assert from_python.value.message.startswith(
        f"the task was not sent: the broker at {masked} does not answer"
    )
    assert from_bulk.value.message.startswith(
        f"the tasks were not sent: the broker at {masked} does not answer"
    )
    assert from_python.value.hint == from_bulk.value.hint == BROKER_HINT
    assert sent.returncode == 1, sent.stderr
    assert sent.stderr.startswith(f"Error: the task was not sent: the broker at {masked} does not answer")
    assert sent.stderr.endswith(f"  -> {BROKER_HINT}\n")
    assert "s3cret" not in sent.stderr
