"""``host tasks`` and ``host celeryd`` as real processes, with real ``*.dist-info`` extensions.

The site folder of the ``site`` fixture reaches the ``host`` process through
``PYTHONPATH``, next to the installed example-ext.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import importlib_metadata
import pytest

from tests.conftest import Site
from tests.worker import host, host_env, running_worker, write_ini

HEALTHY_TASKS = """
    from core.celery_app import celery

    @celery.task(name="cli.ping")
    def ping(value):
        return {"pong": value}
    """
EMBEDDED = """
    [app:main]
    celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
    celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite
    """
BROKEN = (
    "Error: extension cli-broken==3.1 (entry point host.celery_task:tasks = "
    "cli_broken.celery_import:task_imports): module cli_broken.tasks (a module task_imports() "
    "returned) is broken: it imports not_a_real_dependency_xyz, which is not installed\n"
    "  -> install not_a_real_dependency_xyz, or the extra of cli-broken that provides it\n"
)
#: What only a started worker prints (its banner, its task list, its ready line).
WORKER_OUTPUT = re.compile(r"celery@|-------------- |\[tasks\]|\[queues\]| ready\.")


def add_ext(site: Site, name: str, version: str, tasks: str) -> None:
    pkg = name.replace("-", "_")
    site.add(
        name,
        version,
        {"host.celery_task": {"tasks": f"{pkg}.celery_import:task_imports"}},
        {
            f"{pkg}/__init__.py": "",
            f"{pkg}/celery_import.py": f"def task_imports():\n    return [{pkg + '.tasks'!r}]\n",
            f"{pkg}/tasks.py": tasks,
        },
    )


def healthy(site: Site) -> None:
    add_ext(site, "cli-healthy", "2.0", HEALTHY_TASKS)


def broken(site: Site) -> None:
    add_ext(site, "cli-broken", "3.1", "import not_a_real_dependency_xyz\n")


def ini(tmp_path: Path, *lines: str) -> Path:
    return write_ini(tmp_path, EMBEDDED + "\n".join(lines))


def rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


def example_rows() -> list[list[str]]:
    version = importlib_metadata.version("example-ext")
    names = ("example.add", "example.echo", "example.flaky", "example.word_count")
    return [[name, "example-ext", version, "example_ext.tasks"] for name in names]


# -- host tasks -------------------------------------------------------------


def test_tasks_lists_every_extension(site: Site, tmp_path: Path) -> None:
    healthy(site)

    done = host("tasks", "--config", str(ini(tmp_path)), env=host_env(pythonpath=[site.path]), cwd=tmp_path)

    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[0] == "Tasks:"
    assert rows(done.stdout)[1] == ["TASK", "EXTENSION", "VERSION", "MODULE"]
    assert ["cli.ping", "cli-healthy", "2.0", "cli_healthy.tasks"] in rows(done.stdout)
    for row in example_rows():
        assert row in rows(done.stdout)


def test_tasks_json(site: Site, tmp_path: Path) -> None:
    healthy(site)

    done = host(
        "tasks", "--json", "--config", str(ini(tmp_path)), env=host_env(pythonpath=[site.path]), cwd=tmp_path
    )

    assert (done.returncode, done.stderr) == (0, "")
    report = json.loads(done.stdout)
    assert report["errors"] == []
    assert {
        "task": "cli.ping",
        "extension": "cli-healthy",
        "version": "2.0",
        "module": "cli_healthy.tasks",
    } in report["tasks"]
    ours = [e for e in report["extensions"] if e["distribution"] == "cli-healthy"]
    assert ours == [
        {
            "distribution": "cli-healthy",
            "version": "2.0",
            "entry_point": "host.celery_task:tasks = cli_healthy.celery_import:task_imports",
            "modules": ["cli_healthy.tasks"],
            "disabled": False,
            "error": None,
        }
    ]


def test_tasks_reports_a_broken_extension(site: Site, tmp_path: Path) -> None:
    healthy(site)
    broken(site)

    done = host("tasks", "--config", str(ini(tmp_path)), env=host_env(pythonpath=[site.path]), cwd=tmp_path)

    assert done.returncode == 2
    assert done.stderr == BROKEN
    # The rest is still listed; nothing of the broken one.
    assert ["cli.ping", "cli-healthy", "2.0", "cli_healthy.tasks"] in rows(done.stdout)
    assert "cli-broken" not in done.stdout


def test_tasks_json_reports_a_broken_extension(site: Site, tmp_path: Path) -> None:
    broken(site)

    done = host(
        "tasks", "--json", "--config", str(ini(tmp_path)), env=host_env(pythonpath=[site.path]), cwd=tmp_path
    )

    assert done.returncode == 2
    report = json.loads(done.stdout)
    assert report["errors"] == [BROKEN.removeprefix("Error: ").rstrip("\n")]
    [ours] = [e for e in report["extensions"] if e["distribution"] == "cli-broken"]
    assert (ours["error"], ours["modules"]) == (report["errors"][0], ["cli_broken.tasks"])


def test_tasks_shows_a_disabled_extension(site: Site, tmp_path: Path) -> None:
    broken(site)

    done = host(
        "tasks",
        "--config",
        str(ini(tmp_path, "host.celery_task.disabled = CLI_Broken")),
        env=host_env(pythonpath=[site.path]),
        cwd=tmp_path,
    )

    assert (done.returncode, done.stderr) == (0, "")
    assert "Disabled by host.celery_task.disabled: cli-broken==3.1" in done.stdout.splitlines()


# -- host celeryd ---------------------------------------------------------------


def test_celeryd_stops_before_the_worker_on_a_broken_extension(site: Site, tmp_path: Path) -> None:
    healthy(site)
    broken(site)

    done = host(
        "celeryd",
        "--config",
        str(ini(tmp_path)),
        env=host_env(pythonpath=[site.path]),
        cwd=tmp_path,
        timeout=60,
    )

    assert done.returncode == 2
    assert done.stderr == BROKEN
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert not WORKER_OUTPUT.search(output), output
    assert not (tmp_path / "data" / "broker.sqlite").exists()  # it never reached the broker


def test_celeryd_names_every_broken_extension(site: Site, tmp_path: Path) -> None:
    broken(site)
    add_ext(site, "cli-zero", "1.0", "RATIO = 1 / 0\n")

    done = host(
        "celeryd",
        "--config",
        str(ini(tmp_path)),
        env=host_env(pythonpath=[site.path]),
        cwd=tmp_path,
        timeout=60,
    )

    zero = site.path / "cli_zero" / "tasks.py"
    assert done.returncode == 2
    assert done.stderr == (
        "Error: 2 extensions are broken:\n"
        "  1. " + BROKEN.removeprefix("Error: ") + "  2. extension cli-zero==1.0 (entry point "
        "host.celery_task:tasks = cli_zero.celery_import:task_imports): module cli_zero.tasks (a module "
        "task_imports() returned) is broken: it raised ZeroDivisionError: division by zero "
        f"at {zero}, line 1\n"
        "  -> fix the module, or disable the extension: host.celery_task.disabled = cli-zero\n"
        "  -> fix them, or set host.extensions.on_error = warn to skip broken extensions\n"
    )
    assert not WORKER_OUTPUT.search(done.stdout + done.stderr)


@pytest.mark.e2e
def test_celeryd_with_warn_skips_the_broken_extension(site: Site, tmp_path: Path) -> None:
    healthy(site)
    broken(site)
    text = EMBEDDED + "host.extensions.on_error = warn\n"

    with running_worker(tmp_path, text, args=("-P", "solo"), pythonpath=[site.path]) as worker:
        sent = host(
            "send",
            "cli.ping",
            '"hello"',
            "--wait",
            "--timeout",
            "60",
            "--config",
            str(worker.ini),
            env=worker.env,
            cwd=tmp_path,
        )
        log = worker.log

    assert (sent.returncode, sent.stdout.strip()) == (0, '{"pong": "hello"}'), sent
    assert "warning: skipped: " + BROKEN.removeprefix("Error: ") in log
    table = rows(log.split("Tasks from installed extensions:", 1)[1])
    assert ["cli.ping", "cli-healthy", "2.0", "cli_healthy.tasks"] in table
    assert "cli_broken" not in log.replace(BROKEN.removeprefix("Error: "), "")
    assert "Traceback" not in log
    assert worker.returncode == 0
