"""Brokers and result stores a test owns, so that it can stop them without touching anyone else's.

An outage test stops its broker or result store. Stopping the shared
RabbitMQ on 127.0.0.1:5672 would break every other test running beside it,
so each outage test starts servers of its own on spare loopback ports:

* :func:`rabbitmq_node` -- a second RabbitMQ node (``rabbitmq-server`` with
  a node name, ports and data folder of its own), stopped and started with
  ``rabbitmqctl -n NODE stop_app|start_app``, exactly what an operator runs;
* :func:`redis_server` -- a ``redis-server`` on a spare port with an
  append-only file, killed (SIGKILL) and started again on the same port with
  the same data, as a persistent Redis is after a crash.

Both are gone when the context ends, whatever happened; a stopped node is
started again in a ``finally`` before it is shut down. Without ``CI=true`` a
test is skipped with the reason when the server is not installed; with it,
the test fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import IN_CI, answers
from worker import wait_until

#: A node's start takes a few seconds here; a loaded CI machine may take many more.
START_TIMEOUT = 120.0


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _installed(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        message = f"{program} is not installed"
        if IN_CI:
            pytest.fail(f"{message}; with CI=true this test must run")
        pytest.skip(f"{message} (install it, or run with CI=true to make this a failure)")
    return found


@dataclass
class RabbitNode:
    """A RabbitMQ node of the test's own."""

    name: str
    port: int
    env: dict[str, str]
    ctl: str

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def rabbitmqctl(self, *args: str, timeout: float = 120.0) -> None:
        done = subprocess.run(
            [self.ctl, "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}"

    def stop_app(self) -> None:
        self.rabbitmqctl("stop_app")
        wait_until(lambda: not answers(self.port), 60, f"RabbitMQ on {self.port} to stop listening")

    def start_app(self) -> None:
        self.rabbitmqctl("start_app")
        wait_until(lambda: answers(self.port), START_TIMEOUT, f"RabbitMQ on {self.port} to listen")


@contextmanager
def rabbitmq_node() -> Iterator[RabbitNode]:
    """Start a RabbitMQ node on a spare loopback port; stop it and remove its data afterwards."""
    server, ctl = _installed("rabbitmq-server"), _installed("rabbitmqctl")
    port, dist_port = spare_port(), spare_port()
    name = f"hosttest-{uuid.uuid4().hex[:8]}@localhost"
    # Not under tmp_path: pytest's folders are private to the user running the tests.
    base = Path(tempfile.mkdtemp(prefix="hosttest-rabbitmq-"))
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        # The Erlang distribution port too listens on loopback only.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    if os.geteuid() == 0:  # the packaged script runs the server as the rabbitmq user
        shutil.chown(base, "rabbitmq", "rabbitmq")
    node = RabbitNode(name, port, env, ctl)
    subprocess.run([server, "-detached"], env=env, check=True, timeout=120, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: answers(port), START_TIMEOUT, f"the test's RabbitMQ node on {port}")
        yield node
    finally:
        try:
            if not answers(port):
                node.start_app()  # a test that failed mid-outage leaves the node stopped
        finally:
            subprocess.run([ctl, "-n", name, "stop"], env=env, capture_output=True, timeout=120)
            shutil.rmtree(base, ignore_errors=True)


@dataclass
class RedisServer:
    """A ``redis-server`` of the test's own."""

    port: int
    program: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # Every write is on disk before Redis answers it (the append-only file,
        # fsync always), so a SIGKILL loses nothing, and a start loads it again.
        options = [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.directory),
        ]
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [self.program, "--bind", "127.0.0.1", "--port", str(self.port), *options],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
            )
        wait_until(lambda: answers(self.port), 60, f"redis-server on {self.port}")

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients; what it acknowledged is in its append-only file."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=60)
            self.process = None


@contextmanager
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(spare_port(), _installed("redis-server"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
