"""Failure emails to ``host.admin_emails``, end to end: a real SMTP server, real workers.

aiosmtpd, started here on 127.0.0.1 on a spare port, is the mail server: it
keeps every message it accepts and refuses any recipient at
``refused.example`` (a bad address). The workers are ``host celeryd``
processes on ``development.ini`` written into a folder of the module's own
(the embedded broker: no other server), with the tasks of
tests/notify_tasks.py and the ``host_task_failure`` recorder of
tests/notify_plugin.py installed as the real distribution ``notify-tasks``.
One worker (two pool processes) serves every test but the one whose SMTP
server is down. Every wait has a generous
deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import email
import email.policy
import json
import multiprocessing
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from conftest import ROOT, install_site
from core.celery_app import HostCelery
from core.config import load_config
from core.notify import RedisThrottle, SqliteThrottle
from core.startup import configure_app
from services import spare_port
from worker import Worker, development_ini, running_worker, wait_until

pytestmark = pytest.mark.e2e

TESTS = ROOT / "tests"
DEADLINE = 120.0
#: The module worker's host.admin_emails_interval: long beside ten failures in a row.
INTERVAL = 15.0
ADMINS = ("ops@example.org", "oncall@example.org")
REFUSED = "nobody@refused.example"


def install_tasks(directory: Path) -> Path:
    """tests/notify_tasks.py as the distribution ``notify-tasks``: its tasks and its plugin."""
    return install_site(
        directory,
        "notify-tasks",
        {
            "host.celery_task": {"tasks": "notify_tasks:task_imports"},
            "host.plugins": {"notifyrec": "notify_plugin"},
        },
    )


# -- the SMTP server -------------------------------------------------------------------------


@dataclass
class Received:
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return part.get_content()


@dataclass
class Inbox:
    """aiosmtpd's handler: every accepted message, in the order the server took them."""

    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address.endswith("@refused.example"):
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(Received(list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def about(self, task: str | None = None, task_id: str | None = None) -> list[Received]:
        with self.lock:
            return [
                m
                for m in self.messages
                if (task is None or m.message["X-Host-Task"] == task)
                and (task_id is None or m.message["X-Host-Task-Id"] == task_id)
            ]


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = spare_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


# -- the module's worker -----------------------------------------------------------------------


@dataclass
class Host:
    directory: Path
    worker: Worker
    app: HostCelery
    inbox: Inbox
    hook_file: Path

    @property
    def node(self) -> str:
        return self.worker.wait_for_log(r"(\S+@\S+) ready\.").group(1)

    def tail(self) -> str:
        return self.worker.failure_details()[-6000:]

    def hook_calls(self) -> list[str]:
        if not self.hook_file.exists():
            return []
        return self.hook_file.read_text(encoding="utf-8").splitlines()


def sender(ini: Path) -> HostCelery:
    """An app of this process's own on the worker's ini, to send and read results.

    Without the plugin ``notifyrec``: its distribution is on the worker's path, not on this one.
    """
    config = load_config(ini, environ={"HOST_PLUGINS": "example"})
    return configure_app(HostCelery("notify-test", set_as_current=False), config)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[Inbox, int]) -> Iterator[Host]:
    inbox, port = smtp
    directory = tmp_path_factory.mktemp("notify")
    hook_file = directory / "hook-calls"
    ini = development_ini(
        {
            "host.plugins": "example notifyrec",
            "host.admin_emails": " ".join([*ADMINS, REFUSED]),
            "host.admin_emails_interval": str(INTERVAL),
            "smtp.server": "127.0.0.1",
            "smtp.port": str(port),
            "smtp.mail_from": "host@example.org",
        }
    )
    with running_worker(
        directory,
        ini,
        args=("-c", "2"),
        env={"NOTIFY_HOOK_FILE": str(hook_file)},
        pythonpath=[install_tasks(directory), TESTS],
    ) as worker:
        app = sender(worker.ini)
        try:
            yield Host(directory, worker, app, inbox, hook_file)
        finally:
            app.close()
        assert worker.terminate() == 0, worker.failure_details()[-6000:]


def wait_for_state(host: Host, task_id: str, state: str) -> None:
    wait_until(
        lambda: host.app.AsyncResult(task_id).state == state,
        DEADLINE,
        f"task {task_id} to be {state}",
        host.tail,
    )


# -- one email, when the retries are exhausted ------------------------------------------------------


def test_one_email_when_the_retries_are_exhausted_none_while_they_remain(host: Host) -> None:
    """Two retries, then the third attempt fails for good: one email, about the third attempt.

    The task's arguments hold a URL with a password, a dict with a password
    and a token keyword: the email shows none of them. Each admin address gets
    the email; the refused one is logged, and does not stop the others.
    """
    result = host.app.send_task(
        "notify.exhausts",
        args=["amqp://app:s3cret-pw@mq.internal//", {"password": "hunter2", "dataset": "birds"}],
        kwargs={"api_token": "tok-123456"},
    )
    wait_for_state(host, result.id, "FAILURE")
    emails = wait_until(lambda: host.inbox.about(task_id=result.id), DEADLINE, "the failure email", host.tail)
    # Throttled per task name: had a retry sent one, it would be this first email (attempt 1 or 2).
    assert len(emails) == 1, [m.body for m in emails]
    mail = emails[0]
    assert sorted(mail.rcpt_tos) == sorted(ADMINS)
    assert (
        str(mail.message["Subject"]).strip()
        == "[host] task notify.exhausts failed: Boom: attempt 3 of 3 failed"
    )
    assert mail.message["From"] == "host@example.org"
    body = mail.body
    assert "Task notify.exhausts failed for good" in body
    assert f"id:        {result.id}" in body
    assert f"worker:    {host.node}" in body
    assert "exception: Boom: attempt 3 of 3 failed" in body
    assert "Traceback (most recent call last)" in body and "notify_tasks.py" in body
    # The arguments, with every secret masked.
    args = json.loads(re.search(r"^args:      (.*)$", body, re.M).group(1))  # type: ignore[union-attr]
    assert args == ["amqp://app:**@mq.internal//", {"password": "********", "dataset": "birds"}]
    kwargs = json.loads(re.search(r"^kwargs:    (.*)$", body, re.M).group(1))  # type: ignore[union-attr]
    assert kwargs == {"api_token": "********"}
    for secret in ("s3cret-pw", "hunter2", "tok-123456"):
        assert secret not in mail.message.as_string()
    # Two retries happened before (the worker logs each), and the refused address is logged.
    assert len(re.findall(rf"notify\.exhausts\[{result.id}\] retry", host.worker.log)) == 2, host.tail()
    host.worker.wait_for_log(
        rf"could not mail the failure of task notify\.exhausts\[{result.id}\] to {REFUSED}"
    )


def test_the_host_task_failure_hook_is_called_too(host: Host) -> None:
    """The email does not replace the hook: a plugin still hears of the failure, once."""
    result = host.app.send_task("notify.hooked", task_id=f"hooked-{uuid.uuid4()}")
    wait_until(lambda: host.inbox.about(task_id=result.id), DEADLINE, "the failure email", host.tail)
    wait_until(
        lambda: [line for line in host.hook_calls() if result.id in line],
        DEADLINE,
        "the hook's line",
        host.tail,
    )
    assert [line for line in host.hook_calls() if result.id in line] == [f"notify.hooked {result.id} Boom"]


def test_ten_quick_failures_make_one_email_and_one_throttled_email_with_the_count(host: Host) -> None:
    """Ten failures of one task at once: one email for the first, then one standing for the nine others.

    The two pool processes run them side by side: the throttle is shared between them.
    """
    name = "notify.fails"  # no other test of this worker fails it: no window is open
    assert not host.inbox.about(task=name)
    ids = [host.app.send_task(name, args=[n]).id for n in range(10)]
    for task_id in ids:
        wait_for_state(host, task_id, "FAILURE")

    def counted() -> int:
        return sum(int(m.message["X-Host-Failures"]) for m in host.inbox.about(task=name))

    # The first is mailed at once; the others are counted, and mailed as one when the interval ends.
    wait_until(lambda: counted() >= 10, DEADLINE, "emails standing for the ten failures", host.tail)
    emails = host.inbox.about(task=name)
    assert counted() == 10
    first, *throttled = emails
    assert first.message["X-Host-Failures"] == "1"
    assert first.message["X-Host-Task-Id"] in ids
    assert "more failure" not in first.body
    # Ten failures take well under the interval: all nine others fall into the first one's window.
    assert [m.message["X-Host-Failures"] for m in throttled] == ["9"], [m.body for m in emails]
    body = throttled[0].body
    assert re.search(rf"^\.\.\. and 9 more failures of {re.escape(name)} since \d\d:\d\d", body, re.M), body
    assert throttled[0].message["X-Host-Task-Id"] in set(ids) - {first.message["X-Host-Task-Id"]}
    assert (
        str(throttled[0].message["Subject"])
        .strip()
        .startswith(f"[host] task {name} failed: Boom: failure number")
    )


def test_a_hard_time_limit_is_mailed_from_the_main_process(host: Host) -> None:
    """The pool process is killed at the time limit: the main process reports it, and mails it."""
    result = host.app.send_task("notify.hangs")
    wait_for_state(host, result.id, "FAILURE")
    emails = wait_until(
        lambda: host.inbox.about(task_id=result.id), DEADLINE, "the time limit's email", host.tail
    )
    assert len(emails) == 1
    assert (
        str(emails[0].message["Subject"]).strip() == "[host] task notify.hangs failed: TimeLimitExceeded: 2"
    )
    assert f"worker:    {host.node}" in emails[0].body


# -- an SMTP server that is down --------------------------------------------------------------------


def test_an_smtp_server_that_is_down_is_logged_and_the_worker_goes_on(tmp_path: Path) -> None:
    """Nothing listens on the SMTP port: the task's FAILURE is stored, the error logged once, and
    the worker runs the next task."""
    port = spare_port()  # nothing listens there
    ini = development_ini(
        {
            "host.plugins": "example",
            "host.admin_emails": ADMINS[0],
            "smtp.server": "127.0.0.1",
            "smtp.port": str(port),
        }
    )
    with running_worker(
        tmp_path, ini, args=("-c", "1"), pythonpath=[install_tasks(tmp_path), TESTS]
    ) as worker:
        app = sender(worker.ini)
        try:
            failed = app.send_task("notify.fails", args=["smtp down"])
            with pytest.raises(Exception, match="failure number smtp down") as raised:
                failed.get(timeout=DEADLINE)
            assert type(raised.value).__name__ == "Boom"  # the task's own error, not the notifier's
            line = worker.wait_for_log(
                rf"could not mail the failure of task notify\.fails\[{failed.id}\] to {ADMINS[0]}: "
                rf"(ConnectionRefusedError|OSError|TimeoutError)[^\n]*\(SMTP server 127\.0\.0\.1:{port}\)"
            )
            assert app.send_task("example.add", args=[2, 3]).get(timeout=DEADLINE) == 5
            assert worker.log.count(f"could not mail the failure of task notify.fails[{failed.id}]") == 1
            assert "Traceback" not in line.group(0)
        finally:
            app.close()
        assert worker.terminate() == 0, worker.failure_details()[-6000:]


# -- the throttle's state, shared by processes -----------------------------------------------------


def _record_many(kind: str, where: str, task: str, now: float, count: int) -> list[tuple[bool, int]]:
    throttle = SqliteThrottle(Path(where)) if kind == "sqlite" else RedisThrottle(where, f"test:{task}:")
    decisions = [throttle.record(task, now, 3600.0) for _ in range(count)]
    return [(d.send, d.more) for d in decisions]


def _race(kind: str, where: str, task: str) -> list[tuple[bool, int]]:
    """Four processes, 25 failures each, of one task within one window."""
    now = time.time()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        parts = pool.starmap(_record_many, [(kind, where, task, now, 25)] * 4)
    return [decision for part in parts for decision in part]


def _check_race(
    throttle: SqliteThrottle | RedisThrottle,
    decisions: list[tuple[bool, int]],
    task: str,
    end_window: Callable[[], float],
) -> None:
    assert sum(send for send, _ in decisions) == 1, "one email per window, whichever process asks"
    assert not throttle.claim(task, time.time(), 3600.0).send, "the window is not over"
    later = end_window()
    claimed = throttle.claim(task, later, 3600.0)
    assert (claimed.send, claimed.more, claimed.summary) == (True, 99, True)
    assert not throttle.claim(task, later, 3600.0).send, "the count goes out once"


def test_the_sqlite_throttle_sends_once_per_window_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "data" / "notify.sqlite"
    decisions = _race("sqlite", str(path), "race.task")
    _check_race(SqliteThrottle(path), decisions, "race.task", lambda: time.time() + 3600.0)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700


@pytest.mark.redis
def test_the_redis_throttle_sends_once_per_window_across_processes() -> None:
    from conftest import REDIS_URL

    task = f"race-{uuid.uuid4().hex}"
    decisions = _race("redis", REDIS_URL, task)
    throttle = RedisThrottle(REDIS_URL, f"test:{task}:")
    try:

        def end_window() -> float:
            throttle.client.delete(throttle._keys(task)[0])  # what the window's expiry does
            return time.time()

        _check_race(throttle, decisions, task, end_window)
    finally:
        throttle.client.delete(*throttle._keys(task))


# -- the settings ---------------------------------------------------------------------------------


def test_smtp_keys_are_read_typed_and_overridden_by_the_environment(tmp_path: Path) -> None:
    ini = tmp_path / "test.ini"
    ini.write_text(
        development_ini(
            {
                "host.admin_emails": "ops@example.org, oncall@example.org",
                "host.admin_emails_interval": "60",
                "smtp.server": "smtp.example.org",
                "smtp.port": "587",
                "smtp.starttls": "yes",
                "smtp.user": "host",
                "smtp.password": "in-the-file",
            }
        ),
        encoding="utf-8",
    )
    config = load_config(ini, environ={"HOST_SMTP_PASSWORD": "from-env", "HOST_SMTP_MAIL_FROM": ""})
    assert config.host["admin_emails"] == ["ops@example.org", "oncall@example.org"]
    assert config.host["admin_emails_interval"] == 60.0
    assert config.smtp == {
        "server": "smtp.example.org",
        "port": 587,
        "starttls": True,
        "user": "host",
        "password": "from-env",
        "mail_from": "",  # an empty variable counts as unset
    }
    assert config.sources["smtp.password"] == "env HOST_SMTP_PASSWORD"
    assert config.sources["smtp.port"] == "file"
    assert config.sources["smtp.mail_from"] == "default"


@pytest.mark.parametrize(
    ("settings", "environ", "expected"),
    [
        (
            {"smtp.sever": "x"},
            {},
            "section [app:main], key 'smtp.sever': unknown smtp setting\n  -> did you mean smtp.server?",
        ),
        (
            {},
            {"HOST_SMTP_PASWORD": "x"},
            "environment, key 'HOST_SMTP_PASWORD': unknown smtp setting in the environment\n"
            "  -> did you mean HOST_SMTP_PASSWORD?",
        ),
        ({"smtp.port": "twenty-five"}, {}, "key 'smtp.port': 'twenty-five' is not an integer"),
        ({"smtp.starttls": "maybe"}, {}, "key 'smtp.starttls': "),
        ({"host.admin_emails": "ops"}, {}, "key 'host.admin_emails': 'ops' is not an email address"),
        ({"host.admin_emails_interval": "-1"}, {}, "key 'host.admin_emails_interval': "),
        (
            {},
            {"HOST_ADMIN_EMAILS": "ops@example.org <ops>"},
            "environment, key 'HOST_ADMIN_EMAILS': '<ops>' is not an email address",
        ),
    ],
)
def test_bad_smtp_and_admin_settings_are_errors_naming_the_key(
    tmp_path: Path, settings: dict[str, str], environ: dict[str, str], expected: str
) -> None:
    from core.errors import ConfigError

    ini = tmp_path / "test.ini"
    ini.write_text(development_ini(settings), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(ini, environ=environ)
    assert expected in str(raised.value), str(raised.value)


def test_config_show_masks_the_smtp_password_and_doctor_wants_a_server(tmp_path: Path) -> None:
    from worker import host as run_host
    from worker import host_env

    ini = tmp_path / "test.ini"
    ini.write_text(development_ini({"host.admin_emails": "ops@example.org"}), encoding="utf-8")
    env = host_env({"HOST_SMTP_PASSWORD": "pw-in-env-1234"})

    shown = run_host("config", "show", "--config", str(ini), env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "smtp.password = ********    # env HOST_SMTP_PASSWORD" in shown.stdout
    assert "pw-in-env-1234" not in shown.stdout + shown.stderr

    doctor = run_host("doctor", "--config", str(ini), env=env, cwd=tmp_path)
    assert doctor.returncode == 2, doctor.stdout + doctor.stderr
    assert (
        "FAIL failure emails: host.admin_emails is set but smtp.server is not: no failure email can be sent"
        in doctor.stdout
    )
    assert "pw-in-env-1234" not in doctor.stdout + doctor.stderr

    doctor = run_host(
        "doctor", "--config", str(ini), env={**env, "HOST_SMTP_SERVER": "127.0.0.1"}, cwd=tmp_path
    )
    assert "ok   failure emails: to ops@example.org through 127.0.0.1:25" in doctor.stdout, doctor.stdout
