"""Row 7: the embedded broker (SQLite), next to RabbitMQ with Redis results, through ``host celeryd -c 2``.

Both sides are the host, configured like development.ini (``result_extended``,
concurrency 2, no plugins, late acknowledgement) and differing only in their
URLs: the embedded side uses ``embedded+sqlite:///%(here)s/data/broker.sqlite``
and ``.../results.sqlite``; the other RabbitMQ, queues of its own, and Redis.
Each side's worker (``host celeryd -- -c 2`` and the flags of row 1) is
started once; one run of a side is then:

1. pre-publish N ``bench.noop`` tasks with the host app to a queue the worker
   does not consume, then hand them to the worker at once: on the embedded
   broker one ``UPDATE`` moves them into the worker's queue, and the bench
   then wakes the queue's consumers through their FIFOs as a publisher does
   (``Store.wake_consumers``: the ``UPDATE`` alone would leave the worker
   asleep until its 1 s fallback poll); on RabbitMQ the worker is told to
   consume their queue (remote control ``add_consumer``, as in row 1);
2. poll the waiting messages every 2 ms: the clock starts when the count
   first drops and stops when it reaches 0; the drain rate is the messages
   taken in between over that time (the worker is started once, before
   publishing: its start-up is not what is measured, and costs 2-3 s a run).
   On the embedded broker the count is the queue's ``host_message`` rows; a
   delivered message keeps its row (``holder`` set) until it is
   acknowledged, so the count drops at the first acknowledgement and 0
   means every message was acknowledged -- here late, as in development.ini:
   when its task has finished. On RabbitMQ it is the
   queue's ready messages (a passive ``queue_declare``), which leave out the
   delivered, unacknowledged ones: that clock stops up to a prefetch window
   (8 messages) earlier;
3. R sequential ``send_task("bench.add").get()`` round trips, the way a web
   application waits for a task.

The sides alternate A B A B, 5 or more runs each after one unrecorded run
each. The drain rate is the median of the runs; p50 and p99 of the round
trip are taken over every call of a side's recorded runs together.

After the runs, with both workers still up, idle and nothing queued (and a
pause of :data:`SETTLE` s), the CPU time of each worker's main process and
all its descendants (``psutil.Process(pid).children(recursive=True)``: the
pool processes) is read at the start and at the end of each of
:data:`IDLE_WINDOWS` consecutive windows, 30 s in all (10 s with
``--quick``, 2 s with ``--smoke``), both workers in the same windows. CPU
time is the threads' time on a CPU from ``/proc/PID/task/*/schedstat``
(nanoseconds), or psutil's user + system time where Linux does not tell it
(10 ms ticks: 0.03% of a core over 30 s). The figure is the percent of one
core over the whole 30 s; each window's own percent is kept as the
comparison's samples.

The targets (issue 12) are absolute, on the embedded broker: drain >= 2,000
tasks/s, round trip p50 <= 5 ms and p99 <= 20 ms, and an idle worker (main
process and pool) <= 0.2% of a core. RabbitMQ is there to compare with.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
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

DRAIN_TARGET = 2000
#: Round trip targets in ms, by percentile.
TRIP_TARGETS = {50: 5.0, 99: 20.0}
#: An idle worker's CPU, main process and pool together, in percent of one core.
IDLE_TARGET = 0.2
#: Seconds the idle workers are measured (full run, --quick, --smoke), in this many windows.
IDLE_SECONDS = (30, 10, 2)
IDLE_WINDOWS = 5
#: Seconds between the last round trip and the idle measurement.
SETTLE = 1.0
FLAGS = ["-c", "2"]
#: The embedded broker's queue the pre-published tasks wait in, consumed by no worker.
STAGING = "bench-staging"

#: development.ini's [app:main], without its plugin; ``{urls}`` are the side's.
INI = """\
[app:main]
{urls}
celery.result_extended = true
celery.worker_concurrency = 2
celery.task_acks_late = true
celery.task_reject_on_worker_lost = true
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
        """The queue's messages in the store: waiting, or delivered and not acknowledged yet."""
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
        self.wake_worker()
        return time_drain(lambda: self.waiting("celery"), n, self.worker, 120 + n / 20)

    def wake_worker(self) -> None:
        """Wake the consumers of ``celery`` through their FIFOs, as a publisher does."""
        from core.embedded_store import store_for

        store_for(self.store).wake_consumers(["celery"])

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


@dataclass
class Idle(Comparison):
    """Idle CPU, in percent of a core: over all the windows together, each window kept.

    ``host`` and ``other`` hold each window's own percent (one sample per
    window, as in every row); ``host_median`` and ``other_median``, which the
    table shows and the ratio divides, are over the whole span (all windows'
    CPU seconds over their seconds): a window of 6 s is short for the clock
    where it counts 10 ms ticks.
    """

    host_whole: float = 0.0
    other_whole: float = 0.0

    @property
    def host_median(self) -> float:
        return self.host_whole

    @property
    def other_median(self) -> float | None:
        return self.other_whole


#: Whether Linux tells each thread's time on a CPU in nanoseconds.
SCHEDSTAT = Path("/proc/self/task").is_dir() and Path("/proc/self/schedstat").exists()


def process_cpu(proc: Any) -> float:
    """CPU seconds of one process (a ``psutil.Process``), all its threads."""
    if not SCHEDSTAT:
        times = proc.cpu_times()
        return float(times.user + times.system)
    total = 0
    for thread in Path(f"/proc/{proc.pid}/task").iterdir():
        with suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
            total += int((thread / "schedstat").read_text().split()[0])
    return total / 1e9


def tree_cpu(pid: int) -> dict[tuple[int, float], float]:
    """CPU seconds of process ``pid`` and of every descendant, by (pid, start time)."""
    import psutil

    main = psutil.Process(pid)
    found = {}
    for proc in [main, *main.children(recursive=True)]:
        try:
            found[(proc.pid, proc.create_time())] = process_cpu(proc)
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            continue  # a process that just ended: its time is lost, not counted twice
    return found


@dataclass
class IdleSample:
    """One worker's CPU over the idle windows: (CPU seconds, wall seconds) each, and the main process's."""

    windows: list[tuple[float, float]]
    main_seconds: float

    def percents(self) -> list[float]:
        return [100 * cpu / wall for cpu, wall in self.windows]

    def whole(self) -> float:
        return 100 * sum(cpu for cpu, _ in self.windows) / sum(wall for _, wall in self.windows)

    def main_percent(self) -> float:
        return 100 * self.main_seconds / sum(wall for _, wall in self.windows)


def idle_cpu(workers: dict[str, Worker], seconds: float, windows: int) -> dict[str, IdleSample]:
    """Each worker's CPU (main process and descendants) over ``windows`` windows, all at once."""
    pids = {label: worker.proc.pid for label, worker in workers.items() if worker.proc is not None}
    found = {label: IdleSample([], 0.0) for label in pids}
    time.sleep(SETTLE)
    before = {label: tree_cpu(pid) for label, pid in pids.items()}
    started = time.perf_counter()
    for _ in range(windows):
        time.sleep(seconds / windows)
        now = time.perf_counter()
        after = {label: tree_cpu(pid) for label, pid in pids.items()}
        for label, pid in pids.items():
            used = {key: cpu - before[label].get(key, 0.0) for key, cpu in after[label].items()}
            found[label].windows.append((sum(used.values()), now - started))
            found[label].main_seconds += sum(cpu for (p, _), cpu in used.items() if p == pid)
            workers[label].check()
        before, started = after, now
    return found


def run(ctx: Context) -> Iterator[Comparison]:
    tasks = ctx.scale(3000, 300, smoke=100)
    roundtrips = ctx.scale(100, 20, smoke=5)
    idle_seconds = ctx.scale(*IDLE_SECONDS)
    folder = ctx.folder("row7")
    site = bench_site(folder / "site")
    broker = Broker(ctx.rabbitmq_url)
    sides: dict[str, Any] = {}
    idle_retries: list[str] = []
    try:
        sides["embedded"] = Embedded(folder / "embedded", site, broker)
        sides["rabbitmq"] = RabbitMQ(folder / "rabbitmq", site, broker, ctx)
        with running(*(side.worker for side in sides.values())):
            drains = alternate(
                {label: side.measure(tasks, roundtrips) for label, side in sides.items()}, ctx.runs
            )
            workers = {label: side.worker for label, side in sides.items()}
            idle = retrying(broker, lambda: idle_cpu(workers, idle_seconds, IDLE_WINDOWS), idle_retries)
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
        limit = TRIP_TARGETS[int(p)]
        return f"embedded <= {limit:g} ms", c.host_median <= limit

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

    host, other = idle["embedded"], idle["rabbitmq"]
    notes = [
        f"{IDLE_WINDOWS} windows of {idle_seconds / IDLE_WINDOWS:g} s, both workers at once; "
        f"main process alone: embedded {host.main_percent():.3f}%, RabbitMQ {other.main_percent():.3f}%"
    ]
    if idle_retries:
        notes.append(f"measured again {len(idle_retries)} time(s): RabbitMQ closed all connections")
    cpu = Idle(
        row=7,
        measure=f"embedded broker: idle worker CPU, main process and pool, over {idle_seconds} s",
        unit="% of a core",
        host_label="embedded (SQLite)",
        host=host.percents(),
        other_label="RabbitMQ + Redis",
        other=other.percents(),
        target=f"embedded <= {IDLE_TARGET}%",
        note="; ".join(notes),
        extra={"seconds": idle_seconds, "windows": IDLE_WINDOWS, "schedstat": SCHEDSTAT},
        host_whole=host.whole(),
        other_whole=other.whole(),
    )
    cpu.met = cpu.host_median <= IDLE_TARGET
    yield cpu
