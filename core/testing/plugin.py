"""The pytest plugin of host-framework: fixtures to test an extension with, and no conftest needed.

Registered with the ``pytest11`` entry point in setup.py, so every pytest run
where host-framework is installed has these fixtures and markers::

    import pytest

    pytestmark = pytest.mark.host_ini(plugins=["weather"], eager=True)


    def test_forecast(host_app):
        assert host_app.tasks["weather.forecast"].delay("Oslo").get(timeout=10) == ...

Each test gets its own ini under its ``tmp_path``, on an embedded broker of its
own (SQLite files beside the ini), and its own app: nothing is shared with
other tests or with the project's development.ini. Importing this module does
no work: Celery and the host are imported by the fixtures that need them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from core.testing.ini import ini_text
from core.testing.processes import READY, READY_TIMEOUT, Worker, host_env, started_worker
from core.testing.sites import EntryPoints, Site

if TYPE_CHECKING:
    from click.testing import Result

    from core.app import HostCelery

#: The workers a test started, for the report of a failed test.
_WORKERS = pytest.StashKey[list[Worker]]()
#: The app ``host_app`` configured, and from which ini: ``host_plugin`` configures it again.
_CONFIGURED = pytest.StashKey[tuple["HostCelery", Path]]()
#: The folder ``installed_extension`` writes distributions into.
_SITE = pytest.StashKey[Path]()

_PLUGIN_NAME = re.compile(r"^[^\s,]+$")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "host_ini(settings=None, *, plugins=(), plugin_options=None, eager=False): the test's ini, "
        "for host_app, host_worker and host_cli (host-framework's test kit)",
    )
    config.addinivalue_line(
        "markers",
        "host_worker(args=('-c', '2'), env=None): the test starts a real `host celeryd` (the host_worker "
        "fixture, which adds this marker), on the broker its ini names; deselect with -m 'not host_worker'",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (
            "host_worker" in getattr(item, "fixturenames", ())
            and item.get_closest_marker("host_worker") is None
        ):
            item.add_marker(pytest.mark.host_worker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report gets the log of each worker it started, as a section of its own."""
    report = yield
    if report.failed:
        for worker in item.stash.get(_WORKERS, []):
            report.sections.append((f"host worker log ({worker.log_path})", worker.log))
    return report


# -- the test's ini -------------------------------------------------------------------


class HostIni:
    """The ``host_ini`` fixture: writes the test's ini under its ``tmp_path``; the last one written is it.

    Its arguments are those of :func:`core.testing.ini.ini_text`; without a call,
    the ini is written from the ``host_ini`` marker's arguments (or the defaults:
    the embedded broker, no plugin) when a fixture first needs it.
    """

    def __init__(self, directory: Path, marker: pytest.Mark | None) -> None:
        self.directory = directory
        self._marker = marker
        self._path: Path | None = None
        #: The fixture that started on the ini, after which it cannot change.
        self._used_by: str | None = None

    def __call__(
        self,
        settings: Mapping[str, Any] | None = None,
        *,
        plugins: Iterable[str] = (),
        plugin_options: Mapping[str, Mapping[str, Any]] | None = None,
        eager: bool = False,
        name: str = "test.ini",
    ) -> Path:
        """Write the test's ini; its path."""
        if self._used_by is not None:
            pytest.fail(
                f"host_ini() was called after {self._used_by} started on {self.path}: give the test's ini "
                "with @pytest.mark.host_ini(...), or call host_ini() in a fixture that "
                f"{self._used_by} is requested after",
                pytrace=False,
            )
        path = self.directory / name
        text = ini_text(settings, plugins=plugins, plugin_options=plugin_options, eager=eager)
        path.write_text(text, encoding="utf-8")
        self._path = path
        return path

    @property
    def path(self) -> Path:
        """The test's ini, written from the marker's arguments if the test wrote none."""
        if self._path is not None:
            return self._path
        marker = self._marker
        return self(*marker.args, **marker.kwargs) if marker is not None else self()

    def use(self, by: str) -> Path:
        """The test's ini, for the fixture ``by`` to start on: fixed from now on."""
        path = self.path
        self._used_by = self._used_by or by
        return path


@pytest.fixture
def host_ini(request: pytest.FixtureRequest, tmp_path: Path) -> HostIni:
    """Writes the test's ini: ``host_ini(settings, plugins=..., plugin_options=..., eager=...)``.

    On the embedded broker, with its files beside the ini in ``tmp_path``. The
    ``host_ini`` marker gives the same arguments for a test or a module.
    """
    return HostIni(tmp_path, request.node.get_closest_marker("host_ini"))


# -- the test's app -------------------------------------------------------------------


@pytest.fixture
def _host_fresh_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostCelery]:
    """A fresh app in place of the shared one, no ``HOST_*``/``CELERY_*`` variable from outside."""
    from core.testing.apps import fresh_shared_app, registered_plugins

    for var in list(os.environ):
        if var.startswith(("HOST_", "CELERY_")):
            monkeypatch.delenv(var)
    with registered_plugins(), fresh_shared_app() as app:
        yield app


@pytest.fixture
def host_app(request: pytest.FixtureRequest, _host_fresh_app: HostCelery, host_ini: HostIni) -> HostCelery:
    """The app configured from the test's ini, with the installed extensions' tasks imported onto it.

    It is ``core.celery_app.celery`` during the test (what task modules, the
    toolkit and ``host_cli`` use) and Celery's current app, and a new app in
    each test: the modules a test imported are imported again by the next. Get tasks from
    ``host_app.tasks[NAME]``. With ``eager=True`` in the ini, ``.delay()`` runs
    the task in the test; otherwise it goes to the broker (``host_worker`` runs it).
    """
    from core.testing.apps import configure

    ini = host_ini.use("host_app")
    configure(_host_fresh_app, ini)
    request.node.stash[_CONFIGURED] = (_host_fresh_app, ini)
    return _host_fresh_app


class HostCli:
    """The ``host_cli`` fixture: ``host_cli("tasks")`` runs ``host --config INI tasks`` in this process."""

    def __init__(self, ini: HostIni) -> None:
        self.ini = ini

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        catch_exceptions: bool = False,
    ) -> Result:
        """Click's result: ``exit_code``, ``output`` (stdout and stderr), ``stdout``, ``stderr``.

        An error the host reports (exit status 2 or 1) is in the result; any
        other exception is raised, unless ``catch_exceptions``.
        """
        from click.testing import CliRunner

        from core.cli import cli

        command = ["--config", str(self.ini.path), *args]
        return CliRunner().invoke(
            cli, command, input=input, env=env, catch_exceptions=catch_exceptions, prog_name="host"
        )


@pytest.fixture
def host_cli(_host_fresh_app: HostCelery, host_ini: HostIni) -> HostCli:
    """Runs ``host`` commands in-process on the test's ini, with click's ``CliRunner``."""
    return HostCli(host_ini)


@pytest.fixture
def host_plugin(request: pytest.FixtureRequest, _host_fresh_app: HostCelery) -> Callable[..., str]:
    """``host_plugin(obj, name=None)``: enable a plugin object that is not installed, for this test.

    ``obj`` is a module, class or instance with ``@hookimpl`` functions. It is
    enabled after the plugins the ini names (one with an installed plugin's
    name takes its place), for ``host_app``, ``host_cli`` and anything that
    loads plugins in this process -- not for ``host_worker``, another process.
    ``host_app`` is configured again when it already was. Returns the name,
    whose options are read from ``[plugin:NAME]``.
    """
    from core.plugin_manager import registered
    from core.testing.apps import reconfigure

    def register(obj: Any, name: str | None = None) -> str:
        name = name or _plugin_name(obj)
        if not _PLUGIN_NAME.match(name):
            pytest.fail(
                f"host_plugin(): {name!r} cannot be a plugin name (no spaces or commas)", pytrace=False
            )
        registered[name] = obj
        configured = request.node.stash.get(_CONFIGURED, None)
        if configured is not None:
            reconfigure(*configured)
        return name

    return register


def _plugin_name(obj: Any) -> str:
    if isinstance(obj, type):
        return obj.__name__.lower()
    module_name = getattr(obj, "__name__", None)
    if isinstance(module_name, str):
        return module_name.rpartition(".")[2]
    return type(obj).__name__.lower()


# -- installed distributions and real workers ------------------------------------------


@pytest.fixture
def installed_extension(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Path]]:
    """``installed_extension(name, entry_points=..., files=..., version="1.0")``: a real ``*.dist-info``.

    Written into a folder of this test on ``sys.path`` (and on ``host_worker``'s
    ``PYTHONPATH``), with its modules (``files``: ``{"pkg/tasks.py": source}``);
    the modules imported from it are forgotten after the test. Returns the
    dist-info folder. ``host_app`` is configured again when it already was;
    a ``host_worker`` already started cannot see it: the test fails, saying so.
    """
    from core.testing.apps import reconfigure

    site = Site(tmp_path / "extensions")
    site.path.mkdir()
    monkeypatch.syspath_prepend(str(site.path))
    request.node.stash[_SITE] = site.path

    def install(
        name: str,
        entry_points: EntryPoints | None = None,
        files: Mapping[str, str] | None = None,
        version: str = "1.0",
    ) -> Path:
        if request.node.stash.get(_WORKERS, None):
            pytest.fail(
                f"installed_extension({name!r}) was called after host_worker started, which cannot see "
                "it: call installed_extension() in a fixture that host_worker is requested after",
                pytrace=False,
            )
        dist_info = site.add(name, version, entry_points=entry_points, files=files)
        configured = request.node.stash.get(_CONFIGURED, None)
        if configured is not None:
            reconfigure(*configured)
        return dist_info

    yield install
    site.forget_modules()


@pytest.fixture
def host_worker(request: pytest.FixtureRequest, host_ini: HostIni, tmp_path: Path) -> Iterator[Worker]:
    """A real ``host celeryd`` on the test's ini, yielded once it logged that it is ready.

    Stopped after the test as production stops it: SIGTERM to its main process
    (a warm shutdown: running tasks finish), then waited for; the test fails
    if it does not exit with status 0. Its log (``host_worker.log``) is added
    to the report of a failed test. The ``host_worker`` marker gives its
    command-line options (``args``, default ``-c 2``) and environment (``env``).
    """
    marker = request.node.get_closest_marker("host_worker")
    options = marker.kwargs if marker is not None else {}
    pythonpath: list[Path] = []
    if "installed_extension" in request.fixturenames:
        request.getfixturevalue("installed_extension")
        pythonpath.append(request.node.stash[_SITE])
    ini = host_ini.use("host_worker")
    env = host_env(options.get("env"), pythonpath, inherit_pythonpath=True)
    with started_worker(ini, env, tmp_path, options.get("args", ("-c", "2"))) as worker:
        request.node.stash.setdefault(_WORKERS, []).append(worker)
        worker.wait_for_log(READY, timeout=options.get("ready_timeout", READY_TIMEOUT))
        yield worker
        status = worker.terminate()
    if status != 0:
        pytest.fail(
            f"the worker exited with status {status} after SIGTERM (a warm shutdown exits 0)\n"
            f"{worker.failure_details()}",
            pytrace=False,
        )
