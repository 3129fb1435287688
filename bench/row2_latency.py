"""Row 2: round-trip latency of ``send_task(...).get()``, the host app next to a plain Celery app.

Both workers run at once, each on a queue of its own, with identical flags
(``-P prefork -c 1`` and those of row 1) and identical settings (the ini of
row 1, with Redis results): ``host celeryd`` with the ``bench-tasks``
extension, and ``celery -A plain_app worker``. The sending apps live in this
process: the host's is ``configure_app(HostCelery(...), load_config(ini))``,
the plain one a ``Celery`` app given the settings the host derives from its
ini (:func:`bench.plain_app.settings_for`).

One run of a side is a batch of sequential ``send_task("bench.add", args=[i,
i]).get()`` calls, the way a web application waits for a task. 500 calls a
side (250 with ``--quick``, 20 with ``--smoke``) are split into at least
:data:`BATCHES` batches (more with ``--runs``), which alternate A B A B after
one unrecorded batch each: the finer the alternation, the less a slow spell of
this shared machine lands on one side only (5 batches of 100 gave p50 ratios
from 0.97 to 1.10 over five runs; 10 of 50, 0.93 to 1.04). p50 and p99 are
taken over every call of a side's recorded batches together; the table's
``host`` and ``compared with`` columns show those pooled percentiles, and each
batch's own percentile is kept as the comparison's samples. Target: host /
plain <= 1.05 for both. The p99 of 500 calls is their 5th slowest, and moves
more than that between runs: the plain app against an identical second plain
app and worker (A/A) gave p99 ratios from 0.82 to 1.18 over six runs (p50:
0.99 to 1.04).

``-P prefork -c 1`` rather than ``-P solo``: on Celery 5.7 a solo worker's
acknowledgement waits for its event loop to wake up (see
bench/row1_throughput.py), so with prefetch 1 every round trip would wait for
that too.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import plain_app
from bench.harness import Comparison, Context, alternate, delete_rabbitmq, percentile
from bench.row1_throughput import (
    COMMON_FLAGS,
    INI,
    Broker,
    Worker,
    host_command,
    host_env,
    node_name,
    plain_command,
    plain_env,
    retrying,
    running,
)
from bench.synthetic import bench_site

TARGET = 1.05
#: Round trips a side, split into batches.
CALLS = 500
#: At least this many batches a side.
BATCHES = 10
FLAGS = ["-P", "prefork", "-c", "1"]


@dataclass
class Pooled(Comparison):
    """A comparison of a percentile over every sample of a side's runs together.

    ``host`` and ``other`` hold each run's own percentile (one per run, as in
    every row); ``host_median`` and ``other_median``, which the table shows
    and the ratio divides, are the percentile ``p`` of ``host_pool`` and
    ``other_pool``, all the samples of the recorded runs.
    """

    p: float = 50
    host_pool: list[float] = field(default_factory=list)
    other_pool: list[float] = field(default_factory=list)

    @property
    def host_median(self) -> float:
        return percentile(self.host_pool, self.p) if self.host_pool else statistics.median(self.host)

    @property
    def other_median(self) -> float | None:
        if self.other_pool:
            return percentile(self.other_pool, self.p)
        return statistics.median(self.other) if self.other else None


class Batches:
    """The runs of one side: batches of round trips, each batch's times kept (ms)."""

    def __init__(self, app: Any, size: int, timeout: float = 30) -> None:
        self.app, self.size, self.timeout = app, size, timeout
        #: Every batch's round trips in ms; the first (unrecorded by alternate) included.
        self.batches: list[list[float]] = []

    def __call__(self) -> float:
        times = []
        for i in range(self.size):
            start = time.perf_counter()
            value = self.app.send_task("bench.add", args=[i, i]).get(timeout=self.timeout)
            times.append((time.perf_counter() - start) * 1000)
            if value != 2 * i:
                raise RuntimeError(f"bench.add({i}, {i}) returned {value!r}")
        self.batches.append(times)
        return statistics.median(times)

    def retried(self, broker: Broker, retries: list[str]) -> float:
        """A batch, run again when RabbitMQ closed the connections meanwhile."""
        mark = len(self.batches)

        def forget() -> None:
            del self.batches[mark:]

        return retrying(broker, self, retries, forget)

    def recorded(self) -> list[list[float]]:
        """The batches alternate() records: all but the first."""
        return self.batches[1:]


def host_app(ini: Path) -> Any:
    from core.celery_app import HostCelery
    from core.config import load_config
    from core.startup import configure_app

    return configure_app(HostCelery(f"bench-row2-{uuid.uuid4().hex[:6]}"), load_config(ini, environ={}))


def plain_sender(ini: Path) -> Any:
    from celery import Celery

    app = Celery(f"bench-row2-plain-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(plain_app.settings_for(str(ini)))
    return app


def comparisons(
    row: int,
    measure: str,
    host_label: str,
    host: list[list[float]],
    other_label: str,
    other: list[list[float]],
    target: Callable[[float, Comparison], tuple[str, bool | None]],
    note: str = "",
    **extra: Any,
) -> Iterator[Pooled]:
    """p50 and p99 of the pooled round trips; ``target(p, comparison) -> (text, met)``."""
    for p in (50, 99):
        c = Pooled(
            row=row,
            measure=f"{measure} p{p}",
            unit="ms",
            host_label=host_label,
            host=[percentile(batch, p) for batch in host],
            other_label=other_label,
            other=[percentile(batch, p) for batch in other],
            target="",
            note=note,
            extra=dict(extra, calls_per_side=sum(map(len, host))),
            p=p,
            host_pool=[t for batch in host for t in batch],
            other_pool=[t for batch in other for t in batch],
        )
        c.target, c.met = target(p, c)
        yield c


def run(ctx: Context) -> Iterator[Comparison]:
    rounds = max(ctx.runs, BATCHES)
    size = max(1, ctx.scale(CALLS, CALLS // 2, smoke=20) // rounds)
    folder = ctx.folder("row2")
    site = bench_site(folder / "site")
    broker = Broker(ctx.rabbitmq_url)
    queues = {label: f"bench-row2-{label}-{uuid.uuid4()}" for label in ("host", "plain")}
    inis = {}
    for label, queue in queues.items():
        inis[label] = folder / f"{label}.ini"
        text = INI.format(broker=ctx.rabbitmq_url, queue=queue).replace(
            "celery.task_ignore_result = true\n",
            f"celery.result_backend = {ctx.redis_url}\ncelery.result_expires = 600\n",
        )
        inis[label].write_text(text, encoding="utf-8")
    nodes = {label: node_name(label) for label in queues}
    workers = [
        Worker(
            "host",
            host_command(inis["host"], [*FLAGS, *COMMON_FLAGS, "-n", nodes["host"]]),
            host_env(site),
            folder / "host.log",
            nodes["host"],
            broker.wake,
        ),
        Worker(
            "plain",
            plain_command([*FLAGS, *COMMON_FLAGS, "-n", nodes["plain"]]),
            plain_env(inis["plain"]),
            folder / "plain.log",
            nodes["plain"],
            broker.wake,
        ),
    ]
    sides = {
        "host": Batches(host_app(inis["host"]), size),
        "plain": Batches(plain_sender(inis["plain"]), size),
    }
    retries: list[str] = []
    try:
        with running(*workers):
            alternate(
                {label: (lambda s=side: s.retried(broker, retries)) for label, side in sides.items()}, rounds
            )
    finally:
        broker.close()
        for side in sides.values():
            side.app.close()
        delete_rabbitmq(list(queues.values()), list(queues.values()))

    def target(p: float, c: Comparison) -> tuple[str, bool | None]:
        return f"ratio <= {TARGET}", c.ratio is not None and c.ratio <= TARGET

    note = f"{len(retries)} batch(es) repeated: RabbitMQ closed all connections" if retries else ""
    yield from comparisons(
        2,
        f"round trip send_task().get(), {len(sides['host'].recorded())}x{size} sequential,",
        "host app",
        sides["host"].recorded(),
        "plain Celery app",
        sides["plain"].recorded(),
        target,
        note,
        flags=FLAGS + COMMON_FLAGS,
    )
