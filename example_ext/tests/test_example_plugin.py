"""The example plugin as the host loads it: its options, queue, periodic task and command."""

import pytest

from plugins import hookimpl

pytestmark = pytest.mark.host_ini(plugins=["example"], plugin_options={"example": {"heartbeat_seconds": 5}})


def test_its_queue_and_periodic_task(host_app):
    assert host_app.conf.task_routes == [{"example.add": {"queue": "example"}}]
    assert host_app.conf.beat_schedule["example.heartbeat"]["schedule"] == 5.0


def test_its_command(host_cli):
    result = host_cli("example", "hello", "--name", "Ada")
    assert result.exit_code == 0, result.output
    assert result.output == "Hello, Ada!\n"


def test_a_wrong_option_names_the_ini(host_ini, host_cli):
    ini = host_ini(plugins=["example"], plugin_options={"example": {"heartbeat_seconds": "often"}})
    result = host_cli("example", "hello")
    assert result.exit_code == 2
    assert f"{ini}, section [plugin:example], key 'heartbeat_seconds'" in result.output


class Audit:
    """A plugin of the test's own, beside example: not installed, registered for one test."""

    @hookimpl
    def host_queues(self):
        return {"audit": ["example.echo"]}


def test_beside_another_plugin(host_plugin, host_app):
    host_plugin(Audit())
    assert host_app.conf.task_routes == [
        {"example.add": {"queue": "example"}, "example.echo": {"queue": "audit"}}
    ]
