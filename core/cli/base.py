"""The ``host`` group: its options, the plugins' commands, and how a command gets its host.

Heavy imports (Celery, extensions) happen inside the commands that need them,
so ``host --help`` stays fast. A :class:`~core.errors.HostError` is a click
exception: click prints it as ``Error: ...`` and exits with its status.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from core.errors import HostError

if TYPE_CHECKING:
    from core.startup import Host

CONFIG_HELP = "The ini file (default: $HOST_CONFIG, else ./development.ini)."
_PLUGIN_COMMANDS = "host.plugin_commands"
_PLUGIN_PROBLEM = "host.plugin_problem"
_NO_CONFIG = "host.no_config"


class HostGroup(click.Group):
    """The ``host`` group: its own commands, and those the enabled plugins add."""

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
            host(ctx.params.get("config_path")).app  # noqa: B018
        return name, command, rest

    def plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        """The commands the enabled plugins add, found once per run.

        Only ``host.plugins`` is read here, not the whole configuration, so that
        ``host --help`` stays fast; a command that runs validates everything.
        """
        if _PLUGIN_COMMANDS not in ctx.meta:
            from core.startup import plugin_commands

            ctx.meta[_PLUGIN_COMMANDS] = {}
            try:
                commands, problem = plugin_commands(
                    ctx.params.get("config_path"), reserved=set(self.commands)
                )
            except HostError as e:
                # No configuration here: there are no plugin commands to list, which
                # `host --help` need not mention; an unknown command's error does.
                ctx.meta[_NO_CONFIG] = str(e).splitlines()[0]
            else:
                ctx.meta[_PLUGIN_COMMANDS] = commands
                if problem:
                    ctx.meta[_PLUGIN_PROBLEM] = problem
        return ctx.meta[_PLUGIN_COMMANDS]  # type: ignore[no-any-return]

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        problem = ctx.meta.get(_PLUGIN_PROBLEM)
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
def cli(config_path: str | None) -> None:
    """host-framework: Celery workers and tasks from installed extensions."""
