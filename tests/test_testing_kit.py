"""The test kit (core/testing/): the pytest plugin extension authors get with host-framework.

Its fixtures are used here as an extension's tests use them (example_ext/tests
is written with them only); what they promise about isolation -- the shared
app untouched, the modules put back, the worker's log in a failed report --
is checked directly, and the report through a pytest run of its own
(pytester).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import core.celery_app
from core.testing.apps import fresh_shared_app
from core.testing.ini import ini_text
from plugins import hookimpl

pytest_plugins = ["pytester"]

TASKS = """\
from core.celery_app import celery


@celery.task(name="kit.double")
def double(x):
    return 2 * x
"""
KIT_EXTENSION = {
    "entry_points": {"host.celery_task": {"tasks": "kit_ext:task_imports"}},
    "files": {
        "kit_ext/__init__.py": "def task_imports():\n    return ['kit_ext.tasks']\n",
        "kit_ext/tasks.py": TASKS,
    },
}


# -- host_ini ------------------------------------------------------------------------


def test_the_default_ini_is_on_an_embedded_broker_beside_it(host_ini, tmp_path: Path) -> None:
    assert host_ini.path == tmp_path / "test.ini"
    assert host_ini.path.read_text(encoding="utf-8") == (
        "[app:main]\n"
        "celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite\n"
        "celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite\n"
        "celery.result_extended = true\n"
        "host.allow_root = true\n"
    )


def test_ini_values_are_written_as_the_ini_reads_them() -> None:
    text = ini_text(
        {"celery.task_acks_late": True, "celery.task_time_limit": 30, "celery.task_queues": ["a", "b"]},
        plugins=["one", "two"],
        plugin_options={"one": {"size": 2}},
        eager=True,
    )
    assert "celery.task_acks_late = true\n" in text
    assert "celery.task_time_limit = 30\n" in text
    assert 'celery.task_queues = ["a", "b"]\n' in text
    assert "host.plugins = one two\nhost.task_mode = eager\n" in text
    assert text.endswith("\n[plugin:one]\nsize = 2\n")


@pytest.mark.host_ini({"host.site_id": "shop"}, eager=True)
def test_the_marker_gives_the_ini_of_host_app(host_app) -> None:
    assert host_app.host_config.host["site_id"] == "shop"
    assert host_app.conf.task_always_eager is True


def test_the_ini_cannot_change_once_the_app_is_configured(host_app, host_ini) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"host_ini\(\) was called after host_app started"):
        host_ini(eager=True)


# -- host_app --------------------------------------------------------------------------


def test_host_app_is_the_shared_app_during_the_test(host_app) -> None:
    assert core.celery_app.celery is host_app
    assert host_app.host_config is not None


def test_the_shared_app_and_the_task_modules_are_put_back(installed_extension, tmp_path: Path) -> None:
    installed_extension("kit-ext", **KIT_EXTENSION)
    import kit_ext.tasks  # imported on the shared app, as a test module's import would be

    shared, before = core.celery_app.celery, kit_ext.tasks
    (tmp_path / "t.ini").write_text(ini_text(eager=True), encoding="utf-8")
    with fresh_shared_app() as app:
        from core.testing.apps import configure

        configure(app, tmp_path / "t.ini")
        assert sys.modules["kit_ext.tasks"] is not before  # imported again, onto the test's app
        assert app.tasks["kit.double"].delay(4).get(timeout=10) == 8
    assert core.celery_app.celery is shared
    assert sys.modules["kit_ext.tasks"] is before and kit_ext.tasks is before


HELPED_EXTENSION = {
    "entry_points": {"host.celery_task": {"tasks": "helped_ext:task_imports"}},
    "files": {
        "helped_ext/__init__.py": "def task_imports():\n    return ['helped_ext.tasks']\n",
        # A helper module with no task, on the app the docs teach to import.
        "helped_ext/helpers.py": """\
            from core.celery_app import celery


            def broker():
                return celery.conf.broker_url
            """,
        "helped_ext/tasks.py": """\
            import celery as celery_package

            from core.celery_app import celery
            from helped_ext.helpers import broker


            @celery.task(name="helped.brokers", bind=True)
            def brokers(self):
                return [self.app.conf.broker_url, broker(), celery_package.current_app.conf.broker_url]
            """,
    },
}


@pytest.mark.parametrize("run", [1, 2, 3])
@pytest.mark.host_ini(eager=True)
def test_every_module_a_test_imported_is_imported_again_by_the_next(run: int, helped_app) -> None:
    brokers = helped_app.tasks["helped.brokers"].delay().get(timeout=10)
    assert brokers == [helped_app.conf.broker_url] * 3
    assert sys.modules["helped_ext.helpers"].celery is helped_app


@pytest.fixture
def helped_app(installed_extension, request: pytest.FixtureRequest):
    installed_extension("helped-ext", **HELPED_EXTENSION)
    return request.getfixturevalue("host_app")


def test_host_app_is_celerys_current_app_during_the_test(host_app) -> None:
    import celery

    assert celery.current_app._get_current_object() is host_app
    assert celery._state.default_app is host_app


def test_celerys_current_app_is_put_back(tmp_path: Path) -> None:
    import celery

    before = celery.current_app._get_current_object()
    with fresh_shared_app() as app:
        assert celery.current_app._get_current_object() is app
    assert celery.current_app._get_current_object() is before


def test_a_module_imported_during_the_test_is_dropped_unless_from_a_library(installed_extension) -> None:
    installed_extension("plain-ext", files={"plain_ext/__init__.py": "", "plain_ext/util.py": "X = 1\n"})
    with fresh_shared_app():
        import xml.dom.minidom  # noqa: F401 (the standard library's, maybe imported already)

        import plain_ext.util  # noqa: F401 (imported to be in sys.modules)

    assert "plain_ext.util" not in sys.modules and "plain_ext" not in sys.modules
    assert "xml.dom.minidom" in sys.modules


@pytest.mark.host_ini(eager=True)
def test_an_installed_extension_runs_on_host_app(installed_extension, host_app_after_install) -> None:
    assert host_app_after_install.tasks["kit.double"].delay(21).get(timeout=10) == 42


@pytest.fixture
def host_app_after_install(installed_extension, request: pytest.FixtureRequest):
    """host_app, requested once the test's extension is installed (discovery runs when it is set up)."""
    installed_extension("kit-ext", **KIT_EXTENSION)
    return request.getfixturevalue("host_app")


# -- host_plugin and host_cli ---------------------------------------------------------------------


class Greeter:
    """A plugin that is installed nowhere."""

    @hookimpl
    def host_config_declarations(self, declare):
        declare("word", default="hello")

    @hookimpl
    def host_queues(self):
        return {"greetings": ["kit.*"]}

    @hookimpl
    def host_register_commands(self, cli):
        import click

        from plugins import plugin_config

        @cli.command()
        def greet():
            click.echo(plugin_config("greeter")["word"])


@pytest.mark.host_ini(plugin_options={"greeter": {"word": "hi"}})
def test_a_registered_plugin_adds_its_command_and_options(host_plugin, host_cli) -> None:
    assert host_plugin(Greeter()) == "greeter"
    result = host_cli("greet")
    assert (result.exit_code, result.output) == (0, "hi\n")
    plugins = host_cli("plugins")
    assert "  greeter  not installed  [enabled]\n    entry point: registered in-process\n" in plugins.output


def test_registering_a_plugin_configures_host_app_again(host_app, host_plugin) -> None:
    assert host_app.conf.task_routes in (None, [], ())
    host_plugin(Greeter(), name="greeter")
    assert host_app.conf.task_routes == [{"kit.*": {"queue": "greetings"}}]


def test_a_plugin_registered_after_a_task_was_routed_routes_it(host_app, host_plugin) -> None:
    assert host_app.amqp.router.route({}, "kit.double")["queue"].name == "celery"
    host_plugin(Greeter(), name="greeter")
    assert host_app.amqp.router.route({}, "kit.double")["queue"].name == "greetings"
    assert "greetings" in host_app.amqp.queues


def test_the_registered_plugins_are_forgotten_after_the_test() -> None:
    from core.plugin_manager import make_plugin_manager

    assert [p.name for p in make_plugin_manager([], entry_points=[]).records] == []


def test_host_cli_reports_errors_with_their_exit_status(host_ini, host_cli) -> None:
    host_ini({"celery.broker_url": "embeded+sqlite:///x"})
    result = host_cli("tasks")
    assert result.exit_code == 2
    assert "celery.broker_url" in result.output


# -- host_worker ---------------------------------------------------------------------------------


@pytest.mark.host_worker(args=["-P", "solo"])
def test_a_worker_sees_the_extensions_the_test_installed(worker_with_extension, host_app) -> None:
    assert host_app.tasks["kit.double"].delay(5).get(timeout=30) == 10
    assert "kit.double" in worker_with_extension.log


@pytest.fixture
def worker_with_extension(installed_extension, request: pytest.FixtureRequest):
    installed_extension("kit-ext", **KIT_EXTENSION)
    return request.getfixturevalue("host_worker")


@pytest.mark.host_ini(eager=True)
def test_an_extension_installed_after_host_app_is_set_up_is_on_it(host_app, installed_extension) -> None:
    assert "kit.double" not in host_app.tasks
    installed_extension("kit-ext", **KIT_EXTENSION)
    assert host_app.tasks["kit.double"].delay(4).get(timeout=10) == 8


@pytest.mark.host_worker(args=["-P", "solo"])
def test_an_extension_installed_after_the_worker_started_fails_the_test(
    host_worker, installed_extension
) -> None:
    late = r"installed_extension\('kit-ext'\) was called after host_worker started, which cannot see it"
    with pytest.raises(pytest.fail.Exception, match=late):
        installed_extension("kit-ext", **KIT_EXTENSION)


def test_a_failed_test_reports_the_worker_log(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_fails(host_worker):
            assert False, "on purpose"

        def test_passes(host_ini):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-m", "host_worker", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*- host worker log (*worker-*.log) -*", "*@* ready.*"])
