"""Bad input published raw onto a worker's queue: rejected, logged, marked failed, and nothing else lost.

A real ``host celeryd`` on the real RabbitMQ, with a ``host.site_id`` of the
test's own. Each bad message is published with kombu between good tasks, as
a misbehaving producer would. Every good task must still complete, every bad
one must be rejected with one clear log line and its id marked failed, and
the queue must end empty.
"""

from __future__ import annotations

import json
import pickle
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kombu import Connection, Exchange, Producer

from conftest import RABBITMQ_URL, REDIS_URL
from worker import Worker, host, running_worker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.redis]

INI = """
[app:main]
celery.broker_url = {broker}
celery.result_backend = {results}
celery.result_extended = true
celery.task_acks_late = true
celery.worker_prefetch_multiplier = 1
celery.worker_redirect_stdouts_level = INFO
host.site_id = {site}
host.max_message_bytes = 1048576
"""


@dataclass
class Target:
    worker: Worker
    queue: str

    def publish(self, body: bytes | str, content_type: str, encoding: str, task: str | None) -> str:
        """Publish one message the way Celery's protocol 2 would, with ``body`` as given."""
        task_id = str(uuid.uuid4())
        headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id} if task else {}
        with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
            producer = Producer(connection.default_channel, exchange=Exchange(self.queue, "direct"))
            producer.publish(
                body,
                routing_key=self.queue,
                headers=headers,
                content_type=content_type,
                content_encoding=encoding,
            )
        return task_id

    def good(self, n: int) -> str:
        body = json.dumps([[n, n], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
        return self.publish(body, "application/json", "utf-8", "example.add")

    def outcome(self, task_id: str) -> tuple[int, str, str]:
        """What ``host result ID --wait`` prints, as a user would see it."""
        config = ["--config", str(self.worker.ini)]
        done = host("result", task_id, "--wait", "--timeout", "60", *config, env=self.worker.env)
        return done.returncode, done.stdout, done.stderr

    def result(self, task_id: str) -> object:
        """A good task's result, read with an app of the test's own."""
        from core.celery_app import HostCelery
        from core.config import load_config
        from core.startup import configure_app

        app = configure_app(
            HostCelery("reader", set_as_current=False), load_config(self.worker.ini, environ={})
        )
        try:
            return app.AsyncResult(task_id).get(timeout=60)
        finally:
            app.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One worker for every case: each must leave it consuming for the next."""
    site = f"bad{uuid.uuid4().hex[:10]}"
    ini = INI.format(broker=RABBITMQ_URL, results=REDIS_URL, site=site)
    try:
        with running_worker(tmp_path_factory.mktemp("bad"), ini, args=("-c", "1")) as worker:
            yield Target(worker, f"host:{site}:celery")
    finally:
        with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
            channel = connection.default_channel
            channel.queue_delete(f"host:{site}:celery")
            for exchange in ("celery", "celery.pidbox", "celeryev", "reply.celery.pidbox"):
                channel.exchange_delete(f"host:{site}:{exchange}")


PROTOCOL_BODY = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
BAD = {
    "unknown task": (json.dumps([["x"], {}, PROTOCOL_BODY]), "application/json", "utf-8", "no.such.task"),
    "undecodable body": (b"\xff\xfe{not json", "application/json", "utf-8", "example.echo"),
    "pickle": (
        pickle.dumps(((["pwned"],), {}, PROTOCOL_BODY)),
        "application/x-python-serialize",
        "binary",
        "example.echo",
    ),
    "huge body": (
        json.dumps([["x" * 2_000_000], {}, PROTOCOL_BODY]),
        "application/json",
        "utf-8",
        "example.echo",
    ),
}
HUGE = len(BAD["huge body"][0])  # one byte a character: it is all ASCII
LOGGED = {
    "unknown task": "for task no.such.task: no task of that name is registered on this worker; "
    "nothing was run -> host tasks lists the tasks this worker has",
    "undecodable body": "for task example.echo: the body cannot be decoded as application/json: "
    "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte; nothing was run "
    "-> the sender must publish the task protocol's JSON body",
    "pickle": "for task example.echo: its content type application/x-python-serialize is not accepted "
    "(celery.accept_content = json); nothing was run -> send JSON; accepting pickle lets whoever "
    "can publish run code on the worker",
    "huge body": f"for task example.echo: the message body is {HUGE} bytes, more than "
    "host.max_message_bytes = 1048576; nothing was run -> pass large data by reference "
    "(a path, a URL, a database id) instead of in the arguments",
}
FAILED = {
    "unknown task": "NotRegistered: 'no.such.task'",
    "undecodable body": "UndecodableMessage: the body cannot be decoded as application/json: "
    "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
    "pickle": "ContentNotAccepted: its content type application/x-python-serialize is not accepted "
    "(celery.accept_content = json)",
    "huge body": f"MessageTooLarge: the message body is {HUGE} bytes, "
    "more than host.max_message_bytes = 1048576",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_message_is_rejected_and_the_worker_goes_on(target: Target, case: str) -> None:
    before = target.good(1)
    bad = target.publish(*BAD[case])
    after = target.good(2)

    assert (target.result(before), target.result(after)) == (2, 4)
    line = f"rejected message {bad} {LOGGED[case]}"
    target.worker.wait_for_log(re.escape(line))
    code, out, err = target.outcome(bad)
    assert code == 1 and out.startswith("FAILURE ("), out
    assert err.startswith(f"Error: task example.echo[{bad}] failed: {FAILED[case]}") or err.startswith(
        f"Error: task no.such.task[{bad}] failed: {FAILED[case]}"
    ), err
    # one line, no traceback, and nothing of the message was run
    assert "Traceback" not in target.worker.log
    assert "pwned" not in target.worker.log
    wait_until(lambda: _ready(target.queue) == 0, 30, "the queue to be empty", target.worker.failure_details)


def test_a_message_without_task_headers_is_rejected(target: Target) -> None:
    target.publish(b"garbage", "application/octet-stream", "binary", None)
    after = target.good(3)
    assert target.result(after) == 6
    line = "rejected message: the body cannot be decoded as application/octet-stream: Refusing to"
    target.worker.wait_for_log(re.escape(line))
    wait_until(lambda: _ready(target.queue) == 0, 30, "the queue to be empty", target.worker.failure_details)


def _ready(queue: str) -> int:
    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        return connection.default_channel.queue_declare(queue, passive=True).message_count
