"""Workers on several machines: two workers of one site, with node names and queues of their own,
seen and steered through the one RabbitMQ they share.

One ini serves both, as one ini is copied to every machine of a site: the
real RabbitMQ, Redis for results and locks, and a ``host.site_id`` of the
module's own (its queues and exchanges are deleted afterwards). Worker A
(``-n a-RUN@%h -Q celery``) stands for one machine, worker B (``-n
b-RUN@%h -Q example``) for another; ``example.add`` goes to B through the
example plugin's queue, ``example.sleep`` to A unless ``--queue example``
sends it to B. Commands that ask every worker wait out their ``--timeout``
(there is no telling how many will answer); the others name the workers and
return once they have answered. Nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import RABBITMQ_URL, REDIS_URL, _require
from test_control import delete_site, settings
from worker import HOST, READY, Worker, development_ini, host, host_env, started, wait_until, write_ini

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.redis]

NODE = re.compile(r"(\S+@\S+) ready\.")
#: For anything that must happen eventually; a loaded CI machine is slow, never this slow.
DEADLINE = 120.0
#: How long a command asking every worker collects answers: it cannot know how many will come.
BROADCAST = ("--timeout", "5")


@dataclass
class Site:
    site_id: str
    ini: Path
    env: dict[str, str]
    a: str
    b: str
    workers: dict[str, Worker]

    def host(self, *args: str) -> subprocess.CompletedProcess[str]:
        return host(*args, "--config", str(self.ini), env=self.env)

    def ok(self, *args: str) -> str:
        done = self.host(*args)
        assert done.returncode == 0, f"host {' '.join(args)}: {done.stdout}{done.stderr}\n{self.logs()}"
        return done.stdout

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args, "--json"))

    def both(self) -> list[str]:
        """Options that ask the two workers by name, and return once both have answered."""
        return ["--worker", self.a, "--worker", self.b, "--timeout", str(DEADLINE)]

    def active(self) -> dict[str, list[str]]:
        """Each worker -> the ids of the tasks it is running."""
        found = self.json("inspect", "active", *self.both())
        return {node: [task["id"] for task in tasks] for node, tasks in found.items()}

    def result(self, task_id: str, *args: str) -> dict:
        """``host result ID --json`` (its exit status is 1 for a revoked task)."""
        done = self.host("result", task_id, *args, "--json")
        assert done.stdout, done.stderr
        return json.loads(done.stdout)

    def logs(self) -> str:
        return "\n".join(w.failure_details()[-3000:] for w in self.workers.values())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _require("RabbitMQ", 5672)  # a module fixture is set up before the markers' check
    _require("Redis", 6379)
    site_id = f"mw{uuid.uuid4().hex[:10]}"
    run = uuid.uuid4().hex[:6]
    directory = tmp_path_factory.mktemp("many-workers")
    ini = write_ini(
        directory, development_ini({**settings("rabbitmq", site_id), "host.locks.url": REDIS_URL})
    )
    env = host_env()
    try:
        with (
            machine(ini, env, f"a-{run}@%h", "celery") as a,
            machine(ini, env, f"b-{run}@%h", "example") as b,
        ):
            node_a, node_b = (worker.wait_for_log(NODE).group(1) for worker in (a, b))
            yield Site(site_id, ini, env, node_a, node_b, {node_a: a, node_b: b})
            for worker in (a, b):
                assert worker.terminate() == 0, worker.failure_details()[-5000:]
    finally:
        delete_site(site_id, [])


@contextmanager
def machine(ini: Path, env: dict[str, str], node: str, queue: str) -> Iterator[Worker]:
    """A worker as ``host supervisor`` renders one, with a node name and a queue of its own, once ready."""
    command = [HOST, "celeryd", "--config", str(ini), "--", "-n", node, "-Q", queue, "-c", "2"]
    with started(command, ini, env, ini.parent, node.partition("@")[0]) as worker:
        worker.wait_for_log(READY)
        yield worker


def test_status_sees_both_workers_and_the_queue_each_consumes(site: Site) -> None:
    """Asking every worker of the site, unnamed: both answer, each with its own queue (as -Q names
    it, without the site prefix)."""
    table = site.ok("status", *BROADCAST)
    assert "2 workers answered:" in table, table
    assert re.search(rf"^  {re.escape(site.a)} +celery +0 +2 +prefork ", table, re.M), table
    assert re.search(rf"^  {re.escape(site.b)} +example +0 +2 +prefork ", table, re.M), table


def test_inspect_ping_and_registered_see_both_workers(site: Site) -> None:
    assert site.json("inspect", "ping", *BROADCAST) == {site.a: {"ok": "pong"}, site.b: {"ok": "pong"}}
    registered = site.json("inspect", "registered", *site.both())
    for node in (site.a, site.b):  # the same extensions on every machine
        assert {"example.add", "example.echo", "example.sleep"} <= set(registered[node])
    table = site.ok("inspect", "registered", *site.both())
    workers = ", ".join(sorted([site.a, site.b]))
    assert re.search(rf"^  example\.add +{re.escape(workers)}$", table, re.M), table


def test_queues_shows_each_queue_with_its_consumer_and_type(site: Site) -> None:
    """No worker asked: the broker counts each queue's consumers; the type is probed (classic here)."""
    found = {q["name"]: (q["consumers"], q["type"]) for q in site.json("queues")["queues"]}
    assert found == {"celery": (1, "classic"), "example": (1, "classic")}


def test_a_queue_type_no_probe_matches_is_shown_as_unknown(site: Site) -> None:
    """A queue declared with an argument the configuration lacks matches no probe: `?`, not a guess."""
    from kombu import Connection

    name = f"host:{site.site_id}:prioritised"
    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        channel = connection.default_channel
        channel.queue_declare(name, durable=True, auto_delete=False, arguments={"x-max-priority": 5})
        try:
            (found,) = site.json("queues", "--queue", "prioritised")["queues"]
            assert (found["waiting"], found["type"]) == (0, None)
            table = site.ok("queues", "--queue", "prioritised")
            assert re.search(r"^  prioritised +0 +0 +\?$", table, re.M), table
            assert "(?: no probe of its type matched" in table
        finally:
            connection.default_channel.queue_delete(name)


def test_each_task_runs_on_the_worker_that_consumes_its_queue(site: Site) -> None:
    added = site.ok("send", "example.add", "2", "3").strip()  # the plugin's queue: B
    echoed = site.ok("send", "example.echo", '"on A"').strip()  # the default queue: A
    for task_id, node, queue in ((added, site.b, "example"), (echoed, site.a, "celery")):
        done = site.result(task_id, "--wait", "--timeout", str(DEADLINE))
        assert (done["state"], done["worker"], done["queue"]) == ("SUCCESS", node, queue), done


def test_revoke_terminate_stops_the_task_on_the_worker_running_it_and_no_other(site: Site) -> None:
    """`host revoke ID --terminate` goes to every worker: B, running the task, ends it; A, running
    a task of its own meanwhile, ends nothing, and its task succeeds."""
    on_b = site.ok("send", "example.sleep", "300", "--queue", "example").strip()
    on_a = site.ok("send", "example.sleep", "10").strip()
    running = {site.a: [on_a], site.b: [on_b]}
    wait_until(lambda: site.active() == running, DEADLINE, "a task to run on A and one on B", site.logs)

    revoked = site.json("revoke", on_b, "--terminate", *BROADCAST)
    assert revoked["replies"] == {site.a: "terminate: tasks unknown", site.b: f"terminate: {on_b}"}

    wait_until(lambda: not site.active()[site.b], DEADLINE, "B to end the revoked task", site.logs)
    assert site.result(on_b)["state"] == "REVOKED"
    done = site.result(on_a, "--wait", "--timeout", str(DEADLINE))
    assert (done["state"], done["result"], done["worker"]) == ("SUCCESS", {"slept": 10}, site.a), done


def test_revoke_with_worker_asks_that_worker_alone(site: Site) -> None:
    """`--worker NODE` sends the revoke to that worker only, and returns once it has answered."""
    task_id = site.ok("send", "example.sleep", "300", "--queue", "example").strip()
    wait_until(lambda: site.active()[site.b] == [task_id], DEADLINE, "example.sleep to run on B", site.logs)

    said = site.ok("revoke", task_id, "--terminate", "--worker", site.b, "--timeout", str(DEADLINE))
    assert f"Sent revoke with terminate (SIGTERM) of 1 task to {site.b}; 1 worker answered:" in said
    assert re.search(rf"^  {re.escape(site.b)} +terminate: {task_id}$", said, re.M), said

    wait_until(lambda: not site.active()[site.b], DEADLINE, "B to end the revoked task", site.logs)
    assert site.result(task_id)["state"] == "REVOKED"
