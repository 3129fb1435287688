"""Quorum queues on the real RabbitMQ: ``production.ini`` with its quorum block uncommented.

One worker serves the module: ``production.ini`` with the four commented
``celery.task_*queue_type``/``exchange_type`` lines uncommented, the test
services' URLs, and a ``host.site_id`` of the module's own. Its queues and
exchanges are deleted afterwards (quorum queues are durable: nothing else
would remove them), and so is Celery's delay topology (``celery_delayed_*``)
unless another site on the broker is still bound to it. Tasks are
example_ext's; ``example.add`` has the plugin queue ``example`` to itself.
Nothing asserts how long anything took. The last tests check the settings
alone, without a broker.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import RABBITMQ_URL, REDIS_URL, ROOT, _require
from core.app import HostCelery
from core.config import load_config
from core.startup import configure_app, load_plugins
from test_control import delete_site
from worker import Worker, host, running_worker, write_ini

pytestmark = pytest.mark.e2e

PRODUCTION = (ROOT / "production.ini").read_text(encoding="utf-8")
#: The settings production.ini offers, commented out, for quorum queues.
QUORUM_SETTINGS = {
    "celery.task_default_queue_type": "quorum",
    "celery.task_default_exchange_type": "topic",
    "celery.task_create_missing_queue_type": "quorum",
    "celery.task_create_missing_queue_exchange_type": "topic",
}
NODE = re.compile(r"(\S+@\S+) ready\.")
#: A deadline for commands that wait (a loaded CI machine is slow, never this slow).
DEADLINE = "120"
#: Celery's native delayed delivery: 28 levels of delay queues and exchanges, shared by the broker's sites.
DELAY_LEVELS = 28


def quorum_ini(site: str) -> str:
    """production.ini with its quorum lines uncommented, the test services' URLs and the site ``site``."""
    text = PRODUCTION
    for key, value in QUORUM_SETTINGS.items():
        text, found = re.subn(rf"^# {re.escape(key)} = {value}$", f"{key} = {value}", text, flags=re.M)
        assert found == 1, f"production.ini no longer offers `# {key} = {value}`"
    for key, value in (
        ("celery.broker_url", RABBITMQ_URL),
        ("celery.result_backend", REDIS_URL),
        ("host.locks.url", REDIS_URL),
        ("host.site_id", site),
    ):
        text, found = re.subn(rf"^{re.escape(key)} =.*$", f"{key} = {value}", text, flags=re.M)
        assert found == 1, key
    return text


@dataclass
class Site:
    worker: Worker
    node: str
    site_id: str

    def host(self, *args: str) -> subprocess.CompletedProcess[str]:
        return host(*args, "--config", str(self.worker.ini), env=self.worker.env)

    def ok(self, *args: str) -> str:
        done = self.host(*args)
        assert done.returncode == 0, f"host {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def sent(self, *args: str) -> str:
        """``host send ARGS --wait``: what the task returned, as printed."""
        return self.ok("send", *args, "--wait", "--timeout", DEADLINE).strip()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _require("RabbitMQ", 5672)  # a module fixture is set up before the markers' check
    _require("Redis", 6379)
    site_id = f"qq{uuid.uuid4().hex[:10]}"
    directory = tmp_path_factory.mktemp("quorum")
    try:
        with running_worker(directory, quorum_ini(site_id)) as worker:
            yield Site(worker, worker.wait_for_log(NODE).group(1), site_id)
            assert worker.terminate() == 0, worker.failure_details()[-5000:]
    finally:
        delete_site(site_id, [])
        delete_delay_topology()


def delete_delay_topology() -> None:
    """Celery's ``celery_delayed_*`` queues and exchanges, gone unless another site still uses them.

    Every site's task exchange is bound to ``celery_delayed_delivery``; once
    this module's site is deleted, a delete with ``if_unused`` succeeds only
    when no other site is bound to it.
    """
    from amqp.exceptions import PreconditionFailed
    from kombu import Connection

    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        with connection.channel() as channel:
            try:
                channel.exchange_delete("celery_delayed_delivery", if_unused=True)
            except PreconditionFailed:  # another site's exchange is bound to it: leave it all
                return
        channel = connection.default_channel
        for level in range(DELAY_LEVELS):
            channel.queue_delete(f"celery_delayed_{level}")
            channel.exchange_delete(f"celery_delayed_{level}")


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_the_default_and_the_plugin_queue_are_quorum_queues(site: Site) -> None:
    """`host queues` shows each queue's type, probed on RabbitMQ without its management API."""
    listing = json.loads(site.ok("queues", "--json"))
    found = {q["name"]: (q["type"], q["consumers"]) for q in listing["queues"]}
    assert found == {"celery": ("quorum", 1), "example": ("quorum", 1)}
    table = site.ok("queues")
    assert re.search(r"^  QUEUE +WAITING +CONSUMERS +TYPE$", table, re.M), table
    assert re.search(r"^  celery +0 +1 +quorum$", table, re.M), table
    assert re.search(r"^  example +0 +1 +quorum$", table, re.M), table


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_the_worker_turns_global_qos_off_for_quorum_queues(site: Site) -> None:
    """Celery detects the quorum queues (``worker_detect_quorum_queues``): RabbitMQ would refuse a
    consumer with global QoS (540 NOT_IMPLEMENTED); its remote control, on classic queues, answers."""
    assert "Global QoS is disabled. Prefetch count is now static." in site.worker.log
    assert "does not support global qos" not in site.worker.log
    ping = json.loads(site.ok("inspect", "ping", "--worker", site.node, "--timeout", DEADLINE, "--json"))
    assert ping == {site.node: {"ok": "pong"}}


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_plain_tasks_run_through_the_quorum_queues(site: Site) -> None:
    assert site.sent("example.echo", '"through a quorum queue"') == "through a quorum queue"  # celery
    assert site.sent("example.add", "2", "3") == "5"  # the plugin's queue, example


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_countdown_tasks_wait_on_the_broker_then_run(site: Site) -> None:
    """Native delayed delivery: a countdown task waits in RabbitMQ's delay queues, not in the
    worker (which, its prefetch fixed, could not take another task while holding it)."""
    waiting = site.ok("send", "example.add", "20", "22", "--countdown", "5").strip()
    scheduled = json.loads(
        site.ok("inspect", "scheduled", "--worker", site.node, "--timeout", DEADLINE, "--json")
    )
    assert scheduled == {site.node: []}, "the worker holds the countdown task itself"
    assert site.sent("example.add", "2", "3", "--countdown", "2") == "5"
    assert site.sent("example.echo", '"later"', "--queue", "example", "--countdown", "1") == "later"
    later = json.loads(site.ok("result", waiting, "--wait", "--timeout", DEADLINE, "--json"))
    assert (later["state"], later["result"]) == ("SUCCESS", 42)


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_a_countdown_under_a_second_and_a_retry_after_half_a_second_run(site: Site) -> None:
    """Celery would raise ``countdown must be a positive number`` for these (core/app.py)."""
    assert site.sent("example.add", "1", "1", "--countdown", "0.5") == "2"
    retried = json.loads(site.sent("example.flaky", "2"))  # self.retry(countdown=0.5), twice
    assert retried == {"value": "done", "retries": 2}


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_a_queue_named_on_the_fly_is_a_quorum_queue_too(site: Site) -> None:
    """``celery.task_create_missing_queue_type``: a send to a queue nobody declared creates a quorum queue."""
    queue = f"adhoc-{uuid.uuid4().hex[:6]}"
    try:
        site.ok("send", "example.echo", '"kept"', "--queue", queue)
        (found,) = json.loads(site.ok("queues", "--queue", queue, "--json"))["queues"]
        assert (found["type"], found["waiting"], found["consumers"]) == ("quorum", 1, 0)
    finally:
        delete_queue(site, queue)


def delete_queue(site: Site, queue: str) -> None:
    """The queue and the exchange a send created for it (Celery names the exchange after the queue)."""
    from kombu import Connection

    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        connection.default_channel.queue_delete(f"host:{site.site_id}:{queue}")
        connection.default_channel.exchange_delete(f"host:{site.site_id}:{queue}")


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_doctor_passes_production_ini_with_quorum_queues(site: Site) -> None:
    """Every key of the quorum block is one Celery knows, with a value of the right type."""
    done = site.host("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [line for line in done.stdout.splitlines() if line.startswith("warn")], done.stdout


# -- the settings, without a broker ----------------------------------------------------------------


def app_for(tmp_path: Path, ini_text: str) -> HostCelery:
    config = load_config(write_ini(tmp_path, ini_text), environ={})
    app = HostCelery("quorum-test", set_as_current=False)
    configure_app(app, config, load_plugins(config))
    return app


def test_the_queues_the_host_declares_take_the_default_queue_type(tmp_path: Path) -> None:
    """Celery types only a default queue it declares itself; the host declares the plugins' queues
    (and with them the default one), so it gives each the type."""
    app = app_for(tmp_path, quorum_ini("shop"))
    queues = {name: queue.queue_arguments for name, queue in app.amqp.queues.items()}
    assert queues == {
        "host:shop:celery": {"x-queue-type": "quorum"},
        "host:shop:example": {"x-queue-type": "quorum"},
    }
    assert {queue.exchange.type for queue in app.amqp.queues.values()} == {"topic"}
    app.close()


def test_classic_queues_carry_no_queue_type_and_the_inis_own_queues_are_left_as_written(
    tmp_path: Path,
) -> None:
    app = app_for(tmp_path, PRODUCTION)
    assert [queue.queue_arguments for queue in app.amqp.queues.values()] == [None, None]
    app.close()
    own = '{"reports": {"routing_key": "reports"}}'
    app = app_for(
        tmp_path, quorum_ini("shop").replace("[app:main]\n", f"[app:main]\ncelery.task_queues = {own}\n")
    )
    queues = {name: queue.queue_arguments for name, queue in app.amqp.queues.items()}
    assert queues == {"host:shop:reports": None, "host:shop:example": {"x-queue-type": "quorum"}}
    app.close()


def test_a_countdown_reads_the_broker_transport_only_when_under_a_second(tmp_path: Path) -> None:
    """Whether Celery delays natively is read only for a countdown under a second, once per broker
    URL: reading it builds a kombu Connection (core/app.py). In memory: nothing leaves the process."""
    from core.app import _delays_natively

    app = app_for(tmp_path, quorum_ini("shop"))
    app.conf.broker_url = "memory://"

    app.send_task("example.add", [1, 2], countdown=5)
    assert app.host_driver_types == {}
    app.send_task("example.add", [1, 2], countdown=0.5)
    app.send_task("example.add", [1, 2], countdown=0.5)
    assert app.host_driver_types == {("memory://", None): "memory"}
    app.conf.broker_url = RABBITMQ_URL  # another broker: read anew (not connected to)
    assert _delays_natively(app)
    assert app.host_driver_types == {("memory://", None): "memory", (RABBITMQ_URL, None): "amqp"}
    app.close()
