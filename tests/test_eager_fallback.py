"""Running without a task server: eager mode, the fallback, and the broker check (``host ping``).

Real processes where it matters: ``host send``, ``host result`` and ``host
ping`` on ini files in ``tmp_path``, and the toolkit in a Python process of
its own. A broker that is not there is a closed port on 127.0.0.1 (bound,
noted, closed); one that never answers is a listening socket whose backlog is
full, so that the kernel drops the next connection attempt. Nothing here
mocks the broker, and nothing asserts how long anything took.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import plugins
from conftest import IN_CI, RABBITMQ_URL
from core import availability
from core.celery_app import HostCelery
from core.config import load_config
from core.embedded_store import read_report
from core.errors import UsageError
from core.sending import BROKER_HINT, send
from core.startup import configure_app
from worker import host, host_env, write_ini

PASSWORD = "s3cret"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener never accepts and whose backlog is full: connecting hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for s in [*fillers, listener]:
            s.close()


@pytest.fixture(autouse=True)
def _fresh_answers() -> Iterator[None]:
    availability.forget()
    yield
    availability.forget()


def ini_text(
    broker: str, *lines: str, results: str = "embedded+sqlite:///%(here)s/data/results.sqlite"
) -> str:
    return "\n".join(
        ["[app:main]", f"celery.broker_url = {broker}", f"celery.result_backend = {results}", *lines, ""]
    )


def dead_broker() -> str:
    return f"amqp://guest:{PASSWORD}@127.0.0.1:{closed_port()}//"


def masked(url: str) -> str:
    return url.replace(PASSWORD, "**")


def toolkit(ini: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a Python process of its own, the toolkit configured from ``ini``."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=host_env({"HOST_CONFIG": str(ini)}),
        cwd=ini.parent,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


LOGGING = """
import logging, sys, warnings
from celery.exceptions import AlwaysEagerIgnored
warnings.simplefilter("error", AlwaysEagerIgnored)
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
"""


# -- host.task_mode = eager ------------------------------------------------------------


def test_eager_mode_runs_a_task_with_no_broker_at_all(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, ini_text(dead_broker(), "host.task_mode = eager"))
    env = host_env()

    sent = host("send", "example.add", "2", "3", "--config", str(ini), env=env, cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    assert len(task_id) == 36, sent.stdout  # the id alone: nothing else on stdout
    shown = host("result", task_id, "--config", str(ini), env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "SUCCESS" in shown.stdout and "5" in shown.stdout.split(), shown.stdout

    ran = toolkit(
        ini,
        LOGGING
        + f"""
from plugins import send_many, send_task
from core.celery_app import celery
result = send_task("example.add", [4, 5], task_id="eager-one")
print(type(result).__name__, result.id, result.state, result.get(timeout=10))
ids = send_many("example.add", [[1, 2], {{"args": [3, 4]}}])
print(*[celery.AsyncResult(i).get(timeout=10) for i in ids])
print(celery.AsyncResult({task_id!r}).get(timeout=10))
""",
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["EagerResult eager-one SUCCESS 9", "3 7", "5"]


def test_eager_mode_stores_a_failure_as_a_worker_would(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, ini_text(dead_broker(), "host.task_mode = eager"))
    ran = toolkit(
        ini,
        """
from plugins import send_task
from core.celery_app import celery
result = send_task("example.divide", [1, 0])
print(result.state, type(result.result).__name__)
stored = celery.AsyncResult(result.id)
print(stored.state, type(stored.result).__name__)
try:
    result.get(timeout=10)
except ZeroDivisionError as e:
    print("get() raised", type(e).__name__)
""",
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "FAILURE ZeroDivisionError",
        "FAILURE ZeroDivisionError",
        "get() raised ZeroDivisionError",
    ]


def test_eager_mode_refuses_an_unknown_task_as_host_send_does(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, ini_text(dead_broker(), "host.task_mode = eager"))
    sent = host("send", "example.ad", "1", "--config", str(ini), env=host_env(), cwd=tmp_path)
    ran = toolkit(
        ini,
        """
from plugins import send_task
try:
    send_task("example.ad", [1])
except Exception as e:
    print(type(e).__name__, e.exit_code, e.message)
""",
    )
    assert sent.returncode == 2, sent.stderr
    assert sent.stderr.startswith("Error: unknown task 'example.ad'; did you mean example.add")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("UsageError 2 unknown task 'example.ad'; did you mean example.add")


def test_eager_mode_passes_arguments_as_a_worker_gets_them(fresh_app: HostCelery, tmp_path: Path) -> None:
    ini = write_ini(tmp_path, ini_text(dead_broker(), "host.task_mode = eager", results=""))

    @fresh_app.task(name="t.kinds")
    def kinds(*args: object) -> list[str]:
        return [type(arg).__name__ for arg in args]

    configure_app(fresh_app, load_config(ini, environ={}))

    result = send(fresh_app, "t.kinds", [(1, 2), {"a": 1}], {})
    assert type(result).__name__ == "EagerResult"
    assert result.get() == ["list", "dict"]  # JSON has no tuples: a worker gets a list
    with pytest.raises(UsageError) as refused:
        send(fresh_app, "t.kinds", [object()], {})
    assert refused.value.message.startswith("the arguments of t.kinds cannot be serialised as json")


# -- host.fallback ---------------------------------------------------------------------


def test_fallback_eager_runs_the_task_inline_when_the_broker_port_is_closed(tmp_path: Path) -> None:
    broker = dead_broker()
    ini = write_ini(tmp_path, ini_text(broker, "host.fallback = eager"))

    sent = host("send", "example.add", "2", "3", "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    assert f"the broker at {masked(broker)} does not answer" in sent.stderr
    assert "tasks run inline in this process" in sent.stderr
    assert PASSWORD not in sent.stderr

    ran = toolkit(
        ini,
        LOGGING
        + f"""
from plugins import send_task
from core.celery_app import celery
results = [send_task("example.add", [n, n]) for n in range(3)]
print(*[type(r).__name__ for r in results])
print(*[r.get(timeout=10) for r in results])
print(celery.AsyncResult({sent.stdout.strip()!r}).get(timeout=10))
""",
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["EagerResult EagerResult EagerResult", "0 2 4", "5"]
    warnings = [line for line in ran.stderr.splitlines() if line.startswith("WARNING host.availability")]
    assert warnings == [
        f"WARNING host.availability: the broker at {masked(broker)} does not answer (127.0.0.1:"
        f"{broker.rsplit(':', 1)[1].strip('/')} refused the connection): host.fallback = eager, so tasks "
        "run inline in this process until it answers again (logged once per outage)"
    ]


def test_fallback_eager_says_when_the_broker_answers_again(tmp_path: Path) -> None:
    """The embedded broker's folder cannot be made (a file stands in its way), then it can."""
    blocker = tmp_path / "blocked"
    blocker.write_text("not a folder")
    store = blocker / "data" / "broker.sqlite"
    ini = write_ini(
        tmp_path,
        ini_text(
            f"embedded+sqlite:///{store}",
            "host.fallback = eager",
            "host.broker_check.cache_seconds = 0",
        ),
    )
    ran = toolkit(
        ini,
        LOGGING
        + f"""
import os
from plugins import send_task
inline = [send_task("example.add", [1, 2]), send_task("example.add", [3, 4])]
print(*[type(r).__name__ for r in inline], *[r.get(timeout=10) for r in inline])
os.remove({str(blocker)!r})
sent = send_task("example.add", [5, 6])
print(type(sent).__name__)
""",
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["EagerResult EagerResult 3 7", "AsyncResult"]
    lines = [line for line in ran.stderr.splitlines() if line.split(" ")[1:2] == ["host.availability:"]]
    assert len(lines) == 2, ran.stderr
    assert lines[0].startswith(f"WARNING host.availability: the broker at embedded+sqlite:///{store} ")
    assert f"the store's folder {store.parent} cannot be created" in lines[0]
    assert lines[1].startswith(f"INFO host.availability: the broker at embedded+sqlite:///{store} answers")
    assert "tasks are sent to it again (2 tasks ran inline in" in lines[1]
    report = read_report(store)
    assert report is not None and report.queues["celery"][0] == 1  # the third task waits for a worker


def stop_own_redis(pid_file: Path, server: str) -> None:
    """SIGKILL the redis-server whose pid the script wrote, if that process is still it."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == server.encode():
            os.kill(pid, signal.SIGKILL)


@pytest.mark.redis
def test_fallback_eager_sends_to_the_broker_again_once_it_answers(tmp_path: Path) -> None:
    """A Redis broker of the test's own, on a port of its own: down, then started."""
    server = shutil.which("redis-server")
    if server is None:
        (pytest.fail if IN_CI else pytest.skip)("redis-server is not installed")
        return
    port = closed_port()
    ini = write_ini(
        tmp_path,
        ini_text(
            f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
            "host.fallback = eager",
            "host.broker_check.cache_seconds = 0",
        ),
    )
    try:
        ran = toolkit(
            ini,
            LOGGING
            + f"""
import socket, subprocess, time
import redis
from plugins import send_task
inline = send_task("example.add", [1, 1])
print(type(inline).__name__, inline.get(timeout=10))
server = subprocess.Popen(
    [{server!r}, "--bind", "127.0.0.1", "--port", "{port}", "--save", "", "--requirepass", "{PASSWORD}"],
    stdout=subprocess.DEVNULL,
)
open({str(tmp_path / "redis.pid")!r}, "w").write(str(server.pid))
try:
    for _ in range(600):  # until it listens (at most a minute)
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    sent = send_task("example.add", [2, 2])
    print(type(sent).__name__, redis.Redis(port={port}, password="{PASSWORD}").llen("celery"))
finally:
    server.terminate()
    server.wait(timeout=60)
""",
        )
    except BaseException:  # the script stops its server; if it was killed first, the test does
        stop_own_redis(tmp_path / "redis.pid", server)
        raise
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["EagerResult 2", "AsyncResult 1"]
    lines = [line for line in ran.stderr.splitlines() if line.split(" ")[1:2] == ["host.availability:"]]
    url = f"redis://:**@127.0.0.1:{port}/0"
    assert [line.split(" (")[0] for line in lines] == [
        f"WARNING host.availability: the broker at {url} does not answer",
        f"INFO host.availability: the broker at {url} answers again: tasks are sent to it again",
    ]
    assert lines[1].endswith(")") and "(1 task ran inline in " in lines[1]
    assert PASSWORD not in ran.stderr


def test_fallback_eager_catches_a_send_that_fails_after_the_check(
    fresh_app: HostCelery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The port accepts connections (the check says up), then closes each at once: no AMQP there."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = int(listener.getsockname()[1])

    def close_each() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=close_each, daemon=True).start()
    ini = write_ini(
        tmp_path,
        ini_text(
            f"amqp://guest:{PASSWORD}@127.0.0.1:{port}//",
            "host.fallback = eager",
            'celery.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0}',
            results="",
        ),
    )

    @fresh_app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    configure_app(fresh_app, load_config(ini, environ={}))
    try:
        with caplog.at_level(logging.WARNING, logger="host.availability"):
            assert availability.check_broker(fresh_app).up
            first = send(fresh_app, "t.add", [1, 2], {})
            second = send(fresh_app, "t.add", [3, 4], {})
    finally:
        listener.close()
    assert (type(first).__name__, first.get(), second.get()) == ("EagerResult", 3, 7)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"the broker at amqp://guest:**@127.0.0.1:{port}// does not answer"
    ]
    assert availability.check_broker(fresh_app).cached  # the failed send's answer is kept


def test_fallback_error_gives_the_clear_error(tmp_path: Path) -> None:
    broker = dead_broker()
    ini = write_ini(tmp_path, ini_text(broker, "host.fallback = error"))
    sent = host("send", "example.add", "2", "3", "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert sent.returncode == 1, sent.stderr
    assert sent.stderr.startswith(
        f"Error: the task was not sent: the broker at {masked(broker)} does not answer"
    )
    assert sent.stderr.endswith(f"  -> {BROKER_HINT}\n")
    assert PASSWORD not in sent.stderr
    assert sent.stdout == ""


# -- the check: host ping, broker_available() ----------------------------------------------


def test_host_ping_answers_against_a_closed_port(tmp_path: Path) -> None:
    broker = dead_broker()
    port = broker.rsplit(":", 1)[1].strip("/")
    ini = write_ini(tmp_path, ini_text(broker))
    pinged = host("ping", "--timeout", "0.5", "--config", str(ini), env=host_env(), cwd=tmp_path)
    as_json = host("ping", "--json", "--config", str(ini), env=host_env(), cwd=tmp_path)

    assert pinged.returncode == 1, pinged.stderr
    assert pinged.stdout.startswith(
        f"broker {masked(broker)} is down: 127.0.0.1:{port} refused the connection ("
    )
    assert pinged.stdout.rstrip().endswith(" ms)")
    assert as_json.returncode == 1, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["up"] is False and document["cached"] is False
    assert (document["url"], document["timeout"]) == (masked(broker), 1.0)
    assert PASSWORD not in pinged.stdout + as_json.stdout


def test_host_ping_gives_up_after_its_timeout_against_a_silent_port(tmp_path: Path, silent_port: int) -> None:
    broker = f"amqp://127.0.0.1:{silent_port}//"
    ini = write_ini(tmp_path, ini_text(broker, "host.broker_check.timeout = 0.3"))
    pinged = host("ping", "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert pinged.returncode == 1, pinged.stderr
    assert pinged.stdout.startswith(
        f"broker {broker} is down: 127.0.0.1:{silent_port} did not answer within 0.3 s ("
    )


def test_host_ping_on_the_embedded_broker(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, ini_text("embedded+sqlite:///%(here)s/data/broker.sqlite"))
    pinged = host("ping", "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert pinged.returncode == 0, pinged.stderr
    assert pinged.stdout.startswith(
        f"broker embedded+sqlite:///{tmp_path}/data/broker.sqlite is up: "
        f"the store's folder {tmp_path}/data will be created by the first send ("
    )


@pytest.mark.rabbitmq
def test_host_ping_takes_any_failover_url_that_answers(tmp_path: Path) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{closed_port()}//"
    ini = write_ini(tmp_path, ini_text(f"{dead};{RABBITMQ_URL}"))
    pinged = host("ping", "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert pinged.returncode == 0, pinged.stderr
    assert pinged.stdout.startswith(f"broker {dead.replace(':guest@', ':**@')};")
    assert " is up: 127.0.0.1:5672 accepted a connection (" in pinged.stdout


def test_the_check_is_cached(fresh_app: HostCelery, tmp_path: Path) -> None:
    """The toolkit's broker_available() keeps its answer; max_age=0 asks again."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = int(listener.getsockname()[1])
    ini = write_ini(tmp_path, ini_text(f"redis://127.0.0.1:{port}/0", "host.broker_check.cache_seconds = 60"))
    configure_app(fresh_app, load_config(ini, environ={}))

    first = plugins.broker_available()
    listener.close()  # the broker goes away: the kept answer still says up
    kept = plugins.broker_available()
    fresh = plugins.broker_available(max_age=0)
    kept_down = plugins.broker_available(timeout=0.5)

    assert (bool(first), first.cached) == (True, False)
    assert first.detail == f"127.0.0.1:{port} accepted a connection"
    assert (bool(kept), kept.cached, kept.seconds) == (True, True, first.seconds)
    assert (bool(fresh), fresh.cached, fresh.detail) == (
        False,
        False,
        f"127.0.0.1:{port} refused the connection",
    )
    assert (bool(kept_down), kept_down.cached) == (False, True)


def test_the_check_of_an_embedded_store_whose_folder_cannot_be_made(
    fresh_app: HostCelery, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    ini = write_ini(tmp_path, ini_text("embedded+sqlite:///%(here)s/file/broker.sqlite"))
    configure_app(fresh_app, load_config(ini, environ={}))
    found = availability.check_broker(fresh_app)
    assert not found
    assert found.detail == (
        f"the store's folder {tmp_path}/file cannot be created ({tmp_path}/file is not a writable folder)"
    )


def test_a_timeout_of_zero_is_refused(fresh_app: HostCelery, tmp_path: Path) -> None:
    ini = write_ini(tmp_path, ini_text("embedded+sqlite:///%(here)s/data/broker.sqlite"))
    configure_app(fresh_app, load_config(ini, environ={}))
    with pytest.raises(UsageError, match="a timeout of 0 s cannot be waited"):
        availability.check_broker(fresh_app, timeout=0)


def test_eager_mode_in_the_settings_and_in_doctor(tmp_path: Path) -> None:
    broker = dead_broker()
    ini = write_ini(tmp_path, ini_text(broker, "host.task_mode = eager"))
    shown = host("config", "show", "--json", "--config", str(ini), env=host_env(), cwd=tmp_path)
    doctor = host("doctor", "--config", str(ini), env=host_env(), cwd=tmp_path)

    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["settings"]["celery.task_always_eager"] is True
    assert document["sources"]["celery.task_always_eager"] == "host.task_mode"
    assert document["settings"]["celery.task_store_eager_result"] is True
    assert f"ok   broker: {masked(broker)} not used: host.task_mode = eager" in doctor.stdout
