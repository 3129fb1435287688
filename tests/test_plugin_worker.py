"""Plugin hooks inside real workers, and several hosts sharing one RabbitMQ.

Two plugins compose here: ``example`` (example_ext, installed) and
``recorder`` (tests/recorder_plugin.py, installed for these tests as a real
``*.dist-info`` folder), which appends every lifecycle event to a JSON-lines
file. One worker run on the embedded broker serves the lifecycle tests: it
starts, runs tasks that succeed and fail, and stops with SIGTERM; each
``test_hook_*`` then reads what its hook recorded. Waits have timeouts;
nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import RABBITMQ_URL, REDIS_URL, ROOT, Site
from worker import Worker, host, host_env, running_worker, wait_until, write_ini

pytestmark = pytest.mark.e2e

TESTS = ROOT / "tests"

EMBEDDED_INI = """
[app:main]
celery.broker_url = embedded+sqlite:///%(here)s/broker.sqlite
celery.result_backend = embedded+sqlite:///%(here)s/results.sqlite
celery.worker_redirect_stdouts_level = INFO
host.plugins = example recorder

[plugin:recorder]
events = %(here)s/events.jsonl
"""

# Sends tasks with the shared app configured from the ini, as a web
# application would, and prints one JSON line per task: its id and outcome.
SENDER = """
import json, sys
from core import configure
from plugins import send_task

configure(sys.argv[1])
for name, args in json.loads(sys.argv[2]):
    result = send_task(name, args)
    try:
        outcome = {"state": "SUCCESS", "result": result.get(timeout=60)}
    except Exception as e:
        outcome = {"state": result.state, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps({"name": name, "id": result.id, **outcome}), flush=True)
"""


def install_recorder(site: Site) -> None:
    """recorder-plugin as pip would leave it: a dist-info folder naming tests/recorder_plugin.py."""
    site.add("recorder-plugin", "1.0", entry_points={"host.plugins": {"recorder": "recorder_plugin"}})


def send(worker: Worker, tasks: list[tuple[str, list]], ini: Path | None = None) -> list[dict]:
    try:
        done = subprocess.run(
            [sys.executable, "-c", SENDER, str(ini or worker.ini), json.dumps(tasks)],
            env=worker.env,
            capture_output=True,
            text=True,
            timeout=240,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the sender did not finish: {e.stdout!r} {e.stderr!r}\n{worker.failure_details()}")
    assert done.returncode == 0, f"{done.stderr}\n{worker.failure_details()}"
    return [json.loads(line) for line in done.stdout.splitlines()]


def events(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    )


# -- one worker's life, recorded -----------------------------------------------------


@dataclass
class Run:
    worker: Worker
    events: list[dict]
    sent: list[dict]
    log: str

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    directory = tmp_path_factory.mktemp("lifecycle")
    site = Site(directory / "site")
    site.path.mkdir()
    install_recorder(site)
    tasks = [
        ("recorder.whoami", []),
        ("recorder.echo", [{"n": 1}]),
        ("recorder.fail", ["on purpose"]),
        ("recorder.echo", ["raise-in-hook"]),
        *[("example.process_info", [])] * 6,
    ]
    with running_worker(directory, EMBEDDED_INI, pythonpath=[site.path, TESTS]) as worker:
        sent = send(worker, tasks)
        # task_success and task_failure fire after the result is stored.
        wait_until(
            lambda: len(events(directory / "events.jsonl")) >= 2 + 1 + 2 + 1,
            60,
            "the task events",
            worker.failure_details,
        )
        status = worker.terminate()
    assert status == 0, worker.failure_details()
    yield Run(worker, events(directory / "events.jsonl"), sent, worker.log)


def test_hook_host_worker_init(run: Run) -> None:
    [init] = run.of("worker_init")
    assert init["pid"] == run.worker.pid
    assert init["app"] == "host"
    # the plugin sees the configured app: every declared queue is there
    assert init["queues"] == ["celery", "example", "recorder"]
    assert run.events[0] == init  # before any pool process exists


def test_hook_host_worker_process_init(run: Run) -> None:
    inits = run.of("worker_process_init")
    assert len(inits) == 2  # -c 2
    assert run.worker.pid not in {e["pid"] for e in inits}
    # example_ext's own implementation ran in every process that ran a task
    infos = [s["result"] for s in run.sent if s["name"] == "example.process_info"]
    assert len(infos) == 6
    assert all(info["initialised_in"] == info["pid"] for info in infos), infos
    assert {info["pid"] for info in infos} <= {e["pid"] for e in inits}


def test_hook_host_worker_shutdown(run: Run) -> None:
    [shutdown] = run.of("worker_shutdown")
    assert shutdown["pid"] == run.worker.pid
    assert run.events[-1] == shutdown  # after every task event
    assert "Warm shutdown" in run.log


def test_hook_host_task_success(run: Run) -> None:
    successes = {e["task_id"]: e for e in run.of("task_success")}
    whoami, echo = run.sent[0], run.sent[1]
    assert successes[whoami["id"]]["task"] == "recorder.whoami"
    assert successes[whoami["id"]]["result"] == whoami["result"]
    assert successes[echo["id"]] | {"pid": 0} == {
        "event": "task_success",
        "pid": 0,
        "task": "recorder.echo",
        "task_id": echo["id"],
        "args": [{"n": 1}],
        "kwargs": {},
        "result": {"n": 1},
    }
    # the hook runs in the pool process that ran the task
    assert successes[whoami["id"]]["pid"] == whoami["result"]["pid"]


def test_hook_host_task_failure(run: Run) -> None:
    failed = run.sent[2]
    assert (failed["state"], failed["error"]) == ("FAILURE", "ValueError: on purpose")
    [failure] = run.of("task_failure")
    assert failure["task_id"] == failed["id"]
    assert failure["task"] == "recorder.fail"
    assert failure["args"] == ["on purpose"]
    assert failure["exception"] == "ValueError: on purpose"
    assert failure["traceback"].startswith("Traceback (most recent call last):")
    assert "raise ValueError(reason)" in failure["traceback"]


def test_a_raising_hook_is_logged_with_its_plugin_and_the_task_still_succeeds(run: Run) -> None:
    raising = run.sent[3]
    assert (raising["state"], raising["result"]) == ("SUCCESS", "raise-in-hook")
    assert re.search(
        r"plugin recorder \(recorder-plugin==1\.0\): host_task_success\(\) raised "
        r"RuntimeError: the recorder refuses this result at .*recorder_plugin\.py, line \d+",
        run.log,
    ), run.log
    assert not [e for e in run.of("task_success") if e["task_id"] == raising["id"]]


def test_tasks_go_to_the_queues_the_plugins_declare(run: Run) -> None:
    assert run.sent[0]["result"]["queue"] == "recorder"


# -- several hosts on one broker -----------------------------------------------------

RABBITMQ_INI = """
[app:main]
celery.broker_url = {broker}
celery.result_backend = {results}
celery.task_acks_late = true
celery.worker_prefetch_multiplier = 1
celery.worker_redirect_stdouts_level = INFO
host.site_id = {site}
host.plugins = recorder

[plugin:recorder]
events = %(here)s/events.jsonl
"""


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_two_sites_on_one_rabbitmq_run_only_their_own_tasks(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.path.mkdir()
    install_recorder(site)
    run_id = uuid.uuid4().hex[:8]
    sites = {name: f"{name}-{run_id}" for name in ("a", "b")}
    dirs = {name: tmp_path / name for name in sites}
    for name, site_id in sites.items():
        dirs[name].mkdir()
        (dirs[name] / "test.ini").write_text(
            RABBITMQ_INI.format(broker=RABBITMQ_URL, results=REDIS_URL, site=site_id), encoding="utf-8"
        )
    paths = [site.path, TESTS]
    try:
        with running_worker(
            dirs["a"],
            RABBITMQ_INI.format(broker=RABBITMQ_URL, results=REDIS_URL, site=sites["a"]),
            pythonpath=paths,
        ) as worker_a:
            assert f"host:{sites['a']}:recorder" in worker_a.log  # the banner's queue list
            # Site b has no worker yet: its task must wait in b's own queue.
            b_id = _send_no_wait(worker_a, dirs["b"] / "test.ini", "recorder.whoami")
            [a_done] = send(worker_a, [("recorder.whoami", [])])
            assert a_done["result"]["hostname"].startswith("test-")
            assert a_done["result"]["queue"] == f"host:{sites['a']}:recorder"
            assert _waiting(f"host:{sites['b']}:recorder") == 1
            with running_worker(
                dirs["b"],
                RABBITMQ_INI.format(broker=RABBITMQ_URL, results=REDIS_URL, site=sites["b"]),
                pythonpath=paths,
            ) as worker_b:
                b_result = _result(worker_b, dirs["b"] / "test.ini", b_id)
                assert b_result["queue"] == f"host:{sites['b']}:recorder"
                assert b_result["hostname"] != a_done["result"]["hostname"]
                assert b_id not in worker_a.log
    finally:
        _delete_site(sites.values())


SEND_ONLY = """
import sys
from core import configure
from plugins import send_task
configure(sys.argv[1])
print(send_task(sys.argv[2]).id)
"""

RESULT = """
import json, sys
from core import configure
app = configure(sys.argv[1])
print(json.dumps(app.AsyncResult(sys.argv[2]).get(timeout=60)))
"""


def _python(worker: Worker, script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=worker.env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"{done.stderr}\n{worker.failure_details()}"
    return done.stdout.strip()


def _send_no_wait(worker: Worker, ini: Path, name: str) -> str:
    return _python(worker, SEND_ONLY, str(ini), name)


def _result(worker: Worker, ini: Path, task_id: str) -> dict:
    return json.loads(_python(worker, RESULT, str(ini), task_id))


def _waiting(queue: str) -> int:
    """Messages ready in ``queue`` (a passive declare fails if it does not exist)."""
    from kombu import Connection

    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        return connection.default_channel.queue_declare(queue, passive=True).message_count


def _delete_site(site_ids) -> None:
    from kombu import Connection

    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        channel = connection.default_channel
        for site_id in site_ids:
            prefix = f"host:{site_id}:"
            for queue in ("celery", "recorder"):
                channel.queue_delete(prefix + queue)
            for exchange in ("celery", "celery.pidbox", "celeryev", "reply.celery.pidbox"):
                channel.exchange_delete(prefix + exchange)


# -- a broken plugin and host celeryd --------------------------------------------------

BROKEN_INI = """
[app:main]
celery.broker_url = embedded+sqlite:///%(here)s/broker.sqlite
celery.result_backend = embedded+sqlite:///%(here)s/results.sqlite
host.plugins = example broken
host.extensions.on_error = {on_error}
"""


def install_broken(tmp_path: Path) -> Site:
    site = Site(tmp_path / "site")
    site.path.mkdir()
    site.add(
        "broken-plugin",
        "2.0",
        entry_points={"host.plugins": {"broken": "broken_plugin"}},
        files={"broken_plugin.py": "raise RuntimeError('broken on purpose')\n"},
    )
    return site


def broken_message(site: Site) -> str:
    return (
        "plugin 'broken' (broken-plugin==2.0, entry point host.plugins:broken = broken_plugin): "
        "module broken_plugin is broken: it raised RuntimeError: broken on purpose "
        f"at {site.path / 'broken_plugin.py'}, line 1\n"
        "  -> fix the plugin, or remove 'broken' from host.plugins\n"
    )


def test_celeryd_refuses_to_start_with_a_broken_plugin(tmp_path: Path) -> None:
    site = install_broken(tmp_path)
    ini = write_ini(tmp_path, BROKEN_INI.format(on_error="fail"))
    done = host("celeryd", "--config", str(ini), env=host_env(pythonpath=[site.path]))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "Error: " + broken_message(site)


def test_celeryd_skips_a_broken_plugin_with_on_error_warn(tmp_path: Path) -> None:
    site = install_broken(tmp_path)
    ini_text = BROKEN_INI.format(on_error="warn")
    with running_worker(tmp_path, ini_text, pythonpath=[site.path]) as worker:
        assert "warning: skipped: " + broken_message(site) in worker.log
        assert "Plugins: example (example-ext==" in worker.log
        sent = host("send", "example.add", "2", "3", "--wait", "--config", str(worker.ini), env=worker.env)
        assert (sent.returncode, sent.stdout) == (0, "5\n"), sent.stderr
        assert sent.stderr == "warning: skipped: " + broken_message(site)
