"""A second, tiny plugin for the tests: it records every lifecycle hook it sees.

Installed by the tests as a real distribution, ``recorder-plugin``, whose
``*.dist-info`` folder names this module in the group ``host.plugins``
(``recorder = recorder_plugin``). Each event is one JSON line appended to
the file its option ``events`` names, from whichever process fired it.
"""

import json
import os

from plugins import hookimpl, plugin_config

#: A result that makes host_task_success raise, to show one plugin's failure
#: is logged with its name and stops neither the task nor the other plugins.
RAISE_IN_HOOK = "raise-in-hook"


def record(event, **data):
    line = json.dumps({"event": event, "pid": os.getpid(), **data}, default=repr)
    with open(plugin_config("recorder")["events"], "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


@hookimpl
def host_config_declarations(declare):
    declare("events", required=True, help="The JSON-lines file events are appended to.")


@hookimpl
def host_task_imports():
    return ["recorder_tasks"]


@hookimpl
def host_queues():
    return {"recorder": ["recorder.*"]}


@hookimpl
def host_worker_init(app):
    record("worker_init", app=app.main, queues=sorted(app.amqp.queues))


@hookimpl
def host_worker_process_init():
    record("worker_process_init")


@hookimpl
def host_worker_shutdown():
    record("worker_shutdown")


@hookimpl
def host_task_success(task, task_id, args, kwargs, result):
    if result == RAISE_IN_HOOK:
        raise RuntimeError("the recorder refuses this result")
    record(
        "task_success", task=task.name, task_id=task_id, args=list(args), kwargs=dict(kwargs), result=result
    )


@hookimpl
def host_task_failure(task, task_id, args, kwargs, exception, traceback):
    record(
        "task_failure",
        task=task.name,
        task_id=task_id,
        args=list(args),
        exception=f"{type(exception).__name__}: {exception}",
        traceback=traceback,
    )
