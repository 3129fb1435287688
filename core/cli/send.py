"""``host send`` and ``host result``: send a task by name, read what became of it."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from core.cli.base import config_option, host
from core.cli.params import ETA, JSON_ARGUMENT, JSON_OBJECT, SECONDS, read_jsonl
from core.errors import ResultTimeout, UsageError

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
    from contextlib import redirect_stdout

    from core.results import inline_outcome, outcome, require_backend, watch
    from core.sending import eager_mode
    from core.sending import send as send_task

    h = host(config_path)
    h.require_task(name)
    if wait and not eager_mode(h.app):
        require_backend(h.app)
    options = {"task_id": task_id, "countdown": countdown, "eta": eta, "queue": queue}
    # A task run here (eager mode, the fallback) prints to stderr: stdout is the id or the result.
    with redirect_stdout(sys.stderr):
        result = send_task(h.app, name, list(args), kwargs or {}, wait=wait, **options)
    if not wait:
        click.echo(result.id)
        return
    if _ran_inline(result):
        click.echo(inline_outcome(result).render())
        return
    try:
        with ProgressDisplay(name) as display:
            watch(h.app, result.id, timeout, display.update)
    except ResultTimeout as e:
        raise h.why_pending(name, queue, result.id, e) from e
    click.echo(outcome(h.app, result.id, wait=True, timeout=timeout).render())


def _ran_inline(result: Any) -> bool:
    from celery.result import EagerResult

    return isinstance(result, EagerResult)


class ProgressDisplay:
    """``host send --wait``'s view of a task's progress, on stderr (stdout keeps the result).

    On a terminal: a live bar with the count, the percentage, the task's
    message and an ETA (rich). Otherwise (piped, in a log): one plain line
    per update.
    """

    def __init__(self, name: str) -> None:
        from rich.console import Console

        self.name = name
        self.console = Console(stderr=True)
        self.progress: Any = None
        self.bar: Any = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, info: dict[str, Any]) -> None:
        from core.cli.render import progress_line

        if not self.console.is_terminal:
            click.echo(progress_line(info), err=True)
            return
        total, current = info.get("total"), info.get("current") or 0
        message = str(info.get("message") or "")
        if self.progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[message]}"),
                console=self.console,
                transient=False,
            )
            self.progress.start()
            self.bar = self.progress.add_task(self.name, total=total, message=message)
        self.progress.update(self.bar, completed=current, total=total, message=message)


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
                _check_lines(h.app, name, lines, path)  # every line valid before the first is sent
        except UnicodeDecodeError as e:
            raise UsageError(f"--many {path} is not UTF-8 text: {e}", hint="save it as UTF-8") from e
        items = _lines_of(source, path)
    from contextlib import redirect_stdout

    from core.sending import eager_mode

    try:
        with redirect_stdout(sys.stderr):  # what tasks run here print is not a task id
            ids = bulk.send_many(h.app, name, items, **options)
    except bulk.BulkSendError as e:
        for task_id in e.sent:
            click.echo(task_id)
        raise
    for task_id in ids:
        click.echo(task_id)
    if eager_mode(h.app):
        click.echo(f"ran {len(ids)} tasks of {name} here (host.task_mode = eager)", err=True)
    else:
        click.echo(f"sent {len(ids)} tasks of {name}", err=True)


def _check_lines(app: Any, name: str, lines: Iterable[str], path: str) -> None:
    """Every line of a ``--many`` file is an item, whose arguments fit the task (when it is here)."""
    from core.bulk import item_call
    from core.sending import ArgumentCheck

    fits = ArgumentCheck(app, name)
    numbered = _Counted(lines)
    for item in read_jsonl(numbered, path):
        args, kwargs, _ = item_call(item, numbered.count)
        fits(args, kwargs, f"{path}, line {numbered.count}: ")


class _Counted:
    """The lines of a file, counted as read: when read_jsonl yields an item, the count is its line."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines, self.count = iter(lines), 0

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            self.count += 1
            yield line


def _lines_of(source: Path, path: str) -> Iterator[Any]:
    with source.open(encoding="utf-8") as lines:
        yield from read_jsonl(lines, path)


@click.command()
@config_option
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task has finished.")
@timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
def result(config_path: str | None, task_id: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Show what became of a task: its state and own outcome, arguments, worker, run time,
    log lines, progress, and its result or error.

    Exit status 1 when the task failed or was revoked.
    """
    import json

    from core.cli.render import task_view
    from core.errors import TaskFailed
    from core.results import describe, watch

    app = host(config_path).app
    if wait:
        watch(app, task_id, timeout, lambda info: None)
    view = describe(app, task_id)
    if as_json:
        click.echo(json.dumps(view.as_json(), indent=2, default=str))
    else:
        click.echo(task_view(view))
    if view.state in ("FAILURE", "REVOKED"):
        name = view.name or ""
        what = "failed" if view.state == "FAILURE" else "was revoked"
        raise TaskFailed(f"task {name}[{task_id}] {what}: {view.error or view.state}")


COMMANDS = [send, result]
