"""``host results``: recent results from the result backend, newest first (no worker needed)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from core.cli import render
from core.cli.base import config_option, host


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    from core.result_listing import since_time

    return since_time(value, what="--since") if value else None


@click.command()
@config_option
@click.option(
    "--state", metavar="S", help="Only results in state S (SUCCESS, FAILURE, STARTED, ...; any case)."
)
@click.option("--task", metavar="NAME", help="Only task NAME; * matches any characters: 'example.*'.")
@click.option(
    "--since",
    metavar="T",
    callback=_since,
    help="Only results done since T: an ISO 8601 time (local unless it has a zone) or a duration back "
    "from now (90s, 10m, 2h, 1d).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    metavar="N",
    help="At most N results.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with arguments (secrets masked).")
def results(
    config_path: str | None,
    state: str | None,
    task: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recent results: task id, state, task, when done, worker; newest first.

    Reads the result store (celery.result_backend): the embedded store, a db+ database or Redis
    (where listing scans every stored result's key).
    """
    from core.masking import mask_url
    from core.result_listing import recent_results

    app = host(config_path).app
    rows = recent_results(app, state=state, task=task, since=since, limit=limit)
    url = mask_url(str(app.conf.result_backend))
    if as_json:
        click.echo(
            json.dumps({"backend": url, "results": [r.as_dict() for r in rows]}, indent=2, default=repr)
        )
        return
    filters = _filters(state=state and state.strip().upper(), task=task, since=since)
    if not rows:
        click.echo(f"No results{filters} in {url}")
        return
    zone = datetime.now().astimezone().tzname()
    click.echo(f"Results{filters} in {url}, newest first (times in {zone}):")
    click.echo(render.results_table(rows))
    unnamed = sum(1 for r in rows if r.name is None)
    if unnamed:
        config = getattr(app, "host_config", None)
        where = f" in {config.path}" if config else ""
        if app.conf.result_extended:
            why = (
                "stored while celery.result_extended was off, or by a revoke of a task no worker had received"
            )
        else:
            why = f"they are stored only with celery.result_extended = true{where}"
        click.echo(f"{unnamed} of these results have no task name, arguments or worker: {why}")


def _filters(**given: Any) -> str:
    shown = {
        key: value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else value
        for key, value in given.items()
        if value
    }
    return f" ({', '.join(f'{key} {value}' for key, value in shown.items())})" if shown else ""


COMMANDS = [results]
