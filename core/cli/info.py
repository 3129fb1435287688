"""What is installed and configured: ``host tasks``, ``host plugins``, ``host config show``, ``host doctor``.

None of them needs a broker except ``doctor``, which checks that it answers.
"""

from __future__ import annotations

import json
import sys

import click

from core.cli import render
from core.cli.base import cli, config_option, host
from core.cli.params import SECONDS

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.command()
@config_option
@json_option
def tasks(config_path: str | None, as_json: bool) -> None:
    """List every task the installed extensions provide, and any problems (no broker needed)."""
    from core.inventory import task_listing

    h = host(config_path, strict=False)
    h.setup_logging()  # checks the logging sections, as `host celeryd` would
    found = h.discovery
    errors = [*h.plugins.errors, *found.errors]
    if as_json:
        click.echo(json.dumps(task_listing(found, errors), indent=2))
    else:
        click.echo(render.task_table(found.task_rows(), title="Tasks"))
        disabled = [e.label for e in found.extensions if e.disabled]
        if disabled:
            click.echo(f"Disabled by host.celery_task.disabled: {', '.join(disabled)}")
        for error in errors:
            click.echo(f"Error: {error}", err=True)
    if errors:
        sys.exit(2)


@click.command("plugins")
@config_option
@json_option
def plugins_command(config_path: str | None, as_json: bool) -> None:
    """List installed plugins and task extensions: enabled or not, hooks, tasks, queues, errors."""
    from core.inventory import inventory

    h = host(config_path, strict=False)
    listing = inventory(h.plugins, h.discovery, reserved=set(cli.commands), beat_problems=h.beat_problems())
    click.echo(json.dumps(listing, indent=2) if as_json else render.inventory(listing))
    if not as_json:
        for error in listing["errors"]:
            click.echo(f"Error: {error}", err=True)
    broken = [item for key in ("plugins", "task_extensions") for item in listing[key]]
    if listing["errors"] or any(item["error"] and item.get("enabled", True) for item in broken):
        sys.exit(2)


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@config_option
@json_option
def config_show(config_path: str | None, as_json: bool) -> None:
    """The effective settings (file, environment, plugins, defaults), passwords masked."""
    from core.flower import flower_settings
    from core.settings import effective_settings

    h = host(config_path)
    shown = [*effective_settings(h.config, h.app, h.plugins), *flower_settings(h.config)]
    if as_json:
        settings = {key: value for key, value, _, _ in shown}
        sources = {key: source for key, _, source, _ in shown}
        document = {"file": str(h.config.path), "settings": settings, "sources": sources}
        click.echo(json.dumps(document, indent=2, default=str))
        return
    notes = [
        (key, value, "; ".join(filter(None, [source, meaning]))) for key, value, source, meaning in shown
    ]
    click.echo("\n".join(render.setting_lines(str(h.config.path), notes)))


@click.command()
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
    from core.celery_app import celery
    from core.health import exit_status
    from core.startup import diagnose

    checks = []
    for check in diagnose(celery, config_path, timeout, commands=set(cli.commands)):
        checks.append(check)
        click.echo(check.line())
    sys.exit(exit_status(checks))


COMMANDS = [tasks, plugins_command, config_group, doctor]
