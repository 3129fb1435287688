"""End to end: a real ``host celeryd`` process, on RabbitMQ and on the embedded broker.

Each test starts its own worker (tests/worker.py). On RabbitMQ every test has a
queue of its own (``celery.task_default_queue = test-<uuid>``, deleted
afterwards) and Redis for results, so concurrent runs never take each other's
messages. On the embedded broker every test has its own SQLite files in
``tmp_path``. Waits have timeouts; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import RABBITMQ_URL, REDIS_URL, Site
from worker import host, running_worker, wait_until

pytestmark = pytest.mark.e2e

EMBEDDED_INI = """
[app:main]
celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite
celery.result_extended = true
celery.worker_redirect_stdouts_level = INFO
"""

# production.ini's reliability settings, on a queue of the test's own.
RABBITMQ_INI = """
[app:main]
celery.broker_url = {broker}
celery.result_backend = {results}
celery.task_default_queue = {queue}
celery.result_extended = true
celery.result_expires = 3600
celery.task_acks_late = true
celery.task_reject_on_worker_lost = true
celery.worker_prefetch_multiplier = 1
celery.broker_transport_options = {{"confirm_publish": true}}
celery.worker_redirect_stdouts_level = INFO
"""


@dataclass
class Broker:
    name: str
    ini: str


@pytest.fixture(
    params=[
        pytest.param("embedded"),
        pytest.param("rabbitmq", marks=[pytest.mark.rabbitmq, pytest.mark.redis]),
    ]
)
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "embedded":
        yield Broker("embedded", EMBEDDED_INI)
        return
    queue = f"test-{uuid.uuid4()}"
    yield Broker("rabbitmq", RABBITMQ_INI.format(broker=RABBITMQ_URL, results=REDIS_URL, queue=queue))
    _delete_rabbitmq_queue(queue)


def _delete_rabbitmq_queue(name: str) -> None:
    from kombu import Connection

    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        channel = connection.default_channel
        channel.queue_delete(name)
        channel.exchange_delete(name)  # Celery names the default exchange after the queue


def _succeeded(task_id: str) -> str:
    return rf"Task [\w.]+\[{re.escape(task_id)}\] succeeded"


# -- sending from Python, as CKAN's guide does -------------------------------

# Three ways a web application sends: the shared app configured from
# $HOST_CONFIG (as CKAN read CKAN_CONFIG), the shared app after
# core.celery_app.configure(ini), and an app of its own.
PYTHON_SENDER = """
import json, sys, uuid

ini, name, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def send(app, how):
    result = app.send_task(name, args=args, task_id=str(uuid.uuid4()))
    print(json.dumps({"how": how, "id": result.id, "result": result.get(timeout=60)}), flush=True)

from core.celery_app import celery
send(celery, "HOST_CONFIG")

from core.celery_app import configure
send(configure(ini), "configure")

from core.celery_app import HostCelery

from core.startup import configure_app
from core.config import load_config
send(configure_app(HostCelery("web"), load_config(ini)), "HostCelery")
"""


def python_send(worker, name: str, args: list) -> list[dict]:
    try:
        done = subprocess.run(
            [sys.executable, "-c", PYTHON_SENDER, str(worker.ini), name, json.dumps(args)],
            env={**worker.env, "HOST_CONFIG": str(worker.ini)},
            capture_output=True,
            text=True,
            timeout=240,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"the Python sender did not finish: {e.stdout!r} {e.stderr!r}\n{worker.failure_details()}"
        )
    assert done.returncode == 0, f"{done.stderr}\n{worker.failure_details()}"
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_send_task_by_name_from_python(tmp_path: Path, broker: Broker) -> None:
    with running_worker(tmp_path, broker.ini) as worker:
        sent = python_send(worker, "example.echo", ["Hello World"])
        assert [(s["how"], s["result"]) for s in sent] == [
            ("HOST_CONFIG", "Hello World"),
            ("configure", "Hello World"),
            ("HostCelery", "Hello World"),
        ]
        for s in sent:
            worker.wait_for_log(_succeeded(s["id"]))
            assert str(uuid.UUID(s["id"])) == s["id"]
        # print() in the task reaches the worker's log
        assert len(re.findall(r"/ForkPoolWorker-\d+\] Hello World$", worker.log, re.M)) == 3


# -- the host command ----------------------------------------------------------


def test_host_send_and_result(tmp_path: Path, broker: Broker) -> None:
    with running_worker(tmp_path, broker.ini) as worker:
        config = ["--config", str(worker.ini)]
        echo = host("send", "example.echo", '"Hello World"', "--wait", *config, env=worker.env)
        assert (echo.returncode, echo.stdout) == (0, "Hello World\n"), echo.stderr

        sent = host("send", "example.add", "2", "3", *config, env=worker.env)
        assert sent.returncode == 0, sent.stderr
        task_id = sent.stdout.strip()
        assert str(uuid.UUID(task_id)) == task_id

        result = host("result", task_id, "--wait", *config, env=worker.env)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert (lines[0], lines[-2:]) == ("SUCCESS (example.add); outcome: ok", ["result:", "  5"])

        count = host("send", "example.word_count", '"one two three"', "--wait", *config, env=worker.env)
        assert (count.returncode, count.stdout) == (0, "3\n"), count.stderr


def test_retrying_task_succeeds_after_its_retries(tmp_path: Path, broker: Broker) -> None:
    task_id = str(uuid.uuid4())
    with running_worker(tmp_path, broker.ini) as worker:
        done = host(
            "send",
            "example.flaky",
            "2",
            "--task-id",
            task_id,
            "--wait",
            "--config",
            str(worker.ini),
            env=worker.env,
        )
        assert done.returncode == 0, f"{done.stderr}\n{worker.failure_details()}"
        assert json.loads(done.stdout) == {"value": "done", "retries": 2}
        worker.wait_for_log(_succeeded(task_id))
        assert len(re.findall(rf"example\.flaky\[{task_id}\] retry: Retry in", worker.log)) == 2


def test_failing_task_reports_the_remote_error(tmp_path: Path, broker: Broker) -> None:
    with running_worker(tmp_path, broker.ini) as worker:
        done = host("send", "example.add", "1", '"x"', "--wait", "--config", str(worker.ini), env=worker.env)
        assert done.returncode == 1, f"{done.stdout}{done.stderr}"
        assert done.stdout == ""
        assert re.match(
            r"Error: task example\.add\[[0-9a-f-]+\] failed: TypeError: unsupported operand", done.stderr
        ), done.stderr
        # The remote traceback is the worker's to log; the command shows no traceback of its own.
        assert "Traceback" not in done.stderr
        worker.wait_for_log(r"example\.add\[[0-9a-f-]+\] raised unexpected: TypeError")
        # ... and the worker keeps working
        ok = host("send", "example.add", "1", "2", "--wait", "--config", str(worker.ini), env=worker.env)
        assert (ok.returncode, ok.stdout) == (0, "3\n"), ok.stderr


# -- an extension nobody here wrote -------------------------------------------


def add_thirdparty(site: Site) -> Path:
    """A CKAN-style extension as its author would ship it: celery_import.task_imports + tasks."""
    site.add(
        "ckanext-thirdparty",
        "2.3.1",
        entry_points={"host.celery_task": {"tasks": "ckanext_thirdparty.celery_import:task_imports"}},
        files={
            "ckanext_thirdparty/__init__.py": "",
            "ckanext_thirdparty/celery_import.py": """
                def task_imports():
                    return ['ckanext_thirdparty.tasks']
            """,
            "ckanext_thirdparty/tasks.py": """
                import time
                from pathlib import Path

                from core.celery_app import celery


                @celery.task(name="thirdparty.echofunction")
                def echo(message):
                    print(message)
                    return message


                @celery.task(name="thirdparty.slow")
                def slow(started_file, seconds):
                    Path(started_file).touch()
                    time.sleep(seconds)
                    return "finished"
            """,
        },
    )
    return site.path


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_third_party_extension_task_runs_by_name(tmp_path: Path, site: Site) -> None:
    queue = f"test-{uuid.uuid4()}"
    ini = RABBITMQ_INI.format(broker=RABBITMQ_URL, results=REDIS_URL, queue=queue)
    try:
        with running_worker(tmp_path, ini, pythonpath=[add_thirdparty(site)]) as worker:
            assert re.search(
                r"thirdparty\.echofunction\s+ckanext-thirdparty\s+2\.3\.1\s+ckanext_thirdparty\.tasks",
                worker.log,
            ), worker.log
            sent = python_send(worker, "thirdparty.echofunction", ["Hello World"])
            assert {s["result"] for s in sent} == {"Hello World"}
            done = host(
                "send",
                "thirdparty.echofunction",
                '"Hello again"',
                "--wait",
                "--config",
                str(worker.ini),
                env=worker.env,
            )
            assert (done.returncode, done.stdout) == (0, "Hello again\n"), done.stderr
            worker.wait_for_log(
                r"thirdparty\.echofunction\[[0-9a-f-]+\] succeeded in [\d.e-]+s: 'Hello again'"
            )
    finally:
        _delete_rabbitmq_queue(queue)


# -- stopping ------------------------------------------------------------------


def test_sigterm_is_a_warm_shutdown(tmp_path: Path, broker: Broker, site: Site) -> None:
    started = tmp_path / "started"
    with running_worker(tmp_path, broker.ini, pythonpath=[add_thirdparty(site)]) as worker:
        config = ["--config", str(worker.ini)]
        sent = host("send", "thirdparty.slow", json.dumps(str(started)), "2", *config, env=worker.env)
        assert sent.returncode == 0, sent.stderr
        task_id = sent.stdout.strip()
        wait_until(started.exists, 60, "the task to start", worker.failure_details)
        status = worker.terminate()  # SIGTERM to the main process only, not its pool
        log = worker.log
    assert status == 0, log
    assert "Warm shutdown" in log
    # The running task was allowed to finish, and its result stored.
    assert re.search(_succeeded(task_id) + r" in [\d.e-]+s: 'finished'", log), log
    result = host("result", task_id, *config, env=worker.env)
    lines = result.stdout.splitlines()
    assert (lines[0], lines[-2:]) == ("SUCCESS (thirdparty.slow); outcome: ok", ["result:", "  finished"]), (
        result.stderr
    )


# -- load on the embedded broker ---------------------------------------------------

PRODUCER = """
import json, sys, uuid
from core.celery_app import configure

app = configure(sys.argv[1])
first, count = int(sys.argv[2]), int(sys.argv[3])
sent = {}
for i in range(first, first + count):
    task_id = str(uuid.uuid4())
    app.send_task("example.add", args=[i, i], task_id=task_id)
    sent[task_id] = 2 * i
json.dump(sent, sys.stdout)
"""
TASKS, PRODUCERS = 5000, 2


def _query(path: Path, sql: str) -> list[tuple]:
    if not path.exists():
        raise sqlite3.OperationalError(f"{path} does not exist")
    with closing(sqlite3.connect(path, timeout=30)) as db:
        return db.execute(sql).fetchall()


def test_embedded_broker_loses_and_duplicates_nothing_under_load(tmp_path: Path) -> None:
    """5,000 tasks from two concurrent producers through a worker with two processes.

    Part of the default suite: on a two-core machine it takes well under a minute.
    """
    with running_worker(tmp_path, EMBEDDED_INI) as worker:
        share = TASKS // PRODUCERS
        producers = [
            subprocess.Popen(
                [sys.executable, "-c", PRODUCER, str(worker.ini), str(n * share), str(share)],
                env=worker.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(PRODUCERS)
        ]
        expected: dict[str, int] = {}
        for producer in producers:
            try:
                out, err = producer.communicate(timeout=180)
            except subprocess.TimeoutExpired:
                for p in producers:
                    p.kill()
                pytest.fail(f"a producer did not finish sending\n{worker.failure_details()}")
            assert producer.returncode == 0, err
            expected.update(json.loads(out))
        assert len(expected) == TASKS

        results_db = tmp_path / "data" / "results.sqlite"
        broker_db = tmp_path / "data" / "broker.sqlite"

        def done_count() -> int:
            try:
                return _query(results_db, "SELECT COUNT(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")[0][
                    0
                ]
            except sqlite3.OperationalError:  # no result stored yet: no table yet
                return 0

        wait_until(
            lambda: done_count() >= TASKS,
            180,
            f"{TASKS} results",
            lambda: f"{done_count()} results so far\n{worker.failure_details()[-3000:]}",
            interval=0.2,
        )
        rows = _query(results_db, "SELECT task_id, status, result FROM celery_taskmeta")
        stored = {task_id: (status, json.loads(result)) for task_id, status, result in rows}
        wrong = {i: stored.get(i) for i, value in expected.items() if stored.get(i) != ("SUCCESS", value)}
        assert not wrong, f"{len(wrong)} tasks without their result, e.g. {list(wrong.items())[:5]}"
        assert len(stored) == TASKS

        # Delivered messages are deleted: the store does not grow with use.
        assert _query(broker_db, "SELECT COUNT(*) FROM host_message") == [(0,)]

        succeeded = re.compile(r"Task example\.add\[([0-9a-f-]+)\] succeeded")
        wait_until(
            lambda: len(succeeded.findall(worker.log)) >= TASKS,
            60,
            "the worker to log every task",
            interval=0.2,
        )
        assert worker.terminate() == 0
    runs = Counter(succeeded.findall(worker.log))
    assert set(runs) == set(expected)
    assert [task_id for task_id, n in runs.items() if n != 1] == []
    assert _query(broker_db, "SELECT COUNT(*) FROM host_message") == [(0,)]


def test_embedded_broker_sets_aside_rows_it_cannot_decode(tmp_path: Path) -> None:
    """A row no kombu producer wrote is moved aside and logged; the worker goes on."""
    garbage = [
        "not json at all",
        '"a JSON string"',
        '{"body": "abc", "properties": {"delivery_tag": "t", "body_encoding": "base64"}}',
    ]
    with running_worker(tmp_path, EMBEDDED_INI) as worker:
        broker_db = tmp_path / "data" / "broker.sqlite"
        with closing(sqlite3.connect(broker_db, timeout=30)) as db, db:
            db.executemany(
                "INSERT INTO host_message (queue, payload) VALUES ('celery', ?)", [(g,) for g in garbage]
            )
        done = host(
            "send", "example.echo", '"still here"', "--wait", "--config", str(worker.ini), env=worker.env
        )
        assert (done.returncode, done.stdout) == (0, "still here\n"), (
            f"{done.stderr}\n{worker.failure_details()}"
        )
        kept = _query(broker_db, "SELECT queue, payload, error FROM host_message_undeliverable ORDER BY id")
        assert [(queue, payload) for queue, payload, _ in kept] == [("celery", g) for g in garbage]
        assert kept[0][2].startswith("JSONDecodeError: ")
        assert (
            kept[1][2]
            == "ValueError: not a kombu message (a JSON object with 'properties' and a delivery tag)"
        )
        assert kept[2][2].startswith("Error: ")  # binascii.Error: the body is not base64
        logged = re.findall(r"embedded broker: message \d+ in queue 'celery' cannot be decoded", worker.log)
        assert len(logged) == 3, worker.log
        assert _query(broker_db, "SELECT COUNT(*) FROM host_message") == [(0,)]
        assert worker.terminate() == 0
