"""``host schedule``: the periodic entries beat runs, merged from the ini and the plugins."""

from __future__ import annotations

import json
import sys

import click

from core.cli import render
from core.cli.base import config_option, host


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def schedule(config_path: str | None, as_json: bool) -> None:
    """List the periodic entries: task, schedule, when each is next due, and where it came from.

    No broker needed. Exit status 2 when an entry cannot run (its task does not exist).
    """
    from core.beat import schedule_listing

    h = host(config_path, strict=False)
    h.setup_logging()
    problems = [error for _, error in h.beat_problems()]
    listing = schedule_listing(h.app, h.beat_sources())
    listing["errors"] = [str(error) for error in [*h.plugins.errors, *problems]]
    if as_json:
        click.echo(json.dumps(listing, indent=2))
    else:
        click.echo(render.schedule_table(listing))
        for error in listing["errors"]:
            click.echo(f"Error: {error}", err=True)
    if listing["errors"]:
        sys.exit(2)


COMMANDS = [schedule]
