"""The ``host`` command: start workers from ini files, send tasks, read results.

Heavy imports (Celery, extensions) happen inside the commands that need them,
so ``host --help`` stays fast. :class:`HostGroup` is the one place where a
:class:`~core.errors.HostError` becomes a message and an exit status.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

import click

from core.errors import ExtensionError, HostError, UsageError

if TYPE_CHECKING:  # imported lazily at run time, to keep `host --help` fast
    from core.celery_app import HostCelery
    from core.config import HostConfig
    from core.discovery import Discovery


class HostClickError(click.ClickException):
    """A :class:`HostError` shown as ``Error: ...`` with its own exit status."""

    def __init__(self, error: HostError) -> None:
        super().__init__(str(error))
        # click declares exit_code on the class; each HostError brings its own.
        self.exit_code = error.exit_code  # type: ignore[misc]


class HostGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HostError as e:
            raise HostClickError(e) from e


class Host:
    """What a command needs, built on first use: config, configured app, discovery."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    @cached_property
    def config(self) -> HostConfig:
        from core.config import load_config

        return load_config(self.config_path)

    @cached_property
    def app(self) -> HostCelery:
        from core.celery_app import celery, configure_app

        return configure_app(celery, self.config)

    @cached_property
    def discovery(self) -> Discovery:
        from core.discovery import discover

        return discover(self.app, self.config)

    def setup_logging(self) -> None:
        from core.config import configure_logging

        configure_logging(self.config)

    def tasks_or_fail(self) -> Discovery:
        """Discovery, failing (exit 2) on any broken extension unless on_error = warn."""
        found = self.discovery
        if found.errors and self.config.host["extensions.on_error"] != "warn":
            raise _combined(found.errors)
        for error in found.errors:
            click.echo(f"warning: skipped: {error}", err=True)
        return found


def _combined(errors: list[HostError]) -> HostError:
    if len(errors) == 1:
        return errors[0]
    text = "\n".join(f"  {i}. {e}" for i, e in enumerate(errors, 1))
    return HostError(
        f"{len(errors)} extensions are broken:\n{text}",
        hint="fix them, or set host.extensions.on_error = warn to skip broken extensions",
    )


class Seconds(click.ParamType):
    """A finite, non-negative number of seconds."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a number of seconds (0 or more)", param, ctx)
        return seconds


SECONDS = Seconds()


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config_path",
        metavar="FILE",
        help="The ini file (default: $HOST_CONFIG, else ./development.ini).",
    )(f)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    python = sys.version.split()[0]
    return f"host-framework {v('host-framework')} (celery {v('celery')}, kombu {v('kombu')}, Python {python})"


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        click.echo(_version())
        ctx.exit()


@click.group(cls=HostGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the versions and exit.",
)
def cli() -> None:
    """host-framework: Celery workers and tasks from installed extensions."""


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@config_option
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
def celeryd(config_path: str | None, worker_args: tuple[str, ...]) -> None:
    """Start a worker. Every other option goes to `celery worker` unchanged
    (`host celeryd -- --help` lists them)."""
    if "--help" in worker_args:
        # Celery's own help needs no configuration and no extension.
        from celery import Celery

        click.echo("host celeryd [--config FILE] -- [OPTIONS]: the options are those of `celery worker`:\n")
        sys.exit(Celery("host", set_as_current=False).start(["worker", "--help"]) or 0)
    host = Host(config_path)
    host.setup_logging()
    app = host.app
    found = host.tasks_or_fail()
    app.conf.include = list(dict.fromkeys([*(app.conf.include or ()), *found.modules]))
    click.echo(_task_table(found.task_rows(), title="Tasks from installed extensions"), err=True)
    argv = ["worker", *worker_args]
    if not any(_is_loglevel(arg) for arg in worker_args):
        argv.append("--loglevel=INFO")
    # app.worker_main() drops the worker's exit status; app.start() returns it.
    sys.exit(app.start(argv) or 0)


def _is_loglevel(arg: str) -> bool:
    """``-l X``, ``-lX``, ``--loglevel X``, ``--loglevel=X``."""
    return arg == "--loglevel" or arg.startswith("--loglevel=") or (arg.startswith("-l") and arg[:2] != "--")


def _task_table(rows: list[dict[str, str]], title: str) -> str:
    if not rows:
        return f"{title}: none (install an extension with a host.celery_task entry point)"
    head = {"task": "TASK", "extension": "EXTENSION", "version": "VERSION", "module": "MODULE"}
    cols = list(head)
    widths = {c: max(len(head[c]), *(len(r[c]) for r in rows)) for c in cols}
    lines = [f"{title}:"] + [
        "  " + "  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in [head, *rows]
    ]
    return "\n".join(lines)


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tasks(config_path: str | None, as_json: bool) -> None:
    """List every task the installed extensions provide, and any problems (no broker needed)."""
    host = Host(config_path)
    host.setup_logging()  # checks the logging sections, as `host celeryd` would
    found = host.discovery
    if as_json:
        click.echo(
            json.dumps(
                {
                    "tasks": found.task_rows(),
                    "extensions": [
                        {
                            "distribution": e.distribution,
                            "version": e.version,
                            "entry_point": e.entry_point,
                            "modules": e.modules,
                            "disabled": e.disabled,
                            "error": str(e.error) if e.error else None,
                        }
                        for e in found.extensions
                    ],
                    "errors": [str(e) for e in found.errors],
                },
                indent=2,
            )
        )
    else:
        click.echo(_task_table(found.task_rows(), title="Tasks"))
        disabled = [e.label for e in found.extensions if e.disabled]
        if disabled:
            click.echo(f"Disabled by host.celery_task.disabled: {', '.join(disabled)}")
        for error in found.errors:
            click.echo(f"Error: {error}", err=True)
    if found.errors:
        sys.exit(2)


@cli.command()
@config_option
@click.argument("name")
@click.argument("args", nargs=-1)
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments as a JSON object.")
@click.option("--task-id", help="Use this task id instead of a new UUID.")
@click.option("--countdown", type=SECONDS, metavar="S", help="Run no earlier than S seconds from now.")
@click.option("--eta", metavar="ISO", help="Run no earlier than this time (ISO 8601).")
@click.option("--queue", "-Q", metavar="Q", help="Send to this queue instead of the task's route.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option(
    "--timeout",
    type=SECONDS,
    default=60.0,
    show_default=True,
    metavar="S",
    help="With --wait: give up after S seconds.",
)
def send(
    config_path: str | None,
    name: str,
    args: tuple[str, ...],
    kwargs_json: str | None,
    task_id: str | None,
    countdown: float | None,
    eta: str | None,
    queue: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Send task NAME; each ARG is a JSON value ('"text"', 3, '[1, 2]')."""
    from core import client

    positional = client.parse_json_args(args)
    keywords = client.parse_json_kwargs(kwargs_json)
    when = client.parse_eta(eta)
    if countdown is not None and when is not None:
        raise UsageError("--countdown and --eta both say when to run; give one of them")
    host = Host(config_path)
    found = host.discovery
    known = set(found.task_names) | {n for n in host.app.tasks if not n.startswith("celery.")}
    client.check_task_name(
        name, sorted(known), broken=[e.distribution for e in found.errors if isinstance(e, ExtensionError)]
    )
    if wait:
        client.require_backend(host.app)
    result = client.send(
        host.app,
        name,
        positional,
        keywords,
        wait=wait,
        task_id=task_id,
        countdown=countdown,
        eta=when,
        queue=queue,
    )
    if not wait:
        click.echo(result.id)
        return
    click.echo(client.outcome(host.app, result.id, wait=True, timeout=timeout).render())


@cli.command()
@config_option
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task has finished.")
@click.option(
    "--timeout",
    type=SECONDS,
    default=60.0,
    show_default=True,
    metavar="S",
    help="With --wait: give up after S seconds.",
)
def result(config_path: str | None, task_id: str, wait: bool, timeout: float) -> None:
    """Show a task's state, and its result or error."""
    from core import client

    host = Host(config_path)
    found = client.outcome(host.app, task_id, wait=wait, timeout=timeout)
    label = f" ({found.name})" if found.name else ""
    if found.state == "PENDING":
        click.echo(f"PENDING{label}: not started yet, or an unknown task id")
    elif found.state == "SUCCESS":
        click.echo(f"SUCCESS{label}")
        click.echo(found.render())
    else:
        click.echo(f"{found.state}{label}")


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config_show(config_path: str | None, as_json: bool) -> None:
    """The effective settings (file, environment, defaults), passwords masked."""
    from core.config import mask

    config = Host(config_path).config
    values = {f"host.{k}": v for k, v in sorted(config.host.items())}
    values.update({f"celery.{k}": v for k, v in sorted(config.celery.items())})
    masked = {key: mask(value, key) for key, value in values.items()}
    if as_json:
        click.echo(
            json.dumps(
                {"file": str(config.path), "settings": masked, "sources": config.sources},
                indent=2,
                default=str,
            )
        )
        return
    click.echo(f"# {config.path}")
    for key, value in masked.items():
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        click.echo(f"{key} = {shown}    # {config.sources.get(key, 'default')}")


def main() -> None:
    cli(prog_name="host")
