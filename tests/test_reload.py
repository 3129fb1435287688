"""``host celeryd --reload``: a worker that picks up an edited task module without a manual restart.

A real ``host celeryd --reload`` process on the embedded broker, with a
test extension whose task module lives in the test's own folder (a real
``*.dist-info`` with its ``host.celery_task`` entry point). The test edits
the module as an author would and sends the task again through ``host send
--wait``: the answer changes once the reloader has restarted the worker.
Waits have timeouts; nothing asserts how long anything took.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Site
from worker import HOST, READY, Worker, development_ini, host, host_env, started, wait_until, write_ini

pytestmark = pytest.mark.e2e

TASKS = """
from core.celery_app import celery


@celery.task(name="reloaded.version")
def version():
    return "{version}"
"""


@dataclass
class Reloading:
    worker: Worker
    tasks: Path

    def version(self) -> str:
        done = host(
            "send", "reloaded.version", "--wait", "--config", str(self.worker.ini), env=self.worker.env
        )
        assert done.returncode == 0, done.stderr + self.worker.failure_details()
        return done.stdout.strip()

    def restarts(self) -> int:
        return len(re.findall(r"changed: restarting the worker", self.worker.log))

    def readies(self) -> int:
        return len(READY.findall(self.worker.log))

    def wait_for_restart(self, restarts: int, readies: int) -> None:
        """Until ``restarts`` restarts were made and ``readies`` workers were ready, in all."""
        wait_until(
            lambda: self.restarts() >= restarts and self.readies() >= readies,
            120,
            f"restart {restarts} and ready worker {readies}",
            self.worker.failure_details,
        )


@pytest.fixture(scope="module")
def reloading(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reloading]:
    directory = tmp_path_factory.mktemp("reload")
    site = Site(directory / "site")
    site.path.mkdir()
    site.add(
        "reloaded-ext",
        entry_points={"host.celery_task": {"reloaded": "reloaded_ext.celery_import:task_imports"}},
        files={
            "reloaded_ext/__init__.py": "",
            "reloaded_ext/celery_import.py": "def task_imports():\n    return ['reloaded_ext.tasks']\n",
            "reloaded_ext/tasks.py": TASKS.format(version="v1"),
        },
    )
    ini = write_ini(directory, development_ini())
    env = host_env(pythonpath=[site.path])
    command = [HOST, "celeryd", "--reload", "--config", str(ini), "--", "-c", "1"]
    with started(command, ini, env, directory, "reloader") as worker:
        worker.wait_for_log(READY)
        yield Reloading(worker, site.path / "reloaded_ext" / "tasks.py")
        assert worker.terminate() == 0, worker.failure_details()
    assert "Warm shutdown" in worker.log


def test_an_edited_task_module_is_running_without_a_manual_restart(reloading: Reloading) -> None:
    assert "watching " in reloading.worker.log and str(reloading.tasks.parent) in reloading.worker.log
    assert reloading.version() == "v1"
    ready = reloading.readies()
    reloading.tasks.write_text(textwrap.dedent(TASKS.format(version="v2")), encoding="utf-8")
    reloading.wait_for_restart(1, ready + 1)
    assert reloading.version() == "v2"
    assert "reloaded_ext/tasks.py changed: restarting the worker (warm shutdown)" in reloading.worker.log


def test_a_burst_of_saves_is_one_restart(reloading: Reloading) -> None:
    before, ready = reloading.restarts(), reloading.readies()
    for n in range(5):  # an editor saving several times, a formatter rewriting the file...
        reloading.tasks.write_text(textwrap.dedent(TASKS.format(version=f"burst-{n}")), encoding="utf-8")
    reloading.wait_for_restart(before + 1, ready + 1)
    assert reloading.version() == "burst-4"
    assert reloading.restarts() == before + 1, reloading.worker.log


def test_a_broken_module_waits_for_the_fix_instead_of_restarting_in_a_loop(reloading: Reloading) -> None:
    before, ready = reloading.restarts(), reloading.readies()
    reloading.tasks.write_text("def version(:\n", encoding="utf-8")
    reloading.worker.wait_for_log(r"the worker stopped by itself \(exit status 2\): waiting for a change")
    reloading.tasks.write_text(textwrap.dedent(TASKS.format(version="fixed")), encoding="utf-8")
    reloading.wait_for_restart(before + 2, ready + 1)
    assert reloading.version() == "fixed"


def test_the_ini_file_is_watched_too(reloading: Reloading) -> None:
    before, ready = reloading.restarts(), reloading.readies()
    ini = reloading.worker.ini
    ini.write_text(
        ini.read_text(encoding="utf-8").replace("greeting = Hello", "greeting = Hi"), encoding="utf-8"
    )
    reloading.worker.wait_for_log(rf"{re.escape(ini.name)} changed: restarting the worker")
    reloading.wait_for_restart(before + 1, ready + 1)
    assert reloading.version() == "fixed"


def test_a_single_file_module_is_watched_alone_not_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extension installed as one module file: its folder (site-packages) is not watched whole."""
    from core.reloader import package_folder

    (tmp_path / "solo_ext.py").write_text("", encoding="utf-8")
    (tmp_path / "pkg_ext").mkdir()
    (tmp_path / "pkg_ext" / "__init__.py").write_text("", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_folder("solo_ext") == (tmp_path / "solo_ext.py").resolve()
    assert package_folder("pkg_ext.tasks") == (tmp_path / "pkg_ext").resolve()


def test_the_worker_is_started_through_the_host_script_not_python_m_core() -> None:
    """``python -m core`` would put the current folder first on sys.path, where a project may have a
    ``core`` package of its own."""
    from core.reloader import child_command

    command = child_command("/srv/app/development.ini", ["-c", "2"])
    assert Path(command[0]).name == "host" and "-m" not in command
    assert command[1:] == ["celeryd", "--config", "/srv/app/development.ini", "--", "-c", "2"]
