"""The hooks a host-framework plugin can implement.

A plugin is a module (or any object) named by an entry point in the group
``host.plugins`` and enabled by name in the ini (``host.plugins = example``).
It implements hooks by defining functions with these names, marked with
:data:`plugins.hookimpl`; it may take any subset of a hook's arguments::

    from plugins import hookimpl

    @hookimpl
    def host_queues():
        return {"example": ["example.add"]}

The host calls each plugin's implementation separately, in the order of
``host.plugins``, so that a failure names the plugin that raised and the
others still run. Every hook is documented in ``docs/plugins.md``, with an
example from ``example_ext``; a test keeps that page and this file in step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import click
    from celery import Celery, Task

    from core.config import HostConfig

#: The project name pluggy knows the hooks by.
PROJECT = "host"

hookspec = pluggy.HookspecMarker(PROJECT)


class Declare(Protocol):
    """The ``declare`` callable :func:`host_config_declarations` receives."""

    def __call__(
        self,
        name: str,
        *,
        type: str = "string",
        default: Any = None,
        help: str = "",
        choices: Sequence[str] = (),
        required: bool = False,
    ) -> None: ...


# -- tasks ---------------------------------------------------------------------


@hookspec
def host_task_imports() -> Iterable[str]:
    """Name the modules that hold this plugin's tasks.

    The pluggy twin of the ``host.celery_task`` entry point: the modules are
    imported by the same discovery, with the same checks (a broken module or
    a task name another extension registered stops ``host celeryd``).

    Called once per command that needs tasks (``host celeryd``, ``host tasks``,
    ``host send``), after the app is configured.

    :return: module paths such as ``["example_ext.tasks"]``.
    """


# -- configuration ---------------------------------------------------------------


@hookspec
def host_config_declarations(declare: Declare) -> None:
    """Declare the options of this plugin's ``[plugin:NAME]`` ini section.

    Each call to ``declare`` adds one option. The section is then validated
    like the core configuration: an unknown key or a value of the wrong type
    is an error naming the file, the section and the key. Every option can
    also be set from the environment as ``HOST_PLUGIN_<NAME>_<OPTION>``
    (upper case, dots and dashes as underscores), so secrets need not live in
    the file. Values are read with :func:`plugins.plugin_config`.

    Called once, right after the plugins are loaded, before any other hook.

    :param declare: ``declare(name, *, type="string", default=None, help="",
        choices=(), required=False)``; ``type`` is one of ``string``, ``int``,
        ``float``, ``bool``, ``list`` (space or comma separated, or JSON),
        ``dict`` (JSON) or ``any`` (JSON where it parses, else text).
    """


@hookspec
def host_celery_config(config: MutableMapping[str, Any], host_config: HostConfig) -> None:
    """Adjust the Celery settings after the ini is read.

    Called once while the app is configured, after the ini, the environment,
    ``host.site_id`` and every plugin's :func:`host_queues` and
    :func:`host_beat_schedule` have been applied, and before the broker URL is
    checked and any task module is imported. Change ``config`` in place;
    ``host config show`` reports what each plugin changed.

    :param config: the Celery settings, by their lower-case names
        (``task_routes``, ``worker_prefetch_multiplier``...).
    :param host_config: the validated ini (``host_config.host``, ``.path``).
    """


# -- routing and schedules ---------------------------------------------------------


@hookspec
def host_queues() -> Mapping[str, Sequence[str]]:
    """Declare the queues this plugin's tasks use, and route tasks to them.

    ``host celeryd`` consumes every declared queue, and the default queue,
    unless ``-Q`` names others. With ``host.site_id`` set, each name is
    prefixed (``host:SITE:NAME``) so hosts sharing a broker stay apart; the
    names given here and to ``-Q`` are the unprefixed ones.

    Called once while the app is configured.

    :return: ``{queue name: [task names or glob patterns routed to it]}``,
        such as ``{"example": ["example.add", "example.slow_*"]}``; an empty
        list declares a queue without routing anything to it.
    """


@hookspec
def host_beat_schedule() -> Mapping[str, Mapping[str, Any]]:
    """Contribute periodic tasks.

    Merged into Celery's ``beat_schedule`` (the ini's entries, its
    ``[celerybeat:NAME]`` sections and ``celery.beat_schedule``, win on a
    name clash), which the beat process runs. Called once while the app is
    configured.

    :return: ``{entry name: {"task": name, "schedule": seconds, a timedelta,
        a celery.schedules object or a string as the ini writes it ("5m",
        "*/15 * * * *", "@daily"), "args": [...], "kwargs": {...},
        "options": {...}}}``, the format of Celery's ``beat_schedule``.
    """


# -- commands ---------------------------------------------------------------------


@hookspec
def host_register_commands(cli: click.Group) -> None:
    """Add subcommands to ``host``.

    Called when ``host`` looks for a command it does not have itself, and
    when it lists its commands for ``host --help``. Add commands with
    ``@cli.command()`` or groups with ``@cli.group()``; a name the host
    already uses is an error.

    :param cli: the ``host`` command group.
    """


# -- worker lifecycle -------------------------------------------------------------


@hookspec
def host_worker_init(app: Celery) -> None:
    """The worker is starting (Celery's ``worker_init`` signal).

    Called once in the worker's main process, before it connects to the
    broker and before any pool process exists.

    :param app: the configured app.
    """


@hookspec
def host_worker_process_init() -> None:
    """A pool process has started (Celery's ``worker_process_init`` signal).

    Called in each prefork pool process right after it is forked, before it
    runs a task: reset database pools, sockets and other resources that must
    not be shared with the parent. The ``solo`` pool calls it once, in the
    worker's own process, when the pool starts; the ``threads``, ``eventlet``
    and ``gevent`` pools never call it. A child that has not finished
    starting after ``celery.worker_proc_alive_timeout`` seconds (4 by
    default) is replaced, so keep this hook short.
    """


@hookspec
def host_worker_shutdown() -> None:
    """The worker is shutting down (Celery's ``worker_shutdown`` signal).

    Called once in the worker's main process, after the pool has stopped:
    every task the worker had started has finished.
    """


# -- task outcomes ----------------------------------------------------------------


@hookspec
def host_task_success(
    task: Task, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any], result: Any
) -> None:
    """A task has returned (Celery's ``task_success`` signal).

    Called in the process that ran the task, after the result is stored.
    Keep it quick: the process takes its next task when the hook returns.

    :param task: the task object (``task.name``, ``task.request``).
    :param task_id: the task's id.
    :param args: its positional arguments.
    :param kwargs: its keyword arguments.
    :param result: what it returned.
    """


@hookspec
def host_task_failure(
    task: Task,
    task_id: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    exception: BaseException,
    traceback: str,
) -> None:
    """A task has failed for good (Celery's ``task_failure`` signal).

    Called after the task's final attempt: a task that retries fires this only
    when it gives up. It runs in the pool process that ran the task, or in the
    worker's main process for a failure Celery sees there (a hard time limit).
    ``host.admin_emails`` already mails the admins; use this hook to alert
    anywhere else. Keep it quick: it runs on the worker's time.

    :param task: the task object.
    :param task_id: the task's id.
    :param args: its positional arguments.
    :param kwargs: its keyword arguments.
    :param exception: what it raised.
    :param traceback: the formatted traceback, as the result store keeps it.
    """
