"""Run ``celery worker`` or ``celery beat`` in this process, and say how it ended.

The exit status is what supervisor, systemd and health checks act on, so it
has one meaning here:

* 0 -- a shutdown someone asked for: SIGTERM, SIGINT, SIGQUIT, or
  ``celery control shutdown``;
* 1 -- Celery stopped on an error (an unrecoverable error in the worker, an
  exception in beat, a broker given up on);
* 2 -- a configuration problem, found before Celery starts (``HostError``).

Celery 5.7's ``Celery.start()`` discards the status its command returns, and a
worker stopped by SIGINT reports 1 (``celery.apps.worker``); both are put
right here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import click

logger = logging.getLogger("host")

#: Exit statuses.
REQUESTED, FAILED = 0, 1


def run_celery(app: Any, argv: Sequence[str]) -> int:
    """Run ``celery ARGV`` on ``app`` until it stops; return the status to exit with."""
    from celery import signals
    from celery.bin.celery import celery as celery_command

    requested: list[str] = []

    def shutting_down(sig: str | None = None, **_: Any) -> None:
        requested.append(sig or "?")

    signals.worker_shutting_down.connect(shutting_down, weak=False)
    # What Celery.start() does to run its command on this app rather than on
    # one named by --app; unlike it, keep the status the command returns.
    celery_command.params[0].default = app
    try:
        status = celery_command.main(args=list(argv), prog_name="celery", standalone_mode=False)
    except SystemExit as e:  # beat ends on SIGTERM and SIGINT this way
        status = e.code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        status = REQUESTED
    except Exception as e:
        logger.critical("%s stopped on an error: %s: %s", argv[0], type(e).__name__, e, exc_info=True)
        return FAILED
    finally:
        celery_command.params[0].default = None
        signals.worker_shutting_down.disconnect(shutting_down)
    if requested:
        return REQUESTED
    return status if isinstance(status, int) else REQUESTED if status is None else FAILED
