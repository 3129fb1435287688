"""Workers and queues, headless: ``host inspect``, ``host status``, ``host revoke``, ``host purge``,
``host queues``.

Each calls one function of :mod:`core.control` and renders what it returns:
a table for people, the data as JSON with ``--json``. A command that asks the
workers and hears from none exits 1, saying how to start one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from core.cli import render
from core.cli.base import config_option, host
from core.cli.params import SECONDS

if TYPE_CHECKING:
    from core.control import QueueInfo

#: core.control.INSPECTIONS, written out so that `host --help` does not import the domain.
INSPECTIONS = ("registered", "active", "scheduled", "reserved", "stats", "ping")

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
timeout_option = click.option(
    "--timeout",
    type=SECONDS,
    default=1.0,
    show_default=True,
    metavar="S",
    help="How long to wait for the workers' answers.",
)
workers_option = click.option(
    "--worker",
    "workers",
    multiple=True,
    metavar="NAME",
    help="Ask only this worker (celery@host; repeat for more); the answer comes once each has answered.",
)
queue_option = click.option(
    "--queue",
    "-Q",
    "queues",
    multiple=True,
    metavar="Q",
    help="This queue, as plugins and -Q name it (repeat for more; default: the configuration's queues).",
)


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.command("inspect")
@click.argument("what", type=click.Choice(INSPECTIONS), metavar="|".join(INSPECTIONS))
@config_option
@timeout_option
@workers_option
@json_option
def inspect_command(
    what: str, config_path: str | None, timeout: float, workers: tuple[str, ...], as_json: bool
) -> None:
    """Ask the running workers: their tasks (registered), what they run (active), hold for later
    (scheduled: ETA and countdown), have taken but not started (reserved), their stats, or ping."""
    from core import control

    app = host(config_path).app
    replies = control.inspect(app, what, timeout=timeout, workers=workers)
    if not replies:
        raise control.no_worker(app, timeout, workers)
    if as_json:
        _dump(replies)
        return
    click.echo(_RENDER[what](replies))


def _registered(replies: dict[str, Any]) -> str:
    by_task: dict[str, list[str]] = {}
    for worker, tasks in replies.items():
        for task in tasks or []:
            by_task.setdefault(str(task).split()[0], []).append(worker)
    rows = [(task, ", ".join(by_task[task])) for task in sorted(by_task)]
    return f"Tasks registered on {_count(replies, 'worker')}:\n" + render.table(("TASK", "WORKERS"), rows)


def _requests(replies: dict[str, Any], title: str, when: str) -> str:
    rows = []
    for worker, items in replies.items():
        for item in items or []:
            request = item.get("request", item)
            rows.append(
                (worker, request.get("id"), request.get("name"), _call(request), _when(when, item, request))
            )
    if not rows:
        return f"{title}: none on {_count(replies, 'worker')} ({', '.join(replies)})"
    head = ("WORKER", "TASK ID", "TASK", "ARGUMENTS", when.upper())
    return f"{title} ({len(rows)}):\n" + render.table(head, rows)


def _call(request: dict[str, Any]) -> str:
    args = ", ".join(json.dumps(a, default=str) for a in request.get("args") or [])
    kwargs = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in (request.get("kwargs") or {}).items())
    text = ", ".join(part for part in (args, kwargs) if part)
    return text if len(text) <= 40 else text[:39] + "…"


def _when(when: str, item: dict[str, Any], request: dict[str, Any]) -> str:
    if when == "eta":
        return str(item.get("eta") or "-")
    if when == "pid":  # the pool process running it (its time_start is on that machine's monotonic clock)
        return str(request.get("worker_pid") or "-")
    return "yes" if request.get("acknowledged") else "no"


def _stats(replies: dict[str, Any]) -> str:
    from core.control import pool_kind

    rows = []
    for worker, stats in replies.items():
        pool = stats.get("pool") or {}
        rows.append(
            (
                worker,
                stats.get("pid"),
                pool_kind(pool),
                pool.get("max-concurrency"),
                stats.get("prefetch_count"),
                render.duration(stats.get("uptime")),
                sum((stats.get("total") or {}).values()),
            )
        )
    head = ("WORKER", "PID", "POOL", "CONCURRENCY", "PREFETCH", "UPTIME", "TASKS STARTED")
    table = render.table(head, rows)
    return f"{_count(replies, 'worker')} answered:\n{table}\n(--json shows everything each worker reported)"


def _ping(replies: dict[str, Any]) -> str:
    rows = [(worker, (reply or {}).get("ok", reply)) for worker, reply in replies.items()]
    return f"{_count(replies, 'worker')} answered:\n" + render.table(("WORKER", "ANSWER"), rows)


_RENDER = {
    "registered": _registered,
    "active": lambda r: _requests(r, "Running", "pid"),
    "scheduled": lambda r: _requests(r, "Held for their ETA or countdown", "eta"),
    "reserved": lambda r: _requests(r, "Taken from the queue, not started", "acknowledged"),
    "stats": _stats,
    "ping": _ping,
}


@click.command("status")
@config_option
@timeout_option
@workers_option
@json_option
def status(config_path: str | None, timeout: float, workers: tuple[str, ...], as_json: bool) -> None:
    """Each running worker: the queues it consumes, the tasks it is running, its pool and uptime."""
    from core import control

    app = host(config_path).app
    found = control.worker_status(app, timeout=timeout, workers=workers)
    if not found:
        raise control.no_worker(app, timeout, workers)
    if as_json:
        _dump({"workers": [asdict(w) for w in found]})
        return
    rows = [
        (
            w.worker,
            ", ".join(w.queues) or "-",
            w.active,
            w.concurrency,
            w.pool,
            render.duration(w.uptime),
            w.tasks_started,
        )
        for w in found
    ]
    head = ("WORKER", "QUEUES", "ACTIVE", "CONCURRENCY", "POOL", "UPTIME", "TASKS STARTED")
    click.echo(f"{_count(found, 'worker')} answered:\n" + render.table(head, rows))


@click.command("revoke")
@click.argument("task_ids", nargs=-1, required=True, metavar="ID...")
@click.option(
    "--terminate", is_flag=True, help="Also end a task that is running (its pool process gets --signal)."
)
@click.option(
    "--signal",
    "signal_name",
    metavar="SIG",
    help="The signal --terminate sends: TERM (default), KILL, INT...",
)
@config_option
@timeout_option
@workers_option
@json_option
def revoke(
    task_ids: tuple[str, ...],
    terminate: bool,
    signal_name: str | None,
    config_path: str | None,
    timeout: float,
    workers: tuple[str, ...],
    as_json: bool,
) -> None:
    """Revoke tasks: waiting ones are discarded, never run; with --terminate a running one is ended.

    A discarded or terminated task becomes REVOKED (`host result ID`); a
    running task revoked without --terminate runs to its end. The running
    workers keep the revoked ids (one starting beside them learns them); with
    no worker running, nothing is revoked (exit 1). A worker that answers
    with an error (the threads pool cannot terminate) makes it exit 1 too.
    """
    from core import control

    app = host(config_path).app
    done = control.revoke(
        app, task_ids, terminate=terminate, signal=signal_name, timeout=timeout, workers=workers
    )
    if not done.replies:
        raise control.no_worker(
            app,
            timeout,
            workers,
            what=": nothing was revoked, and the tasks will run when a worker takes them",
        )
    if as_json:
        _dump(asdict(done))
        return
    sent = f"revoke with terminate ({done.signal})" if done.terminate else "revoke"
    to = ", ".join(workers) if workers else "every worker"
    answered = _count(done.replies, "worker")
    click.echo(f"Sent {sent} of {_count(done.task_ids, 'task')} to {to}; {answered} answered:")
    click.echo(render.table(("WORKER", "ANSWER"), list(done.replies.items())))
    refused = [worker for worker, answer in done.replies.items() if answer.startswith("error: ")]
    if refused:
        raise control.RevokeRefused(
            f"{', '.join(refused)} could not do it (see the answer above)",
            hint="a threads or solo pool cannot terminate a running task: revoke it without --terminate, "
            "or run the worker with the prefork pool",
        )


@click.command("purge")
@queue_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@config_option
@json_option
def purge(queues: tuple[str, ...], yes: bool, config_path: str | None, as_json: bool) -> None:
    """Delete the tasks waiting in the queues (default: those the configuration's workers consume).

    Asks first, showing how many wait in each. Tasks a worker has already
    taken are left alone.
    """
    from core import control

    app = host(config_path).app
    chosen = list(queues) or None
    if not yes:
        before = control.queue_info(app, chosen)
        total = sum(q.waiting or 0 for q in before)
        if total:  # nothing to lose otherwise
            where = (
                f"queue {before[0].name}"
                if len(before) == 1
                else "queues " + ", ".join(f"{q.name} ({_waiting(q)})" for q in before)
            )
            click.confirm(f"Delete the {_count(total, 'task')} waiting in {where}?", abort=True, err=True)
    purged = control.purge(app, chosen)
    if as_json:
        _dump({"purged": [asdict(p) for p in purged]})
        return
    rows = [(p.name, "no such queue" if p.removed is None else p.removed) for p in purged]
    click.echo(
        f"Purged {_count(sum(p.removed or 0 for p in purged), 'task')}:\n"
        + render.table(("QUEUE", "REMOVED"), rows)
    )


@click.command("queues")
@queue_option
@config_option
@json_option
def queues_command(queues: tuple[str, ...], config_path: str | None, as_json: bool) -> None:
    """Each queue with its waiting tasks, consumers and, on RabbitMQ, its type (no worker needed)."""
    from core import control
    from core.masking import mask_url

    app = host(config_path).app
    found = control.queue_info(app, list(queues) or None)
    broker = mask_url(str(app.conf.broker_url))
    if as_json:
        _dump({"broker": broker, "queues": [asdict(q) for q in found]})
        return
    # HELD is known on the embedded broker only, the type on RabbitMQ only.
    held = any(q.held is not None for q in found)
    head = ("QUEUE", "WAITING", "CONSUMERS", "HELD" if held else "TYPE")
    rows = [(q.name, q.waiting, q.consumers, q.held if held else _type(q)) for q in found]
    click.echo(f"Queues on {broker}:\n" + render.table(head, rows))
    missing = [q.name for q in found if q.waiting is None]
    if missing:
        click.echo(
            f"(-: no such queue on the broker yet: {', '.join(missing)}; a worker or a send creates it)"
        )
    if held:
        click.echo(
            "(HELD: taken by a worker, not yet acknowledged: running, reserved, or waiting for its ETA)"
        )
    elif any(_type(q) == "?" for q in found):
        click.echo(
            "(?: no probe of its type matched: the queue has arguments this configuration does not "
            "declare, or this user may not configure it)"
        )


def _type(q: QueueInfo) -> str:
    """A queue's type on RabbitMQ; ``-`` for a queue it does not have, ``?`` when no probe matched."""
    return q.type or ("-" if q.waiting is None else "?")


def _waiting(q: QueueInfo) -> str:
    return "no such queue" if q.waiting is None else str(q.waiting)


def _count(items: Any, one: str) -> str:
    """``3 workers``, ``1 task``: ``items`` is a number or a collection."""
    n = items if isinstance(items, int) else len(items)
    return f"{n} {one if n == 1 else one + 's'}"


COMMANDS = [inspect_command, status, revoke, purge, queues_command]
