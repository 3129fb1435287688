"""``host celeryd`` and ``host celerybeat``: Celery's worker and beat on the configured app.

Every option after the command's own goes to ``celery worker`` or ``celery
beat`` unchanged; only the queue names of ``-Q``/``-X`` get the site prefix.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from core.cli import render
from core.cli.base import config_option, host

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


@click.command(context_settings=PASS_THROUGH)
@config_option
@click.option(
    "--reload",
    is_flag=True,
    help="Development: restart the worker (warm shutdown) when a Python file of the host, "
    "of an extension or of an enabled plugin, or the ini file, changes.",
)
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
def celeryd(config_path: str | None, reload: bool, worker_args: tuple[str, ...]) -> None:
    """Start a worker. Every other option goes to `celery worker` unchanged
    (`host celeryd -- --help` lists them).

    Exit status: 0 after a requested shutdown (SIGTERM, SIGINT, `control
    shutdown`), 1 when the worker stops on an error, 2 on a configuration problem.
    """
    if "--help" in worker_args:
        _celery_help("celeryd", "worker")
    if reload:
        _reloading(config_path, worker_args)
    from core.collector import hold_collection, release_collection
    from core.runner import run_celery

    hold_collection()
    h = host(config_path)
    try:
        h.setup_logging()
        h.refuse_root("a worker")
        found = h.tasks_or_fail()
        beat = embeds_beat(worker_args)
        if beat:
            schedule = h.beat_or_fail()
            h.beat_schedule_folder()
    except BaseException:
        release_collection()
        raise
    click.echo(render.task_table(found.task_rows(), title="Tasks from installed extensions"), err=True)
    click.echo(render.plugins_line(h.plugins), err=True)
    if beat:
        click.echo(f"Periodic entries (-B): {', '.join(sorted(schedule)) or 'none'}", err=True)
    argv = ["worker", *site_queues(worker_args, h.queue_name), *_default_loglevel(worker_args)]
    sys.exit(run_celery(h.app, argv))


@click.command(context_settings=PASS_THROUGH)
@config_option
@click.argument("beat_args", nargs=-1, type=click.UNPROCESSED)
def celerybeat(config_path: str | None, beat_args: tuple[str, ...]) -> None:
    """Start the periodic-task scheduler. Several may run: one sends, the others stand
    by and take over when it stops. Every other option goes to `celery beat`
    unchanged (`host celerybeat -- --help` lists them).

    Exit status: 0 after SIGTERM or SIGINT, 1 when beat stops on an error, 2 on a
    configuration problem.
    """
    if "--help" in beat_args:
        _celery_help("celerybeat", "beat")
    from core.runner import run_celery

    h = host(config_path)
    h.setup_logging()
    h.refuse_root("beat")
    h.tasks_or_fail()
    schedule = h.beat_or_fail()
    click.echo(f"Periodic entries: {', '.join(sorted(schedule)) or 'none'}", err=True)
    h.beat_schedule_folder()
    sys.exit(run_celery(h.app, ["beat", *beat_args, *_default_loglevel(beat_args)]))


COMMANDS = [celeryd, celerybeat]


def _reloading(config_path: str | None, worker_args: tuple[str, ...]) -> None:
    """``host celeryd --reload``: a worker child process, restarted when a watched file changes."""
    from core.reloader import Reloader, child_command, watched_paths

    h = host(config_path, strict=False)  # a broken extension is the child's to report
    paths = watched_paths(h)
    command = child_command(str(h.config.path), [a for a in worker_args if a != "--"])
    sys.exit(Reloader(command, paths, echo=lambda line: click.echo(line, err=True)).run())


def embeds_beat(args: tuple[str, ...] | list[str]) -> bool:
    """``-B``/``--beat`` among ``celery worker``'s options (``-B`` may be grouped: ``-Bc2``, ``-EB``)."""
    for arg in args:
        if arg == "--":
            continue
        if arg == "--beat":
            return True
        if arg.startswith("-") and not arg.startswith("--"):
            # A group of flags (-EB, -Bc2): -E takes no value; any other letter that is not
            # -B takes the rest of the group as its value (-nB@host is a node name).
            for letter in arg[1:]:
                if letter == "B":
                    return True
                if letter != "E":
                    break
    return False


def _celery_help(command: str, celery_command: str) -> None:
    """``host COMMAND -- --help``: Celery's own help, which needs no configuration and no extension."""
    from celery import Celery

    click.echo(
        f"host {command} [--config FILE] -- [OPTIONS]: the options are those of `celery {celery_command}`:\n"
    )
    sys.exit(Celery("host", set_as_current=False).start([celery_command, "--help"]) or 0)


def _default_loglevel(args: tuple[str, ...]) -> list[str]:
    """``--loglevel=INFO`` unless the arguments give one (``-l X``, ``-lX``, ``--loglevel[=]X``)."""
    given = any(
        arg == "--loglevel" or arg.startswith("--loglevel=") or (arg.startswith("-l") and arg[:2] != "--")
        for arg in args
    )
    return [] if given else ["--loglevel=INFO"]


_QUEUE_OPTIONS = ("-Q", "--queues", "-X", "--exclude-queues")


def site_queues(args: tuple[str, ...] | list[str], queue_name: Callable[[str], str]) -> list[str]:
    """The queue names given to ``-Q``/``-X`` as the site calls them (``queue_name``); the rest untouched.

    Operators name queues as the plugins declare them (``-Q example``); with
    ``host.site_id`` the worker consumes ``host:SITE:example``.
    """

    def prefixed(names: str) -> str:
        given = [n.strip() for n in names.split(",") if n.strip()]
        renamed = [queue_name(n) for n in given]
        return names if renamed == given else ",".join(renamed)  # untouched without a site id

    out: list[str] = []
    expect_value = False
    for arg in args:
        if arg == "--":
            out.append(arg)
            expect_value = False
        elif expect_value:
            out.append(prefixed(arg))
            expect_value = False
        elif arg in _QUEUE_OPTIONS:
            out.append(arg)
            expect_value = True
        elif arg.startswith(("--queues=", "--exclude-queues=")):
            option, _, names = arg.partition("=")
            out.append(f"{option}={prefixed(names)}")
        elif arg[:2] in ("-Q", "-X") and len(arg) > 2:
            out.append(arg[:2] + prefixed(arg[2:]))
        else:
            out.append(arg)
    return out
