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
from typing import TYPE_CHECKING, Any

import click

from core.errors import ExtensionError, HostError, UsageError
from core.host import Host
from core.settings import HOST_DEFAULTS, site_queues

if TYPE_CHECKING:  # imported lazily at run time, to keep `host --help` fast
    from core.config import HostConfig
    from plugins.manager import HostPluginManager


class HostClickError(click.ClickException):
    """A :class:`HostError` shown as ``Error: ...`` with its own exit status."""

    def __init__(self, error: HostError) -> None:
        super().__init__(str(error))
        # click declares exit_code on the class; each HostError brings its own.
        self.exit_code = error.exit_code  # type: ignore[misc]


class HostGroup(click.Group):
    """The ``host`` group: turns HostErrors into messages, and adds the plugins' commands."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HostError as e:
            raise HostClickError(e) from e

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.plugin_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self.plugin_commands(ctx).get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            name, command, rest = super().resolve_command(ctx, args)
        except click.UsageError as e:
            problem = ctx.meta.get(_PLUGIN_PROBLEM) or ctx.meta.get(_NO_CONFIG)
            if problem:
                raise click.UsageError(
                    f"{e.message}\n(Commands from plugins could not be listed: {problem})", ctx
                ) from e
            raise
        if name is not None and name not in self.commands:
            # A plugin's command: it runs with the host configured, as the
            # built-in commands do, so its code can use plugins.plugin_config().
            try:
                Host(ctx.params.get("config_path")).configure()
            except HostError as error:
                raise HostClickError(error) from error
        return name, command, rest

    def plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        """The commands the enabled plugins add (``host_register_commands``), found once per run.

        Only ``host.plugins`` is read here, not the whole configuration, so that
        ``host --help`` stays fast; a command that runs validates everything.
        """
        if _PLUGIN_COMMANDS not in ctx.meta:
            ctx.meta[_PLUGIN_COMMANDS] = {}
            try:
                ctx.meta[_PLUGIN_COMMANDS] = self._load_plugin_commands(ctx)
            except HostError as e:
                ctx.meta[_PLUGIN_PROBLEM] = str(e).splitlines()[0]
        return ctx.meta[_PLUGIN_COMMANDS]  # type: ignore[no-any-return]

    def _load_plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        import os

        from core.config import plugin_names, resolve_config_path

        try:
            path = resolve_config_path(ctx.params.get("config_path"), os.environ)
        except HostError as e:
            # No configuration here: there are no plugin commands to list, which
            # `host --help` need not mention; an unknown command's error does.
            ctx.meta[_NO_CONFIG] = str(e).splitlines()[0]
            return {}
        names = plugin_names(path)
        if not names:
            return {}
        from plugins.manager import make_plugin_manager

        pm = make_plugin_manager(names)
        commands = register_plugin_commands(pm, reserved=set(self.commands))
        if pm.errors:
            ctx.meta[_PLUGIN_PROBLEM] = str(pm.errors[0]).splitlines()[0]
        return commands

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        problem = ctx.meta.get(_PLUGIN_PROBLEM)
        if problem:
            formatter.write_paragraph()
            formatter.write_text(f"Commands from plugins could not be listed: {problem} (see `host doctor`)")


_PLUGIN_COMMANDS = "host.plugin_commands"
_PLUGIN_PROBLEM = "host.plugin_problem"
_NO_CONFIG = "host.no_config"


def register_plugin_commands(pm: HostPluginManager, reserved: set[str]) -> dict[str, click.Command]:
    """Call each plugin's ``host_register_commands`` on a group of its own; collect the commands."""
    commands: dict[str, click.Command] = {}
    for plugin in pm.implementing("host_register_commands"):
        group = click.Group()
        try:
            pm.call_one(plugin, "host_register_commands", cli=group)
        except Exception as e:
            pm.raised(plugin, "host_register_commands", e)
            continue
        taken = sorted(set(group.commands) & (reserved | set(commands)))
        if taken:
            message = f"adds the command {taken[0]!r}, which host already has"
            pm.fail(plugin, plugin.error_for(message, hint="give the plugin's command another name"))
            continue
        plugin.commands = sorted(group.commands)
        commands.update(group.commands)
    return commands


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


CONFIG_HELP = "The ini file (default: $HOST_CONFIG, else ./development.ini)."


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE`` on a command; ``host --config FILE COMMAND`` works too."""
    return click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP, callback=_group_config)(
        f
    )


def _group_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return value if value is not None else ctx.find_root().params.get("config_path")


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
# Eager, so that `host --config FILE --help` lists that file's plugin commands.
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP, is_eager=True)
def cli(config_path: str | None) -> None:
    """host-framework: Celery workers and tasks from installed extensions."""


def _celery_help(command: str, celery_command: str) -> None:
    """``host COMMAND -- --help``: Celery's own help, which needs no configuration and no extension."""
    from celery import Celery

    click.echo(
        f"host {command} [--config FILE] -- [OPTIONS]: the options are those of `celery {celery_command}`:\n"
    )
    sys.exit(Celery("host", set_as_current=False).start([celery_command, "--help"]) or 0)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@config_option
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
def celeryd(config_path: str | None, worker_args: tuple[str, ...]) -> None:
    """Start a worker. Every other option goes to `celery worker` unchanged
    (`host celeryd -- --help` lists them).

    Exit status: 0 after a requested shutdown (SIGTERM, SIGINT, `control
    shutdown`), 1 when the worker stops on an error, 2 on a configuration problem.
    """
    from core.runner import run_celery

    if "--help" in worker_args:
        _celery_help("celeryd", "worker")
    host = Host(config_path)
    host.setup_logging()
    host.refuse_root("a worker")
    app = host.app
    found = host.tasks_or_fail()
    app.conf.include = list(dict.fromkeys([*(app.conf.include or ()), *found.modules]))
    click.echo(_task_table(found.task_rows(), title="Tasks from installed extensions"), err=True)
    click.echo(_plugins_line(host.plugins), err=True)
    argv = ["worker", *site_queues(worker_args, host.config)]
    if not any(_is_loglevel(arg) for arg in worker_args):
        argv.append("--loglevel=INFO")
    sys.exit(run_celery(app, argv))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@config_option
@click.argument("beat_args", nargs=-1, type=click.UNPROCESSED)
def celerybeat(config_path: str | None, beat_args: tuple[str, ...]) -> None:
    """Start the periodic-task scheduler (run exactly one). Every other option goes to
    `celery beat` unchanged (`host celerybeat -- --help` lists them).

    Exit status: 0 after SIGTERM or SIGINT, 1 when beat stops on an error, 2 on a
    configuration problem.
    """
    from core.runner import run_celery

    if "--help" in beat_args:
        _celery_help("celerybeat", "beat")
    host = Host(config_path)
    host.setup_logging()
    host.refuse_root("beat")
    app = host.app
    found = host.tasks_or_fail()
    schedule = app.conf.beat_schedule or {}
    known = set(found.task_names) | set(app.tasks)
    for name, entry in sorted(schedule.items()):
        if entry.get("task") not in known:
            _warn_line(
                f"beat entry {name!r} runs task {entry.get('task')!r}, which no installed extension provides"
            )
    click.echo(f"Periodic entries: {', '.join(sorted(schedule)) or 'none'}", err=True)
    _schedule_folder(app.conf.beat_schedule_filename, host.config)
    argv = ["beat", *beat_args]
    if not any(_is_loglevel(arg) for arg in beat_args):
        argv.append("--loglevel=INFO")
    sys.exit(run_celery(app, argv))


def _schedule_folder(filename: str, config: HostConfig) -> None:
    """beat keeps its schedule in a file; its folder must exist and be writable."""
    from pathlib import Path

    from core.config import APP_SECTION

    folder = Path(config.path.parent, filename).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HostError(
            f"{config.path}, section [{APP_SECTION}], key 'celery.beat_schedule_filename': cannot create "
            f"the folder {folder}: {e.strerror}",
            hint="create it, writable by the user beat runs as, or name another file",
        ) from e


def _warn_line(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _plugins_line(pm: HostPluginManager) -> str:
    active = [p.label for p in pm.active]
    return f"Plugins: {', '.join(active)}" if active else "Plugins: none enabled (host.plugins)"


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
    host = Host(config_path, strict=False)
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
                    "errors": [str(e) for e in [*host.plugins.errors, *found.errors]],
                },
                indent=2,
            )
        )
    else:
        click.echo(_task_table(found.task_rows(), title="Tasks"))
        disabled = [e.label for e in found.extensions if e.disabled]
        if disabled:
            click.echo(f"Disabled by host.celery_task.disabled: {', '.join(disabled)}")
        for error in [*host.plugins.errors, *found.errors]:
            click.echo(f"Error: {error}", err=True)
    if found.errors or host.plugins.errors:
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
@click.option(
    "--many",
    metavar="FILE",
    help='Send one task per line of FILE (JSON Lines; - for stdin): [arg, ...] or {"args": [...], '
    '"kwargs": {...}}. Prints the task ids.',
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
    many: str | None,
) -> None:
    """Send task NAME; each ARG is a JSON value ('"text"', 3, '[1, 2]')."""
    from core import client

    positional = client.parse_json_args(args)
    keywords = client.parse_json_kwargs(kwargs_json)
    when = client.parse_eta(eta)
    if countdown is not None and when is not None:
        raise UsageError("--countdown and --eta both say when to run; give one of them")
    if many is not None:
        given = [
            flag
            for flag, value in (
                ("ARG", args),
                ("--kwargs", kwargs_json),
                ("--task-id", task_id),
                ("--wait", wait),
            )
            if value
        ]
        if given:
            raise UsageError(
                f"--many takes the arguments from its file; {given[0]} cannot be given with it",
                hint='put them in the file, one task per line: {"args": [...], "kwargs": {...}}',
            )
        _send_many(config_path, name, many, countdown=countdown, eta=when, queue=queue)
        return
    host = _host_with_task(config_path, name)
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
        queue=_site_queue(queue, host.config),
    )
    if not wait:
        click.echo(result.id)
        return
    click.echo(client.outcome(host.app, result.id, wait=True, timeout=timeout).render())


def _send_many(config_path: str | None, name: str, path: str, **options: Any) -> None:
    """``host send NAME --many FILE``: a file is checked whole before anything is sent."""
    from core import bulk

    host = _host_with_task(config_path, name)
    options = {key: value for key, value in options.items() if value is not None}
    if path == "-":
        items = bulk.read_jsonl(sys.stdin, "stdin")
    else:
        source = _readable(path)
        try:
            with source.open(encoding="utf-8") as lines:
                for _ in bulk.read_jsonl(lines, path):  # every line valid before the first is sent
                    pass
        except UnicodeDecodeError as e:
            raise UsageError(f"--many {path} is not UTF-8 text: {e}", hint="save it as UTF-8") from e
        items = _lines_of(source, path)
    try:
        ids = bulk.send_many(host.app, name, items, **options)
    except bulk.BulkSendError as e:
        for task_id in e.sent:
            click.echo(task_id)
        raise
    for task_id in ids:
        click.echo(task_id)
    click.echo(f"sent {len(ids)} tasks of {name}", err=True)


def _readable(path: str) -> Any:
    from pathlib import Path

    source = Path(path)
    if not source.is_file():
        raise UsageError(f"--many {path}: no such file", hint="give a JSON Lines file, or - for stdin")
    return source


def _lines_of(source: Any, path: str) -> Any:
    from core import bulk

    with source.open(encoding="utf-8") as lines:
        yield from bulk.read_jsonl(lines, path)


def _host_with_task(config_path: str | None, name: str) -> Host:
    """The configured host, once ``name`` is known to be a task its extensions provide."""
    from core import client

    host = Host(config_path)
    found = host.discovery
    known = set(found.task_names) | {n for n in host.app.tasks if not n.startswith("celery.")}
    client.check_task_name(
        name, sorted(known), broken=[e.distribution for e in found.errors if isinstance(e, ExtensionError)]
    )
    return host


def _site_queue(queue: str | None, config: HostConfig) -> str | None:
    from core.settings import queue_name

    return queue_name(config, queue) if queue else None


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


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config_show(config_path: str | None, as_json: bool) -> None:
    """The effective settings (file, environment, plugins, defaults), passwords masked."""
    from core.masking import mask

    host = Host(config_path)
    config, app = host.config, host.app
    values = {f"host.{k}": v for k, v in sorted(config.host.items())}
    values.update({f"celery.{k}": v for k, v in sorted(config.celery.items())})
    sources = dict(config.sources)
    for key, value in HOST_DEFAULTS.items():
        if key not in config.celery:
            values[f"celery.{key}"], sources[f"celery.{key}"] = value, "host default"
    for key, plugin in sorted(app.host_changed_by.items()):
        values[f"celery.{key}"], sources[f"celery.{key}"] = app.conf.get(key), plugin
    for name, options in host.plugins.options.items():
        for key, value in sorted(options.items()):
            values[f"plugin:{name}.{key}"] = value
            sources[f"plugin:{name}.{key}"] = host.plugins.option_sources.get(name, {}).get(key, "default")
    masked = {key: mask(value, key) for key, value in values.items()}
    if as_json:
        click.echo(
            json.dumps(
                {"file": str(config.path), "settings": masked, "sources": sources}, indent=2, default=str
            )
        )
        return
    from core.settings import meaning

    click.echo(f"# {config.path}")
    for key, value in masked.items():
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        note = "; ".join(filter(None, [sources.get(key, "default"), meaning(key, value)]))
        click.echo(f"{key} = {shown}    # {note}")


@cli.command()
@config_option
@click.option("--user", metavar="NAME", help="Run the programs as NAME (default: you, unless you are root).")
@click.option(
    "--venv", metavar="PATH", help="The virtualenv host-framework is installed in (default: this one)."
)
@click.option(
    "--log-dir", default="/var/log/host", show_default=True, metavar="DIR", help="Where the programs log."
)
@click.option(
    "--queues",
    "-Q",
    multiple=True,
    metavar="Q1,Q2",
    help="A worker program for these queues; repeat for each group (default: one program, every queue).",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Processes per program."
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
def supervisor(
    config_path: str | None,
    user: str | None,
    venv: str | None,
    log_dir: str,
    queues: tuple[str, ...],
    workers: int,
    output: str | None,
) -> None:
    """Render a supervisor configuration: worker programs per queue group, and one beat."""
    import getpass

    from core import supervisor as rendering

    host = Host(config_path)
    host.configure()  # the whole configuration must be valid, plugins included
    current = None if user else getpass.getuser()
    d = rendering.deployment(
        host.config,
        user=user,
        venv=venv,
        log_dir=log_dir,
        queues=queues,
        workers=workers,
        current_user=current,
    )
    text = rendering.render(d)
    if output:
        from pathlib import Path

        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command("plugins")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_command(config_path: str | None, as_json: bool) -> None:
    """List installed plugins and task extensions: enabled or not, hooks, tasks, queues, errors."""
    from core.inventory import inventory, render

    host = Host(config_path, strict=False)
    register_plugin_commands(host.plugins, reserved=set(cli.commands))
    listing = inventory(host.plugins, host.discovery)
    click.echo(json.dumps(listing, indent=2) if as_json else render(listing))
    if any(item["error"] and item.get("enabled", True) for items in listing.values() for item in items):
        sys.exit(2)


@cli.command()
@config_option
@click.option(
    "--timeout",
    type=SECONDS,
    default=3.0,
    show_default=True,
    metavar="S",
    help="How long a service may take.",
)
def doctor(config_path: str | None, timeout: float) -> None:
    """Check everything that needs no running worker: config, plugins, extensions, broker.

    One line per check; each problem comes with its fix. Exit status 0 when all
    is well, 2 for a configuration problem, 1 when only a service does not answer.
    """
    from core import doctor as checks

    results = []
    for check in checks.run(config_path, timeout=timeout):
        results.append(check)
        click.echo(check.line())
    sys.exit(checks.exit_status(results))


def main() -> None:
    cli(prog_name="host")
