"""Production under supervisor: the rendered file, and the faults it must survive with nothing lost.

The fault tests run a real ``supervisord`` (tests/supervisord.py) with the
programs ``host supervisor`` renders, on the real RabbitMQ, results in the
real Redis. Each test has a ``host.site_id`` of its own, so its queues are
its own (``host:SITE:celery``) and are deleted afterwards. The tasks come
from the ``faults`` test plugin (tests/fault_plugin.py, installed as a real
``*.dist-info`` folder) and count in Redis every run that started and that
finished.

CI runs as root, and ``host supervisor`` refuses to write ``user = root``;
the tests render for ``nobody`` and then run the programs as the current
user (with ``HOST_ALLOW_ROOT``), because an unprivileged account cannot be
assumed to read the checkout. Everything else runs exactly as rendered.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from conftest import RABBITMQ_URL, REDIS_URL, ROOT, Site
from services import rabbitmq_node
from supervisord import Supervisor, running_supervisord
from worker import host, host_env, wait_until, write_ini

TESTS = ROOT / "tests"
PASSWORD = "s3cret-Pa55"

INI = """
[app:main]
celery.broker_url = {broker}
celery.result_backend = {results}
celery.result_expires = 3600
celery.result_extended = true
celery.task_acks_late = true
celery.task_reject_on_worker_lost = true
celery.worker_prefetch_multiplier = 1
celery.worker_concurrency = 2
celery.broker_transport_options = {{"confirm_publish": true}}
celery.task_default_delivery_mode = persistent
celery.task_time_limit = 40
celery.beat_schedule_filename = %(here)s/data/celerybeat-schedule
celery.worker_redirect_stdouts_level = INFO
host.site_id = {site}
host.plugins = faults

[plugin:faults]
redis_url = {results}
"""


# -- rendering -------------------------------------------------------------------------


def render(tmp_path: Path, *args: str, ini_text: str | None = None) -> subprocess.CompletedProcess[str]:
    ini = write_ini(tmp_path, ini_text or INI.format(broker=RABBITMQ_URL, results=REDIS_URL, site="r"))
    site = install_faults(tmp_path)
    return host("supervisor", "--config", str(ini), *args, env=host_env(pythonpath=[site.path, TESTS]))


def install_faults(directory: Path) -> Site:
    site = Site(directory / "site")
    if not site.path.exists():
        site.path.mkdir()
        site.add("faults-plugin", "1.0", entry_points={"host.plugins": {"faults": "fault_plugin"}})
    return site


def sections(text: str) -> dict[str, dict[str, str]]:
    """``{section: {key: value}}`` of a supervisor file, comments left out."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("["):
            current = found.setdefault(line.strip("[]"), {})
        elif "=" in line and not line.startswith(";"):
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return found


def test_rendered_programs_carry_celerys_settings(tmp_path: Path) -> None:
    done = render(
        tmp_path, "--user", "host", "--log-dir", "/var/log/host", "-Q", "celery,faults", "-Q", "slow"
    )
    assert done.returncode == 0, done.stderr
    programs = sections(done.stdout)
    assert list(programs) == [
        "group:host",
        "program:host-celeryd-celery-faults",
        "program:host-celeryd-slow",
        "program:host-celerybeat",
    ]
    assert programs["group:host"] == {
        "programs": "host-celeryd-celery-faults,host-celeryd-slow,host-celerybeat"
    }
    worker = programs["program:host-celeryd-slow"]
    ini = tmp_path / "test.ini"
    assert worker["command"] == (
        f"{Path(sys.prefix) / 'bin' / 'host'} celeryd --config {ini} -- "
        "-n '%(program_name)s-%(process_num)d@%%h' -Q slow"
    )
    assert {k: worker[k] for k in ("user", "stopasgroup", "killasgroup", "stopwaitsecs", "startsecs")} == {
        "user": "host",
        "stopasgroup": "false",
        "killasgroup": "true",
        "stopwaitsecs": "70",  # celery.task_time_limit = 40, plus 30
        "startsecs": "10",
    }
    assert int(worker["priority"]) > 100  # after a broker program at the usual 100
    assert worker["stdout_logfile"] == "/var/log/host/host-celeryd-slow-%(process_num)d.log"
    beat = programs["program:host-celerybeat"]
    assert beat["command"] == f"{Path(sys.prefix) / 'bin' / 'host'} celerybeat --config {ini}"
    assert beat["numprocs"] == "1"
    # every setting that matters comes with its reason
    assert "; SIGTERM to the main process only" in done.stdout
    assert "celery#2700" in done.stdout


def test_one_program_for_every_queue_by_default_and_n_processes(tmp_path: Path) -> None:
    done = render(tmp_path, "--user", "host", "--workers", "3")
    programs = sections(done.stdout)
    assert [s for s in programs if s.startswith("program:")] == [
        "program:host-celeryd",
        "program:host-celerybeat",
    ]
    assert programs["program:host-celeryd"]["numprocs"] == "3"
    assert " -Q " not in programs["program:host-celeryd"]["command"]


def test_stopwaitsecs_follows_the_longest_hard_time_limit(tmp_path: Path) -> None:
    ini_text = INI.format(broker=RABBITMQ_URL, results=REDIS_URL, site="r") + (
        'celery.task_annotations = {"faults.sleep": {"time_limit": 900}}\n'
    )
    ini_text = ini_text.replace("[plugin:faults]", "").replace(f"redis_url = {REDIS_URL}", "")
    ini_text += f"\n[plugin:faults]\nredis_url = {REDIS_URL}\n"
    done = render(tmp_path, "--user", "host", ini_text=ini_text)
    assert done.returncode == 0, done.stderr
    assert sections(done.stdout)["program:host-celeryd"]["stopwaitsecs"] == "930"
    assert (
        "; the longest hard time limit (celery.task_annotations['faults.sleep'].time_limit = 900 s) plus 30 s"
        in (done.stdout)
    )


def test_rendering_refuses_root_and_shows_no_password(tmp_path: Path) -> None:
    broker = RABBITMQ_URL.replace("guest:guest", f"guest:{PASSWORD}")
    ini_text = INI.format(broker=broker, results=REDIS_URL, site="r")
    refused = render(tmp_path, "--user", "root", ini_text=ini_text)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        "Error: refusing to render programs that run as root: a task runs with its worker's privileges\n"
        "  -> pass --user NAME with an unprivileged account (create one: useradd --system host)\n"
    )
    done = render(tmp_path, "--user", "host", ini_text=ini_text)
    assert done.returncode == 0
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize("name", ["host-celeryd.conf", "host-celerybeat.conf"])
def test_supervisor_templates_are_what_host_supervisor_renders(name: str) -> None:
    """supervisor/*.conf are the renderer's output for the paths the deployment guide uses."""
    from dataclasses import replace

    from core import supervisor as rendering
    from core.config import load_config

    config = replace(load_config(ROOT / "production.ini", environ={}), path=Path("/srv/host/production.ini"))
    d = rendering.Deployment(config, "host", Path("/srv/host/venv"), Path("/var/log/host"))
    template = (ROOT / "supervisor" / name).read_text(encoding="utf-8")
    program = "host-celeryd" if name == "host-celeryd.conf" else "host-celerybeat"
    rendered = rendering.render(d)
    expected = rendered[rendered.index(f"[program:{program}]") :].split("\n\n")[0].rstrip("\n")
    assert expected in template


# -- a deployment under a real supervisord --------------------------------------------------


@dataclass
class Deployed:
    sup: Supervisor
    ini: Path
    site_id: str
    run: str
    env: dict[str, str]
    redis: redis.Redis

    def count(self, what: str) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.redis.hgetall(f"{self.run}:{what}").items()}

    def worker(self, n: int = 0) -> str:
        return f"host:host-celeryd-{n}"

    def send(self, name: str, *task_args: list) -> list[str]:
        return send(self, name, [list(a) for a in task_args])


SENDER = """
import json, sys
from core import configure

app = configure(sys.argv[1])
name, batches = sys.argv[2], json.loads(sys.stdin.read())
with app.producer_or_acquire() as producer:
    for args in batches:
        print(app.send_task(name, args=args, producer=producer).id)
"""


def send(d: Deployed, name: str, batches: list[list]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SENDER, str(d.ini), name],
        input=json.dumps(batches),
        env=d.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def shown_result(stdout: str) -> tuple[str, str | None]:
    """What ``host result`` says first (state, task, outcome), and the result it shows last."""
    lines = stdout.splitlines()
    value = lines[-1].strip() if len(lines) > 1 and lines[-2] == "result:" else None
    return (lines[0] if lines else "", value)


def result(d: Deployed, task_id: str) -> subprocess.CompletedProcess[str]:
    return host("result", task_id, "--wait", "--timeout", "120", "--config", str(d.ini), env=d.env)


def programs_for_test(rendered: str, env: dict[str, str]) -> str:
    """Run as the current user, with the test's environment (see the module docstring)."""
    me = getpass.getuser()
    text = rendered.replace("user = nobody", f"user = {me}")
    environment = ",".join(f'{k}="{env[k]}"' for k in ("PYTHONPATH", "HOST_ALLOW_ROOT", "PATH"))
    return re.sub(r"^(\[program:[^\]]+\])$", rf"\1\nenvironment = {environment}", text, flags=re.M)


@contextmanager
def deployed(
    tmp_path: Path,
    *render_args: str,
    ini_text: str = INI,
    broker: str = RABBITMQ_URL,
    ini_for: Callable[[str], str] | None = None,
) -> Iterator[Deployed]:
    """Render the programs for a site of this test's own, and run them under supervisord.

    The ini is ``ini_text`` formatted with ``broker``, ``results`` and ``site``,
    or what ``ini_for(site_id)`` returns.
    """
    site_id = f"t{uuid.uuid4().hex[:10]}"
    run = f"faults:{site_id}"
    text = ini_for(site_id) if ini_for else ini_text.format(broker=broker, results=REDIS_URL, site=site_id)
    ini = write_ini(tmp_path, text)
    site = install_faults(tmp_path)
    env = host_env(pythonpath=[site.path, TESTS])
    logs = tmp_path / "logs"
    logs.mkdir()
    rendered = host(
        "supervisor", "--config", str(ini), "--user", "nobody", "--log-dir", str(logs), *render_args, env=env
    )
    assert rendered.returncode == 0, rendered.stderr
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with running_supervisord(tmp_path, programs_for_test(rendered.stdout, env)) as sup:
            d = Deployed(sup, ini, site_id, run, env, client)
            sup.wait_for_state(d.worker(), "RUNNING")
            wait_until(lambda: "ready." in sup.log(d.worker()), 60, "the worker to be ready", sup.details)
            yield d
    finally:
        client.delete(f"{run}:started", f"{run}:done")
        client.close()
        delete_site(site_id, broker)


def delete_site(site_id: str, broker: str = RABBITMQ_URL) -> None:
    from kombu import Connection

    prefix = f"host:{site_id}:"
    with Connection(broker, connect_timeout=10) as connection:
        channel = connection.default_channel
        channel.queue_delete(prefix + "celery")
        for exchange in ("celery", "celery.pidbox", "celeryev", "reply.celery.pidbox"):
            channel.exchange_delete(prefix + exchange)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def running_task_pid(d: Deployed, worker_pid: int, token: str) -> int:
    """The pool process running ``token``: the one child whose ``started`` count went up."""
    wait_until(lambda: d.count("started").get(token), 60, f"task {token} to start", d.sup.details)
    pool = children(worker_pid)
    # With celery.worker_concurrency = 1 the one pool process is the one running it.
    assert len(pool) == 1, f"worker {worker_pid} has pool processes {pool}"
    return pool[0]


SOLO_INI = INI.replace("celery.worker_concurrency = 2", "celery.worker_concurrency = 1")


@pytest.mark.rabbitmq
@pytest.mark.redis
@pytest.mark.e2e
def test_warm_stop_lets_the_running_task_finish(tmp_path: Path) -> None:
    with deployed(tmp_path, ini_text=SOLO_INI) as d:
        [task_id] = d.send("faults.sleep", [d.run, "t1", 5])
        wait_until(lambda: d.count("started").get("t1"), 60, "the task to start", d.sup.details)
        stopped = d.sup.ctl("stop", "host:*", timeout=300)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert d.count("done") == {"t1": 1}  # finished before the worker exited
        info = d.sup.info(d.worker())
        assert (info["statename"], info["exitstatus"]) == ("STOPPED", 0), d.sup.log(d.worker())
        assert "Warm shutdown" in d.sup.log(d.worker())
        done = result(d, task_id)
        assert shown_result(done.stdout) == ("SUCCESS (faults.sleep); outcome: ok", "t1"), done.stderr


@pytest.mark.rabbitmq
@pytest.mark.redis
@pytest.mark.e2e
def test_killed_worker_is_restarted_and_its_task_runs_again(tmp_path: Path) -> None:
    with deployed(tmp_path, ini_text=SOLO_INI) as d:
        [task_id] = d.send("faults.sleep", [d.run, "t1", 3])
        wait_until(lambda: d.count("started").get("t1"), 60, "the task to start", d.sup.details)
        first = d.sup.info(d.worker())["pid"]
        os.kill(first, signal.SIGKILL)
        wait_until(
            lambda: (i := d.sup.info(d.worker()))["statename"] == "RUNNING" and i["pid"] != first,
            120,
            "supervisor to restart the worker",
            d.sup.details,
        )
        done = result(d, task_id)  # late ack: the message went back to the queue
        assert shown_result(done.stdout) == ("SUCCESS (faults.sleep); outcome: ok", "t1"), done.stderr
        assert d.count("started")["t1"] >= 2
        assert d.count("done")["t1"] >= 1


@pytest.mark.rabbitmq
@pytest.mark.redis
@pytest.mark.e2e
def test_killed_pool_process_has_its_task_redelivered(tmp_path: Path) -> None:
    with deployed(tmp_path, ini_text=SOLO_INI) as d:
        [task_id] = d.send("faults.sleep", [d.run, "t1", 3])
        worker_pid = d.sup.info(d.worker())["pid"]
        child = running_task_pid(d, worker_pid, "t1")
        os.kill(child, signal.SIGKILL)
        done = result(d, task_id)
        # Rejected on worker lost, redelivered, run again: not a WorkerLostError failure.
        shown = shown_result(done.stdout)
        assert shown == ("SUCCESS (faults.sleep); outcome: ok", "t1"), done.stderr + d.sup.log(d.worker())
        assert d.count("started")["t1"] == 2
        assert d.count("done") == {"t1": 1}
        assert d.sup.info(d.worker())["pid"] == worker_pid  # the worker itself lived on
        assert "WorkerLostError" in d.sup.log(d.worker())


@pytest.mark.rabbitmq
@pytest.mark.redis
@pytest.mark.e2e
def test_worker_reconnects_after_rabbitmq_drops_every_connection(tmp_path: Path) -> None:
    """On a RabbitMQ node of the test's own: dropping every connection disturbs no other test."""
    with rabbitmq_node() as node, deployed(tmp_path, broker=node.url) as d:
        tokens = [str(i) for i in range(2000)]
        d.send("faults.mark", *[[d.run, t] for t in tokens])
        wait_until(lambda: len(d.count("done")) >= 200, 120, "tasks to flow", d.sup.details)
        node.rabbitmqctl("close_all_connections", "host-framework fault test")
        wait_until(
            lambda: len(d.count("done")) == len(tokens),
            300,
            "every task to complete after the connections were closed",
            lambda: f"{len(d.count('done'))} done\n{d.sup.log(d.worker())[-3000:]}",
            interval=0.5,
        )
        log = d.sup.log(d.worker())
        assert re.search(r"consumer: Connection to broker lost|Connection to broker lost", log), log[-3000:]
        assert d.sup.info(d.worker())["statename"] == "RUNNING"


#: Enough for a backlog when a worker is killed (once all are sent and a third have run): it
#: holds messages then, and others wait behind them. 20,000 proved no more, taking longer.
LOAD_TASKS = 3_000


@pytest.mark.rabbitmq
@pytest.mark.redis
@pytest.mark.e2e
def test_load_with_a_worker_killed_midway_loses_nothing(tmp_path: Path, record_property) -> None:
    with deployed(tmp_path, "--workers", "3") as d:
        for n in (1, 2):
            d.sup.wait_for_state(d.worker(n), "RUNNING")
        tokens = [str(i) for i in range(LOAD_TASKS)]
        # In bulk (host send --many): sent faster than three workers drain them, so they queue up.
        many = tmp_path / "tasks.jsonl"
        many.write_text("".join(json.dumps([d.run, t]) + "\n" for t in tokens), encoding="utf-8")
        sent = host("send", "faults.mark", "--many", str(many), "--config", str(d.ini), env=d.env)
        assert sent.returncode == 0, sent.stderr
        wait_until(
            lambda: len(d.count("done")) >= LOAD_TASKS // 3, 300, "a third of the tasks", d.sup.details
        )
        victim = d.sup.info(d.worker(1))["pid"]
        os.kill(victim, signal.SIGKILL)
        done_at_kill = len(d.count("done"))
        wait_until(
            lambda: len(d.count("done")) == LOAD_TASKS,
            600,
            "every task to complete at least once",
            lambda: f"{len(d.count('done'))} of {LOAD_TASKS} done\n{d.sup.details()}",
            interval=0.5,
        )
        counts = d.count("done")
        lost = [t for t in tokens if t not in counts]
        twice = sum(1 for c in counts.values() if c > 1)
        record_property("tasks_run_twice", twice)
        print(
            f"\nload test: {LOAD_TASKS} tasks, {LOAD_TASKS - done_at_kill} left when a worker was killed, "
            f"0 lost, {twice} ran more than once"
        )
        assert done_at_kill < LOAD_TASKS, "every task had run before the worker was killed"
        assert lost == []
        assert set(counts) == set(tokens)


BROKEN_INI = """
[app:main]
celery.broker_url = {broker}
celery.result_backend = {results}
celery.no_such_setting = 1
host.site_id = {site}
host.plugins = faults

[plugin:faults]
redis_url = {results}
"""


@pytest.mark.rabbitmq
@pytest.mark.e2e
def test_misconfigured_program_ends_fatal_instead_of_looping(tmp_path: Path) -> None:
    good = write_ini(tmp_path, INI.format(broker=RABBITMQ_URL, results=REDIS_URL, site="x"), name="good.ini")
    site = install_faults(tmp_path)
    env = host_env(pythonpath=[site.path, TESTS])
    logs = tmp_path / "logs"
    logs.mkdir()
    rendered = host("supervisor", "--config", str(good), "--user", "nobody", "--log-dir", str(logs), env=env)
    assert rendered.returncode == 0, rendered.stderr
    # The file was rendered from a good ini; then someone broke the ini.
    good.write_text(BROKEN_INI.format(broker=RABBITMQ_URL, results=REDIS_URL, site="x"), encoding="utf-8")
    with running_supervisord(tmp_path, programs_for_test(rendered.stdout, env)) as sup:
        sup.wait_for_state("host:host-celeryd-0", "FATAL", timeout=120)
        events = (tmp_path / "supervisord.log").read_text(encoding="utf-8")
        assert events.count("exited: host-celeryd-0 (exit status 2; not expected)") == 4, events
        assert "gave up: host-celeryd-0 entered FATAL state, too many start retries too quickly" in events
        log = sup.log("host:host-celeryd-0")
        assert (
            f"Error: {good}, section [app:main], key 'celery.no_such_setting': unknown Celery setting" in log
        )
        assert log.count("unknown Celery setting") == 4  # the first start and startretries = 3
        assert "Traceback" not in log
        sup.wait_for_state("host:host-celerybeat", "FATAL", timeout=120)
        assert "unknown Celery setting" in sup.log("host:host-celerybeat")
