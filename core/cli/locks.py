"""The locks of exclusive tasks and the beat election: ``host locks``, ``host locks release``."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from core.cli.base import CONFIG_HELP, config_option, host

if TYPE_CHECKING:
    from core.locks import HeldLock, LockStore


def _store(ctx: click.Context, config_path: str | None) -> LockStore:
    from core.locks import lock_store

    if config_path is None and ctx.parent is not None:
        config_path = ctx.parent.params.get("config_path")
    return lock_store(host(config_path).app)


def _left(lock: HeldLock) -> str:
    return "never expires" if lock.expires_in == float("inf") else f"{lock.expires_in:.1f} s"


@click.group("locks", invoke_without_command=True)
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def locks_group(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """List the locks held (exclusive tasks, the beat election): lock id, holder, time left."""
    if config_path is None:
        config_path = ctx.find_root().params.get("config_path")
        ctx.params["config_path"] = config_path
    if ctx.invoked_subcommand is not None:
        return
    store = _store(ctx, config_path)
    held = store.held()
    if as_json:
        rows = [
            {
                "lock_id": lock.lock_id,
                "holder": lock.holder,
                # null: a key someone wrote without an expiry (it never expires)
                "expires_in": None if lock.expires_in == float("inf") else round(lock.expires_in, 3),
            }
            for lock in held
        ]
        click.echo(json.dumps({"store": store.url, "locks": rows}, indent=2))
        return
    if not held:
        click.echo(f"No locks held in {store.url}")
        return
    click.echo(f"Locks held in {store.url}:")
    rows_text = [("LOCK", "HOLDER", "EXPIRES IN")] + [
        (lock.lock_id, lock.holder, _left(lock)) for lock in held
    ]
    widths = [max(len(row[n]) for row in rows_text) for n in range(3)]
    for row in rows_text:
        click.echo(
            "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@locks_group.command("release")
@click.argument("lock_id", metavar="ID")
@config_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def release(ctx: click.Context, lock_id: str, config_path: str | None, yes: bool) -> None:
    """Free the lock ID whoever holds it (its task, if still running, ends when it next renews)."""
    store = _store(ctx, config_path)
    lock = store.holder(lock_id)
    if lock is None:
        click.echo(f"Lock {lock_id!r} is not held in {store.url}", err=True)
        sys.exit(1)
    if not yes:
        click.confirm(
            f"Release lock {lock_id!r}, held by {lock.holder} ({_left(lock)} left)? A holder still "
            "running ends its attempt when it next renews the lock",
            abort=True,
        )
    if store.force_release(lock_id):
        click.echo(f"Released lock {lock_id!r} (was held by {lock.holder})")
    else:
        click.echo(f"Lock {lock_id!r} was released meanwhile", err=True)


COMMANDS = [locks_group]
