"""``host supervisor``: the supervisor programs for one deployment."""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from core.cli.base import config_option, host


@click.command()
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
@click.option("--flower", is_flag=True, help="A program for `host flower` too (the flower extra).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
def supervisor(
    config_path: str | None,
    user: str | None,
    venv: str | None,
    log_dir: str,
    queues: tuple[str, ...],
    workers: int,
    flower: bool,
    output: str | None,
) -> None:
    """Render a supervisor configuration: worker programs per queue group, one beat, and Flower
    with --flower."""
    from core import supervisor as rendering

    h = host(config_path)
    h.app  # noqa: B018 -- the whole configuration must be valid, plugins included
    current = None if user else getpass.getuser()
    d = rendering.deployment(
        h.config,
        user=user,
        venv=venv,
        log_dir=log_dir,
        queues=queues,
        workers=workers,
        current_user=current,
        flower=flower,
    )
    text = rendering.render(d)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


COMMANDS = [supervisor]
