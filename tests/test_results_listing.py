"""``host results``: recent results listed from the embedded store, Redis and a ``db+`` database.

One real worker per result store (module scope): the embedded broker and store
of development.ini; RabbitMQ with Redis for results (a site of its own and a
``global_keyprefix`` of its own, so concurrent tests never meet in Redis db 0,
and a result stored under Celery's plain prefix must not be listed); the
embedded broker with Celery's SQL store (``db+sqlite://``), and with
``db+postgresql`` on the machine's PostgreSQL (tables of the test's own,
dropped afterwards; like RabbitMQ, it runs and never skips with CI=true). Each worker runs the
same four tasks, sent one after the other with ``--wait``, so their order is
known: an addition, a division by zero, a call with a secret in its arguments
(which fails: the task takes no such keyword), an echo. The listings are read
with separate ``host`` processes, as a user would. Listing needs no worker:
the tests at the end have none.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import RABBITMQ_URL, REDIS_URL, _require
from worker import Worker, development_ini, host, host_env, running_worker, write_ini

pytestmark = pytest.mark.e2e

STORES = [
    pytest.param("embedded"),
    pytest.param("rabbitmq+redis", marks=[pytest.mark.rabbitmq, pytest.mark.redis]),
    pytest.param("embedded+db"),
    # PostgreSQL with trust authentication, as on the CI machine (runs, never skips, with CI=true).
    pytest.param("embedded+postgresql"),
]
POSTGRESQL_URL = os.environ.get("HOST_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: What each store runs, in this order: (what for, task, arguments, exit status of host send --wait).
TASKS = [
    ("add", "example.add", ["2", "3"], 0),
    ("divide", "example.divide", ["1", "0"], 1),
    (
        "secret",
        "example.divide",
        ['"postgresql://app:hunter2@db/shop"', "--kwargs", '{"y": 0}'],
        1,
    ),
    ("echo", "example.echo", ['"hello"'], 0),
]
NEWEST_FIRST = ["echo", "secret", "divide", "add"]


@dataclass
class Store:
    kind: str
    worker: Worker
    #: task ids sent by the fixture, by what they are for
    sent: dict[str, str] = field(default_factory=dict)

    def host(self, *args: str) -> subprocess.CompletedProcess[str]:
        return host(*args, "--config", str(self.worker.ini), env=self.worker.env)

    def results(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.host("results", *args)
        assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{self.worker.failure_details()}"
        return done

    def listed(self, *args: str) -> list[str]:
        """What ``host results ARGS`` lists, by what it was sent for, in its order (ours only)."""
        names = {task_id: what for what, task_id in self.sent.items()}
        rows = [line.split()[0] for line in self.results(*args).stdout.splitlines()[2:]]
        return [names.get(task_id, task_id) for task_id in rows]

    def json(self, *args: str) -> dict[str, dict]:
        """``host results --json ARGS``: the rows by what they were sent for, in the listed order."""
        names = {task_id: what for what, task_id in self.sent.items()}
        found = json.loads(self.results("--json", *args).stdout)["results"]
        return {names.get(row["task_id"], row["task_id"]): row for row in found}


def settings_for(kind: str, directory: Path, site: str) -> dict[str, str]:
    if kind == "rabbitmq+redis":
        return {
            "celery.broker_url": RABBITMQ_URL,
            "celery.broker_transport_options": '{"confirm_publish": true}',
            "celery.result_backend": REDIS_URL,
            "celery.result_backend_transport_options": json.dumps({"global_keyprefix": f"{site}:"}),
            "celery.result_expires": "3600",
            # A site of its own: every queue is host:SITE:..., apart from concurrent tests.
            "host.site_id": site,
        }
    if kind == "embedded+db":
        return {"celery.result_backend": f"db+sqlite:///{directory}/results-db.sqlite"}
    if kind == "embedded+postgresql":
        # Tables of the test's own, in a database other runs share.
        return {
            "celery.result_backend": "db+" + POSTGRESQL_URL.replace("postgresql://", "postgresql+psycopg://"),
            "celery.database_table_names": json.dumps(_pg_tables(site)),
        }
    return {}


def _pg_tables(site: str) -> dict[str, str]:
    return {"task": f"{site}_taskmeta", "group": f"{site}_tasksetmeta"}


def _drop_pg_tables(site: str) -> None:
    import psycopg

    with closing(psycopg.connect(POSTGRESQL_URL, autocommit=True)) as db:
        for table in _pg_tables(site).values():
            db.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    kind = request.param
    if kind == "rabbitmq+redis":  # conftest's check, before this module-wide worker starts
        _require("RabbitMQ", 5672)
        _require("Redis", 6379)
    if kind == "embedded+postgresql":  # psycopg comes with the test extra
        _require("PostgreSQL", 5432)
    directory = tmp_path_factory.mktemp(kind.replace("+", "-"))
    site = f"t{uuid.uuid4().hex[:10]}"
    foreign = _foreign_result() if kind == "rabbitmq+redis" else None
    try:
        with running_worker(directory, development_ini(settings_for(kind, directory, site))) as worker:
            found = Store(kind, worker)
            for what, name, args, status in TASKS:
                task_id = str(uuid.uuid4())
                done = found.host("send", name, *args, "--task-id", task_id, "--wait")
                assert done.returncode == status, f"{done.stdout}{done.stderr}\n{worker.failure_details()}"
                found.sent[what] = task_id
            if foreign:
                found.sent["foreign"] = foreign
            yield found
            assert worker.terminate() == 0, worker.failure_details()
    finally:
        if kind == "rabbitmq+redis":
            _delete_site(site, foreign)
        if kind == "embedded+postgresql":
            _drop_pg_tables(site)


def _foreign_result() -> str:
    """A result under Celery's plain key prefix (another host's): a listing with a prefix skips it."""
    import redis

    task_id = str(uuid.uuid4())
    meta = {
        "task_id": task_id,
        "status": "FAILURE",
        "result": {"exc_type": "ValueError", "exc_message": ["not ours"], "exc_module": "builtins"},
        "date_done": datetime.now(timezone.utc).isoformat(),
        "name": "example.divide",
    }
    with closing(redis.Redis.from_url(REDIS_URL)) as client:
        client.set(f"celery-task-meta-{task_id}", json.dumps(meta), ex=600)
    return task_id


def _delete_site(site: str, foreign: str | None) -> None:
    """The site's queues and exchanges on RabbitMQ, and every Redis key the test made."""
    import redis
    from kombu import Connection

    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        channel = connection.default_channel
        for queue in ("celery", "example"):
            channel.queue_delete(f"host:{site}:{queue}")
        for exchange in ("celery", "example", "celery.pidbox", "celeryev", "reply.celery.pidbox"):
            channel.exchange_delete(f"host:{site}:{exchange}")
    with closing(redis.Redis.from_url(REDIS_URL)) as client:
        keys = list(client.scan_iter(match=f"{site}:*", count=500))
        if foreign:
            keys.append(f"celery-task-meta-{foreign}")
        if keys:
            client.delete(*keys)


# -- with a worker's results --------------------------------------------------------


def test_state_failure_lists_the_failed_tasks(store: Store) -> None:
    done = store.results("--state", "FAILURE")
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Results (state FAILURE) in "), done.stdout
    assert lines[1].split() == ["TASK", "ID", "STATE", "TASK", "DATE", "DONE", "WORKER", "OUTCOME", "RUNTIME"]
    divide = next(line for line in lines if store.sent["divide"] in line).split()
    assert divide[1:3] == ["FAILURE", "example.divide"], done.stdout
    assert divide[5].startswith("test-") and divide[6] == "failed", done.stdout
    assert store.listed("--state", "failure") == ["secret", "divide"]
    assert store.listed("--state", "success") == ["echo", "add"]


def test_newest_first_and_limit(store: Store) -> None:
    assert store.listed() == NEWEST_FIRST
    assert store.listed("--limit", "2") == NEWEST_FIRST[:2]
    assert store.listed("--state", "FAILURE", "--limit", "1") == ["secret"]


def test_task_filter_by_name_or_glob(store: Store) -> None:
    assert store.listed("--task", "example.divide") == ["secret", "divide"]
    assert store.listed("--task", "example.e*") == ["echo"]
    assert store.listed("--task", "*.d*e") == ["secret", "divide"]
    assert store.listed("--task", "example.ech") == []
    none = store.results("--task", "example.nothing", "--state", "SUCCESS")
    assert none.stdout.startswith("No results (state SUCCESS, task example.nothing) in "), none.stdout


def test_since_a_time_or_a_duration(store: Store) -> None:
    divided = store.json()["divide"]["date_done"]
    assert store.listed("--since", divided) == ["echo", "secret", "divide"]
    assert store.listed("--since", "1h") == NEWEST_FIRST
    assert store.listed("--since", "2100-01-01T00:00") == []


def test_json_has_the_arguments_masked_the_error_and_the_report(store: Store) -> None:
    text = store.results("--json").stdout
    assert "hunter2" not in text
    rows = store.json()
    assert list(rows) == NEWEST_FIRST
    divide, secret, add = rows["divide"], rows["secret"], rows["add"]
    assert (divide["state"], divide["name"], divide["args"], divide["kwargs"]) == (
        "FAILURE",
        "example.divide",
        [1, 0],
        {},
    )
    assert divide["error"] == "ZeroDivisionError: division by zero" and divide["result"] is None
    assert divide["worker"].startswith("test-")
    assert datetime.fromisoformat(divide["date_done"]).utcoffset().total_seconds() == 0
    assert secret["args"] == ["postgresql://app:**@db/shop"]
    assert secret["kwargs"] == {"y": 0}
    assert secret["error"].startswith("TypeError: ")
    assert (add["result"], add["error"]) == (5, None)
    assert (add["outcome"], divide["outcome"]) == ("ok", "failed")
    assert add["runtime"] >= 0 and datetime.fromisoformat(add["started"])


# -- no worker needed --------------------------------------------------------------


EMBEDDED_INI = """
[app:main]
celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
celery.result_backend = {results}
"""


def _ini(tmp_path: Path, results: str) -> Path:
    return write_ini(tmp_path, EMBEDDED_INI.format(results=results))


def _host(ini: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return host(*args, "--config", str(ini), env=host_env())


def test_a_backend_that_keeps_no_list_is_a_clear_error(tmp_path: Path) -> None:
    ini = _ini(tmp_path, "rpc://")
    done = _host(ini, "results")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    first, hint = done.stderr.splitlines()
    assert first == (
        f"Error: {ini}, key 'celery.result_backend': the result backend rpc:// (RPCBackend) keeps no "
        "listable results: they can be listed from the embedded store, a db+ database or Redis"
    )
    assert hint.startswith("  -> set celery.result_backend to a store that keeps results: embedded+sqlite:")
    assert "Traceback" not in done.stderr


def test_a_bad_state_or_time_says_what_to_write(tmp_path: Path) -> None:
    ini = _ini(tmp_path, "embedded+sqlite:///%(here)s/data/results.sqlite")
    state = _host(ini, "results", "--state", "FAILUER")
    assert (state.returncode, state.stderr) == (
        2,
        "Error: state 'FAILUER' is not a task state\n  -> did you mean FAILURE?\n",
    )
    since = _host(ini, "results", "--since", "yesterday")
    assert since.returncode == 2
    assert since.stderr.startswith("Error: --since 'yesterday' is neither an ISO 8601 time nor a duration\n")
    empty = _host(ini, "results")
    assert (empty.returncode, empty.stdout) == (
        0,
        f"No results in embedded+sqlite:///{tmp_path}/data/results.sqlite\n",
    )


def test_an_older_sql_store_without_names_or_reports_is_listed_with_a_note(tmp_path: Path) -> None:
    """Results stored without result_extended, in a table with no host_report column; a report row skipped."""
    url = f"db+sqlite:///{tmp_path}/old.sqlite"
    task_id = str(uuid.uuid4())
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from celery import Celery; "
            "app = Celery('old', backend=sys.argv[1]); app.backend.store_result(sys.argv[2], 7, 'SUCCESS')",
            url,
            task_id,
        ],
        check=True,
        env=host_env(),
        timeout=120,
    )
    with closing(sqlite3.connect(tmp_path / "old.sqlite")) as db, db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(celery_taskmeta)")}
        assert "host_report" not in columns
        db.execute("INSERT INTO celery_taskmeta (task_id, status) VALUES ('report-1', 'HOST_REPORT')")
    ini = _ini(tmp_path, url)
    done = _host(ini, "results")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["TASK", "ID", "STATE", "TASK", "DATE", "DONE", "WORKER"]
    assert [line.split()[:2] for line in lines[2:-1]] == [[task_id, "SUCCESS"]]
    assert lines[-1] == (
        "1 of these results have no task name, arguments or worker: stored while "
        "celery.result_extended was off, or by a revoke of a task no worker had received"
    )
    assert _host(ini, "results", "--task", "example.*").stdout.startswith("No results (task example.*)")


def test_recent_results_in_the_toolkit(tmp_path: Path) -> None:
    """What a web application calls: plugins.recent_results, configured from $HOST_CONFIG."""
    ini = _ini(tmp_path, "embedded+sqlite:///%(here)s/data/results.sqlite")
    script = (
        "from plugins import celery, recent_results\n"
        "celery.configure_from_environment()\n"
        "celery.backend.store_result('t-1', {'password': 'p'}, 'SUCCESS')\n"
        "celery.backend.store_result('t-2', ValueError('no'), 'FAILURE')\n"
        "rows = recent_results(state='failure')\n"
        "print([(r.task_id, r.state, r.error) for r in rows])\n"
        "print(recent_results(state='SUCCESS')[0].as_dict()['result'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=host_env({"HOST_CONFIG": str(ini)}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[('t-2', 'FAILURE', 'ValueError: no')]", "{'password': '********'}"]
