"""Outages as an operator meets them: the broker restarts, the result store goes away, a worker
starts before the broker, and what the exit status says afterwards.

Every ini here is ``production.ini`` with only the URLs changed (plus the test
plugin and a site id of the test's own). The broker or result store that a
test stops is its own (tests/services.py): a RabbitMQ node or a
``redis-server`` on a spare loopback port, so stopping it disturbs no other
test, and it is started again in a ``finally``. The tasks count their runs in
the shared Redis, which no test here stops.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from conftest import RABBITMQ_URL, REDIS_URL, ROOT
from services import RedisServer, rabbitmq_node, redis_server, spare_port
from test_supervisor import TESTS, delete_site, deployed, install_faults
from worker import HOST, READY, host, host_env, running_worker, started_worker, wait_until, write_ini

PRODUCTION = (ROOT / "production.ini").read_text(encoding="utf-8")
#: The outages, as an operator would cause them. Waits, not assertions about speed.
BROKER_RESTART_SECONDS = 15
SUPERVISED_OUTAGE_SECONDS = 60
STORE_OUTAGE_SECONDS = 10


def production_ini(broker: str, results: str, site_id: str) -> str:
    """production.ini with only the URLs changed, the test's tasks enabled and a site id of its own."""
    text = PRODUCTION
    for key, value in (
        ("celery.broker_url", broker),
        ("celery.result_backend", results),
        ("host.plugins", "faults"),
        ("host.site_id", site_id),
    ):
        text, found = re.subn(rf"^{re.escape(key)} =.*$", f"{key} = {value}", text, flags=re.M)
        assert found == 1, key
    text, found = re.subn(r"^\[plugin:example\]\n(?:\w+ = .*\n)+", "", text, flags=re.M)
    assert found == 1
    return text + f"\n[plugin:faults]\nredis_url = {REDIS_URL}\n"


class Run:
    """One test's tasks: each counts its runs in the shared Redis under a key of the test's own."""

    def __init__(self) -> None:
        self.site_id = f"t{uuid.uuid4().hex[:10]}"
        self.key = f"faults:{self.site_id}"
        self.redis = redis.Redis.from_url(REDIS_URL)

    def done(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.redis.hgetall(f"{self.key}:done").items()}

    def close(self) -> None:
        self.redis.delete(f"{self.key}:started", f"{self.key}:done")
        self.redis.close()


@contextmanager
def a_run(broker: str = RABBITMQ_URL) -> Iterator[Run]:
    run = Run()
    try:
        yield run
    finally:
        run.close()
        delete_site(run.site_id, broker)


def send_sleeps(ini: Path, env: dict[str, str], run: Run, tokens: list[str], seconds: float) -> list[str]:
    """``host send faults.sleep --many``: one message per token."""
    lines = "".join(json.dumps([run.key, token, seconds]) + "\n" for token in tokens)
    sent = subprocess.run(
        [HOST, "send", "faults.sleep", "--many", "-", "--config", str(ini)],
        input=lines,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert sent.returncode == 0, sent.stderr
    return sent.stdout.split()


def duplicates(counts: dict[str, int]) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


# -- the broker ---------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.e2e
def test_a_worker_waits_out_a_broker_restart_and_runs_every_task(tmp_path: Path) -> None:
    # Enough that hundreds are still queued when the broker stops, once the first 100 have run
    # (that some are is asserted below); each must run once it is back. 2,000 proved no more.
    tokens = [f"t{i}" for i in range(1000)]
    with rabbitmq_node() as node, a_run(node.url) as run:
        ini_text = production_ini(node.url, REDIS_URL, run.site_id)
        site = install_faults(tmp_path)
        with running_worker(tmp_path, ini_text, pythonpath=[site.path, TESTS]) as worker:
            send_sleeps(worker.ini, worker.env, run, tokens, 0.005)
            wait_until(lambda: len(run.done()) >= 100, 120, "the first 100 tasks", worker.failure_details)
            node.stop_app()
            done_during_outage = len(run.done())
            time.sleep(BROKER_RESTART_SECONDS)  # the outage itself
            node.start_app()
            wait_until(
                lambda: len(run.done()) == len(tokens), 600, "every task to run", worker.failure_details
            )
            assert worker.returncode is None, worker.failure_details()  # the same process, never restarted
            counts = run.done()
            log = worker.log
    assert done_during_outage < len(tokens), "every task had run before the broker stopped"
    print(f"\nbroker restart: {len(counts)} tasks ran, {duplicates(counts)} of them more than once")
    outage = re.findall(r"WARNI.*host.consumer: the broker at (\S+) does not answer", log)
    assert outage == [f"amqp://guest:**@127.0.0.1:{node.port}//"], log
    assert re.search(r"INFO .*host.consumer: the broker at \S+ answers again after \d+ s", log), log
    assert "Unrecoverable error" not in log


@pytest.mark.redis
@pytest.mark.e2e
def test_a_worker_started_before_the_broker_begins_consuming_once_it_answers(tmp_path: Path) -> None:
    with rabbitmq_node() as node, a_run(node.url) as run:
        node.stop_app()
        ini = write_ini(tmp_path, production_ini(node.url, REDIS_URL, run.site_id))
        site = install_faults(tmp_path)
        env = host_env(pythonpath=[site.path, TESTS])
        with started_worker(ini, env, tmp_path, ["-c", "1"]) as worker:
            worker.wait_for_log(r"WARNI.*the broker at \S+ does not answer")
            node.start_app()
            started_app = time.monotonic()
            worker.wait_for_log(READY, timeout=120)
            print(f"\nconsuming {time.monotonic() - started_app:.1f} s after start_app")
            [task_id] = send_sleeps(ini, env, run, ["t1"], 0)
            wait_until(lambda: run.done() == {"t1": 1}, 120, "the task to run", worker.failure_details)
            assert worker.returncode is None
        assert worker.returncode == 0, worker.failure_details()
        assert worker.log.count("does not answer") == 1


@pytest.mark.redis
@pytest.mark.e2e
def test_a_minute_without_the_broker_leaves_every_supervised_program_running(tmp_path: Path) -> None:
    with rabbitmq_node() as node:
        ini_for = lambda site_id: production_ini(node.url, REDIS_URL, site_id)  # noqa: E731
        with deployed(tmp_path, ini_for=ini_for, broker=node.url) as d:
            programs = [d.worker(), "host:host-celerybeat"]
            pids = {name: d.sup.info(name)["pid"] for name in programs}
            node.stop_app()
            time.sleep(SUPERVISED_OUTAGE_SECONDS)
            states = {name: d.sup.info(name)["statename"] for name in programs}
            node.start_app()
            assert states == dict.fromkeys(programs, "RUNNING"), d.sup.details()
            assert {name: d.sup.info(name)["pid"] for name in programs} == pids  # none was restarted
            d.send("faults.mark", *([d.run, f"t{i}"] for i in range(20)))
            wait_until(lambda: len(d.count("done")) == 20, 300, "the tasks sent afterwards", d.sup.details)


# -- exit statuses ------------------------------------------------------------------------


@pytest.mark.rabbitmq
@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_requested_stop_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    with a_run() as run:
        ini_text = production_ini(RABBITMQ_URL, REDIS_URL, run.site_id)
        site = install_faults(tmp_path)
        with running_worker(tmp_path, ini_text, pythonpath=[site.path, TESTS]) as worker:
            worker.process.send_signal(sig)
            status = worker.process.wait(timeout=120)
    assert status == 0, worker.failure_details()


@pytest.mark.rabbitmq
@pytest.mark.e2e
def test_control_shutdown_exits_0_through_celerys_own_cli(tmp_path: Path) -> None:
    with a_run() as run:
        ini_text = production_ini(RABBITMQ_URL, REDIS_URL, run.site_id)
        site = install_faults(tmp_path)
        with running_worker(tmp_path, ini_text, pythonpath=[site.path, TESTS]) as worker:
            node = re.search(r"(test-\w+@\S+) ready\.", worker.log)
            assert node is not None, worker.log
            env = {**worker.env, "HOST_CONFIG": str(worker.ini)}
            # The worker stops without replying, so Celery's command says "No nodes replied" (69).
            subprocess.run(
                [str(Path(HOST).parent / "celery"), "-A", "core.celery_app", "control", "shutdown"]
                + ["--destination", node.group(1)],
                env=env,
                capture_output=True,
                timeout=120,
            )
            status = worker.process.wait(timeout=120)
    assert status == 0, worker.failure_details()


@pytest.mark.e2e
def test_a_worker_that_stops_on_an_error_exits_1(tmp_path: Path) -> None:
    """A broker of the test's own that never answers (a closed port), and a retry limit."""
    port = spare_port()
    ini_text = production_ini(f"amqp://guest:s3cret@127.0.0.1:{port}//", REDIS_URL, "never").replace(
        "celery.broker_connection_max_retries =\n", "celery.broker_connection_max_retries = 2\n"
    )
    ini = write_ini(tmp_path, ini_text)
    site = install_faults(tmp_path)
    with started_worker(ini, host_env(pythonpath=[site.path, TESTS]), tmp_path, ["-c", "1"]) as worker:
        status = worker.process.wait(timeout=120)
    assert status == 1, worker.failure_details()
    masked = re.escape(f"amqp://guest:**@127.0.0.1:{port}//")
    assert re.search(rf"ERROR .*giving up on the broker at {masked} after 3 attempts", worker.log), worker.log
    assert "s3cret" not in worker.log


def test_a_broken_ini_exits_2(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, production_ini(RABBITMQ_URL, REDIS_URL, "x") + "\n[app:main]\n")
    done = host("celeryd", "--config", str(ini), env=host_env())
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("Error: "), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.rabbitmq
@pytest.mark.e2e
def test_beat_exits_0_on_sigterm(tmp_path: Path) -> None:
    ini_text = (
        production_ini(RABBITMQ_URL, REDIS_URL, "beat")
        .replace(
            "host.plugins = faults",
            "host.plugins = faults\ncelery.beat_schedule_filename = %(here)s/schedule",
        )
        .replace("[logger_celery]\nlevel = INFO", "[logger_celery]\nlevel = DEBUG")  # to see it ticking
    )
    ini = write_ini(tmp_path, ini_text)
    site = install_faults(tmp_path)
    log = tmp_path / "beat.log"
    with log.open("wb") as out:
        beat = subprocess.Popen(
            [HOST, "celerybeat", "--config", str(ini)],
            env=host_env(pythonpath=[site.path, TESTS]),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
        )
    try:
        # Running: its scheduler is set up (a SIGTERM in the middle of Celery's own
        # imports during set-up ends beat with an ImportError, exit status 1).
        wait_until(lambda: "beat: Ticking with max interval" in log.read_text(), 60, "beat to run")
        beat.send_signal(signal.SIGTERM)
        assert beat.wait(timeout=60) == 0, log.read_text()
    finally:
        if beat.poll() is None:
            beat.kill()
            beat.wait()


def test_celerys_own_cli_without_configuration_says_so_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(Path(HOST).parent / "celery"), "-A", "core.celery_app", "inspect", "ping"],
        env=host_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("Error: no configuration file: --config was not given"), done.stderr
    assert "Traceback" not in done.stderr


# -- the result store -----------------------------------------------------------------------


SENDER = """
import json, sys, warnings
from core import configure
import plugins

app = configure(sys.argv[1])
key, tokens = sys.argv[2], json.loads(sys.stdin.read())
ids = [app.send_task("faults.sleep", args=[key, t, 0]).id for t in tokens[: len(tokens) // 2]]
ids += [plugins.send_task("faults.sleep", args=[key, t, 0]).id for t in tokens[len(tokens) // 2 :]]
print("\\n".join(ids))
"""


@pytest.mark.rabbitmq
@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.parametrize("retries", [20, 1], ids=["production-retries", "one-retry"])
def test_a_result_store_outage_loses_no_task_and_names_every_result_it_could_not_keep(
    tmp_path: Path, retries: int
) -> None:
    """With production.ini's 20 retries a 10 s outage costs no result; with 1, each lost one is logged."""
    with redis_server(tmp_path) as store, a_run() as run:
        ini_text = production_ini(RABBITMQ_URL, store.url, run.site_id).replace(
            "celery.result_backend_max_retries = 20\n", f"celery.result_backend_max_retries = {retries}\n"
        )
        site = install_faults(tmp_path)
        with running_worker(tmp_path, ini_text, pythonpath=[site.path, TESTS]) as worker:
            tokens = [f"t{i}" for i in range(300)]
            ids = send_sleeps(worker.ini, worker.env, run, tokens, 0.05)
            wait_until(lambda: len(run.done()) >= 20, 120, "the first tasks", worker.failure_details)
            store.kill()
            during = [f"during{i}" for i in range(40)]
            sent = subprocess.run(
                [sys.executable, "-c", SENDER, str(worker.ini), run.key],
                input=json.dumps(during),
                env=worker.env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            done_during_outage = len(run.done())
            time.sleep(STORE_OUTAGE_SECONDS)
            store.start()
            assert sent.returncode == 0, sent.stderr
            assert f"the result store at {store.url} does not answer" in sent.stderr, sent.stderr
            assert "tasks are still sent, but their results cannot be awaited until it answers" in sent.stderr
            ids += sent.stdout.split()
            everything = tokens + during
            wait_until(
                lambda: len(run.done()) == len(everything), 600, "every task to run", worker.failure_details
            )
            wait_until(
                lambda: accounted_for(store, ids, worker.log) == len(ids),
                300,
                "every result",
                worker.failure_details,
            )
            log = worker.log
    assert done_during_outage < len(tokens), "every task had run before the store stopped"
    lost = re.findall(r"could not store the \w+ result of task faults.sleep\[([-\w]+)\]", log)
    print(f"\nresult-store outage: {len(ids)} tasks, {len(lost)} results logged as lost")
    assert len(lost) == len(set(lost)), "a lost result is logged once"
    if retries == 1:
        assert lost, "a 10 s outage with one retry loses results"
        line = next(line for line in log.splitlines() if "could not store" in line)
        # The ini's format: "%(asctime)s %(levelname)-5.5s [%(processName)s] %(name)s: %(message)s"
        assert re.match(r"\S+ \S+ ERROR \[ForkPoolWorker-\d+\] host.results: could not store", line), line
    assert "Pool callback raised exception" not in log
    assert "Exception raised outside body" not in log


def accounted_for(store: RedisServer, ids: list[str], log: str) -> int:
    """Task ids whose result is in the store, or named in a 'could not store' log line."""
    client = redis.Redis.from_url(store.url)
    try:
        stored = client.mget([f"celery-task-meta-{i}" for i in ids])
    finally:
        client.close()
    pairs = zip(ids, stored, strict=True)
    return sum(1 for task_id, meta in pairs if meta is not None or f"[{task_id}]" in log)


# -- what the settings say ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "workers stop at the first failed attempt: a broker restart ends every worker"),
        ("10", "workers stop after 10 failed attempts to reach the broker, about 40 s"),
    ],
)
def test_doctor_warns_when_a_retry_limit_would_end_the_workers(tmp_path: Path, value: str, says: str) -> None:
    ini = write_ini(
        tmp_path,
        f"[app:main]\ncelery.broker_url = memory://\ncelery.broker_connection_max_retries = {value}\n",
    )
    done = host("doctor", "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr  # a warning, not a failure
    [line] = [line for line in done.stdout.splitlines() if line.startswith("warn")]
    assert line.startswith(f"warn broker outage: celery.broker_connection_max_retries = {value}: {says}"), (
        line
    )
    assert line.endswith("-> leave it empty: workers then retry for as long as it takes"), line


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_doctor_passes_production_ini_without_a_warning(tmp_path: Path) -> None:
    done = host("doctor", "--config", str(ROOT / "production.ini"), env=host_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [line for line in done.stdout.splitlines() if line.startswith("warn")], done.stdout


def test_config_show_says_what_the_retry_settings_mean(tmp_path: Path) -> None:
    ini = ROOT / "production.ini"
    done = host("config", "show", "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (
        "celery.broker_connection_max_retries = null    # file; "
        "workers retry the broker for as long as it takes" in lines
    )
    assert (
        "celery.result_backend_max_retries = 20.0    # file; "
        "a result the store cannot take is retried 20 times, then logged and dropped" in lines
    )


def test_result_of_an_id_the_store_does_not_know_names_both_causes(tmp_path: Path) -> None:
    ini = write_ini(
        tmp_path,
        "[app:main]\ncelery.broker_url = memory://\n"
        "celery.result_backend = embedded+sqlite:///%(here)s/results.sqlite\n",
    )
    done = host("result", "no-such-id", "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "PENDING: the result store knows nothing of it: not started yet, an unknown"
    )
    assert "could not store the ... result of task ...[no-such-id]" in done.stdout


def test_embedded_stores_are_their_owners_alone_and_doctor_says_when_not(tmp_path: Path) -> None:
    ini = write_ini(
        tmp_path,
        "[app:main]\ncelery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite\n"
        "celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite\n",
    )
    sent = host("send", "example.echo", '"x"', "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr  # the broker's store now exists
    done = host("doctor", "--config", str(ini), env=host_env(), cwd=tmp_path)  # and the result store's
    assert done.returncode == 0, done.stdout + done.stderr
    data = tmp_path / "data"
    modes = {p.name: p.stat().st_mode & 0o777 for p in [data, *data.glob("*.sqlite*")]}
    assert modes["data"] == 0o700 and modes["broker.sqlite"] == modes["results.sqlite"] == 0o600, modes
    assert not [line for line in done.stdout.splitlines() if line.startswith("warn")], done.stdout

    (data / "broker.sqlite").chmod(0o644)
    done = host("doctor", "--config", str(ini), env=host_env(), cwd=tmp_path)
    [line] = [line for line in done.stdout.splitlines() if line.startswith("warn")]
    assert line.startswith(f"warn embedded broker: {data / 'broker.sqlite'} is 644 (should be 600)"), line
    assert line.endswith(f"-> chmod 700 {data} && chmod 600 {data / 'broker.sqlite'}*"), line
