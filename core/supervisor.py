"""Render a supervisor configuration for one deployment: workers per queue group, one beat,
and Flower if asked for.

Every setting that matters for Celery is written with the reason for it:

``stopasgroup=false``
    supervisor would send SIGTERM to the pool processes too, which stops
    them mid-task; the main worker process must get it alone and wait for
    its tasks (celery#2700, supervisor#1135).
``killasgroup=true``
    after ``stopwaitsecs`` the SIGKILL must reach the pool as well, or
    orphaned children keep running tasks nobody waits for.
``stopwaitsecs``
    at least the longest hard time limit the ini gives a task, so that a
    warm shutdown is never cut short by a SIGKILL while a task may still run.
``autorestart=unexpected``, ``exitcodes=0``
    ``host celeryd`` exits 0 only on a requested stop, which is left alone,
    and 1 when it stopped on an error, which is restarted. A broker outage
    does not end it (it reconnects for as long as it takes), so a long
    outage leaves every program RUNNING rather than FATAL.
``startsecs``
    a configuration error ends ``host celeryd`` with exit status 2 within a
    few seconds; exiting inside ``startsecs`` makes supervisor count a failed
    start, and after ``startretries`` mark the program FATAL instead of
    restarting it forever.
``user``
    never root: a task runs with its worker's privileges.
``priority``
    higher numbers start later and stop earlier: after a broker that runs
    under the same supervisor (at priority 100, say), and before it.

Nothing secret is written: the file names the ini, which holds (or, through
the environment, refers to) the passwords.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import HostConfig
from core.errors import UsageError

#: Seconds a worker gets after SIGTERM when the ini sets no hard time limit.
DEFAULT_STOPWAITSECS = 600
#: Added to the longest hard time limit: the result is stored and the message
#: acknowledged after the limit has killed the task.
STOP_MARGIN = 30
#: A configuration error exits well within this; a healthy worker runs past it.
STARTSECS = 10
WORKER_PRIORITY = 200
BEAT_PRIORITY = 300
FLOWER_PRIORITY = 300


@dataclass(frozen=True)
class Deployment:
    """What ``host supervisor`` was asked for."""

    config: HostConfig
    user: str
    venv: Path
    log_dir: Path
    #: Queue groups, each consumed by its own program; empty: one program for every queue.
    queue_groups: tuple[tuple[str, ...], ...] = ()
    workers: int = 1
    name: str = "host"
    #: A program for ``host flower`` too.
    flower: bool = False

    @property
    def host_bin(self) -> Path:
        return self.venv / "bin" / "host"


def deployment(
    config: HostConfig,
    *,
    user: str | None,
    venv: str | None,
    log_dir: str,
    queues: Sequence[str] = (),
    workers: int = 1,
    current_user: str | None = None,
    flower: bool = False,
) -> Deployment:
    """Check the request and fill in the defaults.

    :param queues: each item one group of comma-separated queue names.
    :param current_user: who renders the file, the default ``user=``.
    """
    chosen = user or current_user
    if not chosen:
        raise UsageError("no user to run the programs as", hint="pass --user NAME")
    if chosen == "root":
        raise UsageError(
            "refusing to render programs that run as root: a task runs with its worker's privileges",
            hint="pass --user NAME with an unprivileged account (create one: useradd --system host)",
        )
    if workers < 1:
        raise UsageError(f"--workers must be 1 or more, not {workers}")
    groups = tuple(tuple(q.strip() for q in group.split(",") if q.strip()) for group in queues)
    if any(not group for group in groups):
        raise UsageError("an empty --queues value", hint="name queues: --queues celery,example --queues slow")
    venv_path = Path(venv).resolve() if venv else Path(sys.prefix)
    if not (venv_path / "bin" / "host").exists():
        raise UsageError(
            f"{venv_path / 'bin' / 'host'} does not exist",
            hint="pass --venv with the virtualenv host-framework is installed in",
        )
    return Deployment(config, chosen, venv_path, Path(log_dir), groups, workers, flower=flower)


def stopwaitsecs(config: HostConfig) -> tuple[int, str]:
    """Seconds supervisor waits after SIGTERM, and why that many."""
    limits = hard_time_limits(config.celery)
    if not limits:
        return DEFAULT_STOPWAITSECS, (
            "no hard time limit in the ini (celery.task_time_limit): a task still running after "
            f"{DEFAULT_STOPWAITSECS} s is killed; set a limit and render again"
        )
    longest, source = max(limits, key=lambda item: item[0])
    seconds = math.ceil(longest) + STOP_MARGIN
    return seconds, f"the longest hard time limit ({source} = {longest:g} s) plus {STOP_MARGIN} s"


def hard_time_limits(celery: Mapping[str, Any]) -> list[tuple[float, str]]:
    """Every hard time limit the settings give: the default and per-task annotations."""
    limits = []
    if isinstance(celery.get("task_time_limit"), (int, float)):
        limits.append((float(celery["task_time_limit"]), "celery.task_time_limit"))
    annotations = celery.get("task_annotations")
    for task, values in annotations.items() if isinstance(annotations, Mapping) else []:
        if isinstance(values, Mapping) and isinstance(values.get("time_limit"), (int, float)):
            limits.append((float(values["time_limit"]), f"celery.task_annotations[{task!r}].time_limit"))
    return limits


def render(d: Deployment) -> str:
    """The supervisor file: a group, a worker program per queue group, one beat program, Flower."""
    wait, why = stopwaitsecs(d.config)
    workers = _worker_programs(d)
    beat = f"{d.name}-celerybeat"
    flower = [f"{d.name}-flower"] if d.flower else []
    parts = [
        _header(d),
        f"[group:{d.name}]\nprograms = {','.join([*workers, beat, *flower])}\n",
        *(_worker(d, name, queues, wait, why) for name, queues in workers.items()),
        _beat(d, beat),
        *(_flower(d, name) for name in flower),
    ]
    return "\n".join(parts)


def _worker_programs(d: Deployment) -> dict[str, tuple[str, ...]]:
    if not d.queue_groups:
        return {f"{d.name}-celeryd": ()}
    return {f"{d.name}-celeryd-{_slug('-'.join(group))}": group for group in d.queue_groups}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def _header(d: Deployment) -> str:
    return (
        f"; Rendered by `host supervisor` for {d.config.path}.\n"
        "; Render it again after changing the ini's time limits or the queues.\n"
        "; Install: copy to /etc/supervisor/conf.d/, then `supervisorctl reread && supervisorctl update`.\n"
    )


def _common(d: Deployment, log_name: str) -> list[str]:
    return [
        f"user = {d.user}",
        "; never root: a task runs with its worker's privileges",
        f"directory = {d.config.path.parent}",
        f"stdout_logfile = {d.log_dir / log_name}",
        "redirect_stderr = true",
        "stdout_logfile_maxbytes = 50MB",
        "stdout_logfile_backups = 10",
        "autostart = true",
        "autorestart = unexpected",
        "exitcodes = 0",
        "; 0 is a requested stop (SIGTERM, SIGINT, `control shutdown`), and stays stopped; anything else",
        "; (1: stopped on an error) restarts. A broker outage ends nothing: the worker waits it out",
        f"startsecs = {STARTSECS}",
        "; a configuration error exits (status 2) within a few seconds: inside startsecs it counts as a",
        "; failed start, and after startretries supervisor marks the program FATAL instead of looping",
        "startretries = 3",
        "stopsignal = TERM",
    ]


def _worker(d: Deployment, program: str, queues: tuple[str, ...], wait: int, why: str) -> str:
    # supervisor expands %(program_name)s and %(process_num)d and turns %% into %;
    # Celery then expands %h to the host name: each process gets a node name of its own.
    node = "%(program_name)s-%(process_num)d@%%h"
    args = ["celeryd", "--config", str(d.config.path), "--", "-n", node]
    if queues:
        args += ["-Q", ",".join(queues)]
    lines = [
        f"[program:{program}]",
        f"command = {shlex.join([str(d.host_bin), *args])}",
        "; in the foreground: supervisor is the one that keeps it running",
        "process_name = %(program_name)s-%(process_num)d",
        f"numprocs = {d.workers}",
        *_common(d, f"{program}-%(process_num)d.log"),
        f"stopwaitsecs = {wait}",
        f"; {why}",
        "stopasgroup = false",
        "; SIGTERM to the main process only: it stops taking tasks and waits for the running ones;",
        "; sent to the whole group it would stop the pool processes mid-task (celery#2700)",
        "killasgroup = true",
        "; after stopwaitsecs, SIGKILL the pool processes too, so none is left running a task",
        f"priority = {WORKER_PRIORITY}",
        "; after the broker, when it runs under this supervisor with a lower number",
    ]
    return "\n".join(lines) + "\n"


def _beat(d: Deployment, program: str) -> str:
    lines = [
        f"[program:{program}]",
        "; one beat per machine is enough: several elect one active scheduler (host.locks.url)",
        f"command = {shlex.join([str(d.host_bin), 'celerybeat', '--config', str(d.config.path)])}",
        "numprocs = 1",
        *_common(d, f"{program}.log"),
        "stopwaitsecs = 30",
        "; beat runs no task itself; it only has to save its schedule",
        "stopasgroup = false",
        "killasgroup = true",
        f"priority = {BEAT_PRIORITY}",
        "; after the workers: the first periodic tasks find a worker running",
    ]
    return "\n".join(lines) + "\n"


def _flower(d: Deployment, program: str) -> str:
    lines = [
        f"[program:{program}]",
        f"command = {shlex.join([str(d.host_bin), 'flower', '--config', str(d.config.path)])}",
        "; listens on flower.address:flower.port (127.0.0.1:5555); another address needs",
        '; flower.basic_auth, best given here: environment = HOST_FLOWER_BASIC_AUTH="user:password"',
        "numprocs = 1",
        *_common(d, f"{program}.log"),
        "stopwaitsecs = 30",
        "; Flower runs no task; it exits 0 on SIGTERM",
        "stopasgroup = true",
        "killasgroup = true",
        f"priority = {FLOWER_PRIORITY}",
        "; after the workers, whose events it turns on",
    ]
    return "\n".join(lines) + "\n"
