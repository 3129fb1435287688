"""The beat tests' plugin: a task that records each run beat sends it, and a periodic entry of its own.

Installed by tests/test_beat.py as a real distribution, ``beattest-plugin``,
whose ``*.dist-info`` folder names this module in the group ``host.plugins``
(``beattest = beat_plugin``).
"""

from plugins import hookimpl, plugin_config


@hookimpl
def host_config_declarations(declare):
    declare("runs", required=True, help="The JSON-lines file each run of beattest.record is appended to.")
    declare("every", type="float", default=0.0, help="Seconds between runs of plugin.tick; 0: no entry.")
    declare("task", default="beattest.record", help="The task plugin.tick runs.")


@hookimpl
def host_task_imports():
    return ["beat_tasks"]


@hookimpl
def host_beat_schedule():
    every = plugin_config("beattest")["every"]
    if not every:
        return {}
    task = plugin_config("beattest")["task"]
    return {"plugin.tick": {"task": task, "schedule": every, "args": ["plugin.tick"]}}
