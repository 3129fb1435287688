"""``host flower``: Flower, the monitoring web UI, on the configured app."""

from __future__ import annotations

import os
import sys

import click

from core.cli.base import config_option, host, warn

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


@click.command(context_settings=PASS_THROUGH)
@config_option
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(config_path: str | None, flower_args: tuple[str, ...]) -> None:
    """Start Flower on this ini's workers: their broker, result store and site id.

    It listens on flower.address:flower.port (default 127.0.0.1:5555). Every
    other option goes to Flower unchanged, written --name=value
    (`host flower -- --port=5566`; `host flower -- --help` lists them).
    Listening on any other address than a loopback one needs basic auth:
    flower.basic_auth = user:password in the ini, or HOST_FLOWER_BASIC_AUTH;
    it reaches Flower through its environment, never its command line.

    Exit status: 0 after SIGTERM or SIGINT, 1 when Flower stops on an error,
    2 on a configuration problem or when Flower is not installed.
    """
    from core.flower import flower_run, require_flower

    require_flower()
    if "--help" in flower_args:
        _flower_help()
    from core.runner import run_celery

    h = host(config_path)
    h.setup_logging()
    run = flower_run(h.config, flower_args, os.environ)
    h.tasks_or_fail()  # Flower's API sends tasks by name: it needs them registered
    for warning in run.warnings:
        warn(warning)
    auth = "basic auth" if run.authenticated else "no authentication"
    click.echo(f"Flower on {run.url} ({auth}), for {h.config.path}", err=True)
    # Flower reads its credentials from its environment (core/flower.py): never from argv.
    os.environ.update(run.env)
    sys.exit(run_celery(h.app, run.argv))


COMMANDS = [flower]


def _flower_help() -> None:
    """``host flower -- --help``: Flower's own options (Tornado's), which need no configuration."""
    import io

    import flower.options  # noqa: F401 -- defines Flower's options
    from tornado.options import options

    text = io.StringIO()
    options.print_help(text)
    _, _, listing = text.getvalue().partition("Options:\n")
    click.echo("host flower [--config FILE] -- [OPTIONS], each written --name=value:\n" + listing)
    sys.exit(0)
