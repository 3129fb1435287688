"""The solo-pool stall on RabbitMQ, before and after ``core.solo_ack``: ``python -m bench.solo_stall``.

Each run of a side: declare a queue of its own (``solo-investigation-...``),
publish N ``bench.noop`` messages to it (raw AMQP, as row 1 does), then start
a fresh ``-P solo`` worker consuming only that queue (``-Q``), and poll the
queue's ready count every 2 ms (passive ``queue_declare``). The clock starts
at the first look that sees the count drop and stops at the first that sees
0; the rate is the messages drained in between divided by that time. A run
that has not drained after ``--cap`` seconds stops there and counts what it
drained (marked ``capped``). Each look that saw the count unchanged for more
than ``STALL`` seconds, with messages still waiting, counts as a stall.

The worker gets row 1's settings (production.ini's reliability settings:
late acks, prefetch multiplier 1, publisher confirms...) and **not** row 1's
``broker_heartbeat = 2`` / ``broker_heartbeat_checkrate = 200`` workaround,
unless the side is a ``*-tick`` side.

Sides (``--sides``, in this order each round, A B C D A B C D ...):

* ``plain``: ``celery -A plain_app worker`` (bench/plain_app.py);
* ``host``: ``host celeryd --config INI -- ...`` with the ``bench-tasks`` extension;
* ``plain-fix``: ``celery -A solo_fixed_app worker``: the same plain app with
  the :class:`core.solo_ack.SoloAck` consumer step added (bench/solo_fixed_app.py);
* ``host-fix``: ``host celeryd`` whose ``bench-tasks`` extension also adds the step
  to the host's app when its task module is imported, i.e. what the one line
  in ``HostCelery.__init__`` would do (see bench/FINDINGS.md (row 1 solo));
* ``plain-tick``, ``host-tick``: row 1's 10 ms heartbeat tick, for comparison;
* ``plain-other``, ``plain-other-fix``: the plain app under another venv's
  Celery (``--other-celery PATH/bin/celery``), e.g. 5.6.3 with kombu 5.6.2.

After a complete run, ``unacked_returned`` is what the worker held unacked
when it stopped (0: every message was acknowledged) and ``log_errors`` the
errors in its log. A run during which RabbitMQ force-closed connections
(other test suites do) is repeated, up to :data:`ATTEMPTS` times.

``--trace`` instead runs the plain app with bench/solo_trace_app.py's poll
recorder for one drain and prints where the loop slept (``--fix``: with the
step; ``--tick``: with the tick).

The machine is shared (2 cores, other jobs): compare sides within one run.
Queues, their exchanges and the workers' own queues are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

from bench import plain_app
from bench.harness import BENCH, RABBITMQ_URL, clean_env, delete_rabbitmq
from bench.row1_throughput import (
    COMMON_FLAGS,
    INI,
    Broker,
    Worker,
    host_command,
    plain_command,
)
from bench.synthetic import BENCH_TASKS, bench_site

PREFIX = "solo-investigation-"
#: Row 1's workaround, for the ``*-tick`` sides: a heartbeat check every 10 ms in the event loop.
SOLO_TICK = "celery.broker_heartbeat = 2\ncelery.broker_heartbeat_checkrate = 200\n"
#: Seconds without a change in the ready count, with messages waiting, that count as a stall.
STALL = 0.1
POLL = 0.002
#: How often a run is tried when RabbitMQ closes connections meanwhile.
ATTEMPTS = 3
SIDES = ("plain", "host", "plain-fix", "host-fix")
ALL_SIDES = (*SIDES, "plain-tick", "host-tick", "plain-other", "plain-other-fix")
#: The ``celery`` program of the ``plain-other*`` sides (``--other-celery``): another Celery/kombu.
OTHER_CELERY: list[str] = []
#: ``--keep-logs DIR``: where the worker logs of runs with stalls are copied.
KEEP_LOGS: list[Path] = []

#: The bench-tasks extension of the ``host-fix`` side: its task module also installs the fix,
#: as ``self.steps["consumer"].add(SoloAck)`` in ``HostCelery.__init__`` would.
FIXED_TASKS = (
    BENCH_TASKS
    + """
from core.solo_ack import SoloAck

celery.steps["consumer"].add(SoloAck)
"""
)


class SoloBroker(Broker):
    """Row 1's broker connection, with a canary queue named with this investigation's prefix."""

    CANARY_PREFIX = f"{PREFIX}canary-"


def fixed_site(folder: Path) -> Path:
    """bench_site's ``bench-tasks`` extension, whose task module also adds the fix's step."""
    return bench_site(folder, tasks=FIXED_TASKS)


class Side:
    """How to start one side's worker on a queue."""

    def __init__(self, label: str, folder: Path, broker: SoloBroker, tick: bool | None = None) -> None:
        self.label = label
        self.broker = broker
        self.folder = folder
        tick = label.endswith("-tick") if tick is None else tick
        self.ini = folder / f"{label}.ini"
        default = f"{PREFIX}default-{uuid.uuid4().hex[:8]}"
        self.ini.write_text(
            INI.format(broker=RABBITMQ_URL, queue=default) + (SOLO_TICK if tick else ""), encoding="utf-8"
        )
        self.queues = [default]
        if label.startswith("host"):
            site = folder / f"site-{label}"
            if label == "host-fix":
                fixed_site(site)
            else:
                bench_site(site)
            self.env = clean_env(PYTHONPATH=str(site))
        else:
            settings = plain_app.settings_for(str(self.ini))
            self.env = clean_env(PYTHONPATH=str(BENCH), BENCH_PLAIN_SETTINGS=json.dumps(settings))
            apps = {
                "plain-fix": "solo_fixed_app",
                "plain-other-fix": "solo_fixed_app",
                "trace": "solo_trace_app",
            }
            self.app = apps.get(label, "plain_app")
            if label.startswith("plain-other"):  # core.solo_ack from this tree, Celery from the other
                self.env["PYTHONPATH"] = f"{BENCH}:{BENCH.parent}"

    def worker(self, queue: str, extra_env: dict[str, str] | None = None) -> Worker:
        node = f"{PREFIX}{self.label}-{uuid.uuid4().hex[:8]}@bench"
        flags = ["-P", "solo", *COMMON_FLAGS, "-n", node, "-Q", queue]
        if self.label.startswith("host"):
            command = host_command(self.ini, flags)
        else:
            command = plain_command(flags)
            command[2] = self.app
            if self.label.startswith("plain-other"):
                command[0] = OTHER_CELERY[0]
        env = dict(self.env, **(extra_env or {}))
        log = self.folder / f"{self.label}-{node.split('@')[0][-8:]}.log"
        return Worker(self.label, command, env, log, node, self.broker.wake)


def drain(side: Side, n: int, cap: float, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """One run of one side: a new queue with ``n`` messages, a new worker, the drain timed."""
    broker = side.broker
    queue = f"{PREFIX}{side.label}-{uuid.uuid4().hex[:8]}"
    side.queues.append(queue)
    broker.declare(queue)
    broker.publish(queue, n)
    worker = side.worker(queue, extra_env)
    worker.start()
    try:
        start: float | None = None
        cap_at = end = 0.0
        drained = last = n
        changed = time.perf_counter()
        stalls: list[float] = []
        deadline = time.monotonic() + 60 + cap  # the worker's start-up is not timed, but bounded
        while True:
            count = broker.ready(queue)
            now = time.perf_counter()
            if start is None and count < n:
                start, drained, changed = now, count, now
                cap_at = time.monotonic() + cap
            if count != last:
                if start is not None and now - changed > STALL and last > 0:
                    stalls.append(now - changed)
                last, changed = count, now
            if count == 0:
                end = now
                break
            worker.check()
            if start is not None and time.monotonic() > cap_at:
                end = now
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the {side.label} worker never started consuming:\n{worker.log.read_text()[-3000:]}"
                )
            time.sleep(POLL)
        if start is None or end <= start:
            raise RuntimeError(f"the drain of {n} messages was too quick to time; raise --tasks")
        if end - changed > STALL and count > 0:
            stalls.append(end - changed)  # the stall the cap cut short
        taken = drained - count
        result = {
            "rate": taken / (end - start),
            "seconds": end - start,
            "drained": taken,
            "capped": count > 0,
            "stalls": len(stalls),
            "stalled_s": sum(stalls),
            "longest_stall_s": max(stalls, default=0.0),
        }
    finally:
        worker.stop()  # SIGTERM, and pings that wake the loop until it has exited
    # Every message the worker took but did not acknowledge is back in the queue now. (After a
    # capped run the worker may go on draining while it stops: the figure can be negative.)
    result["unacked_returned"] = broker.ready(queue) - count
    log = worker.log.read_text(errors="replace")
    result["log_errors"] = log.count("ERROR/") + log.count("Traceback")
    result["reconnections"] = log.count("Connection to broker lost")
    if KEEP_LOGS and result["stalls"]:
        KEEP_LOGS[0].mkdir(parents=True, exist_ok=True)
        shutil.copy(worker.log, KEEP_LOGS[0] / worker.log.name)
    return result


def attempt(side: Side, n: int, cap: float, repeated: list[str]) -> dict[str, Any]:
    """:func:`drain`, again when RabbitMQ closed connections meanwhile (at most :data:`ATTEMPTS` times).

    Other test suites on this machine force-close RabbitMQ connections
    (``CONNECTION_FORCED - host-framework fault test``). A run that saw it,
    through the bench's own connection or the worker's log, measured a
    reconnection instead of the drain; it is repeated, as row 1 does.
    """
    broker = side.broker
    for number in range(1, ATTEMPTS + 1):
        try:
            result = drain(side, n, cap)
        except Exception as e:
            if broker.alive() or number == ATTEMPTS:
                raise
            problem = f"{type(e).__name__}: {e}"
        else:
            if broker.alive() and not result["reconnections"]:
                return result
            problem = (
                f"{result['reconnections']} reconnection(s) of the worker"
                if broker.alive()
                else ("the bench's connection was closed")
            )
        repeated.append(problem)
        print(f"  {side.label}: {problem}; that run again", file=sys.stderr, flush=True)
        time.sleep(2)
        broker.connect()
    raise RuntimeError(f"RabbitMQ closed connections {ATTEMPTS} times in a row")


def summary(runs: list[dict[str, Any]]) -> str:
    rates = [r["rate"] for r in runs]
    capped = sum(r["capped"] for r in runs)
    stalls = sum(r["stalls"] for r in runs)
    spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
    cv = statistics.pstdev(rates) / statistics.mean(rates) if len(rates) > 1 else 0.0
    return (
        f"median {statistics.median(rates):,.0f} tasks/s, range {spread}, CV {cv:.0%}, "
        f"{stalls} stalls > {STALL * 1000:.0f} ms in all, "
        f"longest {max(r['longest_stall_s'] for r in runs):.2f} s, {capped} run(s) capped, "
        f"{sum(r['unacked_returned'] for r in runs if not r['capped'])} unacked returned (complete runs), "
        f"{sum(r['log_errors'] for r in runs)} errors logged"
    )


def trace(folder: Path, broker: SoloBroker, n: int, cap: float, fix: bool, tick: bool) -> int:
    side = Side("trace", folder, broker, tick=tick)
    out = folder / "trace.json"
    side.env["PYTHONPATH"] = f"{BENCH}:{BENCH.parent}"
    try:
        result = drain(side, n, cap, {"SOLO_TRACE": str(out), "SOLO_TRACE_FIX": "1" if fix else ""})
    finally:
        cleanup([side])
    print(json.dumps(result, indent=1))
    data = json.loads(out.read_text())
    polls = data["polls"]
    slow = [p for p in polls if p[2] > STALL]
    print(f"{len(polls)} polls; acks deferred: {data['acks']}")
    for label, group in (
        ("polls entered with callbacks waiting in Hub._ready", [p for p in polls if p[3]]),
        ("  ... of which with a deferred ack among them", [p for p in polls if p[4]]),
        (f"polls that slept > {STALL * 1000:.0f} ms", slow),
        ("  ... entered with callbacks waiting", [p for p in slow if p[3]]),
        ("  ... entered with a deferred ack waiting", [p for p in slow if p[4]]),
        (
            "polls entered with a deferred ack waiting that slept > 1 ms",
            [p for p in polls if p[4] and p[2] > 0.001],
        ),
    ):
        asleep = sum(p[2] for p in group)
        print(f"{label}: {len(group)}, {asleep:.2f} s asleep in all")
    # Time the loop spent outside poll() between two polls: running callbacks (tasks), or not scheduled.
    busy = [b[0] - (a[0] + a[2]) for a, b in zip(polls, polls[1:], strict=False)]
    print(
        f"longest poll {max((p[2] for p in polls), default=0):.3f} s; "
        f"longest time between two polls {max(busy, default=0):.3f} s"
    )
    for _start, timeout, slept, waiting, with_ack in slow[:10]:
        print(
            f"  poll(timeout={timeout:.2f}) slept {slept:.3f} s, "
            f"{waiting} callback(s) waiting, {with_ack} of them ack(s)"
        )
    return 0


def cleanup(sides: list[Side]) -> None:
    queues = [q for side in sides for q in side.queues]
    with suppress(Exception):
        delete_rabbitmq(queues, queues)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.solo_stall", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="recorded runs per side (default 10)")
    parser.add_argument("--tasks", type=int, default=3000, help="messages per drain (default 3,000)")
    parser.add_argument("--cap", type=float, default=20.0, help="seconds a drain may take (default 20)")
    parser.add_argument(
        "--sides", default=",".join(SIDES), help=f"comma-separated, of {', '.join(ALL_SIDES)}"
    )
    parser.add_argument(
        "--other-celery", help="the celery program of another venv, for the plain-other* sides"
    )
    parser.add_argument("--trace", action="store_true", help="one traced drain of the plain app instead")
    parser.add_argument("--fix", action="store_true", help="with --trace: the fix installed too")
    parser.add_argument("--tick", action="store_true", help="with --trace: row 1's 10 ms heartbeat tick")
    parser.add_argument("--keep-logs", type=Path, help="copy the worker logs of runs with stalls here")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args(argv)
    labels = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(labels) - set(ALL_SIDES)
    if unknown:
        parser.error(f"unknown side(s): {', '.join(sorted(unknown))}")
    if any(label.startswith("plain-other") for label in labels):
        if not args.other_celery:
            parser.error("the plain-other* sides need --other-celery")
        OTHER_CELERY.append(args.other_celery)
    if args.keep_logs:
        KEEP_LOGS.append(args.keep_logs)

    with tempfile.TemporaryDirectory(prefix="solo-investigation-") as tmp:
        folder = Path(tmp)
        broker = SoloBroker(RABBITMQ_URL)
        try:
            if args.trace:
                return trace(folder, broker, args.tasks, args.cap, args.fix, args.tick)
            sides = [Side(label, folder, broker) for label in labels]
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
            repeated: list[str] = []
            try:
                for round_ in range(args.runs):
                    for side in sides:
                        result = attempt(side, args.tasks, args.cap, repeated)
                        runs[side.label].append(result)
                        flag = " (capped)" if result["capped"] else ""
                        print(
                            f"round {round_ + 1} {side.label:>10}: {result['rate']:7,.0f} tasks/s{flag}, "
                            f"{result['drained']} in {result['seconds']:.2f} s, {result['stalls']} stalls "
                            f"({result['stalled_s']:.2f} s), {result['unacked_returned']} unacked returned, "
                            f"{result['log_errors']} errors logged",
                            flush=True,
                        )
            finally:
                cleanup(sides)
            print(
                f"\n{args.tasks:,} tasks per drain, {args.runs} runs per side, -P solo, cap {args.cap:.0f} s:"
            )
            for label in labels:
                print(f"  {label:>10}: {summary(runs[label])}")
            if repeated:
                print(f"{len(repeated)} run(s) repeated: RabbitMQ closed connections (another test suite)")
            if args.json:
                args.json.write_text(json.dumps(runs, indent=1), encoding="utf-8")
        finally:
            broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
