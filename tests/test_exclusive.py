"""Exclusive tasks and their locks, on real workers, against Redis and the embedded store alike.

Every test runs once per lock store: Redis (a ``redis-server`` of the
module's own on a spare port, so that one test can kill it) and the
embedded SQLite store beside the embedded broker. One worker per store
(``-c 4``, ``host.locks.expires = 3``) serves the module; the test that
SIGKILLs a worker starts a second one on the same stores. The tasks are
tests/exclusive_tasks.py, installed as a real ``*.dist-info`` folder: a run
appends ``started`` and ``done`` lines to a file and waits, between the two,
for a gate file the test creates. Every wait has a generous deadline; nothing
asserts how long anything took.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, install_site
from core.app import HostCelery
from core.config import load_config
from core.errors import ConfigError
from core.exclusive import ALREADY_RUNNING, LockTemplateError, exclusive_task, format_lock_id
from core.locks import LockStore, LockStoreUnavailable, open_store, store_url
from core.startup import configure_app
from services import RedisServer, redis_server
from worker import READY, Worker, development_ini, host, host_env, running_worker, started_worker, wait_until

pytestmark = pytest.mark.e2e

TESTS = ROOT / "tests"
#: The lock's expiry in the workers' ini: renewed every second.
EXPIRES = 3
#: For anything that must happen eventually; a loaded CI machine is slow, never this slow.
DEADLINE = 120.0


def ini_text(directory: Path, settings: dict[str, str]) -> str:
    """development.ini with its stores in ``directory/data`` (absolute, so two workers share them)."""
    return development_ini(settings).replace("%(here)s", str(directory))


def install_tasks(directory: Path) -> Path:
    """tests/exclusive_tasks.py as the task extension ``exclusive-tasks``; returns the site folder."""
    return install_site(
        directory, "exclusive-tasks", {"host.celery_task": {"tasks": "exclusive_tasks:task_imports"}}
    )


@dataclass
class Stores:
    """The module's worker on one lock store, this process's app and the store itself."""

    kind: str
    directory: Path
    worker: Worker
    app: HostCelery
    store: LockStore
    site: Path
    redis: RedisServer | None

    def hold(self, key: str, folder: Path, **options: Any) -> str:
        """Send ``exclusive.hold(key, folder)``; its id."""
        folder.mkdir(exist_ok=True)
        return str(self.app.send_task("exclusive.hold", args=[key, str(folder)], **options).id)

    def result(self, task_id: str) -> tuple[str, Any]:
        result = self.app.AsyncResult(task_id)
        return result.state, result.result

    def finished(self, task_id: str) -> tuple[str, Any]:
        """The task's state and result once it has succeeded (fails the test if it failed)."""

        def done() -> tuple[str, Any] | None:
            state, value = self.result(task_id)
            assert state != "FAILURE", f"{task_id} failed: {value!r}\n{self.tail()}"
            return (state, value) if state == "SUCCESS" else None

        return wait_until(done, DEADLINE, f"task {task_id} to succeed", self.tail)  # type: ignore[return-value]

    def tail(self) -> str:
        return self.worker.failure_details()[-6000:]


@pytest.fixture(scope="module", params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def stores(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    kind = request.param
    directory = tmp_path_factory.mktemp(f"exclusive-{kind}")
    site = install_tasks(directory)
    with ExitStack() as stack:
        settings = {
            "host.locks.expires": str(EXPIRES),
            "celery.broker_transport_options": '{"lease_seconds": 3}',
        }
        server = None
        if kind == "redis":
            server = stack.enter_context(redis_server(directory))
            settings["host.locks.url"] = server.url
        worker = stack.enter_context(
            running_worker(
                directory, ini_text(directory, settings), args=("-c", "4"), pythonpath=[site, TESTS]
            )
        )
        config = load_config(worker.ini, environ={})
        app = configure_app(HostCelery("exclusive-test", set_as_current=False), config)
        stack.callback(app.close)
        store = open_store(store_url(config), prefix="host:lock:")
        yield Stores(kind, directory, worker, app, store, site, server)
        if server is not None and server.process is None:
            server.start()  # a test that failed mid-outage leaves Redis stopped
    assert worker.returncode == 0, worker.failure_details()[-6000:]


def lines(folder: Path) -> list[list[str]]:
    runs = folder / "runs"
    return [line.split() for line in runs.read_text().splitlines()] if runs.exists() else []


def started(folder: Path) -> list[str]:
    return [fields[1] for fields in lines(folder) if fields[0] == "started"]


def done(folder: Path) -> list[str]:
    return [fields[1] for fields in lines(folder) if fields[0] == "done"]


def open_gate(folder: Path) -> None:
    (folder / "gate").touch()


# -- the lock id ------------------------------------------------------------------------------


def test_the_lock_id_is_a_template_over_the_arguments_checked_when_decorated() -> None:
    def reindex(dataset_id, mode="full"):
        return dataset_id

    signature = inspect.signature(reindex)
    assert format_lock_id("dataset-{dataset_id}-{mode}", signature, (7,), {}) == "dataset-7-full"
    assert format_lock_id("dataset-{dataset_id}", signature, (), {"dataset_id": "x"}) == "dataset-x"
    with pytest.raises(LockTemplateError, match=r"uses \{dataset\}, which is not one of its arguments"):
        exclusive_task(lock_id="dataset-{dataset}")(reindex)
    with pytest.raises(LockTemplateError, match="positions are not allowed"):
        exclusive_task(lock_id="dataset-{0}")(reindex)


def test_an_empty_lock_url_with_a_shared_broker_is_a_configuration_error(tmp_path: Path) -> None:
    ini = tmp_path / "site.ini"
    ini.write_text("[app:main]\ncelery.broker_url = amqp://guest:secret@rabbit//\n")
    with pytest.raises(ConfigError) as raised:
        store_url(load_config(ini, environ={}))
    assert "key 'host.locks.url'" in str(raised.value)
    assert "set host.locks.url = redis://" in str(raised.value)
    done = host("locks", "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "host.locks.url is empty and the broker is not embedded" in done.stderr
    doctor = host("doctor", "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert doctor.returncode == 2, doctor.stdout
    assert "FAIL lock store:" in doctor.stdout


# -- the store: compare-and-delete, expiry --------------------------------------------------------


def test_a_stale_holder_cannot_release_or_renew_a_newer_holders_lock(stores: Stores) -> None:
    lock = f"stale-{uuid.uuid4().hex[:8]}"
    old = stores.store.acquire(lock, "old-task", 1)
    assert old is not None
    assert stores.store.acquire(lock, "new-task", 60) is None  # held: not taken
    wait_until(lambda: stores.store.holder(lock) is None, DEADLINE, f"lock {lock} to expire")

    new = stores.store.acquire(lock, "new-task", 60)
    assert new is not None and new != old
    assert stores.store.release(lock, old) is False
    assert stores.store.renew(lock, old, 60) is False
    held = stores.store.holder(lock)
    assert held is not None and (held.holder, held.token) == ("new-task", new)
    assert stores.store.release(lock, new) is True
    assert stores.store.holder(lock) is None


# -- one run at a time ------------------------------------------------------------------------------


def test_of_twenty_calls_with_one_lock_id_one_runs_and_nineteen_say_already_running(
    stores: Stores, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex[:8]
    folder = tmp_path / "twenty"
    ids = [stores.hold(key, folder) for _ in range(20)]

    # The holder waits for its gate: the other nineteen find the lock held.
    [holder] = wait_until(lambda: started(folder), DEADLINE, "one run to start", stores.tail)  # type: ignore[misc]
    skipped = [task_id for task_id in ids if task_id != holder]
    for task_id in skipped:
        state, value = stores.finished(task_id)
        assert value["status"] == ALREADY_RUNNING, value
        assert (value["lock_id"], value["holder"]) == (f"hold-{key}", holder), value
        assert value["message"] == "exclusive.hold already running!", value
    assert f"lock 'hold-{key}' is held by {holder}: skipped, already running" in stores.worker.log

    open_gate(folder)
    state, value = stores.finished(holder)
    assert value["key"] == key
    assert started(folder) == done(folder) == [holder]
    wait_until(lambda: stores.store.holder(f"hold-{key}") is None, DEADLINE, "the lock to be released")


def test_on_locked_retry_runs_the_call_once_the_lock_is_free(stores: Stores, tmp_path: Path) -> None:
    key = uuid.uuid4().hex[:8]
    folder = tmp_path / "turn"
    holder = stores.hold(key, folder)
    wait_until(lambda: started(folder) == [holder], DEADLINE, "the holder to start", stores.tail)
    waiter = str(stores.app.send_task("exclusive.wait_turn", args=[key, str(folder)]).id)

    stores.worker.wait_for_log(
        rf"exclusive.wait_turn\[{waiter}\]: lock 'hold-{key}' is held by {holder}: retrying in 0.5 s"
    )
    assert started(folder) == [holder]  # it waits its turn instead of running
    open_gate(folder)
    assert stores.finished(waiter)[1]["retries"] >= 1
    assert started(folder) == [holder, waiter] and done(folder)[-1] == waiter


def test_a_call_finding_its_own_earlier_attempts_lock_waits_for_it(stores: Stores, tmp_path: Path) -> None:
    """The lock left by this task's own earlier attempt (a retry, or a redelivery after an
    attempt ended fail-closed) is waited for: never "already running" naming itself."""
    key = uuid.uuid4().hex[:8]
    folder = tmp_path / "own"
    folder.mkdir()
    task_id = str(uuid.uuid4())
    token = stores.store.acquire(f"hold-{key}", task_id, EXPIRES)  # as the earlier attempt left it
    assert token is not None
    stores.app.send_task("exclusive.hold", args=[key, str(folder)], task_id=task_id)
    stores.worker.wait_for_log(
        rf"exclusive.hold\[{task_id}\]: lock 'hold-{key}' is still held by this task's earlier attempt"
    )
    assert started(folder) == []
    assert stores.store.release(f"hold-{key}", token)
    wait_until(
        lambda: started(folder) == [task_id], DEADLINE, "the task to run once its lock is free", stores.tail
    )
    open_gate(folder)
    assert stores.finished(task_id)[1]["key"] == key


def test_seed_001s_form_on_the_run_method_of_a_class_based_task(stores: Stores, tmp_path: Path) -> None:
    folder = tmp_path / "seed"
    folder.mkdir()
    first = str(stores.app.send_task("exclusive.seed_hold", args=[str(folder)]).id)
    wait_until(lambda: started(folder) == [first], DEADLINE, "the first run to start", stores.tail)
    second = str(stores.app.send_task("exclusive.seed_hold", args=[str(folder)]).id)
    assert stores.finished(second)[1] == {
        "status": ALREADY_RUNNING,
        "message": "Seed hold already running!",
        "lock_id": "seed-hold",
        "holder": first,
    }
    open_gate(folder)
    assert stores.finished(first)[1] == {"folder": str(folder)}
    assert started(folder) == done(folder) == [first]


def test_different_lock_ids_run_side_by_side(stores: Stores, tmp_path: Path) -> None:
    folder = tmp_path / "parallel"
    first, second = stores.hold("a-" + folder.name, folder), stores.hold("b-" + folder.name, folder)

    # Both started while neither can finish: the gate is still closed.
    wait_until(lambda: len(started(folder)) == 2, DEADLINE, "both runs to start", stores.tail)
    assert done(folder) == []
    open_gate(folder)
    for task_id in (first, second):
        assert stores.finished(task_id)[1]["key"].endswith(folder.name)
    assert sorted(done(folder)) == sorted([first, second])


# -- a holder that dies, or loses its lock ------------------------------------------------------------


def test_a_worker_killed_while_holding_the_lock_frees_it_within_the_expiry(
    stores: Stores, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex[:8]
    folder = tmp_path / "killed"
    env = host_env(pythonpath=[stores.site, TESTS])
    with started_worker(stores.worker.ini, env, tmp_path, ("-c", "1", "-Q", "victim")) as victim:
        victim.wait_for_log(READY)
        doomed = stores.hold(key, folder, queue="victim")
        wait_until(
            lambda: started(folder) == [doomed],
            DEADLINE,
            "the victim to take the lock",
            victim.failure_details,
        )
        held = stores.store.holder(f"hold-{key}")
        assert held is not None and held.holder == doomed
        assert held.expires_in <= EXPIRES  # renewed, never extended beyond the expiry
        victim.kill()  # SIGKILL, pool and all: nothing releases the lock

    # Nobody releases it; it expires, and the next call runs.
    wait_until(
        lambda: stores.store.holder(f"hold-{key}") is None, DEADLINE, "the dead holder's lock to expire"
    )
    open_gate(folder)
    after = stores.hold(key, folder)
    assert stores.finished(after)[1]["key"] == key
    assert started(folder) == [doomed, after] and done(folder) == [after]


def test_host_locks_lists_the_locks_and_release_frees_one_after_confirmation(stores: Stores) -> None:
    lock = f"cli-{uuid.uuid4().hex[:8]}"
    token = stores.store.acquire(lock, "task-in-the-cli-test", 300)
    assert token is not None
    env, ini = stores.worker.env, str(stores.worker.ini)

    listed = host("locks", "--config", ini, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    [row] = [row for row in document["locks"] if row["lock_id"] == lock]
    assert row["holder"] == "task-in-the-cli-test" and 0 < row["expires_in"] <= 300
    text = host("locks", "--config", ini, env=env)
    assert f"Locks held in {stores.store.url}:" in text.stdout
    assert [lock, "task-in-the-cli-test"] in [line.split()[:2] for line in text.stdout.splitlines()]

    refused = host("locks", "release", lock, "--config", ini, env=env)  # no answer to the question
    assert refused.returncode == 1 and "Aborted!" in refused.stderr, refused.stdout + refused.stderr
    assert stores.store.holder(lock) is not None
    released = host("locks", "release", lock, "--yes", "--config", ini, env=env)
    assert released.returncode == 0, released.stderr
    assert f"Released lock '{lock}' (was held by task-in-the-cli-test)" in released.stdout
    assert stores.store.holder(lock) is None
    again = host("locks", "release", lock, "--yes", "--config", ini, env=env)
    assert again.returncode == 1 and "is not held" in again.stderr


def test_a_task_whose_lock_is_taken_from_it_ends_before_going_on_unguarded(
    stores: Stores, tmp_path: Path
) -> None:
    """The renewer finds the lock gone: the pool child is killed, and the message runs again."""
    key = uuid.uuid4().hex[:8]
    folder = tmp_path / "lost"
    task_id = stores.hold(key, folder)
    wait_until(lambda: started(folder) == [task_id], DEADLINE, "the run to start", stores.tail)
    assert stores.store.force_release(f"hold-{key}")

    stores.worker.wait_for_log(
        rf"exclusive.hold\[{task_id}\]: lock 'hold-{key}' lost: it was released or taken by another holder; "
        r"ending this process"
    )
    # acks_late and reject_on_worker_lost: delivered again, and it runs again under the lock.
    wait_until(lambda: started(folder) == [task_id, task_id], DEADLINE, "the run to start again", stores.tail)
    assert done(folder) == []  # the first attempt never went on
    open_gate(folder)
    assert stores.finished(task_id)[1]["key"] == key
    assert done(folder) == [task_id]


# -- the store does not answer: nothing runs unguarded ------------------------------------------------


# Only a Redis lock store can be stopped; the embedded one is a local file.
@pytest.mark.parametrize("stores", [pytest.param("redis", marks=pytest.mark.redis)], indirect=True)
def test_with_redis_stopped_the_task_does_not_run_unguarded(stores: Stores, tmp_path: Path) -> None:
    server = stores.redis
    assert server is not None
    key = uuid.uuid4().hex[:8]

    # 1. Mid-run: the lock cannot be renewed, so the run ends before its lock could expire.
    running = tmp_path / "running"
    task_id = stores.hold(key, running)
    wait_until(lambda: started(running) == [task_id], DEADLINE, "the run to start", stores.tail)
    server.kill()
    stores.worker.wait_for_log(
        rf"exclusive.hold\[{task_id}\]: lock 'hold-{key}' lost: it could not be renewed"
    )
    # 2. Taking the lock: the redelivered message does not run; it is retried later.
    stores.worker.wait_for_log(
        rf"exclusive.hold\[{task_id}\]: lock 'hold-{key}' not taken, the task did not run"
    )
    other = tmp_path / "other"
    refused = stores.hold(key + "-other", other)
    stores.worker.wait_for_log(rf"exclusive.hold\[{refused}\]: lock 'hold-{key}-other' not taken")
    assert started(running) == [task_id] and done(running) == [] and started(other) == []

    # Redis back: both retries take their lock and run, once each.
    server.start()
    open_gate(running)
    open_gate(other)
    assert stores.finished(task_id)[1]["key"] == key
    assert stores.finished(refused)[1]["key"] == key + "-other"
    assert started(running) == [task_id, task_id] and done(running) == [task_id]
    assert started(other) == done(other) == [refused]


def test_an_unreachable_store_is_an_error_naming_its_masked_url() -> None:
    store = open_store("redis://user:hunter2@127.0.0.1:1/0")
    with pytest.raises(LockStoreUnavailable) as raised:
        store.acquire("x", "task", 5)
    assert "redis://user:**@127.0.0.1:1/0" in str(raised.value) and "hunter2" not in str(raised.value)
