"""A real ``supervisord`` for the tests, on a socket in a temporary folder.

::

    with running_supervisord(tmp_path, programs_text) as sup:
        sup.ctl("stop", "host:*")          # supervisorctl, as an operator types it
        sup.info("host:host-celeryd-0")    # getProcessInfo over XML-RPC: state, pid...

Every wait has a timeout; none is an assertion about speed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from worker import wait_until

BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0

SUPERVISORD_CONF = """
[unix_http_server]
file = {dir}/supervisor.sock

[supervisord]
logfile = {dir}/supervisord.log
pidfile = {dir}/supervisord.pid
childlogdir = {dir}
nodaemon = true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{dir}/supervisor.sock

[include]
files = {dir}/programs.conf
"""


class Supervisor:
    def __init__(self, directory: Path, process: subprocess.Popen[bytes]) -> None:
        self.directory = directory
        self.conf = directory / "supervisord.conf"
        self.process = process

    def call(self, method: str, *args: Any) -> Any:
        """One XML-RPC call (``supervisor.getState``...) on a connection of its own, closed afterwards."""
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.directory}/supervisor.sock")
        with xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport) as proxy:
            return getattr(proxy, method)(*args)

    def ctl(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``supervisorctl -c CONF ARGS``."""
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def info(self, name: str) -> dict[str, Any]:
        """supervisor's getProcessInfo: ``statename``, ``pid``, ``exitstatus``..."""
        return self.call("supervisor.getProcessInfo", name)  # type: ignore[no-any-return]

    def wait_for_state(self, name: str, state: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        return wait_until(  # type: ignore[return-value]
            lambda: (info := self.info(name))["statename"] == state and info,
            timeout,
            f"{name} to be {state}",
            lambda: f"{self.info(name)}\n{self.log(name)}",
            interval=0.1,
        )

    def log(self, name: str) -> str:
        """The program's log (stdout and stderr, redirect_stderr = true)."""
        path = Path(self.info(name)["stdout_logfile"])
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def details(self) -> str:
        text = (self.directory / "supervisord.log").read_text(encoding="utf-8", errors="replace")
        return f"supervisord log:\n{text}"


@contextmanager
def running_supervisord(directory: Path, programs: str) -> Iterator[Supervisor]:
    """Write the programs, start supervisord in the foreground, and shut it down afterwards."""
    (directory / "supervisord.conf").write_text(
        textwrap.dedent(SUPERVISORD_CONF).format(dir=directory), encoding="utf-8"
    )
    (directory / "programs.conf").write_text(programs, encoding="utf-8")
    with (directory / "supervisord.out").open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "supervisord"), "-c", str(directory / "supervisord.conf")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sup = Supervisor(directory, process)
    try:
        wait_until(lambda: _answers(sup), START_TIMEOUT, "supervisord to answer", sup.details, interval=0.1)
        yield sup
    finally:
        if process.poll() is None:
            with_timeout = sup.ctl("shutdown", timeout=300)
            try:
                process.wait(timeout=300)
            except subprocess.TimeoutExpired:
                process.kill()
                pytest.fail(f"supervisord did not shut down: {with_timeout.stdout}\n{sup.details()}")


def _answers(sup: Supervisor) -> bool:
    if sup.process.poll() is not None:
        pytest.fail(
            f"supervisord exited with status {sup.process.returncode}\n{sup.details()}", pytrace=False
        )
    try:
        return sup.call("supervisor.getState")["statename"] == "RUNNING"  # type: ignore[no-any-return]
    except (OSError, xmlrpc.client.Fault):
        return False
