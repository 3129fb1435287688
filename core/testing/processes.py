"""Real ``host`` processes for tests: a worker started and stopped as in production, and one-shot commands.

::

    with running_worker(tmp_path, INI_TEXT) as worker:
        ...                      # the worker logged "ready"
        worker.log               # everything it wrote so far
    worker.returncode            # after SIGTERM and a warm shutdown

The ``host_worker`` fixture (:mod:`core.testing.plugin`) is this, on the
test's ini. Every wait here has a timeout; none of them is an assertion about
speed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import cast

import pytest

BIN = Path(sys.executable).parent
#: The ``host`` script of the environment running the tests.
HOST = str(BIN / "host")
#: Generous: a loaded CI machine may take many seconds to import and connect.
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
#: What Celery logs once the worker consumes: ``celery@NODE ready.``
READY = re.compile(r"@\S+ ready\.")


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    what: str,
    details: Callable[[], str] = lambda: "",
    interval: float = 0.05,
) -> object:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g} s waiting for {what}\n{details()}", pytrace=False)
        time.sleep(interval)


class Worker:
    """One ``host celeryd`` process (or another long-running ``host`` command) started by :func:`started`."""

    def __init__(self, ini: Path, log_path: Path, process: subprocess.Popen[bytes], env: dict[str, str]):
        self.ini = ini
        self.log_path = log_path
        self.process = process
        #: The environment the worker runs with; pass it to ``host send`` and the like.
        self.env = env

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def log(self) -> str:
        """Everything the worker wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def failure_details(self) -> str:
        status = self.process.poll()
        state = "still running" if status is None else f"exited with status {status}"
        return f"worker (pid {self.pid}) {state}; its log ({self.log_path}):\n{self.log}"

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """Wait until the log matches ``pattern``; fail with the log if it never does, or the worker exits."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern

        def found() -> re.Match[str] | None:
            match = regex.search(self.log)
            if match is None and self.process.poll() is not None:
                match = regex.search(self.log)  # it may have written the line, then exited
                if match is None:
                    pytest.fail(
                        f"the worker exited before logging {regex.pattern!r}\n{self.failure_details()}",
                        pytrace=False,
                    )
            return match

        match = wait_until(found, timeout, f"the worker to log {regex.pattern!r}", self.failure_details)
        return cast(re.Match[str], match)

    def host(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``host --config INI ARGS`` with the worker's ini and environment (``host send ... --wait``)."""
        return host("--config", str(self.ini), *args, env=self.env, timeout=timeout, cwd=self.ini.parent)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM to the main worker process only (a warm shutdown), then wait for it to exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"the worker did not exit within {timeout:g} s of SIGTERM\n{self.failure_details()}",
                pytrace=False,
            )

    def kill(self) -> None:
        """SIGKILL the worker's own process group (it was started in a new session), pool included."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)


def write_ini(directory: Path, text: str, name: str = "test.ini") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def host_env(
    extra: Mapping[str, str] | None = None,
    pythonpath: Sequence[Path | str] = (),
    *,
    inherit_pythonpath: bool = False,
) -> dict[str, str]:
    """The environment for ``host`` processes: no config from the outside, optional extra sys.path.

    :param pythonpath: folders put first on the processes' ``sys.path``.
    :param inherit_pythonpath: keep this process's ``$PYTHONPATH`` after them (an
        extension installed with ``pip install --target`` is found through it).
    """
    env = {
        k: v for k, v in os.environ.items() if not (k.startswith(("HOST_", "CELERY_")) or k == "PYTHONPATH")
    }
    paths = [str(p) for p in pythonpath]
    if inherit_pythonpath and os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    # CI runs as root; workers refuse root unless told (test_supervisor checks the refusal).
    env["HOST_ALLOW_ROOT"] = "true"
    env.update(extra or {})
    return env


@contextmanager
def running_worker(
    directory: Path,
    ini_text: str,
    args: Sequence[str] = ("-c", "2"),
    env: Mapping[str, str] | None = None,
    pythonpath: Sequence[Path] = (),
    ready_timeout: float = READY_TIMEOUT,
) -> Iterator[Worker]:
    """Write ``ini_text`` to ``directory``, start ``host celeryd`` on it and wait until it is ready.

    The worker gets a unique node name, so workers of concurrent tests never
    clash. On exit it gets SIGTERM and is waited for; a worker that does not
    stop is killed with its pool and the test fails.
    """
    ini = write_ini(directory, ini_text)
    with started_worker(ini, host_env(env, pythonpath), directory, args) as worker:
        worker.wait_for_log(READY, timeout=ready_timeout)
        yield worker


@contextmanager
def started_worker(ini: Path, env: dict[str, str], directory: Path, args: Sequence[str]) -> Iterator[Worker]:
    """``host celeryd`` on ``ini``, not waited for: it may be waiting for a broker. Stopped as above."""
    node = f"test-{uuid.uuid4().hex[:12]}@%h"
    command = [HOST, "celeryd", "--config", str(ini), "--", "-n", node, *args]
    with started(command, ini, env, directory, "worker") as worker:
        yield worker


@contextmanager
def started(
    command: Sequence[str], ini: Path, env: dict[str, str], directory: Path, label: str
) -> Iterator[Worker]:
    """``command`` (a ``host`` process on ``ini``) in a session of its own, logged to ``directory``;
    SIGTERM (then SIGKILL) at the end if it still runs."""
    log_path = directory / f"{label}-{uuid.uuid4().hex[:8]}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=directory,
            start_new_session=True,
        )
    worker = Worker(ini, log_path, process, env)
    try:
        yield worker
    finally:
        if process.poll() is None:
            try:
                worker.terminate()
            finally:
                if process.poll() is None:
                    worker.kill()


def host(
    *args: str, env: Mapping[str, str], timeout: float = 120.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``host ARGS`` to completion and capture its output."""
    try:
        return subprocess.run(
            [HOST, *args],
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"host {' '.join(args)} did not finish within {timeout:g} s\n"
            f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}",
            pytrace=False,
        )
