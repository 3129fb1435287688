"""The embedded broker as Celery's own tools use it, across real processes.

Every ini here is ``development.ini`` written into a folder of the test's own,
so its ``embedded+sqlite://`` stores are the test's alone. One worker,
started with ``-E`` for the whole module, serves every test but the one that
kills a worker: Celery's CLI (``inspect``, ``status``, ``control``),
``app.control`` from this process, ``celery events --dump``, Flower, a
second worker beside it, and a long run that must leave the store as it
found it.

The tasks are ``example_ext``'s and those of tests/embedded_tasks.py
(installed as a real ``*.dist-info`` folder), which append one line per run
to a file: no server is needed, and counting lines counts runs. Every wait has
a generous deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery.app.control import Control

from conftest import ROOT, install_site
from core.bulk import send_many
from core.celery_app import HostCelery
from core.config import load_config
from core.startup import configure_app
from services import spare_port
from worker import (
    HOST,
    READY,
    Worker,
    development_ini,
    host_env,
    running_worker,
    started_worker,
    wait_until,
    write_ini,
)

pytestmark = pytest.mark.e2e

TESTS = ROOT / "tests"
CELERY = str(Path(HOST).parent / "celery")
NODE = re.compile(r"(\S+@\S+) ready\.")
#: For anything that must happen eventually; a loaded CI machine is slow, never this slow.
DEADLINE = 120.0


def install_tasks(directory: Path) -> Path:
    """tests/embedded_tasks.py as the task extension ``embedded-tasks``; returns the site folder."""
    return install_site(
        directory, "embedded-tasks", {"host.celery_task": {"tasks": "embedded_tasks:task_imports"}}
    )


def node_name(worker: Worker) -> str:
    """The worker's node name, as its "ready" line gives it (``test-...@host``)."""
    return worker.wait_for_log(NODE).group(1)


def tail(worker: Worker) -> str:
    """The end of a worker's log, for a failure message (the module's worker logs thousands of tasks)."""
    return worker.failure_details()[-5000:]


def sender(ini: Path) -> HostCelery:
    """An app of this process's own, configured from ``ini``, to send, control and read results."""
    return configure_app(HostCelery("embedded-test", set_as_current=False), load_config(ini, environ={}))


# -- what the files say --------------------------------------------------------------------


def runs(path: Path) -> Counter[str]:
    """How often each token ran: the lines embedded_tasks wrote to ``path`` (``done``, ``started``)."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text(encoding="utf-8").splitlines())


def nodes(path: Path) -> Counter[str]:
    """How many runs each node did, from the same lines."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[1] for line in path.read_text(encoding="utf-8").splitlines())


def query(path: Path, sql: str, *params: object) -> list[tuple]:
    with closing(sqlite3.connect(path, timeout=30)) as db:
        return db.execute(sql, params).fetchall()


def states(results_db: Path) -> dict[str, str]:
    """Every task id in the embedded result store, with its state."""
    try:
        return dict(query(results_db, "SELECT task_id, status FROM celery_taskmeta"))
    except sqlite3.OperationalError:  # no result stored yet: no table yet
        return {}


#: The tables that must not grow with use.
TABLES = ("host_message", "host_binding", "host_queue")


def row_counts(broker_db: Path) -> dict[str, int]:
    return {table: query(broker_db, f"SELECT COUNT(*) FROM {table}")[0][0] for table in TABLES}


def store_rows(broker_db: Path) -> str:
    """The store's queues, bindings, consumers and message counts, for a failure message."""
    parts = []
    for sql in (
        "SELECT name, auto_delete, expires, consumed FROM host_queue",
        "SELECT exchange, routing_key, queue FROM host_binding",
        "SELECT id, pid, lease_until FROM host_consumer",
        "SELECT queue, COUNT(*), COUNT(holder) FROM host_message GROUP BY queue",
    ):
        parts.append(f"{sql}:\n" + "\n".join(f"  {row}" for row in query(broker_db, sql)))
    return "\n".join(parts)


# -- Celery's own command line -------------------------------------------------------------


def celery_env(worker: Worker, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker's environment with ``HOST_CONFIG`` set: how ``celery -A core.celery_app`` finds the ini."""
    return {**worker.env, "HOST_CONFIG": str(worker.ini), **(extra or {})}


def celery(worker: Worker, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    """Run ``celery -A core.celery_app ARGS`` to completion on the worker's ini."""
    try:
        done = subprocess.run(
            [CELERY, "-A", "core.celery_app", *args],
            env=celery_env(worker),
            cwd=worker.ini.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"celery {' '.join(args)} did not finish within {timeout:g} s: {e.stdout!r} {e.stderr!r}")
    assert done.returncode == 0, f"celery {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


def to_node(broker: Broker) -> list[str]:
    """``celery inspect|control|status`` options: ask the module's worker, return once it has answered."""
    return ["--destination", broker.node, "--timeout", "60"]


@dataclass
class Program:
    """A long-running ``celery -A core.celery_app ...`` process and its log."""

    command: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def details(self) -> str:
        status = self.process.poll()
        state = "still running" if status is None else f"exited with status {status}"
        return f"{' '.join(self.command)} {state}; its log:\n{self.log[-5000:]}"

    def wait_for_log(self, pattern: str) -> None:
        """Wait until a line of the log matches ``pattern``."""
        regex = re.compile(pattern, re.M)
        wait_until(lambda: regex.search(self.log), DEADLINE, f"a line matching {pattern!r}", self.details)


@contextmanager
def celery_program(
    worker: Worker, args: Sequence[str], stop: signal.Signals, env: Mapping[str, str] | None = None
) -> Iterator[Program]:
    """Start ``celery -A core.celery_app ARGS`` on the worker's ini; afterwards send ``stop`` and wait.

    ``stop`` is the signal the program ends cleanly on (closing its broker
    connection, so its queues go at once); it is killed if it does not.
    """
    command = [CELERY, "-A", "core.celery_app", *args]
    log_path = worker.ini.parent / f"{args[0]}-{uuid.uuid4().hex[:8]}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env=celery_env(worker, env),
            cwd=worker.ini.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    program = Program(command, process, log_path)
    try:
        yield program
    finally:
        if process.poll() is None:
            process.send_signal(stop)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


# -- the module's worker ---------------------------------------------------------------------


@dataclass
class Broker:
    """The module's store, its worker (started with ``-E``) and this process's app on it."""

    directory: Path
    worker: Worker
    node: str
    app: HostCelery

    @property
    def broker_db(self) -> Path:
        return self.directory / "data" / "broker.sqlite"

    @property
    def results_db(self) -> Path:
        return self.directory / "data" / "results.sqlite"

    def state(self, task_id: str) -> str:
        return self.app.AsyncResult(task_id).state


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    directory = tmp_path_factory.mktemp("embedded")
    site = install_tasks(directory)
    with running_worker(
        directory, development_ini(), args=("-c", "2", "-E"), pythonpath=[site, TESTS]
    ) as worker:
        app = sender(worker.ini)
        try:
            yield Broker(directory, worker, node_name(worker), app)
        finally:
            app.close()
        assert worker.terminate() == 0, tail(worker)


# -- 1. Celery's command line sees the worker ------------------------------------------------


def test_celery_inspect_and_status_see_the_worker_and_its_tasks(broker: Broker) -> None:
    """``celery inspect ping``, ``inspect registered`` and ``status`` reach the worker and get its answer.

    Each is a broadcast on the ``celery.pidbox`` fanout exchange from another
    process, and a reply on ``reply.celery.pidbox``: the bindings must live in
    the store, not in one process's memory.
    """
    ping = celery(broker.worker, "inspect", "ping", *to_node(broker))
    assert f"->  {broker.node}: OK" in ping.stdout, ping.stdout
    assert "pong" in ping.stdout
    assert "1 node online." in ping.stdout

    registered = celery(broker.worker, "inspect", "registered", "--json", *to_node(broker))
    tasks = json.loads(registered.stdout)[broker.node]
    for name in ("example.echo", "example.add", "example.word_count", "embedded.mark", "embedded.sleep"):
        assert name in tasks, tasks

    status = celery(broker.worker, "status", *to_node(broker))
    assert f"->  {broker.node}: OK" in status.stdout, status.stdout
    assert "1 node online." in status.stdout


# -- 2. revoke ------------------------------------------------------------------------------


def revoke_before_its_time(broker: Broker, folder: str) -> tuple[str, str, float]:
    """Send ``embedded.mark`` with a countdown and revoke it before the countdown is over.

    Returns the task id, its token and its countdown. The worker confirms the
    revoke within milliseconds; on a machine so loaded that it confirms only
    after the countdown, nothing would be proved, so that try is repeated with
    a longer countdown (and its token left out of the proof).
    """
    for countdown in (2.0, 10.0, 30.0):
        token = f"revoked-{countdown:g}"
        sent = time.monotonic()
        task_id = broker.app.send_task("embedded.mark", args=[folder, token], countdown=countdown).id
        replies = broker.app.control.revoke(task_id, reply=True, destination=[broker.node], timeout=60)
        assert replies == [{broker.node: {"ok": f"tasks {{'{task_id}'}} flagged as revoked"}}], replies
        if time.monotonic() - sent < countdown:
            return task_id, token, countdown
    pytest.fail("the worker never confirmed a revoke within the task's countdown", pytrace=False)


def test_a_revoked_task_with_a_countdown_never_runs(broker: Broker, tmp_path: Path) -> None:
    """``app.control.revoke`` of a task waiting for its countdown: it is discarded, never run.

    Proof without a long wait: a marker task sent after it, with a countdown
    one second longer, has finished; by then the revoked task's time had come
    and gone, and it is REVOKED, logged as discarded, and not in the file of
    runs.
    """
    folder = str(tmp_path)
    revoked, token, countdown = revoke_before_its_time(broker, folder)
    marker = broker.app.send_task("embedded.mark", args=[folder, "marker"], countdown=countdown + 1).id
    wait_until(
        lambda: broker.state(marker) == "SUCCESS", DEADLINE, "the marker task", lambda: tail(broker.worker)
    )
    broker.worker.wait_for_log(rf"Discarding revoked task: embedded\.mark\[{revoked}\]")
    assert broker.state(revoked) == "REVOKED"
    ran = runs(tmp_path / "done")
    assert ran["marker"] == 1
    assert token not in ran, ran


def terminate_from_python(broker: Broker, task_id: str) -> None:
    replies = broker.app.control.revoke(
        task_id, terminate=True, reply=True, destination=[broker.node], timeout=60
    )
    assert replies == [{broker.node: {"ok": f"terminate: {task_id}"}}], replies


def terminate_from_the_cli(broker: Broker, task_id: str) -> None:
    done = celery(broker.worker, "control", "terminate", "SIGTERM", task_id, *to_node(broker))
    assert f"->  {broker.node}: OK" in done.stdout, done.stdout
    assert f"terminate: {task_id}" in done.stdout, done.stdout


@pytest.mark.parametrize("terminate", [terminate_from_python, terminate_from_the_cli], ids=["python", "cli"])
def test_revoke_with_terminate_stops_a_running_task(
    broker: Broker, tmp_path: Path, terminate: Callable[[Broker, str], None]
) -> None:
    """``app.control.revoke(terminate=True)``, or ``celery control terminate``, ends a task mid-sleep.

    The task would sleep for a minute and then record that it finished; it
    never does, its state is REVOKED, and the worker goes on running tasks.
    """
    folder = str(tmp_path)
    task_id = broker.app.send_task("embedded.sleep", args=[folder, "long", 60]).id
    wait_until(lambda: runs(tmp_path / "started"), DEADLINE, "the task to start", lambda: tail(broker.worker))
    terminate(broker, task_id)
    wait_until(
        lambda: broker.state(task_id) == "REVOKED",
        DEADLINE,
        "the task to be REVOKED",
        lambda: tail(broker.worker),
    )
    after = broker.app.send_task("embedded.mark", args=[folder, "after"])
    assert after.get(timeout=DEADLINE) == "after"
    assert runs(tmp_path / "started") == {"long": 1}
    assert runs(tmp_path / "done") == {"after": 1}  # "long" never finished
    assert broker.state(task_id) == "REVOKED"


# -- 3. events ---------------------------------------------------------------------------------


def test_celery_events_dump_sees_a_task_received_and_succeeded(broker: Broker) -> None:
    """``celery events --dump`` in another process receives the ``-E`` worker's events.

    Events go to the topic exchange ``celeryev``; the receiver binds a queue of
    its own to it. Once it shows a heartbeat it is bound, and the task sent
    then must show up as received and as succeeded.
    """
    with celery_program(broker.worker, ["events", "--dump"], stop=signal.SIGINT) as dump:
        node = re.escape(broker.node)
        dump.wait_for_log(rf"^{node} \[.*\] heartbeat: ")
        task_id = broker.app.send_task("example.add", args=[20, 22]).id
        dump.wait_for_log(rf"^{node} \[.*\] task received: example\.add\({task_id}\) args=\[20, 22\]")
        dump.wait_for_log(rf"^{node} \[.*\] task succeeded: example\.add\({task_id}\) .*result=42")


# -- 4. Flower ------------------------------------------------------------------------------------


def get_json(url: str) -> object:
    """The JSON at ``url``, or None while Flower is not listening yet."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)
    except (urllib.error.URLError, ConnectionError):
        return None


def test_flower_lists_the_worker_and_a_finished_task(broker: Broker) -> None:
    """Flower on the same ini (listening on 127.0.0.1 only): its API shows the worker and a task.

    ``/api/workers?refresh=1`` asks the workers with remote control;
    ``/api/tasks`` is what Flower learned from the worker's events.
    """
    port = spare_port()
    api = f"http://127.0.0.1:{port}/api"
    args = ["flower", "--address=127.0.0.1", f"--port={port}"]
    # Flower 2 serves its API only with authentication, unless told otherwise.
    with celery_program(
        broker.worker, args, stop=signal.SIGTERM, env={"FLOWER_UNAUTHENTICATED_API": "true"}
    ) as flower:

        def worker_listed() -> bool:
            workers = get_json(f"{api}/workers?refresh=1")
            return isinstance(workers, dict) and broker.node in workers

        wait_until(worker_listed, DEADLINE, "Flower to list the worker", flower.details, interval=0.5)
        task_id = broker.app.send_task("example.echo", args=["flower"]).id

        def task_listed() -> object:
            tasks = get_json(f"{api}/tasks")
            return isinstance(tasks, dict) and tasks.get(task_id, {}).get("state") == "SUCCESS"

        wait_until(task_listed, DEADLINE, "Flower to list the task as SUCCESS", flower.details, interval=0.5)
        tasks = get_json(f"{api}/tasks")
        assert isinstance(tasks, dict)
        task = tasks[task_id]
        assert (task["name"], task["worker"], task["result"]) == ("example.echo", broker.node, "'flower'")


# -- 5. two workers on one store -------------------------------------------------------------------

TWO_WORKER_TASKS = 2000


def test_two_workers_share_the_queue_and_each_task_runs_once(broker: Broker, tmp_path: Path) -> None:
    """A second worker on the same ini: 2,000 tasks, each run exactly once, by both workers.

    Both answer ``inspect ping`` addressed to them, and a ping broadcast to
    every worker (no destination) gets an answer from each.
    """
    folder = str(tmp_path)
    with started_worker(broker.worker.ini, broker.worker.env, tmp_path, ["-c", "2"]) as second:
        second.wait_for_log(READY)
        both = {broker.node, node_name(second)}
        assert len(both) == 2

        replies = broker.app.control.inspect(destination=sorted(both), timeout=60).ping()
        assert replies == dict.fromkeys(both, {"ok": "pong"}), replies
        broadcast = broker.app.control.ping(limit=2, timeout=60)  # to every worker: no destination
        assert len(broadcast) == 2, broadcast
        assert {n: r for reply in broadcast for n, r in reply.items()} == dict.fromkeys(both, {"ok": "pong"})

        tokens = [f"t{i}" for i in range(TWO_WORKER_TASKS)]
        send_many(broker.app, "embedded.mark", ([folder, t] for t in tokens))
        done = tmp_path / "done"
        wait_until(
            lambda: len(runs(done)) == len(tokens),
            DEADLINE,
            f"all {len(tokens)} tasks to run",
            lambda: f"{len(runs(done))} ran\n{tail(broker.worker)}\n{tail(second)}",
            interval=0.2,
        )
        assert second.terminate() == 0, second.failure_details()
    counts = runs(done)
    assert set(counts) == set(tokens)
    assert [t for t, n in counts.items() if n != 1] == [], "tasks that ran more than once"
    by_node = nodes(done)
    print(f"\ntwo workers: {dict(by_node)}")
    assert set(by_node) == both, by_node


# -- 6. a worker killed with its tasks ---------------------------------------------------------------

KILL_TASKS = 200
#: A dead worker's messages are deliverable again at most this long after it died.
LEASE_SECONDS = 5


def test_a_killed_workers_tasks_all_finish_on_the_next_worker(tmp_path: Path, record_property) -> None:
    """SIGKILL to a worker's whole process group mid-run loses no task.

    Late acknowledgement, a lease of 5 s: the tasks the dead worker held
    (running, or waiting in its prefetch buffer) are released when its lease
    runs out, and the next worker runs them. Every task ends with a result;
    a task that had finished but was not yet acknowledged runs twice, and how
    many did is reported.
    """
    ini_text = development_ini(
        {
            "celery.task_acks_late": "true",
            "celery.task_reject_on_worker_lost": "true",
            "celery.broker_transport_options": json.dumps({"lease_seconds": LEASE_SECONDS}),
        }
    )
    ini = write_ini(tmp_path, ini_text)
    env = host_env(pythonpath=[install_tasks(tmp_path), TESTS])
    folder, done, started = str(tmp_path), tmp_path / "done", tmp_path / "started"
    app = sender(ini)
    try:
        with started_worker(ini, env, tmp_path, ["-c", "4"]) as first:
            first.wait_for_log(READY)
            tokens = [f"t{i}" for i in range(KILL_TASKS)]
            ids = send_many(app, "embedded.sleep", ([folder, t, 0.1] for t in tokens))
            wait_until(lambda: len(runs(done)) >= 20, DEADLINE, "the first 20 tasks", first.failure_details)
            first.kill()  # SIGKILL to its process group: the pool goes with it
        finished_before = runs(done)
        interrupted = set(runs(started)) - set(finished_before)
        assert len(finished_before) < KILL_TASKS, "every task had finished before the kill"

        with started_worker(ini, env, tmp_path, ["-c", "4"]) as second:
            second.wait_for_log(READY)
            wait_until(
                lambda: len(runs(done)) == KILL_TASKS,
                DEADLINE,
                f"all {KILL_TASKS} tasks to finish",
                lambda: f"{len(runs(done))} finished\n{second.failure_details()}",
                interval=0.2,
            )
            results_db = tmp_path / "data" / "results.sqlite"
            wait_until(
                lambda: all(states(results_db).get(i) == "SUCCESS" for i in ids),
                DEADLINE,
                "every task's result",
                second.failure_details,
            )
            released = second.wait_for_log(
                rf"embedded broker: consumer \S+ \(pid {first.pid} on \S+\) ended without closing; "
                r"the (\d+) unacknowledged message\(s\) it held are deliverable again"
            )
    finally:
        app.close()
    counts = runs(done)
    assert set(counts) == set(tokens), f"tasks never finished: {sorted(set(tokens) - set(counts))}"
    twice = sorted(t for t, n in counts.items() if n > 1)
    record_property("tasks_run_twice", len(twice))
    print(
        f"\nkilled worker: {len(finished_before)} of {KILL_TASKS} finished before the kill, "
        f"{len(interrupted)} interrupted mid-run, {released.group(1)} released by the lease, "
        f"{len(twice)} ran twice {twice}"
    )
    assert int(released.group(1)) > 0
    restarted = runs(started)
    assert [t for t in interrupted if restarted[t] < 2] == [], "tasks killed mid-run that did not run again"


def test_a_worker_that_stalled_past_its_lease_reconnects_and_answers_again(tmp_path: Path) -> None:
    """SIGSTOP a worker for longer than its lease (3 s), then SIGCONT it: a suspended laptop.

    Another consumer (this test's own) takes it for dead and drops its
    pidbox queue. The worker finds its lease gone, reconnects as after a
    broker outage, and declares its queues anew: it answers a ping addressed
    to it, and runs tasks again.
    """
    ini = write_ini(
        tmp_path, development_ini({"celery.broker_transport_options": json.dumps({"lease_seconds": 3})})
    )
    env = host_env(pythonpath=[install_tasks(tmp_path), TESTS])
    app = sender(ini)
    store = tmp_path / "data" / "broker.sqlite"
    try:
        with started_worker(ini, env, tmp_path, ["-c", "1"]) as worker:
            worker.wait_for_log(READY)
            node = node_name(worker)
            assert app.control.ping(destination=[node], timeout=60) == [{node: {"ok": "pong"}}]
            with app.connection_for_read() as watcher:
                # A consumer of its own in this process: its lease thread sweeps once a second.
                watcher.default_channel.basic_get("nobody-sends-here")
                os.killpg(worker.pid, signal.SIGSTOP)
                try:
                    wait_until(
                        lambda: not query(store, "SELECT 1 FROM host_consumer WHERE pid = ?", worker.pid),
                        DEADLINE,
                        "the stopped worker's lease to be taken away",
                    )
                finally:
                    os.killpg(worker.pid, signal.SIGCONT)
            worker.wait_for_log(r"consumer \S+ lost its lease \(it stalled for over 3 s\)")

            def answers() -> bool:
                return app.control.ping(destination=[node], timeout=2) == [{node: {"ok": "pong"}}]

            wait_until(answers, DEADLINE, f"{node} to answer a ping again", worker.failure_details)
            assert app.send_task("example.add", args=[2, 3]).get(timeout=DEADLINE) == 5
    finally:
        app.close()


# -- 7. the store stays bounded ----------------------------------------------------------------------

BOUNDED_TASKS = 5000
INSPECT_CALLS = 500


def ping_many(broker: Broker, calls: int) -> list[object]:
    """``inspect ping`` addressed to the worker, ``calls`` times, each from a ``Control`` of its own.

    Each has a reply queue of its own, as each ``celery inspect`` process or
    Flower has: a call declares and binds it, and it must go once the call
    has its answer.
    """
    controls = [Control(broker.app) for _ in range(calls)]
    return [control.inspect(destination=[broker.node], timeout=60).ping() for control in controls]


def test_the_store_is_back_to_its_size_after_tasks_and_inspect_calls(broker: Broker) -> None:
    """500 inspect calls, then 5,000 tasks: host_message, host_binding and host_queue end as they began.

    Each inspect call's reply queue (and its binding) goes when the caller
    has its answer, and an acknowledged message is deleted: nothing
    accumulates. Counted once only this process and the worker consume, so
    that a receiver of an earlier test, going away, does not change them.
    The calls come first, while the worker is idle: during the 5,000 tasks
    each would wait its turn behind them, and the test would take longer.
    """
    own = {os.getpid(), broker.worker.pid}

    def only_us() -> bool:
        return {pid for (pid,) in query(broker.broker_db, "SELECT pid FROM host_consumer")} <= own

    wait_until(only_us, DEADLINE, "consumers of earlier tests to go", lambda: store_rows(broker.broker_db))
    before = row_counts(broker.broker_db)

    pong = {broker.node: {"ok": "pong"}}
    wrong = [(n, reply) for n, reply in enumerate(ping_many(broker, INSPECT_CALLS)) if reply != pong]
    assert wrong == [], "inspect calls without the worker's answer"
    ids = send_many(broker.app, "example.add", ([n, n] for n in range(BOUNDED_TASKS)))

    def all_succeeded() -> bool:
        found = states(broker.results_db)
        return all(found.get(i) == "SUCCESS" for i in ids)

    wait_until(all_succeeded, DEADLINE, f"{BOUNDED_TASKS} results", lambda: tail(broker.worker), interval=0.5)
    wait_until(
        lambda: row_counts(broker.broker_db) == before,
        DEADLINE,
        f"the store to be back to {before}",
        lambda: f"now {row_counts(broker.broker_db)}\n{store_rows(broker.broker_db)}",
        interval=0.2,
    )
