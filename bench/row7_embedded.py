"""Row 7: the embedded broker (SQLite), next to RabbitMQ with Redis results, through ``host celeryd -c 2``.

Both sides are the host, configured like development.ini (``result_extended``,
concurrency 2, no plugins) and differing only in their URLs: the embedded
side uses ``embedded+sqlite:///%(here)s/data/broker.sqlite`` and
``.../results.sqlite``; the other RabbitMQ, queues of its own, and Redis.
Each side's worker (``host celeryd -- -c 2`` and the flags of row 1) is
started once; one run of a side is then:

1. pre-publish N ``bench.noop`` tasks with the host app to a queue the worker
   does not consume, then hand them to the worker at once: on the embedded
   broker one ``UPDATE`` moves them into the worker's queue; on RabbitMQ the
   worker is told to consume their queue (remote control ``add_consumer``,
   as in row 1);
2. poll the waiting messages (the queue's ``host_message`` rows, or a passive
   ``queue_declare``) every 2 ms: the clock starts when the count first drops
   and stops when it reaches 0; the drain rate is the messages taken in
   between over that time (the worker is started once, before publishing:
   its start-up is not what is measured, and costs 2-3 s a run);
3. R sequential ``send_task("bench.add").get()`` round trips, the way a web
   application waits for a task.

The sides alternate A B A B, 5 or more runs each after one unrecorded run
each. The drain rate is the median of the runs; p50 and p99 of the round
trip are taken over every call of a side's recorded runs together.

The targets are absolute, on the embedded broker: drain >= 500 tasks/s and
round trip p50 <= 100 ms. RabbitMQ is there to compare with.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

from bench.harness import Comparison, Context, alternate, delete_rabbitmq, wait_until
from bench.row1_throughput import (
    COMMON_FLAGS,
    Broker,
    Worker,
    host_command,
    host_env,
    node_name,
    retrying,
    running,
    time_drain,
)
from bench.row2_latency import comparisons
from bench.synthetic import bench_site

DRAIN_TARGET = 500
P50_TARGET = 100
FLAGS = ["-c", "2"]
#: The embedded broker's queue the pre-published tasks wait in, consumed by no worker.
STAGING = "bench-staging"

#: development.ini's [app:main], without its plugin; ``{urls}`` are the side's.
INI = """\
[app:main]
{urls}
celery.result_extended = true
celery.worker_concurrency = 2
celery.worker_redirect_stdouts_level = INFO
host.celery_task.disabled =
host.extensions.on_error = fail
host.allow_root = true
host.plugins =
"""
EMBEDDED_URLS = """\
celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite"""
RABBITMQ_URLS = """\
celery.broker_url = {broker}
celery.result_backend = {redis}
celery.task_default_queue = {queue}
celery.result_expires = 600"""


class Side:
    """One broker: its ini, its worker, the host app sending to it, and its runs."""

    def __init__(self, label: str, folder: Path, urls: str, site: Path, broker: Broker, wake: bool) -> None:
        from core.celery_app import HostCelery
        from core.config import load_config
        from core.startup import configure_app

        self.label, self.folder, self.broker = label, folder, broker
        folder.mkdir(parents=True)
        self.ini = folder / "bench.ini"
        self.ini.write_text(INI.format(urls=urls), encoding="utf-8")
        config = load_config(self.ini, environ={})
        self.app = configure_app(HostCelery(f"bench-row7-{label}"), config)
        # Pre-publishing goes through an app of its own with no result store: with Redis an
        # app subscribes to the result of every task it sends, and the first get() after
        # the N tasks of a drain would wait ~60 ms to read their N results.
        self.publisher = configure_app(HostCelery(f"bench-row7-{label}-publisher"), config)
        self.publisher.conf.result_backend = None
        node = node_name(label)
        command = host_command(self.ini, [*FLAGS, *COMMON_FLAGS, "-n", node])
        self.worker = Worker(
            label, command, host_env(site), folder / "worker.log", node, broker.wake if wake else None
        )
        #: Every run's round trips in ms; the first (unrecorded by alternate) included.
        self.trips: list[list[float]] = []
        self.retries: list[str] = []

    def close(self) -> None:
        self.app.close()
        self.publisher.close()

    def publish(self, n: int, queue: str) -> None:
        with self.publisher.producer_or_acquire() as producer:
            for _ in range(n):
                self.publisher.send_task("bench.noop", queue=queue, producer=producer)

    def drain(self, n: int) -> float:
        """Pre-publish ``n`` tasks, hand them to the worker, and return its drain rate."""
        raise NotImplementedError

    def forget(self) -> None:
        """Clean up after a run RabbitMQ interrupted."""

    def round_trips(self, count: int) -> list[float]:
        times = []
        for i in range(count):
            start = time.perf_counter()
            value = self.app.send_task("bench.add", args=[i, 1]).get(timeout=30)
            times.append((time.perf_counter() - start) * 1000)
            if value != i + 1:
                raise RuntimeError(f"bench.add({i}, 1) returned {value!r}")
        return times

    def measure(self, tasks: int, roundtrips: int) -> Callable[[], float]:
        """One run as alternate() calls it: the drain rate, the round trips kept aside."""

        def once() -> float:
            rate = self.drain(tasks)
            self.trips.append(self.round_trips(roundtrips))
            return rate

        def run() -> float:
            mark = len(self.trips)

            def forget() -> None:
                del self.trips[mark:]
                self.forget()

            return retrying(self.broker, once, self.retries, forget)

        return run


class Embedded(Side):
    def __init__(self, folder: Path, site: Path, broker: Broker) -> None:
        # The embedded transport notices SIGTERM by itself: no wake-up ping.
        super().__init__("embedded", folder, EMBEDDED_URLS, site, broker, wake=False)
        self.store = folder / "data" / "broker.sqlite"
        self.reader: sqlite3.Connection | None = None

    def waiting(self, queue: str) -> int:
        """The queue's messages in the store (a worker's prefetched ones are deleted already)."""
        if self.reader is None:
            if not self.store.exists():
                return 0
            self.reader = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=30)
        try:
            return self.reader.execute(
                "SELECT COUNT(*) FROM host_message WHERE queue = ?", (queue,)
            ).fetchone()[0]
        except sqlite3.OperationalError:  # no table yet
            return 0

    def drain(self, n: int) -> float:
        self.publish(n, STAGING)
        wait_until(lambda: self.waiting(STAGING) >= n, 30, f"{n} messages in the embedded broker")
        with closing(sqlite3.connect(self.store, timeout=30, isolation_level=None)) as db:
            db.execute("UPDATE host_message SET queue = 'celery' WHERE queue = ?", (STAGING,))
        return time_drain(lambda: self.waiting("celery"), n, self.worker, 120 + n / 20)

    def forget(self) -> None:
        with closing(sqlite3.connect(self.store, timeout=30, isolation_level=None)) as db:
            db.execute("DELETE FROM host_message WHERE queue IN (?, 'celery')", (STAGING,))

    def close(self) -> None:
        super().close()
        if self.reader is not None:
            self.reader.close()


class RabbitMQ(Side):
    def __init__(self, folder: Path, site: Path, broker: Broker, ctx: Context) -> None:
        self.queues = [f"bench-row7-{uuid.uuid4()}"]
        urls = RABBITMQ_URLS.format(broker=ctx.rabbitmq_url, redis=ctx.redis_url, queue=self.queues[0])
        super().__init__("rabbitmq", folder, urls, site, broker, wake=True)

    def drain(self, n: int) -> float:
        name = f"bench-row7-{uuid.uuid4()}"
        self.queues.append(name)
        self.publish(n, name)
        wait_until(lambda: self.broker.ready(name) >= n, 30, f"{n} messages in {name}")
        node = self.worker.node
        self.broker.command("add_consumer", node, queue=name)
        rate = time_drain(
            lambda: self.broker.ready(name), n, self.worker, 120 + n / 20, lambda: self.broker.wake(node)
        )
        self.broker.command("cancel_consumer", node, queue=name)
        return rate

    def forget(self) -> None:
        if len(self.queues) > 1:
            self.broker.channel.queue_purge(self.queues[-1])
            with suppress(RuntimeError):  # it consumes an empty queue then: no harm
                self.broker.command("cancel_consumer", self.worker.node, queue=self.queues[-1])


def run(ctx: Context) -> Iterator[Comparison]:
    tasks = ctx.scale(3000, 300)
    roundtrips = ctx.scale(100, 20)
    folder = ctx.folder("row7")
    site = bench_site(folder / "site")
    broker = Broker(ctx.rabbitmq_url)
    sides: dict[str, Any] = {}
    try:
        sides["embedded"] = Embedded(folder / "embedded", site, broker)
        sides["rabbitmq"] = RabbitMQ(folder / "rabbitmq", site, broker, ctx)
        with running(*(side.worker for side in sides.values())):
            drains = alternate(
                {label: side.measure(tasks, roundtrips) for label, side in sides.items()}, ctx.runs
            )
    finally:
        for side in sides.values():
            side.close()
        broker.close()
        if "rabbitmq" in sides:
            delete_rabbitmq(sides["rabbitmq"].queues, sides["rabbitmq"].queues)
    embedded, rabbitmq = sides["embedded"], sides["rabbitmq"]
    retries = embedded.retries + rabbitmq.retries
    note = f"{len(retries)} run(s) repeated: RabbitMQ closed all connections" if retries else ""
    drain = Comparison(
        row=7,
        measure=f"embedded broker: drain of {tasks:,} no-op tasks, host celeryd -c 2",
        unit="tasks/s",
        host_label="embedded (SQLite)",
        host=drains["embedded"],
        other_label="RabbitMQ + Redis",
        other=drains["rabbitmq"],
        target=f"embedded >= {DRAIN_TARGET} tasks/s",
        note=note,
        extra={"tasks": tasks},
    )
    drain.met = drain.host_median >= DRAIN_TARGET
    yield drain

    def target(p: float, c: Comparison) -> tuple[str, bool | None]:
        if p == 50:
            return f"embedded <= {P50_TARGET} ms", c.host_median <= P50_TARGET
        return "reported only", None

    recorded = embedded.trips[1:]
    yield from comparisons(
        7,
        f"embedded broker: round trip send_task().get(), {len(recorded)}x{roundtrips} sequential,",
        "embedded (SQLite)",
        recorded,
        "RabbitMQ + Redis",
        rabbitmq.trips[1:],
        target,
        note,
    )
