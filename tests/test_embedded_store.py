"""The embedded broker's store, through kombu: what RabbitMQ would do, across processes.

Each "process" here is a separate kombu connection, so a separate transport
with its own in-memory state, as in two processes: what one declares or
publishes reaches the other only through the store. A consumer that dies is
a real subprocess killed with SIGKILL. The worker-level behaviour (remote
control, events, Flower, a killed worker) is in ``test_embedded_broker.py``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from core import embedded
from core.embedded_store import store_for
from worker import HOST, host_env, wait_until, write_ini

embedded.register()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "data" / "broker.sqlite"


def connect(store: Path, **options: float) -> Connection:
    return Connection(f"embedded+sqlite:///{store}", transport_options=options)


@pytest.fixture
def conn(store: Path) -> Iterator[Connection]:
    with connect(store) as c:
        yield c


def rows(store: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(store)) as db:
        return db.execute(sql).fetchall()


def test_a_fanout_published_by_one_process_reaches_the_queues_bound_by_others(store: Path) -> None:
    exchange = Exchange("broadcast", type="fanout", durable=False)
    first, second = Queue("node-a", exchange), Queue("node-b", exchange)
    with connect(store) as a, connect(store) as b, connect(store) as sender:
        first(a.default_channel).declare()
        second(b.default_channel).declare()
        with sender.Producer() as producer:
            producer.publish({"hello": "all"}, exchange=exchange, routing_key="")
        for conn, queue in ((a, first), (b, second)):
            message = queue(conn.default_channel).get(no_ack=True)
            assert message is not None and message.payload == {"hello": "all"}


def test_a_message_stays_until_acknowledged_and_a_rejected_one_comes_back_first(conn: Connection) -> None:
    queue = Queue("work")(conn.default_channel)
    queue.declare()
    with conn.Producer() as producer:
        for n in (1, 2):
            producer.publish({"n": n}, routing_key="work")
    first = queue.get()
    assert first.payload == {"n": 1} and not first.delivery_info["redelivered"]
    assert queue.queue_declare(passive=True).message_count == 1  # one waiting, one held
    first.reject(requeue=True)
    again = queue.get()
    assert again.payload == {"n": 1} and again.delivery_info["redelivered"]
    again.ack()
    assert queue.get().payload == {"n": 2}


CONSUMER = """
import os, signal, sys
from kombu import Connection, Queue
from core import embedded
embedded.register()
conn = Connection("embedded+sqlite:///{store}", transport_options={{"lease_seconds": 3}})
queue = Queue("jobs")(conn.default_channel)
queue.consume(callback=lambda body, message: None)
taken = [queue.get().payload["n"] for _ in range(2)]
print(taken, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
os.kill(os.getpid(), signal.SIGSTOP)  # stalled: alive, but its lease runs out
try:
    conn.drain_events(timeout=60)  # returns at once with LeaseLost once the lease thread notices
except conn.connection_errors as e:
    print(type(e).__name__, e, flush=True)
except BaseException as e:
    print("unexpected:", type(e).__name__, e, flush=True)
"""


def publish_jobs(store: Path, count: int) -> None:
    with connect(store) as conn:
        Queue("jobs")(conn.default_channel).declare()
        with conn.Producer() as producer:
            for n in range(1, count + 1):
                producer.publish({"n": n}, routing_key="jobs")


def held(store: Path) -> int:
    return len(rows(store, "SELECT id FROM host_message WHERE holder IS NOT NULL"))


def redelivered(queue: Queue, count: int) -> list[int]:
    got: list[int] = []

    def all_back() -> bool:
        message = queue.get()  # a consumer (not no_ack): it sweeps, once a second
        if message is not None:
            assert message.delivery_info["redelivered"], message.payload
            got.append(message.payload["n"])
            message.ack()
        return len(got) == count

    wait_until(all_back, 30, f"{count} messages delivered again")
    return sorted(got)


def test_a_killed_consumers_messages_are_delivered_again(store: Path, tmp_path: Path) -> None:
    """A subprocess takes two messages without acknowledging them, and is killed (SIGKILL).

    Its process is gone from this machine, so the next consumer's first sweep
    releases them, without waiting for the lease to run out.
    """
    publish_jobs(store, 2)
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER.format(store=store), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), "kill"], capture_output=True, text=True, env=host_env()
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == "[1, 2]"
    assert held(store) == 2
    with connect(store, lease_seconds=30) as survivor:
        assert redelivered(Queue("jobs")(survivor.default_channel), 2) == [1, 2]
    assert rows(store, "SELECT COUNT(*) FROM host_consumer") == [(0,)]


def test_a_stalled_consumer_loses_its_lease_and_its_connection(store: Path, tmp_path: Path) -> None:
    """A consumer that stops renewing (SIGSTOP) while alive: its lease runs out.

    Its messages are released once the lease (3 s) has run out. When it runs
    again, it finds its lease gone, and its connection reports an error
    kombu and Celery treat as a lost connection, so that they reconnect and
    declare their queues anew.
    """
    publish_jobs(store, 2)
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER.format(store=store), encoding="utf-8")
    stalled = subprocess.Popen(
        [sys.executable, str(script), "stall"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=host_env(),
    )
    try:
        assert stalled.stdout is not None
        assert stalled.stdout.readline().strip() == "[1, 2]"
        with connect(store, lease_seconds=30) as survivor:
            assert redelivered(Queue("jobs")(survivor.default_channel), 2) == [1, 2]
        os.kill(stalled.pid, signal.SIGCONT)
        out, err = stalled.communicate(timeout=120)
    finally:
        stalled.kill()
    assert out.startswith("LeaseLost embedded broker: consumer "), out + err
    assert "lost its lease" in out


def test_a_closed_consumer_puts_back_what_it_held(store: Path) -> None:
    with connect(store) as first:
        queue = Queue("tidy")(first.default_channel)
        queue.declare()
        with first.Producer() as producer:
            producer.publish({"n": 1}, routing_key="tidy")
        assert queue.get().payload == {"n": 1}  # held, never acknowledged
    with connect(store) as second:
        message = Queue("tidy")(second.default_channel).get()
        assert message.payload == {"n": 1} and message.delivery_info["redelivered"]


def test_auto_delete_and_reply_queues_do_not_pile_up(store: Path) -> None:
    """The tables are back to their size once a consumer of an auto-delete queue has gone."""
    with connect(store) as setup:
        Queue("durable-one")(setup.default_channel).declare()
    before = {t: rows(store, f"SELECT COUNT(*) FROM {t}") for t in ("host_queue", "host_binding")}
    exchange = Exchange("replies", type="direct", durable=False)
    for n in range(20):
        with connect(store) as conn:
            queue = Queue(f"reply-{n}", exchange, routing_key=f"r{n}", auto_delete=True)(conn.default_channel)
            queue.declare()
            with conn.Consumer(queue, callbacks=[lambda body, message: None], no_ack=True):
                pass  # consumed, then cancelled: the last consumer is gone
    after = {t: rows(store, f"SELECT COUNT(*) FROM {t}") for t in ("host_queue", "host_binding")}
    assert after == before


def test_a_message_past_its_queues_ttl_is_dropped(conn: Connection) -> None:
    queue = Queue("short-lived", message_ttl=0.2)(conn.default_channel)
    queue.declare()
    with conn.Producer() as producer:
        producer.publish({"n": 1}, routing_key="short-lived")
        producer.publish({"n": 2}, routing_key="short-lived", expiration=0.2)
    wait_until(lambda: queue.get(no_ack=True) is None, 10, "the expired messages no longer deliverable")


def test_a_store_of_the_first_version_is_upgraded_with_its_messages(store: Path, tmp_path: Path) -> None:
    """Version 1 had no holder column; its waiting messages survive the upgrade."""
    with connect(store) as conn, conn.Producer() as producer:
        producer.publish({"kept": True}, routing_key="legacy")
    payload = rows(store, "SELECT payload FROM host_message")[0][0]  # a message as kombu writes it
    store = tmp_path / "old" / "broker.sqlite"
    store.parent.mkdir()
    with closing(sqlite3.connect(store)) as db:
        db.executescript(
            "CREATE TABLE host_message (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL,"
            " payload TEXT NOT NULL);"
            "CREATE INDEX host_message_queue ON host_message (queue, id);"
        )
        db.execute("INSERT INTO host_message (queue, payload) VALUES ('legacy', ?)", (payload,))
        db.commit()
    with connect(store) as new:
        message = Queue("legacy")(new.default_channel).get()
        assert message.payload == {"kept": True}
        message.ack()
    assert rows(store, "PRAGMA user_version") == [(2,)]
    assert rows(store, "SELECT COUNT(*) FROM host_message") == [(0,)]


def test_expired_results_are_deleted(tmp_path: Path) -> None:
    from core.app import HostCelery
    from core.config import load_config
    from core.startup import configure_app

    ini = write_ini(
        tmp_path,
        "[app:main]\n"
        "celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite\n"
        "celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite\n"
        "celery.result_expires = 1\n"
        "host.plugins =\n",
    )
    app = configure_app(HostCelery("expiry"), load_config(ini, environ={}))
    backend = app.backend
    backend.store_result("old", 1, "SUCCESS")
    stored = rows(tmp_path / "data" / "results.sqlite", "SELECT date_done FROM celery_taskmeta")[0][0]

    stores = iter(range(1_000_000))

    def expired() -> bool:
        backend._next_cleanup = 0  # as if a minute had passed since the last cleanup
        backend.store_result(f"new-{next(stores)}", 2, "SUCCESS")  # storing is what cleans up
        return backend.get_task_meta("old")["status"] == "PENDING"

    wait_until(expired, 30, f"the result stored at {stored} deleted after result_expires (1 s)")
    assert backend.get_task_meta(f"new-{next(stores) - 1}")["result"] == 2  # the newest is kept
    app.close()


def test_doctor_shows_the_store_size_and_the_messages_waiting_per_queue(tmp_path: Path) -> None:
    ini = write_ini(
        tmp_path,
        "[app:main]\n"
        "celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite\n"
        "celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite\n"
        "host.plugins =\n",
    )
    store = tmp_path / "data" / "broker.sqlite"
    with connect(store) as conn:
        Queue("reports")(conn.default_channel).declare()
        with conn.Producer() as producer:
            for n in range(3):
                producer.publish({"n": n}, routing_key="reports")
        Queue("reports")(conn.default_channel).get()  # one held by this consumer
        done = subprocess.run(
            [HOST, "doctor", "--config", str(ini)], capture_output=True, text=True, env=host_env()
        )
    line = next(x for x in done.stdout.splitlines() if x.startswith("ok   embedded broker:"))
    assert f"{store}, " in line
    assert "reports 2 (+1 held)" in line, line


def test_the_wake_folder_and_fifos_are_private(store: Path, conn: Connection) -> None:
    Queue("private")(conn.default_channel).declare()
    with conn.Consumer(Queue("private"), callbacks=[lambda body, message: None]):
        wake = store_for(store).wake_folder
        assert wake.stat().st_mode & 0o777 == 0o700
        fifos = list(wake.iterdir())
        assert fifos and all(f.stat().st_mode & 0o077 == 0 for f in fifos)
        assert os.stat(store).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("options", ['{"lease_seconds": 1}', '{"polling_interval": "soon"}'])
def test_a_lease_or_polling_interval_it_cannot_use_is_a_configuration_error(
    tmp_path: Path, options: str
) -> None:
    ini = write_ini(
        tmp_path,
        "[app:main]\n"
        "celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite\n"
        f"celery.broker_transport_options = {options}\n"
        "host.plugins =\n",
    )
    done = subprocess.run(
        [HOST, "doctor", "--config", str(ini)], capture_output=True, text=True, env=host_env()
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "celery.broker_transport_options: " in done.stdout
    assert "is not a number of seconds of at least" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
