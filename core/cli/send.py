"""``host send`` and ``host result``: send a task by name, read what became of it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from core.cli.base import config_option, host
from core.cli.params import ETA, JSON_ARGUMENT, JSON_OBJECT, SECONDS, read_jsonl
from core.errors import UsageError

timeout_option = click.option(
    "--timeout",
    type=SECONDS,
    default=60.0,
    show_default=True,
    metavar="S",
    help="With --wait: give up after S seconds.",
)


@click.command()
@config_option
@click.argument("name")
@click.argument("args", nargs=-1, type=JSON_ARGUMENT)
@click.option(
    "--kwargs", "kwargs", type=JSON_OBJECT, metavar="JSON", help="Keyword arguments as a JSON object."
)
@click.option("--task-id", help="Use this task id instead of a new UUID.")
@click.option("--countdown", type=SECONDS, metavar="S", help="Run no earlier than S seconds from now.")
@click.option("--eta", type=ETA, metavar="ISO", help="Run no earlier than this time (ISO 8601).")
@click.option("--queue", "-Q", metavar="Q", help="Send to this queue instead of the task's route.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@timeout_option
@click.option(
    "--many",
    metavar="FILE",
    help='Send one task per line of FILE (JSON Lines; - for stdin): [arg, ...] or {"args": [...], '
    '"kwargs": {...}}. Prints the task ids.',
)
def send(
    config_path: str | None,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    task_id: str | None,
    countdown: float | None,
    eta: datetime | None,
    queue: str | None,
    wait: bool,
    timeout: float,
    many: str | None,
) -> None:
    """Send task NAME; each ARG is a JSON value ('"text"', 3, '[1, 2]')."""
    if countdown is not None and eta is not None:
        raise UsageError("--countdown and --eta both say when to run; give one of them")
    if many is not None:
        given = [
            f for f, v in (("ARG", args), ("--kwargs", kwargs), ("--task-id", task_id), ("--wait", wait)) if v
        ]
        if given:
            raise UsageError(
                f"--many takes the arguments from its file; {given[0]} cannot be given with it",
                hint='put them in the file, one task per line: {"args": [...], "kwargs": {...}}',
            )
        _send_many(config_path, name, many, countdown=countdown, eta=eta, queue=queue)
        return
    from core.results import outcome, require_backend
    from core.sending import send as send_task

    h = host(config_path)
    h.require_task(name)
    if wait:
        require_backend(h.app)
    options = {"task_id": task_id, "countdown": countdown, "eta": eta, "queue": queue}
    result = send_task(h.app, name, list(args), kwargs or {}, wait=wait, **options)
    if not wait:
        click.echo(result.id)
        return
    click.echo(outcome(h.app, result.id, wait=True, timeout=timeout).render())


def _send_many(config_path: str | None, name: str, path: str, **options: Any) -> None:
    """``host send NAME --many FILE``: a file is checked whole before anything is sent."""
    from core import bulk

    h = host(config_path)
    h.require_task(name)
    options = {key: value for key, value in options.items() if value is not None}
    if path == "-":
        items: Iterator[Any] = read_jsonl(sys.stdin, "stdin")
    else:
        source = Path(path)
        if not source.is_file():
            raise UsageError(f"--many {path}: no such file", hint="give a JSON Lines file, or - for stdin")
        try:
            with source.open(encoding="utf-8") as lines:
                for _ in read_jsonl(lines, path):  # every line valid before the first is sent
                    pass
        except UnicodeDecodeError as e:
            raise UsageError(f"--many {path} is not UTF-8 text: {e}", hint="save it as UTF-8") from e
        items = _lines_of(source, path)
    try:
        ids = bulk.send_many(h.app, name, items, **options)
    except bulk.BulkSendError as e:
        for task_id in e.sent:
            click.echo(task_id)
        raise
    for task_id in ids:
        click.echo(task_id)
    click.echo(f"sent {len(ids)} tasks of {name}", err=True)


def _lines_of(source: Path, path: str) -> Iterator[Any]:
    with source.open(encoding="utf-8") as lines:
        yield from read_jsonl(lines, path)


@click.command()
@config_option
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task has finished.")
@timeout_option
def result(config_path: str | None, task_id: str, wait: bool, timeout: float) -> None:
    """Show a task's state, and its result or error."""
    from core.results import outcome

    found = outcome(host(config_path).app, task_id, wait=wait, timeout=timeout)
    label = f" ({found.name})" if found.name else ""
    if found.state == "PENDING":
        click.echo(
            f"PENDING{label}: the result store knows nothing of it: not started yet, an unknown task id, "
            "or a result the store could not take when the task finished (its worker then logged "
            f"'could not store the ... result of task ...[{task_id}]')"
        )
    elif found.state == "SUCCESS":
        click.echo(f"SUCCESS{label}")
        click.echo(found.render())
    else:
        click.echo(f"{found.state}{label}")


COMMANDS = [send, result]
