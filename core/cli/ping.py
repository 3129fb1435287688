"""``host ping``: does the broker answer? No worker needed; at most the timeout."""

from __future__ import annotations

import json

import click

from core.cli.base import config_option, host
from core.cli.params import SECONDS


@click.command()
@config_option
@click.option(
    "--timeout",
    type=SECONDS,
    metavar="S",
    help="Wait at most S seconds for an answer (default: host.broker_check.timeout, 1 s).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def ping(ctx: click.Context, config_path: str | None, timeout: float | None, as_json: bool) -> None:
    """Check that the broker can be reached: exit 0 when it answers, 1 when it does not.

    Asks the broker only (a TCP connection; for the embedded broker, its
    store's folder), never a worker: it answers in about a millisecond, or
    within the timeout.
    """
    from core.availability import check_broker

    found = check_broker(host(config_path).app, timeout=timeout, max_age=0)
    click.echo(json.dumps(found.as_dict(), indent=2) if as_json else found.line())
    ctx.exit(0 if found.up else 1)


COMMANDS = [ping]
