"""Security: no password in any output or log, and no worker running as root by accident.

The password test creates a RabbitMQ account of its own with a password no
other output could contain by chance, runs a real worker on it, and greps
everything a user or an operator sees: every command's output, the worker's
banner and log, and the rendered supervisor file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from conftest import IN_CI, RABBITMQ_URL, REDIS_URL
from worker import host, host_env, running_worker, write_ini

EMBEDDED = "embedded+sqlite:///%(here)s/data/broker.sqlite"


def _rabbitmqctl(*args: str) -> None:
    path = shutil.which("rabbitmqctl")
    if path is None:
        message = "rabbitmqctl is not installed: it creates the test's broker account"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run([path, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def account() -> Iterator[tuple[str, str]]:
    """A RabbitMQ user of this test's own on ``/``: (name, password)."""
    name, password = f"hosttest-{uuid.uuid4().hex[:8]}", f"Pw-{uuid.uuid4().hex}"
    _rabbitmqctl("add_user", name, password)
    try:
        _rabbitmqctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        yield name, password
    finally:
        _rabbitmqctl("delete_user", name)


INI = """
[app:main]
celery.broker_url = {broker}
celery.result_backend = {results}
celery.worker_redirect_stdouts_level = INFO
host.site_id = {site}
host.plugins = example
host.locks.url = {results}

[plugin:example]
greeting = Hello
"""


@pytest.mark.rabbitmq
@pytest.mark.redis
@pytest.mark.e2e
def test_the_password_appears_nowhere(tmp_path: Path, account: tuple[str, str]) -> None:
    user, password = account
    site = f"sec{uuid.uuid4().hex[:10]}"
    broker = f"amqp://{user}:{password}@127.0.0.1:5672//"
    ini_text = INI.format(broker=broker, results=REDIS_URL, site=site)
    commands = [
        ["config", "show"],
        ["config", "show", "--json"],
        ["doctor"],
        ["tasks"],
        ["plugins"],
        ["send", "example.echo", '"hi"', "--wait", "--timeout", "60"],
        ["supervisor", "--user", "nobody"],
    ]
    try:
        with running_worker(tmp_path, ini_text, args=("-c", "1")) as worker:
            done = [host(*command, "--config", str(worker.ini), env=worker.env) for command in commands]
            worker.terminate()
        for command, run in zip(commands, done, strict=True):
            assert run.returncode == 0, (command, run.stdout, run.stderr)
        assert done[5].stdout == "hi\n"
        seen = "".join(run.stdout + run.stderr for run in done) + worker.log
        assert password not in seen
        masked = f"amqp://{user}:**@127.0.0.1:5672//"
        assert masked in worker.log  # the banner shows the broker, masked
        assert f"celery.broker_url = {masked}    # file" in done[0].stdout.splitlines()
    finally:
        with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
            channel = connection.default_channel
            for queue in ("celery", "example"):  # the default queue, and the example plugin's
                channel.queue_delete(f"host:{site}:{queue}")
            for exchange in ("celery", "celery.pidbox", "celeryev", "reply.celery.pidbox"):
                channel.exchange_delete(f"host:{site}:{exchange}")


@pytest.mark.skipif(os.geteuid() != 0, reason="only a process running as root can be refused for it")
@pytest.mark.parametrize(("command", "what"), [("celeryd", "a worker"), ("celerybeat", "beat")])
def test_root_is_refused_without_an_explicit_override(tmp_path: Path, command: str, what: str) -> None:
    ini = write_ini(tmp_path, f"[app:main]\ncelery.broker_url = {EMBEDDED}\n")
    env = host_env()
    del env["HOST_ALLOW_ROOT"]  # the tests' own override

    done = host(command, "--config", str(ini), env=env, cwd=tmp_path)

    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"Error: {ini}, section [app:main], key 'host.allow_root': refusing to start {what} as root: "
        "its tasks would run with every privilege of the machine, and a task message is input from "
        "the network\n"
        "  -> run it as an unprivileged user (supervisor: user=, `host supervisor --user`), or, for a "
        "throw-away container, set host.allow_root = true (or HOST_ALLOW_ROOT=true)\n"
    )


def test_arguments_over_the_message_limit_are_refused_before_sending(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, f"[app:main]\ncelery.broker_url = {EMBEDDED}\nhost.max_message_bytes = 1000\n")

    done = host(
        "send", "example.echo", '"' + "x" * 2000 + '"', "--config", str(ini), env=host_env(), cwd=tmp_path
    )

    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "Error: the arguments of example.echo are 2014 bytes, more than host.max_message_bytes = 1000; "
        "workers would reject the message\n"
        "  -> pass large data by reference (a path, a URL, a database id) instead of in the arguments\n"
    )
