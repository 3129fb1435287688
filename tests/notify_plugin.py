"""The plugin ``notifyrec`` of tests/test_notify.py: records each ``host_task_failure`` call.

Each call appends one line to the file named by ``$NOTIFY_HOOK_FILE`` (one
``write()`` to a file opened with ``O_APPEND``: concurrent processes never
split a line). A module of its own: pluggy looks at every attribute of a
plugin, and a task's proxy would configure the app too early.
"""

import os

from plugins import hookimpl


@hookimpl
def host_task_failure(task, task_id, exception):
    line = f"{task.name} {task_id} {type(exception).__name__}\n"
    fd = os.open(os.environ["NOTIFY_HOOK_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
