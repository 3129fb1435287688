"""The ``host`` group: its options, the plugins' commands, and how a command gets its host.

Heavy imports (Celery, extensions) happen inside the commands that need them,
so ``host --help`` stays fast. A :class:`~core.errors.HostError` is a click
exception: click prints it as ``Error: ...`` and exits with its status.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from core.errors import HostError

if TYPE_CHECKING:
    from core.plugin_manager import Plugin
    from core.startup import Host, PluginCommands

CONFIG_HELP = "The ini file (default: $HOST_CONFIG, else ./development.ini)."
TRACEBACK_HELP = "Show the traceback when a plugin's command fails (or set HOST_DEBUG=1)."
#: The plugins' commands found with each configuration file: ``{path: PluginCommands}``, or the
#: first line of the error when there is no such file.
_FOUND = "host.plugins_found"
#: The ``host`` options given after a plugin's command name (``host weather now --config F``).
_LATE = "host.late_options"
#: The plugin command being run: ``(words of the command, the plugin)``.
_RUNNING = "host.running_plugin_command"
#: ``host``'s own options a plugin's command takes after its name, as the built-in commands do.
_HOST_OPTIONS = {"--config": True, "--traceback": False}  # option -> takes a value


class HostGroup(click.Group):
    """The ``host`` group: its own commands, and those the enabled plugins add."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.plugin_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self.plugin_commands(ctx).get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands:
            # Perhaps a plugin's command, found by reading host.plugins from the
            # configuration: which may be given after it, as for every built-in command.
            ctx.meta[_LATE] = self._late_options(ctx, args[0], args[1:])
        try:
            name, command, rest = super().resolve_command(ctx, args)
        except click.NoSuchCommand as e:
            raise self._no_such_command(ctx, e) from e
        except click.UsageError as e:
            raise self._with_plugin_problem(ctx, e) from e
        if name is not None and command is not None and name not in self.commands:
            # A plugin's command: it runs with the host configured, as the
            # built-in commands do, so its code can use plugins.plugin_config().
            host(self.config_path(ctx)).app  # noqa: B018
            rest = without_host_options(rest, command)
            ctx.meta[_RUNNING] = ([name, *subcommands(command, rest)], self.plugin_owners(ctx).get(name))
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a plugin's command that raises gets a one-line error (exit 1).

        A :class:`~core.errors.HostError` or a click error it raises is shown as
        the built-in commands' are. Anything else is a bug of the plugin: its
        message names the plugin, the command and the plugin's own line; the
        traceback is shown with ``host --traceback`` or ``HOST_DEBUG=1``.
        """
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            running = ctx.meta.get(_RUNNING)
            if running is None:
                raise
            words, plugin = running
            raise self._plugin_command_failed(ctx, words, plugin, e) from e

    def _late_options(self, ctx: click.Context, name: str, args: list[str]) -> dict[str, str | bool]:
        """``host``'s own options among ``args``, which follow the plugin command ``name``.

        An option the command itself takes (``@click.option("--config", "feed_config")``)
        is the command's. Which command ``name`` is depends on the configuration: a
        ``--config`` after it is the command's when the command found with the host's
        other configuration (``--config`` before it, else the default) takes one too.
        """
        late = late_host_options(args)
        ctx.meta[_LATE] = late
        command = self.plugin_commands(ctx).get(name)
        if "--config" in late and (command is None or declared(command, args, "--config")):
            ctx.meta[_LATE] = {}
            command = self.plugin_commands(ctx).get(name)
            if command is None or not declared(command, args, "--config"):
                ctx.meta[_LATE] = late
                command = self.plugin_commands(ctx).get(name)
        if command is None:
            return late
        return {option: value for option, value in late.items() if not declared(command, args, option)}

    def _plugin_command_failed(
        self, ctx: click.Context, words: list[str], plugin: Plugin | None, e: Exception
    ) -> HostError:
        command = " ".join(["host", *words])
        debug = ctx.params.get("show_traceback") or ctx.meta.get(_LATE, {}).get("--traceback") or debugging()
        if debug:
            traceback.print_exception(e, file=sys.stderr)
        what = f"the command `{command}` raised"
        again = "" if debug else "; run it again with --traceback (or HOST_DEBUG=1) to see the traceback"
        if plugin is None:  # not found again: only the command's name to go by
            error: HostError = HostError(f"{what} {type(e).__name__}: {e}", hint=f"fix the command{again}")
        else:
            authors = plugin.distribution or plugin.name
            error = plugin.error_for(
                f"{what} {plugin.describe(e)}",
                hint=f"a bug of the plugin: fix it, or report it to the authors of {authors}{again}",
            )
        return CommandFailed(error)

    def _no_such_command(self, ctx: click.Context, e: click.NoSuchCommand) -> click.UsageError:
        """Click's error, with the plugins' commands among the names it suggests."""
        found = click.NoSuchCommand(e.command_name, possibilities=self.list_commands(ctx), ctx=ctx)
        return self._with_plugin_problem(ctx, found)

    def _with_plugin_problem(self, ctx: click.Context, e: click.UsageError) -> click.UsageError:
        found = self._found(ctx)
        problem = found if isinstance(found, str) else found.problem
        if problem:
            return click.UsageError(
                f"{e.format_message()}\n(Commands from plugins could not be listed: {problem})", ctx
            )
        return e

    def config_path(self, ctx: click.Context) -> str | None:
        """The configuration file: ``--config`` given after a plugin's command, else before it."""
        late = ctx.meta.get(_LATE, {}).get("--config")
        return late if isinstance(late, str) else ctx.params.get("config_path")

    def plugin_owners(self, ctx: click.Context) -> dict[str, Plugin]:
        found = self._found(ctx)
        return {} if isinstance(found, str) else found.owners

    def plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        """The commands the enabled plugins add, found once per run (and configuration file).

        Only ``host.plugins`` is read here, not the whole configuration, so that
        ``host --help`` stays fast; a command that runs validates everything.
        """
        found = self._found(ctx)
        return {} if isinstance(found, str) else found.commands

    def _found(self, ctx: click.Context) -> PluginCommands | str:
        """What :func:`core.startup.plugin_commands` finds with the configuration file, or why none."""
        from core.startup import plugin_commands

        path = self.config_path(ctx)
        cache: dict[str | None, PluginCommands | str] = ctx.meta.setdefault(_FOUND, {})
        if path not in cache:
            try:
                cache[path] = plugin_commands(path, reserved=set(self.commands))
            except HostError as e:
                # No configuration here: there are no plugin commands to list, which
                # `host --help` need not mention; an unknown command's error does.
                cache[path] = str(e).splitlines()[0]
        return cache[path]

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        found = self._found(ctx) if _FOUND in ctx.meta else None
        problem = found.problem if found is not None and not isinstance(found, str) else None
        if problem:
            formatter.write_paragraph()
            formatter.write_text(f"Commands from plugins could not be listed: {problem} (see `host doctor`)")


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE`` on a command; ``host --config FILE COMMAND`` works too."""
    return click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP, callback=_group_config)(
        f
    )


def _group_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return value if value is not None else ctx.find_root().params.get("config_path")


class CommandFailed(HostError):
    """A plugin's command raised: the plugin's error, with exit status 1 (it ran, and failed)."""

    exit_code = 1

    def __init__(self, error: HostError) -> None:
        super().__init__(error.message, hint=error.hint)


def late_host_options(args: Sequence[str]) -> dict[str, str | bool]:
    """``host``'s own options among ``args`` (what follows a command's name), up to ``--``.

    ``{"--config": "weather.ini", "--traceback": True}``; the last one given wins.
    """
    found: dict[str, str | bool] = {}
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            break
        option, equals, value = token.partition("=")
        if option not in _HOST_OPTIONS:
            continue
        if not _HOST_OPTIONS[option]:
            found[option] = True
        elif equals:
            found[option] = value
        else:
            found[option] = next(tokens, "")
    return found


def without_host_options(args: list[str], command: click.Command) -> list[str]:
    """``args`` without ``host``'s own options, which the plugin's command does not declare itself."""
    strip = {option for option in _HOST_OPTIONS if not declared(command, args, option)}
    kept: list[str] = []
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            kept += [token, *tokens]
            break
        option, equals, _ = token.partition("=")
        if option not in strip:
            kept.append(token)
        elif _HOST_OPTIONS[option] and not equals:
            next(tokens, None)  # its value
    return kept


def declared(command: click.Command, args: Sequence[str], option: str) -> bool:
    """Whether ``command``, or a subcommand of it that ``args`` runs, has the option ``option``.

    ``host feeds import --config feeds.yaml``: the ``--config`` of ``feeds import``, when it has one.
    """
    chain = [command]
    for word in subcommands(command, args):
        chain.append(chain[-1].commands[word])  # type: ignore[attr-defined]  # a group: subcommands says so
    return any(option in param.opts for link in chain for param in link.params)


def subcommands(command: click.Command, args: Sequence[str]) -> list[str]:
    """The names of the subcommands ``args`` starts with, under a group: ``["now"]``."""
    words = []
    for token in args:
        if not isinstance(command, click.Group) or token not in command.commands:
            break
        words.append(token)
        command = command.commands[token]
    return words


def debugging() -> bool:
    """``HOST_DEBUG=1``: show tracebacks."""
    return os.environ.get("HOST_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def host(config_path: str | None, *, strict: bool = True) -> Host:
    """The start-up path for the shared app, skipped plugins and extensions shown on stderr."""
    from core.celery_app import celery
    from core.startup import Host

    return Host(celery, config_path, strict=strict, warn=warn)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


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
@click.option("--traceback", "show_traceback", is_flag=True, help=TRACEBACK_HELP)
def cli(config_path: str | None, show_traceback: bool) -> None:
    """host-framework: Celery workers and tasks from installed extensions."""
