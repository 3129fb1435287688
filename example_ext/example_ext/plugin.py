"""The example extension as a plugin: options, a queue, a periodic task, a command, a process hook.

Enabled by ``host.plugins = example`` in the ini (the name is the entry
point's, in example_ext/setup.py). It imports neither Celery nor the tasks,
so that ``host --help`` can list its command quickly.
"""

import os

import click

from plugins import hookimpl, plugin_config

#: What each pool process set up for itself (see host_worker_process_init).
PROCESS_STATE = {"initialised_in": None}


@hookimpl
def host_config_declarations(declare):
    declare("greeting", default="Hello", help="What `host example hello` says.")
    declare(
        "heartbeat_seconds",
        type="float",
        default=60.0,
        help="How often beat sends example.echo('heartbeat').",
    )


@hookimpl
def host_queues():
    # example.add has a queue of its own: `host celeryd` consumes it with the
    # default queue, and `host celeryd -- -Q example` starts a worker for it alone.
    return {"example": ["example.add"]}


@hookimpl
def host_beat_schedule():
    seconds = plugin_config("example")["heartbeat_seconds"]
    return {"example.heartbeat": {"task": "example.echo", "schedule": seconds, "args": ["heartbeat"]}}


@hookimpl
def host_register_commands(cli):
    @cli.group()
    def example():
        """Commands of the example extension."""

    @example.command()
    @click.option("--name", default="world", show_default=True, help="Who to greet.")
    def hello(name):
        """Print the greeting from [plugin:example]."""
        click.echo(f"{plugin_config('example')['greeting']}, {name}!")


@hookimpl
def host_worker_process_init():
    # A pool process is a fork of the worker: connections it inherited (a
    # database pool, a socket) are shared with its siblings and must be
    # replaced. This example records which process did its set-up.
    PROCESS_STATE["initialised_in"] = os.getpid()
