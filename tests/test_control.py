"""Headless control: ``host inspect``, ``status``, ``revoke``, ``purge``, ``queues``, and the toolkit's
functions of the same names, against a real worker on each broker.

One worker per broker serves the whole module: ``development.ini`` in a
folder of the module's own (the embedded broker and result store are its
files), and the same file on the real RabbitMQ with Redis for results, under
a ``host.site_id`` of the module's own so that parallel test modules never
meet its queues (they are deleted afterwards). Tasks are example_ext's.
Commands that ask the workers name this one (``--worker NODE``), so they
return as soon as it has answered; their generous ``--timeout`` is a deadline,
not a measure. Nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import RABBITMQ_URL, _require
from core.celery_app import HostCelery
from core.cli import render
from core.config import load_config
from core.control import INSPECTIONS, signal_name
from core.errors import UsageError
from core.startup import configure_app, load_plugins
from services import spare_port
from worker import (
    HOST,
    Worker,
    development_ini,
    host,
    host_env,
    on_rabbitmq,
    running_worker,
    wait_until,
    write_ini,
)

pytestmark = pytest.mark.e2e

NODE = re.compile(r"(\S+@\S+) ready\.")
#: For anything that must happen eventually; a loaded CI machine is slow, never this slow.
DEADLINE = 120.0
#: How long a command may wait for the module's worker to answer (it returns when it has).
ASK = ("--timeout", "60")


@dataclass
class Broker:
    """One broker with the module's worker on it, and this process's app on the same ini."""

    kind: str
    worker: Worker
    node: str
    app: HostCelery
    #: Queues this module made on RabbitMQ beyond the configuration's, deleted afterwards.
    extra_queues: list[str] = field(default_factory=list)

    @property
    def ini(self) -> Path:
        return self.worker.ini

    def host(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``host ARGS --config INI`` with the worker's environment."""
        if input is None:
            return host(*args, "--config", str(self.ini), env=self.worker.env)
        return subprocess.run(
            [HOST, *args, "--config", str(self.ini)],
            env=self.worker.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )

    def ok(self, *args: str) -> str:
        done = self.host(*args)
        assert done.returncode == 0, f"host {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args, "--json"))

    def ask(self, *args: str) -> list[str]:
        """Options that make a command ask the module's worker alone, and wait for its answer."""
        return [*args, "--worker", self.node, *ASK]


def settings(kind: str, site: str) -> dict[str, str]:
    """development.ini's keys for ``kind``: as it is, or on RabbitMQ and Redis under the site ``site``."""
    return {} if kind == "embedded" else on_rabbitmq(site)


def delete_site(site: str, queues: list[str]) -> None:
    """The site's queues and exchanges on RabbitMQ, gone."""
    from kombu import Connection

    prefix = f"host:{site}:"
    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        channel = connection.default_channel
        for queue in ("celery", "example", *queues):
            channel.queue_delete(prefix + queue)
            channel.exchange_delete(prefix + queue)  # Celery names a queue's exchange after it
        for exchange in (f"{prefix}celery.pidbox", f"{prefix}celeryev", f"reply.{prefix}celery.pidbox"):
            channel.exchange_delete(exchange)


BROKERS = [
    pytest.param("embedded"),
    pytest.param("rabbitmq", marks=[pytest.mark.rabbitmq, pytest.mark.redis]),
]


@pytest.fixture(scope="module", params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    kind = request.param
    if kind == "rabbitmq":  # before the worker starts: a module fixture is set up before the markers' check
        _require("RabbitMQ", 5672)
        _require("Redis", 6379)
    site = f"ctl{uuid.uuid4().hex[:10]}"
    directory = tmp_path_factory.mktemp(f"control-{kind}")
    extra: list[str] = []
    try:
        with running_worker(directory, development_ini(settings(kind, site))) as worker:
            config = load_config(worker.ini, environ={})
            app = HostCelery("control-test", set_as_current=False)
            configure_app(app, config, load_plugins(config))
            try:
                yield Broker(kind, worker, worker.wait_for_log(NODE).group(1), app, extra)
            finally:
                app.close()
            assert worker.terminate() == 0, worker.failure_details()[-5000:]
    finally:
        if kind == "rabbitmq":
            delete_site(site, extra)


# -- inspect and status --------------------------------------------------------------------------


def test_inspect_registered_lists_the_example_tasks(broker: Broker) -> None:
    registered = broker.json("inspect", "registered", *broker.ask())
    assert list(registered) == [broker.node]
    for name in ("example.echo", "example.add", "example.sleep", "example.word_count"):
        assert name in registered[broker.node]

    table = broker.ok("inspect", "registered", *broker.ask())
    assert re.search(rf"^  example\.echo +{re.escape(broker.node)}$", table, re.M), table


def test_inspect_ping_and_stats_answer(broker: Broker) -> None:
    assert broker.json("inspect", "ping", *broker.ask()) == {broker.node: {"ok": "pong"}}
    stats = broker.json("inspect", "stats", *broker.ask())
    assert stats[broker.node]["pool"]["max-concurrency"] == 2
    assert broker.node in broker.ok("inspect", "stats", *broker.ask())


def test_revoke_terminate_stops_a_running_task_and_it_is_revoked(broker: Broker) -> None:
    """example.sleep runs; status and inspect active show it; revoke --terminate ends it: REVOKED."""
    task_id = broker.ok("send", "example.sleep", "300").strip()

    def running() -> bool:
        active = broker.json("inspect", "active", *broker.ask())
        return any(t["id"] == task_id for t in active[broker.node])

    wait_until(running, DEADLINE, "example.sleep to run", broker.worker.failure_details)
    active = broker.ok("inspect", "active", *broker.ask())
    assert re.search(rf"{re.escape(broker.node)} +{task_id} +example\.sleep +300 ", active), active

    (status,) = broker.json("status", *broker.ask())["workers"]
    assert status["worker"] == broker.node
    assert status["active"] == 1
    assert sorted(status["queues"]) == ["celery", "example"]  # as -Q names them: no site prefix
    assert (status["pool"], status["concurrency"]) == ("prefork", 2)
    assert status["uptime"] is not None
    table = broker.ok("status", *broker.ask())
    assert re.search(rf"^  {re.escape(broker.node)} +celery, example +1 +2 +prefork ", table, re.M), table

    said = broker.ok("revoke", task_id, "--terminate", "--signal", "term", *broker.ask())
    assert f"Sent revoke with terminate (SIGTERM) of 1 task to {broker.node}; 1 worker answered" in said
    assert re.search(rf"{re.escape(broker.node)} +terminate: {task_id}", said), said

    wait_until(
        lambda: broker.app.AsyncResult(task_id).state == "REVOKED",
        DEADLINE,
        "the task to be REVOKED",
        broker.worker.failure_details,
    )
    assert "REVOKED" in broker.host("result", task_id).stdout
    assert broker.app.send_task("example.add", args=[2, 3]).get(timeout=DEADLINE) == 5  # the worker goes on
    assert broker.json("status", *broker.ask())["workers"][0]["active"] == 0


def test_revoke_refuses_a_signal_that_does_not_exist(broker: Broker) -> None:
    done = broker.host("revoke", "some-id", "--terminate", "--signal", "SIGNOPE")
    assert done.returncode == 2
    assert "--signal 'SIGNOPE' is not a signal name" in done.stderr
    done = broker.host("revoke", "some-id", "--signal", "KILL")
    assert done.returncode == 2
    assert "add --terminate" in done.stderr


# -- queues and purge ------------------------------------------------------------------------------


def test_queues_shows_the_workers_queues_and_their_consumers(broker: Broker) -> None:
    listing = broker.json("queues")
    counts = {q["name"]: q for q in listing["queues"]}
    assert {"celery", "example"} <= set(counts)
    assert counts["celery"]["consumers"] >= 1
    assert counts["example"]["consumers"] >= 1
    assert "guest:guest" not in json.dumps(listing)  # the broker URL's password is masked
    table = broker.ok("queues")
    assert re.search(r"^  celery +\d+ +[1-9]", table, re.M), table


def test_purge_empties_a_queue_of_a_hundred_tasks_after_asking(broker: Broker, tmp_path: Path) -> None:
    """A hundred tasks wait in a queue no worker consumes; `host queues` counts them; `host purge`
    asks first (no: nothing happens), and with --yes removes all hundred."""
    queue = f"unconsumed-{uuid.uuid4().hex[:8]}"
    broker.extra_queues.append(queue)
    lines = tmp_path / "tasks.jsonl"
    lines.write_text("".join(f'["message {n}"]\n' for n in range(100)), encoding="utf-8")
    broker.ok("send", "example.echo", "--many", str(lines), "--queue", queue)

    def waiting() -> int | None:
        (found,) = broker.json("queues", "--queue", queue)["queues"]
        assert (found["name"], found["consumers"]) == (queue, 0), found
        return found["waiting"]

    wait_until(lambda: waiting() == 100, DEADLINE, f"100 tasks waiting in {queue}")
    assert re.search(rf"^  {queue} +100 +0", broker.ok("queues", "--queue", queue), re.M)
    if broker.kind == "embedded":  # its store lists every queue: one nobody consumes shows unasked
        assert re.search(rf"^  {queue} +100 +0", broker.ok("queues"), re.M)

    declined = broker.host("purge", "--queue", queue, input="n\n")
    assert declined.returncode == 1
    assert f"Delete the 100 tasks waiting in queue {queue}?" in declined.stderr
    assert waiting() == 100

    purged = broker.ok("purge", "--queue", queue, "--yes")
    assert re.search(rf"^  {queue} +100$", purged, re.M), purged
    assert "Purged 100 tasks:" in purged
    assert waiting() == 0


def test_purge_of_a_queue_the_broker_does_not_have_is_refused(broker: Broker) -> None:
    done = broker.host("purge", "--queue", "no-such-queue", "--yes")
    assert done.returncode == 2
    assert "no queue no-such-queue on the broker" in done.stderr
    assert "this configuration's are celery, example" in done.stderr


# -- the toolkit ------------------------------------------------------------------------------------

TOOLKIT = """
import json, sys
from dataclasses import asdict
from plugins import inspect_workers, purge, queue_info, revoke, worker_status

node = sys.argv[1]
print(json.dumps({
    "registered": inspect_workers("registered", timeout=60, workers=[node]),
    "status": [asdict(w) for w in worker_status(timeout=60, workers=[node])],
    "revoke": asdict(revoke("no-such-task", timeout=60, workers=[node])),
    "queues": [asdict(q) for q in queue_info()],
    "purge": [asdict(p) for p in purge()],
}))
"""


def test_the_toolkit_functions_answer_as_the_commands_do(broker: Broker) -> None:
    """A web application's process: the shared app configured from $HOST_CONFIG, no command line."""
    done = subprocess.run(
        [str(Path(HOST).parent / "python"), "-c", TOOLKIT, broker.node],
        env={**broker.worker.env, "HOST_CONFIG": str(broker.ini)},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert "example.echo" in found["registered"][broker.node]
    assert [w["worker"] for w in found["status"]] == [broker.node]
    assert found["revoke"]["replies"] == {broker.node: "tasks {'no-such-task'} flagged as revoked"}
    assert {"celery", "example"} <= {q["name"] for q in found["queues"]}
    # The module's own queues, empty: nothing is lost.
    assert [(p["name"], p["removed"]) for p in found["purge"]] == [("celery", 0), ("example", 0)]


# -- no worker, no broker --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BROKERS)
def test_commands_that_find_no_worker_say_how_to_start_one(kind: str, tmp_path: Path) -> None:
    site = f"ctl{uuid.uuid4().hex[:10]}"
    ini = write_ini(tmp_path, development_ini(settings(kind, site)), "development.ini")
    try:
        for command in (["status"], ["inspect", "active"], ["revoke", "some-id"]):
            done = host(*command, "--config", str(ini), env=host_env(), cwd=tmp_path)
            assert done.returncode == 1, done.stderr
            assert "no worker answered within 1 s" in done.stderr, done.stderr
            assert "start one: host celeryd --config development.ini" in done.stderr, done.stderr
    finally:
        if kind == "rabbitmq":
            delete_site(site, [])


def test_a_broker_that_does_not_answer_is_named_with_its_password_masked(tmp_path: Path) -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{spare_port()}//"
    ini = write_ini(tmp_path, development_ini({"celery.broker_url": url}))
    for command in (["status"], ["queues"], ["purge", "--yes"], ["revoke", "some-id"]):
        done = host(*command, "--config", str(ini), env=host_env())
        assert done.returncode == 1, done.stderr
        assert "does not answer" in done.stderr, done.stderr
        assert "amqp://guest:**@127.0.0.1:" in done.stderr
        assert "s3cret" not in done.stdout + done.stderr


# -- the pieces, without a broker ------------------------------------------------------------------


@pytest.mark.parametrize(("given", "sent"), [("term", "SIGTERM"), ("KILL", "SIGKILL"), ("SIGINT", "SIGINT")])
def test_a_signal_is_named_with_or_without_sig(given: str, sent: str) -> None:
    assert signal_name(given) == sent


def test_a_signal_name_that_does_not_exist_is_refused_with_examples() -> None:
    with pytest.raises(UsageError, match=r"--signal 'SIGNOPE' is not a signal name") as caught:
        signal_name("SIGNOPE")
    assert caught.value.hint is not None and "SIGKILL" in caught.value.hint


def test_the_command_offers_every_inspection_the_domain_knows() -> None:
    from core.cli import control as cli_control

    assert cli_control.INSPECTIONS == INSPECTIONS


def test_a_table_aligns_its_columns_and_numbers_to_the_right() -> None:
    shown = render.table(("QUEUE", "WAITING"), [("celery", 5), ("reports", 100), ("gone", None)])
    assert shown.splitlines() == [
        "  QUEUE    WAITING",
        "  celery         5",
        "  reports      100",
        "  gone           -",
    ]
    assert [render.duration(s) for s in (None, 45, 75, 3700, 90061)] == [
        "-",
        "45s",
        "1m15s",
        "1h01m",
        "1d01h",
    ]


@pytest.mark.rabbitmq
@pytest.mark.parametrize("command", [("status",), ("queues",), ("send", "example.add", "1", "2")])
def test_a_refused_login_is_a_configuration_error_with_the_password_masked(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    wrong = RABBITMQ_URL.replace("guest:guest@", "guest:n0t-the-pa55word@")
    ini = write_ini(tmp_path, development_ini({"celery.broker_url": wrong}))
    done = host(*command, "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"Error: {ini}, key 'celery.broker_url': the broker at amqp://guest:**@"), (
        done.stderr
    )
    assert "refused the login (AccessRefused" in done.stderr and "Traceback" not in done.stderr
    assert "n0t-the-pa55word" not in done.stdout + done.stderr
    assert "-> check the user and password in celery.broker_url" in done.stderr
