"""``host new-extension``: the extension it writes installs, passes its own tests, and runs in a worker.

The end-to-end test installs the generated extension with ``pip install
--no-deps --target DIR``: a real ``*.dist-info`` folder in a folder of the
test's own, which only the test's subprocesses see, through ``PYTHONPATH``.
It is never ``pip install -e``'d into the shared .venv: the suite's other
modules run at the same time (pytest-xdist) and would discover its task and
plugin.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from core.testing.ini import ini_text
from worker import host, host_env, running_worker

NAME_ERRORS = [
    ("my ext", "'my ext' cannot be a distribution name: only letters, digits, '-', '_' and '.' may be used"),
    ("weather-", "'weather-' cannot be a distribution name"),
    ("9lives", "'9lives' cannot name a Python package ('9lives'): it starts with a digit"),
    ("class", "'class' cannot name a Python package: 'class' is a Python keyword"),
    (
        "json",
        "'json' would name the package 'json', but a module of the standard library already has that name",
    ),
    ("celery", "'celery' would name the package 'celery', but an installed module ("),
    ("tests", "'tests' would name the package 'tests', a folder of the extension's own layout"),
    ("send", "'send' would name the plugin 'send', whose command `host send` would clash with"),
    ("new_extension", "'new_extension' would name the plugin 'new_extension', whose command"),
]


@pytest.mark.parametrize(("name", "message"), NAME_ERRORS, ids=[n for n, _ in NAME_ERRORS])
def test_a_name_that_cannot_be_an_extension_is_refused(host_cli, tmp_path: Path, name: str, message: str):
    result = host_cli("new-extension", name, "--dir", str(tmp_path), "--no-input")
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {message}")
    assert "\n  -> " in result.output
    assert list(tmp_path.iterdir()) == [tmp_path / "test.ini"]  # nothing written


def test_an_existing_folder_is_never_written_into(host_cli, tmp_path: Path):
    (tmp_path / "weather").mkdir()
    (tmp_path / "weather" / "notes.txt").write_text("mine", encoding="utf-8")
    result = host_cli("new-extension", "weather", "--dir", str(tmp_path), "--no-input")
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {tmp_path / 'weather'} already exists: new-extension never writes into an existing folder\n"
        "  -> choose another NAME or --dir, or remove that folder\n"
    )
    assert [p.name for p in (tmp_path / "weather").iterdir()] == ["notes.txt"]


def test_it_asks_for_the_description_and_the_author(host_cli, tmp_path: Path):
    result = host_cli("new-extension", "hostext-weather", "--dir", str(tmp_path), input="Forecasts\nAda\n")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Description: Forecasts\nAuthor: Ada\n")
    folder = tmp_path / "hostext-weather"
    pyproject = (folder / "pyproject.toml").read_text(encoding="utf-8")
    assert 'name = "hostext-weather"\n' in pyproject
    assert 'description = "Forecasts"\n' in pyproject
    assert 'authors = [{ name = "Ada" }]\n' in pyproject
    assert (
        '[project.entry-points."host.celery_task"]\ntasks = "hostext_weather.celery_import:task_imports"\n'
        in (pyproject)
    )
    assert '[project.entry-points."host.plugins"]\nhostext_weather = "hostext_weather.plugin"\n' in pyproject
    written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert written == [
        "README.md",
        "hostext_weather/__init__.py",
        "hostext_weather/celery_import.py",
        "hostext_weather/plugin.py",
        "hostext_weather/tasks.py",
        "pyproject.toml",
        "tests/test_plugin.py",
        "tests/test_tasks.py",
        "tests/test_worker.py",
    ]
    assert '@celery.task(name="hostext_weather.hello", bind=True)' in (
        folder / "hostext_weather/tasks.py"
    ).read_text(encoding="utf-8")


def test_without_copier_the_error_names_the_extra(host_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "copier", None)  # `import copier` fails as if it were not installed
    result = host_cli("new-extension", "weather", "--dir", str(tmp_path), "--no-input")
    assert result.exit_code == 2
    assert result.output == (
        "Error: host new-extension renders its template with copier, which is not installed\n"
        "  -> pip install 'host-framework[scaffold]'\n"
    )


# -- end to end -------------------------------------------------------------------------------------


def _build_isolation() -> list[str]:
    """No build isolation (offline, fast) where this environment can build a wheel by itself.

    setuptools before 70.1 builds wheels with the ``wheel`` package; without it,
    pip builds in an isolated environment with a current setuptools (from its cache
    or the package index).
    """
    setuptools = tuple(int(part) for part in metadata.version("setuptools").split(".")[:2])
    can_build = setuptools >= (70, 1) or importlib.util.find_spec("wheel") is not None
    return ["--no-build-isolation"] if can_build else []


def _run(
    command: list[str], env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.mark.e2e
def test_a_new_extension_installs_passes_its_own_tests_and_runs_in_a_worker(tmp_path: Path):
    made = host(
        "new-extension", "weather", "--dir", str(tmp_path), "--no-input", env=host_env(), cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "weather"

    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *_build_isolation(), "--target"]
    installed = _run([*install, str(site), str(folder)], host_env(), tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (site / "weather-0.1.0.dist-info" / "entry_points.txt").is_file()
    env = host_env(pythonpath=[site])

    # Its own tests, as its author runs them: pytest in its folder, the kit's fixtures, no conftest.
    own = {k: v for k, v in env.items() if not k.startswith("PYTEST_")}
    tested = _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider"], own, folder)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "6 passed" in tested.stdout
    assert not os.path.exists(folder / "conftest.py") and not os.path.exists(folder / "tests" / "conftest.py")

    ini = tmp_path / "host.ini"
    ini.write_text(
        ini_text(plugins=["weather"], plugin_options={"weather": {"greeting": "Hej"}}), encoding="utf-8"
    )
    tasks = host("tasks", "--config", str(ini), env=env)
    assert tasks.returncode == 0, tasks.stdout + tasks.stderr
    assert "weather.hello" in tasks.stdout

    with running_worker(tmp_path, ini.read_text(encoding="utf-8"), pythonpath=[site]) as worker:
        sent = worker.host("send", "weather.hello", '"Ada"', "--wait")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout.splitlines()[-1] == "Hej, Ada!"
