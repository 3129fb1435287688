"""The bulk API: ``send_many`` and ``host send --many``.

On the real RabbitMQ with publisher confirms, as production.ini runs: two
and a half batches of tasks enqueued, all executed by a real worker, every
result matching its arguments; each message exactly what ``send_task``
sends; and nothing lost when RabbitMQ drops the connection in the middle of
a send.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection

from conftest import RABBITMQ_URL, REDIS_URL
from core.bulk import BATCH, BulkSendError, item_call, send_many
from core.celery_app import HostCelery
from core.cli.params import read_jsonl
from core.config import load_config
from core.errors import UsageError
from core.startup import configure_app
from services import rabbitmq_node
from worker import HOST, host, host_env, running_worker, wait_until, write_ini

INI = """
[app:main]
celery.broker_url = {broker}
celery.result_backend = {results}
celery.result_expires = 3600
celery.task_acks_late = true
celery.worker_prefetch_multiplier = 4
celery.broker_transport_options = {{"confirm_publish": true}}
celery.task_default_delivery_mode = persistent
host.site_id = {site}
"""


class Site:
    """A ``host.site_id`` of the test's own: its queues, deleted afterwards."""

    def __init__(self, broker: str = RABBITMQ_URL) -> None:
        self.id = f"bulk{uuid.uuid4().hex[:10]}"
        self.queue = f"host:{self.id}:celery"
        self.broker = broker

    def ini(self, tmp_path: Path) -> Path:
        return write_ini(tmp_path, INI.format(broker=self.broker, results=REDIS_URL, site=self.id))

    def app(self, ini: Path) -> HostCelery:
        return configure_app(HostCelery("bulk-test", set_as_current=False), load_config(ini, environ={}))

    def drain(self) -> list[tuple[dict, dict, bytes]]:
        """Every message on the site's queue, taken off it: (headers, properties, body)."""
        taken = []
        with Connection(self.broker, connect_timeout=10) as connection:
            channel = connection.default_channel
            while (message := channel.basic_get(self.queue, no_ack=True)) is not None:
                taken.append((message.headers, message.properties, message.body))
        return taken

    def delete(self) -> None:
        with Connection(self.broker, connect_timeout=10) as connection:
            channel = connection.default_channel
            channel.queue_delete(self.queue)
            for exchange in ("celery", "celery.pidbox", "celeryev", "reply.celery.pidbox"):
                channel.exchange_delete(f"host:{self.id}:{exchange}")


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    try:
        yield s
    finally:
        s.delete()


def stored_results(ids: list[str]) -> dict[str, dict]:
    """The results the worker stored in Redis, read straight from it."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        found: dict[str, dict] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            for task_id, raw in zip(
                chunk, client.mget([f"celery-task-meta-{i}" for i in chunk]), strict=True
            ):
                if raw is not None:
                    found[task_id] = json.loads(raw)
        return found
    finally:
        client.close()


def stored_count(ids: list[str]) -> int:
    """How many of the results are in Redis (without reading them)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.exists(*[f"celery-task-meta-{i}" for i in ids]))
    finally:
        client.close()


#: Two full batches of send_many and part of a third: ids, messages and results line up across
#: batches and in a last, short one. (Ten thousand, ten full batches, proved no more.)
SEVERAL_BATCHES = 2 * BATCH + BATCH // 2


@pytest.mark.rabbitmq
@pytest.mark.redis
@pytest.mark.e2e
def test_several_batches_of_tasks_all_run_and_every_result_matches(tmp_path: Path, site: Site) -> None:
    ini_text = INI.format(broker=RABBITMQ_URL, results=REDIS_URL, site=site.id)
    with running_worker(tmp_path, ini_text, args=("-c", "2")) as worker:
        app = site.app(worker.ini)
        ids = send_many(app, "example.add", ([n, n] for n in range(SEVERAL_BATCHES)))
        assert len(set(ids)) == len(ids) == SEVERAL_BATCHES

        # Every half second: counting thousands of keys takes CPU the worker needs.
        wait_until(
            lambda: stored_count(ids) == len(ids), 600, "every task's result", worker.failure_details, 0.5
        )
    results = stored_results(ids)
    assert all(results[task_id]["status"] == "SUCCESS" for task_id in ids)
    assert [results[task_id]["result"] for task_id in ids] == [2 * n for n in range(SEVERAL_BATCHES)]


@pytest.mark.rabbitmq
def test_each_message_is_exactly_what_send_task_sends(tmp_path: Path, site: Site) -> None:
    app = site.app(site.ini(tmp_path))
    single = app.send_task("example.add", args=[1, 2], kwargs={"z": 3}).id
    [bulk] = send_many(app, "example.add", [{"args": [1, 2], "kwargs": {"z": 3}}])

    (h1, p1, b1), (h2, p2, b2) = site.drain()

    assert (h1["id"], h2["id"]) == (single, bulk)
    assert b1 == b2

    def without_id(fields: dict, task_id: str) -> dict:
        # The properties repeat the headers as application_headers: compared above.
        return {k: "ID" if v == task_id else v for k, v in fields.items() if k != "application_headers"}

    assert without_id(h1, single) == without_id(h2, bulk)
    assert without_id(p1, single) == without_id(p2, bulk)
    assert p2["delivery_mode"] == 2  # persistent, as the ini says


def test_nothing_is_lost_when_rabbitmq_drops_the_connection_mid_send(tmp_path: Path) -> None:
    """On a RabbitMQ node of the test's own: dropping every connection disturbs no other test."""
    with rabbitmq_node() as node:
        site = Site(node.url)
        app = site.app(site.ini(tmp_path))

        def items() -> Iterator[list[int]]:
            for n in range(5_000):
                if n == 2_500:  # half way through a batch: some messages sent, unconfirmed
                    node.rabbitmqctl("close_all_connections", "host-framework bulk test")
                yield [n, 0]

        ids = send_many(app, "example.add", items())

        assert len(set(ids)) == 5_000
        arrived = Counter(headers["id"] for headers, _, _ in site.drain())
    assert set(arrived) == set(ids)  # none lost; a few may have arrived twice (at least once)
    assert sum(arrived.values()) - len(ids) <= 1_000  # at most the batch in flight again


# -- items and files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ([1, 2], ([1, 2], {}, {})),
        ((1,), ([1], {}, {})),
        ({"args": [1], "kwargs": {"y": 2}}, ([1], {"y": 2}, {})),
        (
            {"kwargs": {"y": 2}, "task_id": "t-1", "countdown": 5, "queue": "slow"},
            ([], {"y": 2}, {"task_id": "t-1", "countdown": 5, "queue": "slow"}),
        ),
    ],
)
def test_an_item_is_a_list_of_arguments_or_an_object(item: object, expected: tuple) -> None:
    assert item_call(item, 0) == expected


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        (3, "item 7: int 3 is not a list of arguments or an object"),
        ({"arg": [1]}, "item 7: the key 'arg' is not one of args, kwargs, task_id, countdown, queue"),
        ({"args": "x"}, "item 7: args is 'x', not a list"),
        ({"kwargs": [1]}, "item 7: kwargs is [1], not an object"),
        ({"countdown": -1}, "item 7: countdown is -1, not a number of seconds (0 or more)"),
        ({"task_id": ""}, "item 7: task_id is '', not a non-empty string"),
    ],
)
def test_a_bad_item_says_which_and_why(item: object, problem: str) -> None:
    with pytest.raises(UsageError) as caught:
        item_call(item, 7)
    assert (
        str(caught.value)
        == f'{problem}\n  -> write each item as [arg, ...] or {{"args": [...], "kwargs": {{...}}}}'
    )


def test_a_bad_line_names_the_file_and_the_line() -> None:
    lines = ["[1, 2]\n", "\n", '{"args": [1], "kwargs": {"y": 2}}\n', "[1,\n"]
    items = read_jsonl(lines, "tasks.jsonl")
    assert next(items) == [1, 2]
    assert next(items) == {"args": [1], "kwargs": {"y": 2}}
    with pytest.raises(UsageError) as caught:
        next(items)
    assert str(caught.value).startswith("tasks.jsonl, line 4: not a JSON value: ")


EMBEDDED = """
[app:main]
celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite
"""


def test_host_send_many_from_a_file_on_the_embedded_broker(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps([n, 1]) + "\n" for n in range(200)), encoding="utf-8")
    with running_worker(tmp_path, EMBEDDED, args=("-c", "2")) as worker:
        sent = host("send", "example.add", "--many", str(tasks), "--config", str(worker.ini), env=worker.env)
        assert (sent.returncode, sent.stderr) == (0, "sent 200 tasks of example.add\n")
        ids = sent.stdout.split()
        assert len(set(ids)) == 200
        app = configure_app(HostCelery("reader", set_as_current=False), load_config(worker.ini, environ={}))
        try:
            assert [app.AsyncResult(i).get(timeout=120) for i in ids] == [n + 1 for n in range(200)]
        finally:
            app.close()


def test_a_bad_file_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, EMBEDDED)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('[1, 2]\n{"args": [1], "kwarg": {}}\n', encoding="utf-8")

    done = host(
        "send", "example.add", "--many", str(tasks), "--config", str(ini), env=host_env(), cwd=tmp_path
    )

    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"Error: {tasks}, line 2: the key 'kwarg' is not one of args, kwargs, task_id, countdown, queue\n"
        '  -> write each item as [arg, ...] or {"args": [...], "kwargs": {...}}\n'
    )
    assert not (tmp_path / "data" / "broker.sqlite").exists() or _queued(tmp_path) == 0


def _queued(folder: Path) -> int:
    import sqlite3

    with sqlite3.connect(folder / "data" / "broker.sqlite") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return sum(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables if "message" in t)


def test_stdin_stops_at_a_bad_line_and_says_what_was_sent(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, EMBEDDED)
    done = subprocess.run(
        [HOST, "send", "example.add", "--many", "-", "--config", str(ini)],
        input="[1, 2]\n[3, 4]\nnot json\n",
        capture_output=True,
        text=True,
        env=host_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert len(done.stdout.split()) == 2  # the ids of the two lines sent
    assert done.stderr.startswith("Error: stdin, line 3: not a JSON value: ")
    assert "; the 2 items before it were sent\n" in done.stderr


def test_arguments_given_with_many_are_refused(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, EMBEDDED)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("[1, 2]\n", encoding="utf-8")
    done = host(
        "send", "example.add", "1", "--many", str(tasks), "--config", str(ini), env=host_env(), cwd=tmp_path
    )
    assert (done.returncode, done.stderr.splitlines()[0]) == (
        2,
        "Error: --many takes the arguments from its file; ARG cannot be given with it",
    )


@pytest.mark.rabbitmq
def test_a_bad_item_in_python_reports_the_ids_sent_before_it(tmp_path: Path, site: Site) -> None:
    app = site.app(site.ini(tmp_path))
    with pytest.raises(BulkSendError) as caught:
        send_many(app, "example.add", [[1, 1], [2, 2], {"args": [object()]}])
    assert str(caught.value).startswith("item 2 of example.add cannot be serialised as json: "), caught.value
    assert "; the 2 items before it were sent" in str(caught.value)
    assert [h["id"] for h, _, _ in site.drain()] == caught.value.sent
