"""A task's own account, end to end: its context, log lines, outcome and progress.

One real worker per result store (module scope): the embedded broker and
store of development.ini, RabbitMQ with Redis for results, and the embedded
broker with Celery's SQL store (``db+sqlite://``). Each runs example_ext's
``example.ingest``, which logs through ``self.context.log``, reads its
plugin's settings, reports progress and fails its own check for an item
named ``bad...`` while Celery's state stays SUCCESS. What the tests read,
they read with separate ``host`` processes, as a user would; the last test
stops the worker first.
"""

from __future__ import annotations

import json
import logging
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import RABBITMQ_URL, REDIS_URL
from core.task_context import Report
from worker import Worker, development_ini, host, running_worker, wait_until

KINDS = [
    pytest.param("embedded"),
    pytest.param("rabbitmq+redis", marks=[pytest.mark.rabbitmq, pytest.mark.redis]),
    pytest.param("embedded+db"),
]


@dataclass
class Setup:
    kind: str
    worker: Worker
    #: task ids sent by the fixture, by what they are for
    sent: dict[str, str] = field(default_factory=dict)

    def host(self, *args: str) -> subprocess.CompletedProcess[str]:
        return host(*args, "--config", str(self.worker.ini), env=self.worker.env)

    def send(self, *args: str) -> str:
        done = self.host("send", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def view(self, task_id: str) -> dict:
        done = self.host("result", task_id, "--json")
        return json.loads(done.stdout)


def settings_for(kind: str, directory: Path) -> dict[str, str]:
    settings = {"host.task_log.max_bytes": "2048"}
    if kind == "rabbitmq+redis":
        # A site of its own: every queue is host:SITE:..., apart from concurrent tests.
        settings |= {
            "celery.broker_url": RABBITMQ_URL,
            "celery.result_backend": REDIS_URL,
            "celery.result_expires": "3600",
            "host.site_id": f"t{uuid.uuid4().hex[:10]}",
            "host.locks.url": REDIS_URL,
        }
    elif kind == "embedded+db":
        settings["celery.result_backend"] = f"db+sqlite:///{directory}/results-db.sqlite"
    return settings


@pytest.fixture(scope="module", params=KINDS)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    kind = request.param
    directory = tmp_path_factory.mktemp(kind.replace("+", "-"))
    settings = settings_for(kind, directory)
    ini = development_ini(settings).replace("greeting = Hello", "greeting = Howdy")
    with running_worker(directory, ini, args=("-c", "3")) as worker:
        found = Setup(kind, worker)
        # Run while the tests start: 3 items, the second fails its own check;
        # then 60 quick items whose log overflows host.task_log.max_bytes.
        found.sent["ingest"] = found.send("example.ingest", '["a", "bad-b", "c"]', "0.05")
        found.sent["chatty"] = found.send("example.ingest", json.dumps([f"item-{n}" for n in range(60)]), "0")
        try:
            yield found
        finally:
            if worker.returncode is None:
                assert worker.terminate() == 0, worker.failure_details()
            if kind == "rabbitmq+redis":
                _delete_site_queues(settings["host.site_id"])


def _delete_site_queues(site: str) -> None:
    from kombu import Connection

    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        channel = connection.default_channel
        for queue in ("celery", "example"):
            channel.queue_delete(f"host:{site}:{queue}")


def finished(setup: Setup, task_id: str) -> dict:
    def done() -> dict | None:
        view = setup.view(task_id)
        return view if view["state"] in ("SUCCESS", "FAILURE", "REVOKED") else None

    return wait_until(done, 60, f"task {task_id} to finish", setup.worker.failure_details)  # type: ignore[return-value]


# -- while a task runs --------------------------------------------------------------


def test_a_running_task_is_started_then_shows_its_progress_and_log_so_far(setup: Setup) -> None:
    """STARTED is tracked by default; PROGRESS carries the count and the log up to now."""
    sleeping = setup.send("example.sleep", "3")
    wait_until(
        lambda: setup.view(sleeping)["state"] == "STARTED", 60, "STARTED", setup.worker.failure_details
    )
    task_id = setup.send("example.ingest", '["one", "two", "three", "four", "five", "six"]', "0.5")

    def progressing() -> dict | None:
        view = setup.view(task_id)
        return view if view["state"] == "PROGRESS" and view["log"]["info"] else None

    view = wait_until(progressing, 60, "PROGRESS with a log line", setup.worker.failure_details)
    assert view["outcome"] is None  # not decided before the end
    assert view["progress"]["total"] == 6 and 1 <= view["progress"]["current"] <= 6
    assert view["log"]["info"][0]["message"] == "ingesting 6 items (greeting from [plugin:example]: Howdy)"
    shown = setup.host("result", task_id)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("PROGRESS (example.ingest)"), shown.stdout
    assert "  progress:  " in shown.stdout and "/6 (" in shown.stdout
    assert finished(setup, task_id)["outcome"] == "ok"
    assert finished(setup, sleeping)["result"] == {"slept": 3}


def test_send_wait_prints_each_progress_update_then_the_result(setup: Setup) -> None:
    """Piped, ``host send --wait`` prints one plain line per update on stderr; stdout keeps the result."""
    done = setup.host("send", "example.ingest", '["a", "b", "c", "d"]', "0.4", "--wait")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ingested": 4, "failed": 0}
    updates = [line for line in done.stderr.splitlines() if line.startswith("progress: ")]
    assert len(updates) >= 2, done.stderr
    assert updates[-1] == "progress: 4/4 (100%) item d"
    assert all(line.startswith("progress: ") for line in done.stderr.splitlines()), done.stderr


def test_what_a_task_logged_survives_its_termination(setup: Setup) -> None:
    """A terminated task's REVOKED state keeps the log and progress it stored while it ran."""
    task_id = setup.send("example.ingest", json.dumps([f"item-{n}" for n in range(40)]), "0.5")

    def logged() -> dict | None:
        view = setup.view(task_id)
        return view if len(view["log"]["info"]) >= 2 else None

    wait_until(logged, 60, "two log lines stored while it runs", setup.worker.failure_details)
    done = setup.host("revoke", task_id, "--terminate")
    assert done.returncode == 0, done.stderr
    view = finished(setup, task_id)
    assert (view["state"], view["outcome"]) == ("REVOKED", "failed")
    assert view["log"]["info"][0]["message"] == "ingesting 40 items (greeting from [plugin:example]: Howdy)"
    assert view["progress"]["total"] == 40 and view["started"]
    shown = setup.host("result", task_id)
    assert shown.returncode == 1 and "ingested 'item-0'" in shown.stdout, shown.stdout


def test_a_running_task_that_reports_nothing_shows_when_it_started(setup: Setup) -> None:
    task_id = setup.send("example.sleep", "4")
    shown = wait_until(
        lambda: (text := setup.host("result", task_id).stdout).startswith("STARTED") and text,
        60,
        "STARTED",
        setup.worker.failure_details,
    )
    assert "  started:   " in shown and ", running" in shown, shown  # type: ignore[operator]
    assert finished(setup, task_id)["runtime"] >= 4


# -- after a task ran -----------------------------------------------------------------


def test_result_shows_the_arguments_with_secrets_masked(setup: Setup) -> None:
    task_id = setup.send("example.word_count", '"password=hunter2 in three"')
    view = finished(setup, task_id)
    assert view["args"] == ["password=** in three"]
    shown = setup.host("result", task_id)
    assert '  arguments: "password=** in three"' in shown.stdout, shown.stdout
    assert "hunter2" not in shown.stdout + json.dumps(view)
    assert view["result"] == 3 and view["outcome"] == "ok"


def test_a_long_log_is_cut_and_says_so(setup: Setup) -> None:
    view = finished(setup, setup.sent["chatty"])
    kept, cut = len(view["log"]["info"]), view["log_cut"]["info"]
    assert kept > 0 and cut > 0 and kept + cut == 61, view["log_cut"]
    assert view["log"]["info"][0]["message"].startswith("ingesting 60 items")
    shown = setup.host("result", setup.sent["chatty"])
    assert f"  ... {cut} more lines not kept (host.task_log.max_bytes)" in shown.stdout


def test_a_failed_task_shows_its_error_and_where_it_raised(setup: Setup) -> None:
    task_id = setup.send("example.divide", "1", "0")
    view = finished(setup, task_id)
    assert (view["state"], view["outcome"]) == ("FAILURE", "failed")
    assert view["error"] == "ZeroDivisionError: division by zero"
    shown = setup.host("result", task_id)
    assert shown.returncode == 1
    assert "error: ZeroDivisionError: division by zero" in shown.stdout
    assert 'example_ext/tasks.py", line' in shown.stdout and "in divide" in shown.stdout
    assert shown.stderr.startswith(f"Error: task example.divide[{task_id}] failed: ZeroDivisionError")


def test_zz_logs_and_own_outcome_outlive_the_worker(setup: Setup) -> None:
    """Runs last in the module: it stops the worker, then reads what the task kept."""
    task_id = setup.sent["ingest"]
    finished(setup, task_id)
    assert setup.worker.terminate() == 0, setup.worker.failure_details()

    view = setup.view(task_id)
    assert (view["state"], view["outcome"]) == ("SUCCESS", "failed")
    assert view["result"] == {"ingested": 2, "failed": 1}
    assert [e["message"] for e in view["log"]["info"]] == [
        "ingesting 3 items (greeting from [plugin:example]: Howdy)",
        "ingested 'a'",
        "ingested 'c'",
    ]
    assert [(e["level"], e["message"]) for e in view["log"]["errors"]] == [
        ("ERROR", "item 'bad-b' failed its check")
    ]
    assert view["name"] == "example.ingest" and view["args"] == [["a", "bad-b", "c"], 0.05]
    assert view["worker"].startswith("test-") and view["runtime"] > 0
    assert view["progress"]["current"] == view["progress"]["total"] == 3

    shown = setup.host("result", task_id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == (
        "SUCCESS (example.ingest): it ran to the end, but its own outcome is FAILED (see errors below)"
    )
    assert lines[lines.index("errors:") + 1].endswith("ERROR   item 'bad-b' failed its check")
    assert lines[-2:] == ["result:", '  {"ingested": 2, "failed": 1}']


# -- the report itself ---------------------------------------------------------------


def test_errors_keep_their_own_half_of_the_budget() -> None:
    report = Report(max_bytes=400)
    for n in range(20):
        report.add(logging.INFO, f"line {n}")
    report.add(logging.ERROR, "the one error")
    stored = report.as_dict("SUCCESS")
    assert stored["errors"][0]["message"] == "the one error"
    assert stored["cut"]["info"] > 0 and stored["cut"]["errors"] == 0
    assert len(stored["info"]) + stored["cut"]["info"] == 20
    assert stored["outcome"] == "failed" and stored["runtime"] >= 0


def test_outcome_is_decided_only_when_the_task_is_done() -> None:
    report = Report()
    report.add(logging.WARNING, "a warning is not an error")
    assert report.as_dict("PROGRESS")["outcome"] is None
    assert report.as_dict("SUCCESS")["outcome"] == "ok"
    assert report.as_dict("REVOKED")["outcome"] == "failed"
